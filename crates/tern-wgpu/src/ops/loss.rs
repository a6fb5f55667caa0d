//! The fused softmax cross-entropy (`shaders/dense_loss.wgsl`): one
//! workgroup per row with an online max and sum; rows longer than one
//! binding segment by segment (`shaders/dense_loss_seg.wgsl`).

use bytemuck::{Pod, Zeroable};
use tern_backend::contract;

use super::{ranges, scratch, segments};
use crate::ctx::WG;
use crate::shader::preprocess;
use crate::{WBuf, WIds, Wgpu};

pub(crate) const LOSS_SRC: &str = include_str!("../shaders/dense_loss.wgsl");
pub(crate) const LOSS_SEG_SRC: &str = include_str!("../shaders/dense_loss_seg.wgsl");

/// `struct P` of `shaders/dense_loss.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct LossParams {
    pub rows: u32,
    pub vocab: u32,
    pub sx: u32,
    pub st: u32,
    pub sl: u32,
    pub sd: u32,
    pub gs: f32,
}

/// `struct P` of `shaders/dense_loss_seg.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct LossSegParams {
    pub n: u32,
    pub c0: u32,
    pub sx: u32,
    pub st: u32,
    pub sp: u32,
    pub slot: u32,
    pub nseg: u32,
    pub sl: u32,
    pub sd: u32,
    pub gs: f32,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn cross_entropy(
    b: &Wgpu,
    logits: &WBuf,
    targets: &WIds,
    loss: &mut WBuf,
    dlogits: Option<&mut WBuf>,
    rows: usize,
    vocab: usize,
    grad_scale: f32,
) {
    contract::cross_entropy(
        "wgpu",
        [logits.len, targets.len, loss.len],
        dlogits.as_ref().map(|d| d.len),
        rows,
        vocab,
    );
    if rows == 0 {
        return;
    }
    let wn = b.ctx.window_elems();
    if vocab <= wn {
        let grad = dlogits.is_some();
        let pipe = if grad {
            b.ctx
                .pipeline("dense/ce_grad", || preprocess(LOSS_SRC, &["GRAD"], &[]))
        } else {
            b.ctx
                .pipeline("dense/ce", || preprocess(LOSS_SRC, &[], &[]))
        };
        for (r0, rn) in ranges(rows, wn / vocab) {
            let (vx, sx) = b.ctx.view(&logits.buf, r0 * vocab, rn * vocab);
            let (vt, st) = b.ctx.view(&targets.buf, r0, rn);
            let (vl, sl) = b.ctx.view(&loss.buf, r0, rn);
            let mut views = vec![vx, vt, vl];
            let mut sd = 0;
            if let Some(dl) = &dlogits {
                let (vd, s) = b.ctx.view(&dl.buf, r0 * vocab, rn * vocab);
                views.push(vd);
                sd = s;
            }
            let words = LossParams {
                rows: rn as u32,
                vocab: vocab as u32,
                sx,
                st,
                sl,
                sd,
                gs: grad_scale,
            };
            b.ctx.dispatch(&pipe, &words, &views, b.ctx.grid(rn as u32));
        }
        return;
    }
    // A row exceeds one binding: per-segment statistics, then per row.
    let (nseg, seg) = segments(vocab, wn);
    let stride = 2 * nseg + 1;
    let stat = scratch(b, "dense/ce_stat", stride);
    let part = b
        .ctx
        .pipeline("dense/ce_part", || preprocess(LOSS_SEG_SRC, &["PART"], &[]));
    let fin = b
        .ctx
        .pipeline("dense/ce_fin", || preprocess(LOSS_SEG_SRC, &["FIN"], &[]));
    let gseg = b
        .ctx
        .pipeline("dense/ce_gseg", || preprocess(LOSS_SEG_SRC, &["GSEG"], &[]));
    for r in 0..rows {
        let (vt, st) = b.ctx.view(&targets.buf, r, 1);
        for (s, (c0, cn)) in ranges(vocab, seg).enumerate() {
            let (vx, sx) = b.ctx.view(&logits.buf, r * vocab + c0, cn);
            let (vs, sp) = b.ctx.view(&stat, 0, stride);
            let words = LossSegParams {
                n: cn as u32,
                c0: c0 as u32,
                sx,
                st,
                sp,
                slot: 2 * s as u32,
                nseg: nseg as u32,
                ..Default::default()
            };
            b.ctx.dispatch(&part, &words, &[vx, vt, vs], [1, 1, 1]);
        }
        let (vs, sp) = b.ctx.view(&stat, 0, stride);
        let (vl, sl) = b.ctx.view(&loss.buf, r, 1);
        let words = LossSegParams {
            st,
            sp,
            nseg: nseg as u32,
            sl,
            ..Default::default()
        };
        b.ctx.dispatch(&fin, &words, &[vt, vs, vl], [1, 1, 1]);
        if let Some(dl) = &dlogits {
            for (c0, cn) in ranges(vocab, seg) {
                let (vx, sx) = b.ctx.view(&logits.buf, r * vocab + c0, cn);
                let (vs, sp) = b.ctx.view(&stat, 0, stride);
                let (vd, sd) = b.ctx.view(&dl.buf, r * vocab + c0, cn);
                let words = LossSegParams {
                    n: cn as u32,
                    c0: c0 as u32,
                    sx,
                    st,
                    sp,
                    slot: 0,
                    nseg: nseg as u32,
                    sl: 0,
                    sd,
                    gs: grad_scale,
                };
                let groups = b.ctx.grid((cn as u32).div_ceil(WG));
                b.ctx.dispatch(&gseg, &words, &[vx, vt, vs, vd], groups);
            }
        }
    }
}
