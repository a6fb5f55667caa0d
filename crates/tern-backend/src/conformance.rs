//! The conformance suite: one body per check, generic over [`Backend`], run
//! for every implementation through [`conformance_tests!`](crate::conformance_tests).
//!
//! Oracles, never the backend agreeing with itself:
//! - [`reference`](mod@reference): a scalar implementation of every op written with plain
//!   loops and f64 arithmetic. Integer paths are compared bit for bit (the
//!   ternary product against an i64 dot of the codes and the int8 activations
//!   that tern-tensor's normative quantizer produces, then the contract's float
//!   formula `acc as f32 * w_scale / a` on that exact accumulator); float paths
//!   against the f64 value with the error budget stated at each check.
//! - Central finite differences in f64 on the reference forward for every
//!   backward op: the backend's gradient of `L = Σ dy ⊙ f(inputs)` must match
//!   `(L(x + h) - L(x - h)) / 2h` for every input element.
//!
//! Inputs come from a fixed-seed generator, so a failure reproduces exactly.
//! Every check panics with the op, the index and both values on a mismatch.
//!
//! Stamping for a backend whose constructor may fail (no GPU adapter): the
//! constructor expression is placed inside each test body, so it can print a
//! reason and `return` early, for example
//! `conformance_tests!(match Wgpu::new() { Ok(b) => b, Err(e) => { eprintln!("skipped: {e}"); return; } })`.

use crate::multi::{AdamWTensor, Product};
use crate::{Activation, AdamW, AttnDims, Backend, Gemm, TernaryCodes};
use tern_tensor::rng::SplitMix64;

/// True under `CI=true`, where every test must run: a missing oracle, venv,
/// device or data set is then a failure, never a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Say that a test cannot run here because of `reason` (what is missing and
/// how to provide it): under `CI=true` this panics, elsewhere it prints
/// `SKIPPED: reason` and the caller returns. Every test that can skip goes
/// through here, so CI can never pass without running it.
#[track_caller]
pub fn missing(reason: impl std::fmt::Display) {
    if in_ci() {
        panic!("{reason}; required under CI=true (.ci/run provides it)");
    }
    eprintln!("SKIPPED: {reason}");
}

/// Stamps one `#[test]` per conformance check, each building the backend
/// with `$ctor` and calling the check. Use inside a module to stamp several
/// backends (or configurations) in one file.
#[macro_export]
macro_rules! conformance_tests {
    ($ctor:expr) => {
        $crate::conformance_tests!(@each $ctor;
            ternary_matmul_exact,
            ternary_matmul_integer_inputs,
            ternary_matmul_edge_rows,
            ternary_upload_rejects_bad_codes,
            ternary_matmul_float_reference,
            ternary_matmul_backward_reference,
            ternary_matmul_backward_fd,
            matmul_reference,
            matmul_gradients_fd,
            memory_and_elementwise,
            sum_squares_reference,
            dropout_mask,
            rmsnorm_reference,
            rmsnorm_backward_fd,
            rope_reference,
            rope_backward_fd,
            attention_reference,
            attention_kv_cache,
            attention_backward_fd,
            gate_reference,
            gate_backward_fd,
            embedding_exact,
            embedding_backward_fd,
            half_upload_rounds_to_nearest_even,
            half_upload_refuses_values_beyond_f16,
            embedding_half_exact,
            matmul_half_reference,
            cross_entropy_reference,
            cross_entropy_backward_fd,
            adamw_matches_pytorch,
            adamw_multi_matches_per_tensor,
            matmul_many_matches_matmul,
            requantize_ternary_exact,
            fake_quant_act_exact,
            fused_block_ops_match_composition,
            argmax_reference,
        );
    };
    (@each $ctor:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let backend = $ctor;
                $crate::conformance::$name(&backend);
            }
        )*
    };
}

// ---------------------------------------------------------------------------
// helpers

/// The generator of the suite's inputs: tern's [`SplitMix64`] stream (its
/// `next_u64`, `uniform`, `below` through `Deref`) with the two input shapes
/// the suite draws, [`Rng::vec`] and [`Rng::codes`].
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::new(seed))
    }
    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    /// Ternary codes with the given probability of zero.
    pub fn codes(&mut self, n: usize, p_zero: f32) -> Vec<i8> {
        (0..n)
            .map(|_| {
                if self.uniform(0.0, 1.0) < p_zero {
                    0
                } else if self.next_u64() & 1 == 0 {
                    1
                } else {
                    -1
                }
            })
            .collect()
    }
}

impl std::ops::Deref for Rng {
    type Target = SplitMix64;
    fn deref(&self) -> &SplitMix64 {
        &self.0
    }
}

impl std::ops::DerefMut for Rng {
    fn deref_mut(&mut self) -> &mut SplitMix64 {
        &mut self.0
    }
}

fn up<B: Backend>(b: &B, x: &[f32]) -> B::Buf {
    b.upload(x).expect("upload")
}
fn down<B: Backend>(b: &B, x: &B::Buf) -> Vec<f32> {
    b.download(x).expect("download")
}
fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Panics unless `|got - want| <= atol + rtol * |want|` everywhere.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let tol = atol + rtol * w.abs();
        if err.is_nan() || err > tol {
            panic!("{what}: index {i}: got {g}, want {w} (error {err:e} > tolerance {tol:e})");
        }
    }
}

/// Panics unless `got[i] <= tol[i]` away from `want[i]` everywhere.
#[track_caller]
fn assert_within(what: &str, got: &[f32], want: &[f64], tol: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((&g, &w), &t)) in got.iter().zip(want).zip(tol).enumerate() {
        let err = (g as f64 - w).abs();
        if err.is_nan() || err > t {
            panic!("{what}: index {i}: got {g}, want {w} (error {err:e} > tolerance {t:e})");
        }
    }
}

/// Bit-for-bit equality (`+0.0 == -0.0` counts as equal).
#[track_caller]
fn assert_exact(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g != w && !(g.is_nan() && w.is_nan()) {
            panic!(
                "{what}: index {i}: got {g:e} ({:#010x}), want {w:e} ({:#010x})",
                g.to_bits(),
                w.to_bits()
            );
        }
    }
}

