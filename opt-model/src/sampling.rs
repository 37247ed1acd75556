//! Choosing the next token from float32 logits on the host: greedy, temperature, top-k, top-p,
//! HF's repetition penalty and OpenAI's presence/frequency penalties, with a seeded RNG per row.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the next token is chosen.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// 0 means greedy (argmax, first index on ties).
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    /// HF's repetition penalty over the prompt and the new tokens (1.0 = off).
    pub repetition_penalty: f64,
    /// OpenAI's presence penalty: subtracted once from the logit of every token already generated.
    pub presence_penalty: f64,
    /// OpenAI's frequency penalty: subtracted per occurrence of a token already generated.
    pub frequency_penalty: f64,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

/// Why sampling settings are refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum SamplingError {
    #[error("top_p = {0} must be in (0, 1]")]
    TopP(f64),
    #[error("temperature = {0} must be >= 0 (0 = greedy)")]
    Temperature(f64),
    #[error("top_k must be at least 1")]
    TopK,
    #[error("repetition_penalty = {0} must be > 0")]
    RepetitionPenalty(f64),
    #[error("{name} = {value} must be a finite number")]
    Penalty { name: &'static str, value: f64 },
}

impl SamplingError {
    /// The setting at fault, by its field name.
    pub fn field(&self) -> &'static str {
        match self {
            Self::TopP(_) => "top_p",
            Self::Temperature(_) => "temperature",
            Self::TopK => "top_k",
            Self::RepetitionPenalty(_) => "repetition_penalty",
            Self::Penalty { name, .. } => name,
        }
    }
}

impl Sampling {
    /// Refuse settings that have no meaning (NaN included).
    pub fn validate(&self) -> Result<(), SamplingError> {
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(SamplingError::TopP(p));
            }
        }
        if self.top_k == Some(0) {
            return Err(SamplingError::TopK);
        }
        if self.temperature.is_nan() || self.temperature < 0.0 {
            return Err(SamplingError::Temperature(self.temperature));
        }
        if self.repetition_penalty.is_nan() || self.repetition_penalty <= 0.0 {
            return Err(SamplingError::RepetitionPenalty(self.repetition_penalty));
        }
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !value.is_finite() {
                return Err(SamplingError::Penalty { name, value });
            }
        }
        Ok(())
    }
}

/// Chooses tokens for one row (exact ties, its own seeded RNG).
#[derive(Debug, Clone)]
pub struct Sampler {
    config: Sampling,
    rng: StdRng,
}

impl Sampler {
    /// A sampler whose RNG starts from `config.seed`.
    pub fn new(config: &Sampling) -> Self {
        Self {
            config: config.clone(),
            rng: StdRng::seed_from_u64(config.seed),
        }
    }

    /// Whether the choice is the argmax (no RNG is drawn).
    pub fn is_greedy(&self) -> bool {
        self.config.temperature == 0.0
    }

    /// The next token for a row that has `prompt` then `generated` so far.
    pub fn next(&mut self, logits: &[f32], prompt: &[u32], generated: &[u32]) -> u32 {
        let mut logits = logits.to_vec();
        self.penalize(&mut logits, prompt, generated);
        if self.is_greedy() {
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

    /// HF's repetition penalty (over prompt and new tokens, once per distinct token), then
    /// OpenAI's presence and frequency penalties (over the new tokens).
    fn penalize(&self, logits: &mut [f32], prompt: &[u32], generated: &[u32]) {
        let c = &self.config;
        let penalty = c.repetition_penalty as f32;
        if penalty != 1.0 {
            let mut seen = vec![false; logits.len()];
            for &id in prompt.iter().chain(generated) {
                if !std::mem::replace(&mut seen[id as usize], true) {
                    let l = &mut logits[id as usize];
                    *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
                }
            }
        }
        if c.presence_penalty != 0.0 || c.frequency_penalty != 0.0 {
            let mut counts = std::collections::HashMap::<u32, u32>::new();
            for &id in generated {
                *counts.entry(id).or_default() += 1;
            }
            for (id, n) in counts {
                logits[id as usize] -= (c.presence_penalty + c.frequency_penalty * n as f64) as f32;
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_as_openai_and_hf_define_them() {
        let sampling = Sampling {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let sampler = Sampler::new(&sampling);
        let mut logits = vec![1.0, -1.0, 3.0, 0.5];
        // Token 0 in the prompt only; token 1 generated twice; token 2 untouched.
        sampler.penalize(&mut logits, &[0], &[1, 1]);
        // 0: 1/2 (repetition only); 1: -1*2 - 0.5 - 2*0.25 = -3; 2, 3 unchanged.
        assert_eq!(logits, vec![0.5, -3.0, 3.0, 0.5]);
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens() {
        let sampling = Sampling {
            temperature: 1.0,
            seed: 7,
            ..Default::default()
        };
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |s: &mut Sampler| {
            (0..20)
                .map(|_| s.next(&logits, &[], &[]))
                .collect::<Vec<_>>()
        };
        let (mut a, mut b) = (Sampler::new(&sampling), Sampler::new(&sampling));
        let first = draw(&mut a);
        assert_eq!(first, draw(&mut b));
        assert!(
            first.iter().any(|&t| t != first[0]),
            "a flat distribution draws several tokens"
        );
    }
}
