//! Everything lm-eval does before the model runs: few-shot draws, prompts, ids, truncation.

use super::fewshot::FewshotSampler;
use super::format::TaskItem;
use super::requests::{encode_request, fewshot_prefix, model_input, Encoded, ModelInput, Request};
use super::TaskError;
use crate::tokenizer::OptTokenizer;

/// One evaluated document with its requests ready for the model.
#[derive(Debug, Clone)]
pub struct PlannedItem {
    /// The document.
    pub item: TaskItem,
    /// Pool indices (= `doc_id`s) of its few-shot examples, in prompt order.
    pub fewshot: Vec<usize>,
    /// One request per choice.
    pub requests: Vec<Request>,
    /// Their ids before truncation.
    pub encoded: Vec<Encoded>,
    /// What the model is fed.
    pub inputs: Vec<ModelInput>,
}

/// How a task run is set up.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Few-shot examples per document.
    pub shots: usize,
    /// The sampler's seed (lm-eval's default 1234).
    pub seed: u64,
    /// The model's context (`max_position_embeddings`).
    pub max_length: usize,
}

/// Plan `items` (the evaluated documents, in order). Few-shot examples come from a pool of
/// `pool_len` documents that `pool(i)` returns (the evaluated split itself, as lm-eval does when no
/// training split exists); `task` names the task in errors.
pub fn plan<'a>(
    task: &str,
    items: &[TaskItem],
    pool_len: usize,
    pool: impl Fn(usize) -> Option<&'a TaskItem>,
    tokenizer: &OptTokenizer,
    options: &PlanOptions,
) -> Result<Vec<PlannedItem>, TaskError> {
    let invalid = |message: String| TaskError::Invalid {
        task: task.into(),
        message,
    };
    if options.shots > 0 && pool_len <= options.shots {
        return Err(invalid(format!(
            "{} shots need more than {} documents in the pool",
            options.shots, pool_len
        )));
    }
    let mut sampler = FewshotSampler::new(options.seed, options.shots);
    items
        .iter()
        .map(|item| {
            let same = |i: usize| pool(i).is_some_and(|d| d.source_hash == item.source_hash);
            let fewshot = sampler.draw(pool_len, same);
            let examples = fewshot
                .iter()
                .map(|&i| {
                    pool(i)
                        .ok_or_else(|| invalid(format!("few-shot document {i} is not in the pool")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let requests = item.requests(&fewshot_prefix(&examples));
            let encoded = requests
                .iter()
                .map(|r| encode_request(tokenizer, r))
                .collect::<Result<Vec<_>, _>>()?;
            let inputs = encoded
                .iter()
                .map(|e| model_input(e, options.max_length))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| invalid(format!("document {}: {m}", item.doc_id)))?;
            Ok(PlannedItem {
                item: item.clone(),
                fewshot,
                requests,
                encoded,
                inputs,
            })
        })
        .collect()
}
