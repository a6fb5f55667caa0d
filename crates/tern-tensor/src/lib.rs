//! tern-tensor: dtypes, BitNet quantizers and GGML block codecs.
//!
//! Everything here is pure and allocation-aware: codecs pack into and unpack
//! from caller-provided buffers, block by block.

pub mod dtype;

pub use dtype::{element_count, GgmlType, ShapeError};
