//! RoPE on the device (`shaders/rope.wgsl`): one thread per (row, rotation
//! pair); the phase is computed in fixed-point turns with integer arithmetic
//! (exact range reduction at any position), sin/cos by short series on
//! +-pi/4. Tensors larger than one binding are rotated in windows of whole
//! head rows.

use bytemuck::{Pod, Zeroable};
use tern_backend::contract;

use crate::shader::preprocess;
use crate::{WBuf, WIds, Wgpu};

pub(crate) const ROPE: &str = include_str!("../shaders/rope.wgsl");

/// Powers `theta^(-2^(k+1)/head_dim)` passed to the rope kernel (pairs up to 4096).
const ROPE_POWERS: usize = 12;

/// `struct P` of `shaders/rope.wgsl` (its `array<vec4<u32>, 7>` as 28 words;
/// the struct is 16-byte aligned, hence the padding).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct RopeParams {
    /// Words 0, 1: `1/(2 pi)`; words `2 + 2k`, `3 + 2k`:
    /// `theta^(-2^(k+1)/head_dim)`; 0.64 fixed point as (lo, hi).
    pub fr: [u32; 28],
    pub nrows: u32,
    pub half: u32,
    pub hd: u32,
    pub nh: u32,
    pub hr0: u32,
    pub hr1: u32,
    pub row0: u32,
    pub sx: u32,
    pub sp: u32,
    pub inv: u32,
    pub pad: [u32; 2],
}

/// A 0.64 fixed-point fraction (`0 <= x < 1`) as (lo, hi) words.
fn fixed64(x: f64) -> [u32; 2] {
    let v = (x * 18_446_744_073_709_551_616.0) as u64; // saturating
    [v as u32, (v >> 32) as u32]
}

/// `RopeParams::fr` for `theta` and `head_dim` (`head_dim / 2` at most
/// `2^ROPE_POWERS`; the caller checks).
pub(crate) fn rope_factors(theta: f32, head_dim: usize) -> [u32; 28] {
    let mut fr = [0u32; 28];
    fr[..2].copy_from_slice(&fixed64(1.0 / (2.0 * std::f64::consts::PI)));
    for kk in 0..ROPE_POWERS {
        let e = -2.0 * (1u64 << kk) as f64 / head_dim as f64;
        fr[2 + 2 * kk..4 + 2 * kk].copy_from_slice(&fixed64((theta as f64).powf(e)));
    }
    fr
}

/// Whether the rope kernels take `theta` and `head_dim`.
pub(crate) fn rope_supported(theta: f32, head_dim: usize) -> bool {
    theta > 1.0 && theta.is_finite() && head_dim / 2 <= 1 << ROPE_POWERS
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn rope(
    b: &Wgpu,
    x: &mut WBuf,
    pos: &WIds,
    rows: usize,
    n_heads: usize,
    head_dim: usize,
    theta: f32,
    inverse: bool,
) {
    contract::rope("wgpu", x.len, pos.len, rows, n_heads, head_dim);
    if rows == 0 || n_heads == 0 || head_dim == 0 {
        return;
    }
    assert!(
        theta > 1.0 && theta.is_finite(),
        "wgpu rope: theta {theta} must be a finite number above 1"
    );
    let half = head_dim / 2;
    assert!(
        half <= 1 << ROPE_POWERS,
        "wgpu rope: head_dim {head_dim} too large"
    );
    let fr = rope_factors(theta, head_dim);
    let pipe = b.ctx.pipeline("attn/rope", || preprocess(ROPE, &[], &[]));
    let w = b.ctx.window_elems();
    let hr_total = rows * n_heads;
    let per = if x.len <= w && rows <= w {
        hr_total
    } else {
        assert!(
            head_dim <= w,
            "wgpu rope: one head row exceeds a binding window"
        );
        w / head_dim
    };
    let mut hr0 = 0;
    while hr0 < hr_total {
        let hr1 = (hr0 + per).min(hr_total);
        let row0 = hr0 / n_heads;
        let nrows = (hr1 - 1) / n_heads + 1 - row0;
        let (vx, sx) = b.ctx.view(&x.buf, hr0 * head_dim, (hr1 - hr0) * head_dim);
        let (vp, sp) = b.ctx.view(&pos.buf, row0, nrows);
        let params = RopeParams {
            fr,
            nrows: nrows as u32,
            half: half as u32,
            hd: head_dim as u32,
            nh: n_heads as u32,
            hr0: hr0 as u32,
            hr1: hr1 as u32,
            row0: row0 as u32,
            sx,
            sp,
            inv: inverse as u32,
            pad: [0; 2],
        };
        let groups = b.ctx.grid(((nrows * half) as u32).div_ceil(64));
        b.ctx.dispatch(&pipe, &params, &[vx, vp], groups);
        hr0 = hr1;
    }
}
