//! The step-based training loop: gradient accumulation to the paper's token batch, warmup + linear
//! decay, global clipping, AdamW, metrics, validation, atomic checkpoints and exact resume.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::AutodiffBackend;
use opt_data::{BlockLoader, Cursor, Tokens};
use opt_model::{Opt, OptConfig};
use serde::{Deserialize, Serialize};

use crate::optim::{AdamWSettings, OptAdamW};
use crate::precision::Precision;
use crate::schedule::LrSchedule;

/// Errors of a training run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{0}")]
    Config(String),
    #[error(
        "{out}: resume asked for, but no complete checkpoint was found under {out}/checkpoints"
    )]
    NothingToResume { out: PathBuf },
    #[error("worker {rank}: {message}")]
    Worker { rank: usize, message: String },
    #[error("worker {rank}: stopped because another worker failed")]
    Aborted { rank: usize },
}

/// Everything that defines a run; written to `OUT/config.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub preset: String,
    pub model: OptConfig,
    pub seq_len: usize,
    /// Sequences per forward/backward pass.
    pub micro_batch: usize,
    /// Micro-batches per update (tokens per update = seq_len * micro_batch * grad_accum).
    pub grad_accum: usize,
    pub max_steps: u64,
    pub schedule: LrSchedule,
    /// Global gradient-norm clip (<= 0 disables).
    pub clip_norm: f64,
    pub adamw: AdamWSettings,
    pub init_std: f64,
    pub seed: u64,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    pub eval_every: u64,
    pub eval_batches: usize,
    /// Peak FLOP/s of the device, for an MFU estimate (0 = unknown).
    pub peak_flops: f64,
    /// Compute precision (master weights and optimizer state are always f32).
    #[serde(default)]
    pub precision: Precision,
    /// Keep only each layer's input for the backward and recompute the layer's activations there
    /// (`--recompute`): one more forward pass, the activation memory of one layer.
    #[serde(default)]
    pub recompute: bool,
}

impl TrainConfig {
    /// Tokens per optimizer update.
    pub fn tokens_per_step(&self) -> u64 {
        (self.seq_len * self.micro_batch * self.grad_accum) as u64
    }

    /// Training FLOPs per token (6N plus attention), for MFU.
    pub fn flops_per_token(&self) -> f64 {
        let m = &self.model;
        6.0 * m.num_params() as f64
            + 12.0 * (m.num_hidden_layers * m.hidden_size * self.seq_len) as f64
    }

    /// Check the values a run cannot start with.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        if self.seq_len == 0 || self.seq_len > self.model.max_position_embeddings {
            return bad(format!(
                "seq_len {} must be in 1..={} (max_position_embeddings)",
                self.seq_len, self.model.max_position_embeddings
            ));
        }
        if self.micro_batch == 0 || self.grad_accum == 0 || self.max_steps == 0 {
            return bad("micro_batch, grad_accum and max_steps must be at least 1".into());
        }
        self.model
            .validate()
            .map_err(|(f, m)| TrainError::Config(format!("model.{f}: {m}")))
    }
}

/// Training and validation token streams (documents joined with `</s>`).
pub struct TrainData {
    pub train: Tokens,
    pub valid: Tokens,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    pub tokens: u64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub clip_coef: f64,
    pub tokens_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_ppl: Option<f64>,
    /// True when the update was skipped because a gradient was not finite.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub skipped: bool,
}

/// Where the loop is: saved in every checkpoint as `state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct LoopState {
    pub step: u64,
    pub tokens: u64,
    pub cursor: Cursor,
    /// The model config the checkpoint was made with (a resume must not contradict it).
    #[serde(default)]
    pub model: Option<OptConfig>,
    /// Data-parallel workers that made the checkpoint (0 in checkpoints from before it was recorded).
    #[serde(default)]
    pub world_size: usize,
}

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct TrainSummary {
    pub steps: u64,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub last_val_loss: Option<f64>,
    pub median_tokens_per_second: f64,
    pub resumed_from: Option<u64>,
    /// True when `on_step` stopped the run before `max_steps` (a checkpoint was written at `steps`).
    pub stopped: bool,
}

pub(crate) type Rec = NamedMpkFileRecorder<FullPrecisionSettings>;

/// Train (or, with `resume`, continue) a run in `out` on one device; returns the trained model.
/// `on_step` sees every update's metrics; `ControlFlow::Break` stops the run after that update with
/// a checkpoint at its step (a graceful stop: `--resume` continues exactly).
pub fn train<B: AutodiffBackend>(
    config: &TrainConfig,
    data: &TrainData,
    out: &Path,
    resume: bool,
    device: &B::Device,
    mut on_step: impl FnMut(&StepMetrics) -> ControlFlow<()>,
) -> Result<(Opt<B>, TrainSummary), TrainError> {
    crate::parallel::train_parallel::<B>(
        config,
        data,
        out,
        resume,
        std::slice::from_ref(device),
        &crate::Topology::default(),
        &mut on_step,
    )
}

