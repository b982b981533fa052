//! Flex's linear ([`super::super::linear`] has the maths): the output rows are first filled with
//! the bias (in parallel), then one `gemm` over all rows accumulates `x·W` into them on rayon's
//! threads, so the bias costs no separate pass over the output (burn's default adds it after the
//! matmul, on one thread).

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
    let parallelism = if rows * k * n >= PARALLEL_MACS { Parallelism::Rayon(0) } else { Parallelism::None };
    // SAFETY: the three buffers have the lengths checked above; out is written by gemm alone.
    unsafe {
        gemm(rows, n, k, out.as_mut_ptr(), 1, n as isize, bias.is_some(), x.as_ptr(), 1, k as isize, w.as_ptr(), 1, n as isize, 1.0, 1.0, false, false, false, parallelism);
    }
    out
}
