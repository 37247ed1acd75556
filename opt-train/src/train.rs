//! The public entry of training: [`train`] runs (or resumes) a run on one device. Below it,
//! [`crate::parallel`] runs the same loop on many devices or nodes, `trainer` is the loop itself
//! (its named steps), `checkpoint` what a run saves and [`crate::config`] what defines a run.

use std::ops::ControlFlow;
use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use opt_model::Opt;

use crate::collective::Topology;
use crate::config::{TrainConfig, TrainData, TrainError};
use crate::parallel::train_parallel;
use crate::trainer::{StepMetrics, TrainSummary};

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
    train_parallel::<B>(
        config,
        data,
        out,
        resume,
        std::slice::from_ref(device),
        &Topology::default(),
        &mut on_step,
    )
}
