//! What can go wrong importing a metaseq checkpoint; every message names the file concerned.

use std::path::PathBuf;

use crate::config::ConfigError;

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
