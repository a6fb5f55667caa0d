//! Memory and element-wise ops.

use super::f;
use crate::ctx::WG;
use crate::{WBuf, Wgpu};

/// A tiny preprocessor for the WGSL sources: keeps the lines between
/// `#ifdef NAME` and `#endif` for the names in `defs`, drops the others
/// (no nesting), and replaces `{{KEY}}` by the value of `KEY` in `subs`.
pub(crate) fn preprocess(src: &str, defs: &[&str], subs: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(src.len());
    let mut keep = true;
    for line in src.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("#ifdef ") {
            keep = defs.contains(&name.trim());
            continue;
        }
        if let Some(name) = t.strip_prefix("#ifndef ") {
            keep = !defs.contains(&name.trim());
            continue;
        }
        if t == "#endif" {
            keep = true;
            continue;
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    for (k, v) in subs {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

const BASIC: &str = include_str!("../shaders/basic.wgsl");

pub(crate) fn axpy(b: &Wgpu, alpha: f32, x: &WBuf, y: &mut WBuf) {
    assert_eq!(x.len, y.len, "axpy: lengths");
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
        b.ctx.dispatch(
            &pipe,
            &[n as u32, sx, sy, f(alpha), f(1.0)],
            &[vx, vy],
            groups,
        );
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
            .dispatch(&pipe, &[n as u32, 0, sy, f(alpha), f(1.0)], &[vy], groups);
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
        b.ctx
            .dispatch(&pipe, &[n as u32, 0, sy, f(0.0), f(1.0)], &[vy], groups);
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
    assert!(
        src_off + n <= src.len && dst_off + n <= dst.len,
        "copy_range: out of range"
    );
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
        b.ctx.dispatch(
            &pipe,
            &[m as u32, sx, sy, f(0.0), f(1.0)],
            &[vx, vy],
            groups,
        );
        start += m;
    }
}
