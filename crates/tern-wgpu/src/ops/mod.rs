//! The ops, by kernel family. Each function records dispatches through
//! [`crate::ctx::Ctx`] with the `#[repr(C)]` parameter struct of its kernel.
//!
//! Every tensor that can exceed one storage binding is processed in windows
//! (`Ctx::view`): element-wise ops over flat ranges, row ops over blocks of
//! whole rows (and segment by segment when a single row exceeds a binding),
//! the products over blocks of rows and ranges of the reduction. Reductions
//! run in a fixed order (trees in workgroup memory, then levels of partial
//! sums), so every op is deterministic; none uses float atomics.

pub(crate) mod attention;
pub(crate) mod basic;
pub(crate) mod elementwise;
pub(crate) mod embedding;
pub(crate) mod fused;
pub(crate) mod gemm;
pub(crate) mod half;
pub(crate) mod loss;
pub(crate) mod multi;
pub(crate) mod norm;
pub(crate) mod reduce;
pub(crate) mod rope;
pub(crate) mod ternary;

use crate::Wgpu;

/// A cached scratch buffer of `elems` 4-byte elements (out of device
/// memory: reported by the next download, see `Ctx::scratch_or_defer`).
fn scratch(b: &Wgpu, key: &str, elems: usize) -> wgpu::Buffer {
    b.ctx.scratch_or_defer(key, (elems.max(1) * 4) as u64)
}

/// Ranges `(start, len)` covering `0..n` in steps of `step`.
fn ranges(n: usize, step: usize) -> impl Iterator<Item = (usize, usize)> {
    let step = step.max(1);
    (0..n).step_by(step).map(move |s| (s, step.min(n - s)))
}

/// Whole rows of `cols` columns (row stride `ld`) that fit one window.
fn rows_per_window(w: usize, ld: usize, cols: usize) -> usize {
    debug_assert!(cols <= w && cols <= ld);
    (w - cols) / ld + 1
}

/// Segments of a row of `dim` elements longer than a window: their number
/// and length.
fn segments(dim: usize, w: usize) -> (usize, usize) {
    let nseg = dim.div_ceil(w);
    (nseg, dim.div_ceil(nseg))
}
