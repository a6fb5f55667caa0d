//! tern-tensor: dtypes, BitNet quantizers and GGML block codecs.
//!
//! Ternarize a weight row the way BitNet b1.58 does, pack it into TQ2_0 (66
//! bytes per 256 weights) and read it back:
//!
//! ```
//! use tern_tensor::codec::{pack_ternary_into, quantized_len, unpack_ternary_into};
//! use tern_tensor::quant::absmean_ternary;
//! use tern_tensor::rng::SplitMix64;
//! use tern_tensor::GgmlType;
//!
//! let mut rng = SplitMix64::new(1);
//! let w: Vec<f32> = (0..256).map(|_| rng.uniform(-0.05, 0.05)).collect();
//! let mut codes = vec![0i8; 256];
//! let scale = absmean_ternary(&w, &mut codes); // codes in {-1, 0, 1}, scale ~ mean|w|
//!
//! let mut bytes = vec![0u8; quantized_len(GgmlType::TQ2_0, 256)?];
//! assert_eq!(bytes.len(), 66);
//! pack_ternary_into(GgmlType::TQ2_0, &codes, scale, &mut bytes)?;
//!
//! let (mut back, mut scales) = (vec![0i8; 256], [0f32; 1]);
//! unpack_ternary_into(GgmlType::TQ2_0, &bytes, &mut back, &mut scales)?;
//! assert_eq!(back, codes);
//! assert_eq!(scales[0], half::f16::from_f32(scale).to_f32()); // the block scale is f16
//! # Ok::<(), tern_tensor::codec::CodecError>(())
//! ```
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
