//! Packed ternary weights and the exact W1.58A8 kernels of the CPU backend.
//!
//! Layout: every row is padded to a multiple of [`BLOCK`] codes (the padding
//! codes are 0) and stored as `BLOCK / 4` bytes per block. Within a block,
//! byte `j` (`0..32`) holds the codes at offsets `j`, `j + 32`, `j + 64` and
//! `j + 96` in its bit pairs `0-1`, `2-3`, `4-5` and `6-7`, each as the
//! unsigned value `u = code + 1` in `{0, 1, 2}`. One 32-byte load therefore
//! yields four runs of 32 consecutive codes with one shift and one mask each,
//! both in the portable kernel and in the AVX2 one.
//!
//! Dot products use `Σ code·x = Σ u·x − Σ x`: the unsigned-times-signed form is
//! what `_mm256_maddubs_epi16` computes, and `Σ x` is taken once per
//! activation row. Every partial sum is bounded well inside its integer type
//! (see the kernels), so the result is the exact i32 dot product.

use rayon::prelude::*;

use crate::{contract, BackendError, TernarySource};

/// Codes per packed block.
pub const BLOCK: usize = 128;
/// Bytes per packed block.
pub const BLOCK_BYTES: usize = BLOCK / 4;

/// A ternary matrix packed for the CPU backend (see the module docs).
#[derive(Clone, Debug)]
pub struct CpuTernary {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// `cols` rounded up to a multiple of [`BLOCK`].
    pub(crate) cols_pad: usize,
    /// `cols_pad / 4`.
    pub(crate) row_bytes: usize,
    pub(crate) scale: f32,
    pub(crate) data: Vec<u8>,
}

impl CpuTernary {
    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
    /// The per-tensor weight scale.
    pub fn scale(&self) -> f32 {
        self.scale
    }
    /// Packed bytes of row `r`.
    #[inline]
    pub(crate) fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
    /// The code at `(r, c)`; used by tests of the layout.
    pub fn code(&self, r: usize, c: usize) -> i8 {
        assert!(
            r < self.rows && c < self.cols,
            "code({r}, {c}) out of range"
        );
        let blk = c / BLOCK;
        let w = c % BLOCK;
        let byte = self.row(r)[blk * BLOCK_BYTES + w % BLOCK_BYTES];
        ((byte >> (2 * (w / BLOCK_BYTES))) & 3) as i8 - 1
    }
}

/// Packs a [`TernarySource`] row by row (only one row of codes is unpacked at
/// a time).
pub(crate) fn pack(w: &dyn TernarySource) -> Result<CpuTernary, BackendError> {
    let (rows, cols) = (w.rows(), w.cols());
    contract::ternary_source("cpu", w)?;
    let scale = w.scale();
    let cols_pad = cols.div_ceil(BLOCK) * BLOCK;
    let row_bytes = cols_pad / 4;
    let mut data = vec![0u8; rows * row_bytes];
    let mut codes = vec![0i8; cols];
    for r in 0..rows {
        w.row_codes(r, &mut codes);
        contract::ternary_row("cpu", w, r, &codes)?;
        pack_row(&codes, &mut data[r * row_bytes..(r + 1) * row_bytes]);
    }
    Ok(CpuTernary {
        rows,
        cols,
        cols_pad,
        row_bytes,
        scale,
        data,
    })
}

/// Absmean-ternarizes `latent` (`[rows, cols]`) into `w` in place
/// (`tern_tensor::quant::absmean_ternary`: one f64 sum over the whole tensor,
/// then the codes of each row packed in parallel).
pub(crate) fn requantize(latent: &[f32], w: &mut CpuTernary) {
    if latent.is_empty() {
        return;
    }
    let s = tern_tensor::quant::absmean_inv_scale(latent);
    let cols = w.cols;
    w.data
        .par_chunks_mut(w.row_bytes)
        .zip(latent.par_chunks(cols))
        .for_each(|(out, row)| {
            let codes: Vec<i8> = row
                .iter()
                .map(|&x| (x * s).round_ties_even().clamp(-1.0, 1.0) as i8)
                .collect();
            pack_row(&codes, out);
        });
    w.scale = 1.0 / s;
}

