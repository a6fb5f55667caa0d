//! The CPU backend: host `Vec`s as buffers, rayon over rows, matrixmultiply
//! for f32 products and exact integer kernels for the ternary product.
//!
//! Every op runs inside the backend's own rayon pool, so `Cpu::with_threads(n)`
//! bounds the parallelism of everything it computes. Results do not depend on
//! the thread count: work is split into fixed-size chunks whose boundaries do
//! not depend on it, and reductions run in a fixed order.

mod attention;
mod half;
mod ternary;

use rayon::prelude::*;

pub use half::CpuHalf;
pub use ternary::CpuTernary;

use crate::{contract, Activation, AdamW, AttnDims, Backend, BackendError, Gemm, TernarySource};

/// Rows per parallel task of row-wise ops.
const ROW_CHUNK: usize = 8;
/// Elements per parallel task of element-wise ops.
const ELEM_CHUNK: usize = 1 << 14;

/// The CPU backend.
pub struct Cpu {
    pool: rayon::ThreadPool,
    threads: usize,
    kernel: ternary::Kernel,
}

impl Default for Cpu {
    fn default() -> Self {
        Self::new()
    }
}

impl Cpu {
    /// A backend using every available core.
    pub fn new() -> Self {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_threads(n)
    }

    /// A backend with a pool of `n` threads (at least 1).
    ///
    /// # Panics
    /// If the operating system refuses to start the threads.
    pub fn with_threads(n: usize) -> Self {
        let n = n.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("tern-cpu-{i}"))
            .build()
            .expect("cpu backend: could not start the rayon thread pool");
        Cpu {
            pool,
            threads: n,
            kernel: ternary::Kernel::detect(),
        }
    }

    /// The same backend restricted to the portable (non-SIMD) integer kernel,
    /// so that tests can run that path on machines with AVX2.
    pub fn portable(mut self) -> Self {
        self.kernel = ternary::Kernel::Portable;
        self
    }

    /// Number of threads in the pool.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The exact integer accumulators `acc[r, o] = Σ_c code[o, c] * x_q[r, c]`
    /// (`[rows, out]`) and the per-row activation scales `a` that
    /// [`Backend::ternary_matmul`] combines as `acc * w_scale / a`.
    pub fn ternary_acc(&self, w: &CpuTernary, x: &[f32], rows: usize) -> (Vec<i32>, Vec<f32>) {
        assert_eq!(x.len(), rows * w.cols, "ternary_acc: x length");
        self.pool
            .install(|| ternary::ternary_acc(self.kernel, w, x, rows))
    }
}

