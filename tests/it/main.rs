//! The root package's integration tests: one crate, so the generic model, optimizer and loop are
//! compiled and linked once for all three CPU backends instead of once per test file. Each module
//! is one concern and keeps its former file's name, so `cargo test hf_parity` selects just it.

mod common;

mod checkpoint;
mod data_parallel;
mod dropout_masks;
mod eval_parity;
mod flat_adamw;
mod fused_equivalence;
mod generation_parity;
mod gpu_memory;
mod hf_parity;
mod loss_scaling;
mod metaseq_import;
mod recompute;
mod serve;
mod task_parity;
mod tokenizer_parity;
mod train_loop;
mod train_parity;
mod weight_dtypes;
mod wgpu_diff;
