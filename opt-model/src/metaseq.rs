//! Import Meta's metaseq-format OPT checkpoints (`reshard-model_part-K.pt`, `reshard.pt`) into
//! the HF layout that [`crate::checkpoint::load_pretrained`] reads.
//!
//! Steps: read each part's `"model"` dict with burn-store's PyTorch reader, check that the parts
//! belong to one model, merge the model-parallel slices (metaseq's Megatron split rules), split
//! the fused `qkv_proj` (rows K, V, Q), rename to HF names, derive the [`OptConfig`] from the
//! shapes (attention heads from `cfg["model"]`, `--heads` or the paper sizes), and write
//! `config.json` + `model.safetensors`. Tensors keep their stored dtype until written; merging
//! only moves bytes, so a float32 checkpoint imports bit for bit.
//!
//! Parts are never discovered implicitly: a model-parallel checkpoint must be given as all of
//! its `-model_part-K` files (any order); a missing or extra sibling is an error that lists it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::tensor::DType;
use burn_store::pytorch::reader::PickleValue;
use burn_store::pytorch::PytorchReader;
use burn_store::TensorSnapshot;

use crate::checkpoint::{hf_tensor_shapes, PREFIX, WEIGHTS_FILE};
use crate::config::{presets, ConfigError, OptConfig};

/// Errors importing a metaseq checkpoint; every message names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum MetaseqError {
    /// No checkpoint file was given.
    #[error("no metaseq checkpoint file given")]
    NoFiles,
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a PyTorch checkpoint (zip + pickle) that can be read.
    #[error("{path}: not a readable PyTorch checkpoint: {message}")]
    NotPytorch { path: PathBuf, message: String },
    /// A PyTorch checkpoint, but not in metaseq's layout.
    #[error("{path}: not a metaseq checkpoint: {message}")]
    NotMetaseq { path: PathBuf, message: String },
    /// Model-parallel parts are missing, duplicated or misnamed.
    #[error("{path}: {message}")]
    Parts { path: PathBuf, message: String },
    /// Two files are not parts of the same model.
    #[error("{path}: not a part of the same model as {other}: {message}")]
    Mismatch {
        path: PathBuf,
        other: PathBuf,
        message: String,
    },
    /// A parameter that OPT does not have.
    #[error("{path}: unknown tensor `{name}` with shape {shape:?} (not an OPT parameter){hint}")]
    UnknownTensor {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
        hint: String,
    },
    /// A parameter the derived config requires is absent.
    #[error("{path}: missing tensor `{name}` (the other tensors imply shape {expected:?})")]
    MissingTensor {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
    },
    /// A parameter whose shape disagrees with the others.
    #[error(
        "{path}: tensor `{name}` has shape {found:?}, but the other tensors imply {expected:?}"
    )]
    Shape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: String,
    },
    /// A parameter stored in a dtype other than float32/16, bfloat16 or float64.
    #[error(
        "{path}: tensor `{name}` has dtype {dtype}; expected float32, float16, bfloat16 or float64"
    )]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    /// A tensor that metaseq replicates differs between two parts.
    #[error(
        "{path}: `{name}` must be identical in every model-parallel part but differs from {first}"
    )]
    NotReplicated {
        path: PathBuf,
        name: String,
        first: PathBuf,
    },
    /// `output_projection` is not a copy of `embed_tokens`.
    #[error("{path}: `decoder.output_projection.weight` differs from `decoder.embed_tokens.weight`; OPT ties them and untied heads are not supported")]
    UntiedOutput { path: PathBuf },
    /// A `cfg["model"]` field disagrees with the tensor shapes.
    #[error("{path}: cfg.model.{field} = {found}, but the tensors say {expected}")]
    CfgMismatch {
        path: PathBuf,
        field: &'static str,
        found: String,
        expected: String,
    },
    /// The checkpoint is a metaseq model HF's OPT cannot express.
    #[error("{path}: {message}")]
    Unsupported { path: PathBuf, message: String },
    /// The number of attention heads could not be determined.
    #[error("{path}: the number of attention heads is not stored in the tensors, cfg.model.decoder_attention_heads could not be read and hidden size {hidden} with {layers} layers is no OPT paper size; pass --heads N")]
    UnknownHeads {
        path: PathBuf,
        hidden: usize,
        layers: usize,
    },
    /// `--heads` disagrees with `cfg["model"]`.
    #[error("{path}: --heads {given} disagrees with cfg.model.decoder_attention_heads = {stored}")]
    HeadsMismatch {
        path: PathBuf,
        given: usize,
        stored: usize,
    },
    /// The derived configuration cannot build a network.
    #[error("{path}: derived config: field `{field}`: {message}")]
    Config {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
    /// The safetensors file could not be built.
    #[error("{path}: {message}")]
    Write { path: PathBuf, message: String },
    /// `config.json` could not be written.
    #[error(transparent)]
    ConfigFile(#[from] ConfigError),
}

/// Floating-point storage precision of weights (read or written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// IEEE float32.
    F32,
    /// IEEE float16.
    F16,
    /// bfloat16.
    Bf16,
}

