//! `opt tokenizer train`, `opt data prepare` and `opt bench data`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use opt::data::{
    encode_documents, prepare_dataset, read_corpus, train_bpe, CorpusOptions, OptTokenizer,
    PrepareOptions, Source, Split, TextSplit, TokenizerChoice,
};
use serde_json::json;

use crate::measure::{median, threads};

/// `opt tokenizer ...`
#[derive(Subcommand, Clone)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE with OPT's special tokens at ids 0..3; writes DIR/tokenizer.json.
    Train(TokenizerTrainArgs),
}

/// `opt data ...`
#[derive(Subcommand, Clone)]
pub enum DataCommand {
    /// Tokenize corpora into train/valid token shards with a manifest.
    Prepare(PrepareArgs),
}

/// How corpus files are read.
#[derive(Args, Clone)]
pub struct CorpusArgs {
    /// JSONL field holding a document's text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Plain-text files: one document per file, or per blank-line-separated block.
    #[arg(long, value_enum, default_value_t = SplitArg::File)]
    pub split: SplitArg,
    /// Make a malformed or text-less JSONL line an error instead of a skipped, reported line.
    #[arg(long)]
    pub strict: bool,
}

/// `--split` values.
#[derive(ValueEnum, Clone, Copy)]
pub enum SplitArg {
    File,
    BlankLine,
}

impl CorpusArgs {
    fn options(&self) -> CorpusOptions {
        CorpusOptions {
            split: match self.split {
                SplitArg::File => TextSplit::File,
                SplitArg::BlankLine => TextSplit::BlankLine,
            },
            text_field: self.text_field.clone(),
            strict: self.strict,
        }
    }
}

/// Arguments of `opt tokenizer train`.
#[derive(Args, Clone)]
pub struct TokenizerTrainArgs {
    /// Text/JSONL files or folders (.gz/.zst too).
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    #[arg(long)]
    pub vocab_size: usize,
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub corpus: CorpusArgs,
}

/// Arguments of `opt data prepare`.
#[derive(Args, Clone)]
pub struct PrepareArgs {
    /// `gpt2` (built in), a tokenizer directory or tokenizer.json; omit to train a BPE of
    /// --vocab-size ids on the training documents.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Size of the BPE trained when --tokenizer is omitted.
    #[arg(long, default_value_t = 8192)]
    pub vocab_size: usize,
    /// Sources: text/JSONL files or folders (.gz/.zst too); one source each.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Mixing weights, one per --input (comma-separated; default 1 each).
    #[arg(long, value_delimiter = ',')]
    pub weights: Vec<f64>,
    #[arg(long)]
    pub out: PathBuf,
    /// Share of documents held out for validation (by a stable hash of each document).
    #[arg(long, default_value_t = 0.05)]
    pub valid_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub corpus: CorpusArgs,
}

/// Arguments of `opt bench data`.
#[derive(Args, Clone)]
pub struct BenchDataArgs {
    /// Text/JSONL files or folders (default: the Shakespeare corpus, fetched at first use).
    #[arg(long, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Tokenizer (default: the built-in GPT-2 BPE).
    #[arg(long, default_value = "gpt2")]
    pub tokenizer: PathBuf,
    /// Timed repetitions; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub corpus: CorpusArgs,
}

/// `opt tokenizer train`
pub fn tokenizer(command: TokenizerCommand) -> Result<()> {
    let TokenizerCommand::Train(a) = command;
    if a.vocab_size < 260 {
        bail!(
            "--vocab-size {} is too small: a byte-level BPE needs 256 byte tokens + 4 specials",
            a.vocab_size
        );
    }
    let corpus = read_corpus(&a.input, &a.corpus.options())?;
    for w in corpus.warnings() {
        eprintln!("warning: {w}");
    }
    let started = Instant::now();
    let tok = train_bpe(
        corpus.documents.iter().map(|d| d.text.as_str()),
        a.vocab_size,
        &a.out,
    )?;
    eprintln!(
        "trained a {}-id byte-level BPE on {} documents in {:.1}s; wrote {}",
        tok.vocab_size(),
        corpus.documents.len(),
        started.elapsed().as_secs_f64(),
        a.out.join("tokenizer.json").display()
    );
    Ok(())
}

