//! Deriving the HF config from the merged tensors' shapes, cross-checked against `cfg["model"]`;
//! the attention heads (not in any shape) from `--heads`, the cfg or the paper sizes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::error::MetaseqError;
use super::names::metaseq_name;
use super::read::{cfg_bool, cfg_f64, cfg_str, cfg_usize, Cfg};
use super::tensor::HfTensor;
use crate::config::{hf_tensor_shapes, presets, OptConfig, PREFIX};

/// Where the number of attention heads came from (it is not in the tensors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadsSource {
    /// The caller's `--heads`.
    Override,
    /// `cfg["model"].decoder_attention_heads`.
    Cfg,
    /// The OPT paper size (preset name) with the same vocabulary, width, depth and FFN width.
    PaperSize(&'static str),
}

/// The sizes the merged tensors imply.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    vocab: usize,
    embed: usize,
    hidden: usize,
    ffn: usize,
    layers: usize,
    max_positions: usize,
    pre_ln: bool,
}

impl Dims {
    /// Read the sizes off `embed_tokens`, `embed_positions`, `layers.0.fc1` and the layer names.
    pub(super) fn from_tensors(
        path: &Path,
        tensors: &BTreeMap<String, HfTensor>,
    ) -> Result<Self, MetaseqError> {
        let matrix = |name: &str| -> Result<[usize; 2], MetaseqError> {
            let full = format!("{PREFIX}{name}");
            match tensors.get(&full).map(|t| t.shape.as_slice()) {
                Some(&[a, b]) => Ok([a, b]),
                Some(s) => Err(MetaseqError::Shape {
                    path: path.into(),
                    name: full,
                    found: s.to_vec(),
                    expected: "a matrix".into(),
                }),
                None => Err(MetaseqError::NotMetaseq {
                    path: path.into(),
                    message: format!("no `{}` tensor", metaseq_name(name)),
                }),
            }
        };
        let [vocab, embed] = matrix("embed_tokens.weight")?;
        let [positions, hidden] = matrix("embed_positions.weight")?;
        let [ffn, _] = matrix("layers.0.fc1.weight")?;
        // metaseq's learned positions have P + 2 rows: position p uses row p + 2 (padding_idx 1).
        let max_positions =
            positions
                .checked_sub(2)
                .filter(|&p| p > 0)
                .ok_or_else(|| MetaseqError::Shape {
                    path: path.into(),
                    name: format!("{PREFIX}embed_positions.weight"),
                    found: vec![positions, hidden],
                    expected: "max_positions + 2 rows".into(),
                })?;
        Ok(Self {
            vocab,
            embed,
            hidden,
            ffn,
            layers: count_layers(tensors),
            max_positions,
            pre_ln: tensors.contains_key(&format!("{PREFIX}final_layer_norm.weight")),
        })
    }

    /// The HF config: these sizes, `heads`, and OPT's fixed choices (ReLU, biases, affine
    /// LayerNorms, ids pad 1 / bos 2 / eos 2, no embedding scaling) from [`OptConfig::default`].
    pub(super) fn config(
        &self,
        path: &Path,
        heads: usize,
        cfg: Option<&Cfg>,
    ) -> Result<OptConfig, MetaseqError> {
        let mut config = OptConfig {
            vocab_size: self.vocab,
            hidden_size: self.hidden,
            num_hidden_layers: self.layers,
            ffn_dim: self.ffn,
            num_attention_heads: heads,
            max_position_embeddings: self.max_positions,
            do_layer_norm_before: self.pre_ln,
            word_embed_proj_dim: (self.embed != self.hidden).then_some(self.embed),
            ..OptConfig::default()
        };
        // Keep the dropout the model was trained with (HF's OPT configs say attention 0.0; metaseq
        // trained OPT with 0.1 for both). Only matters for further training.
        if let Some(cfg) = cfg {
            config.dropout = cfg_f64(cfg, "dropout").unwrap_or(config.dropout);
            config.attention_dropout =
                cfg_f64(cfg, "attention_dropout").unwrap_or(config.attention_dropout);
        }
        config
            .validate()
            .map_err(|(field, message)| MetaseqError::Config {
                path: path.into(),
                field,
                message,
            })?;
        Ok(config)
    }
}

