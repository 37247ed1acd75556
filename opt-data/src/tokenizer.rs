//! OPT's tokenizer: GPT-2 byte-level BPE with fairseq ids, `</s>` (2) prepended like HF's OPT tokenizer.

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// Errors loading or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{dir}: no tokenizer files (expected tokenizer.json, or vocab.json + merges.txt)")]
    NotFound { dir: PathBuf },
    #[error("tokenizer: {0}")]
    Encode(String),
}

/// OPT's special token ids (fairseq dictionary order).
pub mod special {
    /// `<s>`
    pub const BOS_S: u32 = 0;
    /// `<pad>`
    pub const PAD: u32 = 1;
    /// `</s>`: OPT's BOS, EOS and document separator.
    pub const EOS: u32 = 2;
    /// `<unk>`
    pub const UNK: u32 = 3;
}

/// A byte-level BPE tokenizer with OPT's conventions.
#[derive(Clone)]
pub struct OptTokenizer {
    inner: Tokenizer,
    /// Prepend `</s>` to every encoded text (HF OPT's `add_bos_token`).
    add_bos: bool,
}

impl std::fmt::Debug for OptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OptTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

impl OptTokenizer {
    /// Load from a model directory: `tokenizer.json` if present, else `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_tokenizer_json(&json);
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab.is_file() && merges.is_file() {
            let add_bos = read_add_bos(&dir.join("tokenizer_config.json"));
            return Self::from_vocab_merges(&vocab, &merges, add_bos);
        }
        Err(TokenizerError::NotFound { dir: dir.into() })
    }

    /// A `tokenizer.json` as `tokenizers` saves it; its own post-processor decides about BOS.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self, TokenizerError> {
        let inner = Tokenizer::from_file(path).map_err(|e| load_err(path, e))?;
        Ok(Self { inner, add_bos: false })
    }

    /// OPT's files: GPT-2 regex pre-tokenizer, no prefix space; `</s>` and `<pad>` matched in text.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path, add_bos: bool) -> Result<Self, TokenizerError> {
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| load_err(vocab, e))?;
        let mut inner = Tokenizer::new(bpe);
        let byte_level = ByteLevel::default().add_prefix_space(false).trim_offsets(true);
        inner.with_pre_tokenizer(Some(byte_level));
        inner.with_decoder(Some(ByteLevel::default()));
        inner.add_special_tokens(&[AddedToken::from("</s>", true), AddedToken::from("<pad>", true)]);
        Ok(Self { inner, add_bos })
    }

    /// Wrap a `tokenizers` tokenizer.
    pub fn from_inner(inner: Tokenizer, add_bos: bool) -> Self {
        Self { inner, add_bos }
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Ids of `text` as HF's OPT tokenizer gives them (with `</s>` first when `add_bos`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = self.encode_plain(text)?;
        if self.add_bos {
            ids.insert(0, special::EOS);
        }
        Ok(ids)
    }

    /// Ids of `text` without any added BOS (document bodies for training).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, !self.add_bos)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`; special tokens dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// Number of ids the tokenizer can produce.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether `</s>` is prepended to encoded texts.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }
}

fn read_add_bos(config: &Path) -> bool {
    std::fs::read_to_string(config)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("add_bos_token").and_then(|b| b.as_bool()))
        .unwrap_or(true)
}

fn load_err(path: &Path, e: impl std::fmt::Display) -> TokenizerError {
    TokenizerError::Load {
        path: path.into(),
        message: e.to_string(),
    }
}
