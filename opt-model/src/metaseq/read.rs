//! Reading one part: its `"model"` tensors (lazily, through burn-store's PyTorch reader) and,
//! leniently, its `cfg["model"]`; checking that the parts are one model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::DType;
use burn_store::pytorch::reader::PickleValue;
use burn_store::pytorch::PytorchReader;
use burn_store::TensorSnapshot;

use super::error::MetaseqError;
use super::parts::part_name;
use super::tensor::HfTensor;
use crate::dtype::Precision;

/// `cfg["model"]` fields (a plain dict; `None` when absent or unreadable).
pub(super) type Cfg = HashMap<String, PickleValue>;

/// One part file as read.
pub(super) struct Part {
    pub(super) path: PathBuf,
    pub(super) tensors: HashMap<String, TensorSnapshot>,
    pub(super) cfg: Option<Cfg>,
}

/// Read a part's `"model"` tensors (lazily) and, leniently, its `cfg["model"]`.
pub(super) fn read_part(path: &Path) -> Result<Part, MetaseqError> {
    if let Err(source) = std::fs::metadata(path) {
        return Err(MetaseqError::Io {
            path: path.into(),
            source,
        });
    }
    let reader = PytorchReader::with_top_level_key(path, "model").map_err(|e| {
        use burn_store::pytorch::PytorchError as E;
        match e {
            E::KeyNotFound(message) => MetaseqError::NotMetaseq {
                path: path.into(),
                message: format!("no `model` dict: {message}"),
            },
            e => MetaseqError::NotPytorch {
                path: path.into(),
                message: e.to_string(),
            },
        }
    })?;
    let tensors = reader.into_tensors();
    if !tensors.keys().any(|k| k.starts_with("decoder.")) {
        let mut some: Vec<&String> = tensors.keys().collect();
        some.sort();
        some.truncate(5);
        return Err(MetaseqError::NotMetaseq {
            path: path.into(),
            message: format!("its `model` dict has no `decoder.*` tensors (first keys: {some:?})"),
        });
    }
    Ok(Part {
        path: path.into(),
        tensors,
        cfg: read_cfg_model(path),
    })
}

/// `cfg["model"]` as a dict, or `None`. Real files hold an `argparse.Namespace` there, which
/// burn-store's `PickleValue` surfaces as `None` (its state is dropped): the shapes then decide.
fn read_cfg_model(path: &Path) -> Option<Cfg> {
    match PytorchReader::read_pickle_data(path, Some("cfg")).ok()? {
        PickleValue::Dict(mut cfg) => match cfg.remove("model")? {
            PickleValue::Dict(model) => Some(model),
            _ => None,
        },
        _ => None,
    }
}

/// Materialize one stored tensor as bytes in its precision (float64 narrowed to float32).
pub(super) fn load_tensor(
    path: &Path,
    name: &str,
    snap: &TensorSnapshot,
) -> Result<HfTensor, MetaseqError> {
    let data = snap.to_data().map_err(|e| MetaseqError::NotPytorch {
        path: path.into(),
        message: format!("tensor `{name}`: {e}"),
    })?;
    let (dtype, data) = match data.dtype {
        DType::F32 => (Precision::F32, data),
        DType::F16 => (Precision::F16, data),
        DType::BF16 => (Precision::Bf16, data),
        DType::F64 => (Precision::F32, data.convert::<f32>()),
        other => {
            return Err(MetaseqError::Dtype {
                path: path.into(),
                name: name.into(),
                dtype: format!("{other:?}"),
            })
        }
    };
    let bytes = data.as_bytes().to_vec();
    // burn-store's reader returns zeros, not an error, when a storage record is missing or fails
    // its CRC. No trained weight matrix is all zeros (a bias can be: k_proj's gets no gradient).
    if data.shape.len() >= 2 && !bytes.is_empty() && bytes.iter().all(|&b| b == 0) {
        return Err(MetaseqError::NotPytorch {
            path: path.into(),
            message: format!(
                "tensor `{name}` reads as all zeros: its storage record is missing or corrupt"
            ),
        });
    }
    Ok(HfTensor {
        shape: data.shape.to_vec(),
        dtype,
        bytes,
    })
}

/// `cfg.model.model_parallel_size`, when readable, must equal the number of parts given.
pub(super) fn check_part_count(parts: &[Part]) -> Result<(), MetaseqError> {
    let first = &parts[0];
    let Some(size) = first
        .cfg
        .as_ref()
        .and_then(|c| cfg_usize(c, "model_parallel_size"))
    else {
        return Ok(());
    };
    if size == parts.len() {
        return Ok(());
    }
    let name = part_name(&first.path);
    let missing: Vec<String> = (parts.len()..size)
        .filter_map(|i| name.as_ref().map(|n| n.with_index(i)))
        .collect();
    Err(MetaseqError::Parts {
        path: first.path.clone(),
        message: format!(
            "cfg.model.model_parallel_size = {size}, but {} part(s) were given{}",
            parts.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!(" (missing: {})", missing.join(", "))
            }
        ),
    })
}

