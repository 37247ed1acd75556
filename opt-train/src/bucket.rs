//! The flat layout of a model's parameters: every float parameter reshaped to one dimension and
//! concatenated in module-visit order. Gradients take it for one all-reduce per update and for
//! the flat AdamW ([`crate::flat_adamw`]); the parameters take it for the update itself.
//!
//! Burn keys gradients by `ParamId`, which is random per process; the order in which the module
//! visits its parameters is the same everywhere, so every worker lays its gradients out alike. A
//! parameter without a gradient contributes zeros.

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// `grads` of `module` as one flat vector, followed by `extra` (e.g. the loss).
pub fn flatten_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
    extra: Tensor<B::InnerBackend, 1>,
) -> Tensor<B::InnerBackend, 1> {
    let mut f = Gather::<B> {
        grads: Some(grads),
        parts: Vec::new(),
        device: extra.device(),
    };
    module.visit(&mut f);
    f.parts.push(extra);
    Tensor::cat(f.parts, 0)
}

/// The parameters of `module` as one flat vector (the values, without autodiff).
pub(crate) fn flatten_params<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    device: &B::Device,
) -> Tensor<B::InnerBackend, 1> {
    let mut f = Gather::<B> {
        grads: None,
        parts: Vec::new(),
        device: device.clone(),
    };
    module.visit(&mut f);
    Tensor::cat(f.parts, 0)
}

/// `module` with its parameters read from `flat` (views of it, ids kept, gradients required).
pub(crate) fn unflatten_params<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: M,
    flat: Tensor<B::InnerBackend, 1>,
) -> M {
    module.map(&mut Scatter::<B> { flat, offset: 0 })
}

/// A float mask over the flat layout: 1 where `decayed(dims)` holds for the parameter, else 0.
pub(crate) fn mask<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    device: &B::Device,
    decayed: fn(usize) -> bool,
) -> Tensor<B::InnerBackend, 1, Bool> {
    let mut m = Mask::<B> {
        parts: Vec::new(),
        device: device.clone(),
        decayed,
    };
    module.visit(&mut m);
    Tensor::cat(m.parts, 0)
}

/// Number of float parameters (the flat layout's length).
pub(crate) fn len<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M) -> usize {
    struct Count(usize);
    impl<B: Backend> ModuleVisitor<B> for Count {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            self.0 += p.lazy_shape().num_elements();
        }
    }
    let mut c = Count(0);
    module.visit(&mut c);
    c.0
}

/// Collects each parameter's gradient (zeros where it has none), or its value.
struct Gather<'a, B: AutodiffBackend> {
    grads: Option<&'a GradientsParams>,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
    device: burn::tensor::Device<B::InnerBackend>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<'_, B> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        let n = p.lazy_shape().num_elements();
        let part = match self.grads {
            None => Some(p.val().inner()),
            Some(grads) => grads.get::<B::InnerBackend, D>(p.id),
        };
        self.parts.push(match part {
            Some(t) => t.reshape([n]),
            None => Tensor::zeros([n], &self.device),
        });
    }
}

struct Scatter<B: AutodiffBackend> {
    flat: Tensor<B::InnerBackend, 1>,
    offset: usize,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Scatter<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let (shape, require_grad) = (tensor.shape(), tensor.is_require_grad());
        let n = shape.num_elements();
        let value = self.flat.clone().slice(self.offset..self.offset + n);
        self.offset += n;
        let tensor = Tensor::from_inner(value.reshape(shape));
        let tensor = tensor.set_require_grad(require_grad);
        Param::from_mapped_value(id, tensor, mapper)
    }
}

struct Mask<B: AutodiffBackend> {
    parts: Vec<Tensor<B::InnerBackend, 1, Bool>>,
    device: burn::tensor::Device<B::InnerBackend>,
    decayed: fn(usize) -> bool,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Mask<B> {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        let n = p.lazy_shape().num_elements();
        let part = Tensor::<B::InnerBackend, 1>::zeros([n], &self.device);
        self.parts.push(match (self.decayed)(D) {
            true => part.equal_elem(0.0),
            false => part.not_equal_elem(0.0),
        });
    }
}
