//! float16 training with metaseq's dynamic loss scaling, through the training loop: an overflow
//! skips the update and halves the scale, a clean window doubles it, the scale survives a resume
//! exactly, and a 200-step `tiny` run's losses stay within 1% of float32's (on flex). On backends
//! without float16 compute the tests say so and return.

use std::ops::ControlFlow;
use std::path::Path;

use crate::common::on_backend;
use crate::train_loop::{generated_tokens, read_metrics, small_config};
use burn::tensor::backend::AutodiffBackend;
use opt::train::{train, LossScaleSettings, Precision, StepMetrics, TrainConfig, TrainData};
use opt::BackendTask;

fn f16_config(steps: u64, settings: LossScaleSettings) -> TrainConfig {
    let mut c = small_config(steps);
    c.precision = Precision::F16;
    c.loss_scale = settings;
    c
}

fn data() -> TrainData {
    TrainData {
        train: generated_tokens(20_000, 64).into(),
        valid: Vec::new().into(),
    }
}

fn run<B: AutodiffBackend>(config: &TrainConfig, out: &Path, resume: bool, device: &B::Device) {
    train::<B>(config, &data(), out, resume, device, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
}

fn has_f16<B: AutodiffBackend>(device: &B::Device) -> bool {
    let yes = Precision::F16.supported::<B>(device);
    if !yes {
        println!("skipped: this backend has no float16 compute");
    }
    yes
}

fn scales(m: &[StepMetrics]) -> Vec<f64> {
    m.iter()
        .map(|m| m.loss_scale.expect("f16 metrics carry the scale"))
        .collect()
}

struct Overflow;
impl BackendTask for Overflow {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        let _rng = crate::common::rng_lock();
        if !has_f16::<B>(&device) {
            return;
        }
        // 2^40 times a logit gradient of ~1e-3 is far above float16's 65504: the first updates
        // overflow, each halving the scale, until the gradients fit.
        let settings = LossScaleSettings {
            init: 2f64.powi(40),
            ..LossScaleSettings::default()
        };
        let out = tempfile::tempdir().unwrap();
        run::<B>(&f16_config(60, settings), out.path(), false, &device);
        let m = read_metrics(out.path());
        let s = scales(&m);
        let skipped = m.iter().take_while(|m| m.skipped).count();
        println!(
            "{skipped} overflowing updates; scales {:?}",
            &s[..skipped + 2]
        );
        assert!(skipped >= 10, "2^40 overflows float16 gradients");
        for (k, scale) in s.iter().take(skipped).enumerate() {
            assert_eq!(
                *scale,
                2f64.powi(40 - k as i32),
                "halved after each overflow"
            );
        }
        assert!(!m[skipped].skipped && !m[skipped + 1].skipped);
        assert_eq!(s[skipped], s[skipped - 1] / 2.0);
        // A skipped update leaves the model as it was: the first updates that ran see the
        // parameters of the init, so their loss is the init's loss on their batch, which is
        // near ln(64) for this vocabulary.
        assert!(
            (m[skipped].loss - 64f64.ln()).abs() < 0.2,
            "{}",
            m[skipped].loss
        );
        assert!(
            m.last().unwrap().loss < m[skipped].loss - 0.5,
            "training went on"
        );
    }
}

#[test]
fn an_overflow_skips_the_update_and_halves_the_scale() {
    on_backend(Overflow);
}

struct CleanWindow;
impl BackendTask for CleanWindow {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        let _rng = crate::common::rng_lock();
        if !has_f16::<B>(&device) {
            return;
        }
        let settings = LossScaleSettings {
            window: 3,
            ..LossScaleSettings::default()
        };
        let config = f16_config(10, settings);
        let out = tempfile::tempdir().unwrap();
        run::<B>(&config, out.path(), false, &device);
        let m = read_metrics(out.path());
        assert!(m.iter().all(|m| !m.skipped), "no overflow at these scales");
        assert_eq!(
            scales(&m),
            [4.0, 4.0, 4.0, 8.0, 8.0, 8.0, 16.0, 16.0, 16.0, 32.0],
            "x2 after each 3 clean updates"
        );

