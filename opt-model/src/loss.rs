//! Language-model losses with HF's conventions (ignore index -100, mean over kept targets).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;

/// Label value that excludes a position from the loss (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// Sum of the negative log-likelihoods of `targets` [b, t] under `logits` [b, t, v], and how
/// many targets were kept (those != -100). Computed in float32 like HF's upcast loss.
pub fn nll_sum<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [b, t, v] = logits.dims();
    let logits = logits.reshape([b * t, v]);
    let targets = targets.reshape([b * t]);
    let keep = targets.clone().not_equal_elem(IGNORE_INDEX);
    let safe = targets.mask_fill(keep.clone().bool_not(), 0);
    let nll = -log_softmax(logits, 1)
        .gather(1, safe.unsqueeze_dim(1))
        .squeeze_dim::<1>(1);
    let keep = keep.float();
    ((nll * keep.clone()).sum(), keep.sum())
}

/// Mean cross-entropy of `logits` [b, t, v] against aligned `targets` [b, t].
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let (sum, count) = nll_sum(logits, targets);
    sum / count.clamp_min(1.0)
}

/// HF's causal-LM loss: `logits[:, t]` predicts `labels[:, t + 1]`.
pub fn causal_lm_loss<B: Backend>(logits: Tensor<B, 3>, labels: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [b, t, v] = logits.dims();
    let logits = logits.slice([0..b, 0..t - 1, 0..v]);
    let targets = labels.slice([0..b, 1..t]);
    cross_entropy(logits, targets)
}
