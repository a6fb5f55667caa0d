//! A tiny seeded generator for the split and the epoch shuffles.
//!
//! SplitMix64 is written out here rather than taken from `rand` so that a
//! seed names the same split and the same order on every platform and every
//! dependency version: a run can be resumed or reproduced from its seed.

/// SplitMix64 step: advances `state` and returns a well-mixed value.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A deterministic stream of random numbers.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for `(seed, purpose, n)`: different purposes (the split,
    /// epoch `n`'s shuffle) get independent streams from one seed.
    pub(crate) fn new(seed: u64, purpose: &str, n: u64) -> Self {
        let mut s = seed;
        let mut h = splitmix(&mut s);
        for b in purpose.bytes().chain(n.to_le_bytes()) {
            let mut t = h ^ u64::from(b);
            h = splitmix(&mut t);
        }
        Rng(h)
    }

    fn next_u64(&mut self) -> u64 {
        splitmix(&mut self.0)
    }

    /// Uniform in `0..n` (`n > 0`), without modulo bias.
    fn below(&mut self, n: u64) -> u64 {
        // Lemire's multiply-shift with rejection.
        loop {
            let x = self.next_u64();
            let m = u128::from(x) * u128::from(n);
            let low = m as u64;
            if low >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }

    /// Fisher-Yates shuffle in place.
    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_permutation_and_seeded() {
        let mut a: Vec<usize> = (0..100).collect();
        let mut b = a.clone();
        let mut c = a.clone();
        Rng::new(7, "x", 0).shuffle(&mut a);
        Rng::new(7, "x", 0).shuffle(&mut b);
        Rng::new(7, "x", 1).shuffle(&mut c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = Rng::new(1, "below", 0);
        let mut seen = [false; 5];
        for _ in 0..200 {
            let v = r.below(5) as usize;
            seen[v] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
