//! Batched generation with a KV cache: greedy and sampled decoding, left padding, per-row EOS.

use burn::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cache::KvCache;
use crate::model::Opt;

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
    #[error("top_p = {0} must be in (0, 1]")]
    TopP(f64),
    #[error("temperature = {0} must be >= 0 (0 = greedy)")]
    Temperature(f64),
    #[error("top_k must be at least 1")]
    TopK,
    #[error("repetition_penalty = {0} must be > 0")]
    RepetitionPenalty(f64),
    #[error("token id {id} in prompt {index} is outside the vocabulary ({vocab})")]
    TokenOutOfRange { index: usize, id: u32, vocab: usize },
}

/// How the next token is chosen.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// 0 means greedy (argmax, first index on ties).
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    /// HF's repetition penalty (1.0 = off).
    pub repetition_penalty: f64,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
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
                sampler.next(row, &ids[r], &mask[r])
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
    let s = &config.sampling;
    if let Some(p) = s.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(GenerateError::TopP(p));
        }
    }
    if s.top_k == Some(0) {
        return Err(GenerateError::TopK);
    }
    // Written so that NaN is rejected too.
    if s.temperature.is_nan() || s.temperature < 0.0 {
        return Err(GenerateError::Temperature(s.temperature));
    }
    if s.repetition_penalty.is_nan() || s.repetition_penalty <= 0.0 {
        return Err(GenerateError::RepetitionPenalty(s.repetition_penalty));
    }
    let max_positions = model.config.max_position_embeddings;
    let vocab = model.config.vocab_size;
    for (index, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(GenerateError::EmptyPrompt { index });
        }
        if let Some(&id) = p.iter().find(|&&id| id as usize >= vocab) {
            return Err(GenerateError::TokenOutOfRange { index, id, vocab });
        }
        // Left padding does not shift positions: a row's last position is its own length.
        if p.len() + config.max_new_tokens > max_positions {
            return Err(GenerateError::ContextOverflow {
                index,
                prompt_len: p.len(),
                max_new_tokens: config.max_new_tokens,
                max_positions,
            });
        }
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

/// Chooses tokens from float32 logits on the host (exact ties, seeded RNG).
struct Sampler {
    config: Sampling,
    rng: StdRng,
}

impl Sampler {
    fn new(config: &Sampling) -> Self {
        Self {
            config: config.clone(),
            rng: StdRng::seed_from_u64(config.seed),
        }
    }

    /// The next token for a row whose tokens so far are `ids` (`mask` 0 = padding).
    fn next(&mut self, logits: &[f32], ids: &[u32], mask: &[u32]) -> u32 {
        let mut logits = logits.to_vec();
        let penalty = self.config.repetition_penalty as f32;
        if penalty != 1.0 {
            let mut seen = vec![false; logits.len()];
            for (&id, _) in ids.iter().zip(mask).filter(|(_, &m)| m == 1) {
                if !std::mem::replace(&mut seen[id as usize], true) {
                    let l = &mut logits[id as usize];
                    *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
                }
            }
        }
        if self.config.temperature == 0.0 {
            return argmax(&logits) as u32;
        }
        let t = self.config.temperature as f32;
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if let Some(k) = self.config.top_k {
            order.truncate(k.min(order.len()));
        }
        let max = logits[order[0]] / t;
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i] / t - max) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(top_p) = self.config.top_p {
            // Keep the smallest prefix whose mass reaches top_p (always at least one token).
            let mut mass = 0.0;
            let keep = probs
                .iter()
                .position(|p| {
                    mass += p;
                    mass >= top_p
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            order.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut u = self.rng.random::<f64>() * total;
        for (p, &i) in probs.iter().zip(&order) {
            u -= p;
            if u <= 0.0 {
                return i as u32;
            }
        }
        *order.last().expect("at least one candidate") as u32
    }
}

/// Index of the largest value, the first one on ties (like torch.argmax).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}
