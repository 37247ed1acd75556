//! Multi-head self-attention with OPT's q scaling and an optional preallocated KV cache.

use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;

use crate::cache::LayerCache;
use crate::config::OptConfig;
use crate::dropout::keyed;

/// `self_attn` of an OPT layer: q/k/v/out projections (HF names).
#[derive(Module, Debug)]
pub struct OptAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub out_proj: Linear<B>,
    attn_dropout: Dropout,
    #[module(skip)]
    num_heads: usize,
}

impl<B: Backend> OptAttention<B> {
    /// Build with Burn's default initialisation (the training recipe re-initialises).
    pub fn new(config: &OptConfig, device: &B::Device) -> Self {
        let d = config.hidden_size;
        let linear = || {
            LinearConfig::new(d, d)
                .with_bias(config.enable_bias)
                .init(device)
        };
        Self {
            q_proj: linear(),
            k_proj: linear(),
            v_proj: linear(),
            out_proj: linear(),
            attn_dropout: DropoutConfig::new(config.attention_dropout).init(),
            num_heads: config.num_attention_heads,
        }
    }

    /// `x`: [b, t, d]; `mask`: [b, 1, t, past + t], true where a key is hidden.
    /// With a cache, k/v of the new tokens are written at the cache's end and all cached keys are used.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: Option<Tensor<B, 4, Bool>>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let head_dim = d / self.num_heads;
        // [b, t, heads, head_dim]: head h owns features [h * head_dim, (h + 1) * head_dim).
        let split = |x: Tensor<B, 3>| x.reshape([b, t, self.num_heads, head_dim]);
        // HF/metaseq scale q after its bias, so the bias is scaled too; scores are not scaled again.
        let q = split(self.q_proj.forward(x.clone()) * (head_dim as f64).powf(-0.5));
        let mut k = split(self.k_proj.forward(x.clone()));
        let mut v = split(self.v_proj.forward(x));
        if let Some(cache) = cache {
            (k, v) = cache.append(k, v);
        }
        let (q, k, v) = (q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
        let mut scores = q.matmul(k.swap_dims(2, 3));
        if let Some(mask) = mask {
            // Expanded to every head explicitly: broadcasting a [b, 1, ..] mask is not reliable on all backends.
            let mask = mask.expand(scores.dims());
            // A finite fill (like HF eager's finfo.min) keeps fully hidden pad rows finite, not NaN.
            scores = scores.mask_fill(mask, f32::MIN);
        }
        let probs = keyed(&self.attn_dropout, softmax(scores, 3));
        let out = probs.matmul(v).swap_dims(1, 2).reshape([b, t, d]);
        self.out_proj.forward(out)
    }
}

/// Attention mask for `t` new queries after `past` cached keys: [b, 1, t, past + t], true = hidden.
/// A key is visible iff it is not in the future of the query and its `attention_mask` entry is 1.
pub fn build_attention_mask<B: Backend>(
    batch: usize,
    t: usize,
    past: usize,
    attention_mask: Option<&Tensor<B, 2, Int>>,
    device: &B::Device,
) -> Option<Tensor<B, 4, Bool>> {
    let s = past + t;
    let causal = (t > 1).then(|| {
        let q_pos = Tensor::<B, 1, Int>::arange(past as i64..s as i64, device)
            .reshape([t, 1])
            .expand([t, s]);
        let k_pos = Tensor::<B, 1, Int>::arange(0..s as i64, device)
            .reshape([1, s])
            .expand([t, s]);
        k_pos
            .greater(q_pos)
            .reshape([1, 1, t, s])
            .expand([batch, 1, t, s])
    });
    let padding = attention_mask.filter(|m| !all_ones(m)).map(|m| {
        m.clone()
            .reshape([batch, 1, 1, s])
            .expand([batch, 1, t, s])
            .equal_elem(0)
    });
    match (causal, padding) {
        (Some(c), Some(p)) => Some(c.bool_or(p)),
        (c, p) => c.or(p),
    }
}

fn all_ones<B: Backend>(mask: &Tensor<B, 2, Int>) -> bool {
    mask.clone().equal_elem(1).all().into_scalar().to_bool()
}
