//! tern-lora: LoRA adapters on a frozen BitNet base, and training them.
//!
//! `y = BitLinear(x) + (alpha / r) · B (A x)`: the base projection sees the
//! int8-quantized input (W1.58A8), the LoRA branch the full-precision input, as
//! PEFT and llama.cpp compute it. The base is frozen; gradients reach the
//! inputs through `W_tᵀ · dy` (straight-through on both quantizers) and the
//! adapter through plain f32 matmuls.
//!
//! A few steps by hand on a tiny random model (the [`fit`] loop adds
//! batching, schedules, clipping, checkpoints and metrics around them):
//!
//! ```
//! use tern_backend::Cpu;
//! use tern_lora::{Adapter, LoraConfig, Trainer};
//! use tern_model::model::ActQuant;
//! use tern_model::random::RandomWeights;
//! use tern_model::{BitNetConfig, Model, Proj};
//!
//! let cfg = BitNetConfig::from_json_str(
//!     "tiny",
//!     r#"{"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
//!         "num_attention_heads": 4, "vocab_size": 50, "hidden_act": "relu2",
//!         "max_position_embeddings": 32}"#,
//! )?;
//! let model = Model::load(Cpu::with_threads(1), &RandomWeights::new(cfg.clone(), 1))?;
//! let lora = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, targets: vec![Proj::Q, Proj::V] };
//! let mut trainer = Trainer::new(&model, &Adapter::init(&cfg, lora, 0)?, ActQuant::PerTokenInt8)?;
//! // One sequence of 8 tokens; each target is the next token.
//! let tokens = [3u32, 14, 15, 9, 26, 5, 35, 8];
//! let targets = [14u32, 15, 9, 26, 5, 35, 8, 9];
//! let mut losses = Vec::new();
//! for _ in 0..20 {
//!     let st = trainer.forward_backward(&tokens, &targets, 1, 8, Some(1.0 / 8.0))?;
//!     losses.push(st.mean());
//!     trainer.clip_grad_norm(1.0)?;
//!     trainer.optimizer_step(1e-2, 0.9, 0.999, 1e-8, 0.0);
//! }
//! assert!(losses[19] < losses[0]);
//! let adapter = trainer.adapter()?; // save with tern_lora::io::save_peft / save_gguf
//! assert_eq!(adapter.tensors.len(), 2 * 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `examples/lora_train.rs` runs the [`fit`] loop on a tiny random model.

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
