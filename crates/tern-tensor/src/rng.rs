//! SplitMix64: the one deterministic random-number generator of tern.
//!
//! Random weights, LoRA initialization, data shuffles, dropout seeds,
//! sampling and test inputs all draw from it, so a seed means the same
//! numbers on every platform and release. [`mix`] is the stateless hash
//! (SplitMix64's increment and finalizer applied to one value);
//! [`SplitMix64`] is the stream.

/// SplitMix64's increment (the golden ratio in 64 bits).
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function (Stafford's mix13) without the increment.
#[inline]
pub fn finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A stateless, well-mixed hash of a 64-bit value: `finalize(z + GOLDEN)`.
#[inline]
pub fn mix(z: u64) -> u64 {
    finalize(z.wrapping_add(GOLDEN))
}

/// A 64-bit hash of a string, byte by byte through [`mix`], starting from
/// `mix(seed)`.
pub fn hash_str(seed: u64, s: &str) -> u64 {
    s.bytes().fold(mix(seed), |h, b| mix(h ^ u64::from(b)))
}

/// Uniform `f32` in `[0, 1)` from the top 24 bits of `h`.
#[inline]
pub fn unit_f32(h: u64) -> f32 {
    (h >> 40) as f32 / (1u64 << 24) as f32
}

/// Uniform `f64` in `[0, 1)` from the top 53 bits of `h`.
#[inline]
pub fn unit_f64(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The SplitMix64 stream: each call adds [`GOLDEN`] to the state and
/// returns its [`finalize`].
///
/// ```
/// use tern_tensor::rng::SplitMix64;
/// let mut a = SplitMix64::new(7);
/// let mut b = SplitMix64::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// let u = a.next_f32();
/// assert!((0.0..1.0).contains(&u));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    /// The state; the next output is `finalize(state + GOLDEN)`.
    pub state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        finalize(self.state)
    }

    /// Uniform in `[0, 1)` (24 bits).
    #[inline]
    pub fn next_f32(&mut self) -> f32 {
        unit_f32(self.next_u64())
    }

    /// Uniform in `[0, 1)` (53 bits).
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        unit_f64(self.next_u64())
    }

    /// Uniform in `[lo, hi)`.
    #[inline]
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next_f32()
    }

    /// Uniform in `0..n` without modulo bias (Lemire's multiply-shift with
    /// rejection): the draw behind shuffles and corpus sampling.
    ///
    /// # Panics
    /// When `n == 0` (an empty range has no element to return).
    pub fn below_unbiased(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SplitMix64::below_unbiased(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Fisher-Yates shuffle in place, drawing with [`Self::below_unbiased`].
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below_unbiased(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }

    /// `next_u64() % n` (slightly biased for huge `n`; 0 when `n == 0`).
    /// For test inputs and shuffles where a fixed, simple map matters more
    /// than exact uniformity.
    #[inline]
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_splitmix64() {
        // Vigna's reference splitmix64.c with state 1234567 gives these
        // first outputs.
        let mut r = SplitMix64::new(1234567);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423
            ]
        );
    }

    #[test]
    fn below_unbiased_of_a_power_of_two_is_the_top_bits() {
        // 2^64 mod 2^k = 0: nothing is rejected and the result is the top
        // k bits of the next output.
        let (mut a, mut b) = (SplitMix64::new(9), SplitMix64::new(9));
        for k in [1u32, 3, 17, 63] {
            assert_eq!(a.below_unbiased(1 << k), b.next_u64() >> (64 - k));
        }
        let mut r = SplitMix64::new(3);
        let mut counts = [0usize; 7];
        for _ in 0..7000 {
            counts[r.below_unbiased(7) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (850..1150).contains(c)), "{counts:?}");
    }

    #[test]
    fn mix_is_one_stream_step() {
        let mut r = SplitMix64::new(42);
        assert_eq!(mix(42), r.next_u64());
    }
}
