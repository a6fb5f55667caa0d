//! Half-precision matrices on the CPU: f16 values in host memory, widened to
//! f32 a row (or a block of columns) at a time and multiplied with the same
//! kernels, in the same order, as the f32 ops, so every result is
//! bit-identical to the f32 op on the rounded values.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::{dot, ROW_CHUNK, SMALL_M};
use crate::Gemm;

/// An f16 matrix in host memory.
pub struct CpuHalf {
    pub(super) data: Vec<f16>,
}

impl CpuHalf {
    /// The stored values.
    pub fn values(&self) -> &[f16] {
        &self.data
    }
}

/// Columns of op(B) widened per task of the blocked product.
const COLS: usize = 64;

/// `y[r] = table[ids[r]]`, widened.
pub(super) fn gather(table: &[f16], ids: &[u32], y: &mut [f32], dim: usize, vocab: usize) {
    y.par_chunks_mut(dim)
        .zip(ids.par_iter())
        .with_min_len(ROW_CHUNK)
        .for_each(|(y, &id)| {
            let id = id as usize;
            assert!(id < vocab, "cpu embedding_half: id {id} >= vocab {vocab}");
            table[id * dim..(id + 1) * dim].convert_to_f32_slice(y);
        });
}

/// `C = alpha op(A) op(B) + beta C` with an f16 B (shapes checked by the
/// caller).
pub(super) fn matmul(a: &[f32], b: &[f16], c: &mut [f32], g: Gemm) {
    let Gemm {
        m,
        k,
        n,
        trans_a,
        trans_b,
        ..
    } = g;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // no B is read: the f32 product's own zero/beta handling
        super::gemm(a, &[], c, g);
        return;
    }
    if m <= SMALL_M && !trans_a && trans_b {
        gemv_rows(a, b, c, g);
        return;
    }
    // Blocks of COLS columns of op(B), widened into a `[k, cols]` scratch
    // (or `[cols, k]` rows of a transposed B), then matrixmultiply on that
    // block of C. matrixmultiply's result for an element depends only on k
    // (its k blocking and the order within a block), not on where the
    // columns of C were cut, so this equals the f32 product.
    let (rsa, csa) = if trans_a {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let blocks: Vec<(usize, usize)> = (0..n)
        .step_by(COLS)
        .map(|j0| (j0, COLS.min(n - j0)))
        .collect();
    let cp = SendPtr(c.as_mut_ptr());
    blocks.into_par_iter().for_each(|(j0, nn)| {
        let mut wide = vec![0f32; k * nn];
        let (rsb, csb) = if trans_b {
            b[j0 * k..(j0 + nn) * k].convert_to_f32_slice(&mut wide);
            (1, k as isize)
        } else {
            for (p, row) in wide.chunks_exact_mut(nn).enumerate() {
                b[p * n + j0..p * n + j0 + nn].convert_to_f32_slice(row);
            }
            (nn as isize, 1)
        };
        let cp = &cp;
        // SAFETY: `a` holds op(A) `[m, k]` with the strides above (length
        // checked by the caller), `wide` holds the block of op(B) `[k, nn]`,
        // and the block of C (columns j0..j0 + nn of every row, row stride
        // n) is written by this task only: the column ranges are disjoint.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                nn,
                g.alpha,
                a.as_ptr(),
                rsa,
                csa,
                wide.as_ptr(),
                rsb,
                csb,
                g.beta,
                cp.0.add(j0),
                n as isize,
                1,
            );
        }
    });
}

/// A pointer to C shared by the tasks that write disjoint columns of it.
struct SendPtr(*mut f32);
// SAFETY: the tasks holding it write disjoint elements (see `matmul`).
unsafe impl Sync for SendPtr {}

/// `C = alpha A · Bᵀ + beta C` for small `m`: the f32 path's dot products
/// over the rows of B (`super::gemv_rows`), each row widened first.
fn gemv_rows(a: &[f32], b: &[f16], c: &mut [f32], g: Gemm) {
    let (m, k, n) = (g.m, g.k, g.n);
    const BLOCK: usize = 256;
    let mut blocks: Vec<(usize, Vec<f32>)> = (0..n)
        .step_by(BLOCK)
        .map(|j0| (j0, vec![0f32; m * BLOCK.min(n - j0)]))
        .collect();
    blocks.par_iter_mut().for_each(|(j0, out)| {
        let w = out.len() / m;
        let mut row = vec![0f32; k];
        for jj in 0..w {
            b[(*j0 + jj) * k..(*j0 + jj + 1) * k].convert_to_f32_slice(&mut row);
            for i in 0..m {
                out[i * w + jj] = dot(&a[i * k..(i + 1) * k], &row);
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

#[cfg(test)]
mod tests {
    use crate::conformance::Rng;
    use crate::{Backend, Cpu, Gemm};

    /// BIT-IDENTICAL: the f16 product equals the f32 product on the f16
    /// values (widened first) for the head's layouts and for shapes where
    /// the f32 path splits rows (m >= n) or columns, on several threads.
    #[test]
    fn the_half_product_is_the_f32_product_of_the_rounded_values() {
        let b = Cpu::with_threads(3);
        let mut rng = Rng::new(1);
        for (m, k, n) in [
            (1, 96, 700),
            (3, 130, 257),
            (5, 64, 300),
            (200, 70, 65),
            (64, 513, 129),
        ] {
            for (trans_a, trans_b) in [(false, true), (false, false), (true, false), (true, true)] {
                let g = Gemm {
                    trans_a,
                    trans_b,
                    ..Gemm::new(m, k, n).alpha(0.75).beta(0.5)
                };
                let a = rng.vec(m * k, -1.0, 1.0);
                let bm = rng.vec(k * n, -1.0, 1.0);
                let c0 = rng.vec(m * n, -1.0, 1.0);
                let bh = b.upload_half(&bm).unwrap();
                let rounded: Vec<f32> = bh.values().iter().map(|h| h.to_f32()).collect();
                let (mut c1, mut c2) = (c0.clone(), c0);
                b.matmul_half(&a, &bh, &mut c1, g);
                b.matmul(&a, &rounded, &mut c2, g);
                let same = c1.iter().zip(&c2).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{g:?}: the f16 and f32 products differ");
            }
        }
    }
}
