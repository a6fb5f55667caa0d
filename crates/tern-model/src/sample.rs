//! Token sampling: greedy, temperature, top-k, top-p and repetition penalty,
//! reproducible from a seed.
//!
//! Order of operations (as llama.cpp's default chain applies them):
//! repetition penalty -> top-k -> temperature -> softmax -> top-p -> draw.
//! A temperature of 0 (or below) is greedy decoding.

use tern_tensor::rng::SplitMix64;

/// Sampling settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    pub temperature: f32,
    /// Keep the `k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `p`; 1.0 keeps all.
    pub top_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens; 1.0 is off.
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repetition_window: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            repetition_penalty: 1.0,
            repetition_window: 64,
            seed: 0,
        }
    }
}

/// A sampler with its own random stream.
pub struct Sampler {
    cfg: SamplerConfig,
    /// SplitMix64: stable across platforms and releases.
    rng: SplitMix64,
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Self {
        let rng = SplitMix64::new(cfg.seed ^ 0x5DEE_CE66_D1A4_F87B);
        Sampler { cfg, rng }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// Pick the next token from `logits`, given the tokens generated or read so far.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let mut l: Vec<f32> = logits.to_vec();
        let pen = self.cfg.repetition_penalty;
        if pen != 1.0 && pen > 0.0 {
            let start = history.len().saturating_sub(self.cfg.repetition_window);
            let mut seen = history[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(x) = l.get_mut(t as usize) {
                    *x = if *x > 0.0 { *x / pen } else { *x * pen };
                }
            }
        }
        if self.cfg.temperature <= 0.0 {
            return argmax(&l);
        }
        // Candidates sorted by logit, highest first (ties by lower id).
        let mut idx: Vec<u32> = (0..l.len() as u32)
            .filter(|&i| !l[i as usize].is_nan())
            .collect();
        if idx.is_empty() {
            return 0;
        }
        let order = |a: &u32, b: &u32| {
            l[*b as usize]
                .partial_cmp(&l[*a as usize])
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.cmp(b))
        };
        if self.cfg.top_k > 0 && self.cfg.top_k < idx.len() {
            // Partition first: sorting a whole 128k vocabulary per token is wasted work.
            idx.select_nth_unstable_by(self.cfg.top_k - 1, order);
            idx.truncate(self.cfg.top_k);
        }
        idx.sort_by(order);
        let t = self.cfg.temperature as f64;
        let max = l[idx[0] as usize] as f64 / t;
        let mut p: Vec<f64> = idx
            .iter()
            .map(|&i| (l[i as usize] as f64 / t - max).exp())
            .collect();
        let sum: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= sum);
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = p.len();
            for (i, &x) in p.iter().enumerate() {
                acc += x;
                if acc >= self.cfg.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            p.truncate(keep);
            idx.truncate(keep);
            let s: f64 = p.iter().sum();
            p.iter_mut().for_each(|x| *x /= s);
        }
        let mut r = self.rng.next_f64();
        for (&i, &x) in idx.iter().zip(&p) {
            if r < x {
                return i;
            }
            r -= x;
        }
        *idx.last().expect("non-empty")
    }
}

/// Index of the largest logit (the first one on ties; NaN never wins).
pub fn argmax(l: &[f32]) -> u32 {
    tern_backend::argmax_row(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplerConfig {
        SamplerConfig {
            temperature,
            top_k,
            top_p,
            repetition_penalty: 1.0,
            repetition_window: 64,
            seed,
        }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(cfg(0.0, 0, 1.0, 1));
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9], &[]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_limits_support() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let run = |seed| {
            let mut s = Sampler::new(cfg(1.0, 3, 1.0, seed));
            (0..200).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
        let mut top3: Vec<u32> = (0..50).collect();
        top3.sort_by(|&a, &b| logits[b as usize].partial_cmp(&logits[a as usize]).unwrap());
        top3.truncate(3);
        let drawn = run(5);
        assert!(drawn.iter().all(|t| top3.contains(t)));
        for t in &top3 {
            assert!(drawn.contains(t), "token {t} of the top 3 never drawn");
        }
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        // Two tokens with logits ln 3 and 0: probabilities 3/4 and 1/4.
        let logits = [3f32.ln(), 0.0];
        let mut s = Sampler::new(cfg(1.0, 0, 1.0, 9));
        let n = 20_000;
        let ones = (0..n).filter(|_| s.sample(&logits, &[]) == 1).count();
        let f = ones as f64 / n as f64;
        assert!((f - 0.25).abs() < 0.015, "frequency {f}");
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // Probabilities 0.6, 0.3, 0.1: top_p 0.8 keeps the first two.
        let logits = [0.6f32.ln(), 0.3f32.ln(), 0.1f32.ln()];
        let mut s = Sampler::new(cfg(1.0, 0, 0.8, 3));
        let draws: Vec<u32> = (0..2000).map(|_| s.sample(&logits, &[])).collect();
        assert!(!draws.contains(&2));
        assert!(draws.contains(&1));
    }

    #[test]
    fn repetition_penalty_discourages_seen_tokens() {
        let mut c = cfg(0.0, 0, 1.0, 0);
        c.repetition_penalty = 2.0;
        let mut s = Sampler::new(c);
        // Token 0 leads (2.0 vs 1.5) until it was seen: 2.0 / 2 = 1.0 < 1.5.
        assert_eq!(s.sample(&[2.0, 1.5], &[]), 0);
        assert_eq!(s.sample(&[2.0, 1.5], &[0]), 1);
        // A negative logit is pushed further down.
        assert_eq!(s.sample(&[-1.0, -1.5], &[0]), 1);
    }
}
