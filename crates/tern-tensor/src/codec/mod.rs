//! GGML block codecs: F32, F16, BF16, Q8_0, TQ1_0, TQ2_0 and bitnet.cpp's I2_S.
//!
//! Every codec packs into and unpacks from caller-provided buffers, one block
//! at a time, without whole-tensor temporaries. The byte layouts are those of
//! GGUF (see `docs/formats.md`); the rounding of the float -> block direction
//! follows the reference quantizers of `ggml-quants.c`
//! (`quantize_row_q8_0_ref`, `quantize_row_tq1_0_ref`, `quantize_row_tq2_0_ref`)
//! and is checked byte for byte against gguf-py's `gguf.quants` in
//! `tests/tests/codec_fixtures.rs`.
//!
//! Entry points:
//! - [`quantize_into`] / [`dequantize_into`]: float <-> bytes for a whole tensor
//!   or a run of whole rows (for I2_S, a whole tensor including its trailer).
//! - [`pack_ternary_into`] / [`unpack_ternary_into`]: ternary codes `{-1, 0, 1}`
//!   plus a scale <-> TQ1_0 / TQ2_0 / I2_S bytes, without going through f32.
//! - [`BlockCodec`]: the per-block functions behind both, for callers that
//!   stream blocks themselves.
//!
//! Rounding notes (verified against the sources named above):
//! - ggml's reference C rounds with `roundf` / `lroundf` (ties away from zero) and
//!   gguf-py reproduces that with its `np_roundf` helper (floor-based, also ties
//!   away from zero), so the two agree on exact ties such as `x/d = ±0.5`; tern
//!   uses [`f32::round`], which has the same semantics.
//! - Both compute `id = 1/d` first and then `x * id` (not `x / d`); tern does the
//!   same, so an element at `x = d/2` lands on whatever side of 0.5 that product
//!   rounds to in f32.
//! - f32 -> f16 scales round to nearest even (`half`, numpy `astype(float16)` and
//!   ggml's `GGML_FP32_TO_FP16` agree); f32 -> bf16 follows ggml's
//!   `ggml_compute_fp32_to_bf16` (round to nearest even, NaN forced quiet).

mod float;
mod i2_s;
mod q8_0;
mod tq1_0;
mod tq2_0;

pub use float::{f32_to_bf16_bits, Bf16, F16, F32};
pub use i2_s::{
    i2s_pack_codes, i2s_read_scale, i2s_unpack_codes, i2s_write_trailer, I2s, I2S_ZERO_THRESHOLD,
};
pub use q8_0::Q8_0;
pub use tq1_0::Tq1_0;
pub use tq2_0::Tq2_0;

use crate::dtype::{GgmlType, I2_S_TRAILER};

/// A fixed-size block format: `BLOCK` floats <-> `BYTES` bytes.
///
/// The block functions take exactly one block; they panic if a slice has the
/// wrong length (a caller bug, never a property of a file: the checked entry
/// points [`quantize_into`] and [`dequantize_into`] validate lengths first and
/// return [`CodecError`] instead).
pub trait BlockCodec {
    /// The GGML type this codec writes.
    const TYPE: GgmlType;
    /// Elements per block.
    const BLOCK: usize;
    /// Bytes per block.
    const BYTES: usize;

    /// Quantize `src` (`BLOCK` floats) into `dst` (`BYTES` bytes).
    fn quantize_block(src: &[f32], dst: &mut [u8]);

    /// Dequantize `src` (`BYTES` bytes) into `dst` (`BLOCK` floats).
    fn dequantize_block(src: &[u8], dst: &mut [f32]);
}

