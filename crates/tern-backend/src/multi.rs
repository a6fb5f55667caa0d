//! Multi-tensor ops: many small, independent updates or products in one
//! call, so that a GPU backend can run them as one dispatch instead of one
//! per tensor (a LoRA step has hundreds of tiny adapter tensors, and on a
//! GPU every dispatch costs about the same however small it is).
//!
//! Each op's default is the plain loop over the single-tensor op
//! ([`adamw_multi_unfused`], [`matmul_many_unfused`]); the CPU keeps it.
//! A backend that fuses must give the same result: bit for bit for the
//! element-wise AdamW update, and for the products equal to
//! [`Backend::matmul`] within the dense products' error budget (the
//! conformance suite checks both against the loop and the f64 reference).

use crate::{AdamW, Backend, Gemm};

/// One parameter tensor of [`Backend::adamw_multi`]: its value, gradient
/// and AdamW moments (all the same length).
pub struct AdamWTensor<'a, B: Backend + ?Sized> {
    pub p: &'a mut B::Buf,
    pub g: &'a B::Buf,
    pub m: &'a mut B::Buf,
    pub v: &'a mut B::Buf,
}

/// The reference [`Backend::adamw_multi`]: [`Backend::adamw`] on each
/// tensor in order.
pub fn adamw_multi_unfused<B: Backend + ?Sized>(be: &B, ts: &mut [AdamWTensor<'_, B>], h: AdamW) {
    for t in ts.iter_mut() {
        be.adamw(t.p, t.g, t.m, t.v, h);
    }
}

/// One product of [`Backend::matmul_many`]: `c = alpha op(a) op(b) + beta c`
/// (see [`Gemm`]). The borrows keep every `c` apart from every other
/// operand of the call, so the products are independent.
pub struct Product<'a, B: Backend + ?Sized> {
    pub a: &'a B::Buf,
    pub b: &'a B::Buf,
    pub c: &'a mut B::Buf,
    pub g: Gemm,
}

/// The reference [`Backend::matmul_many`]: [`Backend::matmul`] on each
/// product in order.
pub fn matmul_many_unfused<B: Backend + ?Sized>(be: &B, ps: &mut [Product<'_, B>]) {
    for p in ps.iter_mut() {
        be.matmul(p.a, p.b, p.c, p.g);
    }
}
