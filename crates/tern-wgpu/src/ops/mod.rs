//! The ops, by family. Each function records dispatches through [`crate::ctx::Ctx`].

pub(crate) mod attention;
pub(crate) mod basic;
pub(crate) mod dense;
pub(crate) mod ternary;

/// f32 as the 32-bit word a parameter slot holds.
#[inline]
pub(crate) fn f(v: f32) -> u32 {
    v.to_bits()
}
