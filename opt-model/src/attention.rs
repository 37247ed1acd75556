//! Multi-head self-attention with OPT's q scaling and an optional preallocated KV cache.

use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::cache::LayerCache;
use crate::config::OptConfig;
use crate::dropout::keyed;
use crate::linear::linear;

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

    /// `x`: [b, t, d]; `mask`: which keys each new token sees.
    /// With a cache, k/v of the new tokens are written at the cache's end and all cached keys are used.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: &AttentionMask<B>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let head_dim = d / self.num_heads;
        // [b, t, heads, head_dim]: head h owns features [h * head_dim, (h + 1) * head_dim).
        let split = |x: Tensor<B, 3>| x.reshape([b, t, self.num_heads, head_dim]);
        let q = split(linear(&self.q_proj, x.clone()));
        let mut k = split(linear(&self.k_proj, x.clone()));
        let mut v = split(linear(&self.v_proj, x));
        if let Some(cache) = cache {
            (k, v) = cache.append(k, v);
        }
        let (q, k, v) = (q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
        let out = match mask {
            AttentionMask::Explicit(mask) => self.eager(q, k, v, Some(mask.clone())),
            _ if self.drops_probabilities(&q.device()) => {
                // `Causal` means no cache before the block (past = 0).
                let causal = matches!(mask, AttentionMask::Causal)
                    .then(|| causal_mask::<B>(b, t, 0, &q.device()));
                self.eager(q, k, v, causal)
            }
            AttentionMask::Causal => fused(q, k, v, true),
            AttentionMask::None => fused(q, k, v, false),
        };
        linear(&self.out_proj, out.swap_dims(1, 2).reshape([b, t, d]))
    }

    /// Whether attention dropout applies now (training with `attention_dropout` > 0): the
    /// probabilities must then exist as a tensor, so attention takes the eager path.
    fn drops_probabilities(&self, device: &B::Device) -> bool {
        B::ad_enabled(device) && self.attn_dropout.prob > 0.0
    }

    /// HF's eager attention: scores, mask, softmax and attention dropout as separate ops.
    /// `mask`: [b, 1, t, s], true where a key is hidden.
    fn eager(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        mask: Option<Tensor<B, 4, Bool>>,
    ) -> Tensor<B, 4> {
        let head_dim = q.dims()[3];
        // HF/metaseq scale q after its bias, so the bias is scaled too; scores are not scaled again.
        let q = q * (head_dim as f64).powf(-0.5);
        let mut scores = q.matmul(k.swap_dims(2, 3));
        if let Some(mask) = mask {
            // Expanded to every head explicitly: broadcasting a [b, 1, ..] mask is not reliable on all backends.
            let mask = mask.expand(scores.dims());
            // A finite fill (like HF eager's finfo.min) keeps fully hidden pad rows finite, not NaN.
            scores = scores.mask_fill(mask, f32::MIN);
        }
        keyed(&self.attn_dropout, softmax(scores, 3)).matmul(v)
    }
}

/// Burn's fused attention (flash-style kernels where the backend has them; under autodiff a
/// backward that recomputes the probabilities, see vendor/README.md): no [t, s] scores are kept.
/// It scales q·k by 1/sqrt(head_dim), which equals HF's scaling of q after its bias up to rounding.
fn fused<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    causal: bool,
) -> Tensor<B, 4> {
    let options = AttentionModuleOptions {
        is_causal: causal,
        ..Default::default()
    };
    attention(q, k, v, None, None, options)
}

/// Which keys each new token may see.
#[derive(Debug, Clone)]
pub enum AttentionMask<B: Backend> {
    /// Every key: one new token per row and no padding.
    None,
    /// Every key not in the token's future: a block with no cache before it and no padding.
    Causal,
    /// [b, 1, t, past + t], true where a key is hidden: padding, or a block after a cache.
    Explicit(Tensor<B, 4, Bool>),
}

/// The mask for `t` new tokens after `past` cached ones. A key is visible iff it is not in the
/// future of the token and its `attention_mask` entry is 1.
pub fn build_attention_mask<B: Backend>(
    batch: usize,
    t: usize,
    past: usize,
    attention_mask: Option<&Tensor<B, 2, Int>>,
    device: &B::Device,
) -> AttentionMask<B> {
    let s = past + t;
    let padding = attention_mask.filter(|m| !all_ones(m)).map(|m| {
        m.clone()
            .reshape([batch, 1, 1, s])
            .expand([batch, 1, t, s])
            .equal_elem(0)
    });
    match (t > 1, padding) {
        (false, None) => AttentionMask::None,
        (true, None) if past == 0 => AttentionMask::Causal,
        (true, None) => AttentionMask::Explicit(causal_mask(batch, t, past, device)),
        (false, Some(p)) => AttentionMask::Explicit(p),
        (true, Some(p)) => AttentionMask::Explicit(causal_mask(batch, t, past, device).bool_or(p)),
    }
}

/// [b, 1, t, past + t], true where the key is in the future of the query.
fn causal_mask<B: Backend>(
    batch: usize,
    t: usize,
    past: usize,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let s = past + t;
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
}

fn all_ones<B: Backend>(mask: &Tensor<B, 2, Int>) -> bool {
    mask.clone().equal_elem(1).all().into_scalar().to_bool()
}
