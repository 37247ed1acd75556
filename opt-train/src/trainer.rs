//! One worker's training loop, as the named steps every execution strategy shares: resume, next
//! batch, accumulate, reduce, clip, step, log, validate, checkpoint. Alone (one device) the reduce
//! is the identity; in a data-parallel run it is one all-reduce of the flattened gradients.

use std::fs::File;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use opt_data::{Batch, BlockLoader};
use opt_model::{dropout, Opt};

use opt_eval::validation_loss_part;
use serde::{Deserialize, Serialize};

use crate::bucket;
use crate::checkpoint::{
    check_model_config, checkpoint_dirs, load_checkpoint, save_checkpoint, Loaded, LoopState,
};
use crate::collective::{Collective, Fault};
use crate::config::{TrainConfig, TrainData, TrainError};
use crate::optim::{clip_grad_norm, OptAdamW};
use crate::precision::compute_loss;
use crate::recompute;

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
    optim: OptAdamW<Opt<B>, B>,
    state: LoopState,
    loader: BlockLoader,
    metrics: Option<(PathBuf, File)>,
    summary: TrainSummary,
    speeds: Vec<f64>,
}

/// One update's gradients and loss: this worker's share, then (after [`Trainer::reduce`]) the run's.
struct Update<B: AutodiffBackend> {
    step: u64,
    grads: GradientsParams,
    /// The mean loss over the update's tokens (this worker's part of the sum before the reduce).
    loss: Tensor<B::InnerBackend, 1>,
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
        let mut trainer = Self {
            config,
            data,
            out,
            loader: BlockLoader::new(data.train.clone(), config.seq_len, config.seed),
            optim: OptAdamW::new(&config.adamw),
            state: LoopState {
                model: Some(config.model.clone()),
                world_size: seat.world,
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
            let mut update = self.reduce(update)?;
            let (grad_norm, clip_coef) =
                clip_grad_norm(self.model(), &mut update.grads, self.config.clip_norm);
            let (loss, skipped) = self.step(update, grad_norm);
            let mut m = self.metrics(loss, grad_norm, clip_coef, skipped, started);
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
            check_model_config(&dir, &config.model)?;
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
                    self.state = LoopState {
                        model: Some(config.model.clone()),
                        world_size: self.seat.world,
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

    /// Forward and backward over `batches`, summing gradients and the loss (kept on the device).
    fn accumulate(&mut self, batches: Vec<(usize, Batch)>) -> Result<Update<B>, TrainError> {
        let step = self.state.step + 1;
        self.inject_fault(step)?;
        let config = self.config;
        let mut accumulator = GradientsAccumulator::<Opt<B>>::new();
        let mut loss_sum: Option<Tensor<B::InnerBackend, 1>> = None;
        for (index, batch) in batches {
            // Masks are keyed by the micro-batch's place in the run, not by worker or thread.
            dropout::begin_stream(dropout::stream_key(&[config.seed, step, index as u64]));
            let [inputs, targets] = [batch.inputs, batch.targets].map(|v| {
                Tensor::<B, 2, Int>::from_data(
                    TensorData::new(v, [config.micro_batch, config.seq_len]),
                    &self.device,
                )
            });
            let scale = 1.0 / config.grad_accum as f64;
            let (value, grads) = self.loss_and_grads(inputs, targets, scale);
            loss_sum = Some(match loss_sum {
                Some(sum) => sum + value,
                None => value,
            });
            accumulator.accumulate(self.model(), grads);
        }
        Ok(Update {
            step,
            grads: accumulator.grads(),
            loss: loss_sum.expect("every worker has at least one micro-batch"),
        })
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

    /// Sum the workers' gradients and losses: one all-reduce of everything, flattened.
    fn reduce(&self, update: Update<B>) -> Result<Update<B>, TrainError> {
        let Some(collective) = &self.seat.collective else {
            return Ok(update);
        };
        let (flat, layout) = bucket::flatten(self.model(), &update.grads, update.loss);
        let what = format!("all-reduce of step {}", update.step);
        let flat = collective.all_reduce_sum(flat, &what)?;
        let (grads, loss) = bucket::unflatten(self.model(), flat, &layout);
        Ok(Update {
            grads,
            loss,
            ..update
        })
    }

    /// The AdamW update, unless a gradient or the loss is not finite; returns (loss, skipped).
    fn step(&mut self, update: Update<B>, grad_norm: f64) -> (f64, bool) {
        let loss = update.loss.into_scalar().elem::<f64>();
        let skipped = !grad_norm.is_finite() || !loss.is_finite();
        if skipped {
            if self.seat.rank == 0 {
                eprintln!(
                    "warning: step {}: non-finite loss or gradient (loss {loss}, norm {grad_norm}); update skipped",
                    update.step
                );
            }
        } else {
            let lr = self.config.schedule.lr(update.step);
            // Moved, not cloned: a parameter owned once can be updated in place.
            let model = self
                .model
                .take()
                .expect("the model is present between updates");
            self.model = Some(self.optim.step(lr, model, update.grads));
        }
        self.state.step = update.step;
        self.state.tokens += self.config.tokens_per_step();
        (loss, skipped)
    }

    /// The update's metrics line (before validation).
    fn metrics(
        &mut self,
        loss: f64,
        grad_norm: f64,
        clip_coef: f64,
        skipped: bool,
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
            loss,
            lr: config.schedule.lr(step),
            grad_norm,
            clip_coef,
            tokens_per_second,
            mfu: (config.peak_flops > 0.0)
                .then(|| tokens_per_second * config.flops_per_token() / config.peak_flops),
            val_loss: None,
            val_ppl: None,
            skipped,
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
