//! `POST /v1/completions` requests: parsed with the failing field named, checked against the
//! model, and turned into one engine job per (prompt, choice).

use std::sync::atomic::{AtomicU64, Ordering};

use opt_data::OptTokenizer;
use opt_model::generate::{self, GenerateError, Sampling};
use opt_model::OptConfig;
use serde::Deserialize;

use crate::error::ApiError;
use crate::job::Job;

/// Most `stop` strings a request may give (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Most top alternatives `logprobs` may ask for (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 5;

/// The body of a completion request (OpenAI's fields; unknown fields are ignored).
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: serde_json::Value,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Off when absent, null or -1 (vLLM's convention).
    pub top_k: Option<i64>,
    pub n: Option<usize>,
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub seed: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    pub logprobs: Option<usize>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    #[serde(default)]
    pub ignore_eos: bool,
    pub suffix: Option<String>,
    pub logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
    pub best_of: Option<usize>,
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// One prompt of a request: its ids and the text it is shown as with `echo`.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<u32>,
    pub text: String,
}

/// A checked request: its prompts and one job per (prompt, choice), prompt-major.
#[derive(Debug)]
pub struct Checked {
    pub prompts: Vec<Prompt>,
    pub jobs: Vec<Job>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub echo: bool,
}

/// Parse a body, naming the field that does not fit.
pub fn parse(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // serde names a missing field in its message only: "missing field `prompt`".
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next());
        if let Some(field) = missing {
            ApiError::invalid(field, format!("{field} is required"))
        } else if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid("body", format!("the body is not JSON: {inner}"))
        } else if path == "." || path == "?" {
            ApiError::invalid(
                "body",
                format!("the body is not a completion request: {inner}"),
            )
        } else {
            ApiError::invalid(path.clone(), format!("{path}: {inner}"))
        }
    })
}

/// Check every field and build the jobs.
pub fn check(
    mut req: CompletionRequest,
    tokenizer: &OptTokenizer,
    config: &OptConfig,
) -> Result<Checked, ApiError> {
    refuse_unsupported(&req)?;
    let prompts = prompts(&req.prompt, tokenizer)?;
    let max_tokens = req.max_tokens.unwrap_or(16);
    if max_tokens == 0 && !req.echo {
        return Err(ApiError::invalid(
            "max_tokens",
            "max_tokens = 0 generates nothing; it is allowed only with echo (to score a prompt)",
        ));
    }
    for (i, p) in prompts.iter().enumerate() {
        check_prompt(i, &p.ids, max_tokens, config)?;
    }
    let logprobs = req.logprobs;
    if logprobs.is_some_and(|n| n > MAX_LOGPROBS) {
        return Err(ApiError::invalid(
            "logprobs",
            format!("logprobs = {} > {MAX_LOGPROBS}", logprobs.unwrap_or(0)),
        ));
    }
    let stop = match req.stop.take() {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid(
            "stop",
            format!("{} stop strings; at most {MAX_STOP}", stop.len()),
        ));
    }
    let n = req.n.unwrap_or(1);
    if n == 0 {
        return Err(ApiError::invalid("n", "n must be at least 1"));
    }
    let sampling = sampling(&req)?;
    let base_seed = req.seed.map_or_else(unique_u64, |s| s as u64);
    let mut jobs = Vec::with_capacity(prompts.len() * n);
    for p in &prompts {
        for choice in 0..n {
            jobs.push(Job {
                prompt: p.ids.clone(),
                max_tokens,
                sampling: Sampling {
                    // Choice k of a seeded request draws from seed + k: the choices differ, and
                    // each is reproducible alone.
                    seed: base_seed.wrapping_add(choice as u64),
                    ..sampling.clone()
                },
                stop: stop.clone(),
                ignore_eos: req.ignore_eos,
                logprobs,
                echo: req.echo,
            });
        }
    }
    Ok(Checked {
        prompts,
        jobs,
        n,
        stream: req.stream,
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
        echo: req.echo,
    })
}

