//! Activation recompute (`--recompute`, `opt_train::recompute`) against the plain backward: the
//! same loss and the same gradient for every parameter, with dropout on (the masks must be
//! replayed), on a pre-LN model with fused attention and on a 350m-style post-LN model with
//! projections and attention dropout (the eager attention path); in bf16 too where the backend
//! has it.

use crate::common::{assert_close, on_backend, rng_lock, Tol};
use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use opt::model::{dropout, Opt, OptConfig};
use opt::train::{init_model, precision, recompute, Precision};
use opt::BackendTask;

/// Compares every float parameter's gradient in two gradient sets.
struct SameGrads<'a> {
    name: &'a str,
    expected: &'a GradientsParams,
    actual: &'a GradientsParams,
    tol: Tol,
    /// The tied embedding's tolerance: in bf16 the plain backward sums its two gradients (LM
    /// head, lookup) in bf16, the recompute in f32 after each segment's cast.
    tied: (ParamId, Tol),
    checked: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SameGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let get = |g: &GradientsParams| {
            g.get::<B::InnerBackend, D>(param.id)
                .unwrap_or_else(|| panic!("{}: no gradient for {}", self.name, param.id))
                .into_data()
                .convert::<f64>()
                .to_vec::<f64>()
                .unwrap()
        };
        let what = format!("{} grad {:?}", self.name, param.val().dims());
        let tol = if param.id == self.tied.0 {
            self.tied.1
        } else {
            self.tol
        };
        assert_close(&what, &get(self.actual), &get(self.expected), tol, None);
        self.checked += 1;
    }
}

struct Recompute;

impl BackendTask for Recompute {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        let _rng = rng_lock();
        let pre_ln = OptConfig {
            max_position_embeddings: 32,
            dropout: 0.1,
            ..OptConfig::with_shape(96, 32, 3, 4)
        };
        let post_ln = OptConfig {
            do_layer_norm_before: false,
            word_embed_proj_dim: Some(16),
            attention_dropout: 0.1,
            ..pre_ln.clone()
        };
        for (name, config) in [("pre-LN", pre_ln), ("post-LN + projections", post_ln)] {
            let model = init_model::<B>(&config, 0.2, &device);
            for precision in [Precision::F32, Precision::Bf16] {
                if precision.supported::<B>(&device) {
                    check(&format!("{name} {precision:?}"), &model, precision, &device);
                }
            }
        }
    }
}

/// Plain and recomputed loss and gradients of one micro-batch with the same dropout stream.
fn check<B: AutodiffBackend>(name: &str, model: &Opt<B>, precision: Precision, device: &B::Device) {
    let [b, t] = [2, 12];
    let ids: Vec<i64> = (0..b * t).map(|i| (4 + (i * 37) % 90) as i64).collect();
    let inputs = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [b, t]), device);
    // Shifted targets, the last of each row ignored.
    let labels: Vec<i64> = (0..b * t)
        .map(|i| if i % t == t - 1 { -100 } else { ids[i + 1] })
        .collect();
    let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(labels, [b, t]), device);
    let scale = 0.5;
    let key = dropout::stream_key(&[7, 1, 0]);

    dropout::begin_stream(key);
    let loss = precision::compute_loss(precision, model, inputs.clone(), targets.clone(), scale);
    let plain_loss = loss.clone().into_scalar().elem::<f64>();
    let plain = GradientsParams::from_grads(loss.backward(), model);

    dropout::begin_stream(key);
    let (loss, grads) = recompute::loss_and_grads(model, inputs, targets, scale, precision);
    let loss = loss.into_scalar().elem::<f64>();

    let tol = Tol {
        atol: 1e-6,
        rtol: 1e-5,
    };
    assert_close(&format!("{name} loss"), &[loss], &[plain_loss], tol, None);
    // bf16's unit roundoff (2⁻⁸ relative; f16's is finer) for the tied embedding in a 16-bit
    // format; f32: as the rest.
    let tied_tol = match precision {
        Precision::F32 => tol,
        Precision::Bf16 | Precision::F16 => Tol {
            atol: 1e-6,
            rtol: 1.0 / 256.0,
        },
    };
    let mut same = SameGrads {
        name,
        expected: &plain,
        actual: &grads,
        tol,
        tied: (model.embed_tokens.weight.id, tied_tol),
        checked: 0,
    };
    model.visit(&mut same);
    // 16 tensors per layer (q, k, v, out, fc1, fc2 weights and biases, two layer norms) and more.
    assert!(
        same.checked > 16 * model.layers.len(),
        "{name}: {}",
        same.checked
    );
    println!(
        "{name}: loss {loss:.6}, {} parameter gradients equal",
        same.checked
    );
}

#[test]
fn recompute_gives_the_plain_loss_and_gradients() {
    on_backend(Recompute)
}
