//! Embedding gather and its scatter-add (`shaders/dense_embed.wgsl`): the
//! table windowed by rows; the backward links the rows with the same id
//! first, then adds each id's chain in row order (bit-identical to the CPU).

use bytemuck::{Pod, Zeroable};
use tern_backend::contract;

use super::{ranges, rows_per_window, scratch};
use crate::ctx::{Kernel, View, WG};
use crate::shader::preprocess;
use crate::{WBuf, WIds, Wgpu};

pub(crate) const EMBED_SRC: &str = include_str!("../shaders/dense_embed.wgsl");

/// `struct P` of `shaders/dense_embed.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct EmbedParams {
    pub rows: u32,
    pub cols: u32,
    pub ld: u32,
    pub sy: u32,
    pub st: u32,
    pub si: u32,
    pub v0: u32,
    pub vw: u32,
    pub sl: u32,
    pub groups: u32,
}

pub(crate) fn embedding(b: &Wgpu, table: &WBuf, ids: &WIds, y: &mut WBuf, dim: usize) {
    let vocab = contract::embedding("wgpu", "embedding", [table.len, ids.len, y.len], dim);
    let rows = ids.len;
    if rows == 0 || vocab == 0 {
        return;
    }
    let pipe = b.ctx.pipeline("dense/embed_gather", || {
        preprocess(EMBED_SRC, &["GATHER"], &[])
    });
    gather(b, &pipe, ids, y, (vocab, dim), |start, n| {
        b.ctx.view(&table.buf, start, n)
    });
}

/// The gather loop of `y[r] = table[ids[r]]` (`[vocab, dim]`) with `pipe`
/// (f32 or f16 tables): blocks of rows and columns whose views of y fit a
/// window, the table in row ranges of the same shape; `table(start, n)` is
/// the table's view over elements `start..start + n` and its shift.
pub(crate) fn gather<'t>(
    b: &Wgpu,
    pipe: &Kernel,
    ids: &WIds,
    y: &WBuf,
    (vocab, dim): (usize, usize),
    table: impl Fn(usize, usize) -> (View<'t>, u32),
) {
    let rows = ids.len;
    let wn = b.ctx.window_elems();
    let cb = dim.min(wn);
    let rpw = rows_per_window(wn, dim, cb);
    for (c0, cn) in ranges(dim, cb) {
        for (r0, rn) in ranges(rows, rpw) {
            let (vi, si) = b.ctx.view(&ids.buf, r0, rn);
            let (vy, sy) = b.ctx.view(&y.buf, r0 * dim + c0, (rn - 1) * dim + cn);
            for (v0, vn) in ranges(vocab, rpw) {
                let (vt, st) = table(v0 * dim + c0, (vn - 1) * dim + cn);
                let groups = ((rn * cn) as u32).div_ceil(WG);
                let words = EmbedParams {
                    rows: rn as u32,
                    cols: cn as u32,
                    ld: dim as u32,
                    sy,
                    st,
                    si,
                    v0: v0 as u32,
                    vw: vn as u32,
                    sl: 0,
                    groups,
                };
                b.ctx
                    .dispatch(pipe, &words, &[vi, vt, vy], b.ctx.grid(groups));
            }
        }
    }
}

pub(crate) fn embedding_backward(b: &Wgpu, ids: &WIds, dy: &WBuf, dtable: &mut WBuf, dim: usize) {
    let vocab = contract::embedding(
        "wgpu",
        "embedding_backward",
        [dtable.len, ids.len, dy.len],
        dim,
    );
    let rows = ids.len;
    if rows == 0 || vocab == 0 {
        return;
    }
    let wn = b.ctx.window_elems();
    let cb = dim.min(wn);
    let rpw = rows_per_window(wn, dim, cb);
    // Blocks of rows of dy; links (2 words per row) must fit a window too.
    let rblk = rpw.min(wn / 2).max(1);
    let links = b.ctx.pipeline("dense/embed_links", || {
        preprocess(EMBED_SRC, &["LINKS"], &[])
    });
    let scatter = b.ctx.pipeline("dense/embed_scatter", || {
        preprocess(EMBED_SRC, &["SCATTER"], &[])
    });
    let lk = scratch(b, "dense/embed_links", 2 * rblk.min(rows));
    for (r0, rn) in ranges(rows, rblk) {
        let (vi, si) = b.ctx.view(&ids.buf, r0, rn);
        let (vl, sl) = b.ctx.view(&lk, 0, 2 * rn);
        let groups = (rn as u32).div_ceil(32);
        let words = EmbedParams {
            rows: rn as u32,
            si,
            sl,
            groups,
            ..Default::default()
        };
        b.ctx
            .dispatch(&links, &words, &[vi, vl], b.ctx.grid(groups));
        for (c0, cn) in ranges(dim, cb) {
            let (vy, sy) = b.ctx.view(&dy.buf, r0 * dim + c0, (rn - 1) * dim + cn);
            for (v0, vn) in ranges(vocab, rpw) {
                let (vt, st) = b.ctx.view(&dtable.buf, v0 * dim + c0, (vn - 1) * dim + cn);
                let (vi, si) = b.ctx.view(&ids.buf, r0, rn);
                let (vl, sl) = b.ctx.view(&lk, 0, 2 * rn);
                let groups = (rn * cn.div_ceil(256)) as u32;
                let words = EmbedParams {
                    rows: rn as u32,
                    cols: cn as u32,
                    ld: dim as u32,
                    sy,
                    st,
                    si,
                    v0: v0 as u32,
                    vw: vn as u32,
                    sl,
                    groups,
                };
                b.ctx
                    .dispatch(&scatter, &words, &[vi, vl, vy, vt], b.ctx.grid(groups));
            }
        }
    }
}
