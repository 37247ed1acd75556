//! The fused training paths against the unfused ones they replace (issue 9):
//! - attention: Burn's fused `attention` with the patched autodiff backward (vendor/README.md)
//!   against Burn's own `attention_fallback`, differentiated op by op by upstream autodiff;
//! - the chunked LM head + cross-entropy against the loss of the whole logits tensor;
//! - layer norm: the inner backend's kernel with the patched closed-form backward against its
//!   definition, differentiated op by op.
//!
//! Forward values and gradients on the chosen backend. The fixtures' train parity
//! (`train_parity`) checks the same paths against transformers.

use crate::common::{assert_close, on_backend, Tol};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::module::{attention, attention_fallback};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::TensorPrimitive;
use opt::model::loss::{self, IGNORE_INDEX};
use opt::BackendTask;

const TOL: Tol = Tol {
    atol: 1e-5,
    rtol: 1e-5,
};

/// Deterministic values in [-1, 1] (no backend RNG: it is process-global).
fn values(n: usize, salt: f64) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f64 * 0.731 + salt).sin() * 1.7).sin() as f32)
        .collect()
}

fn tensor<B: Backend, const D: usize>(
    shape: [usize; D],
    salt: f64,
    device: &B::Device,
) -> Tensor<B, D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(values(n, salt), shape), device)
}

fn floats<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec().unwrap()
}

/// `ours[i]` against `want[i]` within `TOL` for every named output, printing each max |diff|.
fn assert_each_close<const N: usize>(
    name: &str,
    whats: [&str; N],
    ours: &[Vec<f64>; N],
    want: &[Vec<f64>; N],
) {
    for (what, (ours, want)) in whats.iter().zip(ours.iter().zip(want)) {
        let diff = assert_close(&format!("{name} {what}"), ours, want, TOL, None);
        println!("{name} {what}: max |diff| {diff:.2e}");
    }
}

struct Attention;

impl BackendTask for Attention {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        // (batch, heads, queries, keys, head_dim, causal, padding mask)
        let cases = [
            (2, 3, 9, 9, 4, true, false),
            (1, 2, 7, 7, 8, false, false),
            (2, 2, 6, 6, 4, false, true),
            (2, 2, 6, 6, 4, true, true),
            // Fewer queries than keys: causal aligned at the bottom-right corner.
            (1, 2, 3, 8, 4, true, false),
            // Longer than one block of the causal backward (256 query rows): 3 uneven blocks.
            (1, 2, 600, 600, 8, true, false),
        ];
        for (b, h, tq, tk, d, is_causal, padded) in cases {
            let name =
                format!("attention b{b} h{h} q{tq} k{tk} d{d} causal={is_causal} padded={padded}");
            let q = tensor::<B, 4>([b, h, tq, d], 0.1, &device);
            let k = tensor::<B, 4>([b, h, tk, d], 0.2, &device);
            let v = tensor::<B, 4>([b, h, tk, d], 0.3, &device);
            let grad_out = tensor::<B, 4>([b, h, tq, d], 0.4, &device);
            // The first key of every row of batch 1 hidden (no row is hidden whole).
            let mask = padded.then(|| {
                let hide: Vec<bool> = (0..b * h * tq * tk)
                    .map(|i| i % tk == 0 && i >= h * tq * tk)
                    .collect();
                Tensor::<B, 4, Bool>::from_data(TensorData::new(hide, [b, h, tq, tk]), &device)
            });
            let options = AttentionModuleOptions {
                is_causal,
                ..Default::default()
            };
            type Op<B> = fn(
                Tensor<B, 4>,
                Tensor<B, 4>,
                Tensor<B, 4>,
                Option<Tensor<B, 4, Bool>>,
                Option<Tensor<B, 4>>,
                AttentionModuleOptions,
            ) -> Tensor<B, 4>;
            let run = |op: Op<B>| {
                let [q, k, v] = [&q, &k, &v].map(|x| x.clone().require_grad());
                let out = op(q.clone(), k.clone(), v.clone(), mask.clone(), None, options);
                let grads = (out.clone() * grad_out.clone()).sum().backward();
                let grad = |x: &Tensor<B, 4>| floats(x.grad(&grads).unwrap());
                [floats(out.inner()), grad(&q), grad(&k), grad(&v)]
            };
            let (fused, reference) = (run(attention::<B>), run(attention_fallback::<B>));
            assert_each_close(&name, ["output", "dq", "dk", "dv"], &fused, &reference);
        }
    }
}

#[test]
fn fused_attention_matches_the_unfused_op_and_its_gradients() {
    on_backend(Attention);
}

struct ChunkedLoss;

