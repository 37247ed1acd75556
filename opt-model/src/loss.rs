//! Language-model losses with HF's conventions (ignore index -100, mean over kept targets).

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, IndexingUpdateOp};

/// Label value that excludes a position from the loss (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// Sum of the negative log-likelihoods of `targets` [b, t] under `logits` [b, t, v], and how
/// many targets were kept (those != -100). Computed in float32 like HF's upcast loss.
pub fn nll_sum<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let (logits, targets, keep) = flatten(logits, targets);
    let nll = -picked_log_probs(log_softmax(logits, 1), targets);
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

/// Tokens per slice of the chunked LM-head losses: [LM_HEAD_CHUNK, vocab] logits exist at a time
/// (206 MB in f32 for OPT's 50,272 tokens), whatever the batch and sequence length.
pub const LM_HEAD_CHUNK: usize = 1024;

/// `nll_sum` of the logits `hidden @ weightᵀ` (`hidden` [b, t, e], the tied LM head `weight`
/// [vocab, e]), `chunk` tokens at a time, so that the whole [b, t, vocab] logits never exist.
pub fn chunked_nll_sum<B: Backend>(
    weight: Tensor<B, 2>,
    hidden: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    chunk: usize,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let (hidden, targets, keep) = flatten(hidden, targets);
    let mut sum = Tensor::zeros([1], &weight.device());
    for rows in slices(targets.dims()[0], chunk) {
        let (_, nll) = slice_nll(
            weight.clone(),
            hidden.clone().slice(rows.clone()),
            targets.clone().slice(rows.clone()),
            keep.clone().slice(rows),
        );
        sum = sum + nll;
    }
    (sum, keep.sum())
}

/// `cross_entropy(hidden @ weightᵀ, targets) * scale` for training, equal in value and gradients,
/// `chunk` tokens at a time: each slice's logits gradient (softmax − one-hot) is formed at once
/// and folded into the gradients of `hidden` and `weight`, so neither the logits nor their
/// gradient ever exist whole. Autodiff receives those gradients through a surrogate term
/// `Σ hidden·g_hidden + Σ weight·g_weight` whose value is cancelled.
pub fn chunked_cross_entropy<B: AutodiffBackend>(
    weight: Tensor<B, 2>,
    hidden: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    scale: f64,
    chunk: usize,
) -> Tensor<B, 1> {
    let dims = hidden.dims();
    let (w, h) = (weight.clone().inner(), hidden.clone().inner());
    let (h, targets, keep) = flatten(h, targets.inner());
    // d loss / d logits of a kept row: (softmax − one-hot) · scale / count.
    let per_row = keep.clone() * (keep.clone().sum().clamp_min(1.0).recip() * scale);
    let mut nll = Tensor::zeros([1], &w.device());
    let mut grad_h = Vec::new();
    let mut grad_w = w.zeros_like();
    for rows in slices(targets.dims()[0], chunk) {
        let h_rows = h.clone().slice(rows.clone());
        let y = targets.clone().slice(rows.clone());
        let row_weights = per_row.clone().slice(rows.clone());
        let (log_probs, slice) = slice_nll(w.clone(), h_rows.clone(), y.clone(), row_weights);
        nll = nll + slice;
        let y = y.unsqueeze_dim::<2>(1);
        let minus_one = Tensor::full(y.dims(), -1.0, &w.device());
        let grad_logits = log_probs
            .exp()
            .scatter(1, y, minus_one, IndexingUpdateOp::Add)
            * per_row.clone().slice(rows).unsqueeze_dim(1);
        let grad_logits = grad_logits.cast(h_rows.dtype());
        grad_h.push(grad_logits.clone().matmul(w.clone()));
        grad_w = grad_w + grad_logits.transpose().matmul(h_rows);
    }
    let grad_h = Tensor::cat(grad_h, 0).reshape(dims);
    let surrogate = ((hidden * Tensor::from_inner(grad_h)).sum()
        + (weight * Tensor::from_inner(grad_w)).sum())
    .cast(DType::F32);
    surrogate.clone() - surrogate.detach() + Tensor::from_inner(nll)
}

/// [n, x] rows, their targets [n] with ignored ones replaced by 0, and which were kept (as 1.0).
fn flatten<B: Backend>(
    hidden: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
) -> (Tensor<B, 2>, Tensor<B, 1, Int>, Tensor<B, 1>) {
    let [b, t, e] = hidden.dims();
    let targets = targets.reshape([b * t]);
    let keep = targets.clone().not_equal_elem(IGNORE_INDEX);
    let safe = targets.mask_fill(keep.clone().bool_not(), 0);
    (hidden.reshape([b * t, e]), safe, keep.float())
}

/// One slice of the chunked losses: its log-probabilities [rows, vocab] under the tied head and
/// Σ row_weight · (−log p(target)).
fn slice_nll<B: Backend>(
    weight: Tensor<B, 2>,
    hidden: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    row_weights: Tensor<B, 1>,
) -> (Tensor<B, 2>, Tensor<B, 1>) {
    let log_probs = log_softmax(head(weight, hidden), 1);
    let nll = -(picked_log_probs(log_probs.clone(), targets) * row_weights).sum();
    (log_probs, nll)
}

/// Float32 logits [rows, vocab] of the tied LM head (computed in the weight's precision).
fn head<B: Backend>(weight: Tensor<B, 2>, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
    hidden.matmul(weight.transpose()).cast(DType::F32)
}

/// log p(target) of each row [n] from log-probabilities [n, vocab].
fn picked_log_probs<B: Backend>(
    log_probs: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    log_probs.gather(1, targets.unsqueeze_dim(1)).squeeze_dim(1)
}

/// Consecutive ranges of at most `chunk` of `0..n`.
fn slices(n: usize, chunk: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let chunk = chunk.max(1);
    (0..n)
        .step_by(chunk)
        .map(move |start| start..(start + chunk).min(n))
}
