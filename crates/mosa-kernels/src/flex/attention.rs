//! Flex's fused attention ([`super::super::attention`] has the maths): one rayon task per
//! (batch, head), each a few `gemm` calls on strided views straight into the packed `qkv` (no
//! permute copies), the softmax in place in a per-thread `t × t` buffer with a vectorised `exp`,
//! the output written into its columns of `[b, t, d]` and the gradient into its columns of
//! `[b, t, 3d]`. Every (batch, head) task writes a disjoint set of output elements.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::super::math::{self, row_dot, row_max, row_sum};
use super::Shared;
use super::gemm::View;

/// The problem: `b` sequences of `t` tokens, `h` heads of width `hd`, `d = h·hd`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    pub b: usize,
    pub t: usize,
    pub h: usize,
    pub hd: usize,
}

impl Geometry {
    fn d(&self) -> usize {
        self.h * self.hd
    }

    fn scale(&self) -> f32 {
        1.0 / (self.hd as f32).sqrt()
    }

    /// Offsets of head `hi` of batch `bi`'s q in `[b, t, 3d]` and of its columns in `[b, t, d]`.
    fn offsets(&self, task: usize) -> (usize, usize) {
        let (bi, hi) = (task / self.h, task % self.h);
        (bi * self.t * 3 * self.d() + hi * self.hd, bi * self.t * self.d() + hi * self.hd)
    }
}

#[derive(Clone, Copy)]
pub(super) struct SharedRead(pub(super) *const f32);
// SAFETY: read only.
unsafe impl Send for SharedRead {}
unsafe impl Sync for SharedRead {}

/// `dst[m × n]` (row stride `dst_rs`) `= beta · lhs[m × k] · rhs[k × n]`, on this thread.
///
/// # Safety
/// The views must address `m × k` and `k × n` valid values, `dst` `m × n` writable ones that no
/// other thread touches meanwhile.
#[allow(clippy::too_many_arguments)] // a GEMM call: shapes, destination, operands, beta
pub(super) unsafe fn matmul(m: usize, n: usize, k: usize, dst: *mut f32, dst_rs: usize, lhs: View, rhs: View, beta: f32) {
    unsafe {
        gemm(m, n, k, dst, 1, dst_rs as isize, false, lhs.ptr, lhs.cs, lhs.rs, rhs.ptr, rhs.cs, rhs.rs, 0.0, beta, false, false, false, Parallelism::None)
    }
}

thread_local! {
    /// Two `t × t` buffers per thread, reused across calls (no fresh pages per task).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

multiversion! {
    /// Each row of the scores `s` (`rows × t`) becomes its softmax; `lse[i]` its log-sum-exp.
    pub(super) fn softmax_rows(s: &mut [f32], t: usize, lse: &mut [f32]) {
        for (row, l) in s.chunks_exact_mut(t).zip(lse.iter_mut()) {
            let max = row_max(row);
            for x in row.iter_mut() {
                *x = math::exp_neg(*x - max);
            }
            let sum = row_sum(row);
            let inv = 1.0 / sum;
            for x in row.iter_mut() {
                *x *= inv;
            }
            *l = max + sum.ln();
        }
    }
}

multiversion! {
    /// The scores `s` (`rows × t`) become the probabilities `exp(s − lse)`.
    pub(super) fn probabilities(s: &mut [f32], t: usize, lse: &[f32]) {
        for (row, &l) in s.chunks_exact_mut(t).zip(lse) {
            for x in row.iter_mut() {
                *x = math::exp_neg(*x - l);
            }
        }
    }
}

multiversion! {
    /// `dp` becomes `dS = P ⊙ (dP − rowsum(P ⊙ dP))`.
    pub(super) fn softmax_backward(p: &[f32], dp: &mut [f32], t: usize) {
        for (pr, dr) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)) {
            let row = row_dot(pr, dr);
            for (d, &p) in dr.iter_mut().zip(pr) {
                *d = p * (*d - row);
            }
        }
    }
}

/// `out` `[b, t, d]` and `lse` `[b, h, t]` from `qkv` `[b, t, 3d]`.
pub(super) fn forward(qkv: &[f32], g: Geometry, out: &mut [MaybeUninit<f32>], lse: &mut [f32]) {
    let (t, d, hd) = (g.t, g.d(), g.hd);
    assert!(qkv.len() == g.b * t * 3 * d && out.len() == g.b * t * d && lse.len() == g.b * g.h * t);
    let (src, dst) = (SharedRead(qkv.as_ptr()), Shared(out.as_mut_ptr().cast()));
    lse.par_chunks_mut(t.max(1)).enumerate().for_each(|(task, lse)| {
        let (src, dst) = (src, dst);
        let (at, out_at) = g.offsets(task);
        with_scratch(t * t, |s| {
            // SAFETY: the views stay inside `qkv` (rows of 3d, this head's hd columns) and
            // `out` (this task's columns), checked by the lengths above.
            unsafe {
                let q = View::rows(src.0.add(at), 3 * d);
                let k = View::rows(src.0.add(at + d), 3 * d);
                let v = View::rows(src.0.add(at + 2 * d), 3 * d);
                matmul(t, t, hd, s.as_mut_ptr(), t, q, k.t(), g.scale());
                softmax_rows(s, t, lse);
                matmul(t, hd, t, dst.0.add(out_at), d, View::rows(s.as_ptr(), t), v, 1.0);
            }
        });
    });
}

/// `dqkv` `[b, t, 3d]` from `qkv`, the forward's `lse` and `grad` = `∂L/∂out` `[b, t, d]`.
pub(super) fn backward(qkv: &[f32], lse: &[f32], grad: &[f32], g: Geometry, dqkv: &mut [MaybeUninit<f32>]) {
    let (t, d, hd) = (g.t, g.d(), g.hd);
    assert!(qkv.len() == g.b * t * 3 * d && dqkv.len() == qkv.len() && grad.len() == g.b * t * d && lse.len() == g.b * g.h * t);
    let (src, dy, dst) = (SharedRead(qkv.as_ptr()), SharedRead(grad.as_ptr()), Shared(dqkv.as_mut_ptr().cast()));
    (0..g.b * g.h).into_par_iter().for_each(|task| {
        let (src, dy, dst) = (src, dy, dst);
        let (at, out_at) = g.offsets(task);
        let lse = &lse[task * t..(task + 1) * t];
        with_scratch(2 * t * t, |buf| {
            let (p, dp) = buf.split_at_mut(t * t);
            // SAFETY: as in `forward`; each task writes only its head's columns of dqkv.
            unsafe {
                let q = View::rows(src.0.add(at), 3 * d);
                let k = View::rows(src.0.add(at + d), 3 * d);
                let v = View::rows(src.0.add(at + 2 * d), 3 * d);
                let d_out = View::rows(dy.0.add(out_at), d);
                matmul(t, t, hd, p.as_mut_ptr(), t, q, k.t(), g.scale());
                probabilities(p, t, lse);
                let pv = View::rows(p.as_ptr(), t);
                matmul(t, hd, t, dst.0.add(at + 2 * d), 3 * d, pv.t(), d_out, 1.0);
                matmul(t, t, hd, dp.as_mut_ptr(), t, d_out, v.t(), 1.0);
                softmax_backward(p, dp, t);
                let ds = View::rows(dp.as_ptr(), t);
                matmul(t, hd, t, dst.0.add(at), 3 * d, ds, k, g.scale());
                matmul(t, hd, t, dst.0.add(at + d), 3 * d, ds.t(), q, g.scale());
            }
        });
    });
}
