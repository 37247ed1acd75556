//! The pipeline: order the parts, read them, check they are one model, merge, derive the config.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::derive::{check_cfg, check_complete, resolve_heads, Dims, HeadsSource};
use super::error::MetaseqError;
use super::merge::merge_parts;
use super::parts::order_parts;
use super::read::{check_part_count, check_same_model, read_part};
use super::tensor::HfTensor;
use crate::config::{OptConfig, PREFIX};
use crate::dtype::Precision;

/// An imported checkpoint: the derived config and every HF tensor (`model.decoder.*`).
#[derive(Debug, Clone)]
pub struct MetaseqCheckpoint {
    /// The HF config derived from the shapes (and cfg).
    pub config: OptConfig,
    /// HF name -> tensor, in the checkpoint's precision; no `lm_head` (tied).
    pub tensors: BTreeMap<String, HfTensor>,
    /// Precision of `embed_tokens` (the checkpoint's dtype).
    pub dtype: Precision,
    /// The part files in part order.
    pub files: Vec<PathBuf>,
    /// Where `num_attention_heads` came from.
    pub heads_source: HeadsSource,
}

/// Read, check and merge the part files of one metaseq checkpoint. `heads` overrides (and must
/// agree with) `cfg.model.decoder_attention_heads`.
pub fn import(paths: &[PathBuf], heads: Option<usize>) -> Result<MetaseqCheckpoint, MetaseqError> {
    let (files, named) = order_parts(paths)?;
    let parts = files
        .iter()
        .map(|p| read_part(p))
        .collect::<Result<Vec<_>, _>>()?;
    if named {
        check_part_count(&parts)?;
    }
    check_same_model(&parts)?;
    let tensors = merge_parts(&parts)?;
    let first = &parts[0].path;
    let dims = Dims::from_tensors(first, &tensors)?;
    if let Some(cfg) = &parts[0].cfg {
        check_cfg(first, cfg, &dims)?;
    }
    let (h, heads_source) = resolve_heads(first, &dims, parts[0].cfg.as_ref(), heads)?;
    let config = dims.config(first, h, parts[0].cfg.as_ref())?;
    check_complete(first, &config, &tensors)?;
    let dtype = tensors[&format!("{PREFIX}embed_tokens.weight")].dtype;
    Ok(MetaseqCheckpoint {
        config,
        tensors,
        dtype,
        files,
        heads_source,
    })
}
