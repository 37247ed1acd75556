//! Lighter inference weights (`Opt::with_weight_dtype`, issue 24): the matmul of float32
//! activations with bf16 and int8 weights against a host reference in f64, and converted
//! fixture models against float32 (full forward, and prefill + cached decoding).
//!
//! bf16 runs on flex only (its matmul reads a bf16 weight beside f32 activations); int8 goes
//! through Burn's quantization API on flex and wgpu. ndarray runs neither: its quantized matmul
//! against a transposed weight fails (a shape error), so the CLI refuses `--dtype` there.

use crate::common::{fixture_dirs, int_rows, on_backend, read_tensors, Expected};
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::quantization::{QuantLevel, QuantValue};
use burn::tensor::DType;
use opt::backend::BackendKind;
use opt::data::hash::splitmix64;
use opt::model::weights::{int8_scheme, WeightDtype};
use opt::model::{checkpoint, KvCache, Opt};
use opt::BackendTask;

fn on_flex() -> bool {
    BackendKind::from_env().is_ok_and(|k| k == BackendKind::Flex)
}

fn int8_here() -> bool {
    BackendKind::from_env().is_ok_and(|k| k != BackendKind::NdArray)
}

/// Deterministic values in [-1, 1) (splitmix64), with a few larger ones as real weights have.
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..len)
        .map(|i| {
            let v = (splitmix64(&mut state) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            if i % 37 == 0 {
                v * 4.0
            } else {
                v
            }
        })
        .collect()
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 data")
}

/// `got` [m, n] against x [m, k] · wᵀ (w [n, k]) in f64: each entry within 1e-5 of Σ|x·w|
/// (a dot product's relative error, whatever the cancellation).
fn assert_matmul(got: &[f32], x: &[f32], w: &[f32], (m, k, n): (usize, usize, usize), what: &str) {
    assert_eq!(got.len(), m * n, "{what}: output size");
    for i in 0..m {
        for j in 0..n {
            let pairs = (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64);
            let (exact, scale) = pairs.fold((0.0, 0.0), |(s, a), p| (s + p, a + p.abs()));
            let err = (got[i * n + j] as f64 - exact).abs();
            assert!(
                err <= 1e-5 * scale.max(1e-30),
                "{what}: [{i}, {j}] = {} but the reference is {exact} (error {err:.3e}, Σ|x·w| {scale:.3e})",
                got[i * n + j]
            );
        }
    }
}

struct CompactMatmul;

impl BackendTask for CompactMatmul {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        // (m, k, n, int8 block; 0 = one scale per tensor). m = 1 and 3 take flex's tiled decode
        // kernel, 17 and 40 its gemm panels; k = 40 and 72 are not multiples of the block of
        // 32, so blocks straddle weight rows; n = 5 and 33 leave partial tiles.
        let cases = [
            (1usize, 40usize, 8usize, 32usize),
            (3, 72, 12, 32),
            (17, 200, 33, 8),
            (3, 64, 5, 0),
            (40, 96, 20, 32),
            (1, 768, 7, 128),
        ];
        for (seed, (m, k, n, block)) in cases.into_iter().enumerate() {
            // Blocks that straddle rows are flex's (a block is a run of storage); cubecl's blocks
            // run along the last dim and must divide it.
            if !on_flex() && block > 0 && !k.is_multiple_of(block) {
                continue;
            }
            let shape = (m, k, n);
            let x_host = values(m * k, 2 * seed as u64);
            let w_host = values(n * k, 2 * seed as u64 + 1);
            let x = Tensor::<B::InnerBackend, 2>::from_data(
                TensorData::new(x_host.clone(), [m, k]),
                &device,
            );
            let rows = Tensor::<B::InnerBackend, 2>::from_data(
                TensorData::new(w_host.clone(), [n, k]),
                &device,
            );

            // int8 through Burn's API: the [n, k] rows quantized, used through their [k, n] view.
            let level = match block {
                0 => QuantLevel::Tensor,
                b => QuantLevel::block([b as u8]),
            };
            let scheme = int8_scheme::<B::InnerBackend>(k).with_level(level);
            assert_eq!(scheme.value, QuantValue::Q8S);
            let q = rows.clone().quantize_dynamic(&scheme);
            // What the int8 weight stands for: within half a quantization step of the weight
            // (the step is its block's max |w| / 127).
            let dequantized = host(q.clone().dequantize());
            let runs = if block == 0 { n * k } else { block };
            for (run, (wq, w)) in dequantized
                .chunks(runs)
                .zip(w_host.chunks(runs))
                .enumerate()
            {
                let step = w.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                for (a, b) in wq.iter().zip(w) {
                    assert!(
                        (a - b).abs() <= step / 2.0 * 1.0001,
                        "block {run}: {b} quantized to {a}, step {step}"
                    );
                }
            }
            let got = host(x.clone().matmul(q.transpose()));
            assert_matmul(
                &got,
                &x_host,
                &dequantized,
                shape,
                &format!("int8 {shape:?}"),
            );

            if on_flex() {
                // The weight rounded to nearest even by `half` and stored in bf16, as
                // `with_weight_dtype` stores it (through `TensorData`: flex's `cast` rounds
                // some halfway-near values the other way).
                let rounded: Vec<f32> = w_host
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_f32())
                    .collect();
                let data = TensorData::new(rounded.clone(), [n, k]);
                let bf16 = Tensor::<B::InnerBackend, 2>::from_data(data, (&device, DType::BF16));
                let got = x.matmul(bf16.transpose());
                assert_eq!(got.dtype(), DType::F32, "bf16 weights give f32 outputs");
                assert_matmul(
                    &host(got),
                    &x_host,
                    &rounded,
                    shape,
                    &format!("bf16 {shape:?}"),
                );
            }
        }
    }
}

