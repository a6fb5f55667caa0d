//! The seeded streams of the corpus: tern's one generator
//! ([`tern_tensor::rng`]), so that a seed means the same corpus on every
//! platform and with every version of every dependency.
//!
//! Streams are keyed by `(seed, name, index)`: the `index`-th example of a
//! task's training split has its own generator, independent of how many
//! examples came before it or of the other tasks.

pub(crate) use tern_tensor::rng::hash_str;
use tern_tensor::rng::{mix, SplitMix64, GOLDEN};

/// A SplitMix64 stream whose outputs are `mix(state)` after each increment,
/// i.e. [`SplitMix64`] one increment ahead: every corpus (and the committed
/// demo model pretrained on one) was made with this exact sequence.
#[derive(Clone, Debug)]
pub(crate) struct Rng(SplitMix64);

impl Rng {
    /// The generator of stream `name`, element `index`, under `seed`.
    pub(crate) fn new(seed: u64, name: &str, index: u64) -> Self {
        let state = mix(hash_str(seed, name) ^ mix(index.wrapping_add(0x5EED)));
        Rng(SplitMix64::new(state.wrapping_add(GOLDEN)))
    }

    #[cfg(test)]
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (`n > 0`), without modulo bias.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0.below_unbiased(n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        assert!(lo <= hi, "Rng::range({lo}, {hi})");
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `num / den`.
    pub(crate) fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }

    /// A uniformly chosen element.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Fisher-Yates shuffle.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        self.0.shuffle(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7, "add/train", 3);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(7, "add/train", 3);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = Rng::new(7, "add/train", 4);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let d: Vec<u64> = {
            let mut r = Rng::new(8, "add/train", 3);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    /// The first outputs of stream `(7, "add/train", 3)` as the hand-written
    /// generator of earlier releases gave them (state += GOLDEN, then
    /// `mix(state)`, which adds GOLDEN once more): same seed, same corpus.
    #[test]
    fn stream_is_the_earlier_releases_stream() {
        let mut r = Rng::new(7, "add/train", 3);
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                0x9a11_71c6_6b5a_68ec,
                0x3b83_2353_8490_fdf8,
                0x35ce_e076_d702_a346,
                0xcbbe_059f_9ae2_2893
            ]
        );
    }

    #[test]
    fn below_covers_its_range_evenly() {
        let mut r = Rng::new(1, "t", 0);
        let mut counts = [0usize; 7];
        for _ in 0..7000 {
            counts[r.below(7)] += 1;
        }
        for c in counts {
            assert!((850..1150).contains(&c), "{counts:?}");
        }
        for _ in 0..100 {
            let x = r.range(10, 12);
            assert!((10..=12).contains(&x));
        }
    }
}
