//! Folding adapters into a model (`tern merge`) and averaging adapters
//! trained on different devices (`tern adapters average`).

use crate::adapter::{Adapter, LoraError};
use tern_backend::TernarySource;
use tern_model::{BitNetConfig, Param, Proj, WeightError, WeightSource};

/// A base model with adapters folded in: every projection becomes
/// `W_t * s + Σ (alpha / r) · B A` in full precision. Everything else passes
/// through. The result is no longer ternary: exporting it needs
/// full-precision projections (`ExportOptions::dense_projections`).
pub struct Merged<'a> {
    pub base: &'a dyn WeightSource,
    pub adapters: &'a [Adapter],
}

impl WeightSource for Merged<'_> {
    fn config(&self) -> &BitNetConfig {
        self.base.config()
    }
    fn f32_tensor(&self, key: Param) -> Result<Vec<f32>, WeightError> {
        self.base.f32_tensor(key)
    }
    fn ternary(&self, layer: usize, p: Proj) -> Result<Box<dyn TernarySource + '_>, WeightError> {
        self.base.ternary(layer, p)
    }
    fn dense_projection(&self, layer: usize, p: Proj) -> Result<Vec<f32>, WeightError> {
        let mut w = self.base.dense_projection(layer, p)?;
        let (out, inp) = p.shape(self.base.config());
        for ad in self.adapters {
            let Some((a, b)) = ad.tensors.get(&(layer, p)) else {
                continue;
            };
            let (r, s) = (ad.cfg.rank, ad.cfg.scaling());
            for o in 0..out {
                let row = &mut w[o * inp..(o + 1) * inp];
                for k in 0..r {
                    let bk = s * b[o * r + k];
                    if bk == 0.0 {
                        continue;
                    }
                    for (x, &av) in row.iter_mut().zip(&a[k * inp..(k + 1) * inp]) {
                        *x += bk * av;
                    }
                }
            }
        }
        Ok(w)
    }
}

/// Weighted average of adapters with the same rank, alpha and modules
/// (federated averaging: `A = Σ w_i A_i`, `B = Σ w_i B_i` with weights summing
/// to 1; equal weights when `weights` is `None`). Note that the product of
/// the averages is not the average of the products `B_i A_i`; this is the
/// parameter averaging FedAvg performs.
pub fn average(adapters: &[Adapter], weights: Option<&[f32]>) -> Result<Adapter, LoraError> {
    let first = adapters
        .first()
        .ok_or_else(|| LoraError::Config("no adapters to average".into()))?;
    let w: Vec<f64> = match weights {
        Some(w) if w.len() != adapters.len() => {
            return Err(LoraError::Config(format!(
                "{} weights for {} adapters",
                w.len(),
                adapters.len()
            )))
        }
        Some(w) => {
            let sum: f64 = w.iter().map(|&x| x as f64).sum();
            if w.iter().any(|&x| !(x.is_finite() && x >= 0.0)) || sum <= 0.0 {
                return Err(LoraError::Config(format!(
                    "weights {w:?} must be non-negative with a positive sum"
                )));
            }
            w.iter().map(|&x| x as f64 / sum).collect()
        }
        None => vec![1.0 / adapters.len() as f64; adapters.len()],
    };
    for (i, ad) in adapters.iter().enumerate().skip(1) {
        let same_keys = ad.tensors.keys().eq(first.tensors.keys());
        if ad.cfg.rank != first.cfg.rank || ad.cfg.alpha != first.cfg.alpha || !same_keys {
            return Err(LoraError::Config(format!(
                "adapter {} (rank {}, alpha {}, {} tensors) does not match adapter 1 (rank {}, \
                 alpha {}, {} tensors): only adapters of one shape can be averaged",
                i + 1,
                ad.cfg.rank,
                ad.cfg.alpha,
                ad.tensors.len(),
                first.cfg.rank,
                first.cfg.alpha,
                first.tensors.len()
            )));
        }
    }
    let mut out = first.clone();
    for (key, (a, b)) in out.tensors.iter_mut() {
        for (dst, pick) in [(a, 0usize), (b, 1)] {
            for (j, d) in dst.iter_mut().enumerate() {
                *d = adapters
                    .iter()
                    .zip(&w)
                    .map(|(ad, &wi)| {
                        let (ta, tb) = &ad.tensors[key];
                        wi * if pick == 0 { ta[j] } else { tb[j] } as f64
                    })
                    .sum::<f64>() as f32;
            }
        }
    }
    Ok(out)
}
