//! Data-parallel training: one worker thread and one model replica per device, on one node or
//! several. Every worker runs the same `Trainer` loop on its share of each update's
//! micro-batches; one worker alone runs it with no collective at all.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use opt_data::BlockLoader;
use opt_model::Opt;

use crate::collective::{self, AbortFlag, Collective, Topology};
use crate::config::{TrainConfig, TrainData, TrainError};
use crate::init::init_model;
use crate::trainer::{OnStep, Seat, TrainSummary, Trainer};

/// Train one run on `devices` (one worker each) of this node, joined with the other nodes of
/// `topology`; returns this node's first replica (all replicas are equal) and the run's summary.
/// A worker that fails ends the whole run: the others stop at their next collective call.
pub fn train_parallel<B: AutodiffBackend>(
    config: &TrainConfig,
    data: &TrainData,
    out: &Path,
    resume: bool,
    devices: &[B::Device],
    topology: &Topology,
    on_step: OnStep<'_>,
) -> Result<(Opt<B>, TrainSummary), TrainError> {
    topology.validate()?;
    let Some(first_device) = devices.first() else {
        return Err(TrainError::Config("no device to train on".into()));
    };
    let world = topology.nodes * devices.len();
    check_run::<B>(config, data, out, resume, world, first_device)?;
    // Initialised once, from the run's seed, then copied into every replica.
    B::seed(first_device, config.seed);
    let init = init_model::<B>(&config.model, config.init_std, first_device).fork(first_device);
    // One `valid()` per replica: cloning an inner module would drop the parameters' require-grad
    // flag (Burn 0.21's `Param::clone` re-reads it from the inner tensor, which has none).
    let initial = init.valid();
    let worker = Worker {
        config,
        data,
        out,
        resume,
        topology,
        world,
        local: devices.len(),
        abort: AbortFlag::default(),
    };
    if world == 1 {
        drop(init); // parameters owned once are updated in place
        let seat = Seat {
            rank: 0,
            world: 1,
            collective: None,
            fault: topology.fault,
        };
        return Trainer::new(
            config,
            data,
            out,
            resume,
            first_device.clone(),
            initial,
            seat,
        )?
        .run(Some(on_step));
    }
    let _exclusive = collective::exclusive::<B::InnerBackend>();
    let (first, others) = std::thread::scope(|scope| {
        let handles: Vec<_> = devices
            .iter()
            .enumerate()
            .skip(1)
            .map(|(local_rank, device)| {
                let (worker, initial) = (&worker, init.valid());
                std::thread::Builder::new()
                    .name(format!("worker-{local_rank}"))
                    .spawn_scoped(scope, move || {
                        worker.run::<B>(local_rank, device, initial, None)
                    })
            })
            .collect();
        let first = worker.run::<B>(0, first_device, initial, Some(on_step));
        let others: Vec<_> = handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(TrainError::Config("a worker thread died".into()))),
                Err(e) => Err(TrainError::Config(format!(
                    "cannot start a worker thread: {e}"
                ))),
            })
            .map(|r| r.map(|_| ()))
            .collect();
        (first, others)
    });
    // The run's error is the failing worker's, not the aborts it caused in the others.
    let failure = first
        .as_ref()
        .err()
        .into_iter()
        .chain(others.iter().filter_map(|r| r.as_ref().err()))
        .find(|e| !matches!(e, TrainError::Aborted { .. }))
        .cloned();
    if let Some(e) = failure {
        // Release the calls other workers left pending on this process's collective server.
        collective::reset::<B::InnerBackend>();
        return Err(e);
    }
    first
}

/// Check a run's config, backend and data before any worker starts; prepare `out`.
fn check_run<B: AutodiffBackend>(
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

/// What every worker of this node shares.
struct Worker<'a> {
    config: &'a TrainConfig,
    data: &'a TrainData,
    out: &'a Path,
    resume: bool,
    topology: &'a Topology,
    world: usize,
    local: usize,
    abort: AbortFlag,
}

impl Worker<'_> {
    /// Join the collective and train as local worker `local_rank`; a failure (error or panic)
    /// raises the abort flag so that no other worker of this node waits for this one.
    fn run<B: AutodiffBackend>(
        &self,
        local_rank: usize,
        device: &B::Device,
        initial: Opt<B::InnerBackend>,
        on_step: Option<OnStep<'_>>,
    ) -> Result<(Opt<B>, TrainSummary), TrainError> {
        let rank = self.topology.node_rank * self.local + local_rank;
        let result = catch_unwind(AssertUnwindSafe(|| {
            let collective = Collective::<B::InnerBackend>::register(
                local_rank,
                self.local,
                rank,
                device,
                self.topology,
                self.abort.clone(),
            )?;
            let seat = Seat {
                rank,
                world: self.world,
                collective: Some(collective),
                fault: self.topology.fault,
            };
            let (config, data, out) = (self.config, self.data, self.out);
            Trainer::new(
                config,
                data,
                out,
                self.resume,
                device.clone(),
                initial,
                seat,
            )?
            .run(on_step)
        }))
        .unwrap_or_else(|panic| {
            Err(TrainError::Worker {
                rank,
                message: format!("panicked: {}", panic_message(panic.as_ref())),
            })
        });
        if result.is_err() {
            self.abort.raise();
        }
        result
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}
