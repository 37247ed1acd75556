//! A run's data, prepared once and kept with the run (`OUT/data/`, the layout of
//! `opt data prepare`), or an already prepared folder that the run links to.

use std::path::{Path, PathBuf};

use opt_data::corpora;
use opt_data::{
    is_prepared, load_prepared, prepare_dataset, OptTokenizer, PrepareError, PrepareOptions,
    Prepared, Source, Split, TokenizerChoice,
};

/// Where the data comes from.
pub enum DataSource {
    /// The default corpus (Shakespeare, fetched at first use), with held-out plays.
    Default,
    /// Text/JSONL files or folders; documents are split train/valid by a stable hash.
    Paths(Vec<PathBuf>),
    /// A folder made by `opt data prepare` (used in place, not copied).
    Prepared(PathBuf),
}

/// The run's tokenizer and token streams: reused from `out` when already prepared there.
/// Without a `tokenizer`, a byte-level BPE of `model_vocab` ids is trained on the training split.
pub fn prepare(
    out: &Path,
    source: &DataSource,
    tokenizer: Option<OptTokenizer>,
    model_vocab: usize,
    options: &PrepareOptions,
) -> Result<Prepared, PrepareError> {
    let data_dir = out.join("data");
    let link = out.join("data-link.txt");
    let prepared = if is_prepared(&data_dir) {
        eprintln!("using the prepared data in {}", data_dir.display());
        load_prepared(&data_dir)?
    } else if let Ok(linked) = std::fs::read_to_string(&link) {
        eprintln!("using the prepared data in {linked}");
        load_prepared(Path::new(linked.trim()))?
    } else {
        if let Some(t) = &tokenizer {
            check_vocab(t.vocab_size(), model_vocab)?;
        }
        let choice = match tokenizer {
            Some(t) => TokenizerChoice::Given(Box::new(t)),
            None => {
                eprintln!("will train a {model_vocab}-id byte-level BPE on the training documents");
                TokenizerChoice::Train {
                    vocab_size: model_vocab,
                }
            }
        };
        let warn = |w: &str| eprintln!("warning: {w}");
        let sources = match source {
            DataSource::Prepared(dir) => {
                let p = load_prepared(dir)?;
                let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
                opt_data::fsutil::write_atomic(&link, abs.display().to_string().as_bytes())
                    .map_err(|source| opt_data::shard::ShardError::Io {
                        path: link.clone(),
                        source,
                    })?;
                check_vocab(p.tokenizer.vocab_size(), model_vocab)?;
                return Ok(p);
            }
            DataSource::Default => {
                let (train, valid) = corpora::shakespeare(&corpora::data_dir().join("corpora"))?;
                let fixed = |paths, split| Source {
                    paths,
                    weight: 1.0,
                    split,
                };
                vec![fixed(train, Split::Train), fixed(valid, Split::Valid)]
            }
            DataSource::Paths(paths) => paths.iter().map(Source::new).collect(),
        };
        let p = prepare_dataset(&sources, choice, &data_dir, options, warn)?;
        eprintln!(
            "prepared {} training and {} validation tokens in {}",
            p.train.len(),
            p.valid.len(),
            data_dir.display()
        );
        p
    };
    check_vocab(prepared.tokenizer.vocab_size(), model_vocab)?;
    Ok(prepared)
}

fn check_vocab(tokenizer: usize, model: usize) -> Result<(), PrepareError> {
    if tokenizer > model {
        return Err(PrepareError::VocabTooLarge { tokenizer, model });
    }
    Ok(())
}
