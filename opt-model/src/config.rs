//! OPT hyper-parameters: the Hugging Face `config.json` fields, validation and the paper's presets.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading, validating or writing a `config.json`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid JSON or a field has the wrong type.
    #[error("{path}: field `{field}`: {message}")]
    Parse {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// A field holds a value the network cannot be built from.
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

/// Every field of HF's `OPTConfig` that shapes the network, with HF's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub ffn_dim: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    /// Pre-LN when true (every size but 350m), post-LN when false.
    pub do_layer_norm_before: bool,
    /// Width of the token embedding; `None` means `hidden_size` (350m uses 512).
    pub word_embed_proj_dim: Option<usize>,
    pub dropout: f64,
    pub attention_dropout: f64,
    pub activation_dropout: f64,
    pub activation_function: String,
    pub enable_bias: bool,
    pub layer_norm_elementwise_affine: bool,
    pub layerdrop: f64,
    /// HF compatibility flag: drops the decoder's final LayerNorm even when pre-LN.
    #[serde(rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    pub init_std: f64,
    pub pad_token_id: usize,
    pub bos_token_id: usize,
    pub eos_token_id: usize,
    /// Fields we do not interpret (model_type, architectures, ...), kept for a faithful rewrite.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for OptConfig {
    fn default() -> Self {
        Self {
            vocab_size: 50272,
            hidden_size: 768,
            num_hidden_layers: 12,
            ffn_dim: 3072,
            num_attention_heads: 12,
            max_position_embeddings: 2048,
            do_layer_norm_before: true,
            word_embed_proj_dim: None,
            dropout: 0.1,
            attention_dropout: 0.0,
            activation_dropout: 0.0,
            activation_function: "relu".into(),
            enable_bias: true,
            layer_norm_elementwise_affine: true,
            layerdrop: 0.0,
            remove_final_layer_norm: false,
            init_std: 0.02,
            pad_token_id: 1,
            bos_token_id: 2,
            eos_token_id: 2,
            extra: serde_json::Map::new(),
        }
    }
}

impl OptConfig {
    /// A config of the given shape with HF's defaults elsewhere (ffn = 4 * hidden).
    pub fn with_shape(vocab: usize, hidden: usize, layers: usize, heads: usize) -> Self {
        Self {
            vocab_size: vocab,
            hidden_size: hidden,
            num_hidden_layers: layers,
            ffn_dim: 4 * hidden,
            num_attention_heads: heads,
            ..Self::default()
        }
    }

    /// Width of the token embedding (and of the LM head).
    pub fn embed_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Whether `project_in`/`project_out` exist (350m-style).
    pub fn has_projections(&self) -> bool {
        self.embed_dim() != self.hidden_size
    }

    /// Whether the decoder ends with its own LayerNorm (pre-LN models only).
    pub fn has_final_layer_norm(&self) -> bool {
        self.do_layer_norm_before && !self.remove_final_layer_norm
    }

