//! tern-model: BitNet b1.58 configs, weights and the forward pass.
//!
//! Load weights from a [`WeightSource`] (a GGUF, a Hugging Face folder, or
//! seeded random weights) onto a backend, then run tokens through the
//! [`Model`]; it keeps a KV cache, so decoding feeds one token at a time:
//!
//! ```
//! use tern_backend::Cpu;
//! use tern_model::random::RandomWeights;
//! use tern_model::sample::argmax;
//! use tern_model::{BitNetConfig, Model};
//!
//! let cfg = BitNetConfig::from_json_str(
//!     "tiny",
//!     r#"{"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
//!         "num_attention_heads": 4, "vocab_size": 100, "hidden_act": "relu2",
//!         "max_position_embeddings": 32}"#,
//! )?;
//! let mut model = Model::load(Cpu::with_threads(1), &RandomWeights::new(cfg, 7))?;
//! let mut tokens = vec![1, 5, 9];
//! let mut logits = model.forward(&tokens, false)?; // the prompt: last row only
//! for _ in 0..4 {
//!     let next = argmax(&logits);
//!     tokens.push(next);
//!     logits = model.forward(&[next], false)?; // one new token through the cache
//! }
//! assert_eq!((tokens.len(), logits.len(), model.cached_tokens()), (7, 100, 7));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `examples/generate.rs` does the same from a `--model` argument with a
//! tokenizer. The block every caller runs is [`block`]; tensor names live in
//! [`keys`].

pub mod block;
pub mod config;
pub mod export;
pub mod keys;
pub mod model;
pub mod random;
pub mod sample;
pub mod source;
pub mod table;
pub mod tokenizer;
pub mod weights;

pub use config::{BitNetConfig, ConfigError, HiddenAct};
pub use keys::{LayerTensor, Norm, Param, Proj};
pub use model::{Model, ModelError};
pub use table::{HeadPrecision, Table};
pub use weights::{GgufWeights, HfWeights, WeightError, WeightSource};
