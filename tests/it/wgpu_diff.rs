//! Differential test, no reference files: one randomly initialised model run on flex and on wgpu
//! must give the same logits (and LM loss) within 1e-4, over the shapes where wgpu once went wrong
//! (issue 14: head_dim 8, post-LN with projections, batch 1, cached decoding) and around them.
//! Runs when the suite runs on wgpu (`OPT_BACKEND=wgpu`); a later Burn upgrade is checked the same way.

#![cfg(all(feature = "flex", feature = "wgpu"))]

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Flex, Wgpu};
use burn::prelude::*;
use opt::backend::BackendKind;
use opt::data::hash::splitmix64;
use opt::model::{checkpoint, loss, KvCache, Opt, OptConfig};
use opt::train::init_model;

/// Largest |flex - wgpu| allowed on a logit (their float32 sums are ordered differently).
const TOL: f32 = 1e-4;

/// One model shape: head width, LayerNorm placement, embedding projection.
struct Shape {
    head_dim: usize,
    pre_ln: bool,
    proj: bool,
}

impl Shape {
    fn config(&self) -> OptConfig {
        let heads = 6;
        let hidden = heads * self.head_dim;
        let mut config = OptConfig::with_shape(50272, hidden, 3, heads);
        config.ffn_dim = 4 * hidden;
        config.do_layer_norm_before = self.pre_ln;
        config.word_embed_proj_dim = self.proj.then_some(hidden / 2);
        config.dropout = 0.0;
        config.init_std = 0.2;
        config
    }

    fn name(&self) -> String {
        format!(
            "head_dim {} {}{}",
            self.head_dim,
            if self.pre_ln { "pre-LN" } else { "post-LN" },
            if self.proj { " proj" } else { "" }
        )
    }
}

/// Deterministic token ids (never the pad id 1).
fn token_rows(batch: usize, t: usize, vocab: usize, seed: u64) -> Vec<Vec<i64>> {
    let mut state = seed;
    (0..batch)
        .map(|_| {
            (0..t)
                .map(|_| 2 + (splitmix64(&mut state) % (vocab as u64 - 2)) as i64)
                .collect()
        })
        .collect()
}

fn ids<B: Backend>(rows: &[Vec<i64>], device: &B::Device) -> Tensor<B, 2, Int> {
    let (b, t) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.concat();
    Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [b * t]), device).reshape([b, t])
}

fn values<B: Backend, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    x.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// The same model on both backends: drawn on flex, written as an HF checkpoint, read on wgpu.
fn model_pair(config: &OptConfig, seed: u64) -> (Opt<Flex>, Opt<Wgpu>) {
    let dir = tempfile::tempdir().unwrap();
    let flex = {
        let _rng = crate::common::rng_lock();
        Flex::seed(&Default::default(), seed);
        init_model::<Flex>(config, config.init_std, &Default::default())
    };
    checkpoint::save_pretrained(&flex, dir.path()).unwrap();
    let wgpu = checkpoint::load_pretrained::<Wgpu>(dir.path(), &WgpuDevice::default()).unwrap();
    (flex, wgpu)
}

/// Logits of one call on each backend, with the same inputs and (optional) left padding.
struct Run<'a> {
    flex: &'a Opt<Flex>,
    wgpu: &'a Opt<Wgpu>,
    failures: Vec<String>,
    worst: f32,
}

