//! RMSNorm and its backward (`shaders/dense_norm.wgsl`): one workgroup per
//! row, or, when a row exceeds one binding, segment by segment (partial sums
//! from [`super::reduce::reduce_segment`], then a finishing and an applying
//! kernel); `dw` as deterministic column sums over blocks of rows
//! (`shaders/dense_colsum.wgsl`).

use bytemuck::{Pod, Zeroable};
use tern_backend::contract;

use super::reduce::reduce_segment;
use super::{ranges, scratch, segments};
use crate::ctx::WG;
use crate::shader::{preprocess, with_sg};
use crate::{WBuf, Wgpu};

pub(crate) const NORM_SRC: &str = include_str!("../shaders/dense_norm.wgsl");
pub(crate) const COLSUM_SRC: &str = include_str!("../shaders/dense_colsum.wgsl");

/// `struct P` of `shaders/dense_norm.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct NormParams {
    pub rows: u32,
    pub dim: u32,
    pub sx: u32,
    pub sw: u32,
    pub sy: u32,
    pub sr: u32,
    pub sdy: u32,
    pub sdx: u32,
    pub sp: u32,
    pub nseg: u32,
    pub n: u32,
    pub eps: f32,
}

/// `struct P` of `shaders/dense_colsum.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct ColsumParams {
    pub rows: u32,
    pub cols: u32,
    pub ld: u32,
    pub rb: u32,
    pub sx: u32,
    pub sy: u32,
    pub sr: u32,
    pub sd: u32,
    pub ldd: u32,
    pub acc: u32,
    pub groups: u32,
}

/// Rows per block of the first pass of RMSNorm's dw (column sums).
const DW_ROWS: usize = 32;

