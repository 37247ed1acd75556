//! A Linear layer applied with its weight in any format: float, or lighter (`weights.rs`).

use burn::nn::Linear;
use burn::prelude::*;

/// `layer` applied to `x` [.., in] for any weight format: a weight of `x`'s dtype through Burn's
/// `Linear` (its fused op and gradients), a converted one as a 2-D matmul against its view,
/// which reaches the backend's kernel for the format (Burn's `linear` would dequantize a
/// quantized weight in full on every call).
pub fn linear<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let weight = layer.weight.val();
    if weight.dtype() == x.dtype() {
        return layer.forward(x);
    }
    let mut dims = x.dims();
    let (k, n) = (dims[D - 1], weight.dims()[1]);
    let rows = dims[..D - 1].iter().product();
    let mut y = x.reshape([rows, k]).matmul(weight);
    if let Some(bias) = &layer.bias {
        y = y + bias.val().unsqueeze::<2>();
    }
    dims[D - 1] = n;
    y.reshape(dims)
}
