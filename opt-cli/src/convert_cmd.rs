//! `opt convert`: import a checkpoint of another format (Meta's metaseq `.pt` files) into an
//! HF-layout model directory that every other command loads.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use opt::data::OptTokenizer;
use opt::model::metaseq::{self, HeadsSource, MetaseqCheckpoint};
use opt::model::Precision;

/// Checkpoint formats `opt convert` reads.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SourceFormat {
    /// metaseq (Meta's training code): `reshard.pt` or `reshard-model_part-K.pt` files.
    Metaseq,
}

/// Weight precision to write.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DtypeArg {
    /// float32.
    F32,
    /// float16.
    F16,
    /// bfloat16.
    Bf16,
}

impl From<DtypeArg> for Precision {
    fn from(d: DtypeArg) -> Self {
        match d {
            DtypeArg::F32 => Precision::F32,
            DtypeArg::F16 => Precision::F16,
            DtypeArg::Bf16 => Precision::Bf16,
        }
    }
}

/// Arguments of `opt convert`.
#[derive(Args)]
pub struct ConvertArgs {
    /// Source format.
    #[arg(long, value_enum)]
    pub from: SourceFormat,
    /// The checkpoint: one `.pt` file, or every `-model_part-K` part of a model-parallel one.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Output directory (config.json + model.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Weight precision to write [default: the checkpoint's].
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,
    /// Attention heads, when the checkpoint's cfg cannot be read and it is no OPT paper size.
    #[arg(long)]
    pub heads: Option<usize>,
    /// OPT tokenizer directory (vocab.json + merges.txt, or tokenizer.json) to copy into --out.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

/// `opt convert`
pub fn run(args: ConvertArgs) -> Result<()> {
    let SourceFormat::Metaseq = args.from;
    // Check the tokenizer before the (possibly long) import.
    let tokenizer = args.tokenizer.as_deref().map(load_tokenizer).transpose()?;
    let ckpt = metaseq::import(&args.paths, args.heads)?;
    let dtype = args.dtype.map_or(ckpt.dtype, Precision::from);
    if let Some(tokenizer) = &tokenizer {
        let vocab = ckpt.config.vocab_size;
        if tokenizer.vocab_size() > vocab {
            bail!(
                "--tokenizer: {} ids do not fit the model's vocabulary of {vocab}",
                tokenizer.vocab_size()
            );
        }
    }
    metaseq::write_hf_dir(&ckpt, &args.out, dtype)?;
    if let Some(tokenizer) = &tokenizer {
        tokenizer
            .save(&args.out)
            .with_context(|| format!("writing the tokenizer to {}", args.out.display()))?;
    }
    print_summary(&ckpt, dtype, &args.out, tokenizer.is_some());
    Ok(())
}

/// An OPT tokenizer directory to copy next to the weights (metaseq checkpoints carry none).
fn load_tokenizer(dir: &Path) -> Result<OptTokenizer> {
    // The built-in `gpt2` numbers GPT-2's tokens g -> g + 4; Meta's checkpoints use fairseq's
    // frequency-sorted dict.txt order, so its ids would select the wrong embedding rows.
    if dir.as_os_str() == "gpt2" && !dir.exists() {
        bail!("--tokenizer gpt2: the built-in GPT-2 ids are not Meta's OPT ids; pass a directory with OPT's vocab.json + merges.txt (any facebook/opt-* repository on the HF hub)");
    }
    OptTokenizer::from_dir(dir).with_context(|| format!("--tokenizer {}", dir.display()))
}

/// One summary line and the command to try next.
fn print_summary(ckpt: &MetaseqCheckpoint, dtype: Precision, out: &Path, has_tokenizer: bool) {
    let c = &ckpt.config;
    let heads = match ckpt.heads_source {
        HeadsSource::Override => "--heads".to_string(),
        HeadsSource::Cfg => "cfg".to_string(),
        HeadsSource::PaperSize(name) => format!("the OPT-{name} shape"),
    };
    println!(
        "converted {} metaseq part(s) ({}) -> {} ({}): {} layers, hidden {}, heads {} (from {heads}), vocab {}, {}-LN, {} parameters",
        ckpt.files.len(),
        ckpt.dtype.torch_name(),
        out.display(),
        dtype.torch_name(),
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.vocab_size,
        if c.do_layer_norm_before { "pre" } else { "post" },
        c.num_params()
    );
    let out = out.display();
    if has_tokenizer {
        println!("next: opt generate --model {out} --prompt \"Hello\"");
    } else {
        println!("metaseq checkpoints carry no tokenizer: pass OPT's (vocab.json + merges.txt from any facebook/opt-* repository), e.g. `opt generate --model {out} --tokenizer OPT_TOKENIZER_DIR --prompt \"Hello\"`, or convert again with --tokenizer DIR");
    }
}
