//! Element-wise float formats: F32, F16 and BF16 (block size 1, little-endian).

use super::BlockCodec;
use crate::dtype::GgmlType;

/// IEEE binary32, stored little-endian as is.
pub struct F32;

impl BlockCodec for F32 {
    const TYPE: GgmlType = GgmlType::F32;
    const BLOCK: usize = 1;
    const BYTES: usize = 4;

    fn quantize_block(src: &[f32], dst: &mut [u8]) {
        dst.copy_from_slice(&src[0].to_le_bytes());
    }

    fn dequantize_block(src: &[u8], dst: &mut [f32]) {
        dst[0] = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
    }
}

/// IEEE binary16. f32 -> f16 rounds to nearest, ties to even; overflow gives
/// ±inf and NaN stays NaN (as numpy's `astype(float16)`, which gguf-py uses,
/// and ggml's `GGML_FP32_TO_FP16`). f16 -> f32 is exact.
pub struct F16;

impl BlockCodec for F16 {
    const TYPE: GgmlType = GgmlType::F16;
    const BLOCK: usize = 1;
    const BYTES: usize = 2;

    fn quantize_block(src: &[f32], dst: &mut [u8]) {
        dst.copy_from_slice(&half::f16::from_f32(src[0]).to_bits().to_le_bytes());
    }

    fn dequantize_block(src: &[u8], dst: &mut [f32]) {
        dst[0] = half::f16::from_bits(u16::from_le_bytes([src[0], src[1]])).to_f32();
    }
}

/// bfloat16: the upper half of an f32.
///
/// f32 -> bf16 follows ggml's `ggml_compute_fp32_to_bf16` (reproduced by
/// gguf-py's `BF16.quantize_blocks`): a NaN keeps its sign and upper mantissa
/// bits and gets the quiet bit `0x0040` forced on; every other value (infinities
/// included) rounds to nearest, ties to even, by adding `0x7fff + lsb` before
/// truncating. bf16 -> f32 is exact (`bits << 16`).
pub struct Bf16;

/// f32 -> bf16 bits, rounding to nearest even (see [`Bf16`]).
#[inline]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 0x0040) as u16;
    }
    ((u as u64 + (0x7fff + ((u >> 16) & 1)) as u64) >> 16) as u16
}

impl BlockCodec for Bf16 {
    const TYPE: GgmlType = GgmlType::BF16;
    const BLOCK: usize = 1;
    const BYTES: usize = 2;

    fn quantize_block(src: &[f32], dst: &mut [u8]) {
        dst.copy_from_slice(&f32_to_bf16_bits(src[0]).to_le_bytes());
    }

    fn dequantize_block(src: &[u8], dst: &mut [f32]) {
        dst[0] = f32::from_bits((u16::from_le_bytes([src[0], src[1]]) as u32) << 16);
    }
}
