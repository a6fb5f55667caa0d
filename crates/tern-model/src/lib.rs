//! tern-model: BitNet b1.58 configs, weights and the forward pass.

pub mod config;
pub mod export;
pub mod model;
pub mod random;
pub mod sample;
pub mod source;
pub mod tokenizer;
pub mod weights;

pub use config::{BitNetConfig, ConfigError, HiddenAct};
pub use model::{Model, ModelError};
pub use weights::{GgufWeights, HfWeights, Proj, WeightError, WeightSource};
