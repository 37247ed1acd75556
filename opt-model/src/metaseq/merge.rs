//! Merging the model-parallel parts into HF tensors: Megatron's split rules undone, the fused
//! `qkv_proj` split into k, v, q, the tied output projection checked.

use std::collections::BTreeMap;
use std::path::Path;

use super::error::MetaseqError;
use super::names::{classify, unknown_hint, Mapping};
use super::read::{load_tensor, Part};
use super::tensor::HfTensor;
use crate::config::PREFIX;

/// Merge every tensor over the parts into HF-named tensors (`model.decoder.*`).
pub(super) fn merge_parts(parts: &[Part]) -> Result<BTreeMap<String, HfTensor>, MetaseqError> {
    let first = &parts[0];
    let mut names: Vec<&String> = first.tensors.keys().collect();
    names.sort();
    let mut out = BTreeMap::new();
    let mut output_projection = None;
    for name in names {
        let Some(mapping) = classify(name) else {
            return Err(MetaseqError::UnknownTensor {
                path: first.path.clone(),
                name: name.clone(),
                shape: first.tensors[name].shape.to_vec(),
                hint: unknown_hint(name),
            });
        };
        match mapping {
            Mapping::Skip => {}
            Mapping::OutputProjection => output_projection = Some(cat(parts, name, 0)?),
            Mapping::Cat { dim, hf } => {
                out.insert(format!("{PREFIX}{hf}"), cat(parts, name, dim)?);
            }
            Mapping::Replicated { hf } => {
                out.insert(format!("{PREFIX}{hf}"), replicated(parts, name)?);
            }
            Mapping::Kvq { layer, param } => {
                for (proj, t) in ["k", "v", "q"].into_iter().zip(split_kvq(parts, name)?) {
                    out.insert(
                        format!("{PREFIX}layers.{layer}.self_attn.{proj}_proj.{param}"),
                        t,
                    );
                }
            }
        }
    }
    if let Some(head) = output_projection {
        check_tied(&first.path, &out, &head)?;
    }
    Ok(out)
}

/// Every part's copy of `name`.
fn load_all(parts: &[Part], name: &str) -> Result<Vec<HfTensor>, MetaseqError> {
    parts
        .iter()
        .map(|p| load_tensor(&p.path, name, &p.tensors[name]))
        .collect()
}

/// Part 0's `name`, after checking every other part holds the same bytes.
fn replicated(parts: &[Part], name: &str) -> Result<HfTensor, MetaseqError> {
    let mut all = load_all(parts, name)?.into_iter();
    let first = all.next().expect("at least one part");
    for (part, t) in parts[1..].iter().zip(all) {
        if t != first {
            return Err(MetaseqError::NotReplicated {
                path: part.path.clone(),
                name: name.into(),
                first: parts[0].path.clone(),
            });
        }
    }
    Ok(first)
}

/// `name` concatenated over the parts along `dim` (0 or 1).
fn cat(parts: &[Part], name: &str, dim: usize) -> Result<HfTensor, MetaseqError> {
    let all = load_all(parts, name)?;
    if all[0].shape.is_empty() || (dim == 1 && all[0].shape.len() != 2) {
        return Err(MetaseqError::Shape {
            path: parts[0].path.clone(),
            name: name.into(),
            found: all[0].shape.clone(),
            expected: (if dim == 1 {
                "a matrix"
            } else {
                "at least one dimension"
            })
            .into(),
        });
    }
    Ok(if dim == 0 {
        cat_rows(all)
    } else {
        cat_cols(all)
    })
}

/// Concatenate along dimension 0 (shapes already checked equal across parts).
fn cat_rows(all: Vec<HfTensor>) -> HfTensor {
    let mut iter = all.into_iter();
    let mut out = iter.next().expect("at least one part");
    for t in iter {
        out.shape[0] += t.shape[0];
        out.bytes.extend_from_slice(&t.bytes);
    }
    out
}

/// Concatenate matrices along dimension 1: each output row is the parts' rows side by side.
fn cat_cols(all: Vec<HfTensor>) -> HfTensor {
    let rows = all[0].shape[0];
    let widths: Vec<usize> = all.iter().map(|t| t.shape[1] * t.dtype.size()).collect();
    let mut bytes = Vec::with_capacity(all.iter().map(|t| t.bytes.len()).sum());
    for r in 0..rows {
        for (t, w) in all.iter().zip(&widths) {
            bytes.extend_from_slice(&t.bytes[r * w..(r + 1) * w]);
        }
    }
    HfTensor {
        shape: vec![rows, all.iter().map(|t| t.shape[1]).sum()],
        dtype: all[0].dtype,
        bytes,
    }
}

/// Split a fused `qkv_proj` into HF's k, v, q (in that order), merging over parts.
///
/// Despite its name, metaseq's fused projection holds rows **K, V, Q** (`modules/
/// multihead_attention.py` l.316-319: `k, v, q = split_tensor_along_last_dim(kvq, 3)`), and each
/// model-parallel part holds its own `[K_r; V_r; Q_r]` (its heads' slice of each), so the merge
/// splits every part in three and concatenates the K blocks of all parts, then V, then Q.
/// Concatenating the parts first and splitting the result in thirds would interleave them.
fn split_kvq(parts: &[Part], name: &str) -> Result<[HfTensor; 3], MetaseqError> {
    let all = load_all(parts, name)?;
    let rows = all[0].shape.first().copied().unwrap_or(0);
    if rows == 0 || !rows.is_multiple_of(3) {
        return Err(MetaseqError::Shape {
            path: parts[0].path.clone(),
            name: name.into(),
            found: all[0].shape.clone(),
            expected: "3 equal row blocks [K; V; Q]".into(),
        });
    }
    let m = rows / 3;
    let block = |i: usize| cat_rows(all.iter().map(|t| t.rows(i * m, m)).collect());
    Ok([block(0), block(1), block(2)])
}

/// A stored `output_projection` must equal the merged embedding (OPT ties them).
fn check_tied(
    path: &Path,
    tensors: &BTreeMap<String, HfTensor>,
    head: &HfTensor,
) -> Result<(), MetaseqError> {
    match tensors.get(&format!("{PREFIX}embed_tokens.weight")) {
        Some(embed) if embed == head => Ok(()),
        _ => Err(MetaseqError::UntiedOutput { path: path.into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::Precision;

    fn f32s(shape: &[usize], values: &[f32]) -> HfTensor {
        HfTensor {
            shape: shape.to_vec(),
            dtype: Precision::F32,
            bytes: Precision::F32.encode_f32(values),
        }
    }

    #[test]
    fn row_and_column_concatenation() {
        let a = f32s(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        let b = f32s(&[2, 1], &[5.0, 6.0]);
        // [[1, 2], [3, 4]] | [[5], [6]] = [[1, 2, 5], [3, 4, 6]].
        let cols = cat_cols(vec![a.clone(), b]);
        assert_eq!(cols.shape, [2, 3]);
        assert_eq!(cols.to_f32(), [1.0, 2.0, 5.0, 3.0, 4.0, 6.0]);
        let rows = cat_rows(vec![a.clone(), f32s(&[1, 2], &[7.0, 8.0])]);
        assert_eq!(rows.shape, [3, 2]);
        assert_eq!(rows.to_f32(), [1.0, 2.0, 3.0, 4.0, 7.0, 8.0]);
        // Rows [1, 2) of dimension 0.
        assert_eq!(a.rows(1, 1).to_f32(), [3.0, 4.0]);
    }
}