/// `opt data prepare`
pub fn data(command: DataCommand) -> Result<()> {
    let DataCommand::Prepare(a) = command;
    if !a.weights.is_empty() && a.weights.len() != a.input.len() {
        bail!(
            "--weights has {} values for {} --input sources",
            a.weights.len(),
            a.input.len()
        );
    }
    if !(0.0..1.0).contains(&a.valid_fraction) {
        bail!("--valid-fraction {} must be in [0, 1)", a.valid_fraction);
    }
    let sources: Vec<Source> = a
        .input
        .iter()
        .enumerate()
        .map(|(i, p)| Source {
            paths: vec![p.clone()],
            weight: a.weights.get(i).copied().unwrap_or(1.0),
            split: Split::Hash,
        })
        .collect();
    let choice = match &a.tokenizer {
        Some(t) => TokenizerChoice::Given(Box::new(
            OptTokenizer::load(t)
                .with_context(|| format!("loading --tokenizer {}", t.display()))?,
        )),
        None => TokenizerChoice::Train {
            vocab_size: a.vocab_size,
        },
    };
    let options = PrepareOptions {
        corpus: a.corpus.options(),
        valid_fraction: a.valid_fraction,
        seed: a.seed,
    };
    let started = Instant::now();
    let p = prepare_dataset(&sources, choice, &a.out, &options, |w| {
        eprintln!("warning: {w}")
    })?;
    let m = &p.manifest;
    let bytes: u64 = m.sources.iter().map(|s| s.bytes).sum();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "prepared {}: {} train + {} valid tokens from {} documents ({:.1} MB) in {seconds:.1}s ({:.2} MB/s); vocab {} ({})",
        a.out.display(),
        m.train_tokens,
        m.valid_tokens,
        m.sources.iter().map(|s| s.documents).sum::<usize>(),
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / seconds,
        m.tokenizer.vocab_size,
        m.tokenizer.fingerprint
    );
    Ok(())
}

/// `opt bench data`: our parallel document encoding (what `opt data prepare` runs) next to the
/// `tokenizers` crate's own `encode_batch` on the same documents, in the same process.
pub fn bench(a: BenchDataArgs) -> Result<()> {
    let inputs = if a.input.is_empty() {
        let (mut train, valid) =
            opt::data::corpora::shakespeare(&opt::data::corpora::data_dir().join("corpora"))?;
        train.extend(valid);
        train
    } else {
        a.input.clone()
    };
    let corpus = read_corpus(&inputs, &a.corpus.options())?;
    let tok = OptTokenizer::load(&a.tokenizer)
        .with_context(|| format!("loading --tokenizer {}", a.tokenizer.display()))?;
    let docs: Vec<&str> = corpus.documents.iter().map(|d| d.text.as_str()).collect();
    let bytes: usize = docs.iter().map(|d| d.len()).sum();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut tokens = 0;
    for _ in 0..a.runs.max(1) {
        let t = Instant::now();
        let encoded = encode_documents(&tok, &docs)?;
        ours.push(t.elapsed().as_secs_f64());
        tokens = encoded.iter().map(Vec::len).sum::<usize>();
        let t = Instant::now();
        let batch = tok
            .inner()
            .encode_batch(docs.clone(), false)
            .map_err(|e| anyhow::anyhow!("encode_batch: {e}"))?;
        theirs.push(t.elapsed().as_secs_f64());
        let n: usize = batch.iter().map(|e| e.get_ids().len()).sum();
        if n != tokens {
            bail!("encode_batch gave {n} tokens, ours {tokens}: the two paths disagree");
        }
    }
    let (ours, theirs) = (median(ours), median(theirs));
    let threads = threads();
    let v = json!({
        "documents": docs.len(), "bytes": bytes, "tokens": tokens, "threads": threads,
        "tokenizer": a.tokenizer.display().to_string(), "vocab_size": tok.vocab_size(),
        "ours_mb_per_second": bytes as f64 / 1e6 / ours, "ours_tokens_per_second": tokens as f64 / ours,
        "tokenizers_encode_batch_mb_per_second": bytes as f64 / 1e6 / theirs,
        "tokenizers_encode_batch_tokens_per_second": tokens as f64 / theirs,
    });
    if a.json {
        println!("{v}");
    } else {
        println!(
            "bench data: {} documents, {:.1} MB, {tokens} tokens, {threads} threads, tokenizer {}\n  opt encode_documents: {:.2} MB/s, {:.0} tokens/s\n  tokenizers encode_batch: {:.2} MB/s, {:.0} tokens/s",
            docs.len(),
            bytes as f64 / 1e6,
            a.tokenizer.display(),
            bytes as f64 / 1e6 / ours,
            tokens as f64 / ours,
            bytes as f64 / 1e6 / theirs,
            tokens as f64 / theirs
        );
    }
    Ok(())
}
