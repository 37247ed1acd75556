//! AdamW's settings as metaseq uses them (betas 0.9/0.95, eps 1e-8, decoupled decay), with an
//! optional no-decay group; and Burn's per-tensor AdamW with a GLOBAL gradient-norm clip (Burn's
//! own clipping is per tensor), the reference that training's [`crate::FlatAdamW`] is checked
//! against and benchmarked beside (`opt bench optimizer`).

use std::marker::PhantomData;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

/// Which parameters weight decay applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DecayRule {
    /// Every parameter (metaseq: one parameter group).
    #[default]
    All,
    /// Only tensors with 2+ dims (weights and embeddings); none on biases and LayerNorms.
    Matrices,
}

/// AdamW hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWSettings {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub decay: DecayRule,
}

impl Default for AdamWSettings {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            decay: DecayRule::All,
        }
    }
}

type Adaptor<M, B> = OptimizerAdaptor<AdamW, M, B>;

/// Burn's AdamW over one or two parameter groups (decayed, not decayed), tensor by tensor.
pub struct PerTensorAdamW<M: AutodiffModule<B>, B: AutodiffBackend> {
    decayed: Adaptor<M, B>,
    not_decayed: Adaptor<M, B>,
    rule: DecayRule,
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> PerTensorAdamW<M, B> {
    /// Build the optimizer (its state starts empty).
    pub fn new(s: &AdamWSettings) -> Self {
        let config = |wd: f32| {
            AdamWConfig::new()
                .with_beta_1(s.beta1)
                .with_beta_2(s.beta2)
                .with_epsilon(s.eps)
                .with_weight_decay(wd)
        };
        Self {
            decayed: config(s.weight_decay).init(),
            not_decayed: config(0.0).init(),
            rule: s.decay,
        }
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, lr: f64, module: M, mut grads: GradientsParams) -> M {
        match self.rule {
            DecayRule::All => self.decayed.step(lr, module, grads),
            DecayRule::Matrices => {
                let mut split = Split::<B> {
                    grads: &mut grads,
                    matrices: GradientsParams::new(),
                    vectors: GradientsParams::new(),
                    backend: PhantomData,
                };
                module.visit(&mut split);
                let (matrices, vectors) = (split.matrices, split.vectors);
                let module = self.decayed.step(lr, module, matrices);
                self.not_decayed.step(lr, module, vectors)
            }
        }
    }
}

/// Moves each gradient into the group of its parameter: 2+ dims (decayed) or fewer.
struct Split<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    matrices: GradientsParams,
    vectors: GradientsParams,
    backend: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Split<'_, B> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(p.id) {
            let group = if D >= 2 {
                &mut self.matrices
            } else {
                &mut self.vectors
            };
            group.register::<B::InnerBackend, D>(p.id, g);
        }
    }
}

/// Global L2 norm of all gradients, then scale them by min(1, max_norm / (norm + 1e-6)) like
/// `torch.nn.utils.clip_grad_norm_`. Returns (norm, clip coefficient); `max_norm <= 0` disables clipping.
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> (f64, f64) {
    let mut sum = SumSquares::<B> { grads, acc: None };
    module.visit(&mut sum);
    let Some(sq) = sum.acc else { return (0.0, 1.0) };
    let norm = sq.sqrt();
    let norm_value = norm.clone().into_scalar().elem::<f64>();
    if max_norm <= 0.0 {
        return (norm_value, 1.0);
    }
    // Computed on the device in float32 like torch, then applied to every gradient.
    let coef = (norm.add_scalar(1e-6).recip() * max_norm).clamp_max(1.0);
    let coef_value = coef.clone().into_scalar().elem::<f64>();
    if coef_value < 1.0 {
        module.visit(&mut Scale::<B> { grads, coef });
    }
    (norm_value, coef_value)
}

struct SumSquares<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    acc: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SumSquares<'_, B> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(p.id) {
            let s = g.square().sum();
            self.acc = Some(match self.acc.take() {
                Some(a) => a + s,
                None => s,
            });
        }
    }
}

struct Scale<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    coef: Tensor<B::InnerBackend, 1>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(p.id) {
            self.grads
                .register::<B::InnerBackend, D>(p.id, g * self.coef.clone().unsqueeze::<D>());
        }
    }
}
