//! One OPT decoder layer: attention and feed-forward blocks, pre-LN or post-LN.

use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::attention::{AttentionMask, OptAttention};
use crate::cache::LayerCache;
use crate::config::OptConfig;
use crate::dropout::keyed;
use crate::linear::linear;

/// `layers.i` of the decoder (HF names: the FFN's norm is called `final_layer_norm`).
#[derive(Module, Debug)]
pub struct OptDecoderLayer<B: Backend> {
    pub self_attn: OptAttention<B>,
    pub self_attn_layer_norm: Option<LayerNorm<B>>,
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
    pub final_layer_norm: Option<LayerNorm<B>>,
    dropout: Dropout,
    #[module(skip)]
    pre_norm: bool,
}

impl<B: Backend> OptDecoderLayer<B> {
    /// Build with Burn's default initialisation.
    pub fn new(config: &OptConfig, device: &B::Device) -> Self {
        let (d, ffn) = (config.hidden_size, config.ffn_dim);
        Self {
            self_attn: OptAttention::new(config, device),
            self_attn_layer_norm: affine_layer_norm(config, device),
            fc1: LinearConfig::new(d, ffn)
                .with_bias(config.enable_bias)
                .init(device),
            fc2: LinearConfig::new(ffn, d)
                .with_bias(config.enable_bias)
                .init(device),
            final_layer_norm: affine_layer_norm(config, device),
            dropout: DropoutConfig::new(config.dropout).init(),
            pre_norm: config.do_layer_norm_before,
        }
    }

    /// Apply the layer to `x` [b, t, d].
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        mask: &AttentionMask<B>,
        cache: Option<&mut LayerCache<B>>,
    ) -> Tensor<B, 3> {
        let attn_norm = |h| layer_norm(&self.self_attn_layer_norm, h);
        let ffn_norm = |h| layer_norm(&self.final_layer_norm, h);
        let attn = |h| keyed(&self.dropout, self.self_attn.forward(h, mask, cache));
        let ffn = |h| keyed(&self.dropout, linear(&self.fc2, relu(linear(&self.fc1, h))));
        if self.pre_norm {
            let h = x.clone() + attn(attn_norm(x));
            h.clone() + ffn(ffn_norm(h))
        } else {
            // opt-350m: post-LN, the norm comes after each residual add.
            let h = attn_norm(x.clone() + attn(x));
            ffn_norm(h.clone() + ffn(h))
        }
    }
}

/// An affine LayerNorm (eps 1e-5 like torch), or `None` when the config asks for a non-affine one.
pub(crate) fn affine_layer_norm<B: Backend>(
    config: &OptConfig,
    device: &B::Device,
) -> Option<LayerNorm<B>> {
    config
        .layer_norm_elementwise_affine
        .then(|| LayerNormConfig::new(config.hidden_size).init(device))
}

/// LayerNorm over the last dim; without parameters it is the plain normalisation.
pub(crate) fn layer_norm<B: Backend>(norm: &Option<LayerNorm<B>>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    match norm {
        Some(norm) => norm.forward(x),
        None => {
            let (var, mean) = x.clone().var_mean_bias(2);
            (x - mean) / (var + 1e-5).sqrt()
        }
    }
}
