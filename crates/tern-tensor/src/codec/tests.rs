// Bit layouts below are spelled out field by field, zero fields included.
#![allow(clippy::identity_op, clippy::erasing_op)]

use super::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

const ALL: [GgmlType; 7] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::I2_S,
];

fn random_codes(rng: &mut StdRng, n: usize) -> Vec<i8> {
    (0..n).map(|_| rng.random_range(-1i8..=1)).collect()
}

fn quantize_vec(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0xAAu8; quantized_len(ty, x.len()).unwrap()];
    quantize_into(ty, x, &mut q).unwrap();
    q
}

fn dequantize_vec(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut y = vec![f32::NAN; n];
    dequantize_into(ty, q, &mut y).unwrap();
    y
}

/// A scale for which `code * scale` survives `ty` exactly: f16-representable
/// for the TQ types (d is stored as f16), `127 * 2^-k` for Q8_0 (d = 2^-k).
fn exact_scale(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::Q8_0 => 127.0 / 64.0,
        _ => 0.021484375, // 11 * 2^-9, exact in f16 and bf16
    }
}

#[test]
fn ternary_round_trip_is_exact_for_every_codec() {
    let mut rng = StdRng::seed_from_u64(1);
    for ty in ALL {
        let n = 3 * 256; // a multiple of every block size
        let s = exact_scale(ty);
        let mut codes = random_codes(&mut rng, n);
        // an all-zero block and an all-negative block
        codes[..256].fill(0);
        codes[256..512].fill(-1);
        let x: Vec<f32> = codes.iter().map(|&c| c as f32 * s).collect();
        let q = quantize_vec(ty, &x);
        let y = dequantize_vec(ty, &q, n);
        for (i, (a, b)) in x.iter().zip(&y).enumerate() {
            assert_eq!(a, b, "{ty}: element {i}");
        }
    }
}

#[test]
fn pack_ternary_matches_float_quantizer_and_unpacks() {
    let mut rng = StdRng::seed_from_u64(2);
    for ty in [GgmlType::TQ1_0, GgmlType::TQ2_0, GgmlType::I2_S] {
        for s in [0.7311f32, 1.0, 3.5e-3, 1234.5] {
            let n = 4 * 256;
            let mut codes = random_codes(&mut rng, n);
            codes[256..512].fill(0);
            codes[512..768].fill(1);
            let x: Vec<f32> = codes.iter().map(|&c| c as f32 * s).collect();
            let from_float = quantize_vec(ty, &x);
            let mut packed = vec![0u8; from_float.len()];
            pack_ternary_into(ty, &codes, s, &mut packed).unwrap();
            assert_eq!(packed, from_float, "{ty} scale {s}");

            let mut back = vec![7i8; n];
            let n_scales = if ty == GgmlType::I2_S { 1 } else { n / 256 };
            let mut scales = vec![0f32; n_scales];
            unpack_ternary_into(ty, &packed, &mut back, &mut scales).unwrap();
            assert_eq!(back, codes, "{ty}");
            if ty == GgmlType::I2_S {
                assert_eq!(scales, [s]);
            } else {
                let d = half::f16::from_f32(s).to_f32();
                assert_eq!(scales, [d, 0.0, d, d], "{ty}: zero block stores d = 0");
            }
        }
    }
}

#[test]
fn tq_ties_round_away_from_zero() {
    // d = 2 is a power of two, so id = 0.5 exactly and x * id hits ±0.5.
    for ty in [GgmlType::TQ1_0, GgmlType::TQ2_0] {
        let mut x = vec![0f32; 256];
        x[0] = 2.0;
        x[1] = 1.0;
        x[2] = -1.0;
        x[3] = 0.99999994; // just below the tie
        x[4] = -2.0;
        let y = dequantize_vec(ty, &quantize_vec(ty, &x), 256);
        assert_eq!(&y[..6], &[2.0, 2.0, -2.0, 0.0, -2.0, 0.0], "{ty}");
    }
}

