//! GGML tensor types: ids as stored in GGUF, block geometry and byte sizes.
//!
//! The ids and sizes follow upstream ggml (`ggml.h`, `ggml.c` type traits;
//! checked against gguf-py's `GGML_QUANT_SIZES` by `tests/tests/dtype_table.rs`); `I2_S` is the id used by the
//! bitnet.cpp fork (36), which upstream leaves unassigned. Every size
//! computation is checked, because shapes come from untrusted files.

use std::fmt;

/// A GGML tensor type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    /// bitnet.cpp's 2-bit ternary type with one f32 scale per tensor.
    I2_S,
    MXFP4,
    NVFP4,
    Q1_0,
}

/// (type, id, name, elements per block, bytes per block)
const TABLE: &[(GgmlType, u32, &str, usize, usize)] = &[
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 36),
    (GgmlType::Q2_K, 10, "Q2_K", 256, 84),
    (GgmlType::Q3_K, 11, "Q3_K", 256, 110),
    (GgmlType::Q4_K, 12, "Q4_K", 256, 144),
    (GgmlType::Q5_K, 13, "Q5_K", 256, 176),
    (GgmlType::Q6_K, 14, "Q6_K", 256, 210),
    (GgmlType::Q8_K, 15, "Q8_K", 256, 292),
    (GgmlType::IQ2_XXS, 16, "IQ2_XXS", 256, 66),
    (GgmlType::IQ2_XS, 17, "IQ2_XS", 256, 74),
    (GgmlType::IQ3_XXS, 18, "IQ3_XXS", 256, 98),
    (GgmlType::IQ1_S, 19, "IQ1_S", 256, 50),
    (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18),
    (GgmlType::IQ3_S, 21, "IQ3_S", 256, 110),
    (GgmlType::IQ2_S, 22, "IQ2_S", 256, 82),
    (GgmlType::IQ4_XS, 23, "IQ4_XS", 256, 136),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::IQ1_M, 29, "IQ1_M", 256, 56),
    (GgmlType::BF16, 30, "BF16", 1, 2),
    (GgmlType::TQ1_0, 34, "TQ1_0", 256, 54),
    (GgmlType::TQ2_0, 35, "TQ2_0", 256, 66),
    // I2_S: 4 codes per byte in 128-element groups of 32 bytes; the tensor
    // additionally carries a 32-byte trailer (f32 scale + padding), see
    // [`GgmlType::tensor_bytes`].
    (GgmlType::I2_S, 36, "I2_S", 128, 32),
    (GgmlType::MXFP4, 39, "MXFP4", 32, 17),
    (GgmlType::NVFP4, 40, "NVFP4", 64, 36),
    (GgmlType::Q1_0, 41, "Q1_0", 128, 18),
];

/// Bytes appended after the packed codes of an I2_S tensor (f32 scale + 28 padding).
pub const I2_S_TRAILER: usize = 32;

/// A size computation overflowed or a shape is not representable in a type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("row length {ne0} is not a multiple of the {ty} block size {block}")]
    NotBlockAligned {
        ty: GgmlType,
        ne0: u64,
        block: usize,
    },
    #[error("shape {shape:?} overflows a 64-bit byte count")]
    Overflow { shape: Vec<u64> },
}

impl GgmlType {
    fn entry(self) -> &'static (GgmlType, u32, &'static str, usize, usize) {
        TABLE
            .iter()
            .find(|e| e.0 == self)
            .expect("every variant is in TABLE")
    }

    /// All known types, in id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TABLE.iter().map(|e| e.0)
    }

    /// The type for a GGUF type id, or `None` if the id is unknown.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|e| e.1 == id).map(|e| e.0)
    }

    /// The type for a name such as `"tq2_0"` (case-insensitive).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        TABLE
            .iter()
            .find(|e| e.2.eq_ignore_ascii_case(name))
            .map(|e| e.0)
    }

    /// The id written to GGUF tensor infos.
    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// The canonical upper-case name (`"TQ2_0"`).
    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        self.entry().3
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.entry().4
    }

    /// Bytes of one row of `ne0` elements (no I2_S trailer).
    pub fn row_bytes(self, ne0: u64) -> Result<u64, ShapeError> {
        let block = self.block_size() as u64;
        if ne0 % block != 0 {
            return Err(ShapeError::NotBlockAligned {
                ty: self,
                ne0,
                block: self.block_size(),
            });
        }
        (ne0 / block)
            .checked_mul(self.block_bytes() as u64)
            .ok_or(ShapeError::Overflow { shape: vec![ne0] })
    }

    /// Bytes of a whole tensor with dimensions `ne` (innermost first, as in GGUF),
    /// including the I2_S trailer.
    pub fn tensor_bytes(self, ne: &[u64]) -> Result<u64, ShapeError> {
        let overflow = || ShapeError::Overflow { shape: ne.to_vec() };
        let ne0 = ne.first().copied().unwrap_or(1);
        let mut bytes = self.row_bytes(ne0)?;
        for &d in ne.iter().skip(1) {
            bytes = bytes.checked_mul(d).ok_or_else(overflow)?;
        }
        if self == GgmlType::I2_S {
            bytes = bytes
                .checked_add(I2_S_TRAILER as u64)
                .ok_or_else(overflow)?;
        }
        Ok(bytes)
    }

    /// True for the ternary types tern packs BitNet weights into.
    pub fn is_ternary(self) -> bool {
        matches!(self, GgmlType::TQ1_0 | GgmlType::TQ2_0 | GgmlType::I2_S)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Number of elements of a shape, checked.
pub fn element_count(ne: &[u64]) -> Option<u64> {
    ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_unique() {
        let mut ids: Vec<u32> = GgmlType::all().map(|t| t.id()).collect();
        for t in GgmlType::all() {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(GgmlType::from_name(&t.name().to_lowercase()), Some(t));
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), TABLE.len());
        assert_eq!(GgmlType::from_id(37), None);
    }

    #[test]
    fn sizes_follow_block_geometry() {
        assert_eq!(GgmlType::TQ2_0.tensor_bytes(&[512, 3]).unwrap(), 2 * 66 * 3);
        assert_eq!(GgmlType::TQ1_0.tensor_bytes(&[256]).unwrap(), 54);
        assert_eq!(GgmlType::Q8_0.tensor_bytes(&[64, 2]).unwrap(), 2 * 34 * 2);
        // I2_S: n/4 packed bytes plus the 32-byte trailer.
        assert_eq!(GgmlType::I2_S.tensor_bytes(&[128, 4]).unwrap(), 128 + 32);
        assert!(matches!(
            GgmlType::TQ2_0.row_bytes(5460),
            Err(ShapeError::NotBlockAligned { .. })
        ));
        assert!(matches!(
            GgmlType::F32.tensor_bytes(&[1 << 40, 1 << 40]),
            Err(ShapeError::Overflow { .. })
        ));
    }
}