#[allow(clippy::too_many_arguments)]
pub(crate) fn rmsnorm(
    b: &Wgpu,
    x: &WBuf,
    w: &WBuf,
    y: &mut WBuf,
    rstd: &mut WBuf,
    rows: usize,
    dim: usize,
    eps: f32,
) {
    contract::rmsnorm("wgpu", [x.len, w.len, y.len, rstd.len], rows, dim);
    if dim == 0 || rows == 0 {
        return;
    }
    let wn = b.ctx.window_elems();
    if dim <= wn {
        let defs = with_sg(&["RMS"], b.ctx.sg);
        let pipe = b
            .ctx
            .pipeline("dense/rms", || preprocess(NORM_SRC, &defs, &[]));
        let (vw, sw) = b.ctx.view(&w.buf, 0, dim);
        for (r0, rn) in ranges(rows, (wn / dim).min(wn)) {
            let (vx, sx) = b.ctx.view(&x.buf, r0 * dim, rn * dim);
            let (vy, sy) = b.ctx.view(&y.buf, r0 * dim, rn * dim);
            let (vr, sr) = b.ctx.view(&rstd.buf, r0, rn);
            let words = NormParams {
                rows: rn as u32,
                dim: dim as u32,
                sx,
                sw,
                sy,
                sr,
                eps,
                ..Default::default()
            };
            b.ctx
                .dispatch(&pipe, &words, &[vx, vw, vy, vr], b.ctx.grid(rn as u32));
        }
        return;
    }
    // A row exceeds one binding: segment by segment.
    let (nseg, seg) = segments(dim, wn);
    let part = scratch(b, "dense/rms_part", rows * nseg);
    let fin = b
        .ctx
        .pipeline("dense/rms_fin", || preprocess(NORM_SRC, &["RMS_FIN"], &[]));
    let apply = b.ctx.pipeline("dense/rms_apply", || {
        preprocess(NORM_SRC, &["RMS_APPLY"], &[])
    });
    for r in 0..rows {
        for (s, (c0, cn)) in ranges(dim, seg).enumerate() {
            reduce_segment(
                b,
                "SQUARE",
                &[(&x.buf, r * dim + c0)],
                cn,
                &part,
                r * nseg + s,
            );
        }
        let (vp, sp) = b.ctx.view(&part, r * nseg, nseg);
        let (vr, sr) = b.ctx.view(&rstd.buf, r, 1);
        let words = NormParams {
            rows: 1,
            dim: dim as u32,
            sr,
            sp,
            nseg: nseg as u32,
            eps,
            ..Default::default()
        };
        b.ctx.dispatch(&fin, &words, &[vp, vr], [1, 1, 1]);
        for (c0, cn) in ranges(dim, seg) {
            let (vx, sx) = b.ctx.view(&x.buf, r * dim + c0, cn);
            let (vw, sw) = b.ctx.view(&w.buf, c0, cn);
            let (vr, sr) = b.ctx.view(&rstd.buf, r, 1);
            let (vy, sy) = b.ctx.view(&y.buf, r * dim + c0, cn);
            let words = NormParams {
                rows: 1,
                dim: dim as u32,
                sx,
                sw,
                sy,
                sr,
                n: cn as u32,
                eps,
                ..Default::default()
            };
            let groups = b.ctx.grid((cn as u32).div_ceil(WG));
            b.ctx.dispatch(&apply, &words, &[vx, vw, vr, vy], groups);
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rmsnorm_backward(
    b: &Wgpu,
    x: &WBuf,
    w: &WBuf,
    rstd: &WBuf,
    dy: &WBuf,
    dx: &mut WBuf,
    dw: Option<&mut WBuf>,
    rows: usize,
    dim: usize,
) {
    contract::rmsnorm_backward(
        "wgpu",
        [x.len, w.len, rstd.len, dy.len, dx.len],
        dw.as_ref().map(|d| d.len),
        rows,
        dim,
    );
    if dim == 0 || rows == 0 {
        return;
    }
    let wn = b.ctx.window_elems();
    if dim <= wn {
        let defs = with_sg(&["RMSB"], b.ctx.sg);
        let pipe = b
            .ctx
            .pipeline("dense/rmsb", || preprocess(NORM_SRC, &defs, &[]));
        let (vw, sw) = b.ctx.view(&w.buf, 0, dim);
        for (r0, rn) in ranges(rows, (wn / dim).min(wn)) {
            let (vx, sx) = b.ctx.view(&x.buf, r0 * dim, rn * dim);
            let (vr, sr) = b.ctx.view(&rstd.buf, r0, rn);
            let (vdy, sdy) = b.ctx.view(&dy.buf, r0 * dim, rn * dim);
            let (vdx, sdx) = b.ctx.view(&dx.buf, r0 * dim, rn * dim);
            let words = NormParams {
                rows: rn as u32,
                dim: dim as u32,
                sx,
                sw,
                sr,
                sdy,
                sdx,
                ..Default::default()
            };
            b.ctx.dispatch(
                &pipe,
                &words,
                &[vx, vw, vr, vdy, vdx],
                b.ctx.grid(rn as u32),
            );
        }
    } else {
        let (nseg, seg) = segments(dim, wn);
        let part = scratch(b, "dense/rms_part", rows * nseg);
        let fin = b.ctx.pipeline("dense/rmsb_fin", || {
            preprocess(NORM_SRC, &["RMSB_FIN"], &[])
        });
        let apply = b.ctx.pipeline("dense/rmsb_apply", || {
            preprocess(NORM_SRC, &["RMSB_APPLY"], &[])
        });
        for r in 0..rows {
            for (s, (c0, cn)) in ranges(dim, seg).enumerate() {
                let o = r * dim + c0;
                reduce_segment(
                    b,
                    "DOT3",
                    &[(&x.buf, o), (&dy.buf, o), (&w.buf, c0)],
                    cn,
                    &part,
                    r * nseg + s,
                );
            }
            let (vr, sr) = b.ctx.view(&rstd.buf, r, 1);
            let (vp, sp) = b.ctx.view(&part, r * nseg, nseg);
            let words = NormParams {
                rows: 1,
                dim: dim as u32,
                sr,
                sp,
                nseg: nseg as u32,
                ..Default::default()
            };
            b.ctx.dispatch(&fin, &words, &[vr, vp], [1, 1, 1]);
            for (c0, cn) in ranges(dim, seg) {
                let o = r * dim + c0;
                let (vx, sx) = b.ctx.view(&x.buf, o, cn);
                let (vw, sw) = b.ctx.view(&w.buf, c0, cn);
                let (vr, sr) = b.ctx.view(&rstd.buf, r, 1);
                let (vdy, sdy) = b.ctx.view(&dy.buf, o, cn);
                let (vp, sp) = b.ctx.view(&part, r * nseg, 1);
                let (vdx, sdx) = b.ctx.view(&dx.buf, o, cn);
                let words = NormParams {
                    rows: 1,
                    dim: dim as u32,
                    sx,
                    sw,
                    sr,
                    sdy,
                    sdx,
                    sp,
                    n: cn as u32,
                    ..Default::default()
                };
                let groups = b.ctx.grid((cn as u32).div_ceil(WG));
                b.ctx
                    .dispatch(&apply, &words, &[vx, vw, vr, vdy, vp, vdx], groups);
            }
        }
    }
    if let Some(dw) = dw {
        rms_dw(b, x, rstd, dy, dw, rows, dim);
    }
}

/// `dw[c] += sum_r dy[r, c] x[r, c] rstd[r]`: column sums over blocks of
/// rows (in row order within a block, blocks in order), no atomics.
fn rms_dw(b: &Wgpu, x: &WBuf, rstd: &WBuf, dy: &WBuf, dw: &mut WBuf, rows: usize, dim: usize) {
    let wn = b.ctx.window_elems();
    let prod = b.ctx.pipeline("dense/colsum_prod", || {
        preprocess(COLSUM_SRC, &["PROD"], &[])
    });
    // One pass of PROD over `rn` rows from r0 (block `rb`), columns c0..c0+cn,
    // into d (row stride ldd per block).
    let pass = |r0: usize,
                rn: usize,
                rb: usize,
                c0: usize,
                cn: usize,
                d: &wgpu::Buffer,
                d0: usize,
                ldd: usize,
                acc: bool| {
        let nblk = rn.div_ceil(rb);
        let span = (rn - 1) * dim + cn;
        let (vx, sx) = b.ctx.view(&x.buf, r0 * dim + c0, span);
        let (vy, sy) = b.ctx.view(&dy.buf, r0 * dim + c0, span);
        let (vr, sr) = b.ctx.view(&rstd.buf, r0, rn);
        let (vd, sd) = b.ctx.view(d, d0, (nblk - 1) * ldd + cn);
        let groups = (nblk * cn.div_ceil(256)) as u32;
        let words = ColsumParams {
            rows: rn as u32,
            cols: cn as u32,
            ld: dim as u32,
            rb: rb as u32,
            sx,
            sy,
            sr,
            sd,
            ldd: ldd as u32,
            acc: acc as u32,
            groups,
        };
        b.ctx
            .dispatch(&prod, &words, &[vx, vy, vr, vd], b.ctx.grid(groups));
    };
    if dim <= wn {
        let wrows = wn / dim; // rows of x per window
        if rows <= DW_ROWS.min(wrows) {
            pass(0, rows, rows, 0, dim, &dw.buf, 0, 0, true);
            return;
        }
        // Two passes: partial sums per block of rows, then their sum.
        let rb = DW_ROWS.max(rows.div_ceil(wrows));
        let nblk = rows.div_ceil(rb);
        if rb <= wrows && nblk * dim <= wn {
            let part = scratch(b, "dense/rms_dw_part", nblk * dim);
            let step = wrows / rb * rb;
            for (r0, rn) in ranges(rows, step) {
                pass(r0, rn, rb, 0, dim, &part, (r0 / rb) * dim, dim, false);
            }
            let plain = b.ctx.pipeline("dense/colsum_plain", || {
                preprocess(COLSUM_SRC, &["PLAIN"], &[])
            });
            let (vp, sp) = b.ctx.view(&part, 0, nblk * dim);
            let (vd, sd) = b.ctx.view(&dw.buf, 0, dim);
            let groups = dim.div_ceil(256) as u32;
            let words = ColsumParams {
                rows: nblk as u32,
                cols: dim as u32,
                ld: dim as u32,
                rb: nblk as u32,
                sx: sp,
                sy: 0,
                sr: 0,
                sd,
                ldd: 0,
                acc: 1,
                groups,
            };
            b.ctx
                .dispatch(&plain, &words, &[vp, vd], b.ctx.grid(groups));
            return;
        }
    }
    // Rows one at a time onto dw (the CPU's order), by column segments.
    let cb = dim.min(wn);
    for r in 0..rows {
        for (c0, cn) in ranges(dim, cb) {
            pass(r, 1, 1, c0, cn, &dw.buf, c0, 0, true);
        }
    }
}
