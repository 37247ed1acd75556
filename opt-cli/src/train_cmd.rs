//! `opt train`: resolve the run's config, prepare its data, train, export, and print a sample.

use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use opt::data::{is_prepared, load_manifest, OptTokenizer, PrepareError, PrepareOptions};
use opt::model::checkpoint;
use opt::model::generate::{generate, GenerateConfig, Sampling};
use opt::train::{
    prepare, train_parallel, DataSource, Fault, Precision, Topology, TrainConfig, TrainData,
};
use opt::{BackendKind, BackendTask};

use crate::progress::Progress;
use crate::stop::StopFlag;

/// Arguments of `opt train`.
#[derive(Args, Clone)]
pub struct TrainArgs {
    /// Model size: a paper size (125m ... 175b) or a CPU preset (tiny, cpu-small).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// A TOML run config (as written to OUT/config.toml); flags given here override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Text/JSONL files or folders (.gz/.zst too), or one folder made by `opt data prepare`
    /// (default: Shakespeare, fetched at first use).
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Output directory (default: `runs/<preset>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its last complete checkpoint.
    #[arg(long, conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// Updates to run (on --resume: may be raised; see --extend-schedule).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Length of the LR schedule in updates, apart from where the run stops (metaseq's
    /// --total-num-update vs --max-update); default: the preset's (CPU presets: --max-steps).
    #[arg(long)]
    pub schedule_steps: Option<u64>,
    /// On --resume with a larger --max-steps: re-derive warmup and decay for the new length
    /// (default: the schedule the run started with, at its floor past its end).
    #[arg(long, requires = "resume")]
    pub extend_schedule: bool,
    /// Off a terminal, print a progress line every N updates (default: about every 10 s).
    #[arg(long)]
    pub log_every: Option<u64>,
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    #[arg(long)]
    pub eval_every: Option<u64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sequences per forward/backward pass.
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Tokens per update (reached by gradient accumulation; default: the preset's).
    #[arg(long)]
    pub batch_tokens: Option<usize>,
    /// Peak learning rate (default: the paper's for the preset).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Global gradient-norm clip (may be changed when resuming).
    #[arg(long)]
    pub clip: Option<f64>,
    /// Device peak in TFLOP/s, for an MFU estimate in the logs.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// `gpt2` (built in), a tokenizer directory or a tokenizer.json (default: train a BPE on the
    /// training split, or the prepared folder's tokenizer).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[arg(long, default_value = "flex")]
    pub backend: String,
    /// Compute precision: f32, or bf16 / f16 (the paper's, with dynamic loss scaling) with f32
    /// master weights and optimizer state (flex, cuda).
    #[arg(long)]
    pub precision: Option<Precision>,
    /// Activation recompute: keep only each layer's input for the backward and recompute the
    /// layer there (one more forward pass; the activation memory of one layer). Kept on a resume.
    #[arg(long)]
    pub recompute: bool,
    /// Dropout probability (residual and FFN outputs); default: the preset's (0.1, like metaseq).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Dropout on the attention probabilities; default: the preset's (0.0, like HF's OPT configs).
    #[arg(long)]
    pub attention_dropout: Option<f64>,
    /// Data-parallel workers: a count (CPU backends: workers sharing the CPU; CUDA: GPUs 0..N),
    /// GPU indices (0,1,2,3) or `all`. The update's micro-batches are divided among them.
    #[arg(long, default_value = "1")]
    pub devices: opt::DeviceSpec,
    /// Processes ("nodes") in a multi-node run, each started with the same flags and its own --node-rank.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// This node's index in 0..--nodes (node 0 writes metrics, checkpoints and the export).
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// The address of `opt coordinator` (HOST:PORT), for --nodes > 1.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// HOST:PORT where the other nodes reach this one, for --nodes > 1 (burn-collective 0.21
    /// listens on every interface at PORT).
    #[arg(long)]
    pub node_listen: Option<String>,
    /// Seconds a worker waits in one collective call for the others before the run ends with an
    /// error (must exceed the time to write a checkpoint).
    #[arg(long, default_value_t = 50.0)]
    pub collective_timeout: f64,
    /// Prompt for the sample printed at the end.
    #[arg(long, default_value = "ROMEO:")]
    pub sample_prompt: String,
}

/// `opt train`
pub fn run(args: TrainArgs) -> Result<()> {
    let kind: BackendKind = args.backend.parse()?;
    opt::backend::run(kind, Train(args))?
}

struct Train(TrainArgs);

impl BackendTask for Train {
    type Output = Result<()>;
    const TRAINS: bool = true;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let args = self.0;
        let resume = args.resume.is_some();
        let out = args
            .resume
            .clone()
            .or(args.out.clone())
            .unwrap_or_else(|| PathBuf::from("runs").join(&args.preset));
        let tokenizer = args
            .tokenizer
            .as_deref()
            .map(|t| {
                OptTokenizer::load(t)
                    .with_context(|| format!("loading --tokenizer {}", t.display()))
            })
            .transpose()?;
        let source = match args.data.as_slice() {
            [] => DataSource::Default,
            [dir] if is_prepared(dir) => DataSource::Prepared(dir.clone()),
            paths => DataSource::Paths(paths.to_vec()),
        };
        let mut config = resolve_config(&args, &out, resume)?;
        fit_vocab(
            &mut config,
            &tokenizer,
            &source,
            !resume && args.config.is_none(),
        )?;
        std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let mut stored = config.clone();
        stored.model.extra.clear();
        std::fs::write(out.join("config.toml"), toml::to_string_pretty(&stored)?)
            .with_context(|| format!("writing {}/config.toml", out.display()))?;

        let options = PrepareOptions {
            seed: config.seed,
            ..Default::default()
        };
        let prepared = prepare(&out, &source, tokenizer, config.model.vocab_size, &options)?;
        let tokenizer = prepared.tokenizer;
        let data = TrainData {
            train: prepared.train,
            valid: prepared.valid,
        };

        eprintln!(
            "training {} ({} params) on {} in {:?}: {} steps of {} tokens ({} x {} x {} accum), lr {:.1e}",
            config.preset,
            config.model.num_params(),
            args.backend,
            config.precision,
            config.max_steps,
            config.tokens_per_step(),
            config.micro_batch,
            config.seq_len,
            config.grad_accum,
            config.schedule.max_lr
        );
        let stop = StopFlag::install()?;
        let mut progress = Progress::new(config.max_steps, args.log_every);
        let started = std::time::Instant::now();
        let devices =
            opt::worker_devices::<B>(&args.devices, &device).map_err(anyhow::Error::msg)?;
        let topology = topology(&args)?;
        if devices.len() * topology.nodes > 1 {
            eprintln!(
                "data parallel: {} worker(s) on this node x {} node(s), {} micro-batch(es) each per update",
                devices.len(),
                topology.nodes,
                config.grad_accum / (devices.len() * topology.nodes).max(1)
            );
        }
        let mut on_step = |m: &opt::train::StepMetrics| {
            progress.step(m);
            if stop.requested() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let (model, summary) = train_parallel::<B>(
            &config,
            &data,
            &out,
            resume,
            &devices,
            &topology,
            &mut on_step,
        )?;
        progress.finish();
        if summary.stopped {
            eprintln!(
                "stopped by a signal after step {}: checkpoint {}/checkpoints/step-{} written; \
                 continue with `opt train --resume {}`",
                summary.steps,
                out.display(),
                summary.steps,
                out.display()
            );
            return Ok(());
        }
        eprintln!(
            "done: {} steps in {:.1}s; loss {:.3} -> {:.3}; val loss {}; median {:.0} tok/s",
            summary.steps,
            started.elapsed().as_secs_f64(),
            summary.first_loss.unwrap_or(f64::NAN),
            summary.last_loss.unwrap_or(f64::NAN),
            summary
                .last_val_loss
                .map_or("n/a".into(), |v| format!("{v:.3} (ppl {:.1})", v.exp())),
            summary.median_tokens_per_second
        );

        if topology.node_rank != 0 {
            return Ok(()); // node 0 exports the model
        }
        let export = out.join("model");
        let model = model.valid();
        checkpoint::save_pretrained(&model, &export)?;
        tokenizer.save(&export)?;
        eprintln!("exported the model (HF layout) to {}", export.display());
        match crate::plot_cmd::run_curves(&out) {
            Ok(path) => eprintln!("curves: {}", path.display()),
            Err(e) => eprintln!("warning: no curves.png: {e:#}"),
        }
        print_sample(&model, &tokenizer, &args.sample_prompt)?;
        Ok(())
    }
}

fn print_sample<B: burn::prelude::Backend>(
    model: &opt::model::Opt<B>,
    tokenizer: &OptTokenizer,
    prompt: &str,
) -> Result<()> {
    let ids = tokenizer.encode(prompt)?;
    let config = GenerateConfig {
        max_new_tokens: 60.min(
            model
                .config
                .max_position_embeddings
                .saturating_sub(ids.len()),
        ),
        sampling: Sampling {
            temperature: 0.8,
            top_k: Some(40),
            seed: 0,
            ..Default::default()
        },
        eos_token_id: Some(model.config.eos_token_id as u32),
        ..Default::default()
    };
    let out = generate(model, &[ids], &config, |_| {})?;
    println!(
        "--- sample (temperature 0.8, top-k 40, seed 0) ---\n{prompt}{}",
        tokenizer.decode(&out.new_tokens[0], true)?
    );
    Ok(())
}

/// The run's config: the stored one when resuming (only schedule-independent knobs may change),
/// else the preset's (or --config's) with the flags applied.
fn resolve_config(args: &TrainArgs, out: &std::path::Path, resume: bool) -> Result<TrainConfig> {
    let stored_path = out.join("config.toml");
    if resume {
        let text = std::fs::read_to_string(&stored_path).with_context(|| {
            format!("{} holds no run to resume (no config.toml)", out.display())
        })?;
        let mut config: TrainConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", stored_path.display()))?;
        if args.preset != "tiny" && args.preset != config.preset {
            bail!(
                "--preset {} contradicts the run in {} (preset {})",
                args.preset,
                out.display(),
                config.preset
            );
        }
        for (flag, given) in [
            ("--micro-batch", args.micro_batch.is_some()),
            ("--batch-tokens", args.batch_tokens.is_some()),
            ("--lr", args.lr.is_some()),
            ("--seed", args.seed.is_some()),
            ("--config", args.config.is_some()),
            ("--data", !args.data.is_empty()),
            ("--tokenizer", args.tokenizer.is_some()),
            ("--dropout", args.dropout.is_some()),
            ("--attention-dropout", args.attention_dropout.is_some()),
        ] {
            if given {
                bail!(
                    "{flag} cannot change when resuming: it would contradict the checkpoints in {}",
                    out.display()
                );
            }
        }
        let before = config.max_steps;
        apply_run_length_flags(args, &mut config);
        resume_schedule(args, &mut config, before);
        return Ok(config);
    }
    if stored_path.exists() || out.join("checkpoints").exists() {
        bail!(
            "{} already holds a run; continue it with --resume {} or choose another --out",
            out.display(),
            out.display()
        );
    }
    if std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "{} is not empty and holds no run; choose an empty or new --out",
            out.display()
        );
    }
    let mut config = match &args.config {
        Some(path) => toml::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?,
        None => {
            let p = crate::measure::find_preset(&args.preset)?;
            let default_steps = if p.config.vocab_size == 50272 {
                1000
            } else {
                600
            };
            let micro = args.micro_batch.unwrap_or(if p.config.vocab_size == 50272 {
                8
            } else {
                p.batch_tokens / p.seq_len
            });
            TrainConfig::for_preset(
                &p,
                args.max_steps.unwrap_or(default_steps),
                micro,
                args.batch_tokens,
            )
        }
    };
    apply_run_length_flags(args, &mut config);
    if let Some(n) = args.schedule_steps {
        config.schedule = config.schedule_for_steps(n);
    }
    if let Some(v) = args.seed {
        config.seed = v;
    }
    if let Some(v) = args.lr {
        config.schedule.max_lr = v;
    }
    if let Some(t) = args.peak_tflops {
        config.peak_flops = t * 1e12;
    }
    if let Some(p) = args.dropout {
        config.model.dropout = p;
    }
    if let Some(p) = args.attention_dropout {
        config.model.attention_dropout = p;
    }
    config.validate()?;
    Ok(config)
}

/// The run's layout over nodes, from the flags (and the `OPT_TEST_FAULT` test hook).
fn topology(args: &TrainArgs) -> Result<Topology> {
    if !(args.collective_timeout > 0.0 && args.collective_timeout.is_finite()) {
        bail!("--collective-timeout must be a positive number of seconds");
    }
    let fault = std::env::var("OPT_TEST_FAULT")
        .ok()
        .map(|s| s.parse::<Fault>().map_err(anyhow::Error::msg))
        .transpose()
        .context("OPT_TEST_FAULT")?;
    let topology = Topology {
        nodes: args.nodes,
        node_rank: args.node_rank,
        coordinator: args.coordinator.clone(),
        node_listen: args.node_listen.clone(),
        timeout: std::time::Duration::from_secs_f64(args.collective_timeout),
        fault,
    };
    topology.validate()?;
    Ok(topology)
}

/// Flags that may change on a fresh run and on a resume alike (they do not contradict checkpoints).
fn apply_run_length_flags(args: &TrainArgs, config: &mut TrainConfig) {
    if let Some(n) = args.max_steps {
        config.max_steps = n;
    }
    if let Some(c) = args.clip {
        config.clip_norm = c;
    }
    if let Some(n) = args.checkpoint_every {
        config.checkpoint_every = n;
    }
    if let Some(n) = args.eval_every {
        config.eval_every = n;
    }
    if let Some(p) = args.precision {
        config.precision = p;
    }
    if args.recompute {
        config.recompute = true;
    }
}

/// On a resume: keep the run's schedule (saying so when --max-steps now runs past its end), or
/// re-derive it with --extend-schedule / --schedule-steps, printing what changes either way.
fn resume_schedule(args: &TrainArgs, config: &mut TrainConfig, steps_before: u64) {
    let old = config.schedule.clone();
    let new_length = args
        .schedule_steps
        .or(args.extend_schedule.then_some(config.max_steps));
    if let Some(n) = new_length {
        config.schedule = config.schedule_for_steps(n);
        eprintln!(
            "schedule: was {}; now {} (from step {} on)",
            old.describe(),
            config.schedule.describe(),
            steps_before.min(config.max_steps) + 1
        );
    } else if config.max_steps > old.total_steps {
        eprintln!(
            "schedule: {} (fixed when the run started); steps {}..={} continue at the floor lr {:.2e}; \
             pass --extend-schedule to re-derive it for {} steps",
            old.describe(),
            old.total_steps + 1,
            config.max_steps,
            old.lr(old.total_steps),
            config.max_steps
        );
    } else if config.max_steps != steps_before {
        eprintln!("schedule: {} (unchanged)", old.describe());
    }
}

/// A preset's vocabulary grows to hold a larger tokenizer's (rounded up to a multiple of 8, like
/// OPT's 50272), with a notice, when `may_grow`; otherwise (an explicit --config) a larger
/// tokenizer is an error before anything is written.
fn fit_vocab(
    config: &mut TrainConfig,
    tokenizer: &Option<OptTokenizer>,
    source: &DataSource,
    may_grow: bool,
) -> Result<()> {
    let vocab = match (tokenizer, source) {
        (Some(t), _) => t.vocab_size(),
        (None, DataSource::Prepared(dir)) => load_manifest(dir)?.tokenizer.vocab_size,
        _ => return Ok(()),
    };
    let model = config.model.vocab_size;
    if vocab > model && !may_grow {
        return Err(PrepareError::VocabTooLarge {
            tokenizer: vocab,
            model,
        }
        .into());
    }
    if vocab > model {
        let padded = vocab.div_ceil(8) * 8;
        eprintln!(
            "note: the tokenizer has {vocab} ids; the {} preset's vocabulary grows from {model} to {padded}",
            config.preset
        );
        config.model.vocab_size = padded;
    }
    Ok(())
}

/// Arguments of `opt coordinator`.
#[derive(Args)]
pub struct CoordinatorArgs {
    /// HOST:PORT to serve on (burn-collective 0.21 listens on every interface at PORT).
    #[arg(long)]
    pub listen: String,
}

/// `opt coordinator`: the meeting point of a multi-node run's nodes, until interrupted.
pub fn coordinator(args: CoordinatorArgs) -> Result<()> {
    let (host, port) = opt::train::collective::host_port(&args.listen)?;
    // Fail here, with the address, rather than in a log line of the library's server.
    std::net::TcpListener::bind(("0.0.0.0", port))
        .with_context(|| format!("--listen {}: port {port} is not free", args.listen))?;
    eprintln!(
        "coordinator on 0.0.0.0:{port} (every interface; nodes use --coordinator {host}:{port}). \
         The transport is unauthenticated: trusted networks only. Ctrl-C ends it."
    );
    opt::train::serve_coordinator(port)?;
    Ok(())
}
