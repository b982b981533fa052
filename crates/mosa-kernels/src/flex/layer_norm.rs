//! Flex's LayerNorm backward ([`super::super::layer_norm`] has the maths): tasks of
//! [`ROWS`] rows on rayon, each row one pass for its statistics and one for `dx`; the γ and β
//! gradients summed per task and then across tasks in task order (deterministic).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::super::math::{row_dot, row_dot_centred, row_square_dev, row_sum};

/// Rows per rayon task.
const ROWS: usize = 32;

multiversion! {
    /// `dx` for the rows of `x` and `g` (`rows × d`); with `params`, `acc[..d] += Σ g ⊙ x̂` and
    /// `acc[d..] += Σ g`.
    fn rows_backward(x: &[f32], g: &[f32], gamma: &[f32], epsilon: f32, dx: &mut [MaybeUninit<f32>], acc: &mut [f32], params: bool) {
        let d = gamma.len();
        let inv_d = 1.0 / d as f32;
        for ((xr, gr), dr) in x.chunks_exact(d).zip(g.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
            let mean = row_sum(xr) * inv_d;
            let rstd = 1.0 / (row_square_dev(xr, mean) * inv_d + epsilon).sqrt();
            let a = row_dot(gr, gamma) * inv_d;
            let c = row_dot_centred(gr, gamma, xr, mean) * rstd * inv_d;
            for i in 0..d {
                let xhat = (xr[i] - mean) * rstd;
                dr[i].write(rstd * (gr[i] * gamma[i] - a - xhat * c));
            }
            if params {
                let (dgamma, dbeta) = acc.split_at_mut(d);
                for i in 0..d {
                    dgamma[i] += gr[i] * (xr[i] - mean) * rstd;
                    dbeta[i] += gr[i];
                }
            }
        }
    }
}

/// `dx` (in `x`'s layout) and, with `params`, `[dγ…, dβ…]`.
pub(super) fn backward(x: &[f32], gamma: &[f32], grad: &[f32], epsilon: f32, params: bool) -> (Vec<f32>, Option<Vec<f32>>) {
    let d = gamma.len();
    assert!(d > 0 && x.len() == grad.len() && x.len().is_multiple_of(d));
    let chunk = ROWS * d;
    let mut partials: Vec<Vec<f32>> = Vec::new();
    // SAFETY: the tasks' chunks cover `dx`, and `rows_backward` writes every element of its rows.
    let dx = unsafe {
        super::filled(x.len(), |dx| {
            let tasks = dx.par_chunks_mut(chunk).zip(x.par_chunks(chunk).zip(grad.par_chunks(chunk)));
            if !params {
                tasks.for_each(|(o, (x, g))| rows_backward(x, g, gamma, epsilon, o, &mut [], false));
                return;
            }
            // each task's partial sums, in task order, then added in that order: the same result on
            // every run whatever the thread schedule (resumed runs must end bit for bit as uninterrupted ones)
            partials = tasks
                .map(|(o, (x, g))| {
                    let mut acc = vec![0f32; 2 * d];
                    rows_backward(x, g, gamma, epsilon, o, &mut acc, true);
                    acc
                })
                .collect();
        })
    };
    if !params {
        return (dx, None);
    }
    let mut acc = vec![0f32; 2 * d];
    for p in &partials {
        acc.iter_mut().zip(p).for_each(|(a, b)| *a += b);
    }
    (dx, Some(acc))
}
