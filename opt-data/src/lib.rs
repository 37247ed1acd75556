//! Data for OPT: tokenizers, corpora, document packing, token shards and batches.

pub mod corpora;
pub mod corpus;
pub mod packing;
pub mod shard;
pub mod tokenizer;

pub use corpus::{read_corpus, Corpus, CorpusError, CorpusOptions, Document, TextSplit};
pub use packing::{pack_documents, Batch, BlockLoader, Cursor};
pub use tokenizer::{train_bpe, OptTokenizer, TokenizerError};
