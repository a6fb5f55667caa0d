//! Element-wise ops (`shaders/dense_elem.wgsl`): dropout with the shared
//! hash mask, the feed-forward gate and its backward, the AdamW step in
//! PyTorch's operation order. Flat windows of every operand.

use bytemuck::{Pod, Zeroable};
use tern_backend::{contract, Activation, AdamW};

use super::ranges;
use crate::ctx::WG;
use crate::shader::preprocess;
use crate::{WBuf, Wgpu};

pub(crate) const ELEM_SRC: &str = include_str!("../shaders/dense_elem.wgsl");

/// `struct P` of `shaders/dense_elem.wgsl`: the window (`n`, `base`, the
/// operands' shifts `s0..s4`), then the op's own words (`w*`, `f*`; meaning
/// per op) and `one` (1.0 where the op needs a run-time one).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub(crate) struct ElemParams {
    pub n: u32,
    pub base: u32,
    pub s0: u32,
    pub s1: u32,
    pub s2: u32,
    pub s3: u32,
    pub s4: u32,
    pub w0: u32,
    pub w1: u32,
    pub w2: u32,
    pub f0: f32,
    pub f1: f32,
    pub f2: f32,
    pub f3: f32,
    pub f4: f32,
    pub f5: f32,
    pub f6: f32,
    pub one: f32,
}

/// One element-wise kernel over `n` elements of each buffer in `bufs`
/// (windows of the same range), with the op's parameters in `op` (from `w0`
/// on, see dense_elem.wgsl; the window fields are filled in here).
fn elementwise(
    b: &Wgpu,
    key: &str,
    defs: &[&str],
    n: usize,
    bufs: &[&wgpu::Buffer],
    op: ElemParams,
) {
    let pipe = b.ctx.pipeline(key, || preprocess(ELEM_SRC, defs, &[]));
    for (start, len) in ranges(n, b.ctx.window_elems()) {
        let mut params = ElemParams {
            n: len as u32,
            base: start as u32,
            ..op
        };
        let mut shifts = [0u32; 5];
        let mut views = Vec::with_capacity(bufs.len());
        for (buf, shift) in bufs.iter().zip(&mut shifts) {
            let (v, s) = b.ctx.view(buf, start, len);
            views.push(v);
            *shift = s;
        }
        [params.s0, params.s1, params.s2, params.s3, params.s4] = shifts;
        let groups = b.ctx.grid((len as u32).div_ceil(WG));
        b.ctx.dispatch(&pipe, &params, &views, groups);
    }
}

pub(crate) fn dropout(b: &Wgpu, x: &WBuf, y: &mut WBuf, p: f32, seed: u64) {
    contract::dropout("wgpu", x.len, y.len, p);
    let scale = 1.0 / (1.0 - p);
    let threshold = ((p as f64) * 4_294_967_296.0).min(u32::MAX as f64) as u32;
    elementwise(
        b,
        "dense/dropout",
        &["DROPOUT"],
        x.len,
        &[&x.buf, &y.buf],
        ElemParams {
            w0: seed as u32,
            w1: (seed >> 32) as u32,
            w2: threshold,
            f0: scale,
            one: 1.0,
            ..Default::default()
        },
    );
}

pub(crate) fn gate(b: &Wgpu, g: &WBuf, u: &WBuf, y: &mut WBuf, act: Activation) {
    contract::same_len("wgpu", "gate", &["g", "u", "y"], &[g.len, u.len, y.len]);
    let (key, def) = match act {
        Activation::Relu2 => ("dense/gate_relu2", "GATE_RELU2"),
        Activation::Silu => ("dense/gate_silu", "GATE_SILU"),
    };
    elementwise(
        b,
        key,
        &["GATE", def],
        g.len,
        &[&g.buf, &u.buf, &y.buf],
        ElemParams::default(),
    );
}

pub(crate) fn gate_backward(
    b: &Wgpu,
    g: &WBuf,
    u: &WBuf,
    dy: &WBuf,
    dg: &mut WBuf,
    du: &mut WBuf,
    act: Activation,
) {
    let n = g.len;
    contract::same_len(
        "wgpu",
        "gate_backward",
        &["g", "u", "dy", "dg", "du"],
        &[n, u.len, dy.len, dg.len, du.len],
    );
    let (key, def) = match act {
        Activation::Relu2 => ("dense/gate_bwd_relu2", "GBWD_RELU2"),
        Activation::Silu => ("dense/gate_bwd_silu", "GBWD_SILU"),
    };
    elementwise(
        b,
        key,
        &["GATE_BWD", def],
        n,
        &[&g.buf, &u.buf, &dy.buf, &dg.buf, &du.buf],
        ElemParams {
            one: 1.0,
            ..Default::default()
        },
    );
}

/// `f0..f6, one` of an AdamW step (dense_elem.wgsl's ADAMW, and the
/// multi-tensor kernel's): the CPU's constants, computed the same way (f64
/// bias corrections).
pub(crate) fn adamw_words(h: AdamW) -> [f32; 8] {
    let t = h.step as i32;
    let bc1 = 1.0 - (h.beta1 as f64).powi(t);
    let bc2 = 1.0 - (h.beta2 as f64).powi(t);
    let step_size = (h.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    let decay = (1.0 - h.lr as f64 * h.weight_decay as f64) as f32;
    [
        decay,
        1.0 - h.beta1,
        h.beta2,
        1.0 - h.beta2,
        bc2_sqrt,
        h.eps,
        step_size,
        1.0,
    ]
}

pub(crate) fn adamw(b: &Wgpu, p: &mut WBuf, g: &WBuf, m: &mut WBuf, v: &mut WBuf, h: AdamW) {
    let n = p.len;
    h.check("wgpu", n, g.len, m.len, v.len);
    let [f0, f1, f2, f3, f4, f5, f6, one] = adamw_words(h);
    elementwise(
        b,
        "dense/adamw",
        &["ADAMW"],
        n,
        &[&p.buf, &g.buf, &m.buf, &v.buf],
        ElemParams {
            f0,
            f1,
            f2,
            f3,
            f4,
            f5,
            f6,
            one,
            ..Default::default()
        },
    );
}
