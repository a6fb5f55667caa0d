//! tern-model: BitNet b1.58 configs, weights and the forward pass.

pub mod config;

pub use config::{BitNetConfig, ConfigError, HiddenAct};