#[test]
fn q8_0_ties_round_away_from_zero() {
    // amax = 127 -> d = 1, id = 1.
    let mut x = [0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = -2.5;
    x[3] = 0.5;
    x[4] = -0.5;
    x[5] = 3.5;
    let q = quantize_vec(GgmlType::Q8_0, &x);
    assert_eq!(&q[..2], &half::f16::from_f32(1.0).to_bits().to_le_bytes());
    let qs: Vec<i8> = q[2..8].iter().map(|&b| b as i8).collect();
    assert_eq!(qs, [127, 3, -3, 1, -1, 4]);
}

#[test]
fn tq2_0_layout() {
    let mut codes = vec![0i8; 256];
    codes[0] = 1; // byte 0, bits 0..1
    codes[32] = -1; // byte 0, bits 2..3
    codes[96] = 1; // byte 0, bits 6..7
    codes[128 + 32 + 5] = 1; // byte 32 + 5, bits 2..3
    let mut b = vec![0u8; 66];
    pack_ternary_into(GgmlType::TQ2_0, &codes, 1.0, &mut b).unwrap();
    assert_eq!(b[0], 2 | 0 << 2 | 1 << 4 | 2 << 6);
    assert_eq!(b[1], 0b0101_0101);
    assert_eq!(b[37], 1 | 2 << 2 | 1 << 4 | 1 << 6);
    assert_eq!(&b[64..], &0x3c00u16.to_le_bytes()); // d = 1.0 stored last
}

#[test]
fn tq1_0_layout() {
    let mut codes = vec![0i8; 256];
    codes[0] = 1; // qs[0], most significant trit
    codes[160 + 16] = -1; // qs[32], second trit
    codes[240 + 3 + 12] = 1; // qh[3], fourth trit
    let mut b = vec![0u8; 54];
    pack_ternary_into(GgmlType::TQ1_0, &codes, 1.0, &mut b).unwrap();
    let ceil = |q: u16| (q * 256).div_ceil(243) as u8;
    assert_eq!(b[0], ceil(2 * 81 + 27 + 9 + 3 + 1));
    assert_eq!(b[1], ceil(121)); // all zero codes
    assert_eq!(b[32], ceil(81 + 0 * 27 + 9 + 3 + 1));
    assert_eq!(b[51], ceil((27 + 9 + 3 + 2) * 3));
    assert_eq!(&b[52..], &0x3c00u16.to_le_bytes());
    // every byte value decodes to trits
    let mut all = [0u8; 54];
    for v in 0..=255u8 {
        all[..52].fill(v);
        let mut c = [0i8; 256];
        let mut s = [0f32; 1];
        unpack_ternary_into(GgmlType::TQ1_0, &all, &mut c, &mut s).unwrap();
        assert!(c.iter().all(|&t| (-1..=1).contains(&t)));
    }
}

#[test]
fn i2_s_layout_and_trailer() {
    let n = 256;
    let mut codes = vec![0i8; n];
    codes[0] = 1; // byte 0, bits 6..7
    codes[32] = -1; // byte 0, bits 4..5
    codes[96] = 1; // byte 0, bits 0..1
    codes[128 + 64 + 7] = -1; // block 1, byte 7, bits 2..3
    let mut b = vec![0xEEu8; n / 4 + 32];
    pack_ternary_into(GgmlType::I2_S, &codes, 0.25, &mut b).unwrap();
    assert_eq!(b[0], 2 << 6 | 0 << 4 | 1 << 2 | 2);
    assert_eq!(b[1], 0b0101_0101);
    assert_eq!(b[32 + 7], 1 << 6 | 1 << 4 | 0 << 2 | 1);
    assert_eq!(&b[64..68], &0.25f32.to_le_bytes());
    assert!(b[68..].iter().all(|&z| z == 0));

    // float path: scale = max|x| over the tensor, codes by sign, |x| < 1e-6 -> 0
    let mut x = vec![0f32; n];
    x[0] = 0.3;
    x[1] = -5.0;
    x[2] = 9e-7;
    x[3] = -1e-6; // as f64 this f32 is -9.99999997e-7, below the threshold
    x[4] = -1.01e-6;
    let q = quantize_vec(GgmlType::I2_S, &x);
    assert_eq!(&q[64..68], &5.0f32.to_le_bytes());
    let y = dequantize_vec(GgmlType::I2_S, &q, n);
    assert_eq!(&y[..6], &[5.0, -5.0, 0.0, 0.0, -5.0, 0.0]);
}

#[test]
fn f16_rounds_to_nearest_even() {
    let cases: [(f32, u16); 8] = [
        (1.0, 0x3c00),
        (1.0 + 1.0 / 2048.0, 0x3c00),        // tie -> even (down)
        (1.0 + 3.0 / 2048.0, 0x3c02),        // tie -> even (up)
        (1.0 + 1.0 / 2048.0 + 1e-7, 0x3c01), // above the tie
        (65520.0, 0x7c00),                   // rounds to inf
        (-0.0, 0x8000),
        (1.0 / 16_777_216.0, 0x0001), // 2^-24, smallest subnormal
        (f32::NEG_INFINITY, 0xfc00),
    ];
    for (x, bits) in cases {
        let q = quantize_vec(GgmlType::F16, &[x]);
        assert_eq!(u16::from_le_bytes([q[0], q[1]]), bits, "{x}");
    }
    let q = quantize_vec(GgmlType::F16, &[f32::NAN]);
    assert!(dequantize_vec(GgmlType::F16, &q, 1)[0].is_nan());
}

#[test]
fn bf16_rounds_to_nearest_even() {
    let cases: [(u32, u16); 7] = [
        (0x3f80_8000, 0x3f80), // tie -> even (down)
        (0x3f81_8000, 0x3f82), // tie -> even (up)
        (0x3f80_8001, 0x3f81),
        (0x3f80_7fff, 0x3f80),
        (0x7f7f_ffff, 0x7f80), // max finite rounds to inf
        (0xff80_0000, 0xff80), // -inf
        (0x7f80_0001, 0x7fc0), // signalling NaN made quiet
    ];
    for (x, bits) in cases {
        let q = quantize_vec(GgmlType::BF16, &[f32::from_bits(x)]);
        assert_eq!(u16::from_le_bytes([q[0], q[1]]), bits, "{x:#x}");
    }
    let y = dequantize_vec(GgmlType::BF16, &0x3f82u16.to_le_bytes(), 1);
    assert_eq!(y[0].to_bits(), 0x3f82_0000);
}

#[test]
fn block_codec_constants_match_dtype_table() {
    fn check<C: BlockCodec>() {
        assert_eq!(C::BLOCK, C::TYPE.block_size(), "{}", C::TYPE);
        assert_eq!(C::BYTES, C::TYPE.block_bytes(), "{}", C::TYPE);
    }
    check::<F32>();
    check::<F16>();
    check::<Bf16>();
    check::<Q8_0>();
    check::<Tq1_0>();
    check::<Tq2_0>();
    check::<I2s>();
}

#[test]
fn length_errors_never_panic() {
    let x = vec![0.5f32; 256];
    let mut q = vec![0u8; 1000];
    assert!(matches!(
        quantize_into(GgmlType::Q4_0, &x, &mut q),
        Err(CodecError::Unsupported { .. })
    ));
    assert!(matches!(
        quantize_into(GgmlType::Q8_0, &x[..100], &mut q),
        Err(CodecError::Misaligned {
            elements: 100,
            block: 32,
            ..
        })
    ));
    assert!(matches!(
        quantize_into(GgmlType::TQ2_0, &x, &mut q),
        Err(CodecError::LengthMismatch {
            expected: 66,
            got: 1000,
            ..
        })
    ));
    // I2_S needs the trailer
    assert!(matches!(
        quantize_into(GgmlType::I2_S, &x, &mut q[..64]),
        Err(CodecError::LengthMismatch {
            expected: 96,
            got: 64,
            ..
        })
    ));
    let mut y = vec![0f32; 256];
    assert!(matches!(
        dequantize_into(GgmlType::TQ1_0, &q[..53], &mut y),
        Err(CodecError::LengthMismatch {
            expected: 54,
            got: 53,
            ..
        })
    ));
    assert!(matches!(
        dequantize_into(GgmlType::I2_S, &q[..64], &mut y[..255]),
        Err(CodecError::Misaligned { .. })
    ));
    assert!(matches!(
        dequantize_into(GgmlType::IQ2_XXS, &q[..66], &mut y),
        Err(CodecError::Unsupported { .. })
    ));
    // empty input is fine for block formats; I2_S still has its trailer
    quantize_into(GgmlType::Q8_0, &[], &mut []).unwrap();
    let mut t = [1u8; 32];
    quantize_into(GgmlType::I2_S, &[], &mut t).unwrap();
    assert_eq!(t, [0u8; 32]);
    assert!(matches!(
        quantized_len(GgmlType::F32, usize::MAX / 2),
        Err(CodecError::Overflow { .. })
    ));
    let msg = quantize_into(GgmlType::TQ2_0, &x, &mut q)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("TQ2_0") && msg.contains("66"), "{msg}");
}

