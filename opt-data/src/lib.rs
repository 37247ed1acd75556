//! Data for OPT: tokenizers, corpora, document packing, token shards and batches.

pub mod tokenizer;

pub use tokenizer::{OptTokenizer, TokenizerError};