#[track_caller]
fn check_len(op: &str, what: &str, got: usize, want: usize) {
    contract::len("cpu", op, what, got, want);
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Ids = Vec<u32>;
    type Ternary = CpuTernary;
    type Half = CpuHalf;

    fn name(&self) -> String {
        format!("cpu ({} threads, {})", self.threads, self.kernel.name())
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>, BackendError> {
        Ok(vec![0.0; len])
    }
    fn upload(&self, data: &[f32]) -> Result<Vec<f32>, BackendError> {
        Ok(data.to_vec())
    }
    fn upload_ids(&self, data: &[u32]) -> Result<Vec<u32>, BackendError> {
        Ok(data.to_vec())
    }
    fn upload_ternary(&self, w: &dyn TernarySource) -> Result<CpuTernary, BackendError> {
        ternary::pack(w)
    }
    fn write(&self, buf: &mut Vec<f32>, offset: usize, data: &[f32]) {
        assert!(
            offset + data.len() <= buf.len(),
            "cpu write: {} values at offset {offset} exceed the buffer length {}",
            data.len(),
            buf.len()
        );
        buf[offset..offset + data.len()].copy_from_slice(data);
    }
    fn write_ids(&self, buf: &mut Vec<u32>, data: &[u32]) {
        check_len("write_ids", "data", data.len(), buf.len());
        buf.copy_from_slice(data);
    }
    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>, BackendError> {
        Ok(buf.clone())
    }
    fn download_ids(&self, ids: &Vec<u32>) -> Result<Vec<u32>, BackendError> {
        Ok(ids.clone())
    }
    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn ternary_bytes(&self, w: &CpuTernary) -> u64 {
        w.data.len() as u64 + 4
    }
    fn ternary_shape(&self, w: &CpuTernary) -> (usize, usize) {
        w.shape()
    }
    fn upload_half(&self, data: &[f32]) -> Result<CpuHalf, BackendError> {
        let bits = crate::f16_bits("cpu", data)?;
        Ok(CpuHalf {
            data: bits.into_iter().map(::half::f16::from_bits).collect(),
        })
    }
    fn half_len(&self, h: &CpuHalf) -> usize {
        h.data.len()
    }

    fn ternary_matmul(&self, w: &CpuTernary, x: &Vec<f32>, y: &mut Vec<f32>, rows: usize) {
        contract::ternary(
            "cpu",
            "ternary_matmul",
            (w.rows, w.cols),
            (x.len(), y.len()),
            rows,
        );
        self.pool
            .install(|| ternary::matmul(self.kernel, w, x, y, rows));
    }

    fn ternary_matmul_float(&self, w: &CpuTernary, x: &Vec<f32>, y: &mut Vec<f32>, rows: usize) {
        contract::ternary(
            "cpu",
            "ternary_matmul_float",
            (w.rows, w.cols),
            (x.len(), y.len()),
            rows,
        );
        self.pool.install(|| ternary::matmul_float(w, x, y, rows));
    }

    fn ternary_matmul_backward(
        &self,
        w: &CpuTernary,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
        rows: usize,
    ) {
        contract::ternary(
            "cpu",
            "ternary_matmul_backward",
            (w.rows, w.cols),
            (dy.len(), dx.len()),
            rows,
        );
        self.pool
            .install(|| ternary::matmul_backward(w, dy, dx, rows));
    }

    fn requantize_ternary(&self, latent: &Vec<f32>, w: &mut CpuTernary) {
        contract::requantize_ternary("cpu", latent.len(), (w.rows, w.cols));
        self.pool.install(|| ternary::requantize(latent, w));
    }

    fn fake_quant_act(&self, x: &Vec<f32>, y: &mut Vec<f32>, rows: usize, cols: usize) {
        contract::fake_quant_act("cpu", x.len(), y.len(), rows, cols);
        if rows == 0 {
            return;
        }
        self.pool.install(|| {
            y.par_chunks_mut(cols * ROW_CHUNK)
                .zip(x.par_chunks(cols * ROW_CHUNK))
                .for_each(|(y, x)| {
                    let mut a = vec![0f32; x.len() / cols];
                    tern_tensor::quant::fake_quant_act(x, cols, y, &mut a);
                })
        });
    }

    fn matmul(&self, a: &Vec<f32>, b: &Vec<f32>, c: &mut Vec<f32>, g: Gemm) {
        g.check("cpu", a.len(), b.len(), c.len());
        self.pool.install(|| gemm(a, b, c, g));
    }

    fn copy(&self, x: &Vec<f32>, y: &mut Vec<f32>) {
        contract::same_len("cpu", "copy", &["x", "y"], &[x.len(), y.len()]);
        y.copy_from_slice(x);
    }
    fn axpy(&self, alpha: f32, x: &Vec<f32>, y: &mut Vec<f32>) {
        contract::same_len("cpu", "axpy", &["x", "y"], &[x.len(), y.len()]);
        self.pool.install(|| {
            y.par_chunks_mut(ELEM_CHUNK)
                .zip(x.par_chunks(ELEM_CHUNK))
                .for_each(|(y, x)| {
                    for (y, &x) in y.iter_mut().zip(x) {
                        *y += alpha * x;
                    }
                })
        });
    }
    fn scale(&self, alpha: f32, y: &mut Vec<f32>) {
        self.pool.install(|| {
            y.par_chunks_mut(ELEM_CHUNK).for_each(|y| {
                for v in y {
                    *v *= alpha;
                }
            })
        });
    }
    fn copy_range(
        &self,
        src: &Vec<f32>,
        src_off: usize,
        dst: &mut Vec<f32>,
        dst_off: usize,
        n: usize,
    ) {
        contract::copy_range("cpu", (src.len(), src_off), (dst.len(), dst_off), n);
        dst[dst_off..dst_off + n].copy_from_slice(&src[src_off..src_off + n]);
    }

    fn sum_squares(&self, x: &Vec<f32>, out: &mut Vec<f32>, index: usize) {
        contract::sum_squares("cpu", out.len(), index);
        let s: f64 = self.pool.install(|| {
            // Fixed chunks summed in order: independent of the thread count.
            let parts: Vec<f64> = x
                .par_chunks(ELEM_CHUNK)
                .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum())
                .collect();
            parts.iter().sum()
        });
        out[index] = s as f32;
    }

    fn dropout(&self, x: &Vec<f32>, y: &mut Vec<f32>, p: f32, seed: u64) {
        contract::dropout("cpu", x.len(), y.len(), p);
        let scale = 1.0 / (1.0 - p);
        self.pool.install(|| {
            y.par_chunks_mut(ELEM_CHUNK)
                .zip(x.par_chunks(ELEM_CHUNK))
                .enumerate()
                .for_each(|(c, (y, x))| {
                    let base = c * ELEM_CHUNK;
                    for (j, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                        let keep = crate::dropout_keep(seed, (base + j) as u32, p);
                        *y = if keep { x * scale } else { 0.0 };
                    }
                })
        });
    }

    fn rmsnorm(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        y: &mut Vec<f32>,
        rstd: &mut Vec<f32>,
        rows: usize,
        dim: usize,
        eps: f32,
    ) {
        contract::rmsnorm("cpu", [x.len(), w.len(), y.len(), rstd.len()], rows, dim);
        if dim == 0 {
            return;
        }
        self.pool.install(|| {
            y.par_chunks_mut(dim)
                .zip(rstd.par_iter_mut())
                .zip(x.par_chunks(dim))
                .with_min_len(ROW_CHUNK)
                .for_each(|((y, rs), x)| {
                    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
                    let r = (1.0 / ((ss / dim as f64) + eps as f64).sqrt()) as f32;
                    *rs = r;
                    for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                        *y = x * r * w;
                    }
                })
        });
    }

    fn rmsnorm_backward(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        rstd: &Vec<f32>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
        dw: Option<&mut Vec<f32>>,
        rows: usize,
        dim: usize,
    ) {
        contract::rmsnorm_backward(
            "cpu",
            [x.len(), w.len(), rstd.len(), dy.len(), dx.len()],
            dw.as_ref().map(|d| d.len()),
            rows,
            dim,
        );
        if dim == 0 {
            return;
        }
        self.pool.install(|| {
            // dx_i = r w_i dy_i - x_i r^3 / dim * Σ_j dy_j w_j x_j
            dx.par_chunks_mut(dim)
                .zip(x.par_chunks(dim))
                .zip(dy.par_chunks(dim))
                .zip(rstd.par_iter())
                .with_min_len(ROW_CHUNK)
                .for_each(|(((dx, x), dy), &r)| {
                    let dot: f64 = x
                        .iter()
                        .zip(dy)
                        .zip(w)
                        .map(|((&x, &dy), &w)| x as f64 * dy as f64 * w as f64)
                        .sum();
                    let c = (dot * (r as f64).powi(3) / dim as f64) as f32;
                    for (((dx, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
                        *dx = r * w * dy - c * x;
                    }
                });
            if let Some(dw) = dw {
                dw.par_chunks_mut(256).enumerate().for_each(|(ci, dw)| {
                    let c0 = ci * 256;
                    for r in 0..rows {
                        let rs = rstd[r];
                        let xr = &x[r * dim + c0..r * dim + c0 + dw.len()];
                        let dyr = &dy[r * dim + c0..r * dim + c0 + dw.len()];
                        for ((d, &x), &dy) in dw.iter_mut().zip(xr).zip(dyr) {
                            *d += dy * x * rs;
                        }
                    }
                });
            }
        });
    }

    fn rope(
        &self,
        x: &mut Vec<f32>,
        pos: &Vec<u32>,
        rows: usize,
        n_heads: usize,
        head_dim: usize,
        theta: f32,
        inverse: bool,
    ) {
        contract::rope("cpu", x.len(), pos.len(), rows, n_heads, head_dim);
        if rows == 0 || n_heads == 0 || head_dim == 0 {
            return;
        }
        let half = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| (theta as f64).powf(-2.0 * i as f64 / head_dim as f64))
            .collect();
        let sign = if inverse { -1.0 } else { 1.0 };
        self.pool.install(|| {
            x.par_chunks_mut(n_heads * head_dim)
                .zip(pos.par_iter())
                .with_min_len(ROW_CHUNK)
                .for_each(|(xr, &p)| {
                    let mut cs = vec![(0f32, 0f32); half];
                    for (c, &f) in cs.iter_mut().zip(&inv_freq) {
                        let ang = p as f64 * f;
                        *c = (ang.cos() as f32, (sign * ang.sin()) as f32);
                    }
                    for h in xr.chunks_exact_mut(head_dim) {
                        let (a, b) = h.split_at_mut(half);
                        for ((x1, x2), &(c, s)) in a.iter_mut().zip(b.iter_mut()).zip(&cs) {
                            let (u, v) = (*x1, *x2);
                            *x1 = u * c - v * s;
                            *x2 = v * c + u * s;
                        }
                    }
                })
        });
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &mut Vec<f32>,
        lse: &mut Vec<f32>,
        d: AttnDims,
    ) {
        self.pool
            .install(|| attention::forward(q, k, v, out, lse, d));
    }

    fn attention_backward(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        out: &Vec<f32>,
        lse: &Vec<f32>,
        dout: &Vec<f32>,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
        d: AttnDims,
    ) {
        self.pool
            .install(|| attention::backward(q, k, v, out, lse, dout, dq, dk, dv, d));
    }

    fn gate(&self, g: &Vec<f32>, u: &Vec<f32>, y: &mut Vec<f32>, act: Activation) {
        contract::same_len(
            "cpu",
            "gate",
            &["g", "u", "y"],
            &[g.len(), u.len(), y.len()],
        );
        self.pool.install(|| {
            y.par_chunks_mut(ELEM_CHUNK)
                .zip(g.par_chunks(ELEM_CHUNK))
                .zip(u.par_chunks(ELEM_CHUNK))
                .for_each(|((y, g), u)| match act {
                    Activation::Relu2 => {
                        for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                            let r = g.max(0.0);
                            *y = r * r * u;
                        }
                    }
                    Activation::Silu => {
                        for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                            *y = g / (1.0 + (-g).exp()) * u;
                        }
                    }
                })
        });
    }

    fn gate_backward(
        &self,
        g: &Vec<f32>,
        u: &Vec<f32>,
        dy: &Vec<f32>,
        dg: &mut Vec<f32>,
        du: &mut Vec<f32>,
        act: Activation,
    ) {
        let n = g.len();
        contract::same_len(
            "cpu",
            "gate_backward",
            &["g", "u", "dy", "dg", "du"],
            &[n, u.len(), dy.len(), dg.len(), du.len()],
        );
        self.pool.install(|| {
            dg.par_chunks_mut(ELEM_CHUNK)
                .zip(du.par_chunks_mut(ELEM_CHUNK))
                .enumerate()
                .for_each(|(ci, (dg, du))| {
                    let o = ci * ELEM_CHUNK;
                    let (g, u, dy) = (
                        &g[o..o + dg.len()],
                        &u[o..o + dg.len()],
                        &dy[o..o + dg.len()],
                    );
                    for i in 0..dg.len() {
                        let (g, u, dy) = (g[i], u[i], dy[i]);
                        match act {
                            Activation::Relu2 => {
                                let r = g.max(0.0);
                                dg[i] = 2.0 * r * u * dy;
                                du[i] = r * r * dy;
                            }
                            Activation::Silu => {
                                let s = 1.0 / (1.0 + (-g).exp());
                                dg[i] = dy * u * s * (1.0 + g * (1.0 - s));
                                du[i] = dy * g * s;
                            }
                        }
                    }
                })
        });
    }

    fn embedding(&self, table: &Vec<f32>, ids: &Vec<u32>, y: &mut Vec<f32>, dim: usize) {
        let vocab = contract::embedding("cpu", "embedding", [table.len(), ids.len(), y.len()], dim);
        self.pool.install(|| {
            y.par_chunks_mut(dim)
                .zip(ids.par_iter())
                .with_min_len(ROW_CHUNK)
                .for_each(|(y, &id)| {
                    let id = id as usize;
                    assert!(id < vocab, "cpu embedding: id {id} >= vocab {vocab}");
                    y.copy_from_slice(&table[id * dim..(id + 1) * dim]);
                })
        });
    }

    fn embedding_backward(&self, ids: &Vec<u32>, dy: &Vec<f32>, dtable: &mut Vec<f32>, dim: usize) {
        let vocab = contract::embedding(
            "cpu",
            "embedding_backward",
            [dtable.len(), ids.len(), dy.len()],
            dim,
        );
        // In row order, so repeated ids accumulate deterministically.
        for (r, &id) in ids.iter().enumerate() {
            let id = id as usize;
            assert!(
                id < vocab,
                "cpu embedding_backward: id {id} >= vocab {vocab}"
            );
            for (d, &g) in dtable[id * dim..(id + 1) * dim]
                .iter_mut()
                .zip(&dy[r * dim..(r + 1) * dim])
            {
                *d += g;
            }
        }
    }

    fn embedding_half(&self, table: &CpuHalf, ids: &Vec<u32>, y: &mut Vec<f32>, dim: usize) {
        let vocab = contract::embedding(
            "cpu",
            "embedding_half",
            [table.data.len(), ids.len(), y.len()],
            dim,
        );
        self.pool
            .install(|| half::gather(&table.data, ids, y, dim, vocab));
    }

    fn matmul_half(&self, a: &Vec<f32>, b: &CpuHalf, c: &mut Vec<f32>, g: Gemm) {
        g.check_op("cpu", "matmul_half", a.len(), b.data.len(), c.len());
        self.pool.install(|| half::matmul(a, &b.data, c, g));
    }

    fn cross_entropy(
        &self,
        logits: &Vec<f32>,
        targets: &Vec<u32>,
        loss: &mut Vec<f32>,
        dlogits: Option<&mut Vec<f32>>,
        rows: usize,
        vocab: usize,
        grad_scale: f32,
    ) {
        contract::cross_entropy(
            "cpu",
            [logits.len(), targets.len(), loss.len()],
            dlogits.as_ref().map(|d| d.len()),
            rows,
            vocab,
        );
        if rows == 0 {
            return;
        }
        let row_lse = |x: &[f32]| -> (f32, f64) {
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let s: f64 = x.iter().map(|&v| ((v - m) as f64).exp()).sum();
            (m, s)
        };
        self.pool.install(|| match dlogits {
            Some(dl) => dl
                .par_chunks_mut(vocab)
                .zip(loss.par_iter_mut())
                .zip(logits.par_chunks(vocab))
                .zip(targets.par_iter())
                .for_each(|(((dl, l), x), &t)| {
                    if t == u32::MAX {
                        *l = 0.0;
                        dl.fill(0.0);
                        return;
                    }
                    let t = t as usize;
                    assert!(t < vocab, "cpu cross_entropy: target {t} >= vocab {vocab}");
                    let (m, s) = row_lse(x);
                    *l = ((m as f64 + s.ln()) - x[t] as f64) as f32;
                    let inv = 1.0 / s;
                    for (d, &v) in dl.iter_mut().zip(x) {
                        *d = grad_scale * (((v - m) as f64).exp() * inv) as f32;
                    }
                    dl[t] -= grad_scale;
                }),
            None => loss
                .par_iter_mut()
                .zip(logits.par_chunks(vocab))
                .zip(targets.par_iter())
                .for_each(|((l, x), &t)| {
                    if t == u32::MAX {
                        *l = 0.0;
                        return;
                    }
                    let t = t as usize;
                    assert!(t < vocab, "cpu cross_entropy: target {t} >= vocab {vocab}");
                    let (m, s) = row_lse(x);
                    *l = ((m as f64 + s.ln()) - x[t] as f64) as f32;
                }),
        });
    }

    fn argmax(
        &self,
        x: &Vec<f32>,
        rows: usize,
        cols: usize,
        out: &mut Vec<u32>,
        hist: Option<(&mut Vec<u32>, usize)>,
    ) {
        let h = hist.as_ref().map(|(h, at)| (h.len(), *at));
        contract::argmax("cpu", x.len(), rows, cols, out.len(), h);
        for (r, o) in out.iter_mut().enumerate() {
            *o = crate::argmax_row(&x[r * cols..(r + 1) * cols]);
        }
        if let Some((h, at)) = hist {
            h[at..at + rows].copy_from_slice(out);
        }
    }

    fn adamw(&self, p: &mut Vec<f32>, g: &Vec<f32>, m: &mut Vec<f32>, v: &mut Vec<f32>, h: AdamW) {
        let n = p.len();
        h.check("cpu", n, g.len(), m.len(), v.len());
        // PyTorch's single-tensor AdamW, operation for operation in f32.
        // The bias corrections are Python floats (f64) there, as here.
        let t = h.step as i32;
        let bc1 = 1.0 - (h.beta1 as f64).powi(t);
        let bc2 = 1.0 - (h.beta2 as f64).powi(t);
        let step_size = (h.lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let decay = (1.0 - h.lr as f64 * h.weight_decay as f64) as f32;
        self.pool.install(|| {
            p.par_chunks_mut(ELEM_CHUNK)
                .zip(m.par_chunks_mut(ELEM_CHUNK))
                .zip(v.par_chunks_mut(ELEM_CHUNK))
                .zip(g.par_chunks(ELEM_CHUNK))
                .for_each(|(((p, m), v), g)| {
                    for i in 0..p.len() {
                        let gi = g[i];
                        p[i] *= decay;
                        m[i] += (gi - m[i]) * (1.0 - h.beta1);
                        v[i] = v[i] * h.beta2 + (1.0 - h.beta2) * gi * gi;
                        let denom = v[i].sqrt() / bc2_sqrt + h.eps;
                        p[i] -= step_size * (m[i] / denom);
                    }
                })
        });
    }
}

