//! Flex's window attention (`window_attention.rs` has the maths): one rayon task per (image,
//! window, head). Each gathers its window's q, k, v columns from the token grid through the
//! cyclic shift (the partition and the rolls are index arithmetic: no grid-sized copies), starts
//! the scores from the bias block's rows, adds `q·kᵀ/√hd` with one GEMM, takes the softmax in
//! place, and scatters `P·v` back to the tokens' own rows. Tasks write disjoint elements: each
//! token is in exactly one window, each head owns its columns. Tasks are per head, not per window:
//! Swin's last stage has one window per image, so at batch 1 a task per window would leave one
//! thread busy where its heads give every thread work; each task recomputes its window's `w²`
//! token rows, a few hundred index operations beside a task's `2·w⁴·hd`-FLOP products.

use std::mem::MaybeUninit;

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::Shared;
use super::attention::{matmul, probabilities, softmax_backward, softmax_rows, with_scratch};
use super::gemm::View;
use crate::window_attention::{Grid, Windows};

/// Where the task's window lives and which head it takes.
#[derive(Clone, Copy)]
struct Task {
    /// grid rows of the window's `n` tokens start here: image offset in rows
    image_row: usize,
    /// window row and column in the window grid
    wy: usize,
    wx: usize,
    /// the window's index within its image (the bias block is `window mod nb`)
    window: usize,
    head: usize,
}

impl Task {
    fn new(g: &Grid, win: Windows, task: usize) -> Self {
        let (bw, head) = (task / win.heads, task % win.heads);
        let (bi, window) = (bw / g.windows, bw % g.windows);
        let per_row = g.w / win.window;
        Task { image_row: bi * g.h * g.w, wy: window / per_row, wx: window % per_row, window, head }
    }

    /// The grid row of the window's token `r` (timm's `roll(−s)`: the token at `(y + s, x + s)`).
    #[inline]
    fn row(&self, g: &Grid, win: Windows, r: usize) -> usize {
        let (ws, s) = (win.window, win.shift);
        let y = (self.wy * ws + r / ws + s) % g.h;
        let x = (self.wx * ws + r % ws + s) % g.w;
        self.image_row + y * g.w + x
    }
}

/// `dst[m × n]` (row stride `n`) `+= beta · lhs · rhs`, on this thread.
///
/// # Safety
/// As [`matmul`]'s.
unsafe fn matmul_add(m: usize, n: usize, k: usize, dst: *mut f32, lhs: View, rhs: View, beta: f32) {
    unsafe { gemm(m, n, k, dst, 1, n as isize, true, lhs.ptr, lhs.cs, lhs.rs, rhs.ptr, rhs.cs, rhs.rs, 1.0, beta, false, false, false, Parallelism::None) }
}

/// Copies the window's `hd` columns at `col` of each token's row of `src` (row width `width`)
/// into `dst` `[n, hd]`.
fn gather(src: &[f32], width: usize, col: usize, rows: &[usize], hd: usize, dst: &mut [f32]) {
    for (d, &row) in dst.chunks_exact_mut(hd).zip(rows) {
        let at = row * width + col;
        d.copy_from_slice(&src[at..at + hd]);
    }
}

/// Writes `src` `[n, hd]` into the `hd` columns at `col` of each token's row of `dst`.
///
/// # Safety
/// `dst` must hold every `row · width + col + hd` addressed, and no other thread may write those
/// elements meanwhile.
unsafe fn scatter(src: &[f32], dst: Shared, width: usize, col: usize, rows: &[usize], hd: usize) {
    for (s, &row) in src.chunks_exact(hd).zip(rows) {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), dst.0.add(row * width + col), hd) };
    }
}

/// Gathers the window's q, k, v (this head's `hd` columns at `col` of each part) into `q`, `k`,
/// `v` `[n, hd]` and writes its scores with the bias block added, `s = bias + q·kᵀ/√hd` `[n, n]`.
fn biased_scores(qkv: &[f32], bias: &[f32], rows: &[usize], (c, col): (usize, usize), [s, q, k, v]: [&mut [f32]; 4]) {
    let (n, hd) = (rows.len(), q.len() / rows.len().max(1));
    for (part, dst) in [&mut *q, &mut *k, &mut *v].into_iter().enumerate() {
        gather(qkv, 3 * c, part * c + col, rows, hd, dst);
    }
    s.copy_from_slice(bias);
    // SAFETY: q and k are `[n, hd]`, s `[n, n]`, all this task's own buffers.
    unsafe { matmul_add(n, n, hd, s.as_mut_ptr(), View::row_major(q, hd), View::row_major(k, hd).t(), 1.0 / (hd as f32).sqrt()) };
}

