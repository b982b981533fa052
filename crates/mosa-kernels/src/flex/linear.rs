//! Flex's linear ([`super::super::linear`] has the maths): the output rows are first filled with
//! the bias (in parallel), then one GEMM over all rows ([`super::gemm`]: ours on AVX2 CPUs, the
//! `gemm` crate elsewhere) accumulates `x·W` into them on rayon's threads, so the bias costs no
//! separate pass over the output (burn's default adds it after the matmul, on one thread). The
//! backward's two GEMMs read `Wᵀ` and `xᵀ` as strided views and write new buffers, never zeroed
//! first (burn-flex's matmul output is zeroed and then copied to an aligned buffer, both on the
//! calling thread).

use rayon::prelude::*;

use super::gemm::{View, matmul, product};

/// Below this many multiply-adds one thread is faster (burn-flex's own threshold is similar).
const PARALLEL_MACS: usize = 64 * 64 * 64;

/// `out[rows × n] = x[rows × k] · w[k × n] + bias`, all row-major.
pub(super) fn forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, rows: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(x.len() == rows * k && w.len() == k * n && bias.is_none_or(|b| b.len() == n));
    let Some(b) = bias else {
        // SAFETY: the buffers have the lengths checked above.
        return unsafe { product(rows, n, k, View::row_major(x, k), View::row_major(w, n), PARALLEL_MACS) };
    };
    let mut out = Vec::with_capacity(rows * n);
    out.spare_capacity_mut().par_chunks_mut(n.max(1) * 64).for_each(|chunk| {
        for row in chunk.chunks_exact_mut(n.max(1)) {
            row.iter_mut().zip(b).for_each(|(o, &v)| {
                o.write(v);
            });
        }
    });
    // SAFETY: every row was written above (the capacity is whole rows).
    unsafe { out.set_len(rows * n) };
    // SAFETY: the three buffers have the lengths checked above; out is written by the GEMM alone.
    unsafe { matmul(rows, n, k, View::row_major(x, k), View::row_major(w, n), out.as_mut_ptr(), n, true, PARALLEL_MACS) };
    out
}

/// `∂L/∂x = g·Wᵀ` `[rows × k]` from `g` `[rows × n]` and `w` `[k × n]`.
pub(super) fn backward_x(w: &[f32], g: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(w.len() == k * n && g.len() == rows * n);
    // SAFETY: lengths checked above; Wᵀ's element (o, i) is w[i·n + o].
    unsafe { product(rows, k, n, View::row_major(g, n), View::row_major(w, n).t(), PARALLEL_MACS) }
}

/// `∂L/∂W = xᵀ·g` `[k × n]` from `x` `[rows × k]` and `g` `[rows × n]`: one GEMM over all rows.
pub(super) fn backward_weight(x: &[f32], g: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(x.len() == rows * k && g.len() == rows * n);
    // SAFETY: lengths checked above; xᵀ's element (i, r) is x[r·k + i].
    unsafe { product(k, n, rows, View::row_major(x, k).t(), View::row_major(g, n), PARALLEL_MACS) }
}

/// `∂L/∂b = Σ_rows g` `[n]`: partial sums per task of 64 rows, added in task order (deterministic).
pub(super) fn backward_bias(g: &[f32], n: usize) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = g
        .par_chunks(64 * n.max(1))
        .map(|rows| {
            let mut acc = vec![0f32; n];
            for row in rows.chunks_exact(n.max(1)) {
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            acc
        })
        .collect();
    let mut db = vec![0f32; n];
    for p in &partials {
        db.iter_mut().zip(p).for_each(|(a, v)| *a += v);
    }
    db
}