/// Why a codec call was refused. Nothing is written when a length check fails;
/// a content error ([`CodecError::InvalidCode`], [`CodecError::CorruptCode`])
/// may leave the blocks before the offending one written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// tern has no codec for this type.
    #[error("no codec for GGML type {ty} (supported: F32, F16, BF16, Q8_0, TQ1_0, TQ2_0, I2_S)")]
    Unsupported { ty: GgmlType },
    /// The element count is not a whole number of blocks.
    #[error("{ty}: {elements} elements is not a multiple of the block size {block}")]
    Misaligned {
        ty: GgmlType,
        elements: usize,
        block: usize,
    },
    /// A buffer has the wrong length for the other one.
    #[error("{ty}: {what} has length {got}, expected {expected}")]
    LengthMismatch {
        ty: GgmlType,
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// The byte count of the tensor does not fit in `usize`.
    #[error("{ty}: {elements} elements overflow the byte count")]
    Overflow { ty: GgmlType, elements: usize },
    /// A ternary code outside `{-1, 0, 1}` was given to a packer.
    #[error("{ty}: code {value} at index {index} is not ternary (-1, 0 or 1)")]
    InvalidCode {
        ty: GgmlType,
        index: usize,
        value: i8,
    },
    /// A ternary scale that is negative, NaN or infinite was given to a packer.
    #[error("{ty}: ternary scale {scale} must be finite and >= 0")]
    InvalidScale { ty: GgmlType, scale: f32 },
    /// Packed 2-bit data holds the unused code 3 at this element.
    #[error("{ty}: packed code 3 (not a ternary value) at element {element}")]
    CorruptCode { ty: GgmlType, element: usize },
}

fn supported(ty: GgmlType) -> Result<(), CodecError> {
    match ty {
        GgmlType::F32
        | GgmlType::F16
        | GgmlType::BF16
        | GgmlType::Q8_0
        | GgmlType::TQ1_0
        | GgmlType::TQ2_0
        | GgmlType::I2_S => Ok(()),
        _ => Err(CodecError::Unsupported { ty }),
    }
}

/// Bytes that `elements` values of `ty` occupy, including I2_S's 32-byte trailer.
pub fn quantized_len(ty: GgmlType, elements: usize) -> Result<usize, CodecError> {
    supported(ty)?;
    let block = ty.block_size();
    if elements % block != 0 {
        return Err(CodecError::Misaligned {
            ty,
            elements,
            block,
        });
    }
    let overflow = CodecError::Overflow { ty, elements };
    let mut bytes = (elements / block)
        .checked_mul(ty.block_bytes())
        .ok_or(overflow.clone())?;
    if ty == GgmlType::I2_S {
        bytes = bytes.checked_add(I2_S_TRAILER).ok_or(overflow)?;
    }
    Ok(bytes)
}

fn check_bytes(
    ty: GgmlType,
    elements: usize,
    bytes: usize,
    what: &'static str,
) -> Result<(), CodecError> {
    let expected = quantized_len(ty, elements)?;
    if bytes != expected {
        return Err(CodecError::LengthMismatch {
            ty,
            what,
            expected,
            got: bytes,
        });
    }
    Ok(())
}

fn quantize_blocks<C: BlockCodec>(src: &[f32], dst: &mut [u8]) {
    for (s, d) in src
        .chunks_exact(C::BLOCK)
        .zip(dst.chunks_exact_mut(C::BYTES))
    {
        C::quantize_block(s, d);
    }
}

fn dequantize_blocks<C: BlockCodec>(src: &[u8], dst: &mut [f32]) {
    for (s, d) in src
        .chunks_exact(C::BYTES)
        .zip(dst.chunks_exact_mut(C::BLOCK))
    {
        C::dequantize_block(s, d);
    }
}

/// Quantize `src` (a whole number of rows, or for I2_S a whole tensor) into `dst`.
///
/// `dst.len()` must be exactly [`quantized_len`]`(ty, src.len())`; for I2_S that
/// includes the 32-byte trailer that holds the per-tensor f32 scale (see
/// [`I2s`] for how the scale and codes derive from the floats).
pub fn quantize_into(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), CodecError> {
    check_bytes(ty, src.len(), dst.len(), "quantized buffer")?;
    match ty {
        GgmlType::F32 => quantize_blocks::<F32>(src, dst),
        GgmlType::F16 => quantize_blocks::<F16>(src, dst),
        GgmlType::BF16 => quantize_blocks::<Bf16>(src, dst),
        GgmlType::Q8_0 => quantize_blocks::<Q8_0>(src, dst),
        GgmlType::TQ1_0 => quantize_blocks::<Tq1_0>(src, dst),
        GgmlType::TQ2_0 => quantize_blocks::<Tq2_0>(src, dst),
        GgmlType::I2_S => i2_s::quantize_tensor(src, dst),
        _ => return Err(CodecError::Unsupported { ty }),
    }
    Ok(())
}

