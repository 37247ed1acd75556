//! Zero- and few-shot benchmark tasks, built exactly as EleutherAI's lm-evaluation-harness
//! (lm-eval 0.4) builds them: our task format, converters from each source dataset, lm-eval's
//! few-shot sampler, its prompts and its context/continuation tokenization.
//!
//! Scoring a request with a model is `opt_eval::tasks`; this crate holds everything that needs
//! no model.

pub mod arrow_rows;
pub mod catalog;
pub mod fetch;
pub mod fewshot;
pub mod format;
pub mod plan;
pub mod pyrandom;
pub mod requests;
pub mod templates;

pub use catalog::{task, Metrics, PaperTask, TaskDef, PAPER_TASKS, TASKS};
pub use fewshot::{FewshotSampler, FEWSHOT_SEED};
pub use format::{read_items, write_items, TaskItem};
pub use plan::{plan, PlanOptions, PlannedItem};
pub use requests::{encode_request, fewshot_prefix, model_input, Encoded, ModelInput, Request};

use std::path::PathBuf;

/// Errors reading, converting or preparing task data.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("unknown task `{name}`; known tasks: {known} (or give a path to a task .jsonl file)")]
    UnknownTask { name: String, known: String },
    #[error("task `{task}`: {message}")]
    Invalid { task: String, message: String },
    #[error("could not fetch the task data ({step}): {message}\nWithout network access, convert a local copy with `opt tasks convert`.")]
    Fetch { step: String, message: String },
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
}