impl Precision {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    /// PyTorch's name (`float32`, `float16`, `bfloat16`), as in `config.json`'s `torch_dtype`.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }

    /// The safetensors dtype.
    fn safetensors(self) -> safetensors::Dtype {
        match self {
            Self::F32 => safetensors::Dtype::F32,
            Self::F16 => safetensors::Dtype::F16,
            Self::Bf16 => safetensors::Dtype::BF16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(format!("unknown dtype `{s}`; choose f32, f16 or bf16")),
        }
    }
}

/// One HF tensor: shape, stored precision and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct HfTensor {
    /// Dimensions (Linear weights `[out, in]`).
    pub shape: Vec<usize>,
    /// Precision of `bytes` (the checkpoint's).
    pub dtype: Precision,
    /// Little-endian element bytes, row-major.
    pub bytes: Vec<u8>,
}

impl HfTensor {
    /// The values as float32 (exact for every supported precision).
    pub fn to_f32(&self) -> Vec<f32> {
        decode_f32(self.dtype, &self.bytes)
    }

    /// The bytes in `dtype` (round to nearest even when narrowing, like torch's `.to()`).
    pub fn to_bytes(&self, dtype: Precision) -> Vec<u8> {
        if dtype == self.dtype {
            self.bytes.clone()
        } else {
            encode_f32(&self.to_f32(), dtype)
        }
    }

    /// Rows `[start, start + len)` of dimension 0.
    fn rows(&self, start: usize, len: usize) -> Self {
        let row = self.row_bytes();
        let mut shape = self.shape.clone();
        shape[0] = len;
        Self {
            shape,
            dtype: self.dtype,
            bytes: self.bytes[start * row..(start + len) * row].to_vec(),
        }
    }

    /// Bytes of one slice along dimension 0.
    fn row_bytes(&self) -> usize {
        self.shape[1..].iter().product::<usize>() * self.dtype.size()
    }
}

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

/// `cfg["model"]` fields (a plain dict; `None` when absent or unreadable).
type Cfg = HashMap<String, PickleValue>;

/// One part file as read.
struct Part {
    path: PathBuf,
    tensors: HashMap<String, TensorSnapshot>,
    cfg: Option<Cfg>,
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

// ---------------------------------------------------------------------------------------------
// Part files: names, order, count.

/// `<prefix>model_part-<index><suffix>`, e.g. `reshard-model_part-1.pt`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PartName {
    prefix: String,
    index: usize,
    suffix: String,
}

impl PartName {
    /// Parse a file name; `None` when it has no `model_part-K`.
    fn parse(file_name: &str) -> Option<Self> {
        let (head, tail) = file_name.rsplit_once("model_part-")?;
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        let index = tail[..digits].parse().ok()?;
        Some(Self {
            prefix: format!("{head}model_part-"),
            index,
            suffix: tail[digits..].to_string(),
        })
    }

    /// The name of part `index` of the same set.
    fn with_index(&self, index: usize) -> String {
        format!("{}{index}{}", self.prefix, self.suffix)
    }

    /// Whether `other` names a part of the same set.
    fn same_set(&self, other: &Self) -> bool {
        self.prefix == other.prefix && self.suffix == other.suffix
    }
}

/// The part name of a path, if its file name has one.
fn part_name(path: &Path) -> Option<PartName> {
    PartName::parse(path.file_name()?.to_str()?)
}

