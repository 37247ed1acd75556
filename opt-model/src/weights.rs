//! Lighter weights for inference: every Linear weight and the LM head in bfloat16 or int8,
//! activations and accumulation in float32. Decoding reads every weight once per token, so at
//! small batches its speed is the memory's: half the bytes in bf16, about a quarter in int8.
//!
//! A converted weight is stored as `[out, in]` rows (HF's layout) and used through its transposed
//! view `[in, out]`, Burn's `Linear` shape: a backend can then read one output's inputs
//! contiguously, and int8 blocks run along the inputs. int8 goes through Burn's quantization
//! (`QuantScheme`, `Tensor::quantize_dynamic`, the backend's `q_matmul`); the token embedding
//! stays float32 (a lookup is exact) and the tied LM head gets its own converted copy.

use std::fmt;
use std::str::FromStr;

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::quantization::{
    QTensorPrimitive, QuantLevel, QuantMode, QuantParam, QuantScheme, QuantValue,
};
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

use crate::model::Opt;

/// The format of a model's matmul weights at inference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    /// float32, as loaded.
    #[default]
    F32,
    /// bfloat16 weights (round to nearest even), float32 activations.
    Bf16,
    /// int8 weights, symmetric, one float32 scale per block of inputs of one output
    /// ([`int8_block`]); float32 activations.
    Int8,
}

impl fmt::Display for WeightDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
        })
    }
}

impl FromStr for WeightDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "int8" | "i8" | "q8" => Ok(Self::Int8),
            _ => Err(format!(
                "unknown weight dtype `{s}`; choose f32, bf16 or int8"
            )),
        }
    }
}

/// Inputs per int8 scale for a weight with `k` inputs: the largest of 128, 64 and 32 that
/// divides `k` (llama.cpp's Q8_0 uses 32, bitsandbytes' blockwise 64+; one scale per 128
/// bytes costs 3% more memory), else the largest divisor of `k` up to 128, else `k` itself
/// when it fits Burn's block size (255), else 1 scale per tensor (`None`).
pub fn int8_block(k: usize) -> Option<usize> {
    [128, 64, 32]
        .into_iter()
        .chain((16..=128).rev())
        .find(|&b| k.is_multiple_of(b))
        .or((k <= 255).then_some(k))
}

/// Burn's scheme for an int8 weight with `k` inputs on backend `B`: symmetric `Q8S`
/// (-127..=127), f32 scales per block of [`int8_block`] inputs, the backend's own storage.
pub fn int8_scheme<B: Backend>(k: usize) -> QuantScheme {
    let level = match int8_block(k) {
        Some(block) => QuantLevel::block([block as u8]),
        None => QuantLevel::Tensor,
    };
    B::QuantizedTensorPrimitive::default_scheme()
        .with_value(QuantValue::Q8S)
        .with_mode(QuantMode::Symmetric)
        .with_param(QuantParam::F32)
        .with_level(level)
}

impl<B: Backend> Opt<B> {
    /// This model with every Linear weight and a copy of the LM head in `dtype` (float32:
    /// unchanged). For inference only: the converted weights are not trained or saved.
    pub fn with_weight_dtype(mut self, dtype: WeightDtype) -> Self {
        if dtype == WeightDtype::F32 {
            return self;
        }
        for layer in self.linears_mut() {
            *layer = compact_linear(layer.clone(), dtype);
        }
        self.lm_head = Some(compact_rows(self.embed_tokens.weight.val(), dtype));
        self
    }

    /// Bytes of the weights that one decoding step reads: every Linear weight and the LM head,
    /// in their format (int8: values and scales).
    pub fn matmul_weight_bytes(&self) -> usize {
        // A clone shares the tensors: it only lends its Linear layers.
        let mut model = self.clone();
        let linears = model.linears_mut().into_iter().map(|l| l.weight.val());
        linears
            .chain([self.lm_head_weight()])
            .map(|w| stored_bytes(&w))
            .sum()
    }

