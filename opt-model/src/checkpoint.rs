//! Hugging Face checkpoints: load `config.json` + (sharded) `model.safetensors`, and save the same layout.
//!
//! Files are validated against the config before any tensor is applied, so a missing, unexpected,
//! mis-shaped or corrupt tensor is a typed error naming the file and the tensor, never a panic.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::prelude::*;
use burn::store::{
    BurnToPyTorchAdapter, ModuleAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
    TensorSnapshot,
};
use burn::tensor::DType;
use safetensors::SafeTensors;

pub use crate::config::{hf_tensor_shapes, PREFIX};
use crate::config::{ConfigError, OptConfig};
use crate::model::Opt;

/// Name of the single-file weights.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Name of the shard index of sharded weights.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Errors loading or saving a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{dir}: no {WEIGHTS_FILE} or {INDEX_FILE} found")]
    NoWeights { dir: PathBuf },
    #[error("{path}: invalid shard index: {message}")]
    Index { path: PathBuf, message: String },
    #[error("{path}: not a valid safetensors file (truncated or corrupt?): {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: missing tensor `{name}` (config.json implies shape {expected:?})")]
    MissingTensor {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
    },
    #[error("{path}: unexpected tensor `{name}` with shape {shape:?} (not part of an OPT model with this config.json)")]
    UnexpectedTensor {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has shape {found:?}, but config.json implies {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has dtype {dtype}; expected F32, F16, BF16 or F64")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: `lm_head.weight` differs from `embed_tokens.weight`; OPT ties them and untied heads are not supported")]
    UntiedHead { path: PathBuf },
    #[error("{path}: {message}")]
    Store { path: PathBuf, message: String },
}

/// Load an HF OPT directory (`config.json` + weights) as float32 parameters on `device`.
pub fn load_pretrained<B: Backend>(
    dir: impl AsRef<Path>,
    device: &B::Device,
) -> Result<Opt<B>, CheckpointError> {
    let dir = dir.as_ref();
    let config = OptConfig::load(dir.join("config.json"))?;
    let files = weight_files(dir)?;
    load_weights(Opt::new(&config, device), &files)
}

/// The safetensors files of a checkpoint directory (one file, or the shards of an index).
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let single = dir.join(WEIGHTS_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(INDEX_FILE);
    if !index.is_file() {
        return Err(CheckpointError::NoWeights { dir: dir.into() });
    }
    let text = std::fs::read_to_string(&index).map_err(|source| CheckpointError::Io {
        path: index.clone(),
        source,
    })?;
    let bad = |message: String| CheckpointError::Index {
        path: index.clone(),
        message,
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut shards: Vec<PathBuf> = Vec::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map[`{name}`] is not a file name")))?;
        let path = dir.join(file);
        if !shards.contains(&path) {
            shards.push(path);
        }
    }
    Ok(shards)
}