/// Check a run's config, backend and data before any worker starts; prepare `out`.
pub(crate) fn check_run<B: AutodiffBackend>(
    config: &TrainConfig,
    data: &TrainData,
    out: &Path,
    resume: bool,
    world: usize,
    device: &B::Device,
) -> Result<(), TrainError> {
    config.validate()?;
    if !config.precision.supported::<B>(device) {
        return Err(TrainError::Config(format!(
            "precision {:?} is not supported by this backend (bf16 runs on flex and cuda)",
            config.precision
        )));
    }
    if world == 0 || !config.grad_accum.is_multiple_of(world) {
        return Err(TrainError::Config(format!(
            "{world} workers cannot share an update of {} micro-batches ({} tokens = {} x {} x {}): \
             choose a worker count that divides {}, or change --batch-tokens / --micro-batch",
            config.grad_accum,
            config.tokens_per_step(),
            config.micro_batch,
            config.seq_len,
            config.grad_accum,
            config.grad_accum
        )));
    }
    let blocks = BlockLoader::new(data.train.clone(), config.seq_len, config.seed).num_blocks();
    if blocks < config.micro_batch {
        return Err(TrainError::Config(format!(
            "the training data has {} tokens: fewer than one micro-batch of {} x {} tokens",
            data.train.len(),
            config.micro_batch,
            config.seq_len + 1
        )));
    }
    std::fs::create_dir_all(out.join("checkpoints")).map_err(|e| TrainError::Io {
        path: out.into(),
        message: e.to_string(),
    })?;
    if !resume {
        // A fresh run must not append to another run's metrics.
        let _ = std::fs::remove_file(out.join("metrics.jsonl"));
    }
    Ok(())
}

/// Mean loss over up to `max_batches` consecutive validation blocks (None if there is no whole block).
pub fn evaluate<B: Backend>(
    model: &Opt<B>,
    tokens: &Tokens,
    seq_len: usize,
    batch: usize,
    max_batches: usize,
    device: &B::Device,
) -> Option<f64> {
    let (sum, count) = evaluate_part(model, tokens, seq_len, batch, max_batches, (0, 1), device);
    (count > 0.0).then(|| sum / count)
}

/// (loss sum, token count) of the batches of [`evaluate`] whose index is `part.0` modulo `part.1`.
pub(crate) fn evaluate_part<B: Backend>(
    model: &Opt<B>,
    tokens: &Tokens,
    seq_len: usize,
    batch: usize,
    max_batches: usize,
    (part, parts): (usize, usize),
    device: &B::Device,
) -> (f64, f64) {
    let loader = BlockLoader::new(tokens.clone(), seq_len, 0);
    let blocks = loader.num_blocks().min(batch * max_batches.max(1));
    let (mut sum, mut count) = (0.0, 0.0);
    for start in (0..blocks).step_by(batch).skip(part).step_by(parts) {
        let blocks: Vec<_> = (start..(start + batch).min(blocks))
            .map(|i| loader.block(i))
            .collect();
        let rows: Vec<&[u32]> = blocks.iter().map(|b| b.as_ref()).collect();
        let (s, c) = crate::eval::score_rows(model, &rows, 0, device);
        sum += s;
        count += c;
    }
    (sum, count)
}

/// Refuse a resume whose model config differs from the one `dir`'s checkpoint was made with
/// (loading it would put tensors of one shape into a model of another).
pub(crate) fn check_model_config(dir: &Path, model: &OptConfig) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(dir.join("state.json")) else {
        return Ok(()); // unreadable: the resume falls back past it
    };
    let Ok(LoopState {
        model: Some(saved), ..
    }) = serde_json::from_str::<LoopState>(&text)
    else {
        return Ok(());
    };
    let as_map = |c: &OptConfig| {
        let mut c = c.clone();
        c.extra.clear();
        serde_json::to_value(c).expect("config serialises")
    };
    let (saved, given) = (as_map(&saved), as_map(model));
    if let Some((key, was)) = saved
        .as_object()
        .into_iter()
        .flatten()
        .find(|(k, v)| given.get(k.as_str()) != Some(v))
    {
        return Err(TrainError::Config(format!(
            "the run's config contradicts checkpoint {}: model.{key} is {} there but {} now",
            dir.display(),
            was,
            given.get(key.as_str()).cloned().unwrap_or_default()
        )));
    }
    Ok(())
}

