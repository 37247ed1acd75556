//! Data-parallel training on Burn's collective, as CI can run it: several workers sharing the one
//! CPU device. Two workers of two micro-batches each must train like one worker of four (same
//! losses, gradient norms and weights, to float rounding), with dropout too (masks are keyed by the
//! micro-batch's place in the update, not by the worker); a resumed run repeats a straight one; a
//! failing worker ends the run with its rank and cause, and the last checkpoint still loads.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use opt::model::Opt;
use opt::train::{train, train_parallel, Fault, Topology, TrainConfig, TrainData, TrainError};
use opt::BackendTask;

use crate::common::on_backend;
use crate::train_loop::{generated_tokens, read_metrics, small_config};

/// 4 steps of 4 micro-batches of 2 x 32 tokens.
fn config(dropout: f64) -> TrainConfig {
    let mut c = small_config(4);
    c.micro_batch = 2;
    c.grad_accum = 4;
    c.model.dropout = dropout;
    c
}

fn data() -> TrainData {
    TrainData {
        train: generated_tokens(20_000, 64).into(),
        valid: generated_tokens(2_000, 64).into(),
    }
}

fn workers<B: AutodiffBackend>(
    config: &TrainConfig,
    out: &std::path::Path,
    resume: bool,
    n: usize,
    topology: &Topology,
    device: &B::Device,
) -> Result<Opt<B>, TrainError> {
    let devices = vec![device.clone(); n];
    let mut on_step = |_: &_| ControlFlow::Continue(());
    train_parallel::<B>(
        config,
        &data(),
        out,
        resume,
        &devices,
        topology,
        &mut on_step,
    )
    .map(|(model, _)| model)
}

/// Every float parameter, in visit order.
fn weights<B: Backend>(model: &Opt<B>) -> Vec<f32> {
    struct All(Vec<f32>);
    impl<B: Backend> ModuleVisitor<B> for All {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let v = p.val().into_data().convert::<f32>();
            self.0.extend(v.to_vec::<f32>().unwrap());
        }
    }
    let mut all = All(Vec::new());
    model.visit(&mut all);
    all.0
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-12)
}

struct Equivalence;
impl BackendTask for Equivalence {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        let _rng = crate::common::rng_lock();
        for dropout in [0.0, 0.1] {
            let config = config(dropout);
            let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let alone = train::<B>(&config, &data(), one.path(), false, &device, |_| {
                ControlFlow::Continue(())
            })
            .unwrap()
            .0;
            let pair =
                workers::<B>(&config, two.path(), false, 2, &Topology::default(), &device).unwrap();
            let (a, b) = (read_metrics(one.path()), read_metrics(two.path()));
            assert_eq!((a.len(), b.len()), (4, 4));
            let mut worst = 0f64;
            for (x, y) in a.iter().zip(&b) {
                for (what, u, v) in [
                    ("loss", x.loss, y.loss),
                    ("grad norm", x.grad_norm, y.grad_norm),
                ] {
                    let r = relative(u, v);
                    worst = worst.max(r);
                    assert!(
                        r < 1e-6,
                        "dropout {dropout}, step {}: {what} {u} (1 worker) vs {v} (2 workers)",
                        x.step
                    );
                }
            }
            let (wa, wb) = (weights(&alone.valid()), weights(&pair.valid()));
            assert_eq!(wa.len(), wb.len());
            let scale = wa.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = wa
                .iter()
                .zip(&wb)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            println!(
                "dropout {dropout}: 2 workers x 2 vs 1 x 4 micro-batches over 4 steps: worst loss/grad-norm \
                 difference {worst:.1e} relative; weights max |diff| {diff:.1e} (max |w| {scale:.3})"
            );
            assert!(
                diff <= 1e-6 * scale,
                "weights differ by {diff} (scale {scale})"
            );
        }
    }
}

#[test]
fn two_workers_train_like_one() {
    on_backend(Equivalence);
}

struct Resume;
impl BackendTask for Resume {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        let _rng = crate::common::rng_lock();
        let mut config = config(0.1);
        config.checkpoint_every = 1;
        let topology = Topology::default();
        let straight = tempfile::tempdir().unwrap();
        workers::<B>(&config, straight.path(), false, 2, &topology, &device).unwrap();
        let split = tempfile::tempdir().unwrap();
        let mut half = config.clone();
        half.max_steps = 2;
        workers::<B>(&half, split.path(), false, 2, &topology, &device).unwrap();
        workers::<B>(&config, split.path(), true, 2, &topology, &device).unwrap();
        let (a, b) = (read_metrics(straight.path()), read_metrics(split.path()));
        assert_eq!(b.len(), 4);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (x.loss.to_bits(), x.grad_norm.to_bits()),
                (y.loss.to_bits(), y.grad_norm.to_bits()),
                "step {}: straight {x:?} vs resumed {y:?}",
                x.step
            );
        }
        // The same run resumed on one worker: the same tokens per update, summed in another order.
        let other = tempfile::tempdir().unwrap();
        workers::<B>(&half, other.path(), false, 2, &topology, &device).unwrap();
        train::<B>(&config, &data(), other.path(), true, &device, |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        let c = read_metrics(other.path());
        let worst = a
            .iter()
            .zip(&c)
            .map(|(x, y)| relative(x.loss, y.loss))
            .fold(0f64, f64::max);
        println!("2 workers resumed at step 2 repeat the straight run bit for bit; resumed on 1 worker: worst loss difference {worst:.1e} relative (dropout 0.1)");
        assert!(worst < 1e-6, "resumed on one worker: {worst}");
    }
}

#[test]
fn resumed_data_parallel_run_repeats_the_straight_one() {
    on_backend(Resume);
}

struct Failure;
impl BackendTask for Failure {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        let _rng = crate::common::rng_lock();
        let mut config = config(0.0);
        config.checkpoint_every = 1;
        for panic in [false, true] {
            let out = tempfile::tempdir().unwrap();
            let topology = Topology {
                fault: Some(Fault {
                    rank: 1,
                    step: 3,
                    panic,
                }),
                ..Topology::default()
            };
            let started = Instant::now();
            let result = workers::<B>(&config, out.path(), false, 2, &topology, &device);
            let took = started.elapsed();
            let Err(e) = result else {
                panic!("a failing worker must end the run")
            };
            let text = e.to_string();
            println!("worker fault (panic: {panic}) ended the run in {took:.1?}: {text}");
            assert!(
                matches!(e, TrainError::Worker { rank: 1, .. }) && text.contains("step 3"),
                "the error names the rank and the cause: {text}"
            );
            assert!(took < Duration::from_secs(60));
            // Step 2's checkpoint is complete and resumes.
            let mut resumed = config.clone();
            resumed.max_steps = 3;
            workers::<B>(&resumed, out.path(), true, 2, &Topology::default(), &device).unwrap();
            assert_eq!(read_metrics(out.path()).last().unwrap().step, 3);
        }
        // A worker count that does not divide the update is refused, with the numbers.
        let out = tempfile::tempdir().unwrap();
        let Err(e) = workers::<B>(&config, out.path(), false, 3, &Topology::default(), &device)
        else {
            panic!("3 workers cannot share 4 micro-batches")
        };
        assert!(
            e.to_string()
                .contains("3 workers cannot share an update of 4 micro-batches"),
            "{e}"
        );
    }
}

#[test]
fn failing_worker_ends_the_run() {
    on_backend(Failure);
}