/// Validate `files` against `model`'s config, then load them into it.
pub fn load_weights<B: Backend>(
    mut model: Opt<B>,
    files: &[PathBuf],
) -> Result<Opt<B>, CheckpointError> {
    let expected: BTreeMap<String, Vec<usize>> =
        hf_tensor_shapes(&model.config).into_iter().collect();
    let mut found: HashMap<String, PathBuf> = HashMap::new();
    let mut lm_head: Option<(PathBuf, Vec<u8>)> = None;
    let mut embed_bytes: Option<Vec<u8>> = None;
    for path in files {
        let bytes = read_file(path)?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        for (raw_name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            if matches!(raw_name.as_str(), "lm_head.weight" | "model.lm_head.weight") {
                lm_head = Some((path.clone(), view.data().to_vec()));
                continue;
            }
            let name = canonical_name(&raw_name);
            let Some(want) = expected.get(&name) else {
                return Err(CheckpointError::UnexpectedTensor {
                    path: path.clone(),
                    name: raw_name,
                    shape,
                });
            };
            if &shape != want {
                return Err(CheckpointError::ShapeMismatch {
                    path: path.clone(),
                    name: raw_name,
                    found: shape,
                    expected: want.clone(),
                });
            }
            use safetensors::Dtype as D;
            if !matches!(view.dtype(), D::F32 | D::F16 | D::BF16 | D::F64) {
                return Err(CheckpointError::Dtype {
                    path: path.clone(),
                    name: raw_name,
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            if name == format!("{PREFIX}embed_tokens.weight") {
                embed_bytes = Some(view.data().to_vec());
            }
            found.insert(name, path.clone());
        }
    }
    let where_ = files.first().cloned().unwrap_or_default();
    if let Some((name, shape)) = expected.iter().find(|(n, _)| !found.contains_key(*n)) {
        return Err(CheckpointError::MissingTensor {
            path: if files.len() == 1 {
                where_
            } else {
                where_.parent().unwrap_or(&where_).into()
            },
            name: name.clone(),
            expected: shape.clone(),
        });
    }
    if let Some((path, head)) = lm_head {
        if Some(&head) != embed_bytes.as_ref() {
            return Err(CheckpointError::UntiedHead { path });
        }
    }
    for path in files {
        let mut store = SafetensorsStore::from_file(path)
            .with_key_remapping(r"^(model\.)?decoder\.", "")
            .with_from_adapter(PyTorchToBurnAdapter.chain(ToF32))
            .allow_partial(true);
        let result = model
            .load_from(&mut store)
            .map_err(|e| CheckpointError::Store {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if let Some(err) = result.errors.first() {
            return Err(CheckpointError::Store {
                path: path.clone(),
                message: err.to_string(),
            });
        }
    }
    Ok(model)
}

/// Write `model` as an HF directory (`config.json` + `model.safetensors`), atomically per file.
pub fn save_pretrained<B: Backend>(
    model: &Opt<B>,
    dir: impl AsRef<Path>,
) -> Result<(), CheckpointError> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io {
        path: dir.into(),
        source,
    })?;
    let path = dir.join(WEIGHTS_FILE);
    let mut store = SafetensorsStore::from_bytes(None)
        .with_to_adapter(BurnToPyTorchAdapter)
        .with_key_remapping("^", PREFIX)
        // transformers refuses files whose `format` metadata is not "pt".
        .metadata("format", "pt");
    model
        .save_into(&mut store)
        .map_err(|e| CheckpointError::Store {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let bytes = store.get_bytes().map_err(|e| CheckpointError::Store {
        path: path.clone(),
        message: e.to_string(),
    })?;
    crate::fsutil::write_atomic(&path, &bytes).map_err(|source| CheckpointError::Io {
        path: path.clone(),
        source,
    })?;
    model.config.save(dir.join("config.json"))?;
    Ok(())
}

/// `decoder.x` / `model.decoder.x` -> `model.decoder.x`.
fn canonical_name(name: &str) -> String {
    match name.strip_prefix("model.") {
        Some(rest) if rest.starts_with("decoder.") => name.to_string(),
        _ if name.starts_with("decoder.") => format!("model.{name}"),
        _ => name.to_string(),
    }
}

/// Memory-map a weights file (validation reads only headers and, for the tied-head check, two tensors).
fn read_file(path: &Path) -> Result<memmap2::Mmap, CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.into(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and dropped before this function's caller returns; a file
    // changed underneath would at worst fail validation or load, as with a plain read.
    unsafe { memmap2::Mmap::map(&file) }.map_err(io)
}

/// Casts half-precision (and f64) tensors to float32 while loading.
#[derive(Clone)]
struct ToF32;

impl ModuleAdapter for ToF32 {
    fn adapt(&self, s: &TensorSnapshot) -> TensorSnapshot {
        if !matches!(s.dtype, DType::F16 | DType::BF16 | DType::F64) {
            return s.clone();
        }
        let data = s.clone_data_fn();
        TensorSnapshot::from_closure(
            Rc::new(move || Ok(data()?.convert_dtype(DType::F32))),
            DType::F32,
            s.shape.clone(),
            s.path_stack.clone().unwrap_or_default(),
            s.container_stack.clone().unwrap_or_default(),
            s.tensor_id.unwrap_or_default(),
        )
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(self.clone())
    }
}