/// Fields we parse but do not implement: an error, not a silent difference.
fn refuse_unsupported(req: &CompletionRequest) -> Result<(), ApiError> {
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(
            "suffix",
            "suffix (insertion) is not supported by OPT",
        ));
    }
    if req.logit_bias.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::invalid(
            "logit_bias",
            "logit_bias is not supported",
        ));
    }
    if let Some(b) = req.best_of {
        if b != req.n.unwrap_or(1) {
            return Err(ApiError::invalid(
                "best_of",
                "best_of other than n is not supported",
            ));
        }
    }
    Ok(())
}

/// The sampling settings, each checked with its field named.
fn sampling(req: &CompletionRequest) -> Result<Sampling, ApiError> {
    let top_k = match req.top_k {
        None | Some(-1) => None,
        Some(k) if k >= 1 => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k = {k}: must be >= 1, or -1 for no limit"),
            ))
        }
    };
    let s = Sampling {
        temperature: req.temperature.unwrap_or(1.0),
        top_k,
        top_p: req.top_p,
        repetition_penalty: req.repetition_penalty.unwrap_or(1.0),
        presence_penalty: req.presence_penalty.unwrap_or(0.0),
        frequency_penalty: req.frequency_penalty.unwrap_or(0.0),
        seed: 0,
    };
    for (name, v) in [
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
    ] {
        if !(-2.0..=2.0).contains(&v) {
            return Err(ApiError::invalid(
                name,
                format!("{name} = {v}: must be in [-2, 2]"),
            ));
        }
    }
    s.validate()
        .map_err(|e| ApiError::invalid(e.field(), e.to_string()))?;
    Ok(s)
}

/// `prompt` as a string, a list of strings, a list of ids or a list of id lists.
fn prompts(value: &serde_json::Value, tokenizer: &OptTokenizer) -> Result<Vec<Prompt>, ApiError> {
    use serde_json::Value;
    let bad = || {
        ApiError::invalid(
            "prompt",
            "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids",
        )
    };
    let text = |s: &str| -> Result<Prompt, ApiError> {
        let ids = tokenizer
            .encode(s)
            .map_err(|e| ApiError::invalid("prompt", format!("cannot tokenize the prompt: {e}")))?;
        Ok(Prompt {
            ids,
            text: s.to_string(),
        })
    };
    let ids = |v: &[Value]| -> Result<Prompt, ApiError> {
        let ids = v
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(bad)
            })
            .collect::<Result<Vec<u32>, _>>()?;
        let text = tokenizer.decode(&ids, true).unwrap_or_default();
        Ok(Prompt { ids, text })
    };
    let list = match value {
        Value::String(s) => return Ok(vec![text(s)?]),
        Value::Array(list) if !list.is_empty() => list,
        Value::Array(_) => return Err(ApiError::invalid("prompt", "prompt is an empty list")),
        _ => return Err(bad()),
    };
    if list.iter().all(Value::is_string) {
        list.iter()
            .map(|s| text(s.as_str().unwrap_or_default()))
            .collect()
    } else if list.iter().all(Value::is_number) {
        Ok(vec![ids(list)?])
    } else if list.iter().all(Value::is_array) {
        list.iter()
            .map(|v| ids(v.as_array().map_or(&[][..], Vec::as_slice)))
            .collect()
    } else {
        Err(bad())
    }
}

/// A prompt that fits the model's vocabulary and context with `max_tokens` new tokens
/// (`generate`'s own check), as a 400 naming the field at fault.
fn check_prompt(
    index: usize,
    ids: &[u32],
    max_tokens: usize,
    config: &OptConfig,
) -> Result<(), ApiError> {
    generate::check_prompt(index, ids, max_tokens, config).map_err(|e| {
        let param = match e {
            GenerateError::ContextOverflow { .. } => "max_tokens",
            _ => "prompt",
        };
        ApiError::invalid(param, e.to_string())
    })
}

/// A number different for every call in this process and across runs (the clock mixed with a
/// counter): seeds of requests that gave none, completion ids.
pub fn unique_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
