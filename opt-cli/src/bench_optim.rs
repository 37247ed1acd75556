//! `opt bench optimizer`: one AdamW update with the global-norm clip, the training loop's flat
//! optimizer against Burn's per-tensor AdamW (the loop's optimizer before issue 22), on the same
//! model and random gradients, timed in the same process.

use std::time::Instant;

use anyhow::{bail, Result};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Distribution;
use clap::Args;
use opt::model::Opt;
use opt::train::{
    clip_grad_norm, init_model, AdamWSettings, Clip, FlatAdamW, PerTensorAdamW, INIT_STD,
};
use opt::{BackendKind, BackendTask};
use serde_json::json;

use crate::measure::{find_preset, median, threads};

/// Arguments of `opt bench optimizer`.
#[derive(Args, Clone)]
pub struct BenchOptimArgs {
    #[arg(long, default_value = "125m")]
    pub preset: String,
    /// Timed updates of each optimizer (after one untimed update).
    #[arg(long, default_value_t = 5)]
    pub updates: usize,
    #[arg(long, default_value = "flex")]
    pub backend: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `opt bench optimizer ...`
pub fn run(a: BenchOptimArgs) -> Result<()> {
    opt::backend::run(a.backend.parse::<BackendKind>()?, BenchOptim(a))?
}

struct BenchOptim(BenchOptimArgs);

impl BackendTask for BenchOptim {
    type Output = Result<()>;
    const TRAINS: bool = true;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let a = self.0;
        if a.updates == 0 {
            bail!("--updates must be at least 1");
        }
        let p = find_preset(&a.preset)?;
        let model: Opt<B> = init_model(&p.config, INIT_STD, &device);
        let tensors = count_tensors(&model);
        let settings = AdamWSettings::default();
        let clip = Clip {
            max_norm: 1.0,
            grad_scale: 1.0,
        };

        // Burn's AdamW, tensor by tensor, with the per-tensor visits of the global clip.
        let mut per_tensor = PerTensorAdamW::<Opt<B>, B>::new(&settings);
        let mut m = model.clone();
        let mut before = Vec::new();
        for i in 0..=a.updates {
            let mut grads = random_grads(&m, &device);
            B::sync(&device)?;
            let started = Instant::now();
            clip_grad_norm(&m, &mut grads, clip.max_norm);
            m = per_tensor.step(1e-4, m, grads);
            B::sync(&device)?;
            if i > 0 {
                before.push(started.elapsed().as_secs_f64());
            }
        }
        drop(m);

        // The loop's flat AdamW: the clip, skip and update as whole-buffer ops.
        let mut flat = FlatAdamW::<B>::new(&settings, &model, &device);
        let n = p.config.num_params();
        let mut m = model;
        let mut after = Vec::new();
        for i in 0..=a.updates {
            let grads = Tensor::<B::InnerBackend, 1>::random(
                [n + 1],
                Distribution::Normal(0.0, 1e-3),
                &device,
            );
            B::sync(&device)?;
            let started = Instant::now();
            (m, _) = flat.step(1e-4, m, grads, clip);
            B::sync(&device)?;
            if i > 0 {
                after.push(started.elapsed().as_secs_f64());
            }
        }
        let (before, after) = (median(before), median(after));
        // Ops per parameter tensor in Burn's path: AdamW 15 (moments 7, bias corrections and the
        // step 5, decay and update 3) and the clip's 4 (square, sum, accumulate, scale).
        let ops_before = 19 * tensors;
        let setup = json!({
            "preset": p.name, "backend": a.backend, "params": n, "tensors": tensors,
            "threads": threads(), "timed_updates": a.updates,
        });
        if a.json {
            let mut v = setup;
            v["per_tensor_seconds"] = before.into();
            v["flat_seconds"] = after.into();
            v["per_tensor_ops"] = ops_before.into();
            v["flat_ops"] = FLAT_OPS.into();
            println!("{v}");
        } else {
            println!(
                "bench optimizer {setup}\n  per-tensor AdamW + clip: {:.1} ms per update (~{ops_before} backend ops)\n  flat AdamW + clip:       {:.1} ms per update (~{FLAT_OPS} backend ops, whatever the number of tensors)\n  {:.2}x",
                before * 1e3,
                after * 1e3,
                before / after
            );
        }
        Ok(())
    }
}

/// Backend ops of one flat update (`FlatAdamW::step`, counted in its code): 19 over whole
/// buffers (squares and their sum 2, the skip's masks 2, second moment 3, first moment 3, the
/// step's denominator 5, the parameters' concatenation 1, decay 1, update 2; +1 with a no-decay
/// mask) and 21 on [1] tensors (the loss's copy, norm, clip coefficient, skip flag, factors, the
/// one read).
const FLAT_OPS: usize = 40;

fn count_tensors<B: Backend>(model: &Opt<B>) -> usize {
    struct Count(usize);
    impl<B: Backend> ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(&mut self, _: &Param<Tensor<B, D>>) {
            self.0 += 1;
        }
    }
    let mut c = Count(0);
    model.visit(&mut c);
    c.0
}

fn random_grads<B: AutodiffBackend>(model: &Opt<B>, device: &B::Device) -> GradientsParams {
    struct Fill<'a, B: AutodiffBackend>(GradientsParams, &'a B::Device);
    impl<B: AutodiffBackend> ModuleVisitor<B> for Fill<'_, B> {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let shape = p.lazy_shape();
            let g = Tensor::<B::InnerBackend, D>::random(
                shape,
                Distribution::Normal(0.0, 1e-3),
                self.1,
            );
            self.0.register::<B::InnerBackend, D>(p.id, g);
        }
    }
    let mut fill = Fill::<B>(GradientsParams::new(), device);
    model.visit(&mut fill);
    fill.0
}
