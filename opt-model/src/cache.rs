//! Preallocated key/value cache for incremental decoding.

use burn::prelude::*;

/// One layer's keys and values: [b, capacity, heads, head_dim], filled up to `len`.
#[derive(Debug, Clone)]
pub struct LayerCache<B: Backend> {
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    len: usize,
}

impl<B: Backend> LayerCache<B> {
    /// An empty cache able to hold `capacity` positions.
    pub fn new(
        batch: usize,
        heads: usize,
        capacity: usize,
        head_dim: usize,
        device: &B::Device,
    ) -> Self {
        let shape = [batch, capacity, heads, head_dim];
        Self {
            k: Tensor::zeros(shape, device),
            v: Tensor::zeros(shape, device),
            len: 0,
        }
    }

    /// Write the new positions' k/v ([b, t, h, hd]) after the cached ones; return all keys and values so far.
    pub fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, t, h, hd] = k.dims();
        let end = self.len + t;
        let capacity = self.k.dims()[1];
        assert!(
            end <= capacity,
            "KV cache overflow: {end} positions > capacity {capacity}"
        );
        let range = [0..b, self.len..end, 0..h, 0..hd];
        self.k = self.k.clone().slice_assign(range.clone(), k);
        self.v = self.v.clone().slice_assign(range, v);
        self.len = end;
        let used = [0..b, 0..end, 0..h, 0..hd];
        (
            self.k.clone().slice(used.clone()),
            self.v.clone().slice(used),
        )
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The cache of batch rows `rows` (a row may repeat: one context, several continuations).
    pub fn select_rows(&self, rows: Tensor<B, 1, Int>) -> Self {
        Self {
            k: self.k.clone().select(0, rows.clone()),
            v: self.v.clone().select(0, rows),
            len: self.len,
        }
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys and values of batch rows `rows`, last `keep` positions only: [rows, keep, h, hd].
    fn tail(&self, rows: Tensor<B, 1, Int>, keep: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [b, _, h, hd] = self.k.dims();
        let range = [0..b, self.len - keep..self.len, 0..h, 0..hd];
        (
            self.k.clone().slice(range.clone()).select(0, rows.clone()),
            self.v.clone().slice(range).select(0, rows),
        )
    }
}

/// The cache of every layer of a decoder.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<LayerCache<B>>,
}

impl<B: Backend> KvCache<B> {
    /// Preallocate `capacity` positions for each of the model's layers.
    pub fn new(
        config: &crate::OptConfig,
        batch: usize,
        capacity: usize,
        device: &B::Device,
    ) -> Self {
        let layer = LayerCache::new(
            batch,
            config.num_attention_heads,
            capacity,
            config.head_dim(),
            device,
        );
        Self {
            layers: vec![layer; config.num_hidden_layers],
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    /// The device the cache lives on.
    pub fn device(&self) -> B::Device {
        self.layers[0].k.device()
    }

    /// Every layer's cache of batch rows `rows`.
    pub fn select_rows(&self, rows: Tensor<B, 1, Int>) -> Self {
        Self {
            layers: self
                .layers
                .iter()
                .map(|l| l.select_rows(rows.clone()))
                .collect(),
        }
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A cache of `capacity` positions whose rows are the chosen rows of each part, in order,
    /// each part's positions moved so that they end at `len` (left padding: a part shorter than
    /// `len` gets empty positions in front; a longer one loses its first positions, which must
    /// be padding for the chosen rows). Continuous batching merges and trims caches this way.
    pub fn stack(parts: &[(&Self, Tensor<B, 1, Int>)], len: usize, capacity: usize) -> Self {
        assert!(
            len <= capacity,
            "stacked length {len} > capacity {capacity}"
        );
        let first = parts.first().expect("at least one cache to stack").0;
        let batch: usize = parts.iter().map(|(_, rows)| rows.dims()[0]).sum();
        let layers = (0..first.layers.len())
            .map(|i| {
                let [_, _, h, hd] = first.layers[i].k.dims();
                let device = first.layers[i].k.device();
                let mut layer = LayerCache::new(batch, h, capacity, hd, &device);
                let mut row = 0;
                for (cache, rows) in parts {
                    let n = rows.dims()[0];
                    let part = &cache.layers[i];
                    let keep = part.len.min(len);
                    let (k, v) = part.tail(rows.clone(), keep);
                    let range = [row..row + n, len - keep..len, 0..h, 0..hd];
                    layer.k = layer.k.slice_assign(range.clone(), k);
                    layer.v = layer.v.slice_assign(range, v);
                    row += n;
                }
                layer.len = len;
                layer
            })
            .collect();
        Self { layers }
    }
}
