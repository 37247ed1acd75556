//! The OPT pre-training recipe: initialisation, AdamW, schedule, global clipping and the loop.

pub mod eval;
pub mod init;
pub mod optim;
pub mod precision;
pub mod prepare;
pub mod schedule;
pub mod tasks;
pub mod train;

pub use eval::{perplexity, EvalError, EvalReport};
pub use init::{init_model, INIT_STD};
pub use optim::{clip_grad_norm, AdamWSettings, DecayRule, OptAdamW};
pub use precision::Precision;
pub use prepare::{prepare, DataSource};
pub use schedule::LrSchedule;
pub use train::{evaluate, train, StepMetrics, TrainConfig, TrainData, TrainError, TrainSummary};
