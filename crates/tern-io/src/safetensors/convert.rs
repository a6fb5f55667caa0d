//! Little-endian element decoding to f32 and non-finite scans, working on
//! unaligned byte slices straight out of a memory map.

use ::safetensors::Dtype;
use half::{bf16, f16};

/// Whether [`decode_f32`] handles `dtype`.
pub fn is_f32_convertible(dtype: Dtype) -> bool {
    matches!(
        dtype,
        Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::U8 | Dtype::I8
    )
}

/// Decode `src` (little-endian elements of `dtype`) into `dst`, which must
/// hold exactly `src.len() / element_size` values. Returns `false` (leaving
/// `dst` untouched) for dtypes other than F32, F16, BF16, U8 and I8.
///
/// # Panics
/// If `dst.len()` does not match the element count of `src`.
pub fn decode_f32(dtype: Dtype, src: &[u8], dst: &mut [f32]) -> bool {
    if !is_f32_convertible(dtype) {
        return false;
    }
    let size = dtype.bitsize() / 8;
    assert_eq!(
        src.len(),
        dst.len() * size,
        "decode_f32: {} bytes of {dtype} for {} values",
        src.len(),
        dst.len()
    );
    match dtype {
        Dtype::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        Dtype::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
            }
        }
        Dtype::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32();
            }
        }
        Dtype::U8 => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = f32::from(s);
            }
        }
        Dtype::I8 => {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = f32::from(s as i8);
            }
        }
        _ => unreachable!("checked by is_f32_convertible"),
    }
    true
}

/// First NaN or infinity in `src`: `None` for unsupported dtypes,
/// `Some(None)` when every value is finite, `Some(Some((index, value)))` otherwise.
pub fn first_non_finite(dtype: Dtype, src: &[u8]) -> Option<Option<(usize, f32)>> {
    let found = match dtype {
        Dtype::U8 | Dtype::I8 => None,
        Dtype::F32 => src
            .chunks_exact(4)
            .map(|s| f32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            .enumerate()
            .find(|(_, v)| !v.is_finite()),
        Dtype::F16 => src
            .chunks_exact(2)
            .enumerate()
            .find(|(_, s)| u16::from_le_bytes([s[0], s[1]]) & 0x7c00 == 0x7c00)
            .map(|(i, s)| (i, f16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32())),
        Dtype::BF16 => src
            .chunks_exact(2)
            .enumerate()
            .find(|(_, s)| u16::from_le_bytes([s[0], s[1]]) & 0x7f80 == 0x7f80)
            .map(|(i, s)| {
                (
                    i,
                    bf16::from_bits(u16::from_le_bytes([s[0], s[1]])).to_f32(),
                )
            }),
        _ => return None,
    };
    Some(found)
}
