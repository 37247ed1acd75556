//! Zero- and few-shot task evaluation with lm-evaluation-harness's scoring.
//!
//! A request's score is the sum of the continuation's log-probabilities (log-softmax over all the
//! model's logits, float32) and whether greedy decoding would produce it; a document's `acc` is
//! whether its gold choice scores highest, `acc_norm` the same after dividing each score by the
//! choice's length in characters; a task reports their means and standard errors (and, for CB,
//! the macro F1 of the predictions).
//!
//! Requests are batched longest first and right-padded, which needs no attention mask: in a
//! causal model a real token never sees the pads after it. The LM head runs only at the
//! positions that predict a continuation token.
//!
//! Scoring is [`score`]; a document's and a task's metrics are [`report`].

pub mod report;
pub mod score;

use std::time::Instant;

use burn::prelude::*;
use opt_data::tasks::{plan, Metrics, PlanOptions, TaskDef, TaskError, TaskItem};
use opt_data::OptTokenizer;
use opt_model::Opt;

pub use report::{
    aggregate, first_argmax, item_results, mean, mean_stderr, ItemResult, RequestResult, TaskReport,
};
pub use score::{score_planned, score_requests, Score};

/// Errors of a task evaluation.
#[derive(Debug, thiserror::Error)]
pub enum TaskEvalError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error("the model's vocabulary ({model}) is smaller than the tokenizer's ({tokenizer}); was the model trained with another tokenizer?")]
    Vocab { model: usize, tokenizer: usize },
}

/// How to run a task.
#[derive(Debug, Clone)]
pub struct TaskOptions {
    /// Few-shot examples per document.
    pub shots: usize,
    /// Evaluate only the first N documents (the pool for few-shot draws stays the whole split).
    pub limit: Option<usize>,
    /// Requests per forward pass.
    pub batch: usize,
    /// The few-shot sampler's seed.
    pub seed: u64,
    /// Run a context shared by all choices once, the choices from the KV cache.
    pub share_prefix: bool,
}

/// Evaluate `model` on a task whose documents are `items` (the whole split, in order).
pub fn evaluate_task<B: Backend>(
    model: &Opt<B>,
    tokenizer: &OptTokenizer,
    task: &str,
    metrics: Metrics,
    items: &[TaskItem],
    options: &TaskOptions,
    device: &B::Device,
) -> Result<(TaskReport, Vec<ItemResult>), TaskEvalError> {
    check_vocab(model, tokenizer)?;
    let start = Instant::now();
    let evaluated = &items[..options.limit.unwrap_or(items.len()).min(items.len())];
    let plan_options = PlanOptions {
        shots: options.shots,
        seed: options.seed,
        max_length: model.config.max_position_embeddings,
    };
    let planned = plan(
        task,
        evaluated,
        items.len(),
        |i| items.get(i),
        tokenizer,
        &plan_options,
    )?;
    let scores = score_planned(model, &planned, options.batch, options.share_prefix, device);
    let results = item_results(&planned, &scores, metrics.acc_norm);
    let seconds = start.elapsed().as_secs_f64();
    let report = aggregate(task, options.shots, &results, seconds, metrics);
    Ok((report, results))
}

/// A built-in task's metrics, or `acc` and `acc_norm` for a task file of ours.
pub fn task_metrics(task: Option<&TaskDef>) -> Metrics {
    task.map_or(
        Metrics {
            acc_norm: true,
            f1: false,
        },
        |t| t.metrics,
    )
}

fn check_vocab<B: Backend>(model: &Opt<B>, tokenizer: &OptTokenizer) -> Result<(), TaskEvalError> {
    let (model, tokenizer) = (model.config.vocab_size, tokenizer.vocab_size());
    if model < tokenizer {
        return Err(TaskEvalError::Vocab { model, tokenizer });
    }
    Ok(())
}
