//! Masks over the entries of a weight matrix, on the host.
//!
//! - [`partition`]: MoSA's split of one matrix into N disjoint experts that cover it: a score
//!   `S ~ U[0,1)` per entry, expert i owns the entries whose score falls in the i-th of N equal
//!   quantile bins (so each expert owns ⌊numel/N⌋ or ⌈numel/N⌉ entries).
//! - [`topk`]: exactly k entries with the largest scores; ties broken by a seeded random order
//!   (the reference's `score >= kth value` can exceed the budget on ties).

use crate::rng::Rng;

/// Owner (0..n) of each of `numel` entries, drawn from `rng`.
pub fn partition(numel: usize, n: usize, rng: &mut Rng) -> Vec<u32> {
    assert!(n > 0, "partition into 0 experts");
    let scores: Vec<f64> = (0..numel).map(|_| rng.uniform()).collect();
    let mut order: Vec<usize> = (0..numel).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut owner = vec![0u32; numel];
    for (rank, &i) in order.iter().enumerate() {
        owner[i] = (rank * n / numel.max(1)) as u32;
    }
    owner
}

/// The 0/1 mask of expert `e` in a partition.
pub fn expert_mask(owner: &[u32], e: u32) -> Vec<f32> {
    owner.iter().map(|&o| if o == e { 1.0 } else { 0.0 }).collect()
}

/// Indices (sorted) of exactly `k` entries with the largest scores; ties broken at random by `rng`.
/// NaN scores rank lowest.
pub fn topk(scores: &[f32], k: usize, rng: &mut Rng) -> Vec<u32> {
    let k = k.min(scores.len());
    let tiebreak = rng.permutation(scores.len());
    let key = |i: usize| if scores[i].is_nan() { f32::NEG_INFINITY } else { scores[i] };
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    // Largest score first; among equal scores, the random order decides.
    let cmp = |a: &usize, b: &usize| key(*b).total_cmp(&key(*a)).then(tiebreak[*a].cmp(&tiebreak[*b]));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, cmp);
    }
    let mut kept: Vec<u32> = idx[..k].iter().map(|&i| i as u32).collect();
    kept.sort_unstable();
    kept
}

/// A dense 0/1 mask of `numel` entries with ones at `indices`.
pub fn dense(indices: &[u32], numel: usize) -> Vec<f32> {
    let mut m = vec![0.0; numel];
    for &i in indices {
        m[i as usize] = 1.0;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_disjoint_covering_and_balanced() {
        let owner = partition(1000, 4, &mut Rng::new(3407));
        let mut counts = [0usize; 4];
        for &o in &owner {
            counts[o as usize] += 1;
        }
        assert_eq!(counts, [250; 4]);
        // the masks sum to one everywhere: disjoint and covering
        let masks: Vec<Vec<f32>> = (0..4).map(|e| expert_mask(&owner, e)).collect();
        for i in 0..1000 {
            assert_eq!(masks.iter().map(|m| m[i]).sum::<f32>(), 1.0);
        }
        // not a trivial block split: every expert owns entries in the first tenth
        for e in 0..4 {
            assert!(owner[..100].contains(&e));
        }
        assert_eq!(partition(1000, 4, &mut Rng::new(3407)), owner, "seeded");
        assert_ne!(partition(1000, 4, &mut Rng::new(1)), owner);
        let uneven = partition(10, 4, &mut Rng::new(0));
        let c: Vec<usize> = (0..4).map(|e| uneven.iter().filter(|&&o| o == e).count()).collect();
        assert!(c.iter().all(|&x| x == 2 || x == 3) && c.iter().sum::<usize>() == 10, "{c:?}");
    }

    #[test]
    fn topk_is_exact_even_with_ties() {
        let scores = [1.0, 5.0, 5.0, 5.0, 5.0, 0.0, f32::NAN, 2.0];
        let k = topk(&scores, 3, &mut Rng::new(1));
        assert_eq!(k.len(), 3);
        assert!(k.iter().all(|&i| (1..=4).contains(&i)), "{k:?}");
        // a different seed may pick different tied entries, always 3 of them
        let picks: std::collections::BTreeSet<Vec<u32>> = (0..20).map(|s| topk(&scores, 3, &mut Rng::new(s))).collect();
        assert!(picks.len() > 1);
        assert_eq!(topk(&scores, 6, &mut Rng::new(0)), vec![0, 1, 2, 3, 4, 7]);
        assert_eq!(topk(&scores, 100, &mut Rng::new(0)).len(), 8);
        assert_eq!(dense(&[1, 3], 5), vec![0.0, 1.0, 0.0, 1.0, 0.0]);
    }
}
