//! LoRA adapter weights: configuration, PEFT's default initialization, and
//! host <-> device transfer.

use std::collections::BTreeMap;
use tern_backend::BackendError;
use tern_model::{BitNetConfig, Proj};
use tern_tensor::rng::SplitMix64;

/// Which projections carry an adapter, its rank and scaling.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f32,
    /// Dropout on the LoRA branch's input (PEFT's `lora_dropout`).
    pub dropout: f32,
    pub targets: Vec<Proj>,
}

impl LoraConfig {
    /// `alpha / rank`, the factor on `B (A x)`.
    pub fn scaling(&self) -> f32 {
        self.alpha / self.rank as f32
    }

    /// Parse a module list like `q,k,v,o,gate,up,down`, `all`, or PEFT names
    /// (`q_proj`, `gate_proj`...).
    pub fn parse_targets(list: &str) -> Result<Vec<Proj>, LoraError> {
        let mut out = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item.eq_ignore_ascii_case("all") {
                return Ok(Proj::ALL.to_vec());
            }
            let p = Proj::parse(item).ok_or_else(|| {
                LoraError::Config(format!(
                    "unknown LoRA target module {item:?} (expected q, k, v, o, gate, up, down or all)"
                ))
            })?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        if out.is_empty() {
            return Err(LoraError::Config("no LoRA target modules given".into()));
        }
        Ok(out)
    }

    pub fn validate(&self) -> Result<(), LoraError> {
        if self.rank == 0 {
            return Err(LoraError::Config("LoRA rank must be positive".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(LoraError::Config(format!(
                "LoRA alpha {} must be positive",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(LoraError::Config(format!(
                "LoRA dropout {} must be in [0, 1)",
                self.dropout
            )));
        }
        if self.targets.is_empty() {
            return Err(LoraError::Config("no LoRA target modules given".into()));
        }
        Ok(())
    }
}

/// Errors of adapter handling.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("LoRA config: {0}")]
    Config(String),
    #[error("adapter {what}: expected shape {expected:?}, got {got:?}")]
    Shape {
        what: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Batch(#[from] crate::pass::BatchError),
}

/// One `(A, B)`-shaped pair of host tensors per (layer, projection), in
/// layer order, then projection order.
pub type TensorPairs = BTreeMap<(usize, Proj), (Vec<f32>, Vec<f32>)>;

/// Host-side adapter: `A [r, in]` and `B [out, r]` for every (layer, proj).
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    pub cfg: LoraConfig,
    pub tensors: TensorPairs,
}

impl Adapter {
    /// PEFT's default initialization: `A ~ U(-1/sqrt(in), 1/sqrt(in))`
    /// (`kaiming_uniform_(a = sqrt(5))`), `B = 0`, from `seed`.
    pub fn init(model: &BitNetConfig, cfg: LoraConfig, seed: u64) -> Result<Self, LoraError> {
        cfg.validate()?;
        let mut tensors = BTreeMap::new();
        for l in 0..model.num_hidden_layers {
            for &p in &cfg.targets {
                let (out, inp) = p.shape(model);
                let mut rng = SplitMix64::new(seed ^ ((l as u64) << 32) ^ (p.index() as u64 + 1));
                let bound = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..cfg.rank * inp)
                    .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                    .collect();
                tensors.insert((l, p), (a, vec![0.0; out * cfg.rank]));
            }
        }
        Ok(Adapter { cfg, tensors })
    }

    /// Number of trainable parameters.
    pub fn n_params(&self) -> usize {
        self.tensors.values().map(|(a, b)| a.len() + b.len()).sum()
    }

    /// Check every tensor against the model's shapes.
    pub fn check(&self, model: &BitNetConfig) -> Result<(), LoraError> {
        for (&(l, p), (a, b)) in &self.tensors {
            let (out, inp) = p.shape(model);
            let r = self.cfg.rank;
            if l >= model.num_hidden_layers || a.len() != r * inp || b.len() != out * r {
                return Err(LoraError::Shape {
                    what: format!("layer {l} {}", p.hf_name()),
                    expected: vec![r * inp, out * r],
                    got: vec![a.len(), b.len()],
                });
            }
        }
        Ok(())
    }
}

/// Apply `ad` to `model` for inference (`tern generate --lora`): every pair
/// becomes a low-rank delta `(alpha / r) · B A` on its projection.
pub fn attach<B: tern_backend::Backend>(
    model: &mut tern_model::Model<B>,
    ad: &Adapter,
) -> Result<(), tern_model::ModelError> {
    for (&(l, p), (a, b)) in &ad.tensors {
        model.add_lora(l, p, a, b, ad.cfg.rank, ad.cfg.scaling())?;
    }
    Ok(())
}