/// `out` `[b, H, W, c]` and `lse` `[b·nW, heads, n]` from `qkv` `[b, H, W, 3c]` and `bias`
/// `[nb, heads, n, n]`.
pub(super) fn forward(qkv: &[f32], bias: &[f32], g: Grid, win: Windows, out: &mut [MaybeUninit<f32>], lse: &mut [f32]) {
    let (c, heads, n) = (g.c, win.heads, win.window * win.window);
    let hd = c / heads;
    assert!(qkv.len() == g.b * g.h * g.w * 3 * c && out.len() == g.b * g.h * g.w * c && bias.len() == g.nb * heads * n * n);
    assert!(lse.len() == g.b * g.windows * heads * n);
    let dst = Shared(out.as_mut_ptr().cast());
    lse.par_chunks_mut(n).enumerate().for_each(|(task, lse)| {
        let out = &dst;
        let t = Task::new(&g, win, task);
        let rows: Vec<usize> = (0..n).map(|r| t.row(&g, win, r)).collect();
        let block = ((t.window % g.nb) * heads + t.head) * n * n;
        with_scratch(4 * n * hd + n * n, |buf| {
            let (s, rest) = buf.split_at_mut(n * n);
            let (q, rest) = rest.split_at_mut(n * hd);
            let (k, rest) = rest.split_at_mut(n * hd);
            let (v, o) = rest.split_at_mut(n * hd);
            let col = t.head * hd;
            biased_scores(qkv, &bias[block..block + n * n], &rows, (c, col), [&mut *s, q, k, &mut *v]);
            // SAFETY: the views address the task's own scratch buffers of these sizes; the
            // scattered rows are this window's tokens, the columns this head's.
            unsafe {
                softmax_rows(s, n, lse);
                matmul(n, hd, n, o.as_mut_ptr(), hd, View::row_major(s, n), View::row_major(v, hd), 1.0);
                scatter(o, *out, c, col, &rows, hd);
            }
        });
    });
}

/// `dqkv` `[b, H, W, 3c]` and, into `ds` `[b·nW, heads, n, n]` when given, each task's `dS`.
#[allow(clippy::too_many_arguments)] // the forward's inputs, its lse, the gradient and two outputs
pub(super) fn backward(qkv: &[f32], bias: &[f32], lse: &[f32], grad: &[f32], g: Grid, win: Windows, dqkv: &mut [MaybeUninit<f32>], ds: Option<&mut [f32]>) {
    let (c, heads, n) = (g.c, win.heads, win.window * win.window);
    let hd = c / heads;
    let tasks = g.b * g.windows * heads;
    assert!(qkv.len() == g.b * g.h * g.w * 3 * c && dqkv.len() == qkv.len() && grad.len() == g.b * g.h * g.w * c);
    assert!(bias.len() == g.nb * heads * n * n && lse.len() == tasks * n && ds.as_ref().is_none_or(|d| d.len() == tasks * n * n));
    let scale = 1.0 / (hd as f32).sqrt();
    let dst = Shared(dqkv.as_mut_ptr().cast());
    let ds_out = ds.map(|d| Shared(d.as_mut_ptr()));
    (0..tasks).into_par_iter().for_each(|task| {
        let (dqkv, ds) = (&dst, &ds_out);
        let t = Task::new(&g, win, task);
        let rows: Vec<usize> = (0..n).map(|r| t.row(&g, win, r)).collect();
        let block = ((t.window % g.nb) * heads + t.head) * n * n;
        let lse = &lse[task * n..(task + 1) * n];
        with_scratch(2 * n * n + 7 * n * hd, |buf| {
            let (p, rest) = buf.split_at_mut(n * n);
            let (dp, rest) = rest.split_at_mut(n * n);
            let (q, rest) = rest.split_at_mut(n * hd);
            let (k, rest) = rest.split_at_mut(n * hd);
            let (v, rest) = rest.split_at_mut(n * hd);
            let (d_out, rest) = rest.split_at_mut(n * hd);
            let (dq, rest) = rest.split_at_mut(n * hd);
            let (dk, dv) = rest.split_at_mut(n * hd);
            let col = t.head * hd;
            biased_scores(qkv, &bias[block..block + n * n], &rows, (c, col), [&mut *p, &mut *q, &mut *k, &mut *v]);
            gather(grad, c, col, &rows, hd, d_out);
            let rm = |x: &[f32], cols: usize| View::row_major(x, cols);
            // SAFETY: as in `forward`; `ds` rows `task·n·n ..` are this task's alone.
            unsafe {
                probabilities(p, n, lse);
                matmul(n, hd, n, dv.as_mut_ptr(), hd, rm(p, n).t(), rm(d_out, hd), 1.0);
                matmul(n, n, hd, dp.as_mut_ptr(), n, rm(d_out, hd), rm(v, hd).t(), 1.0);
                softmax_backward(p, dp, n);
                if let Some(ds) = ds {
                    std::ptr::copy_nonoverlapping(dp.as_ptr(), ds.0.add(task * n * n), n * n);
                }
                matmul(n, hd, n, dq.as_mut_ptr(), hd, rm(dp, n), rm(k, hd), scale);
                matmul(n, hd, n, dk.as_mut_ptr(), hd, rm(dp, n).t(), rm(q, hd), scale);
                scatter(dq, *dqkv, 3 * c, col, &rows, hd);
                scatter(dk, *dqkv, 3 * c, c + col, &rows, hd);
                scatter(dv, *dqkv, 3 * c, 2 * c + col, &rows, hd);
            }
        });
    });
}

/// `∂L/∂bias` `[nb, heads, n, n]`: the tasks' `dS` summed over the images and windows that share
/// each bias block.
pub(super) fn bias_gradient(ds: &[f32], g: Grid, win: Windows) -> Vec<f32> {
    let (heads, n) = (win.heads, win.window * win.window);
    let mut out = vec![0f32; g.nb * heads * n * n];
    out.par_chunks_mut(n * n).enumerate().for_each(|(blk, acc)| {
        let (m, head) = (blk / heads, blk % heads);
        for bi in 0..g.b {
            for window in (m..g.windows).step_by(g.nb) {
                let task = (bi * g.windows + window) * heads + head;
                for (a, &d) in acc.iter_mut().zip(&ds[task * n * n..(task + 1) * n * n]) {
                    *a += d;
                }
            }
        }
    });
    out
}
