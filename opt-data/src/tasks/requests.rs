//! lm-eval's requests: few-shot prompts, the context/continuation split of the joint
//! tokenization, and left truncation to the model's context.

use super::format::TaskItem;
use super::templates::py_isspace;
use super::TaskError;
use crate::tokenizer::{special, OptTokenizer};

/// lm-eval's `target_delimiter`: between a context and its continuation.
pub const TARGET_DELIMITER: &str = " ";
/// lm-eval's `fewshot_delimiter`: after each few-shot example.
pub const FEWSHOT_DELIMITER: &str = "\n\n";

/// One scored pair: the log-likelihood of `continuation` after `context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub context: String,
    pub continuation: String,
}

impl TaskItem {
    /// The requests of this item after a few-shot `prefix`, one per choice in choice order.
    pub fn requests(&self, prefix: &str) -> Vec<Request> {
        let request = |context: &str, continuation: &str| Request {
            context: format!("{prefix}{context}"),
            continuation: format!("{TARGET_DELIMITER}{continuation}"),
        };
        match (&self.query, &self.continuation) {
            (Some(query), _) => self.choices.iter().map(|c| request(query, c)).collect(),
            (None, Some(shared)) => self.choices.iter().map(|c| request(c, shared)).collect(),
            (None, None) => Vec::new(),
        }
    }

    /// This item as a solved few-shot example: its correct request joined, then the delimiter.
    pub fn example(&self) -> String {
        let solved = &self.requests("")[self.gold];
        format!(
            "{}{}{FEWSHOT_DELIMITER}",
            solved.context, solved.continuation
        )
    }
}

/// The prompt prefix made of `examples`, in order.
pub fn fewshot_prefix(examples: &[&TaskItem]) -> String {
    examples.iter().map(|e| e.example()).collect()
}

/// A request's ids before truncation, as lm-eval splits them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub context_ids: Vec<u32>,
    pub continuation_ids: Vec<u32>,
}

/// lm-eval's `_encode_pair`: the context's trailing whitespace moves to the continuation, both
/// the context and context + continuation are encoded (with the tokenizer's BOS), and the
/// continuation is the joint encoding's tail after the context's token count. An empty context
/// becomes `</s>` alone, as lm-eval's prefix token.
pub fn encode_request(tokenizer: &OptTokenizer, request: &Request) -> Result<Encoded, TaskError> {
    if request.context.is_empty() {
        return Ok(Encoded {
            context_ids: vec![special::EOS],
            continuation_ids: tokenizer.encode_plain(&request.continuation)?,
        });
    }
    let kept = request.context.trim_end_matches(py_isspace).len();
    let (context, moved) = request.context.split_at(kept);
    let continuation = format!("{moved}{}", request.continuation);
    let context_ids = tokenizer.encode(context)?;
    let whole = tokenizer.encode(&format!("{context}{continuation}"))?;
    let continuation_ids = whole.get(context_ids.len()..).unwrap_or_default().to_vec();
    Ok(Encoded {
        context_ids,
        continuation_ids,
    })
}

/// What the model is fed for one request and which of its predictions are scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInput {
    /// Tokens fed, positions from 0.
    pub tokens: Vec<u32>,
    /// The scored continuation: predicted by the last `continuation.len()` positions of `tokens`.
    pub continuation: Vec<u32>,
    /// Tokens cut from the left.
    pub truncated: usize,
    /// Continuation tokens cut from the left (the continuation alone exceeded the context).
    pub cut_continuation: usize,
}

/// lm-eval's truncation: keep the last `max_length + 1` tokens of context + continuation and
/// feed all but the last. lm-eval refuses a continuation longer than `max_length`; here only its
/// last `max_length` tokens (those with a predicting position) are scored, and
/// `cut_continuation` says so.
pub fn model_input(encoded: &Encoded, max_length: usize) -> Result<ModelInput, String> {
    let cont = &encoded.continuation_ids;
    if cont.is_empty() {
        return Err("the continuation encodes to no tokens".into());
    }
    let whole: Vec<u32> = encoded.context_ids.iter().chain(cont).copied().collect();
    let truncated = whole.len().saturating_sub(max_length + 1);
    let scored = cont.len().min(max_length);
    Ok(ModelInput {
        tokens: whole[truncated..whole.len() - 1].to_vec(),
        continuation: cont[cont.len() - scored..].to_vec(),
        truncated,
        cut_continuation: cont.len() - scored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_last_max_length_plus_one() {
        // Hand-derived: 6 + 3 = 9 tokens, max_length 5: keep the last 6 ([12..22]), feed the first 5.
        let enc = Encoded {
            context_ids: vec![2, 10, 11, 12, 13, 14],
            continuation_ids: vec![20, 21, 22],
        };
        let input = model_input(&enc, 5).unwrap();
        assert_eq!(input.tokens, [12, 13, 14, 20, 21]);
        assert_eq!(input.truncated, 3);
        let fits = model_input(&enc, 8).unwrap();
        assert_eq!(fits.tokens, [2, 10, 11, 12, 13, 14, 20, 21]);
        assert_eq!(fits.truncated, 0);
        // A continuation longer than the context: its last 2 tokens are scored, after [20, 21].
        let cut = model_input(&enc, 2).unwrap();
        assert_eq!((cut.tokens, cut.continuation), (vec![20, 21], vec![21, 22]));
        assert_eq!((cut.truncated, cut.cut_continuation), (6, 1));
    }
}
