//! One worker's training loop, as the named steps every execution strategy shares: resume, next
//! batch, accumulate, reduce, step (clip and AdamW over the flat layout), log, validate,
//! checkpoint. Gradients are summed flat (one vector per micro-batch, [`crate::bucket`]); alone
//! (one device) the reduce is the identity, in a data-parallel run one all-reduce of that vector.

use std::fs::File;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use opt_data::{Batch, BlockLoader};
use opt_model::{dropout, Opt};

use opt_eval::validation_loss_part;
use serde::{Deserialize, Serialize};

use crate::bucket;
use crate::checkpoint::{
    check_resumable, checkpoint_dirs, load_checkpoint, save_checkpoint, Loaded, LoopState,
    CHECKPOINT_FORMAT,
};
use crate::collective::{Collective, Fault};
use crate::config::{TrainConfig, TrainData, TrainError};
use crate::flat_adamw::{Clip, FlatAdamW, UpdateReport};
use crate::loss_scale::LossScaler;
use crate::precision::{compute_loss, Precision};
use crate::recompute;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: u64,
    pub tokens: u64,
    /// The update's mean loss; a non-finite value is written as `null` and read back as NaN.
    #[serde(deserialize_with = "null_as_nan")]
    pub loss: f64,
    pub lr: f64,
    #[serde(deserialize_with = "null_as_nan")]
    pub grad_norm: f64,
    #[serde(deserialize_with = "null_as_nan")]
    pub clip_coef: f64,
    pub tokens_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
    /// The float16 loss scale the update ran with (`--precision f16`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loss_scale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_ppl: Option<f64>,
    /// True when the update was skipped because a gradient was not finite.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub skipped: bool,
}

/// JSON has no NaN or infinity (serde_json writes them as `null`): read `null` as NaN.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
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

/// The step callback of a run (called on this process's first worker).
pub type OnStep<'a> = &'a mut dyn FnMut(&StepMetrics) -> ControlFlow<()>;

/// Where a worker sits in its run.
pub(crate) struct Seat<B: AutodiffBackend> {
    /// Global rank (0 writes metrics and checkpoints).
    pub rank: usize,
    /// Workers in the run.
    pub world: usize,
    /// Its membership in the collective (`None` when it trains alone).
    pub collective: Option<Collective<B::InnerBackend>>,
    /// Test hook: a failure on purpose.
    pub fault: Option<Fault>,
}

/// A worker's model replica, optimizer and place in the run.
pub(crate) struct Trainer<'a, B: AutodiffBackend> {
    config: &'a TrainConfig,
    data: &'a TrainData,
    out: &'a Path,
    device: B::Device,
    seat: Seat<B>,
    /// `None` only while the optimizer steps.
    model: Option<Opt<B>>,
    optim: FlatAdamW<B>,
    state: LoopState,
    loader: BlockLoader,
    metrics: Option<(PathBuf, File)>,
    summary: TrainSummary,
    speeds: Vec<f64>,
}

/// One update's gradients and loss: this worker's share, then (after [`Trainer::reduce`]) the run's.
struct Update<B: AutodiffBackend> {
    step: u64,
    /// The flat gradients (times the loss scale), then the mean loss over the update's tokens
    /// (this worker's part of the sums before the reduce).
    flat: Tensor<B::InnerBackend, 1>,
}