        // The scaler is in the checkpoint: a resume from step 5 continues it exactly.
        let mut first = config.clone();
        (first.max_steps, first.checkpoint_every) = (5, 5);
        let split = tempfile::tempdir().unwrap();
        run::<B>(&first, split.path(), false, &device);
        let state = std::fs::read_to_string(split.path().join("checkpoints/step-5/state.json"));
        let state: serde_json::Value = serde_json::from_str(&state.unwrap()).unwrap();
        assert_eq!(state["loss_scale"]["scale"], 8.0, "{state}");
        assert_eq!(state["loss_scale"]["clean"], 2, "{state}");
        run::<B>(&config, split.path(), true, &device);
        let resumed = read_metrics(split.path());
        assert_eq!(scales(&resumed), scales(&m));
        let exact = !matches!(
            opt::BackendKind::from_env().unwrap(),
            opt::BackendKind::Wgpu
        );
        for (a, b) in m.iter().zip(&resumed) {
            assert!(
                a.loss == b.loss || (!exact && (a.loss - b.loss).abs() < 1e-4),
                "step {}: {} vs resumed {}",
                a.step,
                a.loss,
                b.loss
            );
        }
    }
}

#[test]
fn a_clean_window_doubles_the_scale_and_a_resume_keeps_it() {
    on_backend(CleanWindow);
}

struct TracksF32;
impl BackendTask for TracksF32 {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        let _rng = crate::common::rng_lock();
        if !has_f16::<B>(&device) {
            return;
        }
        if opt::BackendKind::from_env().unwrap() != opt::BackendKind::Flex {
            println!("skipped: 400 updates of `tiny` run on flex only (CI time)");
            return;
        }
        // The `tiny` preset's model and recipe for 200 updates, at 4 x 128 tokens per update.
        let preset = opt::model::preset("tiny").unwrap();
        let mut config = TrainConfig::for_preset(&preset, 200, 4, Some(4 * 128));
        (config.eval_every, config.checkpoint_every) = (0, 0);
        let data = TrainData {
            train: markov_tokens(200 * 4 * 129 + 1000, 2048).into(),
            valid: Vec::new().into(),
        };
        let mut losses = Vec::new();
        for precision in [Precision::F32, Precision::F16] {
            config.precision = precision;
            let out = tempfile::tempdir().unwrap();
            train::<B>(&config, &data, out.path(), false, &device, |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
            losses.push(read_metrics(out.path()));
        }
        let (f32, f16) = (&losses[0], &losses[1]);
        let worst = f32
            .iter()
            .zip(f16)
            .map(|(a, b)| (a.loss - b.loss).abs() / a.loss)
            .fold(0.0, f64::max);
        println!(
            "200 updates: f32 {:.4} -> {:.4}, f16 {:.4} -> {:.4}; worst relative gap {worst:.2e}; \
             f16 skipped {}, final scale {:?}",
            f32[0].loss,
            f32[199].loss,
            f16[0].loss,
            f16[199].loss,
            f16.iter().filter(|m| m.skipped).count(),
            f16[199].loss_scale
        );
        assert!(f32[199].loss < 0.7 * f32[0].loss, "the run learns");
        assert!(
            worst < 0.01,
            "f16 within 1% of f32 at every update: {worst}"
        );
    }
}

/// A Markov chain over `vocab` tokens: each token is followed by the k-th of its 16 successors
/// (fixed per token) with probability 2^-(k+1) (2 bits a token once learnt). A model learns it
/// gradually, table entry by table entry, where the repeated sentences of `generated_tokens`
/// are learnt in one sudden drop whose timing any rounding moves.
fn markov_tokens(n: usize, vocab: u32) -> Vec<u32> {
    use opt::data::hash::splitmix64;
    let (mut state, mut token) = (7u64, 2u64);
    (0..n)
        .map(|_| {
            let k = splitmix64(&mut state).trailing_zeros().min(15) as u64;
            token = splitmix64(&mut (token * 16 + k)) % vocab as u64;
            token as u32
        })
        .collect()
}

#[test]
fn float16_training_tracks_float32_over_200_updates() {
    on_backend(TracksF32);
}