/// Dequantize `src` into `dst` (a whole number of rows, or for I2_S a whole
/// tensor whose `src` includes the trailer).
///
/// `src.len()` must be exactly [`quantized_len`]`(ty, dst.len())`.
pub fn dequantize_into(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), CodecError> {
    check_bytes(ty, dst.len(), src.len(), "quantized buffer")?;
    match ty {
        GgmlType::F32 => dequantize_blocks::<F32>(src, dst),
        GgmlType::F16 => dequantize_blocks::<F16>(src, dst),
        GgmlType::BF16 => dequantize_blocks::<Bf16>(src, dst),
        GgmlType::Q8_0 => dequantize_blocks::<Q8_0>(src, dst),
        GgmlType::TQ1_0 => dequantize_blocks::<Tq1_0>(src, dst),
        GgmlType::TQ2_0 => dequantize_blocks::<Tq2_0>(src, dst),
        GgmlType::I2_S => i2_s::dequantize_tensor(src, dst),
        _ => return Err(CodecError::Unsupported { ty }),
    }
    Ok(())
}

/// Map a ternary code to its 2-bit storage value `{-1, 0, 1} -> {0, 1, 2}`.
#[inline]
pub(crate) fn code_to_u2(ty: GgmlType, index: usize, value: i8) -> Result<u8, CodecError> {
    match value {
        -1 => Ok(0),
        0 => Ok(1),
        1 => Ok(2),
        _ => Err(CodecError::InvalidCode { ty, index, value }),
    }
}

fn check_ternary_args(
    ty: GgmlType,
    codes_len: usize,
    scale: f32,
    dst_len: usize,
) -> Result<(), CodecError> {
    if !ty.is_ternary() {
        return Err(CodecError::Unsupported { ty });
    }
    check_bytes(ty, codes_len, dst_len, "packed buffer")?;
    if !(scale.is_finite() && scale >= 0.0) {
        return Err(CodecError::InvalidScale { ty, scale });
    }
    Ok(())
}

/// Pack ternary `codes` with magnitude `scale` (weights `codes[i] * scale`)
/// straight into TQ1_0, TQ2_0 or I2_S bytes.
///
/// - TQ1_0 / TQ2_0: whole rows; every block that holds a non-zero code stores
///   `d = f16(scale)`, an all-zero block stores `d = 0`. For any finite
///   `scale` in the normal f32 range this writes exactly the bytes that
///   [`quantize_into`] (and so ggml / gguf-py) produce for the floats
///   `codes[i] * scale`.
/// - I2_S: a whole tensor; `dst` includes the trailer, which receives `scale`
///   as given (also when every code is zero).
///
/// Errors on a type that is not ternary, on length mismatches, on a code
/// outside `{-1, 0, 1}` and on a negative or non-finite scale.
pub fn pack_ternary_into(
    ty: GgmlType,
    codes: &[i8],
    scale: f32,
    dst: &mut [u8],
) -> Result<(), CodecError> {
    check_ternary_args(ty, codes.len(), scale, dst.len())?;
    match ty {
        GgmlType::TQ2_0 => {
            let d = half::f16::from_f32(scale).to_bits();
            for (i, (c, b)) in codes
                .chunks_exact(Tq2_0::BLOCK)
                .zip(dst.chunks_exact_mut(Tq2_0::BYTES))
                .enumerate()
            {
                tq2_0::pack_codes_block(c, d, i * Tq2_0::BLOCK, b)?;
            }
        }
        GgmlType::TQ1_0 => {
            let d = half::f16::from_f32(scale).to_bits();
            for (i, (c, b)) in codes
                .chunks_exact(Tq1_0::BLOCK)
                .zip(dst.chunks_exact_mut(Tq1_0::BYTES))
                .enumerate()
            {
                tq1_0::pack_codes_block(c, d, i * Tq1_0::BLOCK, b)?;
            }
        }
        GgmlType::I2_S => {
            let (packed, trailer) = dst.split_at_mut(codes.len() / 4);
            i2s_pack_codes(codes, packed)?;
            i2s_write_trailer(scale, trailer)?;
        }
        _ => return Err(CodecError::Unsupported { ty }),
    }
    Ok(())
}

