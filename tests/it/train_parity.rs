//! One-batch training parity with PyTorch (HF OPT + torch AdamW + clip_grad_norm_), through the
//! training loop's flat AdamW ([`FlatAdamW`], clip included), for every
//! `train_step` fixture under `$OPT_HF_FIXTURES`: loss, grad norm, clip coefficient, raw gradients
//! and parameters after each recorded step, for each weight-decay variant.

use std::collections::HashMap;
use std::path::Path;

use crate::common::{
    assert_close, fixture_dirs, int_rows, on_backend, read_tensors, Expected, Stored, Tol,
};
use burn::module::{AutodiffModule, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use opt::model::{checkpoint, loss, Opt};
use opt::train::bucket::flatten_grads;
use opt::train::precision::compute_loss;
use opt::train::{AdamWSettings, Clip, DecayRule, FlatAdamW, LrSchedule, Precision};
use opt::BackendTask;

struct TrainParity;

impl BackendTask for TrainParity {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) {
        for dir in fixture_dirs("train_step") {
            let expected = Expected::load(&dir);
            for (variant, spec) in expected.json["variants"].as_object().unwrap() {
                run_variant::<B>(&expected, variant, spec, &device);
            }
        }
    }
}

fn run_variant<B: AutodiffBackend>(
    expected: &Expected,
    variant: &str,
    spec: &serde_json::Value,
    device: &B::Device,
) {
    let name = format!("{} {variant}", expected.name());
    let train = &expected.json["train"];
    let mut model: Opt<B> = checkpoint::load_pretrained(&expected.dir, device).unwrap();
    let ids = int_rows(&expected.json["inputs"]["input_ids"]);
    let (b, t) = (ids.len(), ids[0].len());
    let input = || Tensor::<B, 2, Int>::from_data(TensorData::new(ids.concat(), [b, t]), device);
    let shifted = |cols: std::ops::Range<usize>| input().slice([0..b, cols]);

    // The decay rule must put exactly the fixture's tensors in the decayed group.
    let not_decayed: Vec<String> = spec["not_decayed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().into())
        .collect();
    let rule = if not_decayed.is_empty() {
        DecayRule::All
    } else {
        DecayRule::Matrices
    };
    if rule == DecayRule::Matrices {
        let mut ours: Vec<String> = checkpoint::hf_tensor_shapes(&model.config)
            .into_iter()
            .filter(|(_, s)| s.len() < 2)
            .map(|(n, _)| n)
            .collect();
        let mut theirs = not_decayed.clone();
        ours.sort();
        theirs.sort();
        assert_eq!(ours, theirs, "{name}: not-decayed group");
    }
    let betas = train["betas"].as_array().unwrap();
    let settings = AdamWSettings {
        beta1: betas[0].as_f64().unwrap() as f32,
        beta2: betas[1].as_f64().unwrap() as f32,
        eps: train["eps"].as_f64().unwrap() as f32,
        weight_decay: train["weight_decay"].as_f64().unwrap() as f32,
        decay: rule,
    };
    let mut optim = FlatAdamW::<B>::new(&settings, &model, device);
    let max_lr = train["max_lr"].as_f64().unwrap();
    let warmup = train["warmup_steps"].as_u64().unwrap();
    let schedule = LrSchedule {
        max_lr,
        warmup_steps: warmup,
        total_steps: 1_000_000,
        final_ratio: 0.1,
    };
    let clip = train["clip_max_norm"].as_f64().unwrap();
    let tol = |k: &str| expected.tol(k);
    let grads1 = read_tensors(&expected.dir.join("grads_step1.safetensors"));
    let mut clip_coef_1 = 1.0;

    for (k, step) in spec["steps"].as_array().unwrap().iter().enumerate() {
        let k = k as u64 + 1;
        let lr = schedule.lr(k);
        assert_close(
            &format!("{name} lr step {k}"),
            &[lr],
            &[step["lr"].as_f64().unwrap()],
            Tol {
                atol: 1e-15,
                rtol: 1e-12,
            },
            None,
        );
        // The training path: fused attention and the chunked LM head + loss. Position t
        // predicts token t + 1, as in HF's shifted loss; the last token is not fed.
        let loss = compute_loss(
            Precision::F32,
            &model,
            shifted(0..t - 1),
            shifted(1..t),
            1.0,
        );
        let loss_value = loss.clone().into_scalar().elem::<f64>();
        let d = assert_close(
            &format!("{name} loss step {k}"),
            &[loss_value],
            &[step["loss"].as_f64().unwrap()],
            tol("loss"),
            None,
        );
        let loss_inner = loss.clone().inner();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        if k == 1 {
            let ours = grads_by_hf_name(&model, &grads);
            let mut worst = 0.0f64;
            for (n, want) in &grads1 {
                worst = worst.max(assert_close(
                    &format!("{name} grad {n}"),
                    &ours[n].values,
                    &want.values,
                    tol("grads"),
                    None,
                ));
            }
            println!("{name}: raw step-1 gradients max |diff| = {worst:.3e}");
        }
        let flat = flatten_grads(&model, &grads, loss_inner);
        let clip = Clip {
            max_norm: clip,
            grad_scale: 1.0,
        };
        let (updated, report) = optim.step(lr, model, flat, clip);
        model = updated;
        let (norm, coef) = (report.grad_norm, report.clip_coef);
        let dn = assert_close(
            &format!("{name} grad_norm step {k}"),
            &[norm],
            &[step["grad_norm"].as_f64().unwrap()],
            tol("grad_norm"),
            None,
        );
        let dc = assert_close(
            &format!("{name} clip_coef step {k}"),
            &[coef],
            &[step["clip_coef"].as_f64().unwrap()],
            tol("clip_coef"),
            None,
        );
        if k == 1 {
            clip_coef_1 = step["clip_coef"].as_f64().unwrap();
        }
        println!(
            "{name} step {k}: loss diff {d:.2e}, grad_norm diff {dn:.2e}, clip_coef diff {dc:.2e}"
        );
        if let Some(file) = spec["snapshots"]
            .get(k.to_string())
            .and_then(|f| f.as_str())
        {
            check_params(
                expected,
                &name,
                &model,
                &expected.dir.join(file),
                &grads1,
                clip_coef_1,
                k,
            );
        }
    }
    let logits = model.forward(input(), None, None);
    let after = loss::causal_lm_loss(logits, input())
        .into_scalar()
        .elem::<f64>();
    assert_close(
        &format!("{name} loss after last step"),
        &[after],
        &[spec["loss_after_last_step"].as_f64().unwrap()],
        tol("loss"),
        None,
    );
}

/// Parameters after `k` steps against the snapshot, with the fixture's sensitive-element rule.
fn check_params<B: AutodiffBackend>(
    expected: &Expected,
    name: &str,
    model: &Opt<B>,
    snapshot: &Path,
    grads1: &HashMap<String, Stored>,
    clip_coef_1: f64,
    k: u64,
) {
    let rule = &expected.json["tolerances"]["params_sensitive"];
    let threshold = rule["threshold"].as_f64().unwrap();
    let sensitive_tol = Tol {
        atol: rule["atol"].as_f64().unwrap(),
        rtol: 0.0,
    };
    let always: Vec<String> = rule["always_sensitive"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().trim_start_matches('*').to_string())
        .collect();
    let strict = expected.tol("params");
    let ours = params_by_hf_name(model);
    let (mut worst_strict, mut worst_sensitive) = (0.0f64, 0.0f64);
    for (n, want) in read_tensors(snapshot) {
        let got = &ours[&n].values;
        let g1 = &grads1[&n].values;
        let all_sensitive = always.iter().any(|suffix| n.ends_with(suffix.as_str()));
        let sensitive: Vec<bool> = g1
            .iter()
            .map(|g| {
                all_sensitive || (g.abs() * clip_coef_1 > 0.0 && g.abs() * clip_coef_1 < threshold)
            })
            .collect();
        let not: Vec<bool> = sensitive.iter().map(|s| !s).collect();
        worst_strict = worst_strict.max(assert_close(
            &format!("{name} step {k} {n}"),
            got,
            &want.values,
            strict,
            Some(&not),
        ));
        worst_sensitive = worst_sensitive.max(assert_close(
            &format!("{name} step {k} {n} (sensitive)"),
            got,
            &want.values,
            sensitive_tol,
            Some(&sensitive),
        ));
    }
    println!("{name}: params after step {k}: strict max |diff| = {worst_strict:.3e}, sensitive max |diff| = {worst_sensitive:.3e}");
}

/// Every parameter, by HF name (via our HF writer).
fn params_by_hf_name<B: Backend>(model: &Opt<B>) -> HashMap<String, Stored> {
    let dir = tempfile::tempdir().unwrap();
    checkpoint::save_pretrained(model, dir.path()).unwrap();
    read_tensors(&dir.path().join("model.safetensors"))
}

/// Gradients by HF name: a copy of the model whose parameters are replaced by their gradients.
fn grads_by_hf_name<B: AutodiffBackend>(
    model: &Opt<B>,
    grads: &GradientsParams,
) -> HashMap<String, Stored> {
    struct Swap<'a>(&'a GradientsParams);
    impl<IB: Backend> ModuleMapper<IB> for Swap<'_> {
        fn map_float<const D: usize>(
            &mut self,
            param: Param<Tensor<IB, D>>,
        ) -> Param<Tensor<IB, D>> {
            let (id, tensor, mapper) = param.consume();
            let g = self
                .0
                .get::<IB, D>(id)
                .unwrap_or_else(|| tensor.zeros_like());
            Param::from_mapped_value(id, g, mapper)
        }
    }
    params_by_hf_name(&model.valid().map(&mut Swap(grads)))
}

#[test]
fn train_steps_match_pytorch() {
    on_backend(TrainParity);
}
