//! Flex's linear ([`super::super::linear`] has the maths): the output rows are first filled with
//! the bias (in parallel), then one `gemm` over all rows accumulates `x·W` into them on rayon's
//! threads, so the bias costs no separate pass over the output (burn's default adds it after the
//! matmul, on one thread). The backward's two GEMMs read `Wᵀ` and `xᵀ` as strided views and write
//! into buffers initialised on rayon's threads (burn-flex's matmul output is zeroed and then
//! copied to an aligned buffer, both on the calling thread).

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

/// Below this many multiply-adds one thread is faster (burn-flex's own threshold is similar).
const PARALLEL_MACS: usize = 64 * 64 * 64;

/// `out[rows × n] = x[rows × k] · w[k × n] + bias`, all row-major.
pub(super) fn forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, rows: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(x.len() == rows * k && w.len() == k * n && bias.is_none_or(|b| b.len() == n));
    let mut out = match bias {
        Some(b) => {
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
            out
        }
        None => super::zeros(rows * n),
    };
    // SAFETY: the three buffers have the lengths checked above; out is written by gemm alone.
    unsafe {
        gemm(rows, n, k, out.as_mut_ptr(), 1, n as isize, bias.is_some(), x.as_ptr(), 1, k as isize, w.as_ptr(), 1, n as isize, 1.0, 1.0, false, false, false, parallelism(rows, n, k));
    }
    out
}

fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    if m * n * k >= PARALLEL_MACS { Parallelism::Rayon(0) } else { Parallelism::None }
}

/// `∂L/∂x = g·Wᵀ` `[rows × k]` from `g` `[rows × n]` and `w` `[k × n]`.
pub(super) fn backward_x(w: &[f32], g: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(w.len() == k * n && g.len() == rows * n);
    let mut dx = super::zeros(rows * k);
    // SAFETY: lengths checked above; Wᵀ's element (o, i) is w[i·n + o].
    unsafe {
        gemm(rows, k, n, dx.as_mut_ptr(), 1, k as isize, false, g.as_ptr(), 1, n as isize, w.as_ptr(), n as isize, 1, 0.0, 1.0, false, false, false, parallelism(rows, k, n));
    }
    dx
}

/// `∂L/∂W = xᵀ·g` `[k × n]` from `x` `[rows × k]` and `g` `[rows × n]`: one GEMM over all rows.
pub(super) fn backward_weight(x: &[f32], g: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
    assert!(x.len() == rows * k && g.len() == rows * n);
    let mut dw = super::zeros(k * n);
    // SAFETY: lengths checked above; xᵀ's element (i, r) is x[r·k + i].
    unsafe {
        gemm(k, n, rows, dw.as_mut_ptr(), 1, n as isize, false, x.as_ptr(), k as isize, 1, g.as_ptr(), 1, n as isize, 0.0, 1.0, false, false, false, parallelism(k, n, rows));
    }
    dw
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