/// Sort the given files by part index and check the set is 0..N-1 with no sibling left out.
/// Returns the files and whether they are named parts (a lone unnamed file is a singleton).
fn order_parts(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, bool), MetaseqError> {
    let Some(first) = paths.first() else {
        return Err(MetaseqError::NoFiles);
    };
    if paths.len() == 1 && part_name(first).is_none() {
        return Ok((vec![first.clone()], false));
    }
    let mut named = Vec::with_capacity(paths.len());
    for path in paths {
        let name = part_name(path).ok_or_else(|| MetaseqError::Parts {
            path: path.clone(),
            message: "several files were given, but this one is not named `...-model_part-K.pt`; give the parts of one model-parallel checkpoint, or a single file".into(),
        })?;
        named.push((name, path.clone()));
    }
    named.sort_by_key(|(n, _)| n.index);
    check_indices(&named)?;
    check_siblings(&named)?;
    Ok((named.into_iter().map(|(_, p)| p).collect(), true))
}

/// Indices must be exactly 0..N-1, each once, all of one set.
fn check_indices(named: &[(PartName, PathBuf)]) -> Result<(), MetaseqError> {
    let (first, first_path) = &named[0];
    for (expected, (name, path)) in named.iter().enumerate() {
        if !name.same_set(first) {
            return Err(MetaseqError::Parts {
                path: path.clone(),
                message: format!(
                    "not part of the same set of files as {}",
                    first_path.display()
                ),
            });
        }
        if name.index != expected {
            let message = if name.index < expected {
                format!("part {} given twice", name.index)
            } else {
                format!(
                    "part {expected} of this model-parallel checkpoint is missing ({}); give every part",
                    first.with_index(expected)
                )
            };
            return Err(MetaseqError::Parts {
                path: path.clone(),
                message,
            });
        }
    }
    Ok(())
}

/// Files of the same set next to part 0 with an index past the given ones are missing parts.
fn check_siblings(named: &[(PartName, PathBuf)]) -> Result<(), MetaseqError> {
    let (first, path) = &named[0];
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(()); // Best effort: the files themselves are opened next.
    };
    let extra: BTreeSet<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| PartName::parse(f).is_some_and(|n| n.same_set(first) && n.index >= named.len()))
        .collect();
    if extra.is_empty() {
        return Ok(());
    }
    Err(MetaseqError::Parts {
        path: path.clone(),
        message: format!(
            "{} part(s) given, but {} also holds {}; give every part of the model-parallel checkpoint",
            named.len(),
            dir.display(),
            extra.into_iter().collect::<Vec<_>>().join(", ")
        ),
    })
}