impl Run<'_> {
    fn compare(&mut self, what: String, a: Vec<f32>, b: Vec<f32>) {
        assert_eq!(a.len(), b.len(), "{what}: lengths differ");
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(
                0.0f32,
                |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
            );
        eprintln!("{what}: max |flex - wgpu| = {diff:.2e}");
        self.worst = self.worst.max(diff);
        if diff > TOL {
            self.failures.push(format!("{what}: {diff:e}"));
        }
    }

    /// Logits of both models for the same ids, attention mask (if any) and caches (if any).
    fn logits(
        &self,
        rows: &[Vec<i64>],
        mask: Option<&[Vec<i64>]>,
        caches: Option<(&mut KvCache<Flex>, &mut KvCache<Wgpu>)>,
    ) -> (Tensor<Flex, 3>, Tensor<Wgpu, 3>) {
        let (fd, wd) = (Default::default(), WgpuDevice::default());
        let (fc, wc) = caches.map_or((None, None), |(f, w)| (Some(f), Some(w)));
        let fl = self
            .flex
            .forward(ids(rows, &fd), mask.map(|m| ids(m, &fd)), fc);
        let wg = self
            .wgpu
            .forward(ids(rows, &wd), mask.map(|m| ids(m, &wd)), wc);
        (fl, wg)
    }

    /// A full forward of `rows` (left padded by `pads`), logits and the LM loss.
    fn forward(&mut self, label: &str, rows: &[Vec<i64>], pads: &[usize]) {
        let [b, t] = [rows.len(), rows[0].len()];
        let padded = pads.iter().any(|&p| p > 0);
        let mask = pad_mask(pads, t);
        let rows: Vec<Vec<i64>> = rows
            .iter()
            .zip(&mask)
            .map(|(r, m)| {
                r.iter()
                    .zip(m)
                    .map(|(&id, &keep)| if keep == 1 { id } else { 1 })
                    .collect()
            })
            .collect();
        let (fl, wg) = self.logits(&rows, padded.then_some(&mask[..]), None);
        let what = format!(
            "{label} forward b{b} t{t}{}",
            if padded { " padded" } else { "" }
        );
        if t > 1 && !padded {
            let fl_loss = loss::causal_lm_loss(fl.clone(), ids(&rows, &Default::default()));
            let wg_loss = loss::causal_lm_loss(wg.clone(), ids(&rows, &WgpuDevice::default()));
            self.compare(format!("{what} loss"), values(fl_loss), values(wg_loss));
        }
        self.compare(format!("{what} logits"), values(fl), values(wg));
    }

    /// Prefill `prompt_len` tokens through the KV cache, then decode the rest one at a time,
    /// comparing the logits of every call.
    fn cached(&mut self, label: &str, rows: &[Vec<i64>], pads: &[usize], prompt_len: usize) {
        let [b, t] = [rows.len(), rows[0].len()];
        let config = &self.flex.config;
        let mut fc = KvCache::<Flex>::new(config, b, t, &Default::default());
        let mut wc = KvCache::<Wgpu>::new(config, b, t, &WgpuDevice::default());
        let padded = pads.iter().any(|&p| p > 0);
        let full_mask = pad_mask(pads, t);
        let mut start = 0;
        for end in std::iter::once(prompt_len).chain(prompt_len + 1..=t) {
            let chunk: Vec<Vec<i64>> = rows.iter().map(|r| r[start..end].to_vec()).collect();
            let mask: Vec<Vec<i64>> = full_mask.iter().map(|m| m[..end].to_vec()).collect();
            let (fl, wg) = self.logits(
                &chunk,
                padded.then_some(&mask[..]),
                Some((&mut fc, &mut wc)),
            );
            self.compare(
                format!("{label} cached b{b} positions {start}..{end}"),
                values(fl),
                values(wg),
            );
            start = end;
        }
    }
}

/// HF's attention mask for rows of `t` positions left padded by `pads`: 0 on pads, then 1.
fn pad_mask(pads: &[usize], t: usize) -> Vec<Vec<i64>> {
    pads.iter()
        .map(|&p| (0..t).map(|i| (i >= p) as i64).collect())
        .collect()
}

#[test]
fn flex_and_wgpu_give_the_same_logits() {
    if BackendKind::from_env().ok() != Some(BackendKind::Wgpu) {
        eprintln!("skipped: runs in the wgpu pass of the suite (OPT_BACKEND=wgpu)");
        return;
    }
    let mut failures = Vec::new();
    let mut worst = 0.0f32;
    for (i, shape) in [
        Shape {
            head_dim: 8,
            pre_ln: false,
            proj: true,
        },
        Shape {
            head_dim: 8,
            pre_ln: true,
            proj: false,
        },
        Shape {
            head_dim: 16,
            pre_ln: false,
            proj: false,
        },
        Shape {
            head_dim: 16,
            pre_ln: true,
            proj: true,
        },
    ]
    .iter()
    .enumerate()
    {
        let config = shape.config();
        let (flex, wgpu) = model_pair(&config, 1000 + i as u64);
        let mut run = Run {
            flex: &flex,
            wgpu: &wgpu,
            failures: Vec::new(),
            worst: 0.0,
        };
        let label = shape.name();
        let one = token_rows(1, 40, config.vocab_size, 7 + i as u64);
        let two = token_rows(2, 40, config.vocab_size, 70 + i as u64);
        run.forward(&label, &one, &[0]);
        run.forward(&label, &[one[0][..1].to_vec()], &[0]);
        run.forward(&label, &two, &[0, 0]);
        run.forward(&label, &two, &[13, 0]);
        let short = token_rows(2, 20, config.vocab_size, 700 + i as u64);
        run.cached(&label, &[short[0].clone()], &[0], 7);
        run.cached(&label, &short, &[6, 0], 13);
        failures.append(&mut run.failures);
        worst = worst.max(run.worst);
    }
    eprintln!("worst |flex - wgpu| over every case: {worst:.2e}");
    assert!(
        failures.is_empty(),
        "wgpu differs from flex by more than {TOL} in {} case(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
