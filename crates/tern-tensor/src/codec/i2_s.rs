//! I2_S, the 2-bit ternary type of the bitnet.cpp fork (GGUF type id 36).
//!
//! A tensor of `n` weights (`n` a multiple of 128) is `n/4` packed bytes
//! followed by a 32-byte trailer: the per-tensor f32 scale (little-endian) at
//! byte `n/4`, then 28 bytes that tern writes as zeros.
//!
//! Layout (the x86 layout of bitnet.cpp's `quantize_i2_s` in
//! `src/ggml-bitnet-mad.cpp`, verified there): row-major 128-element blocks of
//! 32 bytes; with storage values `c = code + 1` (`-1 -> 0, 0 -> 1, +1 -> 2`),
//! byte `k` of a block is `c[k] << 6 | c[k+32] << 4 | c[k+64] << 2 | c[k+96]`:
//! the first 32-element group sits in the MOST significant bits, the opposite
//! of TQ2_0. Later revisions of that file also carry an ARM layout with
//! 64-element blocks and an x86 variant that interleaves groups of four rows
//! (selected at build time); tern reads and writes only the 128-element layout
//! above, which is the one every revision uses on x86 with `ACT_PARALLEL`.

use super::{code_to_u2, BlockCodec, CodecError};
use crate::dtype::{GgmlType, I2_S_TRAILER};

/// Elements with `|x| < I2S_ZERO_THRESHOLD` (compared in f64) get code 0.
pub const I2S_ZERO_THRESHOLD: f64 = 1e-6;

/// I2_S block codec for one 128-element block, WITHOUT the per-tensor scale.
///
/// bitnet.cpp's quantizer (as verified in `quantize_i2_s`) takes the scale as
/// `max|x|` over the whole tensor (accumulated in f64 with `fmax`, so NaN is
/// skipped, and stored as f32) and assigns codes by sign only: `|x| < 1e-6`
/// (in f64) gives 0, otherwise `x * scale > 0` gives +1 and anything else -1
/// (NaN included). It expects input that is already ternary-valued
/// (`{-s, 0, +s}`); other values are not rounded, just sign-mapped. Because
/// the code does not depend on the scale, `quantize_block` here produces exactly
/// bitnet.cpp's bytes for the block, and `dequantize_block` yields the unscaled
/// codes `-1.0, 0.0, 1.0` (the unused value 3 yields 2.0);
/// [`super::quantize_into`] / [`super::dequantize_into`] handle the scale.
pub struct I2s;

#[inline]
fn sign_code(x: f32) -> u8 {
    let v = x as f64;
    if v.abs() < I2S_ZERO_THRESHOLD {
        1
    } else if v > 0.0 {
        2
    } else {
        0
    }
}

impl BlockCodec for I2s {
    const TYPE: GgmlType = GgmlType::I2_S;
    const BLOCK: usize = 128;
    const BYTES: usize = 32;

    fn quantize_block(src: &[f32], dst: &mut [u8]) {
        assert_eq!(src.len(), Self::BLOCK, "I2_S block length");
        for (k, out) in dst[..Self::BYTES].iter_mut().enumerate() {
            *out = sign_code(src[k]) << 6
                | sign_code(src[k + 32]) << 4
                | sign_code(src[k + 64]) << 2
                | sign_code(src[k + 96]);
        }
    }

    fn dequantize_block(src: &[u8], dst: &mut [f32]) {
        assert_eq!(dst.len(), Self::BLOCK, "I2_S block length");
        for (k, &b) in src[..Self::BYTES].iter().enumerate() {
            for g in 0..4 {
                dst[k + 32 * g] = (((b >> (6 - 2 * g)) & 3) as i8 - 1) as f32;
            }
        }
    }
}

/// Whole-tensor quantization; lengths already checked by the caller.
pub(super) fn quantize_tensor(src: &[f32], dst: &mut [u8]) {
    // f64 max with NaN skipped (as C's `fmax`); every |x| came from an f32, so
    // the cast back is exact (infinity included).
    let scale = src.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs())) as f32;
    let (packed, trailer) = dst.split_at_mut(src.len() / 4);
    for (s, d) in src
        .chunks_exact(I2s::BLOCK)
        .zip(packed.chunks_exact_mut(I2s::BYTES))
    {
        I2s::quantize_block(s, d);
    }
    write_trailer_unchecked(scale, trailer);
}

