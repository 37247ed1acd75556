//! One function per subcommand: parse-level glue between clap and the libraries.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use opt::data::OptTokenizer;
use opt::model::generate::{generate as run_generate, GenerateConfig, Sampling};
use opt::model::{checkpoint, presets as all_presets};
use opt::{BackendKind, BackendTask};

use crate::weights_arg::WeightsArg;

/// `opt presets`
pub fn presets() -> Result<()> {
    println!(
        "{:<10} {:>7} {:>6} {:>6} {:>6} {:>7} {:>6} {:>9} {:>10} {:>14}",
        "preset", "vocab", "layers", "d", "heads", "ffn", "ln", "max_lr", "batch_tok", "params"
    );
    for p in all_presets() {
        let c = &p.config;
        println!(
            "{:<10} {:>7} {:>6} {:>6} {:>6} {:>7} {:>6} {:>9.1e} {:>10} {:>14}",
            p.name,
            c.vocab_size,
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.ffn_dim,
            if c.do_layer_norm_before {
                "pre"
            } else {
                "post"
            },
            p.max_lr,
            p.batch_tokens,
            thousands(c.num_params())
        );
    }
    Ok(())
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Arguments of `opt inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// HF-layout model directory (config.json + model.safetensors).
    pub model: PathBuf,
    /// Backend to load on.
    #[arg(long, default_value = "flex")]
    pub backend: String,
}

/// `opt inspect`
pub fn inspect(args: InspectArgs) -> Result<()> {
    struct Inspect(PathBuf);
    impl BackendTask for Inspect {
        type Output = Result<()>;
        fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
            let model = checkpoint::load_pretrained::<B::InnerBackend>(&self.0, &device)?;
            let c = &model.config;
            println!("{}: OPT, {} parameters", self.0.display(), c.num_params());
            println!(
                "  vocab {}  hidden {}  layers {}  heads {}  ffn {}  positions {}  {}-LN{}",
                c.vocab_size,
                c.hidden_size,
                c.num_hidden_layers,
                c.num_attention_heads,
                c.ffn_dim,
                c.max_position_embeddings,
                if c.do_layer_norm_before {
                    "pre"
                } else {
                    "post"
                },
                if c.has_projections() {
                    format!("  word_embed_proj_dim {}", c.embed_dim())
                } else {
                    String::new()
                }
            );
            Ok(())
        }
    }
    let kind: BackendKind = args.backend.parse()?;
    opt::backend::run(kind, Inspect(args.model))?
}

/// Arguments of `opt generate`.
#[derive(Args, Clone)]
pub struct GenerateArgs {
    /// HF-layout model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt text (encoded the OPT way: `</s>` first).
    #[arg(long, conflicts_with = "prompts_file")]
    pub prompt: Option<String>,
    /// A file with one prompt per line, generated as one left-padded batch.
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    /// Tokenizer directory (default: the model directory).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, default_value_t = 50)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "flex")]
    pub backend: String,
    #[command(flatten)]
    pub weights: WeightsArg,
    /// Print ids and text per prompt as JSON instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

/// `opt generate`
pub fn generate(args: GenerateArgs) -> Result<()> {
    let kind: BackendKind = args.backend.parse()?;
    args.weights.check(kind)?;
    opt::backend::run(kind, Generate(args))?
}

struct Generate(GenerateArgs);

impl BackendTask for Generate {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let tok_dir = args.tokenizer.clone().unwrap_or_else(|| args.model.clone());
        let tokenizer = OptTokenizer::from_dir(&tok_dir)
            .context("the model directory has no tokenizer files; pass --tokenizer DIR")?;
        let model = args.weights.load::<B::InnerBackend>(&args.model, &device)?;
        let texts: Vec<String> = match (&args.prompt, &args.prompts_file) {
            (Some(p), _) => vec![p.clone()],
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .lines()
                .map(str::to_string)
                .collect(),
            (None, None) => bail!("give --prompt TEXT or --prompts-file FILE"),
        };
        let max_positions = model.config.max_position_embeddings;
        if args.max_new_tokens >= max_positions {
            bail!("--max-new-tokens {} leaves no room for a prompt in the model's {max_positions} positions", args.max_new_tokens);
        }
        let mut prompts = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let mut ids = tokenizer.encode(text)?;
            if ids.is_empty() {
                bail!("prompt {i} encodes to no tokens");
            }
            let room = max_positions - args.max_new_tokens;
            if ids.len() > room {
                eprintln!("warning: prompt {i} has {} tokens; keeping the last {room} so that {} new tokens fit in {max_positions} positions", ids.len(), args.max_new_tokens);
                ids.drain(..ids.len() - room);
            }
            prompts.push(ids);
        }
        let config = GenerateConfig {
            max_new_tokens: args.max_new_tokens,
            eos_token_id: Some(model.config.eos_token_id as u32),
            pad_token_id: model.config.pad_token_id as u32,
            sampling: Sampling {
                temperature: args.temperature,
                top_k: args.top_k,
                top_p: args.top_p,
                repetition_penalty: args.repetition_penalty,
                seed: args.seed,
                ..Default::default()
            },
            ..Default::default()
        };
        let stream = !args.json && prompts.len() == 1;
        let mut produced: Vec<u32> = Vec::new();
        let mut printed = 0;
        let out = run_generate(&model, &prompts, &config, |step| {
            if stream && produced.is_empty() {
                // The prompt is echoed once generation has started (after the request was validated).
                print!("{}", texts[0]);
            }
            if let (true, Some(Some(t))) = (stream, step.first()) {
                produced.push(*t);
                // Decode the whole continuation and print what is new (keeps multi-byte chars whole).
                if let Ok(text) = tokenizer.decode(&produced, true) {
                    if text.len() > printed && text.is_char_boundary(printed) {
                        print!("{}", &text[printed..]);
                        printed = text.len();
                        let _ = std::io::stdout().flush();
                    }
                }
            }
        })?;
        if stream {
            println!();
        } else {
            for (i, new) in out.new_tokens.iter().enumerate() {
                let text = tokenizer.decode(new, true)?;
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({"prompt": texts[i], "prompt_ids": prompts[i], "new_ids": new, "text": text})
                    );
                } else {
                    println!("{}{}", texts[i], text);
                }
            }
        }
        Ok(())
    }
}

/// Arguments of `opt eval`.
#[derive(Args, Clone)]
pub struct EvalArgs {
    /// HF-layout model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// A text/JSONL file or folder (documents joined with "\n\n"), or prepared token shards
    /// (a `.tok` file, a folder with `valid.tok`, or a run folder).
    #[arg(long)]
    pub data: PathBuf,
    /// Window length (default: the model's context, max_position_embeddings).
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Sliding windows every S tokens, scoring only new tokens (default: non-overlapping windows).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Tokenizer directory (default: the model directory); unused for token shards.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// JSONL field holding the text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    #[arg(long, default_value = "flex")]
    pub backend: String,
    #[command(flatten)]
    pub weights: WeightsArg,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `opt eval`
pub fn eval(args: EvalArgs) -> Result<()> {
    let kind: BackendKind = args.backend.parse()?;
    args.weights.check(kind)?;
    opt::backend::run(kind, Eval(args))?
}

struct Eval(EvalArgs);

impl BackendTask for Eval {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let model = args.weights.load::<B::InnerBackend>(&args.model, &device)?;
        let (tokens, source) = if let Some(files) = opt::data::shard_files(&args.data) {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            (opt::data::read_shards(&files)?, names.join(", "))
        } else {
            let tok_dir = args.tokenizer.clone().unwrap_or_else(|| args.model.clone());
            let tokenizer = OptTokenizer::from_dir(&tok_dir).with_context(|| {
                format!(
                    "{} has no tokenizer files; pass --tokenizer DIR",
                    tok_dir.display()
                )
            })?;
            let options = opt::data::CorpusOptions {
                text_field: args.text_field.clone(),
                ..Default::default()
            };
            let (tokens, docs) = opt::data::text_tokens(&args.data, &tokenizer, &options)?;
            (tokens, format!("{docs} documents joined with \"\\n\\n\""))
        };
        let vocab = model.config.vocab_size;
        if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            bail!(
                "{}: token id {bad} is outside the model's vocabulary of {vocab}; was it prepared with another tokenizer?",
                args.data.display()
            );
        }
        let seq_len = args.seq_len.unwrap_or(model.config.max_position_embeddings);
        let report =
            opt::eval::perplexity(&model, &tokens, seq_len, args.stride, args.batch, &device)?;
        if args.json {
            let mut v = serde_json::to_value(&report)?;
            v["data"] = args.data.display().to_string().into();
            v["source"] = source.into();
            println!("{v}");
        } else {
            println!(
                "{} ({source}): {} tokens scored in {} windows of {}{}; mean loss {:.4}, perplexity {:.3}{}",
                args.data.display(),
                report.tokens,
                report.windows,
                seq_len,
                args.stride.map(|s| format!(" (stride {s})")).unwrap_or_default(),
                report.mean_loss,
                report.perplexity,
                if report.dropped_tokens > 0 {
                    format!("; {} tail tokens fit no whole window and were not scored", report.dropped_tokens)
                } else {
                    String::new()
                }
            );
        }
        Ok(())
    }
}