/// `C = alpha op(A) op(B) + beta C` with matrixmultiply, split over the
/// larger of C's dimensions in fixed-size chunks. With `beta == 0`, C is not
/// read.
fn gemm(a: &[f32], b: &[f32], c: &mut [f32], g: Gemm) {
    let Gemm {
        m,
        k,
        n,
        trans_a,
        trans_b,
        alpha,
        beta,
    } = g;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for v in c.iter_mut() {
            *v = if beta == 0.0 { 0.0 } else { beta * *v };
        }
        return;
    }
    if m <= SMALL_M && !trans_a && trans_b {
        gemv_rows(a, b, c, g);
        return;
    }
    // element (i, p) of op(A) is at i * rsa + p * csa
    let (rsa, csa) = if trans_a {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (rsb, csb) = if trans_b {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    let mut cv = ndarray::ArrayViewMut2::from_shape((m, n), c).expect("c shape");
    const CHUNK: usize = 64;
    let split_rows = m >= n;
    let axis = if split_rows {
        ndarray::Axis(0)
    } else {
        ndarray::Axis(1)
    };
    let chunks: Vec<_> = cv.axis_chunks_iter_mut(axis, CHUNK).collect();
    chunks.into_par_iter().enumerate().for_each(|(ci, mut cc)| {
        let (mm, nn) = cc.dim();
        let (rsc, csc) = (cc.strides()[0], cc.strides()[1]);
        let (ap, bp) = if split_rows {
            (
                a.as_ptr()
                    .wrapping_offset(ci as isize * CHUNK as isize * rsa),
                b.as_ptr(),
            )
        } else {
            (
                a.as_ptr(),
                b.as_ptr()
                    .wrapping_offset(ci as isize * CHUNK as isize * csb),
            )
        };
        // SAFETY: the chunk covers rows (or columns) `ci * CHUNK ..` of op(A)
        // (or op(B)); with the strides above every element read lies in `a`
        // and `b` (lengths checked by the caller), and C is this task's own
        // disjoint view.
        unsafe {
            matrixmultiply::sgemm(
                mm,
                k,
                nn,
                alpha,
                ap,
                rsa,
                csa,
                bp,
                rsb,
                csb,
                beta,
                cc.as_mut_ptr(),
                rsc,
                csc,
            );
        }
    });
}

/// Up to this many rows of `A`, `A · Bᵀ` runs as dot products over the rows of
/// `B` (decode's LM head: one token against a `[vocab, hidden]` matrix), which
/// streams `B` once instead of packing it for a blocked GEMM.
const SMALL_M: usize = 4;

/// `C = alpha * A · Bᵀ + beta * C` for `A [m, k]`, `B [n, k]`, small `m`.
fn gemv_rows(a: &[f32], b: &[f32], c: &mut [f32], g: Gemm) {
    let (m, k, n) = (g.m, g.k, g.n);
    const COLS: usize = 256;
    // Work on column blocks of C for all m rows at once, so each row of B is
    // read once per call.
    let mut blocks: Vec<(usize, Vec<f32>)> = (0..n)
        .step_by(COLS)
        .map(|j0| (j0, vec![0f32; m * COLS.min(n - j0)]))
        .collect();
    blocks.par_iter_mut().for_each(|(j0, out)| {
        let w = out.len() / m;
        for jj in 0..w {
            let brow = &b[(*j0 + jj) * k..(*j0 + jj + 1) * k];
            for i in 0..m {
                out[i * w + jj] = dot(&a[i * k..(i + 1) * k], brow);
            }
        }
    });
    for (j0, out) in blocks {
        let w = out.len() / m;
        for i in 0..m {
            for jj in 0..w {
                let cv = &mut c[i * n + j0 + jj];
                let v = g.alpha * out[i * w + jj];
                *cv = if g.beta == 0.0 { v } else { v + g.beta * *cv };
            }
        }
    }
}

/// f32 dot product with eight independent accumulators (vectorizes).
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let xc = x.chunks_exact(8);
    let yc = y.chunks_exact(8);
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (xs, ys) in xc.zip(yc) {
        for l in 0..8 {
            acc[l] += xs[l] * ys[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (a, b) in xr.iter().zip(yr) {
        s += a * b;
    }
    s
}
