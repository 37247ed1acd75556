//! `--dtype`: the format the loaded model's matmul weights are converted to (issue 24).

use anyhow::{bail, Result};
use burn::prelude::Backend;
use clap::Args;
use opt::backend::BackendKind;
use opt::model::{checkpoint, Opt, WeightDtype};
use std::path::Path;

/// `--dtype`, flattened into the commands that load a model for inference.
#[derive(Args, Clone, Copy, Debug)]
pub struct WeightsArg {
    /// Weights of the matmuls and the LM head: f32, bf16 (flex backend) or int8 (weight-only,
    /// per block of inputs); activations stay float32.
    #[arg(long = "dtype", default_value = "f32")]
    pub dtype: WeightDtype,
}

impl WeightsArg {
    /// The model in `dir` with its weights in this format.
    pub fn load<B: Backend>(self, dir: &Path, device: &B::Device) -> Result<Opt<B>> {
        let model = checkpoint::load_pretrained::<B>(dir, device)?;
        Ok(self.convert(model))
    }

    /// `model` with its weights in this format.
    pub fn convert<B: Backend>(self, model: Opt<B>) -> Opt<B> {
        model.with_weight_dtype(self.dtype)
    }

    /// Refuses a weight format that backend `kind` cannot compute with: bf16 weights need a matmul
    /// of f32 activations by bf16 weights, which only flex has (its kernel reads them in bf16);
    /// int8 needs a quantized matmul against a transposed weight, which ndarray's fails.
    pub fn check(self, kind: BackendKind) -> Result<()> {
        match (self.dtype, kind) {
            (WeightDtype::Bf16, BackendKind::Flex) | (WeightDtype::F32, _) => Ok(()),
            (WeightDtype::Int8, BackendKind::Flex | BackendKind::Wgpu | BackendKind::Cuda) => Ok(()),
            (WeightDtype::Bf16, _) => bail!("--dtype bf16 runs on the flex backend (its matmul reads bf16 weights beside float32 activations); int8 runs on flex, wgpu and cuda"),
            (WeightDtype::Int8, _) => bail!("--dtype int8 runs on the flex, wgpu and cuda backends; {kind}'s quantized matmul fails on a transposed weight; use --dtype f32"),
        }
    }
}
