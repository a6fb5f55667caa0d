//! BitNet b1.58 quantizers: absmean ternary weights and per-token absmax int8
//! activations.
//!
//! These reproduce, operation for operation in f32, the forward passes of
//! `WeightQuant` and `ActQuant` in Hugging Face transformers'
//! `integrations/bitnet.py` (and `BitLinear.activation_quant`, which uses the
//! same formula):
//!
//! ```text
//! WeightQuant:  s = 1.0 / mean(|W|).clamp(min=1e-5)      (f32)
//!               W_fq = (W * s).round().clamp(-1, 1) / s
//! ActQuant:     a = 127 / max(|x|, dim=-1).clamp(min=1e-5)  (f32, per row)
//!               x_fq = (x * a).round().clamp(-128, 127) / a
//! ```
//!
//! `torch.round` rounds half to even, which is [`f32::round_ties_even`] (not
//! [`f32::round`]); the weight scale is the reciprocal of the mean taken first
//! and multiplied in, and the dequantization divides by it.
//!
//! The BitLinear product in tern's terms, with `t = W_t · x_q` the i32 dot of
//! ternary codes and int8 activations:
//! `y = t * w_scale / a`, where `w_scale` is what [`absmean_ternary`] returns
//! (`1/s`) and `a` is the per-row scale written by [`absmax_int8_per_token`].
//!
//! Residual risk against torch: `max` and the element-wise steps are exact, so
//! activations match torch bit for bit. The weight mean is a float sum whose
//! order torch does not fix (its CPU kernel sums in vectorised cascades whose
//! shape depends on the SIMD width and on thread splitting, and the function is
//! `torch.compile`d, which may generate yet another order). tern sums `|W|` in
//! f64 and rounds the total to f32 once, which is within half an ulp of the
//! exact sum and so at least as close as any f32 order; then, as torch's CPU
//! `mean` does, divides that f32 sum by the element count (converted to f32).
//! The mean can therefore differ from torch's in its last bit, which can flip
//! the code of a weight whose `|W| * s` is within an ulp of 0.5 or 1.5 and
//! changes `1/s` by an ulp; nothing else differs. All of this covers f32 input;
//! torch casts bf16/f16 weights to f32 first, which callers do on loading.

/// Lower clamp of the absmean and absmax denominators (`clamp(min=1e-5)`).
pub const QUANT_EPS: f32 = 1e-5;

/// Torch's `x.clamp(min=lo)` in f32: NaN stays NaN.
#[inline]
fn clamp_min(x: f32, lo: f32) -> f32 {
    if x < lo {
        lo
    } else {
        x
    }
}

/// The multiplier `s = 1 / max(mean|W|, 1e-5)` of `WeightQuant` (f32).
///
/// The sum of `|W|` is accumulated in f64, rounded to f32 and divided by
/// `w.len() as f32` (see the module notes). An empty slice gives NaN, as torch's
/// mean of an empty tensor.
pub fn absmean_inv_scale(w: &[f32]) -> f32 {
    let sum: f64 = w.iter().map(|&v| v.abs() as f64).sum();
    let mean = (sum as f32) / (w.len() as f32);
    1.0 / clamp_min(mean, QUANT_EPS)
}

/// `round_half_even(v).clamp(-1, 1)` as a ternary code (NaN -> 0).
#[inline]
fn ternary_code(v: f32) -> i8 {
    v.round_ties_even().clamp(-1.0, 1.0) as i8
}

/// Absmean ternarization of a whole weight tensor, as `WeightQuant`.
///
/// Writes `out[i] = clamp(round_half_even(w[i] * s), -1, 1)` with `s` from
/// [`absmean_inv_scale`] and returns the weight scale `w_scale = 1.0 / s`
/// (one f32 division), so that `out[i] as f32 * w_scale` is bit-identical to
/// torch's `round(...).clamp(-1, 1) / s` for every element (up to the sign of
/// zero: torch can produce `-0.0`). `w_scale` is `mean|W|` up to the rounding
/// of the two reciprocals.
///
/// # Panics
/// If `out.len() != w.len()`.
pub fn absmean_ternary(w: &[f32], out: &mut [i8]) -> f32 {
    assert_eq!(out.len(), w.len(), "absmean_ternary: out length");
    let s = absmean_inv_scale(w);
    for (o, &x) in out.iter_mut().zip(w) {
        *o = ternary_code(x * s);
    }
    1.0 / s
}