impl BackendTask for ChunkedLoss {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        let (b, t, e, vocab) = (2, 5, 8, 13);
        let weight = tensor::<B, 2>([vocab, e], 0.5, &device) * 2.0;
        let hidden = tensor::<B, 3>([b, t, e], 0.6, &device) * 3.0;
        let ids: Vec<i64> = (0..b * t)
            .map(|i| {
                if i % 4 == 3 {
                    IGNORE_INDEX
                } else {
                    (i * 5 % vocab) as i64
                }
            })
            .collect();
        let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, t]), &device);
        let scale = 0.25;

        // The reference: the whole logits tensor, differentiated by autodiff.
        let full = |w: Tensor<B, 2>, h: Tensor<B, 3>| {
            loss::cross_entropy(logits(w, h), targets.clone()) * scale
        };
        let grads_of = |loss: Tensor<B, 1>, w: &Tensor<B, 2>, h: &Tensor<B, 3>| {
            let grads = loss.clone().backward();
            let value = floats(loss.inner());
            [
                value,
                floats(w.grad(&grads).unwrap()),
                floats(h.grad(&grads).unwrap()),
            ]
        };
        let (w, h) = (weight.clone().require_grad(), hidden.clone().require_grad());
        let want = grads_of(full(w.clone(), h.clone()), &w, &h);
        let (want_sum, want_count) =
            loss::nll_sum(logits(weight.clone(), hidden.clone()), targets.clone());
        let want_sum = floats(want_sum);

        for chunk in [1, 3, 10, 1024] {
            let (w, h) = (weight.clone().require_grad(), hidden.clone().require_grad());
            let loss =
                loss::chunked_cross_entropy(w.clone(), h.clone(), targets.clone(), scale, chunk);
            let ours = grads_of(loss, &w, &h);
            for (what, (ours, want)) in ["loss", "d weight", "d hidden"]
                .iter()
                .zip(ours.iter().zip(&want))
            {
                let diff =
                    assert_close(&format!("chunk {chunk} {what}"), ours, want, TOL_LOSS, None);
                println!("chunked cross-entropy, chunk {chunk}, {what}: max |diff| {diff:.2e}");
            }
            let (sum, count) =
                loss::chunked_nll_sum(weight.clone(), hidden.clone(), targets.clone(), chunk);
            assert_close(
                &format!("chunk {chunk} nll sum"),
                &floats(sum),
                &want_sum,
                TOL_LOSS,
                None,
            );
            assert_eq!(
                floats(count),
                floats(want_count.clone()),
                "chunk {chunk}: kept targets"
            );
        }
    }
}

/// The whole [b, t, vocab] logits of `hidden` under the tied head `weight`.
fn logits<B: Backend>(weight: Tensor<B, 2>, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, t, e] = hidden.dims();
    let vocab = weight.dims()[0];
    hidden
        .reshape([b * t, e])
        .matmul(weight.transpose())
        .reshape([b, t, vocab])
}

/// The chunked loss sums the same terms in another order: equal to f32 rounding.
const TOL_LOSS: Tol = Tol {
    atol: 1e-6,
    rtol: 1e-6,
};

#[test]
fn chunked_lm_head_loss_matches_the_whole_logits() {
    on_backend(ChunkedLoss);
}

struct LayerNormCase;

/// `B::layer_norm` over the last dim, as `burn_nn::LayerNorm::forward` calls it.
fn fused_layer_norm<B: Backend>(
    x: Tensor<B, 3>,
    gamma: Tensor<B, 1>,
    beta: Option<Tensor<B, 1>>,
    epsilon: f64,
) -> Tensor<B, 3> {
    let float = |t: Tensor<B, 1>| t.into_primitive().tensor();
    Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
        x.into_primitive().tensor(),
        float(gamma),
        beta.map(float),
        epsilon,
    )))
}

impl BackendTask for LayerNormCase {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        let eps = 1e-5;
        // (tokens per row of 2, d, with beta).
        for (t, d, with_beta) in [(5, 7, true), (3, 64, true), (2, 16, false)] {
            let name = format!("layer_norm [2, {t}, {d}] beta {with_beta}");
            let x = tensor::<B, 3>([2, t, d], 0.7, &device) * 3.0 + 0.5;
            let gamma = tensor::<B, 1>([d], 0.8, &device) + 1.0;
            let beta = tensor::<B, 1>([d], 0.9, &device);
            let grad_out = tensor::<B, 3>([2, t, d], 1.0, &device);
            let run = |fused: bool| {
                let x = x.clone().require_grad();
                let (gamma, beta) = (gamma.clone().require_grad(), beta.clone().require_grad());
                let out = if fused {
                    fused_layer_norm(
                        x.clone(),
                        gamma.clone(),
                        with_beta.then(|| beta.clone()),
                        eps,
                    )
                } else {
                    // The definition: (x − mean) / sqrt(biased variance + eps) · gamma + beta.
                    let centered = x.clone() - x.clone().mean_dim(2);
                    let var = (centered.clone() * centered.clone()).mean_dim(2);
                    let scaled = centered / (var + eps).sqrt() * gamma.clone().reshape([1, 1, d]);
                    match with_beta {
                        true => scaled + beta.clone().reshape([1, 1, d]),
                        false => scaled,
                    }
                };
                let grads = (out.clone() * grad_out.clone()).sum().backward();
                let beta_grad = beta.grad(&grads).map_or(Vec::new(), floats);
                [
                    floats(out.inner()),
                    floats(x.grad(&grads).unwrap()),
                    floats(gamma.grad(&grads).unwrap()),
                    beta_grad,
                ]
            };
            let (fused, reference) = (run(true), run(false));
            assert_each_close(
                &name,
                ["output", "dx", "dgamma", "dbeta"],
                &fused,
                &reference,
            );
        }
    }
}

#[test]
fn fused_layer_norm_matches_its_definition_and_gradients() {
    on_backend(LayerNormCase);
}
