#![doc = include_str!("../README.md")]

mod bucket;
mod checkpoint;
pub mod collective;
pub mod config;
pub mod init;
pub mod optim;
pub mod parallel;
pub mod precision;
pub mod prepare;
pub mod recompute;
pub mod schedule;
pub mod train;
mod trainer;

pub use collective::{serve_coordinator, Fault, Topology};
pub use config::{TrainConfig, TrainData, TrainError};
pub use init::{init_model, INIT_STD};
pub use optim::{clip_grad_norm, AdamWSettings, DecayRule, OptAdamW};
pub use parallel::train_parallel;
pub use precision::Precision;
pub use prepare::{prepare, DataSource};
pub use schedule::LrSchedule;
pub use train::train;
pub use trainer::{OnStep, StepMetrics, TrainSummary};