/// Central finite-difference gradient of `f` at `x` (f64).
pub fn fd_grad(f: impl Fn(&[f64]) -> f64, x: &[f64], h: f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = xp[i];
            xp[i] = x0 + h;
            let fp = f(&xp);
            xp[i] = x0 - h;
            let fm = f(&xp);
            xp[i] = x0;
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

/// Central finite-difference gradients of `L = Σ dy ⊙ f(inputs)` with
/// respect to each of the inputs (the others held fixed).
pub fn fd_grads<const N: usize>(
    f: impl Fn([&[f64]; N]) -> Vec<f64>,
    inputs: [&[f64]; N],
    dy: &[f64],
    h: f64,
) -> [Vec<f64>; N] {
    std::array::from_fn(|i| {
        let loss = |x: &[f64]| {
            let mut args = inputs;
            args[i] = x;
            weighted(dy, &f(args))
        };
        fd_grad(loss, inputs[i], h)
    })
}

fn weighted(dy: &[f64], y: &[f64]) -> f64 {
    dy.iter().zip(y).map(|(a, b)| a * b).sum()
}

// ---------------------------------------------------------------------------
// reference

/// Scalar f64 reference implementations of every op (plain loops).
pub mod reference {
    use crate::{Activation, AttnDims, Gemm};

    /// The f16 nearest to `x` (ties to even), computed in f64 from the
    /// definition: the spacing of f16 values is `2^(e - 10)` in the binade
    /// `[2^e, 2^(e+1))` for `e >= -14` and `2^-24` below it (subnormals). A
    /// result above 65504 has no finite f16. For finite `x`.
    pub fn round_f16(x: f32) -> f64 {
        let v = x as f64;
        let a = v.abs();
        let q = if a < 2f64.powi(-14) {
            2f64.powi(-24)
        } else {
            // the binade of an f32 (the binary exponent of its bits)
            let e = ((x.to_bits() >> 23) & 0xff) as i32 - 127;
            2f64.powi(e - 10)
        };
        (v / q).round_ties_even() * q
    }

    /// Per-row int8 quantization by tern-tensor's `absmax_int8_per_token`
    /// (the normative BitNet semantics): codes and scales `a`.
    pub fn quant_act(x: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
        let mut q = vec![0i8; rows * cols];
        let mut a = vec![0f32; rows];
        if rows > 0 {
            tern_tensor::quant::absmax_int8_per_token(x, cols, &mut q, &mut a);
        }
        (q, a)
    }

    /// Absmean ternarization written out from its definition: `|W|` summed
    /// in f64 and rounded to f32 once, divided by the count as f32, clamped
    /// below at 1e-5; `s = 1 / mean`; codes `clamp(round_half_even(W * s),
    /// -1, 1)`; returns the codes and the scale `1 / s`.
    pub fn absmean_ternary(w: &[f32]) -> (Vec<i8>, f32) {
        let mut sum = 0f64;
        for &v in w {
            sum += (v as f64).abs();
        }
        let mut mean = (sum as f32) / (w.len() as f32);
        if mean < 1e-5 {
            mean = 1e-5;
        }
        let s = 1.0 / mean;
        let codes = w
            .iter()
            .map(|&v| {
                let t = (v * s).round_ties_even();
                if t > 0.0 {
                    1
                } else if t < 0.0 {
                    -1
                } else {
                    0
                }
            })
            .collect();
        (codes, 1.0 / s)
    }

    /// Per-row fake quantization written out from its definition:
    /// `a = 127 / max(max|x|, 1e-5)`, `clamp(round_half_even(x * a), -128, 127) / a`.
    pub fn fake_quant_act(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut y = vec![0f32; rows * cols];
        for r in 0..rows {
            let row = &x[r * cols..(r + 1) * cols];
            let mut m = 0f32;
            for &v in row {
                if v.abs() > m {
                    m = v.abs();
                }
            }
            let a = 127.0 / if m < 1e-5 { 1e-5 } else { m };
            for c in 0..cols {
                let q = (row[c] * a).round_ties_even().clamp(-128.0, 127.0);
                y[r * cols + c] = q / a;
            }
        }
        y
    }

    /// `acc[r, o] = Σ_c codes[o, c] * xq[r, c]` in i64.
    pub fn ternary_acc(codes: &[i8], out: usize, cols: usize, xq: &[i8], rows: usize) -> Vec<i64> {
        let mut acc = vec![0i64; rows * out];
        for r in 0..rows {
            for o in 0..out {
                let mut s = 0i64;
                for c in 0..cols {
                    s += codes[o * cols + c] as i64 * xq[r * cols + c] as i64;
                }
                acc[r * out + o] = s;
            }
        }
        acc
    }

    /// The contract's BitLinear output on the exact accumulators.
    pub fn ternary_matmul(
        codes: &[i8],
        out: usize,
        cols: usize,
        scale: f32,
        x: &[f32],
        rows: usize,
    ) -> Vec<f32> {
        let (xq, a) = quant_act(x, rows, cols);
        let acc = ternary_acc(codes, out, cols, &xq, rows);
        let mut y = vec![0f32; rows * out];
        for r in 0..rows {
            for o in 0..out {
                let t = acc[r * out + o];
                assert_eq!(t as i32 as i64, t, "accumulator exceeds i32");
                y[r * out + o] = t as i32 as f32 * scale / a[r];
            }
        }
        y
    }

    /// `y = x · (W_t * scale)ᵀ` with float activations, and the magnitude
    /// `Σ_c |x[r, c] * code[o, c] * scale|` that bounds its rounding error.
    pub fn ternary_float(
        codes: &[i8],
        out: usize,
        cols: usize,
        scale: f64,
        x: &[f64],
        rows: usize,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0f64; rows * out];
        let mut mag = vec![0f64; rows * out];
        for r in 0..rows {
            for o in 0..out {
                let (mut s, mut sa) = (0f64, 0f64);
                for c in 0..cols {
                    let v = x[r * cols + c] * codes[o * cols + c] as f64;
                    s += v;
                    sa += v.abs();
                }
                y[r * out + o] = s * scale;
                mag[r * out + o] = sa * scale.abs();
            }
        }
        (y, mag)
    }

    /// `dx = dy · (W_t * scale)`.
    pub fn ternary_backward(
        codes: &[i8],
        out: usize,
        cols: usize,
        scale: f64,
        dy: &[f64],
        rows: usize,
    ) -> Vec<f64> {
        let mut dx = vec![0f64; rows * cols];
        for r in 0..rows {
            for o in 0..out {
                for c in 0..cols {
                    dx[r * cols + c] += dy[r * out + o] * codes[o * cols + c] as f64 * scale;
                }
            }
        }
        dx
    }

    /// `op(A)[i, p]`.
    fn at(a: &[f64], g: &Gemm, i: usize, p: usize) -> f64 {
        if g.trans_a {
            a[p * g.m + i]
        } else {
            a[i * g.k + p]
        }
    }
    fn bt(b: &[f64], g: &Gemm, p: usize, j: usize) -> f64 {
        if g.trans_b {
            b[j * g.k + p]
        } else {
            b[p * g.n + j]
        }
    }

    /// `(C, Σ_p |alpha op(A)_ip op(B)_pj| + |beta C_ij|)`: the value and the
    /// magnitude that bounds its rounding error. `beta == 0` ignores C.
    pub fn matmul(a: &[f64], b: &[f64], c: &[f64], g: Gemm) -> (Vec<f64>, Vec<f64>) {
        let mut out = vec![0f64; g.m * g.n];
        let mut mag = vec![0f64; g.m * g.n];
        for i in 0..g.m {
            for j in 0..g.n {
                let (mut s, mut sa) = (0f64, 0f64);
                for p in 0..g.k {
                    let v = at(a, &g, i, p) * bt(b, &g, p, j);
                    s += v;
                    sa += v.abs();
                }
                let alpha = g.alpha as f64;
                let cin = if g.beta == 0.0 {
                    0.0
                } else {
                    g.beta as f64 * c[i * g.n + j]
                };
                out[i * g.n + j] = alpha * s + cin;
                mag[i * g.n + j] = alpha.abs() * sa + cin.abs();
            }
        }
        (out, mag)
    }

    /// `(y, rstd)`.
    pub fn rmsnorm(
        x: &[f64],
        w: &[f64],
        rows: usize,
        dim: usize,
        eps: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0f64; rows * dim];
        let mut rstd = vec![0f64; rows];
        for r in 0..rows {
            let mut ss = 0f64;
            for i in 0..dim {
                ss += x[r * dim + i] * x[r * dim + i];
            }
            let rs = 1.0 / (ss / dim as f64 + eps).sqrt();
            rstd[r] = rs;
            for i in 0..dim {
                y[r * dim + i] = x[r * dim + i] * rs * w[i];
            }
        }
        (y, rstd)
    }

    /// NeoX RoPE on `[rows, n_heads, head_dim]`.
    pub fn rope(
        x: &[f64],
        pos: &[u32],
        n_heads: usize,
        head_dim: usize,
        theta: f64,
        inverse: bool,
    ) -> Vec<f64> {
        let mut y = x.to_vec();
        let half = head_dim / 2;
        for (r, &p) in pos.iter().enumerate() {
            for h in 0..n_heads {
                let base = (r * n_heads + h) * head_dim;
                for i in 0..half {
                    let mut ang = p as f64 * theta.powf(-2.0 * i as f64 / head_dim as f64);
                    if inverse {
                        ang = -ang;
                    }
                    let (s, c) = ang.sin_cos();
                    let (x1, x2) = (x[base + i], x[base + half + i]);
                    y[base + i] = x1 * c - x2 * s;
                    y[base + half + i] = x2 * c + x1 * s;
                }
            }
        }
        y
    }

    /// `(out, lse)` of causal GQA attention.
    pub fn attention(q: &[f64], k: &[f64], v: &[f64], d: AttnDims) -> (Vec<f64>, Vec<f64>) {
        let hd = d.head_dim;
        let group = d.n_heads / d.n_kv_heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut out = vec![0f64; d.batch * d.n_new * d.n_heads * hd];
        let mut lse = vec![0f64; d.batch * d.n_heads * d.n_new];
        for b in 0..d.batch {
            for t in 0..d.n_new {
                for h in 0..d.n_heads {
                    let kvh = h / group;
                    let qo = ((b * d.n_new + t) * d.n_heads + h) * hd;
                    let n_keys = d.n_past + t + 1;
                    let mut s = vec![0f64; n_keys];
                    for (j, sj) in s.iter_mut().enumerate() {
                        let ko = ((b * d.kv_len + j) * d.n_kv_heads + kvh) * hd;
                        *sj = (0..hd).map(|i| q[qo + i] * k[ko + i]).sum::<f64>() * scale;
                    }
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|&x| (x - m).exp()).sum();
                    for (j, &sj) in s.iter().enumerate() {
                        let p = (sj - m).exp() / z;
                        let ko = ((b * d.kv_len + j) * d.n_kv_heads + kvh) * hd;
                        for i in 0..hd {
                            out[qo + i] += p * v[ko + i];
                        }
                    }
                    lse[(b * d.n_heads + h) * d.n_new + t] = m + z.ln();
                }
            }
        }
        (out, lse)
    }

    pub fn gate(g: &[f64], u: &[f64], act: Activation) -> Vec<f64> {
        g.iter()
            .zip(u)
            .map(|(&g, &u)| match act {
                Activation::Relu2 => g.max(0.0).powi(2) * u,
                Activation::Silu => g / (1.0 + (-g).exp()) * u,
            })
            .collect()
    }

    /// Per-row loss (`u32::MAX` masks a row: 0).
    pub fn cross_entropy(logits: &[f64], targets: &[u32], vocab: usize) -> Vec<f64> {
        targets
            .iter()
            .enumerate()
            .map(|(r, &t)| {
                if t == u32::MAX {
                    return 0.0;
                }
                let x = &logits[r * vocab..(r + 1) * vocab];
                let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = x.iter().map(|&v| (v - m).exp()).sum();
                m + z.ln() - x[t as usize]
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// ternary matmul

fn upload_codes<B: Backend>(
    b: &B,
    codes: &[i8],
    out: usize,
    cols: usize,
    scale: f32,
) -> B::Ternary {
    b.upload_ternary(&TernaryCodes {
        rows: out,
        cols,
        codes,
        scale,
    })
    .expect("upload_ternary")
}

#[allow(clippy::too_many_arguments)]
fn check_ternary<B: Backend>(
    b: &B,
    what: &str,
    codes: &[i8],
    out: usize,
    cols: usize,
    scale: f32,
    x: &[f32],
    rows: usize,
) {
    let w = upload_codes(b, codes, out, cols, scale);
    assert_eq!(b.ternary_shape(&w), (out, cols), "{what}: ternary_shape");
    let xb = up(b, x);
    let mut y = up(b, &vec![f32::NAN; rows * out]);
    b.ternary_matmul(&w, &xb, &mut y, rows);
    let want = reference::ternary_matmul(codes, out, cols, scale, x, rows);
    assert_exact(
        &format!("ternary_matmul {what} [{rows} x {cols}] -> {out}"),
        &down(b, &y),
        &want,
    );
}

/// EXACT: `y = acc * w_scale / a` bit for bit, with `acc` the exact integer
/// product of the codes and tern-tensor's int8 activations, over shapes that
/// are not multiples of any block (1, 5, 70, 129, 300, 5460 columns) and row
/// counts 1..17.
pub fn ternary_matmul_exact<B: Backend>(b: &B) {
    let mut rng = Rng::new(1);
    for &(out, cols, rows) in &[
        (1usize, 1usize, 1usize),
        (3, 5, 2),
        (5, 70, 3),
        (17, 129, 5),
        (16, 256, 4),
        (33, 300, 9),
        (20, 1000, 17),
        (7, 5460, 2),
        (40, 64, 1),
    ] {
        let codes = rng.codes(out * cols, 0.35);
        let scale = rng.uniform(0.01, 2.0);
        let x = rng.vec(rows * cols, -3.0, 3.0);
        check_ternary(b, "random", &codes, out, cols, scale, &x, rows);
    }
}

/// EXACT: integer-valued activations with `max|x| = 127` per row make
/// `a = 1` and `x_q = x`, and a power-of-two scale makes every float step
/// exact, so `y` must equal the i64 dot itself. Includes saturated extremes
/// (all codes +1 or -1 against all ±127 over 5632 columns).
pub fn ternary_matmul_integer_inputs<B: Backend>(b: &B) {
    let mut rng = Rng::new(2);
    for &(out, cols, rows, scale) in &[
        (9usize, 70usize, 5usize, 1.0f32),
        (18, 333, 6, 0.25),
        (4, 5632, 3, 2.0),
    ] {
        let codes = rng.codes(out * cols, 0.3);
        let mut x: Vec<f32> = (0..rows * cols)
            .map(|_| (rng.below(255) as f32) - 127.0)
            .collect();
        for r in 0..rows {
            x[r * cols + rng.below(cols)] = if r % 2 == 0 { 127.0 } else { -127.0 };
        }
        let w = upload_codes(b, &codes, out, cols, scale);
        let mut y = up(b, &vec![0.0; rows * out]);
        b.ternary_matmul(&w, &up(b, &x), &mut y, rows);
        let xq: Vec<i8> = x.iter().map(|&v| v as i8).collect();
        let acc = reference::ternary_acc(&codes, out, cols, &xq, rows);
        let want: Vec<f32> = acc.iter().map(|&t| t as f32 * scale).collect();
        assert_exact(
            &format!("ternary_matmul integer inputs [{rows} x {cols}] -> {out}"),
            &down(b, &y),
            &want,
        );
    }
    // extremes: rows of +1, -1 and alternating codes against ±127 activations
    let cols = 5632;
    let mut codes = vec![1i8; cols];
    codes.extend(std::iter::repeat_n(-1i8, cols));
    codes.extend((0..cols).map(|i| if i % 2 == 0 { 1i8 } else { -1 }));
    let x: Vec<f32> = std::iter::repeat_n(127.0f32, cols)
        .chain(std::iter::repeat_n(-127.0f32, cols))
        .collect();
    let w = upload_codes(b, &codes, 3, cols, 1.0);
    let mut y = up(b, &[0.0; 6]);
    b.ternary_matmul(&w, &up(b, &x), &mut y, 2);
    let n = 127.0 * cols as f32;
    assert_exact(
        "ternary_matmul extremes",
        &down(b, &y),
        &[n, -n, 0.0, -n, n, 0.0],
    );
}

/// EXACT: edge rows — all zeros (`a` clamps to `127 / 1e-5`, `y = 0`), tiny
/// values below the clamp, huge magnitudes (1e30), exact rounding ties, a
/// single nonzero, and rows counts 1 to 13.
pub fn ternary_matmul_edge_rows<B: Backend>(b: &B) {
    let mut rng = Rng::new(3);
    let (out, cols) = (11, 130);
    let codes = rng.codes(out * cols, 0.3);
    let mut rows_data: Vec<Vec<f32>> = vec![
        vec![0.0; cols],
        (0..cols)
            .map(|i| if i % 3 == 0 { 3e-6 } else { -1e-6 })
            .collect(),
        rng.vec(cols, -1e30, 1e30),
        (0..cols)
            .map(|i| [127.0, 0.5, 1.5, -2.5, -0.5][i % 5])
            .collect(),
        (0..cols)
            .map(|i| if i == 77 { -4.0 } else { 0.0 })
            .collect(),
    ];
    for _ in 0..8 {
        rows_data.push(rng.vec(cols, -0.01, 0.01));
    }
    for rows in [1usize, 2, 4, 5, 13] {
        let x: Vec<f32> = rows_data[..rows].concat();
        check_ternary(b, "edge rows", &codes, out, cols, 0.37, &x, rows);
    }
    // a lone zero row gives exact zeros
    let w = upload_codes(b, &codes, out, cols, 0.37);
    let mut y = up(b, &vec![1.0; out]);
    b.ternary_matmul(&w, &up(b, &vec![0.0; cols]), &mut y, 1);
    assert_exact("ternary_matmul zero row", &down(b, &y), &vec![0.0; out]);
}

/// Codes outside {-1, 0, 1} are an error naming the row and column.
pub fn ternary_upload_rejects_bad_codes<B: Backend>(b: &B) {
    let codes = [0i8, 1, -1, 0, 0, 3];
    let r = b.upload_ternary(&TernaryCodes {
        rows: 2,
        cols: 3,
        codes: &codes,
        scale: 1.0,
    });
    match r {
        Ok(_) => panic!("upload_ternary accepted code 3"),
        Err(e) => {
            let s = e.to_string();
            assert!(
                s.contains("row 1") && s.contains("column 2"),
                "error should name the position: {s}"
            );
        }
    }
}

/// The float-activation product `y = x · (W_t * scale)ᵀ` (no int8
/// quantization of `x`) against the f64 reference; budget
/// `1e-5 * Σ|x W| + 1e-6` per element (f32 products summed over `cols`
/// terms, sgemm order). Quantizing `x` to int8 would miss this budget by
/// orders of magnitude (checked below on the first shape), so an
/// implementation that quietly reuses the W1.58A8 kernel cannot pass. Shapes
/// cover partial blocks (1, 70, 129, 300, 5460 columns), more than one
/// 64-feature task (130 outputs) and row counts 1..17; a zero row gives zeros.
pub fn ternary_matmul_float_reference<B: Backend>(b: &B) {
    let mut rng = Rng::new(7);
    for (i, &(out, cols, rows)) in [
        (130usize, 300usize, 9usize),
        (1, 1, 1),
        (5, 70, 3),
        (17, 129, 17),
        (70, 5460, 2),
        (64, 1024, 4),
        (3, 2049, 5),
    ]
    .iter()
    .enumerate()
    {
        let codes = rng.codes(out * cols, 0.3);
        let scale = rng.uniform(0.05, 1.5);
        let mut x = rng.vec(rows * cols, -3.0, 3.0);
        // one row with a dominant outlier: int8 quantization would flatten the rest
        x[0] = 300.0;
        let w = upload_codes(b, &codes, out, cols, scale);
        let mut y = up(b, &vec![f32::NAN; rows * out]);
        b.ternary_matmul_float(&w, &up(b, &x), &mut y, rows);
        let got = down(b, &y);
        let (want, mag) =
            reference::ternary_float(&codes, out, cols, scale as f64, &f64s(&x), rows);
        let tol: Vec<f64> = mag.iter().map(|m| 1e-5 * m + 1e-6).collect();
        let what = format!("ternary_matmul_float [{rows} x {cols}] -> {out}");
        assert_within(&what, &got, &want, &tol);
        if i == 0 {
            // The budget is tight enough to tell float activations from int8 ones.
            let quant = reference::ternary_matmul(&codes, out, cols, scale, &x, rows);
            let over = quant
                .iter()
                .zip(&want)
                .zip(&tol)
                .filter(|((&q, &w), &t)| (q as f64 - w).abs() > t)
                .count();
            assert!(
                over > quant.len() / 2,
                "{what}: the int8 product is within the float budget at {} of {} outputs; \
                 the check could not tell the two apart",
                quant.len() - over,
                quant.len()
            );
        }
    }
    let (out, cols) = (9, 200);
    let codes = rng.codes(out * cols, 0.3);
    let w = upload_codes(b, &codes, out, cols, 0.5);
    let mut y = up(b, &vec![1.0; 2 * out]);
    b.ternary_matmul_float(&w, &up(b, &vec![0.0; 2 * cols]), &mut y, 2);
    assert_exact(
        "ternary_matmul_float zero rows",
        &down(b, &y),
        &vec![0.0; 2 * out],
    );
}

/// `dx = dy · (W_t * scale)` against the f64 reference; budget
/// `1e-5 * Σ|dy W| + 1e-6` per element (f32 products over `out` terms).
pub fn ternary_matmul_backward_reference<B: Backend>(b: &B) {
    let mut rng = Rng::new(4);
    for &(out, cols, rows) in &[
        (1usize, 1usize, 1usize),
        (5, 70, 3),
        (130, 300, 9),
        (70, 5460, 2),
        (3, 513, 17),
    ] {
        let codes = rng.codes(out * cols, 0.3);
        let scale = rng.uniform(0.05, 1.5);
        let dy = rng.vec(rows * out, -1.0, 1.0);
        let w = upload_codes(b, &codes, out, cols, scale);
        let mut dx = up(b, &vec![f32::NAN; rows * cols]);
        b.ternary_matmul_backward(&w, &up(b, &dy), &mut dx, rows);
        let want = reference::ternary_backward(&codes, out, cols, scale as f64, &f64s(&dy), rows);
        let abs_codes: Vec<i8> = codes.iter().map(|c| c.abs()).collect();
        let dy_abs: Vec<f64> = dy.iter().map(|v| v.abs() as f64).collect();
        let mag = reference::ternary_backward(&abs_codes, out, cols, scale as f64, &dy_abs, rows);
        let tol: Vec<f64> = mag.iter().map(|m| 1e-5 * m + 1e-6).collect();
        assert_within(
            &format!("ternary_matmul_backward [{rows} x {out}] -> {cols}"),
            &down(b, &dx),
            &want,
            &tol,
        );
    }
}

/// The backward is the gradient of the straight-through surrogate
/// `y = (W_t * scale) · x` (no quantization): central differences of
/// `L(x) = Σ dy ⊙ y` in f64 (h = 1e-3; L is linear) against the backend's
/// `dx`, budget `1e-4 + 1e-4 |g|`.
pub fn ternary_matmul_backward_fd<B: Backend>(b: &B) {
    let mut rng = Rng::new(5);
    let (out, cols, rows) = (13, 45, 3);
    let codes = rng.codes(out * cols, 0.3);
    let scale = 0.7f32;
    let x = f64s(&rng.vec(rows * cols, -1.0, 1.0));
    let dy = rng.vec(rows * out, -1.0, 1.0);
    let dy64 = f64s(&dy);
    let loss = |x: &[f64]| {
        let mut l = 0.0;
        for r in 0..rows {
            for o in 0..out {
                let y: f64 = (0..cols)
                    .map(|c| codes[o * cols + c] as f64 * scale as f64 * x[r * cols + c])
                    .sum();
                l += dy64[r * out + o] * y;
            }
        }
        l
    };
    let want = fd_grad(loss, &x, 1e-3);
    let w = upload_codes(b, &codes, out, cols, scale);
    let mut dx = up(b, &vec![0.0; rows * cols]);
    b.ternary_matmul_backward(&w, &up(b, &dy), &mut dx, rows);
    assert_close(
        "ternary_matmul_backward vs finite differences",
        &down(b, &dx),
        &want,
        1e-4,
        1e-4,
    );
}

// ---------------------------------------------------------------------------
// dense

fn gemm_shapes() -> Vec<(usize, usize, usize)> {
    vec![
        (1, 1, 1),
        (3, 5, 7),
        (70, 33, 65),
        (130, 17, 3),
        (2, 9, 200),
        (1, 40, 600),
        (4, 0, 3),
    ]
}

/// All four transpose combinations, `alpha` in {1, -0.7}, `beta` in {0 (C
/// holds NaN, which must not propagate), 1, 0.5}; budget
/// `2e-5 * (Σ|alpha a b| + |beta c|) + 1e-6`.
pub fn matmul_reference<B: Backend>(b: &B) {
    let mut rng = Rng::new(6);
    for (m, k, n) in gemm_shapes() {
        for trans_a in [false, true] {
            for trans_b in [false, true] {
                for &(alpha, beta) in &[(1.0f32, 0.0f32), (-0.7, 1.0), (1.0, 0.5)] {
                    let g = Gemm {
                        m,
                        k,
                        n,
                        trans_a,
                        trans_b,
                        alpha,
                        beta,
                    };
                    let a = rng.vec(m * k, -1.0, 1.0);
                    let bm = rng.vec(k * n, -1.0, 1.0);
                    let c0 = if beta == 0.0 {
                        vec![f32::NAN; m * n]
                    } else {
                        rng.vec(m * n, -1.0, 1.0)
                    };
                    let mut c = up(b, &c0);
                    b.matmul(&up(b, &a), &up(b, &bm), &mut c, g);
                    let (want, mag) = reference::matmul(&f64s(&a), &f64s(&bm), &f64s(&c0), g);
                    let tol: Vec<f64> = mag.iter().map(|m| 2e-5 * m + 1e-6).collect();
                    assert_within(&format!("matmul {g:?}"), &down(b, &c), &want, &tol);
                }
            }
        }
    }
}

/// Gradients of `L = Σ G ⊙ (alpha op(A) op(B) + beta C)` computed with the
/// backend's own `matmul` (the products the model's backward uses:
/// `dA = alpha G op(B)ᵀ` or its transpose, `dB` likewise, `dC = beta G` by
/// `copy` + `scale`) against central differences of the f64 reference
/// (h = 1e-3; L is bilinear); budget `1e-4 + 1e-4 |g|`.
pub fn matmul_gradients_fd<B: Backend>(b: &B) {
    let mut rng = Rng::new(7);
    let (m, k, n) = (4, 6, 5);
    for trans_a in [false, true] {
        for trans_b in [false, true] {
            let (alpha, beta) = (0.8f32, 0.5f32);
            let g = Gemm {
                m,
                k,
                n,
                trans_a,
                trans_b,
                alpha,
                beta,
            };
            let a = rng.vec(m * k, -1.0, 1.0);
            let bm = rng.vec(k * n, -1.0, 1.0);
            let c0 = rng.vec(m * n, -1.0, 1.0);
            let gr = rng.vec(m * n, -1.0, 1.0);
            let (a64, b64, c64, g64) = (f64s(&a), f64s(&bm), f64s(&c0), f64s(&gr));
            let [want_da, want_db, want_dc] = fd_grads(
                |[a, bm, c]| reference::matmul(a, bm, c, g).0,
                [&a64, &b64, &c64],
                &g64,
                1e-3,
            );
            let (ab, bb, gb) = (up(b, &a), up(b, &bm), up(b, &gr));
            // dA: stored like A
            let mut da = up(b, &vec![0.0; m * k]);
            let gd = if !trans_a {
                // dA[m,k] = alpha G[m,n] op(B)ᵀ[n,k]; op(B)ᵀ is B stored [n,k] when trans_b
                (
                    Gemm {
                        m,
                        k: n,
                        n: k,
                        trans_a: false,
                        trans_b: !trans_b,
                        alpha,
                        beta: 0.0,
                    },
                    false,
                )
            } else {
                // dA[k,m] = alpha op(B)[k,n] Gᵀ[n,m]
                (
                    Gemm {
                        m: k,
                        k: n,
                        n: m,
                        trans_a: trans_b,
                        trans_b: true,
                        alpha,
                        beta: 0.0,
                    },
                    true,
                )
            };
            if gd.1 {
                b.matmul(&bb, &gb, &mut da, gd.0);
            } else {
                b.matmul(&gb, &bb, &mut da, gd.0);
            }
            assert_close(
                &format!("matmul dA {g:?}"),
                &down(b, &da),
                &want_da,
                1e-4,
                1e-4,
            );
            // dB: stored like B
            let mut db = up(b, &vec![0.0; k * n]);
            if !trans_b {
                // dB[k,n] = alpha op(A)ᵀ[k,m] G[m,n]
                let gg = Gemm {
                    m: k,
                    k: m,
                    n,
                    trans_a: !trans_a,
                    trans_b: false,
                    alpha,
                    beta: 0.0,
                };
                b.matmul(&ab, &gb, &mut db, gg);
            } else {
                // dB[n,k] = alpha Gᵀ[n,m] op(A)[m,k]
                let gg = Gemm {
                    m: n,
                    k: m,
                    n: k,
                    trans_a: true,
                    trans_b: trans_a,
                    alpha,
                    beta: 0.0,
                };
                b.matmul(&gb, &ab, &mut db, gg);
            }
            assert_close(
                &format!("matmul dB {g:?}"),
                &down(b, &db),
                &want_db,
                1e-4,
                1e-4,
            );
            let mut dc = up(b, &vec![0.0; m * n]);
            b.copy(&gb, &mut dc);
            b.scale(beta, &mut dc);
            assert_close(
                &format!("matmul dC {g:?}"),
                &down(b, &dc),
                &want_dc,
                1e-4,
                1e-4,
            );
        }
    }
}

/// EXACT: zeros, upload/download, write (with offset), write_ids, copy,
/// copy_range, axpy and scale (single f32 operations, compared bit for bit
/// against the same f32 operation on the host).
pub fn memory_and_elementwise<B: Backend>(b: &B) {
    let mut rng = Rng::new(8);
    let n = 40_000; // more than one parallel chunk on any backend
    let x = rng.vec(n, -2.0, 2.0);
    let y0 = rng.vec(n, -2.0, 2.0);
    let z = b.zeros(n).expect("zeros");
    assert_eq!(b.len(&z), n);
    assert_exact("zeros", &down(b, &z), &vec![0.0; n]);
    let xb = up(b, &x);
    assert_exact("upload/download", &down(b, &xb), &x);
    let mut yb = up(b, &y0);
    b.axpy(-0.37, &xb, &mut yb);
    let want: Vec<f32> = y0.iter().zip(&x).map(|(&y, &x)| y + -0.37 * x).collect();
    assert_exact("axpy", &down(b, &yb), &want);
    b.scale(1.7, &mut yb);
    let want: Vec<f32> = want.iter().map(|&v| v * 1.7).collect();
    assert_exact("scale", &down(b, &yb), &want);
    b.copy(&xb, &mut yb);
    assert_exact("copy", &down(b, &yb), &x);
    let mut d = up(b, &vec![0.0; 100]);
    b.copy_range(&xb, 123, &mut d, 40, 37);
    let mut want = vec![0.0; 100];
    want[40..77].copy_from_slice(&x[123..160]);
    assert_exact("copy_range", &down(b, &d), &want);
    b.write(&mut d, 90, &[1.0, 2.0, 3.0]);
    want[90..93].copy_from_slice(&[1.0, 2.0, 3.0]);
    assert_exact("write", &down(b, &d), &want);
    // write_ids: the ids are observed through embedding
    let table: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let mut ids = b.upload_ids(&[0, 1]).expect("upload_ids");
    b.write_ids(&mut ids, &[2, 0]);
    let mut e = up(b, &[0.0; 8]);
    b.embedding(&up(b, &table), &ids, &mut e, 4);
    assert_exact(
        "write_ids",
        &down(b, &e),
        &[8.0, 9.0, 10.0, 11.0, 0.0, 1.0, 2.0, 3.0],
    );
}

/// `Σ x²` into a slot, relative budget 1e-5 (other slots untouched).
pub fn sum_squares_reference<B: Backend>(b: &B) {
    let mut rng = Rng::new(9);
    let mut out = up(b, &[7.0, 7.0, 7.0]);
    for (slot, n) in [(0usize, 1usize), (2, 100_003)] {
        let x = rng.vec(n, -3.0, 3.0);
        b.sum_squares(&up(b, &x), &mut out, slot);
        let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
        let got = down(b, &out)[slot];
        assert_close(&format!("sum_squares n={n}"), &[got], &[want], 0.0, 1e-5);
    }
    assert_eq!(down(b, &out)[1], 7.0, "sum_squares wrote outside its slot");
}

/// Dropout applies exactly the shared mask ([`crate::dropout_keep`]) with the
/// `1 / (1 - p)` scale, keeps about `1 - p` of the values, and is its own
/// backward: the same seed zeroes the same positions of any buffer.
pub fn dropout_mask<B: Backend>(b: &B) {
    let mut rng = Rng::new(21);
    let n = 50_000;
    let x = rng.vec(n, 0.5, 2.0);
    for &(p, seed) in &[(0.1f32, 7u64), (0.5, 1 << 40), (0.0, 3)] {
        let mut y = up(b, &vec![0.0; n]);
        b.dropout(&up(b, &x), &mut y, p, seed);
        let y = down(b, &y);
        let scale = 1.0 / (1.0 - p);
        let mut kept = 0;
        for i in 0..n {
            let want = if crate::dropout_keep(seed, i as u32, p) {
                kept += 1;
                x[i] * scale
            } else {
                0.0
            };
            assert_eq!(y[i], want, "dropout p={p} element {i}");
        }
        let frac = kept as f64 / n as f64;
        assert!(
            (frac - (1.0 - p as f64)).abs() < 0.01,
            "dropout p={p}: kept {frac}"
        );
        // Another buffer, same seed: same zeros (the backward mask).
        let g = rng.vec(n, 1.0, 2.0);
        let mut dg = up(b, &vec![0.0; n]);
        b.dropout(&up(b, &g), &mut dg, p, seed);
        let dg = down(b, &dg);
        for i in 0..n {
            assert_eq!(dg[i] == 0.0, y[i] == 0.0, "mask differs at {i}");
        }
    }
    // Different seeds give different masks.
    let (mut a, mut c) = (up(b, &vec![0.0; n]), up(b, &vec![0.0; n]));
    b.dropout(&up(b, &x), &mut a, 0.5, 1);
    b.dropout(&up(b, &x), &mut c, 0.5, 2);
    assert_ne!(down(b, &a), down(b, &c));
}

// ---------------------------------------------------------------------------
// normalization

/// RMSNorm forward (y and rstd) including a zero row (rstd = 1/sqrt(eps)) and
/// large magnitudes (1e15); relative budget 2e-6 + 1e-6 absolute on the unit scale.
pub fn rmsnorm_reference<B: Backend>(b: &B) {
    let mut rng = Rng::new(10);
    for &(rows, dim) in &[(1usize, 1usize), (5, 70), (9, 2048), (3, 5460)] {
        let mut x = rng.vec(rows * dim, -2.0, 2.0);
        x[..dim].fill(0.0);
        if rows > 2 {
            for v in &mut x[2 * dim..3 * dim] {
                *v *= 1e15;
            }
        }
        let w = rng.vec(dim, 0.5, 1.5);
        let eps = 1e-5f32;
        let (mut y, mut rstd) = (up(b, &vec![0.0; rows * dim]), up(b, &vec![0.0; rows]));
        b.rmsnorm(&up(b, &x), &up(b, &w), &mut y, &mut rstd, rows, dim, eps);
        let (wy, wr) = reference::rmsnorm(&f64s(&x), &f64s(&w), rows, dim, eps as f64);
        assert_close(
            &format!("rmsnorm y [{rows} x {dim}]"),
            &down(b, &y),
            &wy,
            1e-6,
            2e-6,
        );
        assert_close(
            &format!("rmsnorm rstd [{rows} x {dim}]"),
            &down(b, &rstd),
            &wr,
            0.0,
            2e-6,
        );
    }
}

/// RMSNorm backward: `dx` (overwritten over NaN) and `dw` (accumulated onto
/// existing values) against central differences (h = 1e-5); budget
/// `1e-4 + 1e-4 |g|`. Also without `dw`.
pub fn rmsnorm_backward_fd<B: Backend>(b: &B) {
    let mut rng = Rng::new(11);
    let (rows, dim, eps) = (4, 37, 1e-5f32);
    let x = rng.vec(rows * dim, -1.5, 1.5);
    let w = rng.vec(dim, 0.5, 1.5);
    let dy = rng.vec(rows * dim, -1.0, 1.0);
    let (x64, w64, dy64) = (f64s(&x), f64s(&w), f64s(&dy));
    let [want_dx, want_dw] = fd_grads(
        |[x, w]| reference::rmsnorm(x, w, rows, dim, eps as f64).0,
        [&x64, &w64],
        &dy64,
        1e-5,
    );
    let (xb, wb, dyb) = (up(b, &x), up(b, &w), up(b, &dy));
    let (mut y, mut rstd) = (up(b, &vec![0.0; rows * dim]), up(b, &vec![0.0; rows]));
    b.rmsnorm(&xb, &wb, &mut y, &mut rstd, rows, dim, eps);
    let mut dx = up(b, &vec![f32::NAN; rows * dim]);
    let dw0 = rng.vec(dim, -1.0, 1.0);
    let mut dw = up(b, &dw0);
    b.rmsnorm_backward(&xb, &wb, &rstd, &dyb, &mut dx, Some(&mut dw), rows, dim);
    assert_close("rmsnorm dx", &down(b, &dx), &want_dx, 1e-4, 1e-4);
    let want_dw_acc: Vec<f64> = want_dw
        .iter()
        .zip(&dw0)
        .map(|(g, &d)| g + d as f64)
        .collect();
    assert_close(
        "rmsnorm dw (accumulated)",
        &down(b, &dw),
        &want_dw_acc,
        1e-4,
        1e-4,
    );
    let mut dx2 = up(b, &vec![f32::NAN; rows * dim]);
    b.rmsnorm_backward(&xb, &wb, &rstd, &dyb, &mut dx2, None, rows, dim);
    assert_close("rmsnorm dx (no dw)", &down(b, &dx2), &want_dx, 1e-4, 1e-4);
}

// ---------------------------------------------------------------------------
// rope

/// NeoX RoPE against the f64 reference at positions up to 4095 (unsorted);
/// budget `2e-5 + 2e-5 |y|` (an f32 angle near 4096 rad is off by ~2e-4 rad,
/// so a backend computing angles in f32 needs care there; the budget allows
/// `ang * f32::EPSILON`-level phase error only), and `rope(inverse)` undoes it.
pub fn rope_reference<B: Backend>(b: &B) {
    let mut rng = Rng::new(12);
    let (nh, hd, theta) = (3, 16, 10000.0f32);
    let pos: Vec<u32> = vec![0, 1, 7, 3, 100, 4095, 2];
    let rows = pos.len();
    let x = rng.vec(rows * nh * hd, -1.0, 1.0);
    let pb = b.upload_ids(&pos).expect("upload_ids");
    let mut xb = up(b, &x);
    b.rope(&mut xb, &pb, rows, nh, hd, theta, false);
    let want = reference::rope(&f64s(&x), &pos, nh, hd, theta as f64, false);
    let tol: Vec<f64> = (0..rows * nh * hd)
        .map(|i| {
            let p = pos[i / (nh * hd)] as f64;
            2e-5 + 2e-5 * want[i].abs() + 4.0 * p * f32::EPSILON as f64
        })
        .collect();
    assert_within("rope forward", &down(b, &xb), &want, &tol);
    b.rope(&mut xb, &pb, rows, nh, hd, theta, true);
    assert_within("rope inverse(rope(x)) = x", &down(b, &xb), &f64s(&x), &tol);
    let want_inv = reference::rope(&f64s(&x), &pos, nh, hd, theta as f64, true);
    let mut xi = up(b, &x);
    b.rope(&mut xi, &pb, rows, nh, hd, theta, true);
    assert_within("rope inverse", &down(b, &xi), &want_inv, &tol);
}

/// The backward of RoPE is the inverse rotation applied to `dy`: central
/// differences of `Σ dy ⊙ rope(x)` (h = 1e-4), budget `1e-4 + 1e-4 |g|`.
pub fn rope_backward_fd<B: Backend>(b: &B) {
    let mut rng = Rng::new(13);
    let (nh, hd, theta) = (2, 8, 500000.0f32);
    let pos: Vec<u32> = vec![5, 0, 33];
    let rows = pos.len();
    let x = f64s(&rng.vec(rows * nh * hd, -1.0, 1.0));
    let dy = rng.vec(rows * nh * hd, -1.0, 1.0);
    let dy64 = f64s(&dy);
    let want = fd_grad(
        |x| {
            weighted(
                &dy64,
                &reference::rope(x, &pos, nh, hd, theta as f64, false),
            )
        },
        &x,
        1e-4,
    );
    let mut g = up(b, &dy);
    b.rope(
        &mut g,
        &b.upload_ids(&pos).expect("ids"),
        rows,
        nh,
        hd,
        theta,
        true,
    );
    assert_close("rope backward", &down(b, &g), &want, 1e-4, 1e-4);
}

// ---------------------------------------------------------------------------
// attention

/// Attention inputs `(q, k, v)` for `d`, uniform in `[-1.5, 1.5)`; the cache
/// rows past `n_past + n_new` hold NaN, so a kernel reading them fails.
pub fn attn_inputs(rng: &mut Rng, d: AttnDims) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let q = rng.vec(d.q_len(), -1.5, 1.5);
    let nk = d.k_len();
    let mut k = rng.vec(nk, -1.5, 1.5);
    let mut v = rng.vec(nk, -1.5, 1.5);
    // rows past n_past + n_new are unused cache capacity: NaN catches reads
    let row = d.n_kv_heads * d.head_dim;
    for bb in 0..d.batch {
        for j in d.n_past + d.n_new..d.kv_len {
            let o = (bb * d.kv_len + j) * row;
            k[o..o + row].fill(f32::NAN);
            v[o..o + row].fill(f32::NAN);
        }
    }
    (q, k, v)
}

/// Causal GQA attention (out and lse) against the f64 reference, with
/// `n_past > 0`, spare cache capacity holding NaN, batch 2, and also
/// `n_kv_heads == n_heads`; budget `2e-5 + 2e-5 |y|`.
pub fn attention_reference<B: Backend>(b: &B) {
    let mut rng = Rng::new(14);
    for d in [
        AttnDims {
            batch: 2,
            n_new: 5,
            n_past: 0,
            kv_len: 5,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 8,
        },
        AttnDims {
            batch: 2,
            n_new: 3,
            n_past: 6,
            kv_len: 12,
            n_heads: 6,
            n_kv_heads: 2,
            head_dim: 16,
        },
        AttnDims {
            batch: 1,
            n_new: 1,
            n_past: 40,
            kv_len: 64,
            n_heads: 2,
            n_kv_heads: 2,
            head_dim: 64,
        },
        AttnDims {
            batch: 1,
            n_new: 33,
            n_past: 0,
            kv_len: 33,
            n_heads: 4,
            n_kv_heads: 1,
            head_dim: 32,
        },
    ] {
        let (q, k, v) = attn_inputs(&mut rng, d);
        let nq = q.len();
        let mut out = up(b, &vec![f32::NAN; nq]);
        let mut lse = up(b, &vec![f32::NAN; d.batch * d.n_heads * d.n_new]);
        b.attention(&up(b, &q), &up(b, &k), &up(b, &v), &mut out, &mut lse, d);
        let (wo, wl) = reference::attention(&f64s(&q), &f64s(&k), &f64s(&v), d);
        assert_close(
            &format!("attention out {d:?}"),
            &down(b, &out),
            &wo,
            2e-5,
            2e-5,
        );
        assert_close(
            &format!("attention lse {d:?}"),
            &down(b, &lse),
            &wl,
            2e-5,
            2e-5,
        );
    }
}

/// A KV cache filled step by step with `copy_range` (capacity 10, NaN
/// beyond what was written) and queried with `n_past > 0` (a prefill of 3, a
/// chunk of 2, then single-token steps) matches one full causal pass over
/// all 7 tokens; budget `1e-5 + 1e-5 |y|`.
pub fn attention_kv_cache<B: Backend>(b: &B) {
    let mut rng = Rng::new(15);
    let (batch, total, cap, nh, nkv, hd) = (2, 7, 10, 4, 2, 8);
    let full = AttnDims {
        batch,
        n_new: total,
        n_past: 0,
        kv_len: total,
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
    };
    let q = rng.vec(batch * total * nh * hd, -1.5, 1.5);
    let k = rng.vec(batch * total * nkv * hd, -1.5, 1.5);
    let v = rng.vec(batch * total * nkv * hd, -1.5, 1.5);
    let mut out = up(b, &vec![0.0; q.len()]);
    let mut lse = up(b, &vec![0.0; batch * nh * total]);
    b.attention(&up(b, &q), &up(b, &k), &up(b, &v), &mut out, &mut lse, full);
    let full_out = down(b, &out);
    let (kb, vb) = (up(b, &k), up(b, &v));
    let mut kc = up(b, &vec![f32::NAN; batch * cap * nkv * hd]);
    let mut vc = up(b, &vec![f32::NAN; batch * cap * nkv * hd]);
    let (qrow, kvrow) = (nh * hd, nkv * hd);
    let mut n_past = 0;
    for n_new in [3usize, 2, 1, 1] {
        for bb in 0..batch {
            let src = (bb * total + n_past) * kvrow;
            let dst = (bb * cap + n_past) * kvrow;
            b.copy_range(&kb, src, &mut kc, dst, n_new * kvrow);
            b.copy_range(&vb, src, &mut vc, dst, n_new * kvrow);
        }
        let mut qs = Vec::new();
        for bb in 0..batch {
            qs.extend_from_slice(
                &q[(bb * total + n_past) * qrow..(bb * total + n_past + n_new) * qrow],
            );
        }
        let d = AttnDims {
            batch,
            n_new,
            n_past,
            kv_len: cap,
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
        };
        let mut o = up(b, &vec![0.0; qs.len()]);
        let mut l = up(b, &vec![0.0; batch * nh * n_new]);
        b.attention(&up(b, &qs), &kc, &vc, &mut o, &mut l, d);
        let got = down(b, &o);
        let mut want = Vec::new();
        for bb in 0..batch {
            want.extend(
                full_out[(bb * total + n_past) * qrow..(bb * total + n_past + n_new) * qrow]
                    .iter()
                    .map(|&v| v as f64),
            );
        }
        assert_close(
            &format!("attention with cache, n_past {n_past}, n_new {n_new}"),
            &got,
            &want,
            1e-5,
            1e-5,
        );
        n_past += n_new;
    }
}

/// Attention backward (dq, dk, dv; GQA with 2 query heads per kv head, batch
/// 2, n_new 5) against central differences of `Σ dout ⊙ out` (h = 1e-5),
/// budget `1e-4 + 1e-4 |g|`; the outputs are overwritten over NaN.
pub fn attention_backward_fd<B: Backend>(b: &B) {
    let mut rng = Rng::new(16);
    let d = AttnDims {
        batch: 2,
        n_new: 5,
        n_past: 0,
        kv_len: 5,
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 8,
    };
    let (q, k, v) = attn_inputs(&mut rng, d);
    let dout = rng.vec(q.len(), -1.0, 1.0);
    let (q64, k64, v64, do64) = (f64s(&q), f64s(&k), f64s(&v), f64s(&dout));
    let [want_dq, want_dk, want_dv] = fd_grads(
        |[q, k, v]| reference::attention(q, k, v, d).0,
        [&q64, &k64, &v64],
        &do64,
        1e-5,
    );
    let (qb, kb, vb) = (up(b, &q), up(b, &k), up(b, &v));
    let mut out = up(b, &vec![0.0; q.len()]);
    let mut lse = up(b, &vec![0.0; d.batch * d.n_heads * d.n_new]);
    b.attention(&qb, &kb, &vb, &mut out, &mut lse, d);
    let mut dq = up(b, &vec![f32::NAN; q.len()]);
    let mut dk = up(b, &vec![f32::NAN; k.len()]);
    let mut dv = up(b, &vec![f32::NAN; v.len()]);
    b.attention_backward(
        &qb,
        &kb,
        &vb,
        &out,
        &lse,
        &up(b, &dout),
        &mut dq,
        &mut dk,
        &mut dv,
        d,
    );
    assert_close("attention dq", &down(b, &dq), &want_dq, 1e-4, 1e-4);
    assert_close("attention dk", &down(b, &dk), &want_dk, 1e-4, 1e-4);
    assert_close("attention dv", &down(b, &dv), &want_dv, 1e-4, 1e-4);
}

// ---------------------------------------------------------------------------
// gate

/// relu² and SiLU gating against the f64 reference (including large |g|);
/// budget `1e-6 + 2e-6 |y|`.
pub fn gate_reference<B: Backend>(b: &B) {
    let mut rng = Rng::new(17);
    let n = 20_001;
    let mut g = rng.vec(n, -6.0, 6.0);
    g[0] = 0.0;
    g[1] = -90.0;
    g[2] = 90.0;
    g[3] = 1e4;
    let u = rng.vec(n, -2.0, 2.0);
    for act in [Activation::Relu2, Activation::Silu] {
        let mut y = up(b, &vec![0.0; n]);
        b.gate(&up(b, &g), &up(b, &u), &mut y, act);
        let want = reference::gate(&f64s(&g), &f64s(&u), act);
        assert_close(&format!("gate {act:?}"), &down(b, &y), &want, 1e-6, 2e-6);
    }
}

/// `dg` and `du` for relu² and SiLU against central differences
/// (h = 1e-5, |g| >= 0.05 so relu²'s kink is not straddled), budget
/// `1e-4 + 1e-4 |g|`.
pub fn gate_backward_fd<B: Backend>(b: &B) {
    let mut rng = Rng::new(18);
    let n = 64;
    let g: Vec<f32> = (0..n)
        .map(|_| {
            let v = rng.uniform(0.05, 4.0);
            if rng.next_u64() & 1 == 0 {
                v
            } else {
                -v
            }
        })
        .collect();
    let u = rng.vec(n, -2.0, 2.0);
    let dy = rng.vec(n, -1.0, 1.0);
    let (g64, u64_, dy64) = (f64s(&g), f64s(&u), f64s(&dy));
    for act in [Activation::Relu2, Activation::Silu] {
        let [want_dg, want_du] = fd_grads(
            |[g, u]| reference::gate(g, u, act),
            [&g64, &u64_],
            &dy64,
            1e-5,
        );
        let mut dg = up(b, &vec![f32::NAN; n]);
        let mut du = up(b, &vec![f32::NAN; n]);
        b.gate_backward(&up(b, &g), &up(b, &u), &up(b, &dy), &mut dg, &mut du, act);
        assert_close(
            &format!("gate {act:?} dg"),
            &down(b, &dg),
            &want_dg,
            1e-4,
            1e-4,
        );
        assert_close(
            &format!("gate {act:?} du"),
            &down(b, &du),
            &want_du,
            1e-4,
            1e-4,
        );
    }
}

// ---------------------------------------------------------------------------
// embedding

/// EXACT: gather rows, with repeated ids and the last id of the table.
pub fn embedding_exact<B: Backend>(b: &B) {
    let mut rng = Rng::new(19);
    let (vocab, dim) = (50, 70);
    let table = rng.vec(vocab * dim, -1.0, 1.0);
    let ids: Vec<u32> = vec![3, 49, 0, 3, 17];
    let mut y = up(b, &vec![0.0; ids.len() * dim]);
    b.embedding(
        &up(b, &table),
        &b.upload_ids(&ids).expect("ids"),
        &mut y,
        dim,
    );
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| table[i as usize * dim..(i as usize + 1) * dim].to_vec())
        .collect();
    assert_exact("embedding", &down(b, &y), &want);
}

/// Scatter-add (accumulating onto existing values, repeated ids) against
/// central differences of `Σ dy ⊙ table[ids]` (h = 1e-3; L is linear),
/// budget `1e-5 + 1e-5 |g|`.
pub fn embedding_backward_fd<B: Backend>(b: &B) {
    let mut rng = Rng::new(20);
    let (vocab, dim) = (9, 6);
    let ids: Vec<u32> = vec![2, 8, 2, 0, 2, 5];
    let table = f64s(&rng.vec(vocab * dim, -1.0, 1.0));
    let dy = rng.vec(ids.len() * dim, -1.0, 1.0);
    let dy64 = f64s(&dy);
    let loss = |t: &[f64]| {
        let mut l = 0.0;
        for (r, &id) in ids.iter().enumerate() {
            for i in 0..dim {
                l += dy64[r * dim + i] * t[id as usize * dim + i];
            }
        }
        l
    };
    let g = fd_grad(loss, &table, 1e-3);
    let d0 = rng.vec(vocab * dim, -1.0, 1.0);
    let mut dt = up(b, &d0);
    b.embedding_backward(&b.upload_ids(&ids).expect("ids"), &up(b, &dy), &mut dt, dim);
    let want: Vec<f64> = g.iter().zip(&d0).map(|(g, &d)| g + d as f64).collect();
    assert_close(
        "embedding_backward (accumulated)",
        &down(b, &dt),
        &want,
        1e-5,
        1e-5,
    );
}

// ---------------------------------------------------------------------------
// half precision

/// f32 values that exercise f16 rounding: random values over several
/// binades, ties in the normal and subnormal range, the smallest subnormal,
/// values that round to the largest f16, and zeros.
fn half_inputs(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0 + 2f32.powi(-11),       // tie: down to 1 (even)
        1.0 + 3.0 * 2f32.powi(-11), // tie: up to 1 + 2^-9 (even)
        -(1.0 + 2f32.powi(-11)),
        2f32.powi(-24),       // the smallest subnormal
        2f32.powi(-25),       // tie: down to 0
        3.0 * 2f32.powi(-25), // tie: up to 2^-23
        6.1e-5,               // subnormal
        1e-8,                 // below half the smallest subnormal: 0
        65504.0,
        65519.99,  // rounds to 65504
        -65519.99, // and -65504
        0.1,
        1.0 / 3.0,
    ];
    while v.len() < n {
        let e = rng.below(20) as i32 - 12;
        v.push(rng.uniform(-1.0, 1.0) * 2f32.powi(e));
    }
    v.truncate(n);
    v
}

