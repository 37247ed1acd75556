//! `opt bench`: throughput of training steps and generation on random weights, with the setup
//! printed beside the figure (compare with `../shared/bench/torch_baseline.py` in the same sitting).

use std::time::Instant;

use anyhow::{bail, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};
use opt::model::generate::{generate, GenerateConfig};
use opt::train::{init_model, train_parallel, Precision, TrainConfig, TrainData, INIT_STD};
use opt::{BackendKind, BackendTask};
use serde_json::json;

use crate::measure::{
    copy_bandwidth_gb_s, dense_bf16_peak_tflops, find_preset, median, nvidia_gpu_name,
    peak_rss_mib, random_tokens, reset_peak_rss, threads,
};
use crate::weights_arg::WeightsArg;

/// What to measure.
#[derive(Subcommand, Clone)]
pub enum BenchCommand {
    /// Training steps (forward, loss, backward, global clip, AdamW) on random tokens.
    Train(BenchTrainArgs),
    /// One AdamW update with the global clip: the loop's flat optimizer vs Burn's per-tensor one.
    Optimizer(crate::bench_optim::BenchOptimArgs),
    /// Greedy generation with the KV cache from random prompts (prefill included).
    Generate(BenchGenerateArgs),
    /// An OpenAI-compatible server under N concurrent streaming clients (continuous batching).
    Serve(crate::bench_serve::BenchServeArgs),
    /// Document tokenization (as `opt data prepare` runs it) vs `tokenizers`' encode_batch.
    Data(crate::data_cmd::BenchDataArgs),
}

/// Arguments of `opt bench train`.
#[derive(Args, Clone)]
pub struct BenchTrainArgs {
    #[arg(long, default_value = "cpu-small")]
    pub preset: String,
    /// Timed steps (after `--warmup` untimed ones).
    #[arg(long, default_value_t = 12)]
    pub steps: u64,
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Sequences per step (one micro-batch, no accumulation).
    #[arg(long, visible_alias = "micro-batch", default_value_t = 8)]
    pub batch: usize,
    /// Sequence length (default: the preset's).
    #[arg(long)]
    pub seq_len: Option<usize>,
    #[arg(long, default_value = "flex")]
    pub backend: String,
    /// f32, or bf16 / f16 (with dynamic loss scaling) compute with f32 master weights (flex, cuda).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// Dropout probability (default: the preset's).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Dropout masks: `keyed` (what training uses) or `burn` (Burn's `Dropout`, for comparison).
    #[arg(long, default_value = "keyed", value_parser = ["keyed", "burn"])]
    pub dropout_impl: String,
    /// Activation recompute (as `opt train --recompute`): one layer's activations at a time.
    #[arg(long)]
    pub recompute: bool,
    /// Data-parallel workers, one micro-batch of `--batch` each per step (see `opt train --devices`).
    #[arg(long, default_value = "1")]
    pub devices: opt::DeviceSpec,
    /// Device peak in TFLOP/s for the MFU (6N + 12·L·d·T FLOPs per token, PaLM's count, as
    /// `opt train`). Default on cuda: the detected GPU's dense bf16 peak (H100 SXM / H200 989.4,
    /// H100 PCIe 756, A100 312); none elsewhere.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Print one JSON object (key `tokens_per_second`: the median over the timed steps).
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `opt bench generate`.
#[derive(Args, Clone)]
pub struct BenchGenerateArgs {
    #[arg(long, default_value = "125m")]
    pub preset: String,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, default_value_t = 32)]
    pub prompt_len: usize,
    /// Exactly this many new tokens per row (EOS does not stop a row).
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Timed runs (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    #[arg(long, default_value = "flex")]
    pub backend: String,
    #[command(flatten)]
    pub weights: WeightsArg,
    /// Print one JSON object (key `new_tokens_per_second`: the median over the timed runs).
    #[arg(long)]
    pub json: bool,
}

