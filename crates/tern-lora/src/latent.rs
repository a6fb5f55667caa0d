//! Full-precision (latent) weights of a whole model on the host: what the
//! pretrainer starts from and hands back, by typed [`Param`] key.

use crate::pretrain::PretrainError;
use std::path::PathBuf;
use tern_backend::TernarySource;
use tern_model::weights::{dense_key, ternarize};
use tern_model::{BitNetConfig, Norm, Param, Proj, WeightError, WeightSource};
use tern_tensor::rng::SplitMix64;

/// One block's latent parameters on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentLayer {
    /// The four norms in [`Norm::ALL`] order: `input_layernorm [H]`,
    /// `attn_sub_norm [q_dim]`, `post_attention_layernorm [H]`,
    /// `ffn_sub_norm [I]`.
    pub norms: [Vec<f32>; 4],
    /// The seven projections in [`Proj::ALL`] order, `[out, in]` each.
    pub proj: [Vec<f32>; 7],
}

/// Full-precision (latent) weights of a whole model on the host. As a
/// [`WeightSource`] it ternarizes each projection on request (absmean, as
/// the forward does), so `tern_model::export::export` writes exactly the
/// model the pretrainer computes with, and `Model::load` builds it.
///
/// The same layout also carries gradients
/// ([`crate::pretrain::Pretrainer::gradients`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LatentWeights {
    pub cfg: BitNetConfig,
    /// `[vocab, H]`.
    pub embed: Vec<f32>,
    /// `[H]`.
    pub norm: Vec<f32>,
    /// `[vocab, H]`, `None` when tied to the embedding.
    pub lm_head: Option<Vec<f32>>,
    pub layers: Vec<LatentLayer>,
}

/// `n` samples of `N(0, std²)` (Box-Muller over SplitMix64) for tensor
/// number `tensor` under `seed`: each tensor has its own stream.
fn normal(seed: u64, tensor: u64, n: usize, std: f32) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed ^ tensor.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    rng.next_u64();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        // u1 in (0, 1], u2 in [0, 1).
        let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = rng.next_f64();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos()) as f32 * std);
        if out.len() < n {
            out.push((r * t.sin()) as f32 * std);
        }
    }
    out
}

fn source_path() -> PathBuf {
    PathBuf::from("<latent weights>")
}

impl LatentWeights {
    /// A fresh model of `cfg`: projections, embedding and head drawn from
    /// `N(0, std²)` (GPT-2/Llama's 0.02 is the usual `std`), norms all ones.
    /// The same `(cfg, seed, std)` always gives the same weights.
    pub fn init(cfg: &BitNetConfig, seed: u64, std: f32) -> Self {
        let mut w = LatentWeights::empty(cfg);
        let mut tensor = 0u64;
        for key in Param::all(cfg) {
            let n = key.shape(cfg).iter().product();
            let v = match key {
                Param::FinalNorm | Param::Norm(..) => vec![1.0; n],
                Param::Embed | Param::Head | Param::Proj(..) => {
                    tensor += 1;
                    normal(seed, tensor, n, std)
                }
            };
            w.set(key, v);
        }
        w
    }

    /// Every tensor empty, `cfg`'s layer count (filled with [`Self::set`]).
    pub(crate) fn empty(cfg: &BitNetConfig) -> Self {
        LatentWeights {
            cfg: cfg.clone(),
            embed: Vec::new(),
            norm: Vec::new(),
            lm_head: None,
            layers: (0..cfg.num_hidden_layers)
                .map(|_| LatentLayer {
                    norms: Default::default(),
                    proj: Default::default(),
                })
                .collect(),
        }
    }

    /// The tensor of `key`, if the weights hold it.
    pub fn get(&self, key: Param) -> Option<&[f32]> {
        match key {
            Param::Embed => Some(&self.embed),
            Param::FinalNorm => Some(&self.norm),
            Param::Head => self.lm_head.as_deref(),
            Param::Norm(l, n) => self.layers.get(l).map(|x| &x.norms[n.index()][..]),
            Param::Proj(l, p) => self.layers.get(l).map(|x| &x.proj[p.index()][..]),
        }
    }

    /// Replace the tensor of `key` (a layer `key` names must exist).
    pub fn set(&mut self, key: Param, v: Vec<f32>) {
        match key {
            Param::Embed => self.embed = v,
            Param::FinalNorm => self.norm = v,
            Param::Head => self.lm_head = Some(v),
            Param::Norm(l, n) => self.layers[l].norms[n.index()] = v,
            Param::Proj(l, p) => self.layers[l].proj[p.index()] = v,
        }
    }

    /// Checks every tensor's length against the config.
    pub fn check(&self) -> Result<(), PretrainError> {
        let cfg = &self.cfg;
        if self.layers.len() != cfg.num_hidden_layers {
            return Err(PretrainError::Config(format!(
                "latent weights hold {} layers, the config {}",
                self.layers.len(),
                cfg.num_hidden_layers
            )));
        }
        if self.lm_head.is_some() == cfg.tie_word_embeddings {
            return Err(PretrainError::Config(format!(
                "latent weights {} an lm_head but tie_word_embeddings is {}",
                if self.lm_head.is_some() {
                    "have"
                } else {
                    "lack"
                },
                cfg.tie_word_embeddings
            )));
        }
        for key in Param::all(cfg) {
            let shape = key.shape(cfg);
            let got = self.get(key).map_or(0, <[f32]>::len);
            if got != shape.iter().product::<usize>() {
                return Err(PretrainError::Config(format!(
                    "latent tensor `{key}` has {got} values, the config needs {shape:?}"
                )));
            }
        }
        Ok(())
    }
}

impl WeightSource for LatentWeights {
    fn config(&self) -> &BitNetConfig {
        &self.cfg
    }

    fn f32_tensor(&self, key: Param) -> Result<Vec<f32>, WeightError> {
        dense_key(key)?;
        let v = self.get(key).ok_or_else(|| WeightError::Missing {
            file: source_path(),
            tensor: key.name(),
            hint: String::new(),
        })?;
        let shape = key.shape(&self.cfg);
        if v.len() != shape.iter().product::<usize>() {
            return Err(WeightError::Shape {
                file: source_path(),
                tensor: key.name(),
                got: vec![v.len()],
                expected: shape,
            });
        }
        Ok(v.to_vec())
    }

    fn ternary(&self, layer: usize, p: Proj) -> Result<Box<dyn TernarySource + '_>, WeightError> {
        let key = Param::Proj(layer, p);
        let w = self.get(key).ok_or_else(|| WeightError::Missing {
            file: source_path(),
            tensor: key.name(),
            hint: String::new(),
        })?;
        let (rows, cols) = p.shape(&self.cfg);
        if w.len() != rows * cols {
            return Err(WeightError::Shape {
                file: source_path(),
                tensor: key.name(),
                got: vec![w.len()],
                expected: vec![rows, cols],
            });
        }
        Ok(Box::new(ternarize(rows, cols, w)))
    }
}

impl LatentLayer {
    /// The weight of norm `n`.
    pub fn norm(&self, n: Norm) -> &[f32] {
        &self.norms[n.index()]
    }

    /// The latent weight of projection `p`.
    pub fn proj(&self, p: Proj) -> &[f32] {
        &self.proj[p.index()]
    }
}
