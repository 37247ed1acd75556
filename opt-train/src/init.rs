//! The paper's initialisation (metaseq): N(0, std) weights and embeddings, scaled output projections.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::Distribution;
use opt_model::{Opt, OptConfig};

/// The paper's weight std.
pub const INIT_STD: f64 = 0.006;

/// A freshly initialised model: weights and embeddings ~ N(0, std) with the padding rows zeroed,
/// `out_proj` and `fc2` ~ N(0, std / sqrt(2 L)), biases 0, LayerNorm weight 1 and bias 0.
pub fn init_model<B: Backend>(config: &OptConfig, std: f64, device: &B::Device) -> Opt<B> {
    let mut m = Opt::new(config, device);
    let residual_std = std / (2.0 * config.num_hidden_layers as f64).sqrt();
    m.embed_tokens.weight =
        normal_with_zero_row(&m.embed_tokens.weight, std, config.pad_token_id, device);
    // Row 1 of the learned positions is the padding position (fairseq's padding_idx).
    m.embed_positions.weight = normal_with_zero_row(&m.embed_positions.weight, std, 1, device);
    for proj in [&mut m.project_in, &mut m.project_out]
        .into_iter()
        .flatten()
    {
        init_linear(proj, std, device);
    }
    for layer in &mut m.layers {
        let attn = &mut layer.self_attn;
        for proj in [&mut attn.q_proj, &mut attn.k_proj, &mut attn.v_proj] {
            init_linear(proj, std, device);
        }
        init_linear(&mut attn.out_proj, residual_std, device);
        init_linear(&mut layer.fc1, std, device);
        init_linear(&mut layer.fc2, residual_std, device);
    }
    // LayerNorms keep Burn's init (weight 1, bias 0).
    m
}

fn init_linear<B: Backend>(linear: &mut burn::nn::Linear<B>, std: f64, device: &B::Device) {
    linear.weight = normal(&linear.weight, std, device);
    if let Some(bias) = &linear.bias {
        let zeros = Tensor::zeros(bias.shape(), device);
        linear.bias = Some(Param::initialized(bias.id, zeros.require_grad()));
    }
}

fn normal<B: Backend, const D: usize>(
    p: &Param<Tensor<B, D>>,
    std: f64,
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    let t = Tensor::random(p.shape(), Distribution::Normal(0.0, std), device);
    Param::initialized(p.id, t.require_grad())
}

fn normal_with_zero_row<B: Backend>(
    p: &Param<Tensor<B, 2>>,
    std: f64,
    row: usize,
    device: &B::Device,
) -> Param<Tensor<B, 2>> {
    let [rows, cols] = p.shape().dims();
    let mut t = Tensor::random([rows, cols], Distribution::Normal(0.0, std), device);
    if row < rows {
        t = t.slice_assign([row..row + 1, 0..cols], Tensor::zeros([1, cols], device));
    }
    Param::initialized(p.id, t.require_grad())
}
