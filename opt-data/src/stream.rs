//! A token stream from a path, for evaluation: a prepared shard (or folder of shards) as it is,
//! or text documents joined with "\n\n" and encoded once, `</s>` first (the GPTQ/OPT protocol).

use std::path::{Path, PathBuf};

use crate::corpus::{list_files, read_corpus, CorpusError, CorpusOptions};
use crate::shard::{read_shard, ShardError};
use crate::tokenizer::{OptTokenizer, TokenizerError};

/// Errors turning a path into tokens.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// The shards `path` names: a `.tok` file; a folder's `valid.tok` (also under `data/`, a run
/// folder); else every `.tok` file of a folder. None when `path` is text.
pub fn shard_files(path: &Path) -> Option<Vec<PathBuf>> {
    if path.is_file() {
        return (path.extension()? == "tok").then(|| vec![path.into()]);
    }
    for valid in [path.join("valid.tok"), path.join("data").join("valid.tok")] {
        if valid.is_file() {
            return Some(vec![valid]);
        }
    }
    let files: Vec<PathBuf> = list_files(path)
        .ok()?
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "tok"))
        .collect();
    (!files.is_empty()).then_some(files)
}

/// The tokens of several shards, in order.
pub fn read_shards(files: &[PathBuf]) -> Result<Vec<u32>, StreamError> {
    let mut tokens = Vec::new();
    for f in files {
        tokens.extend(read_shard(f)?);
    }
    Ok(tokens)
}

/// The documents under `path` joined with "\n\n" and encoded once (`</s>` first), and how many
/// documents there were.
pub fn text_tokens(
    path: &Path,
    tokenizer: &OptTokenizer,
    options: &CorpusOptions,
) -> Result<(Vec<u32>, usize), StreamError> {
    let corpus = read_corpus(&[path.into()], options)?;
    let texts: Vec<&str> = corpus.documents.iter().map(|d| d.text.as_str()).collect();
    Ok((tokenizer.encode(&texts.join("\n\n"))?, texts.len()))
}
