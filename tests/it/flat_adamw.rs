//! The flat AdamW of the training loop against Burn's own AdamW (one optimizer per parameter
//! tensor, with the global-norm clip): the same gradients for 10 updates, with clipping active
//! and one update skipped for a non-finite gradient, give the same parameters within 1e-6
//! relative, for both decay rules.

use crate::common::on_backend;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use opt::model::{Opt, OptConfig};
use opt::train::bucket::flatten_grads;
use opt::train::precision::compute_loss;
use opt::train::{
    clip_grad_norm, init_model, AdamWSettings, Clip, DecayRule, FlatAdamW, PerTensorAdamW,
    Precision,
};
use opt::BackendTask;

const STEPS: u64 = 10;
/// The update whose gradients get a NaN: both optimizers must leave everything as it was.
const NAN_STEP: u64 = 5;

struct FlatEqualsPerTensor;

impl BackendTask for FlatEqualsPerTensor {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        let _rng = crate::common::rng_lock();
        for decay in [DecayRule::All, DecayRule::Matrices] {
            run::<B>(decay, &device);
        }
    }
}

fn run<B: AutodiffBackend>(decay: DecayRule, device: &B::Device) {
    let config = OptConfig {
        max_position_embeddings: 32,
        ..OptConfig::with_shape(96, 32, 2, 2)
    };
    B::seed(device, 11);
    let start: Opt<B> = init_model::<B>(&config, 0.02, device);
    let settings = AdamWSettings {
        decay,
        ..AdamWSettings::default()
    };
    let mut reference = PerTensorAdamW::<Opt<B>, B>::new(&settings);
    let mut flat = FlatAdamW::<B>::new(&settings, &start, device);
    let (mut a, mut b) = (start.clone(), start);
    // Large enough that the first updates are clipped (norm ~ 1) and the later ones are not.
    let max_norm = 0.5;
    let mut clipped = 0;
    for step in 1..=STEPS {
        let lr = 1e-2 * step as f64 / STEPS as f64;
        let tokens: Vec<i64> = (0..2 * 16)
            .map(|i| (i * 7 + step as i64 * 13) % 96)
            .collect();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(tokens, [2, 16]), device);
        let loss = compute_loss(
            Precision::F32,
            &a,
            ids.clone().slice([0..2, 0..15]),
            ids.slice([0..2, 1..16]),
            1.0,
        );
        let value = loss.clone().inner();
        let mut grads = GradientsParams::from_grads(loss.backward(), &a);
        if step == NAN_STEP {
            poison(&a, &mut grads);
        }
        let flat_grads = flatten_grads(&a, &grads, value);
        let clip = Clip {
            max_norm,
            grad_scale: 1.0,
        };
        let before = b.clone();
        let (updated, report) = flat.step(lr, b, flat_grads, clip);
        b = updated;
        if step == NAN_STEP {
            assert!(report.skipped, "a NaN gradient skips the update");
            assert_eq!(
                values(&b),
                values(&before),
                "a skipped update changes nothing"
            );
            continue;
        }
        assert!(!report.skipped);
        let (norm, coef) = clip_grad_norm(&a, &mut grads, max_norm);
        // The same squares summed in another order (one flat sum against per-tensor sums; ndarray
        // sums a buffer sequentially): float32 rounding, ~1e-6 relative here.
        assert!(
            (report.grad_norm - norm).abs() <= 1e-5 * norm,
            "step {step}: norm {} vs {norm}",
            report.grad_norm
        );
        clipped += (coef < 1.0) as usize;
        a = reference.step(lr, a, grads);
    }
    assert!(clipped >= 1, "some update was clipped");
    assert_eq!(flat.time(), STEPS - 1, "the skipped update is not counted");
    // Per tensor, the largest difference relative to the tensor's largest value, or to 1e-3 (the
    // first update's lr, about what Adam moves a parameter by) for a tensor that stays near zero
    // (k_proj's bias: its gradient is zero up to rounding, softmax ignores a shift of all keys).
    // An elementwise ratio would be meaningless for elements the updates moved near zero.
    let mut worst = 0.0f64;
    for (i, (w, g)) in values(&a).iter().zip(values(&b)).enumerate() {
        let scale = w.iter().fold(1e-3f64, |m, x| m.max(x.abs()));
        let diff = w
            .iter()
            .zip(&g)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        worst = worst.max(diff / scale);
        assert!(
            diff <= 1e-6 * scale,
            "{decay:?}: parameter tensor {i}: max |flat - per-tensor| {diff:.3e}, max |value| {scale:.3e}"
        );
    }
    println!("{decay:?}: {clipped} of {STEPS} updates clipped; max relative diff {worst:.2e}");
}

/// Every parameter tensor's values, in visit order.
fn values<B: AutodiffBackend>(model: &Opt<B>) -> Vec<Vec<f64>> {
    struct All(Vec<Vec<f64>>);
    impl<B: Backend> ModuleVisitor<B> for All {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let v = p
                .val()
                .into_data()
                .convert::<f64>()
                .to_vec::<f64>()
                .unwrap();
            self.0.push(v);
        }
    }
    let mut all = All(Vec::new());
    model.valid().visit(&mut all);
    all.0
}

/// Put a NaN into the first gradient of the first layer's fc1 weight.
fn poison<B: AutodiffBackend>(model: &Opt<B>, grads: &mut GradientsParams) {
    let id = model.layers[0].fc1.weight.id;
    let g = grads.remove::<B::InnerBackend, 2>(id).unwrap();
    let [r, c] = g.dims();
    let nan = Tensor::<B::InnerBackend, 2>::full([1, 1], f32::NAN, &g.device());
    grads.register::<B::InnerBackend, 2>(id, g.slice_assign([0..1, 0..1], nan).reshape([r, c]));
}

#[test]
fn flat_adamw_equals_burns_adamw_after_ten_steps() {
    on_backend(FlatEqualsPerTensor);
}

/// A checkpoint from before the flat optimizer (its `state.json` has no `format`, its AdamW state
/// is per tensor) is refused by name on resume, not read as something else.
struct OldCheckpoint;

impl BackendTask for OldCheckpoint {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        use crate::train_loop::{generated_tokens, small_config};
        use opt::train::{train, TrainData};
        let _rng = crate::common::rng_lock();
        let mut config = small_config(1);
        config.checkpoint_every = 1;
        let data = TrainData {
            train: generated_tokens(5_000, 64).into(),
            valid: Vec::new().into(),
        };
        let out = tempfile::tempdir().unwrap();
        let go = |resume| {
            train::<B>(&config, &data, out.path(), resume, &device, |_| {
                std::ops::ControlFlow::Continue(())
            })
        };
        go(false).unwrap();
        let state_path = out.path().join("checkpoints/step-1/state.json");
        let mut state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
        assert_eq!(state["format"], 2, "{state}");
        state.as_object_mut().unwrap().remove("format");
        std::fs::write(&state_path, state.to_string()).unwrap();
        let message = go(true)
            .map(|_| ())
            .expect_err("an old checkpoint is refused")
            .to_string();
        assert!(
            message.contains("step-1 is in format 0 (per-tensor AdamW state"),
            "{message}"
        );
    }
}

#[test]
fn a_checkpoint_from_before_the_flat_optimizer_is_refused_by_name() {
    on_backend(OldCheckpoint);
}
