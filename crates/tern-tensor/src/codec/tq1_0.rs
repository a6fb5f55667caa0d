//! TQ1_0: 256 ternary weights as `{ u8 qs[48]; u8 qh[4]; f16 d; }` (54 bytes).
//!
//! Five trits per byte (four in `qh`), packed as a base-3 number read as a
//! fixed-point fraction of 256 (`byte = ceil(q * 256 / 243)`), so that trit `n`
//! of byte `b` is `(((b * 3^n) mod 256) * 3) >> 8`:
//! - `qs[m]`, m < 32: elements `m + 32n`, n = 0..5 (n = 0 most significant);
//! - `qs[32 + m]`, m < 16: elements `160 + m + 16n`, n = 0..5;
//! - `qh[j]`, j < 4: elements `240 + j + 4n`, n = 0..4, then a zero fifth trit.

use super::{code_to_u2, round_to_u2, BlockCodec, CodecError};
use crate::dtype::GgmlType;
use half::f16;

/// TQ1_0 block codec.
///
/// Scale and codes exactly as TQ2_0 (see [`super::Tq2_0`]), following
/// `quantize_row_tq1_0_ref` in ggml-quants.c and gguf-py's `TQ1_0`;
/// dequantize: `(trit - 1) as f32 * f16(d)`. Every byte decodes to valid trits.
pub struct Tq1_0;

const POW3: [u8; 5] = [1, 3, 9, 27, 81];
const QH: usize = 48;
const D: usize = 52;

/// The element index of trit `n` in byte `byte` (0..52) of a block.
#[inline]
fn element(byte: usize, n: usize) -> usize {
    if byte < 32 {
        byte + 32 * n
    } else if byte < QH {
        160 + (byte - 32) + 16 * n
    } else {
        240 + (byte - QH) + 4 * n
    }
}

/// Trits stored in byte `byte` (5, or 4 in `qh`).
#[inline]
fn trits(byte: usize) -> usize {
    if byte < QH {
        5
    } else {
        4
    }
}

/// Base-3 digits (most significant first, padded to five) -> stored byte.
#[inline]
fn encode(mut q: u16, n_trits: usize) -> u8 {
    for _ in n_trits..5 {
        q *= 3;
    }
    // ceiling division by 243 = 3^5: q in 0..=242 maps into 0..=255
    (q * 256).div_ceil(243) as u8
}

#[inline]
fn decode(b: u8, n: usize) -> u8 {
    ((b.wrapping_mul(POW3[n]) as u16 * 3) >> 8) as u8
}

impl BlockCodec for Tq1_0 {
    const TYPE: GgmlType = GgmlType::TQ1_0;
    const BLOCK: usize = 256;
    const BYTES: usize = 54;

    fn quantize_block(src: &[f32], dst: &mut [u8]) {
        assert_eq!(src.len(), Self::BLOCK, "TQ1_0 block length");
        let d = super::block_absmax(src);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (byte, out) in dst[..D].iter_mut().enumerate() {
            let k = trits(byte);
            let mut q = 0u16;
            for n in 0..k {
                q = q * 3 + round_to_u2(src[element(byte, n)] * id) as u16;
            }
            *out = encode(q, k);
        }
        dst[D..Self::BYTES].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
    }

    fn dequantize_block(src: &[u8], dst: &mut [f32]) {
        assert_eq!(dst.len(), Self::BLOCK, "TQ1_0 block length");
        let d = f16::from_bits(u16::from_le_bytes([src[D], src[D + 1]])).to_f32();
        for (byte, &b) in src[..D].iter().enumerate() {
            for n in 0..trits(byte) {
                dst[element(byte, n)] = (decode(b, n) as i8 - 1) as f32 * d;
            }
        }
    }
}

/// Pack one block of ternary codes; `d_bits` is stored unless every code is 0
/// (then `d = 0`, as the float quantizer writes for an all-zero block).
pub(super) fn pack_codes_block(
    codes: &[i8],
    d_bits: u16,
    first: usize,
    dst: &mut [u8],
) -> Result<(), CodecError> {
    let mut any = false;
    for (byte, out) in dst[..D].iter_mut().enumerate() {
        let k = trits(byte);
        let mut q = 0u16;
        for n in 0..k {
            let i = element(byte, n);
            let v = codes[i];
            any |= v != 0;
            q = q * 3 + code_to_u2(GgmlType::TQ1_0, first + i, v)? as u16;
        }
        *out = encode(q, k);
    }
    let d = if any { d_bits } else { 0 };
    dst[D..D + 2].copy_from_slice(&d.to_le_bytes());
    Ok(())
}

/// Unpack one block into codes; returns `d` as f32.
pub(super) fn unpack_codes_block(src: &[u8], codes: &mut [i8]) -> f32 {
    for (byte, &b) in src[..D].iter().enumerate() {
        for n in 0..trits(byte) {
            codes[element(byte, n)] = decode(b, n) as i8 - 1;
        }
    }
    f16::from_bits(u16::from_le_bytes([src[D], src[D + 1]])).to_f32()
}
