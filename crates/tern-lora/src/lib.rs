//! tern-lora: LoRA adapters on a frozen BitNet base, and training them.
//!
//! `y = BitLinear(x) + (alpha / r) · B (A x)`: the base projection sees the
//! int8-quantized input (W1.58A8), the LoRA branch the full-precision input, as
//! PEFT and llama.cpp compute it. The base is frozen; gradients reach the
//! inputs through `W_tᵀ · dy` (straight-through on both quantizers) and the
//! adapter through plain f32 matmuls.

pub mod adapter;
mod curve;
pub mod data;
pub mod finetune;
pub mod fit;
pub mod io;
pub mod latent;
pub mod merge;
mod params;
pub mod pass;
pub mod pretrain;
pub mod schedule;
pub mod train;

pub use adapter::{attach, Adapter, LoraConfig, LoraError};
pub use train::{OptimizerState, StepStats, Trainer};
