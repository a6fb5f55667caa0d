//! Memory and element-wise ops.

use bytemuck::{Pod, Zeroable};
use tern_backend::contract;

use crate::ctx::WG;
use crate::shader::preprocess;
use crate::{WBuf, Wgpu};

/// `struct P` of `shaders/basic.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct BasicParams {
    pub n: u32,
    pub sx: u32,
    pub sy: u32,
    pub alpha: f32,
    pub one: f32,
}

/// `y[sy..sy + n] (op)= alpha x[sx..]` with a run-time one.
fn params(n: usize, sx: u32, sy: u32, alpha: f32) -> BasicParams {
    BasicParams {
        n: n as u32,
        sx,
        sy,
        alpha,
        one: 1.0,
    }
}

pub(crate) const BASIC: &str = include_str!("../shaders/basic.wgsl");

pub(crate) fn axpy(b: &Wgpu, alpha: f32, x: &WBuf, y: &mut WBuf) {
    contract::same_len("wgpu", "axpy", &["x", "y"], &[x.len, y.len]);
    let pipe = b
        .ctx
        .pipeline("basic/axpy", || preprocess(BASIC, &["AXPY"], &[]));
    let chunk = b.ctx.window_elems();
    let mut start = 0;
    while start < x.len {
        let n = chunk.min(x.len - start);
        let (vx, sx) = b.ctx.view(&x.buf, start, n);
        let (vy, sy) = b.ctx.view(&y.buf, start, n);
        let groups = b.ctx.grid((n as u32).div_ceil(WG));
        b.ctx
            .dispatch(&pipe, &params(n, sx, sy, alpha), &[vx, vy], groups);
        start += n;
    }
}

pub(crate) fn scale(b: &Wgpu, alpha: f32, y: &mut WBuf) {
    let pipe = b
        .ctx
        .pipeline("basic/scale", || preprocess(BASIC, &["SCALE"], &[]));
    let chunk = b.ctx.window_elems();
    let mut start = 0;
    while start < y.len {
        let n = chunk.min(y.len - start);
        let (vy, sy) = b.ctx.view(&y.buf, start, n);
        let groups = b.ctx.grid((n as u32).div_ceil(WG));
        b.ctx
            .dispatch(&pipe, &params(n, 0, sy, alpha), &[vy], groups);
        start += n;
    }
}

/// Set the first `len` f32 of `buf` to zero (a reused pooled buffer).
pub(crate) fn fill_zero(b: &Wgpu, buf: &wgpu::Buffer, len: usize) {
    let pipe = b
        .ctx
        .pipeline("basic/fill", || preprocess(BASIC, &["FILL"], &[]));
    let chunk = b.ctx.window_elems();
    let mut start = 0;
    while start < len {
        let n = chunk.min(len - start);
        let (vy, sy) = b.ctx.view(buf, start, n);
        let groups = b.ctx.grid((n as u32).div_ceil(WG));
        b.ctx.dispatch(&pipe, &params(n, 0, sy, 0.0), &[vy], groups);
        start += n;
    }
}

/// `dst[dst_off..dst_off + n] = src[src_off..src_off + n]` as a compute
/// dispatch (window by window), so the copy stays inside the open compute
/// pass: a transfer command would end it, and on some GPUs a pass switch costs
/// more than a small dispatch (KV-cache appends happen twice per layer).
pub(crate) fn copy_range(
    b: &Wgpu,
    src: &WBuf,
    src_off: usize,
    dst: &mut WBuf,
    dst_off: usize,
    n: usize,
) {
    contract::copy_range("wgpu", (src.len, src_off), (dst.len, dst_off), n);
    let pipe = b
        .ctx
        .pipeline("basic/copy", || preprocess(BASIC, &["COPY"], &[]));
    let chunk = b.ctx.window_elems();
    let mut start = 0;
    while start < n {
        let m = chunk.min(n - start);
        let (vx, sx) = b.ctx.view(&src.buf, src_off + start, m);
        let (vy, sy) = b.ctx.view(&dst.buf, dst_off + start, m);
        let groups = b.ctx.grid((m as u32).div_ceil(WG));
        b.ctx
            .dispatch(&pipe, &params(m, sx, sy, 0.0), &[vx, vy], groups);
        start += m;
    }
}