#[test]
fn compact_matmul_matches_the_dequantized_weights() {
    if !int8_here() {
        return eprintln!("no lighter weights on this backend");
    }
    on_backend(CompactMatmul);
}

/// Largest |a - b| over all entries.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

struct FixtureModels;

impl BackendTask for FixtureModels {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        for dir in fixture_dirs("forward") {
            let expected = Expected::load(&dir);
            let name = expected.name();
            let model = checkpoint::load_pretrained::<B::InnerBackend>(&dir, &device)
                .unwrap_or_else(|e| panic!("{e}"));
            let ids = int_rows(&expected.json["inputs"]["unpadded"]["input_ids"]);
            let (b, t) = (ids.len(), ids[0].len());
            let tensors = read_tensors(&dir.join("expected.safetensors"));
            let margins = &tensors["unpadded.logits.margin"].values;
            let input = Tensor::<B::InnerBackend, 2, Int>::from_data(
                TensorData::new(ids.concat(), [b, t]),
                &device,
            );
            let reference = host(model.forward(input.clone(), None, None));
            let vocab = reference.len() / (b * t);
            let scale = reference.iter().fold(0f32, |a, v| a.max(v.abs()));

            let mut dtypes = vec![WeightDtype::Int8];
            if on_flex() {
                dtypes.push(WeightDtype::Bf16);
            }
            for dtype in dtypes {
                let light = model.clone().with_weight_dtype(dtype);
                assert_eq!(light.weight_dtype(), dtype, "{name}");
                let logits = host(light.forward(input.clone(), None, None));
                // Against the same model in float32 with the weights the format stands for:
                // only the order of the f32 sums differs.
                let widened = host(widened(&light).forward(input.clone(), None, None));
                let noise = max_diff(&logits, &widened);
                assert!(
                    noise <= 1e-5 * scale,
                    "{name} {dtype}: logits differ from float32 on the same weights by {noise}"
                );
                let diff = max_diff(&logits, &reference);
                let c = &model.config;
                let matmuls = 6 * c.num_hidden_layers + 1 + 2 * c.has_projections() as usize;
                let tol = tolerance(dtype, matmuls, scale);
                eprintln!("{name} {dtype}: max |logit - f32| {diff:.3e} (tolerance {tol:.3e}, max |logit| {scale:.2}); same weights in f32: {noise:.1e}");
                assert!(
                    diff <= tol,
                    "{name} {dtype}: logits differ from float32 by {diff} > {tol}"
                );
                // Greedy tokens equal where float32's top-2 margin leaves room for the error.
                for (pos, &margin) in margins.iter().enumerate() {
                    if margin > (2.0 * tol as f64).max(0.1) {
                        let row = |l: &[f32]| argmax(&l[pos * vocab..(pos + 1) * vocab]);
                        assert_eq!(
                            row(&logits),
                            row(&reference),
                            "{name} {dtype}: argmax at {pos}"
                        );
                    }
                }
                // Prefill then decoding one token at a time (flex: the tiled kernel) gives the
                // logits of the full forward.
                let split = t / 2;
                let mut cache = KvCache::new(&light.config, b, t, &device);
                let mut decoded = vec![Vec::new(); b];
                let prefill = light.forward(
                    input.clone().slice([0..b, 0..split]),
                    None,
                    Some(&mut cache),
                );
                push_rows(&mut decoded, host(prefill), split);
                for pos in split..t {
                    let step = light.forward(
                        input.clone().slice([0..b, pos..pos + 1]),
                        None,
                        Some(&mut cache),
                    );
                    push_rows(&mut decoded, host(step), 1);
                }
                let noise = max_diff(&decoded.concat(), &widened);
                eprintln!(
                    "{name} {dtype}: cached decoding vs the same weights in f32: {noise:.1e}"
                );
                assert!(noise <= 1e-5 * scale, "{name} {dtype}: cached decoding differs from float32 on the same weights by {noise}");
            }
        }
    }
}