/// `opt bench ...`
pub fn run(command: BenchCommand) -> Result<()> {
    if cfg!(debug_assertions) {
        eprintln!(
            "note: this `opt` is a dev build, which trains about half as fast on CPU; \
             measure with `cargo run --release -p opt-cli -- bench ...`"
        );
    }
    match command {
        BenchCommand::Train(a) => {
            opt::backend::run(a.backend.parse::<BackendKind>()?, BenchTrain(a))?
        }
        BenchCommand::Generate(a) => {
            let kind = a.backend.parse::<BackendKind>()?;
            a.weights.check(kind)?;
            opt::backend::run(kind, BenchGenerate(a))?
        }
        BenchCommand::Optimizer(a) => crate::bench_optim::run(a),
        BenchCommand::Data(a) => crate::data_cmd::bench(a),
        BenchCommand::Serve(a) => crate::bench_serve::run(a),
    }
}

struct BenchTrain(BenchTrainArgs);

impl BackendTask for BenchTrain {
    type Output = Result<()>;
    const TRAINS: bool = true;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let a = self.0;
        let mut p = find_preset(&a.preset)?;
        if let Some(s) = a.seq_len {
            p.seq_len = s;
        }
        if a.steps == 0 {
            bail!("--steps must be at least 1");
        }
        let total = a.warmup + a.steps;
        let devices = opt::worker_devices::<B>(&a.devices, &device).map_err(anyhow::Error::msg)?;
        let n = devices.len();
        let mut config = TrainConfig::for_preset(&p, total, a.batch, Some(n * a.batch * p.seq_len));
        (config.checkpoint_every, config.eval_every) = (0, 0);
        config.precision = a.precision;
        config.recompute = a.recompute;
        if a.recompute && a.dropout_impl == "burn" {
            bail!("--recompute needs keyed dropout masks (--dropout-impl keyed): Burn's are not replayed");
        }
        if let Some(d) = a.dropout {
            config.model.dropout = d;
        }
        opt::model::dropout::use_burn_dropout(a.dropout_impl == "burn");
        config.validate()?;
        let blocks = n * a.batch * total as usize;
        let data = TrainData {
            train: random_tokens(blocks * (p.seq_len + 1), p.config.vocab_size, 1).into(),
            valid: Vec::new().into(),
        };
        let out = std::env::temp_dir().join(format!("opt-bench-train-{}", std::process::id()));
        let (mut speeds, mut losses, mut device_bytes) = (Vec::new(), Vec::new(), None::<u64>);
        let mut on_step = |m: &opt::train::StepMetrics| {
            if m.step > a.warmup {
                speeds.push(m.tokens_per_second);
            }
            losses.push(m.loss);
            // The pool's reservation after each update (it grows to the step's peak and keeps it).
            if let Some(bytes) = opt::backend::device_memory_reserved::<B>(&device) {
                device_bytes = Some(device_bytes.unwrap_or(0).max(bytes));
            }
            std::ops::ControlFlow::Continue(())
        };
        let topology = opt::train::Topology::default();
        let result = train_parallel::<B>(
            &config,
            &data,
            &out,
            false,
            &devices,
            &topology,
            &mut on_step,
        );
        let _ = std::fs::remove_dir_all(&out);
        result?;
        let tps = median(speeds.clone());
        let gpu = (a.backend == "cuda").then(nvidia_gpu_name).flatten();
        let peak_tflops = a
            .peak_tflops
            .or_else(|| gpu.as_deref().and_then(dense_bf16_peak_tflops));
        let flops_per_token = config.flops_per_token();
        let mfu = peak_tflops.map(|t| tps * flops_per_token / (t * 1e12));
        let m = &config.model;
        let formula = format!(
            "6N + 12·L·d·T = 6·{} + 12·{}·{}·{} = {flops_per_token:.4e} FLOPs per token",
            m.num_params(),
            m.num_hidden_layers,
            m.hidden_size,
            config.seq_len
        );
        let device_mib = device_bytes.map(|b| b as f64 / (1 << 20) as f64);
        let setup = json!({
            "preset": p.name, "backend": a.backend, "batch": a.batch, "seq_len": p.seq_len,
            "params": p.config.num_params(), "warmup_steps": a.warmup, "timed_steps": a.steps,
            "threads": threads(), "precision": format!("{:?}", a.precision).to_lowercase(),
            "dropout": config.model.dropout, "dropout_impl": a.dropout_impl, "workers": n,
            "recompute": a.recompute, "gpu": gpu, "peak_tflops": peak_tflops,
        });
        let peak_rss = peak_rss_mib();
        if a.json {
            let mut v = setup;
            v["tokens_per_second"] = tps.into();
            v["per_step_tokens_per_second"] = speeds.into();
            v["peak_rss_mib"] = peak_rss.into();
            v["device_memory_mib"] = device_mib.into();
            v["mfu"] = mfu.into();
            v["flops_per_token"] = flops_per_token.into();
            v["losses"] = losses.into();
            println!("{v}");
        } else {
            let rss = peak_rss.map_or(String::new(), |m| format!(", peak RSS {m:.0} MiB"));
            let dev = device_mib.map_or(String::new(), |m| format!(", device memory {m:.0} MiB"));
            let mfu = mfu.map_or(String::new(), |m| format!(", MFU {:.2}%", 100.0 * m));
            println!(
                "bench train {setup}\n  median {tps:.0} tokens/s over {} steps{rss}{dev}{mfu}\n  {formula}",
                a.steps
            );
        }
        Ok(())
    }
}