/// EXACT: every value of an f16 table, read back through
/// `embedding_half` (ids covering every row), is the f16 nearest to the f32
/// given, ties to even, by the definition ([`reference::round_f16`]).
pub fn half_upload_rounds_to_nearest_even<B: Backend>(b: &B) {
    let mut rng = Rng::new(40);
    let (vocab, dim) = (37, 33);
    let table = half_inputs(&mut rng, vocab * dim);
    let h = b.upload_half(&table).expect("upload_half");
    assert_eq!(b.half_len(&h), vocab * dim);
    let ids: Vec<u32> = (0..vocab as u32).rev().collect();
    let mut y = up(b, &vec![f32::NAN; vocab * dim]);
    b.embedding_half(&h, &b.upload_ids(&ids).expect("ids"), &mut y, dim);
    let want: Vec<f32> = ids
        .iter()
        .flat_map(|&i| &table[i as usize * dim..(i as usize + 1) * dim])
        .map(|&x| reference::round_f16(x) as f32)
        .collect();
    assert_exact("embedding_half (f16 rounding)", &down(b, &y), &want);
}

/// Values without a finite f16 (65520 rounds to 65536, beyond the largest
/// f16; infinities; NaN) are refused with an error naming the first such
/// element; the largest values that round to 65504 are accepted.
pub fn half_upload_refuses_values_beyond_f16<B: Backend>(b: &B) {
    for bad in [65520.0f32, -1e5, f32::INFINITY, f32::NAN] {
        let data = [1.0, 65519.99, -65519.99, bad, 2.0];
        match b.upload_half(&data) {
            Err(crate::BackendError::HalfRange { index, value, .. }) => {
                assert_eq!(index, 3, "upload_half({bad}): index");
                assert!(
                    value.to_bits() == bad.to_bits(),
                    "upload_half: value {value}"
                );
            }
            Err(e) => panic!("upload_half({bad}): expected a range error, got {e}"),
            Ok(_) => panic!("upload_half accepted {bad}"),
        }
    }
    let e = b
        .upload_half(&[70000.0])
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("element 0") && e.contains("70000"), "{e}");
    assert!(b.upload_half(&[]).is_ok(), "an empty matrix is valid");
}

