//! Compute precision of training: float32 everywhere (the default), or bfloat16 compute with
//! float32 master weights and optimizer state.
//!
//! bf16 is mixed precision done by hand (Burn 0.21 has no autocast): each micro-batch runs the
//! forward pass on a bf16 cast of the f32 parameters, the logits come back to f32 for the loss (one slice of tokens at a time),
//! and backward flows through the casts, so every gradient, the clipping and the AdamW update are
//! f32 on the master weights. No loss scaling is needed (bf16 has f32's exponent range), which is
//! why bf16, not fp16, is offered.

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::DType;
use opt_model::{loss, Opt};
use serde::{Deserialize, Serialize};

/// Compute precision of a training run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!("unknown precision `{other}`; choose f32 or bf16")),
        }
    }
}

impl Precision {
    /// Whether backend `B` can train in this precision on `device`.
    pub fn supported<B: Backend>(self, device: &B::Device) -> bool {
        match self {
            Self::F32 => true,
            Self::Bf16 => B::supports_dtype(device, DType::BF16),
        }
    }

    /// Mean cross-entropy of `model` on `inputs` → `targets`, times `scale`, computed in this
    /// precision; the LM head and loss run in slices of tokens with f32 logits (`chunked_cross_entropy`).
    pub fn loss<B: AutodiffBackend>(
        self,
        model: &Opt<B>,
        inputs: Tensor<B, 2, Int>,
        targets: Tensor<B, 2, Int>,
        scale: f64,
    ) -> Tensor<B, 1> {
        let cast;
        let model = match self {
            Self::F32 => model,
            Self::Bf16 => {
                cast = self.cast(model.clone());
                &cast
            }
        };
        let (hidden, _) = model.decode(inputs, None, None, false);
        head_loss(model, hidden, targets, scale)
    }

    /// `module` with its float parameters in this precision, ids kept (under autodiff the casts
    /// are in the graph, so gradients reach the f32 parameters).
    pub fn cast<B: Backend, M: Module<B>>(self, module: M) -> M {
        match self {
            Self::F32 => module,
            Self::Bf16 => module.map(&mut CastParams(DType::BF16)),
        }
    }
}

/// Mean cross-entropy times `scale` of the tied LM head on `hidden` (the decoder's output), in
/// slices of `lm_head_chunk` tokens with f32 logits.
pub fn head_loss<B: AutodiffBackend>(
    model: &Opt<B>,
    hidden: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    scale: f64,
) -> Tensor<B, 1> {
    let weight = model.lm_head_weight();
    let chunk = loss::lm_head_chunk(weight.dims()[0]);
    loss::chunked_cross_entropy(weight, hidden, targets, scale, chunk)
}

/// Casts every float parameter, keeping its id (the cast stays in the autodiff graph).
struct CastParams(DType);

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(self.0), mapper)
    }
}
