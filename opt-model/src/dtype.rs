//! The floating-point formats of OPT's weights and compute, one type for the whole project: the
//! storage dtype of checkpoints (metaseq import, `opt convert --dtype`), the compute precision of
//! training (`--precision`), and the casts between them.

use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

/// A floating-point format: IEEE float32, IEEE float16 or bfloat16.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// IEEE float32.
    #[default]
    F32,
    /// IEEE float16 (the OPT paper's training format, with loss scaling).
    F16,
    /// bfloat16 (float32's exponent range, 8 bits of mantissa).
    Bf16,
}

impl Precision {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    /// PyTorch's name (`float32`, `float16`, `bfloat16`), as in `config.json`'s `torch_dtype`.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }

    /// Burn's dtype.
    pub fn burn(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }

    /// The safetensors dtype.
    pub fn safetensors(self) -> safetensors::Dtype {
        match self {
            Self::F32 => safetensors::Dtype::F32,
            Self::F16 => safetensors::Dtype::F16,
            Self::Bf16 => safetensors::Dtype::BF16,
        }
    }

    /// Whether backend `B` computes in this format on `device`.
    pub fn supported<B: Backend>(self, device: &B::Device) -> bool {
        self == Self::F32 || B::supports_dtype(device, self.burn())
    }

    /// `module` with its float parameters in this format, ids kept (under autodiff the casts are
    /// in the graph, so gradients reach the float32 parameters).
    pub fn cast<B: Backend, M: Module<B>>(self, module: M) -> M {
        match self {
            Self::F32 => module,
            _ => module.map(&mut CastParams(self.burn())),
        }
    }

    /// Little-endian bytes in this format -> float32 (exact: every format widens losslessly).
    pub fn decode_f32(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            Self::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Self::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Self::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }

    /// float32 -> little-endian bytes in this format (round to nearest even, like torch's `.to()`).
    pub fn encode_f32(self, values: &[f32]) -> Vec<u8> {
        match self {
            Self::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Self::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            Self::Bf16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(format!("unknown dtype `{s}`; choose f32, f16 or bf16")),
        }
    }
}

/// Casts every float parameter, keeping its id (the cast stays in the autodiff graph).
struct CastParams(DType);

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(self.0), mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_round_to_nearest_even() {
        // Hand-derived: 1 + 2^-8 lies halfway between bf16's 1 and 1 + 2^-7: ties to even -> 1.
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties to even -> 1 + 2^-6.
        let v = [1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), -2.5];
        let bf16 = Precision::Bf16.decode_f32(&Precision::Bf16.encode_f32(&v));
        assert_eq!(bf16, [1.0, 1.0 + 2f32.powi(-6), -2.5]);
        // f16 has 10 mantissa bits: 1 + 2^-11 ties to 1; 65520 overflows to infinity.
        let f16 =
            Precision::F16.decode_f32(&Precision::F16.encode_f32(&[1.0 + 2f32.powi(-11), 65520.0]));
        assert_eq!(f16, [1.0, f32::INFINITY]);
        let f32s = [0.1f32, -3.0e-40, f32::MAX];
        assert_eq!(
            Precision::F32.decode_f32(&Precision::F32.encode_f32(&f32s)),
            f32s
        );
    }

    #[test]
    fn names_parse_and_print() {
        for p in [Precision::F32, Precision::F16, Precision::Bf16] {
            assert_eq!(p.to_string().parse::<Precision>(), Ok(p));
            assert_eq!(p.torch_name().parse::<Precision>(), Ok(p));
        }
        assert_eq!("FP16".parse::<Precision>(), Ok(Precision::F16));
        assert!("int8"
            .parse::<Precision>()
            .unwrap_err()
            .contains("choose f32, f16 or bf16"));
        // The training config stores the lowercase name (config.toml from before this type).
        assert_eq!(serde_json::to_string(&Precision::Bf16).unwrap(), "\"bf16\"");
    }
}
