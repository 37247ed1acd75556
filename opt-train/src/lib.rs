#![doc = include_str!("../README.md")]

pub mod bucket;
mod checkpoint;
pub mod collective;
pub mod config;
pub mod flat_adamw;
pub mod init;
pub mod loss_scale;
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
pub use flat_adamw::{Clip, FlatAdamW, UpdateReport};
pub use init::{init_model, INIT_STD};
pub use loss_scale::{LossScaleSettings, LossScaler};
pub use optim::{clip_grad_norm, AdamWSettings, DecayRule, PerTensorAdamW};
pub use parallel::train_parallel;
pub use precision::Precision;
pub use prepare::{prepare, DataSource};
pub use schedule::LrSchedule;
pub use train::train;
pub use trainer::{OnStep, StepMetrics, TrainSummary};
