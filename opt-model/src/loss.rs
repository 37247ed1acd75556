//! Language-model losses with HF's conventions (ignore index -100, mean over kept targets).

use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Bytes of f32 logits in one slice of the chunked LM head on CPUs and WebGPU: [rows, vocab]
/// logits (and their gradient) exist one slice at a time, whatever the batch and sequence length.
/// 64 MiB also keeps every slice under WebGPU's default 128 MiB storage-buffer binding: on wgpu,
/// the [1024, 50272] logits of a larger slice scored NaN.
pub const LM_HEAD_SLICE_BYTES: usize = 64 << 20;

/// The slice size on CUDA: 512 MiB (2,669 rows of OPT's vocabulary, a 206 GFLOP matmul at the
/// 125m width). A GPU wants few, large launches: at 64 MiB a slice's matmul takes ~26 µs on an
/// H100, the order of the launches around it (softmax, gather, backward). The logits and their
/// gradient are then 1 GiB, about 1% of an 80 GB device.
pub const LM_HEAD_SLICE_BYTES_CUDA: usize = 512 << 20;

static SLICE_BYTES: AtomicUsize = AtomicUsize::new(LM_HEAD_SLICE_BYTES);

/// Set the LM head's slice size in bytes of f32 logits for this process (the backend module
/// sets it per backend; at least one row per slice whatever the value).
pub fn set_lm_head_slice_bytes(bytes: usize) {
    SLICE_BYTES.store(bytes, Ordering::Relaxed);
}

/// Tokens per slice of the chunked LM head for a vocabulary of `vocab` (at least one): with the
/// 64 MiB slice, 333 for OPT's 50,272 tokens, 2,048 for the 8,192 of `cpu-small`.
pub fn lm_head_chunk(vocab: usize) -> usize {
    rows_per_slice(SLICE_BYTES.load(Ordering::Relaxed), vocab)
}

fn rows_per_slice(bytes: usize, vocab: usize) -> usize {
    (bytes / (4 * vocab.max(1))).max(1)
}

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
        let slice = SoftmaxSlice::new(
            weight.clone(),
            hidden.clone().slice(rows.clone()),
            targets.clone().slice(rows.clone()),
        );
        sum = sum + slice.nll(keep.clone().slice(rows));
    }
    (sum, keep.sum())
}

/// `cross_entropy(hidden @ weightᵀ, targets) * scale` for training, equal in value and gradients,
/// `chunk` tokens at a time, so neither the logits nor their gradient ever exist whole. The
/// logits gradient of a kept row is (softmax − one-hot) · scale / count: each slice's softmax
/// part is folded into the gradients of `hidden` and `weight` at once, and the one-hot part of
/// all rows at the end, as a gather and a scatter-add of [rows, e] (never [rows, vocab]).
/// Autodiff receives those gradients through a surrogate term
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
    let per_row = keep.clone() * (keep.sum().clamp_min(1.0).recip() * scale);
    let mut nll = Tensor::zeros([1], &w.device());
    let mut grad_h = Vec::new();
    let mut grad_w = w.zeros_like();
    for rows in slices(targets.dims()[0], chunk) {
        let h_rows = h.clone().slice(rows.clone());
        let row_weights = per_row.clone().slice(rows.clone());
        let slice = SoftmaxSlice::new(w.clone(), h_rows.clone(), targets.clone().slice(rows));
        nll = nll + slice.nll(row_weights.clone());
        let grad_logits = slice.softmax_times(row_weights).cast(h_rows.dtype());
        grad_h.push(grad_logits.clone().matmul(w.clone()));
        grad_w = grad_w + grad_logits.transpose().matmul(h_rows);
    }
    // The one-hot part: − row weight at each row's target logit.
    let per_row = per_row.unsqueeze_dim::<2>(1).cast(h.dtype());
    let grad_h = Tensor::cat(grad_h, 0) - w.select(0, targets.clone()) * per_row.clone();
    let grad_w = grad_w.select_assign(0, targets, -(h * per_row), IndexingUpdateOp::Add);
    // In float32 under float16 compute: the products of loss-scaled gradients would overflow
    // float16's 65,504 (the value is cancelled, but inf − inf is NaN).
    let lift = |t: Tensor<B, 2>| match t.dtype() {
        DType::F16 => t.cast(DType::F32),
        _ => t,
    };
    let grad_h = Tensor::from_inner(grad_h.reshape(dims));
    let surrogate = ((lift(hidden.flatten(0, 1)) * lift(grad_h.flatten(0, 1))).sum()
        + (lift(weight) * lift(Tensor::from_inner(grad_w))).sum())
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

/// One slice of the chunked losses under the tied head, as log-softmax's parts: with logits z
/// and m = max z, `exp` = e^(z − m) [rows, vocab], `sum` = Σ exp [rows, 1] and `picked` =
/// z[target] − m [rows, 1], so −log p(target) = ln sum − picked. Three passes over the logits
/// (shift, exp, sum) where `log_softmax` and a second `exp` took about eight.
struct SoftmaxSlice<B: Backend> {
    exp: Tensor<B, 2>,
    sum: Tensor<B, 2>,
    picked: Tensor<B, 2>,
}

impl<B: Backend> SoftmaxSlice<B> {
    fn new(weight: Tensor<B, 2>, hidden: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Self {
        let logits = head(weight, hidden);
        let shifted = logits.clone() - logits.max_dim(1);
        let picked = shifted.clone().gather(1, targets.unsqueeze_dim(1));
        let exp = shifted.exp();
        let sum = exp.clone().sum_dim(1);
        Self { exp, sum, picked }
    }

    /// Σ row_weight · (−log p(target)).
    fn nll(&self, row_weights: Tensor<B, 1>) -> Tensor<B, 1> {
        let nll = self.sum.clone().log() - self.picked.clone();
        (nll.squeeze_dim::<1>(1) * row_weights).sum()
    }

    /// softmax · row_weight [rows, vocab], computed in place of `exp`.
    fn softmax_times(self, row_weights: Tensor<B, 1>) -> Tensor<B, 2> {
        self.exp * (row_weights.unsqueeze_dim(1) / self.sum)
    }
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

#[cfg(test)]
mod slice_tests {
    use super::*;

    /// 64 MiB / (4 B × 50,272) = 333.7; 512 MiB: 2,669.8; a row of 1 GiB still makes one row.
    #[test]
    fn rows_per_slice_by_hand() {
        assert_eq!(rows_per_slice(LM_HEAD_SLICE_BYTES, 50272), 333);
        assert_eq!(rows_per_slice(LM_HEAD_SLICE_BYTES, 8192), 2048);
        assert_eq!(rows_per_slice(LM_HEAD_SLICE_BYTES_CUDA, 50272), 2669);
        assert_eq!(rows_per_slice(LM_HEAD_SLICE_BYTES, 1 << 28), 1);
    }
}
