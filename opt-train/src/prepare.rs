//! A run's data, prepared once and kept with the run: corpus -> (trained) tokenizer -> token shards.

use std::path::{Path, PathBuf};

use opt_data::corpora::{self, FetchError};
use opt_data::packing::is_valid_document;
use opt_data::shard::{read_shard, write_shard, ShardError};
use opt_data::{
    pack_documents, read_corpus, train_bpe, CorpusError, CorpusOptions, OptTokenizer,
    TokenizerError,
};

use crate::train::TrainData;

/// Errors preparing a run's data.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("the tokenizer has {tokenizer} ids but the model's vocabulary has only {model} rows")]
    VocabTooLarge { tokenizer: usize, model: usize },
}

/// Where the data comes from.
pub enum DataSource {
    /// The default corpus (Shakespeare, fetched at first use), with held-out plays.
    Default,
    /// Text/JSONL files or folders; documents are split train/valid by a stable hash.
    Paths(Vec<PathBuf>),
}

/// Tokenizer, train and valid streams of the run in `out` (reused when already prepared there).
pub fn prepare(
    out: &Path,
    source: &DataSource,
    tokenizer: Option<&Path>,
    model_vocab: usize,
    valid_fraction: f64,
    seed: u64,
) -> Result<(OptTokenizer, TrainData), PrepareError> {
    let (tok_dir, data_dir) = (out.join("tokenizer"), out.join("data"));
    let (train_path, valid_path) = (data_dir.join("train.tok"), data_dir.join("valid.tok"));
    if train_path.is_file() && valid_path.is_file() && tok_dir.is_dir() {
        eprintln!("using the prepared data in {}", data_dir.display());
        let tok = OptTokenizer::from_dir(&tok_dir)?;
        return Ok((
            tok,
            TrainData {
                train: read_shard(&train_path)?,
                valid: read_shard(&valid_path)?,
            },
        ));
    }
    let options = CorpusOptions::default();
    let (train_docs, valid_docs): (Vec<String>, Vec<String>) = match source {
        DataSource::Default => {
            let (train, valid) = corpora::shakespeare(&corpora::data_dir().join("corpora"))?;
            let read = |files: &[PathBuf]| -> Result<Vec<String>, CorpusError> {
                Ok(read_corpus(files, &options)?
                    .documents
                    .into_iter()
                    .map(|d| d.text)
                    .collect())
            };
            (read(&train)?, read(&valid)?)
        }
        DataSource::Paths(paths) => {
            let corpus = read_corpus(paths, &options)?;
            if corpus.replaced_invalid_utf8 > 0 {
                eprintln!(
                    "warning: replaced {} invalid UTF-8 sequences",
                    corpus.replaced_invalid_utf8
                );
            }
            for line in corpus.skipped_lines.iter().take(5) {
                eprintln!("warning: skipped {line}");
            }
            let (valid, train): (Vec<_>, Vec<_>) = corpus
                .documents
                .into_iter()
                .map(|d| d.text)
                .partition(|t| is_valid_document(t, seed, valid_fraction));
            (train, valid)
        }
    };
    let tok = match tokenizer {
        Some(path) => {
            let tok = if path.is_dir() {
                OptTokenizer::from_dir(path)?
            } else {
                OptTokenizer::from_tokenizer_json(path)?
            };
            copy_tokenizer(path, &tok_dir)?;
            tok
        }
        None => {
            eprintln!(
                "training a {model_vocab}-id byte-level BPE on {} training documents",
                train_docs.len()
            );
            train_bpe(train_docs.iter(), model_vocab, &tok_dir)?
        }
    };
    if tok.vocab_size() > model_vocab {
        return Err(PrepareError::VocabTooLarge {
            tokenizer: tok.vocab_size(),
            model: model_vocab,
        });
    }
    let mut train = pack_documents(&tok, &as_refs(&train_docs))?;
    let mut valid = pack_documents(&tok, &as_refs(&valid_docs))?;
    if valid.is_empty() {
        // Too few documents to hold any out: keep the last 5% of the stream for validation.
        let cut = train.len() - train.len() / 20;
        valid = train.split_off(cut);
    }
    std::fs::create_dir_all(&data_dir).map_err(|source| ShardError::Io {
        path: data_dir.clone(),
        source,
    })?;
    write_shard(&train_path, &train)?;
    write_shard(&valid_path, &valid)?;
    eprintln!(
        "prepared {} training and {} validation tokens in {}",
        train.len(),
        valid.len(),
        data_dir.display()
    );
    Ok((tok, TrainData { train, valid }))
}

fn as_refs(docs: &[String]) -> Vec<&str> {
    docs.iter().map(String::as_str).collect()
}

fn copy_tokenizer(from: &Path, to: &Path) -> Result<(), PrepareError> {
    let io = |source| ShardError::Io {
        path: to.into(),
        source,
    };
    std::fs::create_dir_all(to).map_err(io)?;
    if from.is_dir() {
        for name in [
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.json",
            "merges.txt",
            "special_tokens_map.json",
        ] {
            if from.join(name).is_file() {
                std::fs::copy(from.join(name), to.join(name)).map_err(io)?;
            }
        }
    } else {
        std::fs::copy(from, to.join("tokenizer.json")).map_err(io)?;
    }
    Ok(())
}
