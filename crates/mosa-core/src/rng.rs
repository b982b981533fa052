//! A small deterministic random generator (SplitMix64 seeding a xoshiro256**), used for every
//! host-side random choice: expert selection, masks, tie-breaks. Its whole state is four `u64`s,
//! so a training checkpoint can store it and a resumed run draws the same numbers.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng {
    s: [u64; 4],
    /// Replayed choices: `below` returns these in order (see `Rng::scripted`); never saved.
    /// Test support only (feature `scripted-rng`, which the tests enable).
    #[cfg(feature = "scripted-rng")]
    #[serde(skip)]
    script: Option<(Vec<usize>, usize)>,
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        Self {
            s: [splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x), splitmix64(&mut x)],
            #[cfg(feature = "scripted-rng")]
            script: None,
        }
    }

    /// A generator whose `below` calls return `draws` in order (each checked against its bound),
    /// to replay the choices of a reference run — e.g. MoSA's expert draws saved by PyTorch.
    /// Running out of draws is a bug in the caller and panics. Test support (feature `scripted-rng`).
    #[cfg(feature = "scripted-rng")]
    pub fn scripted(draws: Vec<usize>) -> Self {
        Self { script: Some((draws, 0)), ..Self::new(0) }
    }

    /// How many scripted draws are left (`None` for a generator).
    #[cfg(feature = "scripted-rng")]
    pub fn scripted_left(&self) -> Option<usize> {
        self.script.as_ref().map(|(d, i)| d.len() - i)
    }

    /// An independent stream derived from this seed and a label (e.g. a block index).
    pub fn derive(seed: u64, stream: u64) -> Self {
        let mut x = seed ^ stream.wrapping_mul(0xd1b5_4a32_d192_ed03);
        Self::new(splitmix64(&mut x))
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "below(0)");
        #[cfg(feature = "scripted-rng")]
        if let Some((draws, i)) = &mut self.script {
            let d = *draws.get(*i).unwrap_or_else(|| panic!("scripted Rng: draw {} asked, {} given", *i + 1, draws.len()));
            assert!(d < n, "scripted Rng: draw {d} is not below {n}");
            *i += 1;
            return d;
        }
        let n = n as u64;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i + 1);
            p.swap(i, j);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_streams_differ() {
        let a: Vec<u64> = (0..5).scan(Rng::new(7), |r, _| Some(r.next_u64())).collect();
        let b: Vec<u64> = (0..5).scan(Rng::new(7), |r, _| Some(r.next_u64())).collect();
        assert_eq!(a, b);
        assert_ne!(Rng::derive(7, 0).next_u64(), Rng::derive(7, 1).next_u64());
    }

    #[test]
    fn below_is_roughly_uniform_and_in_range() {
        let mut r = Rng::new(1);
        let mut counts = [0usize; 4];
        for _ in 0..40_000 {
            counts[r.below(4)] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
        let u: f64 = (0..10_000).map(|_| r.uniform()).sum::<f64>() / 10_000.0;
        assert!((u - 0.5).abs() < 0.02, "{u}");
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = Rng::new(3).permutation(100);
        p.sort();
        assert_eq!(p, (0..100).collect::<Vec<_>>());
    }
}
