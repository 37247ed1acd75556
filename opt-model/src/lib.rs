#![doc = include_str!("../README.md")]

pub mod attention;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod dropout;
pub mod dtype;
pub mod fsutil;
pub mod generate;
pub mod layer;
pub mod linear;
pub mod loss;
pub mod metaseq;
pub mod model;
pub mod sampling;
pub mod weights;

pub use cache::KvCache;
pub use checkpoint::{load_pretrained, save_pretrained, CheckpointError};
pub use config::{preset, presets, ConfigError, OptConfig, Preset};
pub use dtype::Precision;
pub use model::{Opt, OptOutput};
pub use weights::WeightDtype;
