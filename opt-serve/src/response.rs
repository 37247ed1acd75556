//! Completion responses in OpenAI's shape: choices with text, logprobs and finish reason; usage;
//! the streamed chunks.

use opt_data::OptTokenizer;
use serde_json::{json, Value};

use crate::job::{FinishReason, TokenOut};

/// What one choice has received so far.
#[derive(Debug, Default)]
pub struct Choice {
    pub text: String,
    /// Prompt tokens (with `echo` + `logprobs`) then new tokens.
    pub tokens: Vec<TokenOut>,
    /// New tokens.
    pub completion_tokens: usize,
    /// Text offset (characters) of the next token.
    pub text_offset: usize,
    pub finish: Option<FinishReason>,
}

/// The fields every response and chunk starts with.
#[derive(Debug, Clone)]
pub struct Header {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Header {
    /// A response or chunk object with `choices` (and `usage` when given).
    pub fn object(&self, choices: Vec<Value>, usage: Option<Value>) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }
}

/// `usage`.
pub fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

/// One choice object; `logprobs` is null unless asked for.
pub fn choice(
    index: usize,
    text: &str,
    tokens: Option<(&[TokenOut], usize)>,
    finish: Option<FinishReason>,
    tokenizer: &OptTokenizer,
) -> Value {
    json!({
        "index": index,
        "text": text,
        "logprobs": tokens.map(|(t, offset)| logprobs(t, offset, tokenizer)),
        "finish_reason": finish.map(FinishReason::as_str),
    })
}

/// OpenAI's legacy logprobs object for `tokens`, text offsets counted from `offset` (characters).
pub fn logprobs(tokens: &[TokenOut], offset: usize, tokenizer: &OptTokenizer) -> Value {
    let name = |id: u32| tokenizer.decode(&[id], false).unwrap_or_default();
    let mut at = offset;
    let mut text_offset = Vec::with_capacity(tokens.len());
    for t in tokens {
        text_offset.push(at);
        at += width(t.id, tokenizer);
    }
    let top: Vec<Value> = tokens
        .iter()
        .map(|t| match t.logprob {
            None => Value::Null,
            Some(_) => Value::Object(
                t.top
                    .iter()
                    .map(|&(id, lp)| (name(id), json!(lp)))
                    .collect(),
            ),
        })
        .collect();
    json!({
        "tokens": tokens.iter().map(|t| name(t.id)).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

/// Characters a token adds to the text: its decoded length, 0 for special tokens (the text is
/// decoded without them).
pub fn width(id: u32, tokenizer: &OptTokenizer) -> usize {
    if id == opt_data::tokenizer::special::EOS || id == opt_data::tokenizer::special::PAD {
        return 0;
    }
    tokenizer
        .decode(&[id], false)
        .map_or(0, |s| s.chars().count())
}
