//! tern-io: GGUF v3 and safetensors files, read through memory maps and
//! written as streams.

pub mod atomic;
pub mod gguf;
pub mod npy;
pub mod safetensors;
