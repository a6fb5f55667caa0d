//! Sums in a fixed order (`shaders/dense_reduce.wgsl`): `sum_squares` as
//! levels of workgroup trees, and the partial sums of one row segment that
//! the row ops use when a row exceeds one binding.

use bytemuck::{Pod, Zeroable};
use tern_backend::contract;

use super::scratch;
use crate::shader::preprocess;
use crate::{WBuf, WIds, Wgpu};

pub(crate) const REDUCE_SRC: &str = include_str!("../shaders/dense_reduce.wgsl");

/// `struct P` of `shaders/dense_reduce.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct ReduceParams {
    pub n: u32,
    pub sx: u32,
    pub sd: u32,
    pub per: u32,
    pub groups: u32,
    pub sy: u32,
    pub sz: u32,
}

/// Elements per workgroup of a reduction level.
const RED_PER: usize = 16384;
/// Up to this many elements, one workgroup sums everything (one dispatch).
const RED_ONE: usize = 65536;

pub(crate) fn sum_squares(b: &Wgpu, x: &WBuf, out: &mut WBuf, index: usize) {
    contract::sum_squares("wgpu", out.len, index);
    let w = b.ctx.window_elems();
    let mut src = x.buf.clone();
    let mut len = x.len;
    let mut level = 0;
    loop {
        // One workgroup per `per` elements; windows hold whole groups.
        let (win, per) = if len <= RED_ONE.min(w) {
            (len.max(1), len.max(1))
        } else if w >= RED_PER {
            (w / RED_PER * RED_PER, RED_PER)
        } else {
            (w, w)
        };
        let parts = (len / win) * (win / per) + (len % win).div_ceil(per);
        let parts = parts.max(1);
        let last = parts == 1;
        let dst = if last {
            out.buf.clone()
        } else {
            scratch(
                b,
                if level % 2 == 0 {
                    "dense/sum_a"
                } else {
                    "dense/sum_b"
                },
                parts,
            )
        };
        let pipe = if level == 0 {
            b.ctx.pipeline("dense/reduce_sq", || {
                preprocess(REDUCE_SRC, &["SQUARE"], &[])
            })
        } else {
            b.ctx
                .pipeline("dense/reduce", || preprocess(REDUCE_SRC, &["PLAIN"], &[]))
        };
        let mut start = 0;
        let mut pofs = if last { index } else { 0 };
        loop {
            let nw = win.min(len - start);
            let ng = nw.div_ceil(per).max(1);
            let (vx, sx) = b.ctx.view(&src, start, nw);
            let (vd, sd) = b.ctx.view(&dst, pofs, ng);
            let params = ReduceParams {
                n: nw as u32,
                sx,
                sd,
                per: per as u32,
                groups: ng as u32,
                sy: 0,
                sz: 0,
            };
            b.ctx
                .dispatch(&pipe, &params, &[vx, vd], b.ctx.grid(ng as u32));
            pofs += ng;
            start += nw;
            if start >= len {
                break;
            }
        }
        if last {
            return;
        }
        src = dst;
        len = parts;
        level += 1;
    }
}

/// Partial sums (dense_reduce.wgsl, one workgroup) of one segment into
/// `part[slot]`.
pub(super) fn reduce_segment(
    b: &Wgpu,
    def: &str,
    srcs: &[(&wgpu::Buffer, usize)],
    len: usize,
    part: &wgpu::Buffer,
    slot: usize,
) {
    let key = format!("dense/reduce_{def}");
    let pipe = b.ctx.pipeline(&key, || preprocess(REDUCE_SRC, &[def], &[]));
    let mut views = Vec::new();
    let mut shifts = Vec::new();
    for &(buf, start) in srcs {
        let (v, s) = b.ctx.view(buf, start, len);
        views.push(v);
        shifts.push(s);
    }
    let (vd, sd) = b.ctx.view(part, slot, 1);
    views.push(vd);
    shifts.resize(3, 0);
    let params = ReduceParams {
        n: len as u32,
        sx: shifts[0],
        sd,
        per: len.max(1) as u32,
        groups: 1,
        sy: shifts[1],
        sz: shifts[2],
    };
    b.ctx.dispatch(&pipe, &params, &views, [1, 1, 1]);
}

pub(crate) const ARGMAX_SRC: &str = include_str!("../shaders/argmax.wgsl");

/// `shaders/argmax.wgsl` with its eight loads in flight written out as
/// named registers (`x0`..`x7`, then the candidates in column order).
pub(crate) fn argmax_source() -> String {
    let mut eight = String::new();
    for j in 0..8 {
        eight += &format!("        let x{j} = x[base + c + {}u];\n", 256 * j);
    }
    eight += "        let c0 = p.c0 + c;\n";
    for j in 0..8 {
        let o = 256 * j;
        eight += &format!(
            "        if (better(x{j}, c0 + {o}u, v, i)) {{\n            v = x{j};\n            i = c0 + {o}u;\n        }}\n"
        );
    }
    preprocess(ARGMAX_SRC, &[], &[("EIGHT", eight)])
}

/// `struct P` of `shaders/argmax.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct ArgmaxParams {
    pub rows: u32,
    pub cols: u32,
    pub ld: u32,
    pub c0: u32,
    pub first: u32,
    pub last: u32,
    pub sx: u32,
    pub so: u32,
    pub sh: u32,
    pub hist: u32,
}

/// One workgroup per row: rows in windows, or a row longer than one window
/// segment by segment.
pub(crate) fn argmax(
    b: &Wgpu,
    x: &WBuf,
    rows: usize,
    cols: usize,
    out: &mut WIds,
    hist: Option<(&mut WIds, usize)>,
) {
    let h = hist.as_ref().map(|(h, at)| (h.len, *at));
    contract::argmax("wgpu", x.len, rows, cols, out.len, h);
    let w = b.ctx.window_elems();
    let pipe = b.ctx.pipeline("dense/argmax", argmax_source);
    let cand = scratch(b, "dense/argmax_cand", 2 * rows.min(w / 2).max(1));
    let has_hist = hist.is_some();
    // (first row, rows, first column, columns) of each dispatch
    let mut blocks = Vec::new();
    if cols <= w {
        let per = (w / cols).max(1);
        for (r0, rn) in super::ranges(rows, per) {
            blocks.push((r0, rn, 0, cols));
        }
    } else {
        for r in 0..rows {
            for (c0, cn) in super::ranges(cols, w) {
                blocks.push((r, 1, c0, cn));
            }
        }
    }
    for (r0, rn, c0, cn) in blocks {
        let (vx, sx) = b.ctx.view(&x.buf, r0 * cols + c0, (rn - 1) * cols + cn);
        let (vo, so) = b.ctx.view(&out.buf, r0, rn);
        // without a history the output is bound twice (never written there)
        let (vh, sh) = match hist.as_ref() {
            Some((h, at)) => b.ctx.view(&h.buf, *at + r0, rn),
            None => b.ctx.view(&out.buf, r0, rn),
        };
        let (vc, _) = b.ctx.view(&cand, 0, 2 * rn);
        let prm = ArgmaxParams {
            rows: rn as u32,
            cols: cn as u32,
            ld: cols as u32,
            c0: c0 as u32,
            first: (c0 == 0) as u32,
            last: (c0 + cn == cols) as u32,
            sx,
            so,
            sh,
            hist: has_hist as u32,
        };
        b.ctx
            .dispatch(&pipe, &prm, &[vx, vo, vh, vc], b.ctx.grid(rn as u32));
    }
}