struct BenchGenerate(BenchGenerateArgs);

impl BackendTask for BenchGenerate {
    type Output = Result<()>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let a = self.0;
        let p = find_preset(&a.preset)?;
        if a.batch == 0 || a.prompt_len == 0 || a.new_tokens == 0 || a.runs == 0 {
            bail!("--batch, --prompt-len, --new-tokens and --runs must be at least 1");
        }
        let model = a
            .weights
            .convert(init_model::<B>(&p.config, INIT_STD, &device).valid());
        reset_peak_rss();
        let prompts: Vec<Vec<u32>> = (0..a.batch)
            .map(|i| {
                let mut ids = vec![2];
                ids.extend(random_tokens(
                    a.prompt_len - 1,
                    p.config.vocab_size,
                    100 + i as u64,
                ));
                ids
            })
            .collect();
        let config = GenerateConfig {
            max_new_tokens: a.new_tokens,
            eos_token_id: None,
            ..Default::default()
        };
        let (mut speeds, mut prefills) = (Vec::new(), Vec::new());
        for run in 0..=a.runs {
            let started = Instant::now();
            let mut first = None;
            let out = generate(&model, &prompts, &config, |_| {
                first.get_or_insert_with(|| started.elapsed().as_secs_f64());
            })?;
            let seconds = started.elapsed().as_secs_f64();
            let produced: usize = out.new_tokens.iter().map(Vec::len).sum();
            if run > 0 {
                speeds.push(produced as f64 / seconds);
                prefills.push(first.unwrap_or(f64::NAN));
            }
        }
        let tps = median(speeds.clone());
        // Every decoding step reads every matmul weight once: the weight traffic per second,
        // beside a copy's bandwidth measured now (STREAM's copy: bytes read + bytes written).
        let weight_bytes = model.matmul_weight_bytes();
        let weight_gb_s = weight_bytes as f64 * tps / a.batch as f64 / 1e9;
        let peak = peak_rss_mib();
        let copy_gb_s = copy_bandwidth_gb_s();
        let setup = json!({
            "preset": p.name, "backend": a.backend, "batch": a.batch, "prompt_len": a.prompt_len,
            "new_tokens": a.new_tokens, "params": p.config.num_params(), "timed_runs": a.runs,
            "threads": threads(), "dtype": a.weights.dtype.to_string(), "greedy": true,
            "kv_cache": true, "matmul_weight_bytes": weight_bytes,
        });
        if a.json {
            let mut v = setup;
            v["new_tokens_per_second"] = tps.into();
            v["prefill_seconds"] = median(prefills).into();
            v["per_run_new_tokens_per_second"] = speeds.into();
            v["peak_rss_mib"] = peak.into();
            v["weight_gb_per_second"] = weight_gb_s.into();
            v["copy_gb_per_second"] = copy_gb_s.into();
            println!("{v}");
        } else {
            println!(
                "bench generate {setup}\n  median {tps:.1} new tokens/s (prefill + first token {:.3}s), peak RSS {:.0} MiB\n  weights read at {weight_gb_s:.1} GB/s = {:.0}% of a copy's {copy_gb_s:.1} GB/s",
                median(prefills),
                peak.unwrap_or(f64::NAN),
                100.0 * weight_gb_s / copy_gb_s,
            );
        }
        Ok(())
    }
}
