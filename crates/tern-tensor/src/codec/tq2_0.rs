//! TQ2_0: 256 ternary weights as `{ u8 qs[64]; f16 d; }` (66 bytes).
//!
//! Element `128c + 32n + m` (c in 0..2, n in 0..4, m in 0..32) sits in bits
//! `2n..2n+1` of byte `qs[32c + m]` as `code + 1`, the first group in the
//! least significant bits.

use super::{code_to_u2, round_to_u2, BlockCodec, CodecError};
use crate::dtype::GgmlType;
use half::f16;

/// TQ2_0 block codec.
///
/// Quantize (as `quantize_row_tq2_0_ref` in ggml-quants.c and gguf-py's
/// `TQ2_0.quantize_blocks`, all in f32): `d = max|x|`, `id = d != 0 ? 1/d : 0`,
/// `code = roundf(x * id)` (ties away from zero, so `x * id = ±0.5` becomes
/// ±1), stored `d` = f16 of `d`. Dequantize: `(code as f32) * f16(d)`; the
/// unused 2-bit value 3 dequantizes to `2 * d`, as in ggml and gguf-py.
pub struct Tq2_0;

const QS: usize = 64;

#[inline]
fn element(c: usize, n: usize, m: usize) -> usize {
    128 * c + 32 * n + m
}

impl BlockCodec for Tq2_0 {
    const TYPE: GgmlType = GgmlType::TQ2_0;
    const BLOCK: usize = 256;
    const BYTES: usize = 66;

    fn quantize_block(src: &[f32], dst: &mut [u8]) {
        assert_eq!(src.len(), Self::BLOCK, "TQ2_0 block length");
        let d = super::block_absmax(src);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for c in 0..2 {
            for m in 0..32 {
                let mut q = 0u8;
                for n in 0..4 {
                    q |= round_to_u2(src[element(c, n, m)] * id) << (2 * n);
                }
                dst[32 * c + m] = q;
            }
        }
        dst[QS..Self::BYTES].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
    }

    fn dequantize_block(src: &[u8], dst: &mut [f32]) {
        assert_eq!(dst.len(), Self::BLOCK, "TQ2_0 block length");
        let d = f16::from_bits(u16::from_le_bytes([src[QS], src[QS + 1]])).to_f32();
        for c in 0..2 {
            for m in 0..32 {
                let b = src[32 * c + m];
                for n in 0..4 {
                    let code = ((b >> (2 * n)) & 3) as i8 - 1;
                    dst[element(c, n, m)] = code as f32 * d;
                }
            }
        }
    }
}

/// Pack one block of ternary codes; `d_bits` is stored unless every code is 0,
/// in which case `d = 0` (what the float quantizer writes for an all-zero block).
pub(super) fn pack_codes_block(
    codes: &[i8],
    d_bits: u16,
    first: usize,
    dst: &mut [u8],
) -> Result<(), CodecError> {
    let mut any = false;
    for c in 0..2 {
        for m in 0..32 {
            let mut q = 0u8;
            for n in 0..4 {
                let i = element(c, n, m);
                let v = codes[i];
                any |= v != 0;
                q |= code_to_u2(GgmlType::TQ2_0, first + i, v)? << (2 * n);
            }
            dst[32 * c + m] = q;
        }
    }
    let d = if any { d_bits } else { 0 };
    dst[QS..QS + 2].copy_from_slice(&d.to_le_bytes());
    Ok(())
}

/// Unpack one block into codes; returns `d` as f32.
pub(super) fn unpack_codes_block(
    src: &[u8],
    first: usize,
    codes: &mut [i8],
) -> Result<f32, CodecError> {
    for c in 0..2 {
        for m in 0..32 {
            let b = src[32 * c + m];
            for n in 0..4 {
                let u = (b >> (2 * n)) & 3;
                let i = element(c, n, m);
                if u == 3 {
                    return Err(CodecError::CorruptCode {
                        ty: GgmlType::TQ2_0,
                        element: first + i,
                    });
                }
                codes[i] = u as i8 - 1;
            }
        }
    }
    Ok(f16::from_bits(u16::from_le_bytes([src[QS], src[QS + 1]])).to_f32())
}
