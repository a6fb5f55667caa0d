//! The fused ops of one transformer block's inference step.
//!
//! A decode step of a BitNet block is some twenty small ops; on a GPU each
//! is a dispatch whose fixed cost exceeds its work. The four ops here cover
//! the block between the attention calls, each one dispatch on a backend
//! that fuses them (RMSNorm folded into the activation quantizer of the
//! products that follow it; q/k/v as one product with RoPE and the KV-cache
//! append in its epilogue; gate/up as one product with the activation in
//! its epilogue; the residual add in the epilogue of o and down):
//!
//! ```text
//! attn_in:  q, cache[n_past..] = rope(Wq n), rope(Wk n), Wv n     n = rmsnorm(x)
//! residual: out = res + W rmsnorm(x)
//! ffn_in:   out = act(Wg n) * (Wu n)                               n = rmsnorm(x)
//! ```
//!
//! Each has a reference composition of the plain ops below (the
//! [`crate::Backend`] defaults): a backend that fuses must give the same
//! values; the conformance suite checks it against the composition on the
//! same backend. The scratch buffers a composition needs are the caller's
//! (the block's activations), and their contents are unspecified after a
//! fused call.

use crate::{Activation, Backend};

/// The RMSNorm in front of a product: `rmsnorm(x) * weight` per row of
/// `x [rows, dim]`, and where a composition writes it.
pub struct NormIn<'a, B: Backend + ?Sized> {
    pub x: &'a B::Buf,
    pub weight: &'a B::Buf,
    pub eps: f32,
    pub rows: usize,
    /// `[rows, dim]` scratch: the normed rows (unspecified after the call).
    pub normed: &'a mut B::Buf,
    /// `[rows]` scratch: the inverse RMS (unspecified after the call).
    pub rstd: &'a mut B::Buf,
}

impl<B: Backend + ?Sized> NormIn<'_, B> {
    /// Width of the rows (the norm weight's length).
    pub fn dim(&self, be: &B) -> usize {
        be.len(self.weight)
    }

    fn run(&mut self, be: &B) {
        let dim = self.dim(be);
        be.rmsnorm(
            self.x,
            self.weight,
            self.normed,
            self.rstd,
            self.rows,
            dim,
            self.eps,
        );
    }
}

/// Rotary embedding geometry of the q/k/v product (see [`Backend::rope`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeDims {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub theta: f32,
}

/// The q/k/v product of an inference step: `q [rows, n_heads * head_dim]`
/// receives the rotated queries, rows `n_past..n_past + rows` of the caches
/// (`[ctx, n_kv_heads * head_dim]`) the rotated keys and the values.
pub struct AttnIn<'a, B: Backend + ?Sized> {
    pub norm: NormIn<'a, B>,
    pub wq: &'a B::Ternary,
    pub wk: &'a B::Ternary,
    pub wv: &'a B::Ternary,
    /// Positions of the rows (`[rows]`).
    pub pos: &'a B::Ids,
    pub rope: RopeDims,
    pub q: &'a mut B::Buf,
    /// `[rows, kv_dim]` scratch each (unspecified after the call).
    pub k: &'a mut B::Buf,
    pub v: &'a mut B::Buf,
    pub k_cache: &'a mut B::Buf,
    pub v_cache: &'a mut B::Buf,
    pub n_past: usize,
}

/// The reference composition of [`Backend::attn_in`].
pub fn attn_in_unfused<B: Backend + ?Sized>(be: &B, a: AttnIn<'_, B>) {
    let AttnIn {
        mut norm,
        wq,
        wk,
        wv,
        pos,
        rope,
        q,
        k,
        v,
        k_cache,
        v_cache,
        n_past,
    } = a;
    norm.run(be);
    let rows = norm.rows;
    be.ternary_matmul(wq, norm.normed, q, rows);
    be.ternary_matmul(wk, norm.normed, k, rows);
    be.ternary_matmul(wv, norm.normed, v, rows);
    let (hd, theta) = (rope.head_dim, rope.theta);
    be.rope(q, pos, rows, rope.n_heads, hd, theta, false);
    be.rope(k, pos, rows, rope.n_kv_heads, hd, theta, false);
    let kvd = rope.n_kv_heads * hd;
    be.copy_range(k, 0, k_cache, n_past * kvd, rows * kvd);
    be.copy_range(v, 0, v_cache, n_past * kvd, rows * kvd);
}

/// The reference composition of [`Backend::norm_ternary_residual`].
pub fn norm_ternary_residual_unfused<B: Backend + ?Sized>(
    be: &B,
    mut norm: NormIn<'_, B>,
    w: &B::Ternary,
    residual: &B::Buf,
    out: &mut B::Buf,
) {
    norm.run(be);
    be.ternary_matmul(w, norm.normed, out, norm.rows);
    be.axpy(1.0, residual, out);
}

/// The gate/up product of an inference step: `out = act(Wg n) * (Wu n)`.
pub struct FfnIn<'a, B: Backend + ?Sized> {
    pub norm: NormIn<'a, B>,
    pub wg: &'a B::Ternary,
    pub wu: &'a B::Ternary,
    pub act: Activation,
    /// `[rows, intermediate]` scratch each (unspecified after the call).
    pub g: &'a mut B::Buf,
    pub u: &'a mut B::Buf,
    pub out: &'a mut B::Buf,
}

/// The reference composition of [`Backend::ffn_in`].
pub fn ffn_in_unfused<B: Backend + ?Sized>(be: &B, a: FfnIn<'_, B>) {
    let FfnIn {
        mut norm,
        wg,
        wu,
        act,
        g,
        u,
        out,
    } = a;
    norm.run(be);
    be.ternary_matmul(wg, norm.normed, g, norm.rows);
    be.ternary_matmul(wu, norm.normed, u, norm.rows);
    be.gate(g, u, out, act);
}
