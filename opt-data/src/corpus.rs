//! Corpus readers: plain text files and folders, and JSONL with a text field (metaseq's layout).
//! Documents are right-stripped like metaseq; invalid UTF-8 is replaced and counted.

use std::path::{Path, PathBuf};

/// Errors reading a corpus.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Json {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: cannot decompress ({message})")]
    Decompress { path: PathBuf, message: String },
    #[error("no documents found in {0:?}")]
    Empty(Vec<PathBuf>),
}

/// How a plain-text file is split into documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextSplit {
    /// The whole file is one document.
    #[default]
    File,
    /// Blocks separated by blank lines are documents.
    BlankLine,
}

/// Options for reading a corpus.
#[derive(Debug, Clone)]
pub struct CorpusOptions {
    pub split: TextSplit,
    /// The JSONL field that holds the text.
    pub text_field: String,
    /// Make a malformed JSONL line an error instead of skipping it.
    pub strict: bool,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        Self {
            split: TextSplit::File,
            text_field: "text".into(),
            strict: false,
        }
    }
}

/// A document and where it came from.
#[derive(Debug, Clone)]
pub struct Document {
    pub source: PathBuf,
    pub text: String,
}

/// What was read, with the problems that were tolerated.
#[derive(Debug, Default)]
pub struct Corpus {
    pub documents: Vec<Document>,
    /// Number of invalid UTF-8 sequences replaced by U+FFFD.
    pub replaced_invalid_utf8: usize,
    /// Malformed or text-less JSONL lines that were skipped, as `file:line: why`.
    pub skipped_lines: Vec<String>,
}

impl Corpus {
    /// The tolerated problems as messages: replaced UTF-8, then up to 5 skipped lines and a count.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.replaced_invalid_utf8 > 0 {
            out.push(format!(
                "replaced {} invalid UTF-8 sequences with U+FFFD",
                self.replaced_invalid_utf8
            ));
        }
        out.extend(
            self.skipped_lines
                .iter()
                .take(5)
                .map(|l| format!("skipped {l}")),
        );
        if self.skipped_lines.len() > 5 {
            out.push(format!(
                "... {} lines skipped in all (--strict makes them errors)",
                self.skipped_lines.len()
            ));
        }
        out
    }
}

/// Read every document under `paths` (files, or folders walked in sorted order).
pub fn read_corpus(paths: &[PathBuf], options: &CorpusOptions) -> Result<Corpus, CorpusError> {
    let mut corpus = Corpus::default();
    for path in paths {
        for file in list_files(path)? {
            read_file(&file, options, &mut corpus)?;
        }
    }
    if corpus.documents.is_empty() {
        return Err(CorpusError::Empty(paths.to_vec()));
    }
    Ok(corpus)
}

/// `path` itself, or every regular file below it (sorted, hidden files skipped).
pub fn list_files(path: &Path) -> Result<Vec<PathBuf>, CorpusError> {
    let io = |source| CorpusError::Io {
        path: path.into(),
        source,
    };
    if !path.is_dir() {
        std::fs::metadata(path).map_err(io)?;
        return Ok(vec![path.into()]);
    }
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for entry in entries {
        if entry
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        {
            continue;
        }
        out.extend(list_files(&entry)?);
    }
    Ok(out)
}

fn read_file(path: &Path, options: &CorpusOptions, corpus: &mut Corpus) -> Result<(), CorpusError> {
    let (bytes, name) = read_decompressed(path)?;
    let (text, replaced) = decode_utf8(&bytes);
    corpus.replaced_invalid_utf8 += replaced;
    let mut push = |text: &str| {
        let text = text.trim_end();
        if !text.is_empty() {
            corpus.documents.push(Document {
                source: path.into(),
                text: text.to_string(),
            });
        }
    };
    if name.ends_with(".jsonl") || name.ends_with(".json") {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let why = match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) => match v.get(&options.text_field).and_then(|t| t.as_str()) {
                    Some(t) => {
                        push(t);
                        continue;
                    }
                    None => format!("no string field `{}`", options.text_field),
                },
                Err(e) => format!("malformed JSON: {e}"),
            };
            if options.strict {
                return Err(CorpusError::Json {
                    path: path.into(),
                    line: i + 1,
                    message: why,
                });
            }
            corpus
                .skipped_lines
                .push(format!("{}:{}: {why}", path.display(), i + 1));
        }
    } else {
        match options.split {
            TextSplit::File => push(&text),
            TextSplit::BlankLine => {
                for block in blank_line_blocks(&text) {
                    push(block);
                }
            }
        }
    }
    Ok(())
}

/// The blocks of `text` between blank lines (empty or whitespace-only; `\n` or `\r\n` endings),
/// as slices of the original text.
fn blank_line_blocks(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let (mut start, mut offset) = (0, 0);
    for line in text.split_inclusive('\n') {
        if line.trim().is_empty() {
            if offset > start {
                blocks.push(&text[start..offset]);
            }
            start = offset + line.len();
        }
        offset += line.len();
    }
    if offset > start {
        blocks.push(&text[start..]);
    }
    blocks
}

/// The bytes of `path`, decompressed when it ends in `.gz` or `.zst`, and its name without that
/// extension (which then tells JSONL from text).
fn read_decompressed(path: &Path) -> Result<(Vec<u8>, String), CorpusError> {
    use std::io::Read;
    let name = path.to_string_lossy().into_owned();
    let file = std::fs::File::open(path).map_err(|source| CorpusError::Io {
        path: path.into(),
        source,
    })?;
    let decompress_err = |e: std::io::Error| CorpusError::Decompress {
        path: path.into(),
        message: e.to_string(),
    };
    let mut bytes = Vec::new();
    if let Some(inner) = name.strip_suffix(".gz") {
        flate2::read::MultiGzDecoder::new(file)
            .read_to_end(&mut bytes)
            .map_err(decompress_err)?;
        Ok((bytes, inner.to_string()))
    } else if let Some(inner) = name.strip_suffix(".zst") {
        zstd::stream::read::Decoder::new(file)
            .and_then(|mut d| d.read_to_end(&mut bytes))
            .map_err(decompress_err)?;
        Ok((bytes, inner.to_string()))
    } else {
        let mut file = file;
        file.read_to_end(&mut bytes)
            .map_err(|source| CorpusError::Io {
                path: path.into(),
                source,
            })?;
        Ok((bytes, name))
    }
}

/// Lossy UTF-8 decoding that also counts the replaced sequences.
fn decode_utf8(bytes: &[u8]) -> (String, usize) {
    let mut out = String::with_capacity(bytes.len());
    let mut replaced = 0;
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            out.push('\u{FFFD}');
            replaced += 1;
        }
    }
    (out, replaced)
}