/// Unpack TQ1_0, TQ2_0 or I2_S bytes into ternary `codes` and their scales.
///
/// - TQ1_0 / TQ2_0: `src` holds whole rows; `scales` receives one `d` (as f32)
///   per 256-element block, so `weight[i] = codes[i] * scales[i / 256]`.
/// - I2_S: `src` is a whole tensor including its trailer; `scales` has length 1
///   and receives the per-tensor scale.
///
/// Errors on length mismatches and, for the 2-bit formats, on the unused
/// code 3 ([`CodecError::CorruptCode`]). TQ1_0 bytes always decode to trits.
pub fn unpack_ternary_into(
    ty: GgmlType,
    src: &[u8],
    codes: &mut [i8],
    scales: &mut [f32],
) -> Result<(), CodecError> {
    if !ty.is_ternary() {
        return Err(CodecError::Unsupported { ty });
    }
    check_bytes(ty, codes.len(), src.len(), "packed buffer")?;
    let n_scales = if ty == GgmlType::I2_S {
        1
    } else {
        codes.len() / ty.block_size()
    };
    if scales.len() != n_scales {
        return Err(CodecError::LengthMismatch {
            ty,
            what: "scales",
            expected: n_scales,
            got: scales.len(),
        });
    }
    match ty {
        GgmlType::TQ2_0 => {
            for (i, ((b, c), s)) in src
                .chunks_exact(Tq2_0::BYTES)
                .zip(codes.chunks_exact_mut(Tq2_0::BLOCK))
                .zip(scales.iter_mut())
                .enumerate()
            {
                *s = tq2_0::unpack_codes_block(b, i * Tq2_0::BLOCK, c)?;
            }
        }
        GgmlType::TQ1_0 => {
            for ((b, c), s) in src
                .chunks_exact(Tq1_0::BYTES)
                .zip(codes.chunks_exact_mut(Tq1_0::BLOCK))
                .zip(scales.iter_mut())
            {
                *s = tq1_0::unpack_codes_block(b, c);
            }
        }
        GgmlType::I2_S => {
            let (packed, trailer) = src.split_at(codes.len() / 4);
            i2s_unpack_codes(packed, codes)?;
            scales[0] = i2s_read_scale(trailer)?;
        }
        _ => return Err(CodecError::Unsupported { ty }),
    }
    Ok(())
}

/// Largest |x| of a block, NaN-propagating like numpy's `max` (gguf-py's oracle).
#[inline]
pub(crate) fn block_absmax(src: &[f32]) -> f32 {
    let mut m = 0.0f32;
    for &v in src {
        let a = v.abs();
        if a.is_nan() || a > m {
            m = a;
            if a.is_nan() {
                break;
            }
        }
    }
    m
}

/// `roundf(v) + 1` clamped to a 2-bit ternary storage value in `{0, 1, 2}`
/// (ties away from zero, as `lroundf` in ggml-quants.c; NaN maps to 1).
#[inline]
pub(crate) fn round_to_u2(v: f32) -> u8 {
    let r = v.round();
    if r >= 1.0 {
        2
    } else if r <= -1.0 {
        0
    } else {
        1
    }
}

#[cfg(test)]
mod tests;