/// Every part must have part 0's tensor names, shapes, dtypes and cfg architecture fields.
pub(super) fn check_same_model(parts: &[Part]) -> Result<(), MetaseqError> {
    let first = &parts[0];
    for part in &parts[1..] {
        let mismatch = |message: String| MetaseqError::Mismatch {
            path: part.path.clone(),
            other: first.path.clone(),
            message,
        };
        if let (Some(a), Some(b)) = (&first.cfg, &part.cfg) {
            if let Some(field) = ARCH_FIELDS.iter().find(|f| a.get(**f) != b.get(**f)) {
                return Err(mismatch(format!(
                    "cfg.model.{field} is {} here and {} there",
                    show(b.get(*field)),
                    show(a.get(*field))
                )));
            }
        }
        if let Some(message) = tensor_set_difference(first, part) {
            return Err(mismatch(message));
        }
    }
    Ok(())
}

/// `cfg["model"]` fields that must agree between parts of one model.
const ARCH_FIELDS: [&str; 9] = [
    "decoder_embed_dim",
    "decoder_input_dim",
    "decoder_output_dim",
    "decoder_layers",
    "decoder_attention_heads",
    "decoder_ffn_embed_dim",
    "decoder_normalize_before",
    "max_target_positions",
    "model_parallel_size",
];

/// The first difference in tensor names, shapes or dtypes between two parts, if any.
fn tensor_set_difference(first: &Part, part: &Part) -> Option<String> {
    let mut names: Vec<&String> = first.tensors.keys().collect();
    names.sort();
    for name in names {
        let a = &first.tensors[name];
        let Some(b) = part.tensors.get(name) else {
            return Some(format!("it has no tensor `{name}`"));
        };
        if a.shape.as_slice() != b.shape.as_slice() || a.dtype != b.dtype {
            return Some(format!(
                "tensor `{name}` is {:?} {:?} here and {:?} {:?} there",
                b.shape.as_slice(),
                b.dtype,
                a.shape.as_slice(),
                a.dtype
            ));
        }
    }
    let mut extra: Vec<&String> = part
        .tensors
        .keys()
        .filter(|k| !first.tensors.contains_key(*k))
        .collect();
    extra.sort();
    extra
        .first()
        .map(|name| format!("it has tensor `{name}`, which the other lacks"))
}

/// An integer field (booleans are not integers here).
pub(super) fn cfg_usize(cfg: &Cfg, field: &str) -> Option<usize> {
    match cfg.get(field)? {
        PickleValue::Int(i) => usize::try_from(*i).ok(),
        _ => None,
    }
}

/// A boolean field.
pub(super) fn cfg_bool(cfg: &Cfg, field: &str) -> Option<bool> {
    match cfg.get(field)? {
        PickleValue::Bool(b) => Some(*b),
        _ => None,
    }
}

/// A float field (an integer counts).
pub(super) fn cfg_f64(cfg: &Cfg, field: &str) -> Option<f64> {
    match cfg.get(field)? {
        PickleValue::Float(f) => Some(*f),
        PickleValue::Int(i) => Some(*i as f64),
        _ => None,
    }
}

/// A cfg value for messages.
fn show(value: Option<&PickleValue>) -> String {
    match value {
        None => "absent".into(),
        Some(PickleValue::Int(i)) => i.to_string(),
        Some(PickleValue::Float(f)) => f.to_string(),
        Some(PickleValue::Bool(b)) => b.to_string(),
        Some(PickleValue::String(s)) => format!("\"{s}\""),
        Some(other) => format!("{other:?}"),
    }
}

/// A string field.
pub(super) fn cfg_str<'a>(cfg: &'a Cfg, field: &str) -> Option<&'a str> {
    match cfg.get(field)? {
        PickleValue::String(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfg_fields_by_type() {
        let cfg: Cfg = [
            ("layers", PickleValue::Int(12)),
            ("negative", PickleValue::Int(-1)),
            ("pre_ln", PickleValue::Bool(true)),
            ("dropout", PickleValue::Float(0.1)),
            ("act", PickleValue::String("relu".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(cfg_usize(&cfg, "layers"), Some(12));
        assert_eq!(cfg_usize(&cfg, "negative"), None);
        // A boolean is not an integer here, and an integer counts as a float.
        assert_eq!(cfg_usize(&cfg, "pre_ln"), None);
        assert_eq!(cfg_bool(&cfg, "pre_ln"), Some(true));
        assert_eq!(cfg_f64(&cfg, "dropout"), Some(0.1));
        assert_eq!(cfg_f64(&cfg, "layers"), Some(12.0));
        assert_eq!(cfg_str(&cfg, "act"), Some("relu"));
        assert_eq!(cfg_str(&cfg, "absent"), None);
        assert_eq!(show(cfg.get("act")), "\"relu\"");
        assert_eq!(show(None), "absent");
    }
}
