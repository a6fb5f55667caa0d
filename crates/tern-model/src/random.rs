//! Deterministic random weights for any config (tests and benchmarks).
//!
//! Nothing is materialized up front: ternary rows are generated on demand from
//! a counter-based hash of `(seed, tensor, row)`, so loading a random 13B model
//! costs only its packed size plus the f32 embedding.

use crate::config::BitNetConfig;
use crate::weights::{dense_key, Param, Proj, WeightError, WeightSource};
use tern_backend::TernarySource;
use tern_tensor::rng::{hash_str, mix, unit_f32};

/// Uniform f32 in [-1, 1) from a hash value.
fn unit(h: u64) -> f32 {
    unit_f32(h) * 2.0 - 1.0
}

/// Random weights of a config.
pub struct RandomWeights {
    cfg: BitNetConfig,
    seed: u64,
}

impl RandomWeights {
    pub fn new(cfg: BitNetConfig, seed: u64) -> Self {
        RandomWeights { cfg, seed }
    }
}

struct RandomTernary {
    rows: usize,
    cols: usize,
    key: u64,
    scale: f32,
}

impl TernarySource for RandomTernary {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn scale(&self) -> f32 {
        self.scale
    }
    fn row_codes(&self, r: usize, out: &mut [i8]) {
        let base = mix(self.key ^ (r as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        // Codes -1, 0, 1: 40 base-3 digits per 64-bit hash (3^40 < 2^64;
        // the digits are uniform up to a bias of order 3^40 / 2^64, negligible
        // for test weights).
        for (j, chunk) in out.chunks_mut(40).enumerate() {
            let mut h = mix(base.wrapping_add(j as u64));
            for o in chunk {
                *o = (h % 3) as i8 - 1;
                h /= 3;
            }
        }
    }
}

impl WeightSource for RandomWeights {
    fn config(&self) -> &BitNetConfig {
        &self.cfg
    }

    fn f32_tensor(&self, key: Param) -> Result<Vec<f32>, WeightError> {
        dense_key(key)?;
        // Every tensor's stream is keyed by its canonical name.
        let k = hash_str(self.seed, &key.name());
        let n: usize = key.shape(&self.cfg).iter().product();
        let matrix = matches!(key, Param::Embed | Param::Head);
        Ok((0..n)
            .map(|i| {
                let u = unit(mix(k.wrapping_add(i as u64)));
                if matrix {
                    0.02 * u * 1.7
                } else {
                    1.0 + 0.1 * u
                }
            })
            .collect())
    }

    fn ternary(&self, layer: usize, p: Proj) -> Result<Box<dyn TernarySource + '_>, WeightError> {
        let (rows, cols) = p.shape(&self.cfg);
        Ok(Box::new(RandomTernary {
            rows,
            cols,
            key: hash_str(self.seed, &Param::Proj(layer, p).name()),
            // About the absmean of a Kaiming-uniform init of this fan-in.
            scale: (1.0 / cols as f32).sqrt(),
        }))
    }
}