#[test]
fn ternary_content_errors() {
    let mut codes = vec![0i8; 256];
    let mut b = vec![0u8; 66];
    codes[200] = 2;
    assert_eq!(
        pack_ternary_into(GgmlType::TQ2_0, &codes, 1.0, &mut b),
        Err(CodecError::InvalidCode {
            ty: GgmlType::TQ2_0,
            index: 200,
            value: 2
        })
    );
    codes[200] = 0;
    for bad in [-1.0f32, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            pack_ternary_into(GgmlType::TQ1_0, &codes, bad, &mut b[..54]),
            Err(CodecError::InvalidScale { .. })
        ));
    }
    assert!(matches!(
        pack_ternary_into(GgmlType::Q8_0, &codes[..32], 1.0, &mut b[..34]),
        Err(CodecError::Unsupported { .. })
    ));
    // code 3 in packed 2-bit data
    b.fill(0x55);
    b[10] = 0b1101_0101; // element 10 + 32*3 = 106 holds 3 (bits 6..7)
    let mut scales = [0f32; 1];
    assert_eq!(
        unpack_ternary_into(GgmlType::TQ2_0, &b, &mut codes, &mut scales),
        Err(CodecError::CorruptCode {
            ty: GgmlType::TQ2_0,
            element: 106
        })
    );
    let mut i2 = vec![0x55u8; 64 + 32];
    i2[33] = 0b0101_0111; // block 1, byte 1, last group: element 128 + 1 + 96
    let mut c = vec![0i8; 256];
    assert_eq!(
        unpack_ternary_into(GgmlType::I2_S, &i2, &mut c, &mut scales),
        Err(CodecError::CorruptCode {
            ty: GgmlType::I2_S,
            element: 225
        })
    );
    let mut two = [0f32; 2];
    assert!(matches!(
        unpack_ternary_into(GgmlType::I2_S, &i2, &mut c, &mut two),
        Err(CodecError::LengthMismatch { what: "scales", .. })
    ));
    assert!(i2s_read_scale(&[0u8; 3]).is_err());
    assert!(i2s_write_trailer(1.0, &mut [0u8; 31]).is_err());
    assert!(matches!(
        i2s_pack_codes(&c[..100], &mut [0u8; 25]),
        Err(CodecError::Misaligned { .. })
    ));
}

#[test]
fn random_floats_stay_within_half_a_step() {
    let mut rng = StdRng::seed_from_u64(3);
    let n = 512;
    let x: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    for ty in [GgmlType::Q8_0, GgmlType::TQ1_0, GgmlType::TQ2_0] {
        let y = dequantize_vec(ty, &quantize_vec(ty, &x), n);
        let block = ty.block_size();
        let levels = if ty == GgmlType::Q8_0 { 127.0 } else { 1.0 };
        for (b, (xs, ys)) in x.chunks(block).zip(y.chunks(block)).enumerate() {
            let d = xs.iter().fold(0f32, |m, v| m.max(v.abs())) / levels;
            for (a, q) in xs.iter().zip(ys) {
                // half a step plus the f16 rounding of d
                assert!(
                    (a - q).abs() <= 0.5 * d + 1e-3 * d * levels,
                    "{ty} block {b}"
                );
            }
        }
    }
}