/// Whole-tensor dequantization; lengths already checked by the caller.
pub(super) fn dequantize_tensor(src: &[u8], dst: &mut [f32]) {
    let (packed, trailer) = src.split_at(dst.len() / 4);
    let scale = f32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    for (s, d) in packed
        .chunks_exact(I2s::BYTES)
        .zip(dst.chunks_exact_mut(I2s::BLOCK))
    {
        I2s::dequantize_block(s, d);
        for y in d.iter_mut() {
            *y *= scale;
        }
    }
}

fn write_trailer_unchecked(scale: f32, trailer: &mut [u8]) {
    trailer[..4].copy_from_slice(&scale.to_le_bytes());
    trailer[4..].fill(0);
}

fn check_rows(codes: usize, bytes: usize) -> Result<(), CodecError> {
    let ty = GgmlType::I2_S;
    if codes % I2s::BLOCK != 0 {
        return Err(CodecError::Misaligned {
            ty,
            elements: codes,
            block: I2s::BLOCK,
        });
    }
    if bytes != codes / 4 {
        return Err(CodecError::LengthMismatch {
            ty,
            what: "packed I2_S codes (without trailer)",
            expected: codes / 4,
            got: bytes,
        });
    }
    Ok(())
}

/// Pack ternary `codes` (a multiple of 128) into I2_S blocks, `dst.len() ==
/// codes.len() / 4`, no trailer. Errors on a code outside `{-1, 0, 1}`.
pub fn i2s_pack_codes(codes: &[i8], dst: &mut [u8]) -> Result<(), CodecError> {
    check_rows(codes.len(), dst.len())?;
    for (blk, (c, d)) in codes
        .chunks_exact(I2s::BLOCK)
        .zip(dst.chunks_exact_mut(I2s::BYTES))
        .enumerate()
    {
        let first = blk * I2s::BLOCK;
        for (k, out) in d.iter_mut().enumerate() {
            let mut b = 0u8;
            for g in 0..4 {
                let i = k + 32 * g;
                b |= code_to_u2(GgmlType::I2_S, first + i, c[i])? << (6 - 2 * g);
            }
            *out = b;
        }
    }
    Ok(())
}

/// Unpack I2_S blocks (no trailer, `src.len() == codes.len() / 4`) into codes.
/// Errors on the unused 2-bit value 3.
pub fn i2s_unpack_codes(src: &[u8], codes: &mut [i8]) -> Result<(), CodecError> {
    check_rows(codes.len(), src.len())?;
    for (blk, (s, c)) in src
        .chunks_exact(I2s::BYTES)
        .zip(codes.chunks_exact_mut(I2s::BLOCK))
        .enumerate()
    {
        for (k, &b) in s.iter().enumerate() {
            for g in 0..4 {
                let u = (b >> (6 - 2 * g)) & 3;
                let i = k + 32 * g;
                if u == 3 {
                    return Err(CodecError::CorruptCode {
                        ty: GgmlType::I2_S,
                        element: blk * I2s::BLOCK + i,
                    });
                }
                c[i] = u as i8 - 1;
            }
        }
    }
    Ok(())
}

/// Write the 32-byte trailer: `scale` as little-endian f32, then 28 zero bytes.
pub fn i2s_write_trailer(scale: f32, trailer: &mut [u8]) -> Result<(), CodecError> {
    if trailer.len() != I2_S_TRAILER {
        return Err(CodecError::LengthMismatch {
            ty: GgmlType::I2_S,
            what: "I2_S trailer",
            expected: I2_S_TRAILER,
            got: trailer.len(),
        });
    }
    write_trailer_unchecked(scale, trailer);
    Ok(())
}

/// Read the per-tensor scale from a trailer of at least 4 bytes (the padding
/// bytes after it are ignored, as bitnet.cpp ignores them).
pub fn i2s_read_scale(trailer: &[u8]) -> Result<f32, CodecError> {
    match trailer {
        [a, b, c, d, ..] => Ok(f32::from_le_bytes([*a, *b, *c, *d])),
        _ => Err(CodecError::LengthMismatch {
            ty: GgmlType::I2_S,
            what: "I2_S trailer",
            expected: I2_S_TRAILER,
            got: trailer.len(),
        }),
    }
}
