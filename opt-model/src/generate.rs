//! Batched generation with a KV cache: greedy and sampled decoding, left padding, per-row EOS.

use burn::prelude::*;

use crate::cache::KvCache;
use crate::model::Opt;
pub use crate::sampling::{argmax, Sampler, Sampling, SamplingError};

/// Errors for requests that cannot be generated.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GenerateError {
    #[error("prompt {index} is empty; an OPT prompt starts with </s> (id 2)")]
    EmptyPrompt { index: usize },
    #[error("prompt {index} has {prompt_len} tokens + {max_new_tokens} new tokens > the model's {max_positions} positions")]
    ContextOverflow {
        index: usize,
        prompt_len: usize,
        max_new_tokens: usize,
        max_positions: usize,
    },
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error("token id {id} in prompt {index} is outside the vocabulary ({vocab})")]
    TokenOutOfRange { index: usize, id: u32, vocab: usize },
}

/// A generation request's settings.
#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    /// A row that emits this token is finished (then padded with `pad_token_id`).
    pub eos_token_id: Option<u32>,
    pub pad_token_id: u32,
    pub sampling: Sampling,
    /// Reuse keys/values (default); without, every step recomputes the whole sequence.
    pub use_cache: bool,
    /// Keep the float32 logits that chose each token.
    pub keep_logits: bool,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            eos_token_id: Some(2),
            pad_token_id: 1,
            sampling: Sampling::default(),
            use_cache: true,
            keep_logits: false,
        }
    }
}

/// What `generate` produced per prompt.
#[derive(Debug, Clone)]
pub struct Generation {
    /// New tokens per row, EOS included, without trailing padding.
    pub new_tokens: Vec<Vec<u32>>,
    /// Per step, per row: the logits that chose the token (only with `keep_logits`).
    pub step_logits: Vec<Vec<Vec<f32>>>,
}

/// Generate continuations of `prompts` (token ids, each starting with BOS as the tokenizer gives it).
/// Prompts of different lengths are left-padded and masked; `on_step` sees each step's tokens
/// (`None` for rows already finished).
pub fn generate<B: Backend>(
    model: &Opt<B>,
    prompts: &[Vec<u32>],
    config: &GenerateConfig,
    mut on_step: impl FnMut(&[Option<u32>]),
) -> Result<Generation, GenerateError> {
    validate(model, prompts, config)?;
    let device = model.embed_tokens.weight.device();
    let b = prompts.len();
    let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            std::iter::repeat_n(config.pad_token_id, width - p.len())
                .chain(p.iter().copied())
                .collect()
        })
        .collect();
    let mut mask: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            std::iter::repeat_n(0, width - p.len())
                .chain(std::iter::repeat_n(1, p.len()))
                .collect()
        })
        .collect();
    let mut cache = config
        .use_cache
        .then(|| KvCache::new(&model.config, b, width + config.max_new_tokens, &device));
    let mut sampler = Sampler::new(&config.sampling);
    let mut out = Generation {
        new_tokens: vec![Vec::new(); b],
        step_logits: Vec::new(),
    };
    let mut finished = vec![false; b];
    for _ in 0..config.max_new_tokens {
        let past = cache.as_ref().map_or(0, KvCache::len);
        let input = int_tensor::<B>(&ids, past, &device);
        let attention = int_tensor::<B>(&mask, 0, &device);
        let logits = model.forward(input, Some(attention), cache.as_mut());
        let [_, t, v] = logits.dims();
        let last: Vec<f32> = logits
            .slice([0..b, t - 1..t, 0..v])
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("float logits");
        let rows: Vec<&[f32]> = last.chunks(v).collect();
        let mut step = Vec::with_capacity(b);
        for (r, row) in rows.iter().enumerate() {
            let token = if finished[r] {
                config.pad_token_id
            } else {
                sampler.next(row, &prompts[r], &out.new_tokens[r])
            };
            step.push((!finished[r]).then_some(token));
            if !finished[r] {
                out.new_tokens[r].push(token);
                finished[r] = config.eos_token_id == Some(token);
            }
            ids[r].push(token);
            mask[r].push(1);
        }
        if config.keep_logits {
            out.step_logits
                .push(rows.iter().map(|r| r.to_vec()).collect());
        }
        on_step(&step);
        if finished.iter().all(|&f| f) {
            break;
        }
    }
    Ok(out)
}

fn validate<B: Backend>(
    model: &Opt<B>,
    prompts: &[Vec<u32>],
    config: &GenerateConfig,
) -> Result<(), GenerateError> {
    config.sampling.validate()?;
    for (index, p) in prompts.iter().enumerate() {
        check_prompt(index, p, config.max_new_tokens, &model.config)?;
    }
    Ok(())
}

/// Whether prompt `index` can be generated from: not empty, ids in the vocabulary, and room in
/// the model's positions for `max_new_tokens` more.
pub fn check_prompt(
    index: usize,
    prompt: &[u32],
    max_new_tokens: usize,
    config: &crate::OptConfig,
) -> Result<(), GenerateError> {
    let (vocab, max_positions) = (config.vocab_size, config.max_position_embeddings);
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt { index });
    }
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
        return Err(GenerateError::TokenOutOfRange { index, id, vocab });
    }
    // Left padding does not shift positions: a row's last position is its own length.
    if prompt.len() + max_new_tokens > max_positions {
        return Err(GenerateError::ContextOverflow {
            index,
            prompt_len: prompt.len(),
            max_new_tokens,
            max_positions,
        });
    }
    Ok(())
}

/// `rows[r][skip..]` as a [b, len - skip] Int tensor.
fn int_tensor<B: Backend>(rows: &[Vec<u32>], skip: usize, device: &B::Device) -> Tensor<B, 2, Int> {
    let width = rows[0].len() - skip;
    let flat: Vec<i64> = rows
        .iter()
        .flat_map(|r| r[skip..].iter().map(|&x| x as i64))
        .collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), width]), device)
}