/// `light` with every converted weight back in float32 (the values the format stands for).
fn widened<B: Backend>(light: &Opt<B>) -> Opt<B> {
    let mut model = light.clone();
    // Dequantized in their [out, in] storage order (cubecl's `dequantize` of a transposed
    // quantized view is wrong; its matmul with one is right).
    let widen_view = |w: Tensor<B, 2>| w.transpose().dequantize().cast(DType::F32).transpose();
    let widen = |l: &mut Linear<B>| l.weight = l.weight.clone().map(widen_view);
    model.linears_mut().into_iter().for_each(widen);
    model.lm_head = model.lm_head.map(|w| w.dequantize().cast(DType::F32));
    model
}

/// Appends each batch row's logits to `rows`.
fn push_rows(rows: &mut [Vec<f32>], logits: Vec<f32>, t: usize) {
    let per_row = logits.len() / rows.len();
    assert_eq!(per_row % t, 0);
    for (row, chunk) in rows.iter_mut().zip(logits.chunks(per_row)) {
        row.extend_from_slice(chunk);
    }
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best })
}

/// How far the logits of a model with `dtype` weights may be from float32's, for logits up to
/// `scale` in size after `matmuls` weight matmuls on the path of a token (6 per layer, the
/// projections and the head).
/// - bf16 keeps 8 significant bits: each weight moves by at most 2^-9 of itself, rms
///   ε = 2^-9/√3 ≈ 0.0011.
/// - int8: a weight moves by at most half a step, the step being its block's max |w| / 127
///   (`compact_matmul_matches_the_dequantized_weights` checks that bound). Rounding errors are
///   uniform: rms step/√12. For normal weights the max of a block of 32..128 is about 3σ, so the
///   rms relative error of a weight is ε = 3/127/√12 ≈ 0.0068.
///
/// Independent errors of `matmuls` matmuls in sequence add in quadrature: the logits move by
/// about ε·√matmuls of their size. The bound is 4 times that (4 standard deviations) of the
/// largest logit.
fn tolerance(dtype: WeightDtype, matmuls: usize, scale: f32) -> f32 {
    match dtype {
        WeightDtype::F32 => 0.0,
        WeightDtype::Bf16 => 4.0 * (2f32.powi(-9) / 3f32.sqrt()) * (matmuls as f32).sqrt() * scale,
        WeightDtype::Int8 => 4.0 * (3.0 / 127.0 / 12f32.sqrt()) * (matmuls as f32).sqrt() * scale,
    }
}

#[test]
fn bf16_and_int8_models_track_float32() {
    if !int8_here() {
        return eprintln!("no lighter weights on this backend");
    }
    on_backend(FixtureModels);
}
