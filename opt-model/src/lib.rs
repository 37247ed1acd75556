//! OPT decoder on Burn: config, model, attention with KV cache, generation and HF checkpoints.

pub mod attention;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod dropout;
pub mod fsutil;
pub mod generate;
pub mod layer;
pub mod loss;
pub mod metaseq;
pub mod model;

pub use cache::KvCache;
pub use checkpoint::{load_pretrained, save_pretrained, CheckpointError};
pub use config::{preset, presets, ConfigError, OptConfig, Preset};
pub use model::{Opt, OptOutput};