    /// Number of trainable parameters (the tied LM head counted once).
    pub fn num_params(&self) -> usize {
        hf_tensor_shapes(self)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Check that a network can be built from these values.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("ffn_dim", self.ffn_dim),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
            ("word_embed_proj_dim", self.embed_dim()),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err((field, "must be greater than 0".into()));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err((
                "hidden_size",
                format!(
                    "{} is not divisible by num_attention_heads = {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if self.activation_function != "relu" {
            return Err((
                "activation_function",
                format!(
                    "\"{}\" is not supported; OPT uses \"relu\"",
                    self.activation_function
                ),
            ));
        }
        for (field, p) in [
            ("dropout", self.dropout),
            ("attention_dropout", self.attention_dropout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err((field, format!("{p} is not a probability in [0, 1)")));
            }
        }
        if self.activation_dropout != 0.0 {
            return Err((
                "activation_dropout",
                "only 0.0 is supported (OPT applies no dropout between fc1 and fc2)".into(),
            ));
        }
        if self.layerdrop != 0.0 {
            return Err(("layerdrop", "only 0.0 is supported".into()));
        }
        for (field, id) in [
            ("pad_token_id", self.pad_token_id),
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
        ] {
            if id >= self.vocab_size {
                return Err((
                    field,
                    format!(
                        "{id} is outside the vocabulary (vocab_size {})",
                        self.vocab_size
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Read and validate an HF `config.json`; unknown fields are kept, missing ones take HF's defaults.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.into(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| e.with_path(path))
    }

    /// Parse and validate `config.json` text.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let mut config: Self =
            serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Parse {
                path: PathBuf::new(),
                field: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        // HF writes `word_embed_proj_dim: null` for "same as hidden_size".
        if config.word_embed_proj_dim == Some(config.hidden_size) {
            config.word_embed_proj_dim = None;
        }
        config
            .validate()
            .map_err(|(field, message)| ConfigError::Invalid {
                path: PathBuf::new(),
                field,
                message,
            })?;
        Ok(config)
    }

    /// The JSON HF's `OPTConfig.from_pretrained` reads back.
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("config serialises");
        let map = value.as_object_mut().expect("config is an object");
        map.insert("word_embed_proj_dim".into(), self.embed_dim().into());
        for (key, default) in [
            ("model_type", serde_json::json!("opt")),
            ("architectures", serde_json::json!(["OPTForCausalLM"])),
            ("tie_word_embeddings", serde_json::json!(true)),
            ("use_cache", serde_json::json!(true)),
        ] {
            map.entry(key).or_insert(default);
        }
        // transformers 4 reads `torch_dtype`, 5 reads `dtype`; our weights are float32.
        if !map.contains_key("dtype") && !map.contains_key("torch_dtype") {
            map.insert("torch_dtype".into(), "float32".into());
        }
        serde_json::to_string_pretty(&value).expect("config serialises")
    }

    /// Write `config.json` atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ConfigError> {
        let path = path.as_ref();
        crate::fsutil::write_atomic(path, self.to_json().as_bytes()).map_err(|source| {
            ConfigError::Io {
                path: path.into(),
                source,
            }
        })
    }
}

/// HF's key prefix for decoder tensors.
pub const PREFIX: &str = "model.decoder.";

/// The tensors of an OPT model in HF naming and layout (Linear weights [out, in]).
pub fn hf_tensor_shapes(config: &OptConfig) -> Vec<(String, Vec<usize>)> {
    let (d, e, f) = (config.hidden_size, config.embed_dim(), config.ffn_dim);
    let mut out = vec![
        (
            "embed_tokens.weight".to_string(),
            vec![config.vocab_size, e],
        ),
        (
            "embed_positions.weight".to_string(),
            vec![config.max_position_embeddings + 2, d],
        ),
    ];
    if config.has_projections() {
        out.push(("project_in.weight".into(), vec![d, e]));
        out.push(("project_out.weight".into(), vec![e, d]));
    }
    let norm = |out: &mut Vec<_>, name: String| {
        if config.layer_norm_elementwise_affine {
            out.push((format!("{name}.weight"), vec![d]));
            out.push((format!("{name}.bias"), vec![d]));
        }
    };
    if config.has_final_layer_norm() {
        norm(&mut out, "final_layer_norm".into());
    }
    for i in 0..config.num_hidden_layers {
        let p = format!("layers.{i}");
        let linear = |out: &mut Vec<_>, name: &str, o: usize, i: usize| {
            out.push((format!("{p}.{name}.weight"), vec![o, i]));
            if config.enable_bias {
                out.push((format!("{p}.{name}.bias"), vec![o]));
            }
        };
        for proj in ["k_proj", "v_proj", "q_proj", "out_proj"] {
            linear(&mut out, &format!("self_attn.{proj}"), d, d);
        }
        linear(&mut out, "fc1", f, d);
        linear(&mut out, "fc2", d, f);
        norm(&mut out, format!("{p}.self_attn_layer_norm"));
        norm(&mut out, format!("{p}.final_layer_norm"));
    }
    out.into_iter()
        .map(|(n, s)| (format!("{PREFIX}{n}"), s))
        .collect()
}

impl ConfigError {
    fn with_path(self, p: &Path) -> Self {
        match self {
            Self::Parse { field, message, .. } => Self::Parse {
                path: p.into(),
                field,
                message,
            },
            Self::Invalid { field, message, .. } => Self::Invalid {
                path: p.into(),
                field,
                message,
            },
            io => io,
        }
    }
}

/// A named model size with the paper's training hyper-parameters carried alongside.
#[derive(Debug, Clone)]
pub struct Preset {
    pub name: &'static str,
    pub config: OptConfig,
    /// Peak learning rate (paper Table 1).
    pub max_lr: f64,
    /// Tokens per optimizer update (paper Table 1; M = 2^20).
    pub batch_tokens: usize,
    /// Training sequence length.
    pub seq_len: usize,
}

const M: usize = 1 << 20;

/// The nine paper sizes plus small CPU presets for tests and the quickstart.
pub fn presets() -> Vec<Preset> {
    // (name, layers, d_model, heads, max_lr, batch tokens)
    let paper: [(&str, usize, usize, usize, f64, usize); 9] = [
        ("125m", 12, 768, 12, 6.0e-4, M / 2),
        ("350m", 24, 1024, 16, 3.0e-4, M / 2),
        ("1.3b", 24, 2048, 32, 2.0e-4, M),
        ("2.7b", 32, 2560, 32, 1.6e-4, M),
        ("6.7b", 32, 4096, 32, 1.2e-4, 2 * M),
        ("13b", 40, 5120, 40, 1.0e-4, 4 * M),
        ("30b", 48, 7168, 56, 1.0e-4, 4 * M),
        ("66b", 64, 9216, 72, 0.8e-4, 2 * M),
        ("175b", 96, 12288, 96, 1.2e-4, 2 * M),
    ];
    let mut out: Vec<Preset> = paper
        .iter()
        .map(|&(name, layers, d, heads, max_lr, batch_tokens)| {
            let mut config = OptConfig::with_shape(50272, d, layers, heads);
            if name == "350m" {
                // 350m is the odd one out: post-LN and a 512-wide embedding projected to 1024.
                config.do_layer_norm_before = false;
                config.word_embed_proj_dim = Some(512);
            }
            Preset {
                name,
                config,
                max_lr,
                batch_tokens,
                seq_len: 2048,
            }
        })
        .collect();
    let small = |vocab, d, layers, heads, maxpos| OptConfig {
        max_position_embeddings: maxpos,
        ..OptConfig::with_shape(vocab, d, layers, heads)
    };
    out.push(Preset {
        name: "tiny",
        config: small(2048, 128, 4, 4, 256),
        max_lr: 2.0e-3,
        batch_tokens: 16 * 128,
        seq_len: 128,
    });
    out.push(Preset {
        name: "cpu-small",
        config: small(8192, 256, 4, 4, 2048),
        max_lr: 1.0e-3,
        batch_tokens: 8 * 256,
        seq_len: 256,
    });
    out
}

/// Look a preset up by name.
pub fn preset(name: &str) -> Option<Preset> {
    presets().into_iter().find(|p| p.name == name)
}
