//! Writing the imported checkpoint as an HF folder: `config.json` + `model.safetensors`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::error::MetaseqError;
use super::import::MetaseqCheckpoint;
use super::tensor::HfTensor;
use crate::checkpoint::WEIGHTS_FILE;
use crate::dtype::Precision;

/// Write `config.json` + `model.safetensors` (weights in `dtype`) into `dir`, each atomically.
pub fn write_hf_dir(
    ckpt: &MetaseqCheckpoint,
    dir: &Path,
    dtype: Precision,
) -> Result<(), MetaseqError> {
    std::fs::create_dir_all(dir).map_err(|source| MetaseqError::Io {
        path: dir.into(),
        source,
    })?;
    let path = dir.join(WEIGHTS_FILE);
    let bytes = safetensors_bytes(&ckpt.tensors, dtype).map_err(|e| MetaseqError::Write {
        path: path.clone(),
        message: e.to_string(),
    })?;
    crate::fsutil::write_atomic(&path, &bytes).map_err(|source| MetaseqError::Io {
        path: path.clone(),
        source,
    })?;
    let mut config = ckpt.config.clone();
    config
        .extra
        .insert("torch_dtype".into(), dtype.torch_name().into());
    config.save(dir.join("config.json"))?;
    Ok(())
}

/// Serialize `tensors` converted to `dtype`, with `format: pt` (transformers requires it).
fn safetensors_bytes(
    tensors: &BTreeMap<String, HfTensor>,
    dtype: Precision,
) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let converted: Vec<(&String, &HfTensor, Vec<u8>)> = tensors
        .iter()
        .map(|(name, t)| (name, t, t.to_bytes(dtype)))
        .collect();
    let mut views = Vec::with_capacity(converted.len());
    for (name, t, bytes) in &converted {
        let view =
            safetensors::tensor::TensorView::new(dtype.safetensors(), t.shape.clone(), bytes)?;
        views.push(((*name).clone(), view));
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_in_the_asked_dtype_with_pt_format() {
        let t = HfTensor {
            shape: vec![1, 3],
            dtype: Precision::F32,
            bytes: Precision::F32.encode_f32(&[1.0, -2.5, 1.0 + 2f32.powi(-8)]),
        };
        let tensors = BTreeMap::from([("model.decoder.x".to_string(), t)]);
        let bytes = safetensors_bytes(&tensors, Precision::Bf16).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            meta.metadata()
                .as_ref()
                .and_then(|m| m.get("format"))
                .map(String::as_str),
            Some("pt")
        );
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let x = st.tensor("model.decoder.x").unwrap();
        assert_eq!(
            (x.dtype(), x.shape()),
            (safetensors::Dtype::BF16, &[1usize, 3][..])
        );
        // bf16 ties to even: 1 + 2^-8 -> 1.
        assert_eq!(Precision::Bf16.decode_f32(x.data()), [1.0, -2.5, 1.0]);
    }
}