impl<'a, B: AutodiffBackend> Trainer<'a, B> {
    /// A worker starting from `initial` weights, or from the run's last checkpoint with `resume`.
    pub(crate) fn new(
        config: &'a TrainConfig,
        data: &'a TrainData,
        out: &'a Path,
        resume: bool,
        device: B::Device,
        initial: Opt<B::InnerBackend>,
        seat: Seat<B>,
    ) -> Result<Self, TrainError> {
        // A fresh autodiff leaf per parameter: replicas share no graph node across threads.
        let model = Opt::<B>::from_inner(initial).fork(&device);
        let optim = FlatAdamW::new(&config.adamw, &model, &device);
        let loss_scale =
            (config.precision == Precision::F16).then(|| LossScaler::new(&config.loss_scale));
        let mut trainer = Self {
            config,
            data,
            out,
            loader: BlockLoader::new(data.train.clone(), config.seq_len, config.seed),
            optim,
            state: LoopState {
                model: Some(config.model.clone()),
                world_size: seat.world,
                format: CHECKPOINT_FORMAT,
                loss_scale,
                ..Default::default()
            },
            summary: TrainSummary::default(),
            metrics: None,
            speeds: Vec::new(),
            device,
            seat,
            model: Some(model),
        };
        if resume {
            trainer.resume()?;
        }
        if trainer.seat.rank == 0 {
            if config.model.attention_dropout > 0.0 {
                eprintln!(
                    "note: attention dropout {} needs the attention probabilities as a tensor: \
                     attention runs unfused and keeps every layer's [t, t] scores for the backward",
                    config.model.attention_dropout
                );
            }
            let path = out.join("metrics.jsonl");
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io(&path, &e))?;
            trainer.metrics = Some((path, file));
        }
        Ok(trainer)
    }

    /// Run updates until `max_steps` or until `on_step` (this process's first worker) asks to stop.
    pub(crate) fn run(
        mut self,
        mut on_step: Option<OnStep<'_>>,
    ) -> Result<(Opt<B>, TrainSummary), TrainError> {
        while self.state.step < self.config.max_steps {
            let started = Instant::now();
            let batches = self.next_batches();
            let update = self.accumulate(batches)?;
            let update = self.reduce(update)?;
            let (report, loss_scale) = self.step(update)?;
            let mut m = self.metrics(report, loss_scale, started);
            self.validate(&mut m)?;
            self.log(&m)?;
            let asked = on_step.as_mut().is_some_and(|f| f(&m).is_break());
            let stop = self.agree_to_stop(asked)?;
            self.checkpoint(stop)?;
            if stop && m.step < self.config.max_steps {
                self.summary.stopped = true;
                break;
            }
        }
        if let Some(collective) = self.seat.collective.take() {
            collective.finish()?;
        }
        self.speeds.sort_by(f64::total_cmp);
        self.summary.median_tokens_per_second = self
            .speeds
            .get(self.speeds.len() / 2)
            .copied()
            .unwrap_or(0.0);
        let model = self
            .model
            .take()
            .expect("the model is present between updates");
        Ok((model, self.summary))
    }

    /// Load the newest complete checkpoint (falling back past unreadable ones).
    fn resume(&mut self) -> Result<(), TrainError> {
        let (config, device) = (self.config, &self.device);
        for dir in checkpoint_dirs(self.out) {
            check_resumable(&dir, &config.model)?;
            match load_checkpoint(&dir, self.model().clone(), &config.adamw, device) {
                Ok(Loaded {
                    model,
                    optim,
                    state,
                }) => {
                    if self.seat.rank == 0 {
                        eprintln!("resuming from {} (step {})", dir.display(), state.step);
                        let saved = state.world_size.max(1);
                        if saved != self.seat.world {
                            eprintln!(
                                "note: the checkpoint was made by {saved} worker(s), this run has {}: \
                                 the same tokens per update, summed in another order (equal to \
                                 rounding, not bit for bit)",
                                self.seat.world
                            );
                        }
                    }
                    (self.model, self.optim) = (Some(model), optim);
                    self.summary.resumed_from = Some(state.step);
                    self.summary.steps = state.step;
                    let loss_scale = match (config.precision, state.loss_scale.clone()) {
                        (Precision::F16, None) => Some(LossScaler::new(&config.loss_scale)),
                        (Precision::F16, kept) => kept,
                        _ => None,
                    };
                    self.state = LoopState {
                        model: Some(config.model.clone()),
                        world_size: self.seat.world,
                        loss_scale,
                        ..state
                    };
                    return Ok(());
                }
                Err(e) if self.seat.rank == 0 => eprintln!(
                    "warning: checkpoint {} is unreadable ({e}); falling back to the previous one",
                    dir.display()
                ),
                Err(_) => {}
            }
        }
        Err(TrainError::NothingToResume {
            out: self.out.into(),
        })
    }

    /// This worker's micro-batches of the next update, with their index in the update. Every
    /// worker walks the one batch order; worker `r` of `w` takes the r-th of `w` equal runs and
    /// skips the others' blocks without reading them.
    fn next_batches(&mut self) -> Vec<(usize, Batch)> {
        let (config, cursor) = (self.config, &mut self.state.cursor);
        let mine = config.grad_accum / self.seat.world;
        let first = self.seat.rank * mine;
        self.loader.skip(cursor, first * config.micro_batch);
        let batches = (first..first + mine)
            .map(|i| (i, self.loader.next_batch(cursor, config.micro_batch)))
            .collect();
        let after = config.grad_accum - first - mine;
        self.loader.skip(cursor, after * config.micro_batch);
        batches
    }

    /// Forward and backward over `batches`, summing the flat gradients and the loss (kept on the
    /// device). The loss is scaled by the float16 loss scale for the backward, and unscaled
    /// (exactly: the scale is a power of two) for the sum.
    fn accumulate(&mut self, batches: Vec<(usize, Batch)>) -> Result<Update<B>, TrainError> {
        let step = self.state.step + 1;
        self.inject_fault(step)?;
        let config = self.config;
        let loss_scale = self.loss_scale();
        let mut sum: Option<Tensor<B::InnerBackend, 1>> = None;
        for (index, batch) in batches {
            // Masks are keyed by the micro-batch's place in the run, not by worker or thread.
            dropout::begin_stream(dropout::stream_key(&[config.seed, step, index as u64]));
            let [inputs, targets] = [batch.inputs, batch.targets].map(|v| {
                Tensor::<B, 2, Int>::from_data(
                    TensorData::new(v, [config.micro_batch, config.seq_len]),
                    &self.device,
                )
            });
            let scale = loss_scale / config.grad_accum as f64;
            let (value, grads) = self.loss_and_grads(inputs, targets, scale);
            let value = value.div_scalar(loss_scale);
            let flat = bucket::flatten_grads(self.model(), &grads, value);
            sum = Some(match sum {
                Some(sum) => sum + flat,
                None => flat,
            });
        }
        Ok(Update {
            step,
            flat: sum.expect("every worker has at least one micro-batch"),
        })
    }

    /// The float16 loss scale of the next update (1 in the other precisions).
    fn loss_scale(&self) -> f64 {
        self.state.loss_scale.as_ref().map_or(1.0, |s| s.scale)
    }

    /// One micro-batch's loss (times `scale`) and gradients: one backward over the whole graph,
    /// or layer by layer with activation recompute (`config.recompute`).
    fn loss_and_grads(
        &self,
        inputs: Tensor<B, 2, Int>,
        targets: Tensor<B, 2, Int>,
        scale: f64,
    ) -> (Tensor<B::InnerBackend, 1>, GradientsParams) {
        let (model, precision) = (self.model(), self.config.precision);
        if self.config.recompute {
            return recompute::loss_and_grads(model, inputs, targets, scale, precision);
        }
        let loss = compute_loss(precision, model, inputs, targets, scale);
        let value = loss.clone().inner();
        (value, GradientsParams::from_grads(loss.backward(), model))
    }

    /// Sum the workers' gradients and losses: one all-reduce of the flat vector.
    fn reduce(&self, update: Update<B>) -> Result<Update<B>, TrainError> {
        let Some(collective) = &self.seat.collective else {
            return Ok(update);
        };
        let what = format!("all-reduce of step {}", update.step);
        let flat = collective.all_reduce_sum(update.flat, &what)?;
        Ok(Update { flat, ..update })
    }

    /// The clipped AdamW update, which leaves everything as it was when the loss or a gradient
    /// is not finite (float16: an overflow, which halves the loss scale); returns the update's
    /// report and the loss scale it ran with.
    fn step(&mut self, update: Update<B>) -> Result<(UpdateReport, Option<f64>), TrainError> {
        let used_scale = self.state.loss_scale.as_ref().map(|s| s.scale);
        let clip = Clip {
            max_norm: self.config.clip_norm,
            grad_scale: 1.0 / used_scale.unwrap_or(1.0),
        };
        let lr = self.config.schedule.lr(update.step);
        // Moved, not cloned: the old parameters are freed as the new ones are made.
        let model = self
            .model
            .take()
            .expect("the model is present between updates");
        let (model, report) = self.optim.step(lr, model, update.flat, clip);
        self.model = Some(model);
        self.state.step = update.step;
        self.state.tokens += self.config.tokens_per_step();
        if report.skipped && self.seat.rank == 0 {
            let UpdateReport {
                loss, grad_norm, ..
            } = report;
            match used_scale {
                Some(s) => eprintln!(
                    "note: step {}: float16 gradients overflowed at loss scale {s}; update skipped, scale halved",
                    update.step
                ),
                None => eprintln!(
                    "warning: step {}: non-finite loss or gradient (loss {loss}, norm {grad_norm}); update skipped",
                    update.step
                ),
            }
        }
        if let Some(scaler) = &mut self.state.loss_scale {
            scaler
                .update(report.skipped, &self.config.loss_scale)
                .map_err(|e| TrainError::Config(format!("step {}: {e}", update.step)))?;
        }
        Ok((report, used_scale))
    }

    /// The update's metrics line (before validation).
    fn metrics(
        &mut self,
        report: UpdateReport,
        loss_scale: Option<f64>,
        started: Instant,
    ) -> StepMetrics {
        let config = self.config;
        let step = self.state.step;
        let seconds = started.elapsed().as_secs_f64();
        let tokens_per_second = config.tokens_per_step() as f64 / seconds;
        self.speeds.push(tokens_per_second);
        StepMetrics {
            step,
            tokens: self.state.tokens,
            loss: report.loss,
            lr: config.schedule.lr(step),
            grad_norm: report.grad_norm,
            clip_coef: report.clip_coef,
            tokens_per_second,
            mfu: (config.peak_flops > 0.0)
                .then(|| tokens_per_second * config.flops_per_token() / config.peak_flops),
            val_loss: None,
            val_ppl: None,
            skipped: report.skipped,
            loss_scale,
        }
    }

    /// Validation loss when due; each worker scores its share of the batches.
    fn validate(&self, m: &mut StepMetrics) -> Result<(), TrainError> {
        let config = self.config;
        let due = config.eval_every > 0
            && (m.step.is_multiple_of(config.eval_every) || m.step == config.max_steps);
        if !due || self.data.valid.is_empty() {
            return Ok(());
        }
        let part = (self.seat.rank, self.seat.world);
        let (mut sum, mut count) = validation_loss_part(
            &self.model().valid(),
            &self.data.valid,
            config.seq_len,
            config.micro_batch,
            config.eval_batches,
            part,
            &self.device,
        );
        if let Some(collective) = &self.seat.collective {
            let local =
                Tensor::<B::InnerBackend, 1>::from_floats([sum as f32, count as f32], &self.device);
            let what = format!("validation of step {}", m.step);
            let total = collective.all_reduce_sum(local, &what)?.into_data();
            let total = total.convert::<f64>().to_vec::<f64>().unwrap_or_default();
            (sum, count) = (total[0], total[1]);
        }
        if count > 0.0 {
            let v = sum / count;
            (m.val_loss, m.val_ppl) = (Some(v), Some(v.exp()));
        }
        Ok(())
    }

    /// Append the metrics line (first worker) and update the summary.
    fn log(&mut self, m: &StepMetrics) -> Result<(), TrainError> {
        if let Some((path, file)) = &mut self.metrics {
            writeln!(
                file,
                "{}",
                serde_json::to_string(m).expect("metrics serialise")
            )
            .map_err(|e| io(path, &e))?;
        }
        let s = &mut self.summary;
        s.first_loss.get_or_insert(m.loss);
        s.last_loss = Some(m.loss);
        s.last_val_loss = m.val_loss.or(s.last_val_loss);
        s.steps = m.step;
        Ok(())
    }

    /// Whether any worker was asked to stop after this update (all must agree: they stop together).
    fn agree_to_stop(&self, asked: bool) -> Result<bool, TrainError> {
        let Some(collective) = &self.seat.collective else {
            return Ok(asked);
        };
        let flag = Tensor::<B::InnerBackend, 1>::from_floats([asked as u8 as f32], &self.device);
        let what = format!("stop check of step {}", self.state.step);
        let votes = collective
            .all_reduce_sum(flag, &what)?
            .into_scalar()
            .elem::<f64>();
        Ok(votes > 0.0)
    }

    /// Write a checkpoint when due or when stopping (first worker; every replica is the same).
    fn checkpoint(&self, stop: bool) -> Result<(), TrainError> {
        let (config, step) = (self.config, self.state.step);
        let due = config.checkpoint_every > 0
            && (step.is_multiple_of(config.checkpoint_every) || step == config.max_steps);
        if self.seat.rank == 0 && (stop || due) {
            save_checkpoint(
                self.out,
                self.model(),
                &self.optim,
                &self.state,
                config.keep_checkpoints,
            )?;
        }
        Ok(())
    }

    fn model(&self) -> &Opt<B> {
        self.model
            .as_ref()
            .expect("the model is present between updates")
    }

    /// The test hook of [`crate::collective::Topology::fault`].
    fn inject_fault(&self, step: u64) -> Result<(), TrainError> {
        match self.seat.fault {
            Some(f) if f.rank == self.seat.rank && f.step == step => {
                let message = format!("injected fault (test hook) at step {step}");
                if f.panic {
                    panic!("{message}");
                }
                Err(TrainError::Worker {
                    rank: self.seat.rank,
                    message,
                })
            }
            _ => Ok(()),
        }
    }
}

fn io(path: &Path, e: &dyn std::fmt::Display) -> TrainError {
    TrainError::Io {
        path: path.into(),
        message: e.to_string(),
    }
}