    /// Every Linear layer: the projections, then each layer's q, k, v, out, fc1 and fc2.
    pub fn linears_mut(&mut self) -> Vec<&mut Linear<B>> {
        let mut linears: Vec<&mut Linear<B>> = self
            .project_in
            .iter_mut()
            .chain(&mut self.project_out)
            .collect();
        for layer in &mut self.layers {
            let a = &mut layer.self_attn;
            linears.extend([&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.out_proj]);
            linears.extend([&mut layer.fc1, &mut layer.fc2]);
        }
        linears
    }

    /// The format of the matmul weights (the first layer's `fc1`, or the LM head).
    pub fn weight_dtype(&self) -> WeightDtype {
        let dtype = match self.layers.first() {
            Some(layer) => layer.fc1.weight.val().dtype(),
            None => self.lm_head_weight().dtype(),
        };
        match dtype {
            DType::QFloat(_) => WeightDtype::Int8,
            DType::BF16 if self.lm_head.is_some() => WeightDtype::Bf16,
            _ => WeightDtype::F32,
        }
    }
}

/// Bytes that `w` occupies: elements in its dtype, and one f32 scale per int8 block.
fn stored_bytes<B: Backend>(w: &Tensor<B, 2>) -> usize {
    let n = w.shape().num_elements();
    match w.dtype() {
        DType::QFloat(scheme) => {
            let block = match scheme.level {
                QuantLevel::Block(size) => size.num_elements(),
                QuantLevel::Tensor => n,
            };
            n * scheme.value.size_bits() / 8 + n.div_ceil(block) * 4
        }
        dtype => n * dtype.size(),
    }
}

/// `layer` with its weight [in, out] stored as [out, in] rows in `dtype`, seen as [in, out].
fn compact_linear<B: Backend>(mut layer: Linear<B>, dtype: WeightDtype) -> Linear<B> {
    let (id, weight, _) = layer.weight.consume();
    layer.weight = Param::initialized(id, compact_rows(weight.transpose(), dtype).transpose());
    layer
}

/// `rows` [n, k] as a contiguous [n, k] tensor in `dtype`; int8 blocks run along k.
fn compact_rows<B: Backend>(rows: Tensor<B, 2>, dtype: WeightDtype) -> Tensor<B, 2> {
    let device = rows.device();
    let k = rows.dims()[1];
    // Through the host: a contiguous copy in logical order on every backend.
    let data = rows.into_data();
    match dtype {
        WeightDtype::F32 => Tensor::from_data(data, &device),
        WeightDtype::Bf16 => Tensor::from_data(data, (&device, DType::BF16)),
        WeightDtype::Int8 => {
            Tensor::<B, 2>::from_data(data, &device).quantize_dynamic(&int8_scheme::<B>(k))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_blocks_divide_the_inputs() {
        // OPT's widths take 128 (768, 2048, 3072, ...); the fixtures' 64 and 32 take themselves.
        for (k, block) in [
            (768, Some(128)),
            (3072, Some(128)),
            (64, Some(64)),
            (32, Some(32)),
        ] {
            assert_eq!(int8_block(k), block, "k = {k}");
        }
        // 480 = 15 · 32; no power of two: the largest divisor up to 128 (40 itself, 254 = 2 · 127,
        // 300 = 3 · 100), a k of at most 255 as one block (7), or one scale per tensor (a prime
        // above 255).
        let cases = [
            (480, Some(32)),
            (40, Some(40)),
            (254, Some(127)),
            (300, Some(100)),
            (7, Some(7)),
        ];
        for (k, block) in cases {
            assert_eq!(int8_block(k), block, "k = {k}");
        }
        assert_eq!(int8_block(257), None);
    }

    #[test]
    fn names_parse_and_print() {
        for d in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::Int8] {
            assert_eq!(d.to_string().parse::<WeightDtype>(), Ok(d));
        }
        assert_eq!("BFloat16".parse::<WeightDtype>(), Ok(WeightDtype::Bf16));
        assert!("int4"
            .parse::<WeightDtype>()
            .unwrap_err()
            .contains("f32, bf16 or int8"));
    }
}
