//! The expert draws of one training forward. MoSA and MoSA-LoRA pick one expert per split
//! projection for the whole batch from a stream ([`Rng`]); every other slot or branch ignores
//! the draws.
//!
//! A step with two stochastic passes (MoSA's consistency loss) can run them as **one forward over
//! the stacked batch** `[x; x]` ([`Draws::halves`]): the frozen backbone then runs once over 2B
//! images, and each expert-split module draws once per half ([`Draws::each`]) and runs each half
//! with its own expert (`Experts::forward_parts`, one batched product). The first half's stream
//! is the first pass's and the second half's is the stream where the first pass ended, so the
//! halves see exactly the experts two separate passes draw ([`advanced`] finds that point).

use crate::rng::Rng;

/// One stream for the whole batch, or one per half of a stacked batch.
#[derive(Debug, Clone)]
pub enum Draws {
    Whole(Rng),
    /// The batch is `[first pass; second pass]`, equal halves along dimension 0.
    Halves(Rng, Rng),
}

impl Draws {
    pub fn whole(rng: Rng) -> Self {
        Draws::Whole(rng)
    }

    pub fn halves(first: Rng, second: Rng) -> Self {
        Draws::Halves(first, second)
    }

    /// One draw per part of the batch, `f` on each part's stream in order: one for a whole
    /// batch, two for a stacked one (the first pass's, then the second's).
    pub fn each<T>(&mut self, mut f: impl FnMut(&mut Rng) -> T) -> Vec<T> {
        match self {
            Draws::Whole(rng) => vec![f(rng)],
            Draws::Halves(first, second) => vec![f(first), f(second)],
        }
    }

    /// The stream of the whole batch, or the first half's.
    pub fn first(&self) -> &Rng {
        match self {
            Draws::Whole(rng) | Draws::Halves(rng, _) => rng,
        }
    }

    /// The stream of the whole batch, or the second half's (where a step's draws continue).
    pub fn into_last(self) -> Rng {
        match self {
            Draws::Whole(rng) | Draws::Halves(_, rng) => rng,
        }
    }
}

/// `f` with one stream for the whole batch, taken from `rng` and left in it where `f`'s draws
/// end (a training forward that is not stacked).
pub fn with_whole<T>(rng: &mut Rng, f: impl FnOnce(&mut Draws) -> T) -> T {
    let mut draws = Draws::whole(std::mem::replace(rng, Rng::new(0)));
    let out = f(&mut draws);
    *rng = draws.into_last();
    out
}

/// `rng` after the draws of one training forward whose bounds are `bounds` (one `below(n)` each,
/// from [`crate::inject::expert_draws`]): the start of the second of two passes.
///
/// The bounds are listed site by site, which need not be the order in which the forward draws;
/// the step checks afterwards that the first half's stream ended exactly here, so a mismatch can
/// never pass unnoticed.
pub fn advanced(rng: &Rng, bounds: &[usize]) -> Rng {
    let mut r = rng.clone();
    for &n in bounds {
        r.below(n);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn halves_draw_what_two_whole_passes_draw() {
        // a "model" of three modules drawing below(4) each: the draws of a forward, part by part
        let forward = |d: &mut Draws| (0..3).map(|_| d.each(|r| r.below(4))).collect::<Vec<_>>();
        let start = Rng::new(11);
        let mut passes = Draws::whole(start.clone());
        let p1: Vec<usize> = forward(&mut passes).concat();
        assert_eq!(*passes.first(), advanced(&start, &[4, 4, 4]), "advanced() lands where a pass ends");
        let p2: Vec<usize> = forward(&mut passes).concat();
        assert_ne!(p1, p2, "the two passes drew different experts (else the check below could not tell the halves apart)");

        let mut stacked = Draws::halves(start.clone(), advanced(&start, &[4, 4, 4]));
        let both = forward(&mut stacked);
        assert_eq!(both.iter().map(|d| d[0]).collect::<Vec<_>>(), p1, "the first half draws the first pass's experts");
        assert_eq!(both.iter().map(|d| d[1]).collect::<Vec<_>>(), p2, "the second half draws the second pass's");
        assert_eq!(stacked.into_last(), passes.into_last(), "the step's stream continues where two passes leave it");
    }
}