/// `WeightQuant.forward` on f32: `out[i] = round(w[i] * s).clamp(-1, 1) / s`,
/// bit for bit (including `-0.0`). Returns `s` (the multiplier, not its
/// reciprocal).
///
/// # Panics
/// If `out.len() != w.len()`.
pub fn fake_quant_weight(w: &[f32], out: &mut [f32]) -> f32 {
    assert_eq!(out.len(), w.len(), "fake_quant_weight: out length");
    let s = absmean_inv_scale(w);
    for (o, &x) in out.iter_mut().zip(w) {
        *o = (x * s).round_ties_even().clamp(-1.0, 1.0) / s;
    }
    s
}

/// Largest |x| of a row, NaN-propagating like `torch.max`.
#[inline]
fn row_absmax(row: &[f32]) -> f32 {
    let mut m = 0.0f32;
    for &v in row {
        let a = v.abs();
        if a.is_nan() {
            return a;
        }
        if a > m {
            m = a;
        }
    }
    m
}

fn check_rows(what: &str, len: usize, row_len: usize, out: usize, scales: usize) {
    assert!(row_len > 0, "{what}: row_len must be > 0");
    assert_eq!(
        len % row_len,
        0,
        "{what}: length {len} is not a multiple of row_len {row_len}"
    );
    assert_eq!(out, len, "{what}: out length");
    assert_eq!(scales, len / row_len, "{what}: one scale per row");
}

/// Per-token (per-row) absmax int8 quantization, as `ActQuant`.
///
/// For each row of `row_len` elements: `a = 127 / max(max|x|, 1e-5)` (f32),
/// `out[i] = clamp(round_half_even(x[i] * a), -128, 127)`, `scales[row] = a`.
/// Dequantize with `out[i] as f32 / a`; the BitLinear product is
/// `y = (W_t · x_q) * w_scale / a`. NaN in a row makes `a` NaN and its codes 0.
///
/// # Panics
/// If `row_len == 0`, `x.len()` is not a multiple of `row_len`,
/// `out.len() != x.len()` or `scales.len() != x.len() / row_len`.
pub fn absmax_int8_per_token(x: &[f32], row_len: usize, out: &mut [i8], scales: &mut [f32]) {
    check_rows(
        "absmax_int8_per_token",
        x.len(),
        row_len,
        out.len(),
        scales.len(),
    );
    for ((row, q), a_out) in x
        .chunks_exact(row_len)
        .zip(out.chunks_exact_mut(row_len))
        .zip(scales.iter_mut())
    {
        let a = 127.0 / clamp_min(row_absmax(row), QUANT_EPS);
        *a_out = a;
        for (o, &v) in q.iter_mut().zip(row) {
            *o = (v * a).round_ties_even().clamp(-128.0, 127.0) as i8;
        }
    }
}

