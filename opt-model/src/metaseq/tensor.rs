//! One HF tensor as the import moves it: shape, stored format and little-endian bytes. Merging
//! only moves bytes, so a float32 checkpoint imports bit for bit.

use crate::dtype::Precision;

/// One HF tensor: shape, stored precision and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct HfTensor {
    /// Dimensions (Linear weights `[out, in]`).
    pub shape: Vec<usize>,
    /// Precision of `bytes` (the checkpoint's).
    pub dtype: Precision,
    /// Little-endian element bytes, row-major.
    pub bytes: Vec<u8>,
}

impl HfTensor {
    /// The values as float32 (exact for every supported precision).
    pub fn to_f32(&self) -> Vec<f32> {
        self.dtype.decode_f32(&self.bytes)
    }

    /// The bytes in `dtype` (round to nearest even when narrowing, like torch's `.to()`).
    pub fn to_bytes(&self, dtype: Precision) -> Vec<u8> {
        if dtype == self.dtype {
            self.bytes.clone()
        } else {
            dtype.encode_f32(&self.to_f32())
        }
    }

    /// Rows `[start, start + len)` of dimension 0.
    pub(super) fn rows(&self, start: usize, len: usize) -> Self {
        let row = self.row_bytes();
        let mut shape = self.shape.clone();
        shape[0] = len;
        Self {
            shape,
            dtype: self.dtype,
            bytes: self.bytes[start * row..(start + len) * row].to_vec(),
        }
    }

    /// Bytes of one slice along dimension 0.
    fn row_bytes(&self) -> usize {
        self.shape[1..].iter().product::<usize>() * self.dtype.size()
    }
}