/// 1 + the largest `layers.<i>` index (gaps are caught by [`check_complete`]).
fn count_layers(tensors: &BTreeMap<String, HfTensor>) -> usize {
    let prefix = format!("{PREFIX}layers.");
    tensors
        .keys()
        .filter_map(|k| {
            k.strip_prefix(&prefix)?
                .split_once('.')?
                .0
                .parse::<usize>()
                .ok()
        })
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

/// Cross-check the `cfg["model"]` fields that are present against the shapes.
pub(super) fn check_cfg(path: &Path, cfg: &Cfg, dims: &Dims) -> Result<(), MetaseqError> {
    let sizes = [
        ("decoder_embed_dim", dims.hidden),
        ("decoder_input_dim", dims.embed),
        ("decoder_output_dim", dims.embed),
        ("decoder_layers", dims.layers),
        ("decoder_ffn_embed_dim", dims.ffn),
        ("max_target_positions", dims.max_positions),
    ];
    for (field, want) in sizes {
        match cfg_usize(cfg, field) {
            Some(v) if v != want => return Err(cfg_mismatch(path, field, v, want)),
            _ => {}
        }
    }
    match cfg_bool(cfg, "decoder_normalize_before") {
        Some(v) if v != dims.pre_ln => {
            return Err(cfg_mismatch(
                path,
                "decoder_normalize_before",
                v,
                dims.pre_ln,
            ))
        }
        _ => {}
    }
    check_cfg_supported(path, cfg)
}

/// Reject cfg settings HF's OPT cannot express (metaseq's OPT runs all use the accepted ones).
fn check_cfg_supported(path: &Path, cfg: &Cfg) -> Result<(), MetaseqError> {
    let unsupported = |message: String| {
        Err(MetaseqError::Unsupported {
            path: path.into(),
            message,
        })
    };
    if let Some(act) = cfg_str(cfg, "activation_fn") {
        if act != "relu" {
            return unsupported(format!(
                "cfg.model.activation_fn = \"{act}\"; OPT uses relu"
            ));
        }
    }
    let required = [
        ("no_scale_embedding", "embeddings scaled by sqrt(hidden)"),
        (
            "share_decoder_input_output_embed",
            "an output projection untied from the embedding",
        ),
        ("decoder_learned_pos", "sinusoidal positions"),
    ];
    for (field, what) in required {
        if cfg_bool(cfg, field) == Some(false) {
            return unsupported(format!(
                "cfg.model.{field} = false: {what}, which HF's OPT cannot express"
            ));
        }
    }
    Ok(())
}

/// A [`MetaseqError::CfgMismatch`].
fn cfg_mismatch(
    path: &Path,
    field: &'static str,
    found: impl fmt::Display,
    expected: impl fmt::Display,
) -> MetaseqError {
    MetaseqError::CfgMismatch {
        path: path.into(),
        field,
        found: found.to_string(),
        expected: expected.to_string(),
    }
}

/// Heads: `--heads` (which must agree with cfg when both exist), else cfg, else the paper size
/// with the same vocabulary, hidden size, layers and FFN width (heads are not in the tensors).
pub(super) fn resolve_heads(
    path: &Path,
    dims: &Dims,
    cfg: Option<&Cfg>,
    given: Option<usize>,
) -> Result<(usize, HeadsSource), MetaseqError> {
    let stored = cfg.and_then(|c| cfg_usize(c, "decoder_attention_heads"));
    match (given, stored) {
        (Some(given), Some(stored)) if given != stored => Err(MetaseqError::HeadsMismatch {
            path: path.into(),
            given,
            stored,
        }),
        (Some(h), _) => Ok((h, HeadsSource::Override)),
        (None, Some(h)) => Ok((h, HeadsSource::Cfg)),
        (None, None) => paper_heads(dims).ok_or_else(|| MetaseqError::UnknownHeads {
            path: path.into(),
            hidden: dims.hidden,
            layers: dims.layers,
        }),
    }
}

/// The heads of the preset whose shape matches `dims` exactly (OPT-125M ... 175B).
fn paper_heads(dims: &Dims) -> Option<(usize, HeadsSource)> {
    presets().into_iter().find_map(|p| {
        let c = &p.config;
        let same = c.vocab_size == dims.vocab
            && c.hidden_size == dims.hidden
            && c.num_hidden_layers == dims.layers
            && c.ffn_dim == dims.ffn
            && c.embed_dim() == dims.embed;
        same.then_some((c.num_attention_heads, HeadsSource::PaperSize(p.name)))
    })
}

/// Every tensor `config` implies must be present with its shape, and no other.
pub(super) fn check_complete(
    path: &Path,
    config: &OptConfig,
    tensors: &BTreeMap<String, HfTensor>,
) -> Result<(), MetaseqError> {
    let expected: BTreeMap<String, Vec<usize>> = hf_tensor_shapes(config).into_iter().collect();
    for (name, shape) in &expected {
        match tensors.get(name) {
            None => {
                return Err(MetaseqError::MissingTensor {
                    path: path.into(),
                    name: name.clone(),
                    expected: shape.clone(),
                })
            }
            Some(t) if &t.shape != shape => {
                return Err(MetaseqError::Shape {
                    path: path.into(),
                    name: name.clone(),
                    found: t.shape.clone(),
                    expected: format!("{shape:?}"),
                })
            }
            Some(_) => {}
        }
    }
    match tensors.iter().find(|(n, _)| !expected.contains_key(*n)) {
        Some((name, t)) => Err(MetaseqError::UnknownTensor {
            path: path.into(),
            name: name.clone(),
            shape: t.shape.clone(),
            hint: " in a model of this shape".into(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Precision;
    use burn_store::pytorch::reader::PickleValue;

    fn dims_125m() -> Dims {
        Dims {
            vocab: 50272,
            embed: 768,
            hidden: 768,
            ffn: 3072,
            layers: 12,
            max_positions: 2048,
            pre_ln: true,
        }
    }

    #[test]
    fn heads_from_override_cfg_or_paper_size() {
        let path = Path::new("part.pt");
        let dims = dims_125m();
        // OPT-125M's 12 heads are in the paper's table, not in any tensor.
        assert_eq!(
            resolve_heads(path, &dims, None, None).unwrap(),
            (12, HeadsSource::PaperSize("125m"))
        );
        let cfg: Cfg = [("decoder_attention_heads".to_string(), PickleValue::Int(16))].into();
        assert_eq!(
            resolve_heads(path, &dims, Some(&cfg), None).unwrap(),
            (16, HeadsSource::Cfg)
        );
        assert_eq!(
            resolve_heads(path, &dims, None, Some(4)).unwrap(),
            (4, HeadsSource::Override)
        );
        assert!(matches!(
            resolve_heads(path, &dims, Some(&cfg), Some(4)),
            Err(MetaseqError::HeadsMismatch {
                given: 4,
                stored: 16,
                ..
            })
        ));
        let odd = Dims {
            hidden: 96,
            embed: 96,
            ..dims
        };
        assert!(matches!(
            resolve_heads(path, &odd, None, None),
            Err(MetaseqError::UnknownHeads {
                hidden: 96,
                layers: 12,
                ..
            })
        ));
    }

    #[test]
    fn layers_counted_from_names() {
        let t = HfTensor {
            shape: vec![1],
            dtype: Precision::F32,
            bytes: vec![0; 4],
        };
        let tensors: BTreeMap<String, HfTensor> = [
            "layers.0.fc1.bias",
            "layers.10.fc1.bias",
            "final_layer_norm.bias",
        ]
        .iter()
        .map(|n| (format!("{PREFIX}{n}"), t.clone()))
        .collect();
        assert_eq!(count_layers(&tensors), 11);
    }
}