/// EXACT: gather rows of an f16 table (repeated ids, the last row) equals
/// the f32 gather of the rounded table.
pub fn embedding_half_exact<B: Backend>(b: &B) {
    let mut rng = Rng::new(41);
    let (vocab, dim) = (50, 70);
    let table = rng.vec(vocab * dim, -1.0, 1.0);
    let rounded: Vec<f32> = table
        .iter()
        .map(|&x| reference::round_f16(x) as f32)
        .collect();
    let ids = b.upload_ids(&[3, 49, 0, 3, 17]).expect("ids");
    let mut y = up(b, &vec![0.0; 5 * dim]);
    b.embedding_half(&b.upload_half(&table).expect("half"), &ids, &mut y, dim);
    let mut want = up(b, &vec![0.0; 5 * dim]);
    b.embedding(&up(b, &rounded), &ids, &mut want, dim);
    assert_exact("embedding_half", &down(b, &y), &down(b, &want));
}

/// `matmul_half` against the f64 reference product of the f16-rounded B,
/// with the f32 product's budget (`2e-5 * (Σ|alpha a b| + |beta c|) +
/// 1e-6`): the shapes of the f32 suite plus head-like ones (one or a few
/// rows against many columns, `trans_b`: decode and prefill logits; the
/// plain layout: the head's input gradient), every transpose, `alpha`,
/// `beta` (C holds NaN when `beta == 0`).
pub fn matmul_half_reference<B: Backend>(b: &B) {
    let mut rng = Rng::new(42);
    let mut shapes = gemm_shapes();
    shapes.extend([(1, 64, 300), (3, 48, 129), (8, 66, 70), (17, 130, 90)]);
    for (m, k, n) in shapes {
        for trans_a in [false, true] {
            for trans_b in [false, true] {
                for &(alpha, beta) in &[(1.0f32, 0.0f32), (-0.7, 1.0), (1.0, 0.5)] {
                    let g = Gemm {
                        m,
                        k,
                        n,
                        trans_a,
                        trans_b,
                        alpha,
                        beta,
                    };
                    let a = rng.vec(m * k, -1.0, 1.0);
                    let bm = rng.vec(k * n, -1.0, 1.0);
                    let c0 = if beta == 0.0 {
                        vec![f32::NAN; m * n]
                    } else {
                        rng.vec(m * n, -1.0, 1.0)
                    };
                    let mut c = up(b, &c0);
                    let bh = b.upload_half(&bm).expect("upload_half");
                    b.matmul_half(&up(b, &a), &bh, &mut c, g);
                    let rounded: Vec<f64> = bm.iter().map(|&x| reference::round_f16(x)).collect();
                    let (want, mag) = reference::matmul(&f64s(&a), &rounded, &f64s(&c0), g);
                    let tol: Vec<f64> = mag.iter().map(|m| 2e-5 * m + 1e-6).collect();
                    assert_within(&format!("matmul_half {g:?}"), &down(b, &c), &want, &tol);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// loss

/// Per-row loss against the f64 reference, with logits offset by 1e4 (a
/// naive softmax overflows), a masked row (loss 0) and vocab 32002; budget
/// `2e-5 + 1e-5 |loss|`. Same result with and without `dlogits`.
pub fn cross_entropy_reference<B: Backend>(b: &B) {
    let mut rng = Rng::new(21);
    for &(rows, vocab) in &[(1usize, 1usize), (4, 70), (3, 32002)] {
        let mut logits = rng.vec(rows * vocab, -5.0, 5.0);
        if rows > 1 {
            for v in &mut logits[vocab..2 * vocab] {
                *v += 1e4;
            }
        }
        let targets: Vec<u32> = (0..rows)
            .map(|r| {
                if r == 2 {
                    u32::MAX
                } else {
                    rng.below(vocab) as u32
                }
            })
            .collect();
        let want = reference::cross_entropy(&f64s(&logits), &targets, vocab);
        let (lb, tb) = (up(b, &logits), b.upload_ids(&targets).expect("ids"));
        let mut loss = up(b, &vec![f32::NAN; rows]);
        b.cross_entropy(&lb, &tb, &mut loss, None, rows, vocab, 1.0);
        let tol = if rows > 1 {
            2e-5 + 1e4 * f32::EPSILON as f64
        } else {
            2e-5
        };
        assert_close(
            &format!("cross_entropy [{rows} x {vocab}]"),
            &down(b, &loss),
            &want,
            tol,
            1e-5,
        );
        let mut loss2 = up(b, &vec![f32::NAN; rows]);
        let mut dl = up(b, &vec![f32::NAN; rows * vocab]);
        b.cross_entropy(&lb, &tb, &mut loss2, Some(&mut dl), rows, vocab, 1.0);
        assert_close(
            &format!("cross_entropy with grad [{rows} x {vocab}]"),
            &down(b, &loss2),
            &want,
            tol,
            1e-5,
        );
    }
}

/// `dlogits = grad_scale (softmax - onehot)` against central differences
/// of `grad_scale Σ loss` (h = 1e-5), with a masked row whose gradient must
/// be overwritten with zeros; budget `1e-5 + 1e-4 |g|`.
pub fn cross_entropy_backward_fd<B: Backend>(b: &B) {
    let mut rng = Rng::new(22);
    let (rows, vocab, gs) = (4, 11, 0.25f32);
    let logits = rng.vec(rows * vocab, -3.0, 3.0);
    let targets: Vec<u32> = vec![3, u32::MAX, 0, 10];
    let l64 = f64s(&logits);
    let want = fd_grad(
        |x| {
            gs as f64
                * reference::cross_entropy(x, &targets, vocab)
                    .iter()
                    .sum::<f64>()
        },
        &l64,
        1e-5,
    );
    let mut loss = up(b, &vec![0.0; rows]);
    let mut dl = up(b, &vec![f32::NAN; rows * vocab]);
    b.cross_entropy(
        &up(b, &logits),
        &b.upload_ids(&targets).expect("ids"),
        &mut loss,
        Some(&mut dl),
        rows,
        vocab,
        gs,
    );
    let got = down(b, &dl);
    assert_close("cross_entropy dlogits", &got, &want, 1e-5, 1e-4);
    assert!(
        got[vocab..2 * vocab].iter().all(|&v| v == 0.0),
        "masked row must get zero gradient"
    );
    assert_eq!(down(b, &loss)[1], 0.0, "masked row must get zero loss");
}

// ---------------------------------------------------------------------------
// optimizer

/// Three AdamW steps against PyTorch's formula written out in f64
/// (`p *= 1 - lr wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²;
/// p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)`), including zero
/// gradients; budget `1e-6 + 1e-5 |x|` on p, m and v.
pub fn adamw_matches_pytorch<B: Backend>(b: &B) {
    let mut rng = Rng::new(23);
    let n = 20_003;
    let p0 = rng.vec(n, -1.0, 1.0);
    let mut pb = up(b, &p0);
    let mut mb = up(b, &vec![0.0; n]);
    let mut vb = up(b, &vec![0.0; n]);
    let (mut p, mut m, mut v) = (f64s(&p0), vec![0f64; n], vec![0f64; n]);
    for step in 1..=3u32 {
        let mut g = rng.vec(n, -1.0, 1.0);
        g[0] = 0.0;
        g[1] = 1e-3;
        let h = AdamW {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            step,
        };
        b.adamw(&mut pb, &up(b, &g), &mut mb, &mut vb, h);
        let (lr, b1, b2, eps, wd) = (
            h.lr as f64,
            h.beta1 as f64,
            h.beta2 as f64,
            h.eps as f64,
            h.weight_decay as f64,
        );
        let t = step as i32;
        for i in 0..n {
            let gi = g[i] as f64;
            p[i] *= 1.0 - lr * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * gi;
            v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
            let denom = v[i].sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
            p[i] -= lr / (1.0 - b1.powi(t)) * m[i] / denom;
        }
        assert_close(
            &format!("adamw p, step {step}"),
            &down(b, &pb),
            &p,
            1e-6,
            1e-5,
        );
        assert_close(
            &format!("adamw m, step {step}"),
            &down(b, &mb),
            &m,
            1e-7,
            1e-5,
        );
        assert_close(
            &format!("adamw v, step {step}"),
            &down(b, &vb),
            &v,
            1e-9,
            1e-5,
        );
    }
}

/// [`Backend::adamw_multi`] over 70 tensors of mixed lengths (1 to 20,003
/// values: more tensors than one dispatch binds on any GPU, and a tail)
/// for three steps: bit-identical to [`Backend::adamw`] on each tensor
/// (PyTorch's formula is checked there, `adamw_matches_pytorch`), and
/// close to the f64 formula itself after the first step.
pub fn adamw_multi_matches_per_tensor<B: Backend>(b: &B) {
    let mut rng = Rng::new(29);
    let lens: Vec<usize> = (0..70)
        .map(|i| match i % 7 {
            0 => 1,
            1 => 255,
            2 => 256,
            3 => 257,
            4 => 8 * 96,
            5 => 3 + i,
            _ => 20_003,
        })
        .collect();
    let p0: Vec<Vec<f32>> = lens.iter().map(|&n| rng.vec(n, -1.0, 1.0)).collect();
    let state = |b: &B| -> Vec<[B::Buf; 3]> {
        p0.iter()
            .map(|p| {
                [
                    up(b, p),
                    up(b, &vec![0.0; p.len()]),
                    up(b, &vec![0.0; p.len()]),
                ]
            })
            .collect()
    };
    let (mut multi, mut single) = (state(b), state(b));
    for step in 1..=3u32 {
        let grads: Vec<B::Buf> = lens
            .iter()
            .map(|&n| {
                let mut g = rng.vec(n, -1.0, 1.0);
                g[0] = if step == 2 { 0.0 } else { g[0] };
                up(b, &g)
            })
            .collect();
        let h = AdamW {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            step,
        };
        let mut ts: Vec<AdamWTensor<'_, B>> = multi
            .iter_mut()
            .zip(&grads)
            .map(|([p, m, v], g)| AdamWTensor { p, g, m, v })
            .collect();
        b.adamw_multi(&mut ts, h);
        for ([p, m, v], g) in single.iter_mut().zip(&grads) {
            b.adamw(p, g, m, v, h);
        }
        for (i, (x, y)) in multi.iter().zip(&single).enumerate() {
            for (f, name) in ["p", "m", "v"].iter().enumerate() {
                let (got, want) = (down(b, &x[f]), down(b, &y[f]));
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "adamw_multi step {step}: tensor {i} ({} values) {name} differs from adamw",
                    lens[i]
                );
            }
            if step == 1 {
                // m = 0.1 g, v = 0.001 g^2: p = p0 (1 - lr wd) - lr sign(g) (|g| >> eps)
                let g = down(b, &grads[i]);
                let want: Vec<f64> = p0[i]
                    .iter()
                    .zip(&g)
                    .map(|(&p, &g)| {
                        let (p, g) = (p as f64, g as f64);
                        let m = 0.1 * g;
                        let v = 0.001 * g * g;
                        p * (1.0 - 1e-3) - 1e-2 / 0.1 * m / (v.sqrt() / 0.001f64.sqrt() + 1e-8)
                    })
                    .collect();
                assert_close("adamw_multi p, step 1", &down(b, &x[0]), &want, 1e-6, 1e-5);
            }
        }
    }
}

/// [`Backend::matmul_many`] on the product groups of a LoRA step (several
/// products sharing an operand, every transpose combination, `alpha` and
/// `beta` in {0 (C holds NaN, which must not propagate), 1}): each `c`
/// within the [`Backend::matmul`] budget `2e-5 * (Σ|alpha a b| + |beta c|)
/// + 1e-6` of the f64 reference, and within twice that of
/// [`Backend::matmul`] itself.
pub fn matmul_many_matches_matmul<B: Backend>(b: &B) {
    let mut rng = Rng::new(31);
    let (rows, r) = (37, 8);
    // (each member's own size, trans_a, trans_b, alpha, beta, whether the
    // members share one `a` buffer)
    for (outs, ta, tb, alpha, beta, shared) in [
        // forward A products: t_i = x · A_iᵀ, one x
        (vec![96, 96, 96], false, true, 1.0f32, 0.0f32, true),
        // forward B products: y_i += s t_i · B_iᵀ
        (vec![96, 40, 40], false, true, 2.0, 1.0, false),
        // backward: dt_i = s dy_i · B_i
        (vec![300, 72], false, false, 0.5, 0.0, false),
        // weight gradients: dB_i (+)= s dy_iᵀ · t_i and the like
        (vec![96, 40, 40, 96, 40, 40], true, false, 2.0, 1.0, false),
        (vec![700], true, true, -0.7, 0.0, false),
        (vec![1, 5], false, false, 1.0, 1.0, false),
    ] {
        let shapes: Vec<Gemm> = outs
            .iter()
            .enumerate()
            .map(|(i, &o)| {
                // the members of a shared-input group differ only in n
                let (m, k, n) = match if shared { 2 } else { i % 3 } {
                    0 => (rows, o, r),
                    1 => (o, rows, r),
                    _ => (rows, r, o),
                };
                Gemm {
                    m,
                    k,
                    n,
                    trans_a: ta,
                    trans_b: tb,
                    alpha,
                    beta,
                }
            })
            .collect();
        let shared_a = rng.vec(rows * r, -1.0, 1.0);
        let ops: Vec<[Vec<f32>; 3]> = shapes
            .iter()
            .map(|g| {
                let c0 = if g.beta == 0.0 {
                    vec![f32::NAN; g.m * g.n]
                } else {
                    rng.vec(g.m * g.n, -1.0, 1.0)
                };
                let a = if shared {
                    shared_a.clone()
                } else {
                    rng.vec(g.m * g.k, -1.0, 1.0)
                };
                [a, rng.vec(g.k * g.n, -1.0, 1.0), c0]
            })
            .collect();
        let a_one = up(b, &shared_a);
        let a_own: Vec<B::Buf> = ops.iter().map(|o| up(b, &o[0])).collect();
        let a_of = |i: usize| if shared { &a_one } else { &a_own[i] };
        let bs: Vec<B::Buf> = ops.iter().map(|o| up(b, &o[1])).collect();
        let mut many: Vec<B::Buf> = ops.iter().map(|o| up(b, &o[2])).collect();
        let mut ps: Vec<Product<'_, B>> = many
            .iter_mut()
            .enumerate()
            .map(|(i, c)| Product {
                a: a_of(i),
                b: &bs[i],
                c,
                g: shapes[i],
            })
            .collect();
        b.matmul_many(&mut ps);
        drop(ps);
        for (i, (o, g)) in ops.iter().zip(&shapes).enumerate() {
            let what = format!("matmul_many product {i} of {} {g:?}", shapes.len());
            let mut one = up(b, &o[2]);
            b.matmul(a_of(i), &bs[i], &mut one, *g);
            let (want, mag) = reference::matmul(&f64s(&o[0]), &f64s(&o[1]), &f64s(&o[2]), *g);
            let tol: Vec<f64> = mag.iter().map(|m| 2e-5 * m + 1e-6).collect();
            let got = down(b, &many[i]);
            assert_within(&what, &got, &want, &tol);
            let single = f64s(&down(b, &one));
            let tol2: Vec<f64> = tol.iter().map(|t| 2.0 * t).collect();
            assert_within(&format!("{what} against matmul"), &got, &single, &tol2);
        }
    }
}

/// EXACT: `requantize_ternary` re-packs latent weights into an existing
/// ternary matrix with the absmean definition, bit for bit: the effective
/// weights `code * scale` (read back through `ternary_matmul_float` on
/// identity rows, where every product is exact) and the W1.58A8 product
/// against the i64 reference, over shapes with partial blocks, a tensor whose
/// `W * s` hits the rounding ties 0.5 and 1.5, an all-zero tensor (the 1e-5
/// clamp) and a second requantization of the same matrix.
pub fn requantize_ternary_exact<B: Backend>(b: &B) {
    let mut rng = Rng::new(31);
    let ties = [0.5f32, -0.5, 1.5, -1.5, 2.5, 0.0, -1.0, 0.5];
    let mut cases: Vec<(usize, usize, Vec<f32>)> =
        vec![(2, 4, ties.to_vec()), (3, 5, vec![0.0; 15])];
    for &(out, cols) in &[(5usize, 70usize), (17, 129), (8, 256), (3, 300)] {
        let scale = rng.uniform(0.001, 0.5);
        let w: Vec<f32> = rng
            .vec(out * cols, -1.0, 1.0)
            .iter()
            .map(|v| v * scale)
            .collect();
        cases.push((out, cols, w));
    }
    for (out, cols, latent) in cases {
        // Start from unrelated codes and scale: every one must be replaced.
        let mut w = b
            .upload_ternary(&TernaryCodes {
                rows: out,
                cols,
                codes: rng.codes(out * cols, 0.2),
                scale: 3.0,
            })
            .expect("upload_ternary");
        for round in 0..2 {
            let latent: Vec<f32> = latent.iter().map(|v| v * (1 + round) as f32).collect();
            b.requantize_ternary(&up(b, &latent), &mut w);
            assert_eq!(b.ternary_shape(&w), (out, cols), "requantize_ternary shape");
            let (codes, scale) = reference::absmean_ternary(&latent);
            let what = format!("requantize_ternary [{out}, {cols}] round {round}");
            let mut eye = vec![0f32; cols * cols];
            for c in 0..cols {
                eye[c * cols + c] = 1.0;
            }
            let mut y = b.zeros(cols * out).expect("zeros");
            b.ternary_matmul_float(&w, &up(b, &eye), &mut y, cols);
            let mut want = vec![0f32; cols * out];
            for o in 0..out {
                for c in 0..cols {
                    want[c * out + o] = codes[o * cols + c] as f32 * scale;
                }
            }
            assert_exact(&format!("{what}: code * scale"), &down(b, &y), &want);
            let rows = 3;
            let x = rng.vec(rows * cols, -2.0, 2.0);
            let mut y = b.zeros(rows * out).expect("zeros");
            b.ternary_matmul(&w, &up(b, &x), &mut y, rows);
            let want = reference::ternary_matmul(&codes, out, cols, scale, &x, rows);
            assert_exact(&format!("{what}: W1.58A8 product"), &down(b, &y), &want);
        }
    }
}

/// EXACT: `fake_quant_act` against the definition, including a zero row (the
/// 1e-5 clamp), a row whose `x * a` lands on halves (ties to even) and rows
/// of widths that are not multiples of any block.
pub fn fake_quant_act_exact<B: Backend>(b: &B) {
    let mut rng = Rng::new(32);
    let mut tie_row: Vec<f32> = (0..10).map(|i| i as f32 + 0.5).collect();
    tie_row.push(127.0);
    let mut x = vec![0f32; 11];
    x.extend(&tie_row);
    x.extend(rng.vec(11 * 5, -3.0, 3.0));
    let want = reference::fake_quant_act(&x, 7, 11);
    // Ties: with max 127 the scale is 1, so 0.5 -> 0, 1.5 -> 2, 2.5 -> 2.
    assert_eq!(&want[11..14], &[0.0, 2.0, 2.0], "reference ties");
    let mut y = b.zeros(x.len()).expect("zeros");
    b.fake_quant_act(&up(b, &x), &mut y, 7, 11);
    assert_exact("fake_quant_act [7, 11]", &down(b, &y), &want);
    for &(rows, cols) in &[(1usize, 1usize), (19, 300), (40, 129)] {
        let x = rng.vec(rows * cols, -5.0, 5.0);
        let mut y = b.zeros(rows * cols).expect("zeros");
        b.fake_quant_act(&up(b, &x), &mut y, rows, cols);
        let what = format!("fake_quant_act [{rows}, {cols}]");
        assert_exact(
            &what,
            &down(b, &y),
            &reference::fake_quant_act(&x, rows, cols),
        );
    }
}

/// EXACT: the fused inference steps ([`crate::fused`]: [`Backend::attn_in`],
/// [`Backend::norm_ternary_residual`], [`Backend::ffn_in`]) give the values
/// of their reference compositions of plain ops on the same backend, bit for
/// bit: the rotated queries, the cache rows written (and the rows around
/// them untouched), the residual sums and the gated activations. Shapes with
/// grouped KV heads, widths that are not multiples of a block, 1 to 3 rows
/// after a cached prefix (the decode path), a head size that is not a
/// multiple of 8 and 9 rows (where a backend may fall back to the plain ops).
pub fn fused_block_ops_match_composition<B: Backend>(b: &B) {
    use crate::fused::{self, AttnIn, FfnIn, NormIn, RopeDims};
    let mut rng = Rng::new(41);
    // (hidden, heads, kv heads, head_dim, ffn, rows, cached rows)
    for &(h, nh, nkv, hd, f, rows, n_past) in &[
        (200usize, 4usize, 2usize, 16usize, 70usize, 1usize, 0usize),
        (256, 8, 8, 32, 130, 1, 7),
        (96, 2, 1, 48, 64, 3, 2),
        (130, 3, 3, 10, 50, 2, 1),
        (64, 2, 2, 32, 40, 9, 0),
    ] {
        let what = format!("[{rows} x {h}], {nh}/{nkv} heads of {hd}, ffn {f}, {n_past} cached");
        let (qd, kvd) = (nh * hd, nkv * hd);
        let ctx = n_past + rows + 2;
        let weight = |rng: &mut Rng, out: usize, cols: usize| {
            let codes = rng.codes(out * cols, 0.3);
            let scale = rng.uniform(0.02, 0.5);
            upload_codes(b, &codes, out, cols, scale)
        };
        let (wq, wk, wv) = (
            weight(&mut rng, qd, h),
            weight(&mut rng, kvd, h),
            weight(&mut rng, kvd, h),
        );
        let (wo, wg, wu) = (
            weight(&mut rng, h, qd),
            weight(&mut rng, f, h),
            weight(&mut rng, f, h),
        );
        let x = up(b, &rng.vec(rows * h, -3.0, 3.0));
        let nw = up(b, &rng.vec(h, 0.5, 1.5));
        let att = up(b, &rng.vec(rows * qd, -2.0, 2.0));
        let nwo = up(b, &rng.vec(qd, 0.5, 1.5));
        let res = up(b, &rng.vec(rows * h, -1.0, 1.0));
        let cache0 = rng.vec(ctx * kvd, -1.0, 1.0);
        let positions: Vec<u32> = (n_past..n_past + rows).map(|p| p as u32).collect();
        let pos = b.upload_ids(&positions).expect("upload_ids");
        let rope = RopeDims {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            theta: 10_000.0,
        };
        // every output: (q, k cache, v cache, o + residual, silu gate, relu2 gate)
        let run = |fuse: bool| -> Vec<Vec<f32>> {
            let z = |n: usize| up(b, &vec![f32::NAN; n]);
            let (mut normed, mut rstd) = (z(rows * h), z(rows));
            let (mut normed_o, mut rstd_o) = (z(rows * qd), z(rows));
            let (mut q, mut k, mut v) = (z(rows * qd), z(rows * kvd), z(rows * kvd));
            let (mut kc, mut vc) = (up(b, &cache0), up(b, &cache0));
            let attn = AttnIn {
                norm: NormIn {
                    x: &x,
                    weight: &nw,
                    eps: 1e-5,
                    rows,
                    normed: &mut normed,
                    rstd: &mut rstd,
                },
                wq: &wq,
                wk: &wk,
                wv: &wv,
                pos: &pos,
                rope,
                q: &mut q,
                k: &mut k,
                v: &mut v,
                k_cache: &mut kc,
                v_cache: &mut vc,
                n_past,
            };
            if fuse {
                b.attn_in(attn)
            } else {
                fused::attn_in_unfused(b, attn)
            }
            let mut out = z(rows * h);
            let norm = NormIn {
                x: &att,
                weight: &nwo,
                eps: 1e-6,
                rows,
                normed: &mut normed_o,
                rstd: &mut rstd_o,
            };
            if fuse {
                b.norm_ternary_residual(norm, &wo, &res, &mut out)
            } else {
                fused::norm_ternary_residual_unfused(b, norm, &wo, &res, &mut out)
            }
            let mut outs = vec![down(b, &q), down(b, &kc), down(b, &vc), down(b, &out)];
            for act in [Activation::Silu, Activation::Relu2] {
                let (mut g, mut u, mut y) = (z(rows * f), z(rows * f), z(rows * f));
                let ffn = FfnIn {
                    norm: NormIn {
                        x: &x,
                        weight: &nw,
                        eps: 1e-5,
                        rows,
                        normed: &mut normed,
                        rstd: &mut rstd,
                    },
                    wg: &wg,
                    wu: &wu,
                    act,
                    g: &mut g,
                    u: &mut u,
                    out: &mut y,
                };
                if fuse {
                    b.ffn_in(ffn)
                } else {
                    fused::ffn_in_unfused(b, ffn)
                }
                outs.push(down(b, &y));
            }
            outs
        };
        let (got, want) = (run(true), run(false));
        let names = [
            "q",
            "k cache",
            "v cache",
            "o + residual",
            "silu gate",
            "relu2 gate",
        ];
        for ((name, got), want) in names.iter().zip(&got).zip(&want) {
            assert!(
                want.iter().all(|v| v.is_finite()),
                "{what}: {name}: composition not finite"
            );
            assert_exact(&format!("fused {name} {what}"), got, want);
        }
        // the cache rows outside the new ones are untouched
        let new = n_past * kvd..(n_past + rows) * kvd;
        for (i, (&kv, &c0)) in got[1].iter().zip(&cache0).enumerate() {
            if !new.contains(&i) {
                assert_eq!(
                    kv.to_bits(),
                    c0.to_bits(),
                    "{what}: k cache element {i} changed"
                );
            }
        }
    }
}

/// EXACT: [`Backend::argmax`] against the sequential scan
/// ([`crate::argmax_row`]) over rows with ties, signed zeros, infinities,
/// NaN (leading, trailing, whole rows) and a vocabulary-sized row, and the
/// copy into a history buffer at an offset.
pub fn argmax_reference<B: Backend>(b: &B) {
    let mut rng = Rng::new(43);
    let nan = f32::NAN;
    let special: Vec<Vec<f32>> = vec![
        vec![1.0, 3.0, 3.0, 2.0],
        vec![nan, nan, 0.5, 0.5, nan],
        vec![nan, nan, nan],
        vec![-0.0, 0.0, -1.0],
        vec![f32::NEG_INFINITY, f32::NEG_INFINITY],
        vec![2.0, f32::INFINITY, nan, f32::INFINITY],
        vec![-5.0],
    ];
    for row in &special {
        let cols = row.len();
        let mut out = b.upload_ids(&[7]).expect("upload_ids");
        b.argmax(&up(b, row), 1, cols, &mut out, None);
        let got = b.download_ids(&out).expect("download_ids");
        assert_eq!(got, [crate::argmax_row(row)], "argmax of {row:?}");
    }
    for &(rows, cols) in &[(1usize, 1usize), (3, 7), (5, 300), (2, 32002)] {
        let mut x = rng.vec(rows * cols, -4.0, 4.0);
        // plant ties with the maximum and a NaN in each row
        for r in 0..rows {
            let row = &mut x[r * cols..(r + 1) * cols];
            let m = row.iter().cloned().fold(f32::MIN, f32::max);
            let j = rng.below(cols);
            row[j] = m;
            let k = rng.below(cols);
            if cols > 1 {
                row[k] = nan;
            }
        }
        let want: Vec<u32> = x.chunks(cols).map(crate::argmax_row).collect();
        let mut out = b.upload_ids(&vec![u32::MAX; rows]).expect("upload_ids");
        let mut hist = b.upload_ids(&vec![9; rows + 3]).expect("upload_ids");
        b.argmax(&up(b, &x), rows, cols, &mut out, Some((&mut hist, 2)));
        assert_eq!(
            b.download_ids(&out).expect("ids"),
            want,
            "argmax [{rows}, {cols}]"
        );
        let mut h = vec![9, 9];
        h.extend(&want);
        h.push(9);
        assert_eq!(
            b.download_ids(&hist).expect("ids"),
            h,
            "argmax history [{rows}, {cols}]"
        );
    }
}
