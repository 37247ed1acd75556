//! CPython's `random.Random` as far as lm-eval's few-shot sampler uses it: integer seeding
//! (`init_by_array` over the seed's 32-bit words), `getrandbits`, `_randbelow` and `sample`.
//! Same seed, same draws as Python 3.

use rand_mt::Mt;

/// `random.Random(seed)`.
pub struct PyRandom {
    mt: Mt,
}

impl PyRandom {
    /// Seeded like `random.Random(seed)` for a non-negative integer seed.
    pub fn new(seed: u64) -> Self {
        // CPython's random_seed: the absolute value as little-endian 32-bit words, at least one.
        let (lo, hi) = (seed as u32, (seed >> 32) as u32);
        let key: Vec<u32> = if hi == 0 { vec![lo] } else { vec![lo, hi] };
        Self {
            mt: Mt::new_with_key(key),
        }
    }

    /// `getrandbits(k)` for 1 <= k <= 32.
    fn getrandbits(&mut self, k: u32) -> u32 {
        self.mt.next_u32() >> (32 - k)
    }

    /// `_randbelow(n)`: rejection sampling on n's bit length.
    pub fn randbelow(&mut self, n: usize) -> usize {
        assert!(n > 0 && n <= u32::MAX as usize, "randbelow({n})");
        let k = usize::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(k) as usize;
            if r < n {
                return r;
            }
        }
    }

    /// `sample(range(n), k)`: k distinct indices, with CPython's choice between its pool and
    /// set algorithms (which consume the generator differently).
    pub fn sample(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "sample larger than population");
        let mut setsize = 21;
        if k > 5 {
            setsize += 4usize.pow(((k * 3) as f64).log(4.0).ceil() as u32);
        }
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            (0..k)
                .map(|i| {
                    let j = self.randbelow(n - i);
                    let picked = pool[j];
                    pool[j] = pool[n - i - 1];
                    picked
                })
                .collect()
        } else {
            let mut selected = std::collections::HashSet::new();
            (0..k)
                .map(|_| loop {
                    let j = self.randbelow(n);
                    if selected.insert(j) {
                        break j;
                    }
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values printed by CPython 3.11.7 for the calls named in each line.
    #[test]
    fn matches_cpython() {
        // r = random.Random(1234); [r.getrandbits(32) for _ in range(3)]
        let mut r = PyRandom::new(1234);
        let bits: Vec<u32> = (0..3).map(|_| r.getrandbits(32)).collect();
        assert_eq!(bits, [4150886329, 3342196574, 1892932127]);
        // random.Random(1234).sample(range(570), 3): the set algorithm
        assert_eq!(PyRandom::new(1234).sample(570, 3), [451, 119, 7]);
        // random.Random(42).sample(range(10), 4): the pool algorithm
        assert_eq!(PyRandom::new(42).sample(10, 4), [1, 0, 4, 9]);
        // random.Random(2**40 + 5).sample(range(100000), 7): a two-word seed, k > 5
        assert_eq!(
            PyRandom::new((1 << 40) + 5).sample(100000, 7),
            [66110, 67753, 35206, 87005, 3595, 69593, 99410]
        );
    }
}
