//! OPT's tokenizer: GPT-2 byte-level BPE with fairseq ids, `</s>` (2) prepended like HF's OPT tokenizer.

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::sequence::Sequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::processors::PostProcessorWrapper;
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
        let config = dir.join("tokenizer_config.json");
        if json.is_file() {
            let mut tokenizer = Self::from_tokenizer_json(&json)?;
            // A tokenizer.json decides BOS through its post-processor unless a config says otherwise.
            tokenizer.add_bos = config.is_file() && read_add_bos(&config);
            if tokenizer.add_bos {
                // `encode` prepends `</s>` itself: drop the template `save` added for HF readers.
                tokenizer.inner = without_bos_template(tokenizer.inner);
            }
            return Ok(tokenizer);
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab.is_file() && merges.is_file() {
            let add_bos = read_add_bos(&config);
            return Self::from_vocab_merges(&vocab, &merges, add_bos);
        }
        Err(TokenizerError::NotFound { dir: dir.into() })
    }

    /// A `tokenizer.json` as `tokenizers` saves it; its own post-processor decides about BOS.
    pub fn from_tokenizer_json(path: &Path) -> Result<Self, TokenizerError> {
        let inner = Tokenizer::from_file(path).map_err(|e| load_err(path, e))?;
        Ok(Self {
            inner,
            add_bos: false,
        })
    }

    /// OPT's files: GPT-2 regex pre-tokenizer, no prefix space; `</s>` and `<pad>` matched in text.
    pub fn from_vocab_merges(
        vocab: &Path,
        merges: &Path,
        add_bos: bool,
    ) -> Result<Self, TokenizerError> {
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| load_err(vocab, e))?;
        let mut inner = Tokenizer::new(bpe);
        let byte_level = ByteLevel::default()
            .add_prefix_space(false)
            .trim_offsets(true);
        inner.with_pre_tokenizer(Some(byte_level));
        inner.with_decoder(Some(ByteLevel::default()));
        inner.add_special_tokens(&[
            AddedToken::from("</s>", true),
            AddedToken::from("<pad>", true),
        ]);
        Ok(Self { inner, add_bos })
    }

    /// `gpt2` (the built-in GPT-2 BPE), a tokenizer directory, or a `tokenizer.json` file.
    pub fn load(spec: &Path) -> Result<Self, TokenizerError> {
        if spec.as_os_str() == "gpt2" && !spec.exists() {
            Self::gpt2()
        } else if spec.is_dir() {
            Self::from_dir(spec)
        } else {
            Self::from_tokenizer_json(spec)
        }
    }

    /// The built-in GPT-2 BPE (`--tokenizer gpt2`; ids in [`crate::gpt2`]'s layout), `</s>`
    /// prepended to prompts like OPT's.
    pub fn gpt2() -> Result<Self, TokenizerError> {
        let inner = crate::gpt2::gpt2_bpe().map_err(|message| TokenizerError::Load {
            path: "<built-in gpt2>".into(),
            message,
        })?;
        Ok(Self::from_inner(inner, true))
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

    /// Text of `ids`; special tokens dropped when `skip_special` (always `</s>` and `<pad>`, OPT's
    /// `all_special_ids`, even where a tokenizer keeps them as plain vocabulary entries).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        let kept: Vec<u32>;
        let ids = if skip_special {
            kept = ids
                .iter()
                .copied()
                .filter(|&i| i != special::EOS && i != special::PAD)
                .collect();
            &kept
        } else {
            ids
        };
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// The vocabulary size rounded up to a multiple of 8 (the model's embedding rows, like OPT's 50272).
    pub fn padded_vocab_size(&self) -> usize {
        self.vocab_size().div_ceil(8) * 8
    }

    /// Write `tokenizer.json` and a `tokenizer_config.json` with OPT's special tokens to `dir`.
    /// With `add_bos`, the file's post-processor prepends `</s>` (a `</s> $A` template after any
    /// post-processor it had), so that HF's `AutoTokenizer` gives the ids `encode` gives.
    pub fn save(&self, dir: &Path) -> Result<(), TokenizerError> {
        let io = |e: &dyn std::fmt::Display| load_err(dir, e);
        std::fs::create_dir_all(dir).map_err(|e| io(&e))?;
        let json = self.exported().to_string(false).map_err(|e| io(&e))?;
        crate::fsutil::write_atomic(&dir.join("tokenizer.json"), json.as_bytes())
            .map_err(|e| io(&e))?;
        let config = serde_json::json!({"add_bos_token": self.add_bos, "bos_token": "</s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"});
        crate::fsutil::write_atomic(
            &dir.join("tokenizer_config.json"),
            config.to_string().as_bytes(),
        )
        .map_err(|e| io(&e))
    }

    /// The tokenizer as `save` writes it.
    fn exported(&self) -> Tokenizer {
        let mut tokenizer = self.inner.clone();
        if self.add_bos {
            let processor = match tokenizer.get_post_processor().cloned() {
                None => bos_template(),
                Some(existing) => Sequence::new(vec![existing, bos_template()]).into(),
            };
            tokenizer.with_post_processor(Some(processor));
        }
        tokenizer
    }

    /// A short content hash of the tokenizer (FNV-1a 64 of its `tokenizer.json` and BOS setting).
    pub fn fingerprint(&self) -> String {
        let json = self.inner.to_string(false).unwrap_or_default();
        let h = crate::hash::fnv1a64(json.bytes().chain([self.add_bos as u8]), 0);
        format!("fnv1a64:{h:016x}")
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

/// OPT's `</s>` BOS as a post-processor (HF's slow OPT tokenizer: `</s> A`, `</s> A </s> B`).
fn bos_template() -> PostProcessorWrapper {
    TemplateProcessing::builder()
        .try_single("</s> $A")
        .and_then(|b| b.try_pair("</s> $A </s> $B"))
        .expect("a valid template")
        .special_tokens(vec![("</s>", special::EOS)])
        .build()
        .expect("a valid template")
        .into()
}

/// Undo [`OptTokenizer::exported`]: the post-processor the tokenizer had before `save`.
fn without_bos_template(mut tokenizer: Tokenizer) -> Tokenizer {
    let template = bos_template();
    let original = match tokenizer.get_post_processor() {
        Some(p) if *p == template => None,
        Some(PostProcessorWrapper::Sequence(seq))
            if seq.as_ref().len() == 2 && seq.as_ref()[1] == template =>
        {
            Some(seq.as_ref()[0].clone())
        }
        _ => return tokenizer,
    };
    tokenizer.with_post_processor(original);
    tokenizer
}

/// Train a byte-level BPE on `texts` with OPT's special tokens at ids 0..3, and write
/// `tokenizer.json` + `tokenizer_config.json` (add_bos_token: true) into `out_dir`.
pub fn train_bpe<S: AsRef<str> + Send>(
    texts: impl Iterator<Item = S> + Send,
    vocab_size: usize,
    out_dir: &Path,
) -> Result<OptTokenizer, TokenizerError> {
    use tokenizers::models::bpe::BpeTrainerBuilder;
    use tokenizers::{NormalizerWrapper, TokenizerBuilder};
    let err = |e: tokenizers::Error| TokenizerError::Load {
        path: out_dir.into(),
        message: e.to_string(),
    };
    let specials = ["<s>", "<pad>", "</s>", "<unk>"]
        .map(|t| AddedToken::from(t, true))
        .to_vec();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let mut tokenizer =
        TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)))
            .with_post_processor(Some(ByteLevel::default().trim_offsets(false)))
            .with_decoder(Some(ByteLevel::default()))
            .build()
            .map_err(err)?;
    tokenizer.train(&mut trainer, texts).map_err(err)?;
    let tokenizer = OptTokenizer::from_inner(tokenizer.into(), true);
    tokenizer.save(out_dir)?;
    Ok(tokenizer)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_layout() {
        let tok = OptTokenizer::gpt2().unwrap();
        assert_eq!(tok.vocab_size(), 50261);
        assert_eq!(tok.padded_vocab_size(), 50264);
        // "Hello" is GPT-2 id 15496; the prompt starts with </s> like OPT's.
        assert_eq!(tok.encode("Hello").unwrap(), vec![2, 15496 + 4]);
        assert_eq!(tok.encode_plain("<|endoftext|>").unwrap(), vec![50260]);
        assert_eq!(tok.decode(&[2, 15496 + 4, 2], true).unwrap(), "Hello");
    }
}
