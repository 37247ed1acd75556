//! PATCHED (whole file, see vendor/README.md): the backward of `attention`.
//!
//! Upstream differentiates `attention` through `attention_fallback`, which keeps the scores and
//! probabilities of every call ([batch, heads, seq_q, seq_k] each) until the backward. Here the
//! forward is the inner backend's fused kernel and the backward recomputes the probabilities of
//! one call from the saved query and key, then applies the softmax-attention gradient:
//!   P = softmax(mask(Q Kᵗ · scale)),  dV = Pᵗ dO,  dP = dO Vᵗ,
//!   dS = P ∘ (dP − rowsum(P ∘ dP)),   dQ = dS K · scale,  dK = dSᵗ Q · scale.

use burn_backend::ops::AttentionModuleOptions;
use burn_backend::tensor::{BoolTensor, FloatTensor};
use burn_backend::{Backend, Shape, Slice, TensorMetadata, get_device_settings};

/// Gradients of (query, key, value) for `grad` = d loss / d output. Computes exactly what
/// `attention_fallback` computes for the probabilities (same masking and NaN-safe softmax).
pub(crate) fn attention_backward<B: Backend>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    options: AttentionModuleOptions,
    grad: FloatTensor<B>,
) -> [FloatTensor<B>; 3] {
    let [_, _, seq_q, head_dim] = query.shape().dims::<4>();
    let seq_k = key.shape().dims::<4>()[2];
    let scale = options
        .scale
        .unwrap_or_else(|| 1.0 / (head_dim as f64).sqrt());
    if options.is_causal && mask.is_none() && seq_q == seq_k && seq_q > CAUSAL_BLOCK {
        return causal_blocks_backward::<B>(query, key, value, scale, grad);
    }
    block_backward::<B>(query, key, value, mask, options.is_causal, scale, grad)
}

/// Query rows per block of the causal backward.
const CAUSAL_BLOCK: usize = 256;

/// The causal backward one block of `CAUSAL_BLOCK` query rows at a time: rows [q0, q1) attend
/// to keys [0, q1) only (the later keys are masked, their probabilities 0), so each block
/// recomputes [b, h, rows, q1] probabilities instead of [b, h, rows, seq]. At seq 2048 that is
/// 56% of the work and memory traffic of the whole square, and a block's tensors stay in cache.
/// The blocks' key and value gradients are summed into the prefix they touched.
fn causal_blocks_backward<B: Backend>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    scale: f64,
    grad: FloatTensor<B>,
) -> [FloatTensor<B>; 3] {
    let [batch, heads, seq, _] = query.shape().dims::<4>();
    let rows =
        |r: core::ops::Range<usize>| [Slice::from(0..batch), Slice::from(0..heads), r.into()];
    let mut grad_query = Vec::new();
    let mut grad_key = B::float_zeros(key.shape(), &B::float_device(&key), key.dtype().into());
    let mut grad_value = B::float_zeros(
        value.shape(),
        &B::float_device(&value),
        value.dtype().into(),
    );
    for q0 in (0..seq).step_by(CAUSAL_BLOCK) {
        let q1 = (q0 + CAUSAL_BLOCK).min(seq);
        let prefix = rows(0..q1);
        // Bottom-right-aligned causal mask of [q1 - q0, q1] = global key > global query.
        let [dq, dk, dv] = block_backward::<B>(
            B::float_slice(query.clone(), &rows(q0..q1)),
            B::float_slice(key.clone(), &prefix),
            B::float_slice(value.clone(), &prefix),
            None,
            true,
            scale,
            B::float_slice(grad.clone(), &rows(q0..q1)),
        );
        grad_query.push(dq);
        grad_key = add_into::<B>(grad_key, &prefix, dk);
        grad_value = add_into::<B>(grad_value, &prefix, dv);
    }
    [B::float_cat(grad_query, 2), grad_key, grad_value]
}

/// `total[slices] += part`.
fn add_into<B: Backend>(
    total: FloatTensor<B>,
    slices: &[Slice],
    part: FloatTensor<B>,
) -> FloatTensor<B> {
    let sum = B::float_add(B::float_slice(total.clone(), slices), part);
    B::float_slice_assign(total, slices, sum)
}

/// The softmax-attention gradient of one block of queries against its keys (module formulas).
/// The scale is applied to the [.., t, head_dim] query and key, not to the [.., t, t] scores and
/// their gradient: dQ = dS (K · scale), dK = dSᵗ (Q · scale).
fn block_backward<B: Backend>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    is_causal: bool,
    scale: f64,
    grad: FloatTensor<B>,
) -> [FloatTensor<B>; 3] {
    let query = B::float_mul_scalar(query, scale.into());
    let probs = probabilities::<B>(query.clone(), key.clone(), mask, is_causal);

    let grad_value = B::float_matmul(B::float_transpose(probs.clone()), grad.clone());
    let grad_probs = B::float_matmul(grad, B::float_transpose(value));
    let row = B::float_sum_dim(B::float_mul(probs.clone(), grad_probs.clone()), 3);
    let grad_scores = B::float_mul(probs, B::float_sub(grad_probs, row));
    let key = B::float_mul_scalar(key, scale.into());
    let grad_query = B::float_matmul(grad_scores.clone(), key);
    let grad_key = B::float_matmul(B::float_transpose(grad_scores), query);
    [grad_query, grad_key, grad_value]
}

/// softmax(mask(Q Kᵗ)) over the keys, for a query already scaled; fully masked rows give zeros.
fn probabilities<B: Backend>(
    query: FloatTensor<B>,
    key: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    is_causal: bool,
) -> FloatTensor<B> {
    let mut scores = B::float_matmul(query, B::float_transpose(key));
    if let Some(mask) = mask {
        scores = B::float_mask_fill(scores, mask, f32::NEG_INFINITY.into());
    }
    if is_causal {
        let causal = causal_mask::<B>(&scores);
        scores = B::float_mask_fill(scores, causal, f32::NEG_INFINITY.into());
    }
    let finfo = scores.dtype().finfo().expect("float tensor");
    let max = B::float_clamp_min(B::float_max_dim(scores.clone(), 3), finfo.min.into());
    let numerator = B::float_exp(B::float_sub(scores, max));
    let sum = B::float_sum_dim(numerator.clone(), 3);
    let sum = B::float_clamp_min(sum, finfo.min_positive.into());
    B::float_div(numerator, sum)
}

/// True above the diagonal aligned at the bottom-right corner (key > query + seq_k - seq_q).
fn causal_mask<B: Backend>(scores: &FloatTensor<B>) -> BoolTensor<B> {
    let device = B::float_device(scores);
    let [batch, heads, seq_q, seq_k] = scores.shape().dims::<4>();
    let settings = get_device_settings::<B>(&device);
    let rows = B::int_reshape(
        B::int_arange(0..seq_q as i64, &device, settings.int_dtype),
        Shape::new([seq_q, 1]),
    );
    let cols = B::int_reshape(
        B::int_arange(0..seq_k as i64, &device, settings.int_dtype),
        Shape::new([1, seq_k]),
    );
    let rows = B::int_add_scalar(rows, (seq_k as i64 - seq_q as i64).into());
    let mask = B::int_lower(rows, cols, settings.bool_dtype);
    let mask = B::bool_reshape(mask, Shape::new([1, 1, seq_q, seq_k]));
    B::bool_expand(mask, Shape::new([batch, heads, seq_q, seq_k]))
}