/// `ActQuant.forward` on f32: per row, `out[i] = round(x[i] * a).clamp(-128, 127) / a`
/// bit for bit, writing each row's `a` into `scales`.
///
/// # Panics
/// As [`absmax_int8_per_token`].
pub fn fake_quant_act(x: &[f32], row_len: usize, out: &mut [f32], scales: &mut [f32]) {
    check_rows("fake_quant_act", x.len(), row_len, out.len(), scales.len());
    for ((row, q), a_out) in x
        .chunks_exact(row_len)
        .zip(out.chunks_exact_mut(row_len))
        .zip(scales.iter_mut())
    {
        let a = 127.0 / clamp_min(row_absmax(row), QUANT_EPS);
        *a_out = a;
        for (o, &v) in q.iter_mut().zip(row) {
            *o = (v * a).round_ties_even().clamp(-128.0, 127.0) / a;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[test]
    fn weight_ties_round_to_even() {
        // sum |w| = 8 over 8 elements: mean 1, s = 1, so w * s is w itself.
        let w = [0.5f32, -0.5, 1.5, -1.5, 2.5, 0.0, -1.0, 0.5];
        assert_eq!(absmean_inv_scale(&w), 1.0);
        let mut out = [9i8; 8];
        let scale = absmean_ternary(&w, &mut out);
        assert_eq!(scale, 1.0);
        // half to even: 0.5 -> 0, 1.5 -> 2 -> clamp 1, 2.5 -> 2 -> 1
        assert_eq!(out, [0, 0, 1, -1, 1, 0, -1, 0]);
    }

    #[test]
    fn weight_scale_is_reciprocal_of_clamped_mean() {
        let w = [0.0f32; 8];
        let mut out = [5i8; 8];
        let scale = absmean_ternary(&w, &mut out);
        assert_eq!(out, [0; 8]);
        assert_eq!(absmean_inv_scale(&w), 1.0 / 1e-5f32);
        assert_eq!(scale, 1.0 / (1.0 / 1e-5f32));

        let w = [3.0f32, -1.0, 0.0, 4.0]; // mean 2
        assert_eq!(absmean_inv_scale(&w), 0.5);
        let mut out = [0i8; 4];
        assert_eq!(absmean_ternary(&w, &mut out), 2.0);
        // 1.5 -> 2 -> 1 ; -0.5 -> -0 -> 0 ; 0 ; 2 -> 1
        assert_eq!(out, [1, 0, 0, 1]);
        assert!(absmean_inv_scale(&[]).is_nan());
    }

    #[test]
    fn fake_quant_weight_matches_codes_times_scale() {
        let mut rng = StdRng::seed_from_u64(7);
        let w: Vec<f32> = (0..1000).map(|_| rng.random_range(-0.1f32..0.1)).collect();
        let mut codes = vec![0i8; w.len()];
        let scale = absmean_ternary(&w, &mut codes);
        let mut fq = vec![0f32; w.len()];
        let s = fake_quant_weight(&w, &mut fq);
        assert_eq!(s, absmean_inv_scale(&w));
        for ((&c, &f), &x) in codes.iter().zip(&fq).zip(&w) {
            // same value; the fake-quant keeps torch's signed zeros
            assert_eq!(c as f32 * scale, f, "x = {x}");
            assert_eq!(f.to_bits() == (-0.0f32).to_bits(), c == 0 && x < 0.0);
        }
        assert!(codes.contains(&1) && codes.contains(&-1));
        assert!(codes.contains(&0));
    }

    #[test]
    fn activation_quant_per_row() {
        // row 0: max 127 -> a = 1, so codes are round_half_even(x)
        // row 1: all zeros -> a = 127 / 1e-5
        // row 2: max 2 -> a = 63.5
        let x = [
            127.0f32, 0.5, 1.5, -2.5, -127.0, 3.49, //
            0.0, 0.0, 0.0, 0.0, 0.0, 0.0, //
            2.0, -2.0, 1.0, 0.0, 0.25, -1.0,
        ];
        let mut q = [0i8; 18];
        let mut a = [0f32; 3];
        absmax_int8_per_token(&x, 6, &mut q, &mut a);
        assert_eq!(a, [1.0, 127.0 / 1e-5f32, 63.5]);
        assert_eq!(&q[..6], &[127, 0, 2, -2, -127, 3]);
        assert_eq!(&q[6..12], &[0; 6]);
        // 2*63.5 = 127, 1*63.5 = 63.5 -> 64 (even), 0.25*63.5 = 15.875 -> 16
        assert_eq!(&q[12..], &[127, -127, 64, 0, 16, -64]);

        let mut fq = [0f32; 18];
        let mut a2 = [0f32; 3];
        fake_quant_act(&x, 6, &mut fq, &mut a2);
        assert_eq!(a, a2);
        for i in 0..18 {
            assert_eq!(fq[i], q[i] as f32 / a[i / 6]);
        }
    }

    #[test]
    fn activation_tiny_rows_use_eps() {
        // max|x| = 1e-5 is not below the clamp, so a = 127 / 1e-5
        let x = [1e-6f32, -1e-5, 4e-6, 0.0];
        let mut q = [0i8; 4];
        let mut a = [0f32; 1];
        absmax_int8_per_token(&x, 4, &mut q, &mut a);
        assert_eq!(a[0], 127.0 / 1e-5f32);
        assert_eq!(q, [13, -127, 51, 0]);
    }

    #[test]
    #[should_panic(expected = "not a multiple of row_len")]
    fn activation_rejects_ragged_rows() {
        let mut q = [0i8; 5];
        let mut a = [0f32; 1];
        absmax_int8_per_token(&[0.0; 5], 4, &mut q, &mut a);
    }
}
