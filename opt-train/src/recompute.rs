//! Per-layer activation recompute (`--recompute`): the forward pass keeps only each decoder
//! layer's input; the backward runs one layer at a time, last first, recomputing that layer's
//! activations under autodiff and backpropagating into it the gradient of its output. Activation
//! memory falls from every layer's to one layer's (plus the [b, t, d] inputs), for one more
//! forward pass. The same dropout masks are drawn in both passes (each layer replays its place
//! in the keyed dropout stream), so loss and gradients equal the plain backward's, except that the
//! tied embedding's two gradients (LM head, lookup) are summed in f32 after their casts, where
//! the plain bf16 backward sums them in bf16.

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use opt_model::attention::build_attention_mask;
use opt_model::{dropout, Opt};

use crate::precision::{head_loss, Precision};

/// One layer's input, and where the dropout stream stood when the layer started.
type LayerInput<B> = (Tensor<B, 3>, (u64, u64));

/// The loss of `model` on `inputs` → `targets` times `scale` (as [`crate::precision::compute_loss`]) and the
/// gradients of every parameter, computed layer by layer with activation recompute.
pub fn loss_and_grads<B: AutodiffBackend>(
    model: &Opt<B>,
    inputs: Tensor<B, 2, Int>,
    targets: Tensor<B, 2, Int>,
    scale: f64,
    precision: Precision,
) -> (Tensor<B::InnerBackend, 1>, GradientsParams) {
    let [b, t] = inputs.dims();
    let mut kept = layer_inputs(model, inputs.clone(), precision);
    // The model without its layers: embeddings, final layer norm, projections, tied LM head.
    let ends = Opt {
        layers: Vec::new(),
        ..model.clone()
    };
    let mut accumulator = GradientsAccumulator::<Opt<B>>::new();

    let (last, _) = kept.pop().expect("the last layer's output");
    let (loss, mut grad) = head_backward(&ends, last, targets, scale, precision, &mut accumulator);

    let mask = build_attention_mask::<B>(b, t, 0, None, &inputs.device());
    for (layer, (input, stream)) in model.layers.iter().zip(kept).rev() {
        dropout::seek_stream(stream);
        let h = leaf(input);
        let out = precision
            .cast(layer.clone())
            .forward(h.clone(), &mask, None);
        let grads = backprop(out, grad);
        grad = h.grad(&grads).expect("a layer's input gets a gradient");
        accumulator.accumulate(model, GradientsParams::from_grads(grads, layer));
    }

    let embedded = precision.cast(ends.clone()).embed(inputs, None, 0);
    let grads = backprop(embedded, grad);
    accumulator.accumulate(&ends, GradientsParams::from_grads(grads, &ends));
    (loss, accumulator.grads())
}

/// The forward pass on untracked parameters (no graph is recorded, but it runs the same autodiff
/// ops as the recompute, so bf16 values match bit for bit, and dropout applies), keeping every
/// layer's input, then the last layer's output.
fn layer_inputs<B: AutodiffBackend>(
    model: &Opt<B>,
    inputs: Tensor<B, 2, Int>,
    precision: Precision,
) -> Vec<LayerInput<B>> {
    let [b, t] = inputs.dims();
    let model = precision.cast(model.clone().no_grad());
    let mask = build_attention_mask(b, t, 0, None, &inputs.device());
    let mut h = model.embed(inputs, None, 0);
    let mut kept = Vec::with_capacity(model.layers.len() + 1);
    for layer in &model.layers {
        kept.push((h.clone(), dropout::stream_position()));
        h = layer.forward(h, &mask, None);
    }
    kept.push((h, dropout::stream_position()));
    kept
}

/// Loss and backward of the top: final layer norm, projection, LM head and cross-entropy on the
/// last layer's output. Returns the loss and the gradient of that output.
fn head_backward<B: AutodiffBackend>(
    ends: &Opt<B>,
    last: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    scale: f64,
    precision: Precision,
    accumulator: &mut GradientsAccumulator<Opt<B>>,
) -> (Tensor<B::InnerBackend, 1>, Tensor<B::InnerBackend, 3>) {
    let h = leaf(last);
    let cast = precision.cast(ends.clone());
    let loss = head_loss(&cast, cast.finish(h.clone()), targets, scale);
    let value = loss.clone().inner();
    let grads = loss.backward();
    let grad = h
        .grad(&grads)
        .expect("the last layer's output gets a gradient");
    accumulator.accumulate(ends, GradientsParams::from_grads(grads, ends));
    (value, grad)
}

/// A tracked leaf holding `x`'s values, whose gradient the backward will report.
fn leaf<B: AutodiffBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.detach().require_grad()
}

/// The gradients of everything `out` depends on, given the gradient `grad` of `out`: the
/// backward of Σ out ∘ grad, with `grad` a constant.
fn backprop<B: AutodiffBackend>(
    out: Tensor<B, 3>,
    grad: Tensor<B::InnerBackend, 3>,
) -> B::Gradients {
    (out * Tensor::from_inner(grad)).sum().backward()
}
