//! The OPT pre-training recipe: initialisation, AdamW, schedule, global clipping and the loop.

mod bucket;
pub mod collective;
pub mod eval;
pub mod init;
pub mod optim;
pub mod parallel;
pub mod precision;
pub mod prepare;
pub mod recompute;
pub mod schedule;
pub mod tasks;
pub mod train;
mod trainer;

pub use collective::{serve_coordinator, Fault, Topology};
pub use eval::{perplexity, EvalError, EvalReport};
pub use init::{init_model, INIT_STD};
pub use optim::{clip_grad_norm, AdamWSettings, DecayRule, OptAdamW};
pub use parallel::train_parallel;
pub use precision::Precision;
pub use prepare::{prepare, DataSource};
pub use schedule::LrSchedule;
pub use train::{evaluate, train, StepMetrics, TrainConfig, TrainData, TrainError, TrainSummary};
