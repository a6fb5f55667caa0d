//! tern-tensor: dtypes, BitNet quantizers and GGML block codecs.
//!
//! Everything here is pure and allocation-aware: codecs pack into and unpack
//! from caller-provided buffers, block by block.
//!
//! - [`dtype`]: GGML type ids, block geometry, checked byte sizes.
//! - [`quant`]: BitNet b1.58 absmean ternary weights and per-token absmax int8
//!   activations, matching transformers' BitNet integration.
//! - [`codec`]: F32/F16/BF16/Q8_0/TQ1_0/TQ2_0/I2_S block codecs with the checked
//!   entry points [`codec::quantize_into`] and [`codec::dequantize_into`].
//! - [`rng`]: SplitMix64, the one deterministic generator every crate draws from.

pub mod codec;
pub mod dtype;
pub mod quant;
pub mod rng;

pub use dtype::{element_count, GgmlType, ShapeError};
