//! `opt data prepare`: corpora -> (trained or given) tokenizer -> token shards + a manifest.
//!
//! A prepared folder holds `train.tok` and `valid.tok` (see `shard`), `tokenizer/` (tokenizer.json
//! and tokenizer_config.json) and `manifest.json` (sources, counts, tokenizer fingerprint), written
//! last: a folder without a manifest is an interrupted prepare and is never read.
//!
//! Documents go to train or valid by a stable hash of their text (`is_valid_document`), or by
//! their source's fixed split. Sources are mixed by upsampling their training documents: a weight
//! of 2.5 includes every document twice and a seeded half of them a third time (fairseq's
//! resampling); validation documents are never reweighted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::corpus::{read_corpus, CorpusError, CorpusOptions};
use crate::packing::{encode_documents, is_valid_document};
use crate::shard::{open_shard, write_shard, ShardError, Tokens};
use crate::tokenizer::{special, train_bpe, OptTokenizer, TokenizerError};

/// Errors preparing or loading a dataset.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Fetch(#[from] crate::corpora::FetchError),
    #[error(transparent)]
    Corpus(#[from] CorpusError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("{path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("the tokenizer has {tokenizer} ids but the model's vocabulary has only {model} rows")]
    VocabTooLarge { tokenizer: usize, model: usize },
    #[error("source {path}: weight {weight} must be a finite number >= 0")]
    Weight { path: PathBuf, weight: f64 },
    #[error("no training documents: every document went to validation (valid fraction {0})")]
    NoTraining(f64),
}

/// Where a source's documents go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// By a stable hash of each document (the valid fraction).
    Hash,
    Train,
    Valid,
}

/// One input: files or folders, a mixing weight and a split rule.
#[derive(Debug, Clone)]
pub struct Source {
    pub paths: Vec<PathBuf>,
    pub weight: f64,
    pub split: Split,
}

impl Source {
    /// A source split by hash with weight 1.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            paths: vec![path.into()],
            weight: 1.0,
            split: Split::Hash,
        }
    }
}

/// The tokenizer of a prepared dataset.
pub enum TokenizerChoice {
    Given(Box<OptTokenizer>),
    /// Train a byte-level BPE of this many ids on the training documents.
    Train {
        vocab_size: usize,
    },
}

/// Settings of a prepare.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    pub corpus: CorpusOptions,
    pub valid_fraction: f64,
    pub seed: u64,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        Self {
            corpus: CorpusOptions::default(),
            valid_fraction: 0.05,
            seed: 0,
        }
    }
}

/// What `manifest.json` records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub tokenizer: TokenizerInfo,
    pub seed: u64,
    pub valid_fraction: f64,
    pub sources: Vec<SourceStats>,
    pub train_tokens: u64,
    pub valid_tokens: u64,
    /// Validation had no documents of its own and took the last 5% of the training stream.
    pub valid_from_train_tail: bool,
}

/// The tokenizer a dataset was made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    pub vocab_size: usize,
    pub fingerprint: String,
    pub trained: bool,
}

/// Per-source counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceStats {
    pub paths: Vec<PathBuf>,
    pub weight: f64,
    pub split: Split,
    pub documents: usize,
    pub bytes: u64,
    pub train_documents: usize,
    pub valid_documents: usize,
    /// Training tokens after upsampling by the weight.
    pub train_tokens: u64,
    pub valid_tokens: u64,
    pub replaced_invalid_utf8: usize,
    pub skipped_lines: usize,
}

/// A loaded prepared dataset.
pub struct Prepared {
    pub tokenizer: OptTokenizer,
    pub manifest: Manifest,
    /// Memory-mapped when loaded from disk.
    pub train: Tokens,
    pub valid: Tokens,
}

const FORMAT: &str = "opt-data/1";

/// Whether `dir` holds a complete prepared dataset.
pub fn is_prepared(dir: &Path) -> bool {
    dir.join("manifest.json").is_file()
}