fn pack_row(codes: &[i8], out: &mut [u8]) {
    // 0b01 in every pair: code 0 (u = 1), which is also the padding.
    out.fill(0x55);
    for (blk, chunk) in codes.chunks(BLOCK).enumerate() {
        let bytes = &mut out[blk * BLOCK_BYTES..(blk + 1) * BLOCK_BYTES];
        for (w, &c) in chunk.iter().enumerate() {
            let shift = 2 * (w / BLOCK_BYTES);
            let b = &mut bytes[w % BLOCK_BYTES];
            *b = (*b & !(3 << shift)) | (((c + 1) as u8) << shift);
        }
    }
}

/// Decodes one packed block into the unsigned values `u = code + 1`.
#[inline(always)]
fn decode_block_u(bytes: &[u8], out: &mut [u8; BLOCK]) {
    let bytes: &[u8; BLOCK_BYTES] = bytes.try_into().expect("block bytes");
    for k in 0..4 {
        for j in 0..BLOCK_BYTES {
            out[k * BLOCK_BYTES + j] = (bytes[j] >> (2 * k)) & 3;
        }
    }
}

/// Decodes rows `r0..r0 + nr`, columns `c0..c0 + nc` (block aligned `c0`)
/// into `out[(r - r0) * nc + (c - c0)]` as f32 codes.
pub(crate) fn decode_f32(
    w: &CpuTernary,
    r0: usize,
    nr: usize,
    c0: usize,
    nc: usize,
    out: &mut [f32],
) {
    debug_assert_eq!(c0 % BLOCK, 0);
    let mut u = [0u8; BLOCK];
    for i in 0..nr {
        let row = w.row(r0 + i);
        let dst = &mut out[i * nc..(i + 1) * nc];
        let mut c = 0;
        while c < nc {
            let blk = (c0 + c) / BLOCK;
            decode_block_u(&row[blk * BLOCK_BYTES..(blk + 1) * BLOCK_BYTES], &mut u);
            let n = (nc - c).min(BLOCK);
            for (d, &v) in dst[c..c + n].iter_mut().zip(&u[..n]) {
                *d = v as f32 - 1.0;
            }
            c += n;
        }
    }
}

/// Int8 activations quantized per row, padded to `cols_pad` with zeros.
pub(crate) struct QuantAct {
    pub xq: Vec<i8>,
    pub a: Vec<f32>,
    pub sum: Vec<i32>,
    pub stride: usize,
}

/// Quantizes `rows` rows of `cols` values with tern-tensor's
/// `absmax_int8_per_token` (the normative BitNet semantics).
pub(crate) fn quantize(x: &[f32], rows: usize, cols: usize, cols_pad: usize) -> QuantAct {
    let mut xq = vec![0i8; rows * cols_pad];
    let mut a = vec![0f32; rows];
    let mut sum = vec![0i32; rows];
    xq.par_chunks_mut(cols_pad)
        .zip(a.par_iter_mut())
        .zip(sum.par_iter_mut())
        .enumerate()
        .for_each(|(r, ((q, a), s))| {
            tern_tensor::quant::absmax_int8_per_token(
                &x[r * cols..(r + 1) * cols],
                cols,
                &mut q[..cols],
                std::slice::from_mut(a),
            );
            *s = q[..cols].iter().map(|&v| v as i32).sum();
        });
    QuantAct {
        xq,
        a,
        sum,
        stride: cols_pad,
    }
}

