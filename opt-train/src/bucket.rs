//! Gradients as one flat vector in module-visit order, for one all-reduce per update.
//!
//! Burn keys gradients by `ParamId`, which is random per process; the order in which the module
//! visits its parameters is the same everywhere, so every worker lays its gradients out alike. A
//! parameter without a gradient contributes zeros and stays without one after the reduction.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// The layout of a flattened gradient set: which parameters had a gradient.
pub(crate) struct Layout {
    present: Vec<bool>,
}

/// Flatten `grads` of `module` into one vector followed by `extra` (e.g. the loss).
pub(crate) fn flatten<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
    extra: Tensor<B::InnerBackend, 1>,
) -> (Tensor<B::InnerBackend, 1>, Layout) {
    let mut f = Flatten::<B> {
        grads,
        parts: Vec::new(),
        present: Vec::new(),
        device: extra.device(),
    };
    module.visit(&mut f);
    f.parts.push(extra);
    (Tensor::cat(f.parts, 0), Layout { present: f.present })
}

/// Put the flat vector back as gradients of `module`; returns what follows them (`extra`).
pub(crate) fn unflatten<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    flat: Tensor<B::InnerBackend, 1>,
    layout: &Layout,
) -> (GradientsParams, Tensor<B::InnerBackend, 1>) {
    let mut u = Unflatten::<B> {
        flat: flat.clone(),
        offset: 0,
        index: 0,
        present: &layout.present,
        grads: GradientsParams::new(),
    };
    module.visit(&mut u);
    let total = flat.dims()[0];
    let extra = flat.slice(u.offset..total);
    (u.grads, extra)
}

struct Flatten<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
    present: Vec<bool>,
    device: burn::tensor::Device<B::InnerBackend>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        let n = p.lazy_shape().num_elements();
        let grad = self.grads.get::<B::InnerBackend, D>(p.id);
        self.present.push(grad.is_some());
        self.parts.push(match grad {
            Some(g) => g.reshape([n]),
            None => Tensor::zeros([n], &self.device),
        });
    }
}

struct Unflatten<'a, B: AutodiffBackend> {
    flat: Tensor<B::InnerBackend, 1>,
    offset: usize,
    index: usize,
    present: &'a [bool],
    grads: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        let shape = p.lazy_shape();
        let n = shape.num_elements();
        if self.present[self.index] {
            let g = self.flat.clone().slice(self.offset..self.offset + n);
            self.grads
                .register::<B::InnerBackend, D>(p.id, g.reshape(shape));
        }
        self.offset += n;
        self.index += 1;
    }
}
