//! Compute precision of training ([`Precision`], shared with the rest of the project): float32
//! everywhere (the default), or bfloat16 / float16 compute with float32 master weights and
//! optimizer state.
//!
//! Mixed precision is done by hand (Burn 0.21 has no autocast): each micro-batch runs the forward
//! pass on a cast of the f32 parameters, the logits come back to f32 for the loss (one slice of
//! tokens at a time), and backward flows through the casts, so every gradient, the clipping and
//! the AdamW update are f32 on the master weights. bf16 needs no loss scaling (it has f32's
//! exponent range); float16, the paper's format, has the loop's dynamic loss scaling
//! ([`crate::loss_scale`]): the loss is scaled before the backward and the gradients unscaled in
//! the update.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use opt_model::{loss, Opt};

pub use opt_model::dtype::Precision;

/// Mean cross-entropy of `model` on `inputs` → `targets`, times `scale`, computed in `precision`;
/// the LM head and loss run in slices of tokens with f32 logits (`chunked_cross_entropy`).
pub fn compute_loss<B: AutodiffBackend>(
    precision: Precision,
    model: &Opt<B>,
    inputs: Tensor<B, 2, Int>,
    targets: Tensor<B, 2, Int>,
    scale: f64,
) -> Tensor<B, 1> {
    let cast;
    let model = match precision {
        Precision::F32 => model,
        _ => {
            cast = precision.cast(model.clone());
            &cast
        }
    };
    let (hidden, _) = model.decode(inputs, None, None, false);
    head_loss(model, hidden, targets, scale)
}

/// Mean cross-entropy times `scale` of the tied LM head on `hidden` (the decoder's output), in
/// slices of `lm_head_chunk` tokens with f32 logits.
pub fn head_loss<B: AutodiffBackend>(
    model: &Opt<B>,
    hidden: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    scale: f64,
) -> Tensor<B, 1> {
    let weight = model.lm_head_weight();
    let chunk = loss::lm_head_chunk(weight.dims()[0]);
    loss::chunked_cross_entropy(weight, hidden, targets, scale, chunk)
}
