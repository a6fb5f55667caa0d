//! Q8_0: 32 elements as `{ f16 d; i8 qs[32] }` (34 bytes).

use super::BlockCodec;
use crate::dtype::GgmlType;
use half::f16;

/// Q8_0 block codec.
///
/// Quantize (as `quantize_row_q8_0_ref` in ggml-quants.c and gguf-py's
/// `Q8_0.quantize_blocks`, all in f32): `d = max|x| / 127`,
/// `id = d != 0 ? 1/d : 0`, `qs[j] = roundf(x[j] * id)` (ties away from zero),
/// stored `d` = f16 of `d` (nearest even). Dequantize: `qs[j] as f32 * f16(d)`.
///
/// This is the reference path that writes Q8_0 files. ggml's CPU backend also
/// has SIMD Q8_0 quantizers (for activations fed to its dot products) that use
/// `id = 127 / amax` and round half to EVEN (`_mm256_round_ps` with
/// `_MM_ROUND_NEAREST`); their bytes can differ from these on ties and in the
/// last bit of `id`. tern follows the reference, which gguf-py reproduces.
pub struct Q8_0;

impl BlockCodec for Q8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const BLOCK: usize = 32;
    const BYTES: usize = 34;

    fn quantize_block(src: &[f32], dst: &mut [u8]) {
        assert_eq!(src.len(), Self::BLOCK, "Q8_0 block length");
        let amax = super::block_absmax(src);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        dst[..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        for (q, &x) in dst[2..Self::BYTES].iter_mut().zip(src) {
            // |x * id| <= 127 up to rounding, so the saturating cast never clips
            // a finite value; NaN casts to 0.
            *q = ((x * id).round() as i8) as u8;
        }
    }

    fn dequantize_block(src: &[u8], dst: &mut [f32]) {
        assert_eq!(dst.len(), Self::BLOCK, "Q8_0 block length");
        let d = f16::from_bits(u16::from_le_bytes([src[0], src[1]])).to_f32();
        for (y, &q) in dst.iter_mut().zip(&src[2..Self::BYTES]) {
            *y = (q as i8) as f32 * d;
        }
    }
}
