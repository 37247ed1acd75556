//! lm-eval's default few-shot sampler (`ContextSampler` with `random.Random(1234)`).

use super::pyrandom::PyRandom;

/// lm-eval's default `fewshot_random_seed`.
pub const FEWSHOT_SEED: u64 = 1234;

/// One sampler per task run: its generator is seeded once and advances over the evaluated
/// documents in order, so a document's examples depend on every draw before it.
pub struct FewshotSampler {
    rng: PyRandom,
    shots: usize,
}

impl FewshotSampler {
    /// A sampler for `shots` examples per document, seeded like `random.Random(seed)`.
    pub fn new(seed: u64, shots: usize) -> Self {
        Self {
            rng: PyRandom::new(seed),
            shots,
        }
    }

    /// The pool indices of one document's examples. The pool is the evaluated split itself, so
    /// lm-eval draws `shots + 1`, drops any draw equal to the document (`same(i)`), keeps the
    /// first `shots`; zero-shot draws nothing.
    pub fn draw(&mut self, pool_len: usize, same: impl Fn(usize) -> bool) -> Vec<usize> {
        if self.shots == 0 {
            return Vec::new();
        }
        let drawn = self.rng.sample(pool_len, (self.shots + 1).min(pool_len));
        drawn
            .into_iter()
            .filter(|&i| !same(i))
            .take(self.shots)
            .collect()
    }
}
