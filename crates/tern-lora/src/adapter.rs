//! LoRA adapter weights: configuration, PEFT's default initialization, and
//! host <-> device transfer.

use std::collections::BTreeMap;
use tern_backend::BackendError;
use tern_model::{BitNetConfig, Proj};

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
            let name = item.trim_end_matches("_proj");
            let p = match name {
                "q" => Proj::Q,
                "k" => Proj::K,
                "v" => Proj::V,
                "o" => Proj::O,
                "gate" => Proj::Gate,
                "up" => Proj::Up,
                "down" => Proj::Down,
                _ => {
                    return Err(LoraError::Config(format!(
                        "unknown LoRA target module {item:?} (expected q, k, v, o, gate, up, down or all)"
                    )))
                }
            };
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
}

/// One `(A, B)`-shaped pair of host tensors per (layer, projection).
pub type TensorPairs = BTreeMap<(usize, ProjKey), (Vec<f32>, Vec<f32>)>;

/// Host-side adapter: `A [r, in]` and `B [out, r]` for every (layer, proj).
#[derive(Clone, Debug, PartialEq)]
pub struct Adapter {
    pub cfg: LoraConfig,
    pub tensors: TensorPairs,
}

/// `Proj` as an ordered map key (layer order, then q k v o gate up down).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProjKey(pub u8);

impl ProjKey {
    pub fn of(p: Proj) -> Self {
        ProjKey(Proj::ALL.iter().position(|&q| q == p).expect("in ALL") as u8)
    }
    pub fn proj(self) -> Proj {
        Proj::ALL[self.0 as usize]
    }
}

/// SplitMix64 stream for initialization.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
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
                let mut rng = Rng(seed ^ ((l as u64) << 32) ^ (ProjKey::of(p).0 as u64 + 1));
                let bound = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..cfg.rank * inp)
                    .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                    .collect();
                tensors.insert((l, ProjKey::of(p)), (a, vec![0.0; out * cfg.rank]));
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
        for (&(l, k), (a, b)) in &self.tensors {
            let (out, inp) = k.proj().shape(model);
            let r = self.cfg.rank;
            if l >= model.num_hidden_layers || a.len() != r * inp || b.len() != out * r {
                return Err(LoraError::Shape {
                    what: format!("layer {l} {}", k.proj().hf_name()),
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
    for (&(l, k), (a, b)) in &ad.tensors {
        model.add_lora(l, k.proj(), a, b, ad.cfg.rank, ad.cfg.scaling())?;
    }
    Ok(())
}
