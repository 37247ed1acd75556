#![doc = include_str!("../README.md")]

pub mod corpora;
pub mod corpus;
pub mod fsutil;
pub mod gpt2;
pub mod hash;
pub mod packing;
pub mod prepare;
pub mod shard;
pub mod stream;
pub mod tasks;
pub mod tokenizer;

pub use corpus::{read_corpus, Corpus, CorpusError, CorpusOptions, Document, TextSplit};
pub use packing::{encode_documents, pack_documents, Batch, BlockLoader, Cursor};
pub use prepare::{
    is_prepared, load_manifest, load_prepared, prepare_dataset, Manifest, PrepareError,
    PrepareOptions, Prepared, Source, Split, TokenizerChoice,
};
pub use shard::{open_shard, Tokens};
pub use stream::{read_shards, shard_files, text_tokens, StreamError};
pub use tokenizer::{train_bpe, OptTokenizer, TokenizerError};
