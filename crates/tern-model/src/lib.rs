//! tern-model: BitNet b1.58 configs, weights and the forward pass.

pub mod block;
pub mod config;
pub mod export;
pub mod keys;
pub mod model;
pub mod random;
pub mod sample;
pub mod source;
pub mod tokenizer;
pub mod weights;

pub use config::{BitNetConfig, ConfigError, HiddenAct};
pub use keys::{LayerTensor, Norm, Param, Proj};
pub use model::{Model, ModelError};
pub use weights::{GgufWeights, HfWeights, WeightError, WeightSource};
