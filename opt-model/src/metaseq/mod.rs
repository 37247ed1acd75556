//! Import Meta's metaseq-format OPT checkpoints (`reshard-model_part-K.pt`, `reshard.pt`) into
//! the HF layout that [`crate::checkpoint::load_pretrained`] reads.
//!
//! The stages, a module each, in the order [`import`] runs them: `parts` finds and orders the
//! part files; `read` reads a part and its cfg; `names` classifies each parameter; `merge`
//! merges the model-parallel parts into [`HfTensor`]s; `derive` derives the [`OptConfig`](crate::OptConfig);
//! `write` writes the HF folder ([`write_hf_dir`]).
//!
//! Steps: read each part's `"model"` dict with burn-store's PyTorch reader, check that the parts
//! belong to one model, merge the model-parallel slices (metaseq's Megatron split rules), split
//! the fused `qkv_proj` (rows K, V, Q), rename to HF names, derive the [`OptConfig`](crate::OptConfig) from the
//! shapes (attention heads from `cfg["model"]`, `--heads` or the paper sizes), and write
//! `config.json` + `model.safetensors`. Tensors keep their stored dtype until written; merging
//! only moves bytes, so a float32 checkpoint imports bit for bit.
//!
//! Parts are never discovered implicitly: a model-parallel checkpoint must be given as all of
//! its `-model_part-K` files (any order); a missing or extra sibling is an error that lists it.

mod derive;
mod error;
mod import;
mod merge;
mod names;
mod parts;
mod read;
mod tensor;
mod write;

pub use derive::HeadsSource;
pub use error::MetaseqError;
pub use import::{import, MetaseqCheckpoint};
pub use tensor::HfTensor;
pub use write::write_hf_dir;