/// Which integer kernel to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
        }
    }

    /// `out[i] = Σ_c u[c] * x[i * stride + c]` for `i < NR` over the whole
    /// packed row `w` (`stride >= 4 * w.len()`).
    #[inline]
    fn dot_u<const NR: usize>(self, w: &[u8], x: &[i8], stride: usize) -> [i32; NR] {
        match self {
            Kernel::Portable => dot_u_portable::<NR>(w, x, stride),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Kernel::Avx2` is only constructed after
            // `is_x86_feature_detected!("avx2")` returned true.
            Kernel::Avx2 => unsafe { dot_u_avx2::<NR>(w, x, stride) },
        }
    }
}

/// Portable kernel: decode a block into a stack buffer, then i16 lanes.
/// Each i16 lane sums four products `u * x` with `|u * x| <= 256`, so at most
/// 1024 in magnitude; lanes are widened to i32 once per block.
#[inline]
fn dot_u_portable<const NR: usize>(w: &[u8], x: &[i8], stride: usize) -> [i32; NR] {
    let mut out = [0i32; NR];
    let mut u = [0u8; BLOCK];
    for (b, bytes) in w.chunks_exact(BLOCK_BYTES).enumerate() {
        decode_block_u(bytes, &mut u);
        for (r, o) in out.iter_mut().enumerate() {
            let xs: &[i8; BLOCK] = x[r * stride + b * BLOCK..r * stride + (b + 1) * BLOCK]
                .try_into()
                .expect("block");
            let mut lanes = [0i16; BLOCK_BYTES];
            for k in 0..4 {
                for j in 0..BLOCK_BYTES {
                    lanes[j] += u[k * BLOCK_BYTES + j] as i16 * xs[k * BLOCK_BYTES + j] as i16;
                }
            }
            *o += lanes.iter().map(|&v| v as i32).sum::<i32>();
        }
    }
    out
}

/// Portable kernel on rows already decoded to `u` bytes (`BLOCK`-padded):
/// the matmul path decodes each weight row once per task instead of once per
/// group of four activation rows. Same i16 lane bounds as above.
#[inline]
fn dot_u_decoded<const NR: usize>(u: &[u8], x: &[i8], stride: usize) -> [i32; NR] {
    let mut out = [0i32; NR];
    for (b, ub) in u.chunks_exact(BLOCK).enumerate() {
        for (r, o) in out.iter_mut().enumerate() {
            let xs = &x[r * stride + b * BLOCK..r * stride + (b + 1) * BLOCK];
            let mut lanes = [0i16; BLOCK_BYTES];
            for k in 0..4 {
                for j in 0..BLOCK_BYTES {
                    lanes[j] += ub[k * BLOCK_BYTES + j] as i16 * xs[k * BLOCK_BYTES + j] as i16;
                }
            }
            *o += lanes.iter().map(|&v| v as i32).sum::<i32>();
        }
    }
    out
}

/// AVX2 kernel. `maddubs(u, x)` adds two products of at most 256 in magnitude
/// per i16 lane (no saturation); four of those are added (at most 2048), then
/// widened to i32 by `madd` with ones.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_u_avx2<const NR: usize>(w: &[u8], x: &[i8], stride: usize) -> [i32; NR] {
    use std::arch::x86_64::*;
    let nblk = w.len() / BLOCK_BYTES;
    assert!(NR == 0 || x.len() >= (NR - 1) * stride + nblk * BLOCK);
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); NR];
    let wp = w.as_ptr();
    let xp = x.as_ptr();
    for b in 0..nblk {
        // SAFETY: `b * 32 + 32 <= w.len()`, and every activation row read
        // below lies within `x` by the assertion above.
        unsafe {
            let p = _mm256_loadu_si256(wp.add(b * BLOCK_BYTES) as *const __m256i);
            let u0 = _mm256_and_si256(p, mask);
            let u1 = _mm256_and_si256(_mm256_srli_epi16(p, 2), mask);
            let u2 = _mm256_and_si256(_mm256_srli_epi16(p, 4), mask);
            let u3 = _mm256_and_si256(_mm256_srli_epi16(p, 6), mask);
            for (r, a) in acc.iter_mut().enumerate() {
                let xr = xp.add(r * stride + b * BLOCK) as *const __m256i;
                let s0 = _mm256_maddubs_epi16(u0, _mm256_loadu_si256(xr));
                let s1 = _mm256_maddubs_epi16(u1, _mm256_loadu_si256(xr.add(1)));
                let s2 = _mm256_maddubs_epi16(u2, _mm256_loadu_si256(xr.add(2)));
                let s3 = _mm256_maddubs_epi16(u3, _mm256_loadu_si256(xr.add(3)));
                let s = _mm256_add_epi16(_mm256_add_epi16(s0, s1), _mm256_add_epi16(s2, s3));
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(s, ones));
            }
        }
    }
    let mut out = [0i32; NR];
    for (o, a) in out.iter_mut().zip(acc) {
        let lo = _mm256_castsi256_si128(a);
        let hi = _mm256_extracti128_si256(a, 1);
        let s = _mm_add_epi32(lo, hi);
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        *o = _mm_cvtsi128_si32(s);
    }
    out
}

/// Output features per parallel task.
const OUT_CHUNK: usize = 16;

/// Exact i32 accumulators `acc[o * rows + r] = Σ_c code[o, c] * xq[r, c]`
/// for the output rows `o0..o0 + n` of `w`, written into `out`
/// (`[n, rows]`, feature-major).
fn accumulate(
    kernel: Kernel,
    w: &CpuTernary,
    q: &QuantAct,
    rows: usize,
    o0: usize,
    out: &mut [i32],
) {
    let n = out.len() / rows;
    if kernel == Kernel::Portable && rows > 1 {
        return accumulate_decoded(w, q, rows, o0, n, out);
    }
    let mut r = 0;
    while r < rows {
        let nr = (rows - r).min(4);
        let x = &q.xq[r * q.stride..];
        for i in 0..n {
            let wr = w.row(o0 + i);
            let dst = &mut out[i * rows + r..i * rows + r + nr];
            match nr {
                4 => dst.copy_from_slice(&kernel.dot_u::<4>(wr, x, q.stride)),
                3 => dst.copy_from_slice(&kernel.dot_u::<3>(wr, x, q.stride)),
                2 => dst.copy_from_slice(&kernel.dot_u::<2>(wr, x, q.stride)),
                _ => dst.copy_from_slice(&kernel.dot_u::<1>(wr, x, q.stride)),
            }
            for (k, d) in dst.iter_mut().enumerate() {
                *d -= q.sum[r + k];
            }
        }
        r += nr;
    }
}

/// [`accumulate`] for the portable kernel with several activation rows:
/// decodes the task's `n` weight rows once, then streams the activations.
fn accumulate_decoded(
    w: &CpuTernary,
    q: &QuantAct,
    rows: usize,
    o0: usize,
    n: usize,
    out: &mut [i32],
) {
    let mut u = vec![0u8; n * w.cols_pad];
    let mut blk = [0u8; BLOCK];
    for i in 0..n {
        for (b, bytes) in w.row(o0 + i).chunks_exact(BLOCK_BYTES).enumerate() {
            decode_block_u(bytes, &mut blk);
            u[i * w.cols_pad + b * BLOCK..i * w.cols_pad + (b + 1) * BLOCK].copy_from_slice(&blk);
        }
    }
    let mut r = 0;
    while r < rows {
        let nr = (rows - r).min(4);
        let x = &q.xq[r * q.stride..];
        for i in 0..n {
            let ur = &u[i * w.cols_pad..(i + 1) * w.cols_pad];
            let dst = &mut out[i * rows + r..i * rows + r + nr];
            match nr {
                4 => dst.copy_from_slice(&dot_u_decoded::<4>(ur, x, q.stride)),
                3 => dst.copy_from_slice(&dot_u_decoded::<3>(ur, x, q.stride)),
                2 => dst.copy_from_slice(&dot_u_decoded::<2>(ur, x, q.stride)),
                _ => dst.copy_from_slice(&dot_u_decoded::<1>(ur, x, q.stride)),
            }
            for (k, d) in dst.iter_mut().enumerate() {
                *d -= q.sum[r + k];
            }
        }
        r += nr;
    }
}

/// The exact integer products `acc[r, o]` (`[rows, out]`) of the quantized
/// `x` with `w`; exposed for the thread-count determinism test.
pub fn ternary_acc(kernel: Kernel, w: &CpuTernary, x: &[f32], rows: usize) -> (Vec<i32>, Vec<f32>) {
    let q = quantize(x, rows, w.cols, w.cols_pad);
    let mut fm = vec![0i32; w.rows * rows];
    fm.par_chunks_mut(OUT_CHUNK * rows.max(1))
        .enumerate()
        .for_each(|(ci, chunk)| accumulate(kernel, w, &q, rows, ci * OUT_CHUNK, chunk));
    let mut acc = vec![0i32; rows * w.rows];
    for o in 0..w.rows {
        for r in 0..rows {
            acc[r * w.rows + o] = fm[o * rows + r];
        }
    }
    (acc, q.a)
}

/// `y[r, o] = acc * w_scale / a[r]`.
pub(crate) fn matmul(kernel: Kernel, w: &CpuTernary, x: &[f32], y: &mut [f32], rows: usize) {
    if rows == 0 || w.rows == 0 {
        return;
    }
    let q = quantize(x, rows, w.cols, w.cols_pad);
    let scale = w.scale;
    if rows == 1 {
        let a = q.a[0];
        y.par_chunks_mut(OUT_CHUNK)
            .enumerate()
            .for_each(|(ci, ys)| {
                let mut acc = [0i32; OUT_CHUNK];
                let acc = &mut acc[..ys.len()];
                accumulate(kernel, w, &q, 1, ci * OUT_CHUNK, acc);
                for (yv, &t) in ys.iter_mut().zip(acc.iter()) {
                    *yv = t as f32 * scale / a;
                }
            });
        return;
    }
    // Feature-major accumulators, one chunk of output features per task (the
    // chunk's packed rows stay in L1 while every activation row streams by),
    // then a transpose into `y`.
    let mut fm = vec![0i32; w.rows * rows];
    fm.par_chunks_mut(OUT_CHUNK * rows)
        .enumerate()
        .for_each(|(ci, chunk)| accumulate(kernel, w, &q, rows, ci * OUT_CHUNK, chunk));
    let out = w.rows;
    y.par_chunks_mut(out).enumerate().for_each(|(r, yr)| {
        let a = q.a[r];
        for (o, yv) in yr.iter_mut().enumerate() {
            *yv = fm[o * rows + r] as f32 * scale / a;
        }
    });
}

/// Output features per parallel task of the float-activation product.
const FLOAT_ROWS: usize = 64;
/// Input features decoded per step of the float-activation product (block
/// aligned): a task's tile is `FLOAT_ROWS x FLOAT_COLS` f32 codes.
const FLOAT_COLS: usize = 8 * BLOCK;

/// `y = x · (W_t * scale)ᵀ` with float activations (no quantization): each
/// task owns `FLOAT_ROWS` output features (a column strip of `y`), decodes
/// `FLOAT_ROWS x FLOAT_COLS` codes at a time into an f32 tile and accumulates
/// with sgemm. Chunk boundaries do not depend on the thread count.
pub(crate) fn matmul_float(w: &CpuTernary, x: &[f32], y: &mut [f32], rows: usize) {
    let (out, cols) = (w.rows, w.cols);
    if rows == 0 || out == 0 {
        return;
    }
    let mut yv = ndarray::ArrayViewMut2::from_shape((rows, out), y).expect("y shape");
    let chunks: Vec<_> = yv
        .axis_chunks_iter_mut(ndarray::Axis(1), FLOAT_ROWS)
        .collect();
    chunks.into_par_iter().enumerate().for_each(|(ci, mut yc)| {
        let o0 = ci * FLOAT_ROWS;
        let no = yc.ncols();
        let mut buf = vec![0f32; no * FLOAT_COLS.min(cols)];
        let (rsc, csc) = (yc.strides()[0], yc.strides()[1]);
        let cp = yc.as_mut_ptr();
        let mut c0 = 0;
        while c0 < cols {
            let nc = (cols - c0).min(FLOAT_COLS);
            decode_f32(w, o0, no, c0, nc, &mut buf[..no * nc]);
            let beta = if c0 == 0 { 0.0 } else { 1.0 };
            // SAFETY: A is `x[:, c0..c0 + nc]` (row stride `cols`), B is
            // the decoded `[no, nc]` tile read transposed (`B[c, o]` at
            // `o * nc + c`), C is this task's own `[rows, no]` column strip
            // of `y` with the strides ndarray reports; all in bounds.
            unsafe {
                matrixmultiply::sgemm(
                    rows,
                    nc,
                    no,
                    w.scale,
                    x.as_ptr().add(c0),
                    cols as isize,
                    1,
                    buf.as_ptr(),
                    1,
                    nc as isize,
                    beta,
                    cp,
                    rsc,
                    csc,
                );
            }
            c0 += nc;
        }
    });
}

/// Output features decoded per step of the backward.
const BWD_ROWS: usize = 64;
/// Input features per parallel task of the backward (block aligned).
const BWD_COLS: usize = 2 * BLOCK;

/// `dx = dy · (W_t * scale)`: each task owns a block-aligned range of input
/// columns of `dx`, decodes `BWD_ROWS` x `BWD_COLS` codes at a time into an f32
/// buffer and accumulates with sgemm.
pub(crate) fn matmul_backward(w: &CpuTernary, dy: &[f32], dx: &mut [f32], rows: usize) {
    let (out, cols) = (w.rows, w.cols);
    if rows == 0 {
        return;
    }
    if out == 0 {
        dx.fill(0.0);
        return;
    }
    let mut dxv = ndarray::ArrayViewMut2::from_shape((rows, cols), dx).expect("dx shape");
    let chunks: Vec<_> = dxv
        .axis_chunks_iter_mut(ndarray::Axis(1), BWD_COLS)
        .collect();
    chunks
        .into_par_iter()
        .enumerate()
        .for_each(|(ci, mut dxc)| {
            let c0 = ci * BWD_COLS;
            let nc = dxc.ncols();
            let mut buf = vec![0f32; BWD_ROWS * nc];
            let (rsc, csc) = (dxc.strides()[0], dxc.strides()[1]);
            let cp = dxc.as_mut_ptr();
            let mut o0 = 0;
            while o0 < out {
                let no = (out - o0).min(BWD_ROWS);
                decode_f32(w, o0, no, c0, nc, &mut buf[..no * nc]);
                let beta = if o0 == 0 { 0.0 } else { 1.0 };
                // SAFETY: A is `dy[:, o0..o0 + no]` (row stride `out`), B is the
                // `[no, nc]` buffer, C is this task's own `[rows, nc]` column
                // chunk of `dx` with the strides ndarray reports; all in bounds.
                unsafe {
                    matrixmultiply::sgemm(
                        rows,
                        no,
                        nc,
                        w.scale,
                        dy.as_ptr().add(o0),
                        out as isize,
                        1,
                        buf.as_ptr(),
                        nc as isize,
                        1,
                        beta,
                        cp,
                        rsc,
                        csc,
                    );
                }
                o0 += no;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TernaryCodes;

    #[test]
    fn pack_roundtrip_odd_cols() {
        for cols in [1usize, 5, 127, 128, 129, 300] {
            let rows = 3;
            let codes: Vec<i8> = (0..rows * cols)
                .map(|i| ((i * 7 + i / 3) % 3) as i8 - 1)
                .collect();
            let t = pack(&TernaryCodes {
                rows,
                cols,
                codes: &codes,
                scale: 0.5,
            })
            .unwrap();
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t.code(r, c), codes[r * cols + c], "({r}, {c})");
                }
            }
            let mut f = vec![0f32; rows * t.cols_pad];
            decode_f32(&t, 0, rows, 0, t.cols_pad, &mut f);
            for r in 0..rows {
                for c in 0..t.cols_pad {
                    let want = if c < cols {
                        codes[r * cols + c] as f32
                    } else {
                        0.0
                    };
                    assert_eq!(f[r * t.cols_pad + c], want);
                }
            }
        }
    }

    #[test]
    fn rejects_bad_codes() {
        let codes = [0i8, 1, 2, -1];
        let e = pack(&TernaryCodes {
            rows: 2,
            cols: 2,
            codes: &codes,
            scale: 1.0,
        })
        .unwrap_err();
        assert!(e.to_string().contains("row 1 column 0 holds code 2"), "{e}");
    }
}