/// `cfg.model.model_parallel_size`, when readable, must equal the number of parts given.
fn check_part_count(parts: &[Part]) -> Result<(), MetaseqError> {
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

// ---------------------------------------------------------------------------------------------
// Reading one part.

/// Read a part's `"model"` tensors (lazily) and, leniently, its `cfg["model"]`.
fn read_part(path: &Path) -> Result<Part, MetaseqError> {
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
fn load_tensor(path: &Path, name: &str, snap: &TensorSnapshot) -> Result<HfTensor, MetaseqError> {
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

// ---------------------------------------------------------------------------------------------
// Parts of one model.

/// Every part must have part 0's tensor names, shapes, dtypes and cfg architecture fields.
fn check_same_model(parts: &[Part]) -> Result<(), MetaseqError> {
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

// ---------------------------------------------------------------------------------------------
// Names and merge rules.

/// How one metaseq parameter maps to HF and merges over model-parallel parts (metaseq
/// `scripts/reshard_mp.py` l.43-83, `modules/megatron/mpu/layers.py`; README of the fixtures).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mapping {
    /// Not a parameter (`decoder.version`): dropped.
    Skip,
    /// Concatenated over parts along `dim`: 0 for vocabulary- and column-parallel tensors
    /// (`embed_tokens`, `fc1`, unfused `k/v/q_proj`), 1 for row-parallel weights (`fc2`, `out_proj`).
    Cat { dim: usize, hf: String },
    /// Identical in every part (LayerNorms, positions, projections, row-parallel biases).
    Replicated { hf: String },
    /// Fused `qkv_proj` of `layer`; `param` is `weight` or `bias`.
    Kvq { layer: usize, param: &'static str },
    /// `output_projection.weight`: the tied LM head, checked against `embed_tokens`.
    OutputProjection,
}

/// The mapping of a metaseq parameter name, `None` for names OPT does not have.
fn classify(name: &str) -> Option<Mapping> {
    let rest = name.strip_prefix("decoder.")?;
    let same = |hf: &str| Some(Mapping::Replicated { hf: hf.into() });
    match rest {
        "version" => return Some(Mapping::Skip),
        "embed_tokens.weight" => {
            return Some(Mapping::Cat {
                dim: 0,
                hf: rest.into(),
            })
        }
        "output_projection.weight" => return Some(Mapping::OutputProjection),
        "embed_positions.weight" => return same(rest),
        // Only when word_embed_proj_dim != hidden_size (350m); plain, replicated Linears.
        "project_in_dim.weight" => return same("project_in.weight"),
        "project_out_dim.weight" => return same("project_out.weight"),
        // metaseq's final `layer_norm` exists only for pre-LN models; HF calls it final_layer_norm.
        "layer_norm.weight" => return same("final_layer_norm.weight"),
        "layer_norm.bias" => return same("final_layer_norm.bias"),
        _ => {}
    }
    let (layer, param) = rest.strip_prefix("layers.")?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    classify_layer(layer, param)
}

/// The mapping of `decoder.layers.<layer>.<param>`.
fn classify_layer(layer: usize, param: &str) -> Option<Mapping> {
    let hf = format!("layers.{layer}.{param}");
    Some(match param {
        "self_attn.qkv_proj.weight" => Mapping::Kvq {
            layer,
            param: "weight",
        },
        "self_attn.qkv_proj.bias" => Mapping::Kvq {
            layer,
            param: "bias",
        },
        "self_attn.k_proj.weight"
        | "self_attn.k_proj.bias"
        | "self_attn.v_proj.weight"
        | "self_attn.v_proj.bias"
        | "self_attn.q_proj.weight"
        | "self_attn.q_proj.bias"
        | "fc1.weight"
        | "fc1.bias" => Mapping::Cat { dim: 0, hf },
        "self_attn.out_proj.weight" | "fc2.weight" => Mapping::Cat { dim: 1, hf },
        // Row-parallel biases are added once after the all-reduce: full in every part.
        "self_attn.out_proj.bias"
        | "fc2.bias"
        | "self_attn_layer_norm.weight"
        | "self_attn_layer_norm.bias"
        | "final_layer_norm.weight"
        | "final_layer_norm.bias" => Mapping::Replicated { hf },
        _ => return None,
    })
}

/// Why an unknown name is unknown, when we can tell.
fn unknown_hint(name: &str) -> String {
    if name.contains("flat_param") {
        " — a raw FSDP shard: unflatten it first with metaseq's `reshard_fsdp.py --unflatten-weights`".into()
    } else if !name.starts_with("decoder.") {
        " — metaseq parameters all start with `decoder.`".into()
    } else {
        String::new()
    }
}

/// Merge every tensor over the parts into HF-named tensors (`model.decoder.*`).
fn merge_parts(parts: &[Part]) -> Result<BTreeMap<String, HfTensor>, MetaseqError> {
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

// ---------------------------------------------------------------------------------------------
// Config.

/// The sizes the merged tensors imply.
#[derive(Debug, Clone, Copy)]
struct Dims {
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
    fn from_tensors(
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
    fn config(
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

/// metaseq's name for an HF name without prefix (for messages).
fn metaseq_name(hf: &str) -> String {
    format!("decoder.{hf}")
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
fn check_cfg(path: &Path, cfg: &Cfg, dims: &Dims) -> Result<(), MetaseqError> {
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
fn resolve_heads(
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
fn check_complete(
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

// ---------------------------------------------------------------------------------------------
// cfg values and number formats.

/// An integer field (booleans are not integers here).
fn cfg_usize(cfg: &Cfg, field: &str) -> Option<usize> {
    match cfg.get(field)? {
        PickleValue::Int(i) => usize::try_from(*i).ok(),
        _ => None,
    }
}

/// A boolean field.
fn cfg_bool(cfg: &Cfg, field: &str) -> Option<bool> {
    match cfg.get(field)? {
        PickleValue::Bool(b) => Some(*b),
        _ => None,
    }
}

/// A float field (an integer counts).
fn cfg_f64(cfg: &Cfg, field: &str) -> Option<f64> {
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
fn cfg_str<'a>(cfg: &'a Cfg, field: &str) -> Option<&'a str> {
    match cfg.get(field)? {
        PickleValue::String(s) => Some(s),
        _ => None,
    }
}

/// Little-endian `dtype` bytes -> float32 (exact: every supported format widens losslessly).
fn decode_f32(dtype: Precision, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Precision::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Precision::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Precision::Bf16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    }
}

/// float32 -> little-endian `dtype` bytes (round to nearest even).
fn encode_f32(values: &[f32], dtype: Precision) -> Vec<u8> {
    match dtype {
        Precision::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Precision::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        Precision::Bf16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
    }
}