/// Write `checkpoints/step-N/` atomically (a temp folder renamed when complete); keep the last `keep`.
pub(crate) fn save_checkpoint<B: AutodiffBackend>(
    out: &Path,
    model: &Opt<B>,
    optim: &OptAdamW<Opt<B>, B>,
    state: &LoopState,
    keep: usize,
) -> Result<(), TrainError> {
    let root = out.join("checkpoints");
    let dir = root.join(format!("step-{}", state.step));
    let tmp = root.join(format!(".step-{}.tmp", state.step));
    let io = |path: &Path, e: &dyn std::fmt::Display| TrainError::Io {
        path: path.into(),
        message: e.to_string(),
    };
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, &e))?;
    model
        .clone()
        .save_file(tmp.join("model"), &Rec::new())
        .map_err(|e| io(&tmp, &e))?;
    optim.save(&tmp).map_err(|e| io(&tmp, &e))?;
    let state_json = serde_json::to_string_pretty(state).expect("state serialises");
    opt_model::fsutil::write_atomic(&tmp.join("state.json"), state_json.as_bytes())
        .map_err(|e| io(&tmp, &e))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| io(&dir, &e))?;
    let mut steps = checkpoint_steps(&root);
    steps.sort_unstable();
    while steps.len() > keep.max(1) {
        let old = steps.remove(0);
        let _ = std::fs::remove_dir_all(root.join(format!("step-{old}")));
    }
    Ok(())
}

fn checkpoint_steps(root: &Path) -> Vec<u64> {
    std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix("step-")?
                    .parse()
                    .ok()
            })
            .collect()
        })
        .unwrap_or_default()
}

/// Complete checkpoint folders, newest first.
pub(crate) fn checkpoint_dirs(out: &Path) -> Vec<PathBuf> {
    let root = out.join("checkpoints");
    let mut steps = checkpoint_steps(&root);
    steps.sort_unstable_by(|a, b| b.cmp(a));
    steps
        .into_iter()
        .map(|s| root.join(format!("step-{s}")))
        .collect()
}

impl TrainConfig {
    /// The paper's recipe for `preset`: its LR, token batch (by gradient accumulation over
    /// micro-batches of `micro_batch` sequences) and schedule. The small CPU presets warm up over
    /// 5% of `max_steps` and decay over the run instead of over 300B tokens.
    pub fn for_preset(
        preset: &opt_model::Preset,
        max_steps: u64,
        micro_batch: usize,
        batch_tokens: Option<usize>,
    ) -> Self {
        let seq_len = preset.seq_len;
        let batch_tokens = batch_tokens.unwrap_or(preset.batch_tokens);
        let micro_batch = micro_batch.max(1);
        let grad_accum = (batch_tokens / (seq_len * micro_batch)).max(1);
        let tokens_per_step = (seq_len * micro_batch * grad_accum) as u64;
        let schedule = schedule_for(preset, max_steps, tokens_per_step);
        Self {
            preset: preset.name.to_string(),
            model: preset.config.clone(),
            seq_len,
            micro_batch,
            grad_accum,
            max_steps,
            schedule,
            clip_norm: 1.0,
            adamw: AdamWSettings::default(),
            init_std: crate::init::INIT_STD,
            seed: 0,
            checkpoint_every: 100,
            keep_checkpoints: 3,
            eval_every: 100,
            eval_batches: 8,
            peak_flops: 0.0,
            precision: Precision::F32,
            recompute: false,
        }
    }
}

/// The schedule of `preset` for a run of `steps` updates of `tokens_per_step` tokens: the paper's
/// (token based: 375M warmup, decay over 300B) for the paper sizes, else [`LrSchedule::over_run`].
fn schedule_for(preset: &opt_model::Preset, steps: u64, tokens_per_step: u64) -> LrSchedule {
    if preset.config.vocab_size == 50272 {
        LrSchedule::paper(preset.max_lr, tokens_per_step)
    } else {
        LrSchedule::over_run(preset.max_lr, steps)
    }
}

impl TrainConfig {
    /// The schedule this run's preset derives for `steps` updates, at this run's peak LR
    /// (`--extend-schedule`, `--schedule-steps`); a run of an unknown preset decays over `steps`.
    pub fn schedule_for_steps(&self, steps: u64) -> LrSchedule {
        let derived = match opt_model::preset(&self.preset) {
            Some(p) if p.config.vocab_size == 50272 => {
                let mut s = schedule_for(&p, steps, self.tokens_per_step());
                s.total_steps = steps.max(s.warmup_steps + 1);
                s
            }
            _ => LrSchedule::over_run(self.schedule.max_lr, steps),
        };
        LrSchedule {
            max_lr: self.schedule.max_lr,
            final_ratio: self.schedule.final_ratio,
            ..derived
        }
    }
}