/// Prepare `sources` into `out` (see the module comment); `on_warning` hears tolerated problems.
pub fn prepare_dataset(
    sources: &[Source],
    tokenizer: TokenizerChoice,
    out: &Path,
    options: &PrepareOptions,
    mut on_warning: impl FnMut(&str),
) -> Result<Prepared, PrepareError> {
    let mut stats = Vec::new();
    let mut train_docs: Vec<(usize, String)> = Vec::new();
    let mut valid_docs: Vec<(usize, String)> = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        if !(source.weight.is_finite() && source.weight >= 0.0) {
            return Err(PrepareError::Weight {
                path: source.paths[0].clone(),
                weight: source.weight,
            });
        }
        let corpus = read_corpus(&source.paths, &options.corpus)?;
        for w in corpus.warnings() {
            on_warning(&format!("{}: {w}", source.paths[0].display()));
        }
        let mut s = SourceStats {
            paths: source.paths.clone(),
            weight: source.weight,
            split: source.split,
            documents: corpus.documents.len(),
            bytes: corpus.documents.iter().map(|d| d.text.len() as u64).sum(),
            train_documents: 0,
            valid_documents: 0,
            train_tokens: 0,
            valid_tokens: 0,
            replaced_invalid_utf8: corpus.replaced_invalid_utf8,
            skipped_lines: corpus.skipped_lines.len(),
        };
        for doc in corpus.documents {
            let valid = match source.split {
                Split::Hash => is_valid_document(&doc.text, options.seed, options.valid_fraction),
                Split::Train => false,
                Split::Valid => true,
            };
            if valid {
                s.valid_documents += 1;
                valid_docs.push((i, doc.text));
            } else {
                s.train_documents += 1;
                train_docs.push((i, doc.text));
            }
        }
        stats.push(s);
    }
    if train_docs.is_empty() {
        return Err(PrepareError::NoTraining(options.valid_fraction));
    }
    let (tokenizer, trained) = match tokenizer {
        TokenizerChoice::Given(t) => (*t, false),
        TokenizerChoice::Train { vocab_size } => (
            train_bpe(
                train_docs.iter().map(|(_, t)| t.as_str()),
                vocab_size,
                &out.join("tokenizer"),
            )?,
            true,
        ),
    };
    tokenizer.save(&out.join("tokenizer"))?;

    let texts: Vec<&str> = train_docs.iter().map(|(_, t)| t.as_str()).collect();
    let encoded = encode_documents(&tokenizer, &texts)?;
    let mut train = Vec::new();
    for ((src, text), ids) in train_docs.iter().zip(&encoded) {
        let weight = sources[*src].weight;
        // The fractional copy is drawn by a hash independent of the train/valid one (seed + 1).
        let extra = is_valid_document(text, options.seed.wrapping_add(1), weight.fract());
        let copies = weight.floor() as u64 + extra as u64;
        for _ in 0..copies {
            train.extend_from_slice(ids);
            train.push(special::EOS);
        }
        stats[*src].train_tokens += copies * (ids.len() as u64 + 1);
    }
    let texts: Vec<&str> = valid_docs.iter().map(|(_, t)| t.as_str()).collect();
    let mut valid = Vec::new();
    for ((src, _), ids) in valid_docs.iter().zip(encode_documents(&tokenizer, &texts)?) {
        stats[*src].valid_tokens += ids.len() as u64 + 1;
        valid.extend(ids);
        valid.push(special::EOS);
    }
    let valid_from_train_tail = valid.is_empty();
    if valid_from_train_tail {
        on_warning("no validation documents: holding out the last 5% of the training stream");
        valid = train.split_off(train.len() - train.len() / 20);
    }
    std::fs::create_dir_all(out).map_err(|source| ShardError::Io {
        path: out.into(),
        source,
    })?;
    // An earlier manifest would vouch for shards that are about to change: remove it first.
    let manifest_path = out.join("manifest.json");
    let _ = std::fs::remove_file(&manifest_path);
    write_shard(&out.join("train.tok"), &train)?;
    write_shard(&out.join("valid.tok"), &valid)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        tokenizer: TokenizerInfo {
            vocab_size: tokenizer.vocab_size(),
            fingerprint: tokenizer.fingerprint(),
            trained,
        },
        seed: options.seed,
        valid_fraction: options.valid_fraction,
        sources: stats,
        train_tokens: train.len() as u64,
        valid_tokens: valid.len() as u64,
        valid_from_train_tail,
    };
    let json = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
    crate::fsutil::write_atomic(&manifest_path, json.as_bytes()).map_err(|source| {
        ShardError::Io {
            path: manifest_path.clone(),
            source,
        }
    })?;
    Ok(Prepared {
        tokenizer,
        manifest,
        train: train.into(),
        valid: valid.into(),
    })
}

/// Read a prepared folder's `manifest.json`.
pub fn load_manifest(dir: &Path) -> Result<Manifest, PrepareError> {
    let path = dir.join("manifest.json");
    let bad = |message: String| PrepareError::Manifest {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if manifest.format != FORMAT {
        return Err(bad(format!(
            "format {:?}, expected {FORMAT:?}",
            manifest.format
        )));
    }
    Ok(manifest)
}

/// Load a prepared folder, checking its shards and tokenizer against the manifest.
pub fn load_prepared(dir: &Path) -> Result<Prepared, PrepareError> {
    let manifest = load_manifest(dir)?;
    let path = dir.join("manifest.json");
    let bad = |message: String| PrepareError::Manifest {
        path: path.clone(),
        message,
    };
    let tokenizer = OptTokenizer::from_dir(dir.join("tokenizer"))?;
    if tokenizer.fingerprint() != manifest.tokenizer.fingerprint {
        return Err(bad(format!(
            "tokenizer/ is not the tokenizer the shards were made with (fingerprint {} vs {})",
            tokenizer.fingerprint(),
            manifest.tokenizer.fingerprint
        )));
    }
    let train = open_shard(&dir.join("train.tok"))?;
    let valid = open_shard(&dir.join("valid.tok"))?;
    if (train.len() as u64, valid.len() as u64) != (manifest.train_tokens, manifest.valid_tokens) {
        return Err(bad(format!(
            "the shards hold {} + {} tokens, the manifest says {} + {}",
            train.len(),
            valid.len(),
            manifest.train_tokens,
            manifest.valid_tokens
        )));
    }
    Ok(Prepared {
        tokenizer,
        manifest,
        train,
        valid,
    })
}
