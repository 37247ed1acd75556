//! What defines a training run: [`TrainConfig`] (the paper's recipe for a preset, written to
//! `OUT/config.toml`), the token streams it trains on and the errors a run reports.

use std::path::PathBuf;

use opt_data::Tokens;
use opt_model::OptConfig;
use serde::{Deserialize, Serialize};

use crate::loss_scale::LossScaleSettings;
use crate::optim::AdamWSettings;
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
    /// The float16 loss scaler's settings (used with `precision = "f16"`).
    #[serde(default)]
    pub loss_scale: LossScaleSettings,
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
        let ls = &self.loss_scale;
        if !(ls.init > 0.0 && ls.floor > 0.0 && ls.floor <= ls.init && ls.window > 0) {
            return bad(format!(
                "loss_scale: init {} and floor {} must be > 0 with floor <= init, window {} >= 1",
                ls.init, ls.floor, ls.window
            ));
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
            loss_scale: LossScaleSettings::default(),
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
