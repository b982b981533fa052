//! Flex's depthwise convolution over a channels-last grid (`depthwise_conv.rs` has the maths):
//! one rayon task per output row; for each of the `k` input rows it reads and each of the `k`
//! taps, a multiply-add of the tap's `C` weights into every output pixel of the row, a loop over
//! contiguous channels that compiles to SIMD. The weights are laid out tap-major (`[k·k, C]`)
//! once per call. `∂x` is the same loop with the kernel flipped; `∂weight` and `∂bias` are
//! accumulated per task over its rows and then summed.

use rayon::prelude::*;

use crate::depthwise_conv::Geometry;

multiversion! {
    /// `out[xo, :] += Σ_j taps[j, :] ⊙ row[xo + j − p, :]` for the output pixels of one row, one
    /// input row `row` (`wi` pixels) and its `k` taps (`[k, c]`).
    fn tap_row(out: &mut [f32], row: &[f32], taps: &[f32], c: usize, k: usize, p: usize, wi: usize) {
        let wo = out.len() / c;
        for j in 0..k {
            let tap = &taps[j * c..(j + 1) * c];
            // output pixels whose input xo + j − p lies in 0..wi
            let lo = p.saturating_sub(j);
            let hi = (wi + p).saturating_sub(j).min(wo);
            for xo in lo..hi {
                let xi = xo + j - p;
                let o = &mut out[xo * c..(xo + 1) * c];
                let r = &row[xi * c..(xi + 1) * c];
                for ch in 0..c {
                    o[ch] += tap[ch] * r[ch];
                }
            }
        }
    }
}

multiversion! {
    /// `acc[j, :] += Σ_xo g[xo, :] ⊙ row[xo + j − p, :]` over one output row's gradient `g` and
    /// the input row `row` it read through tap row `i` (`acc` is that tap row, `[k, c]`).
    fn tap_grad_row(acc: &mut [f32], g: &[f32], row: &[f32], c: usize, k: usize, p: usize, wi: usize) {
        let wo = g.len() / c;
        for j in 0..k {
            let a = &mut acc[j * c..(j + 1) * c];
            let lo = p.saturating_sub(j);
            let hi = (wi + p).saturating_sub(j).min(wo);
            for xo in lo..hi {
                let xi = xo + j - p;
                let gr = &g[xo * c..(xo + 1) * c];
                let r = &row[xi * c..(xi + 1) * c];
                for ch in 0..c {
                    a[ch] += gr[ch] * r[ch];
                }
            }
        }
    }
}

multiversion! {
    /// `acc += g` element-wise.
    fn add_into(acc: &mut [f32], g: &[f32]) {
        for (a, &v) in acc.iter_mut().zip(g) {
            *a += v;
        }
    }
}

/// `weight` `[c, 1, k, k]` as taps `[k·k, c]`, flipped (tap `(i, j)` ← `(k−1−i, k−1−j)`) when asked.
fn taps(weight: &[f32], c: usize, k: usize, flip: bool) -> Vec<f32> {
    let mut t = vec![0f32; k * k * c];
    for ch in 0..c {
        for tap in 0..k * k {
            let src = if flip { k * k - 1 - tap } else { tap };
            t[tap * c + ch] = weight[ch * k * k + src];
        }
    }
    t
}

/// The convolution of `x` `[b, h, w, c]` with tap-major `taps` and padding `p`, plus `bias`:
/// `[b, ho, wo, c]`. Each task starts its output row from the bias (or zeros) and accumulates
/// into it, so the output is written once, not zeroed first.
#[allow(clippy::too_many_arguments)] // the input, its sizes, the taps, the bias and the output sizes
fn convolve(x: &[f32], [b, h, w, c]: [usize; 4], taps: &[f32], k: usize, p: usize, bias: Option<&[f32]>, [ho, wo]: [usize; 2]) -> Vec<f32> {
    assert!(x.len() == b * h * w * c && taps.len() == k * k * c && bias.is_none_or(|b| b.len() == c));
    let n = b * ho * wo * c;
    let mut out = Vec::<f32>::with_capacity(n);
    out.spare_capacity_mut().par_chunks_mut((wo * c).max(1)).enumerate().for_each(|(r, o)| {
        let (bi, yo) = (r / ho, r % ho);
        match bias {
            Some(bias) => o.chunks_exact_mut(c).for_each(|px| px.iter_mut().zip(bias).for_each(|(d, &v)| _ = d.write(v))),
            None => o.iter_mut().for_each(|d| _ = d.write(0.0)),
        }
        // SAFETY: every element of `o` was initialised just above.
        let o = unsafe { std::slice::from_raw_parts_mut(o.as_mut_ptr().cast::<f32>(), o.len()) };
        for i in 0..k {
            // input row yo + i − p
            let Some(yi) = (yo + i).checked_sub(p).filter(|&y| y < h) else { continue };
            let row = &x[(bi * h + yi) * w * c..(bi * h + yi + 1) * w * c];
            tap_row(o, row, &taps[i * k * c..(i + 1) * k * c], c, k, p, w);
        }
    });
    // SAFETY: the rows above cover all n elements (c > 0; with c = 0, n = 0) and initialised each.
    unsafe { out.set_len(n) };
    out
}

/// `out` `[b, ho, wo, c]` from `x`, `weight` `[c, 1, k, k]` and `bias` `[c]`.
pub(super) fn forward(x: &[f32], weight: &[f32], bias: &[f32], g: Geometry) -> Vec<f32> {
    convolve(x, [g.b, g.h, g.w, g.c], &taps(weight, g.c, g.k, false), g.k, g.p, Some(bias), [g.ho, g.wo])
}

/// `∂x` `[b, h, w, c]` from `grad` `[b, ho, wo, c]`: the convolution with the flipped kernel and
/// padding `k − 1 − p`.
pub(super) fn backward_x(weight: &[f32], grad: &[f32], g: Geometry) -> Vec<f32> {
    // h + 2p − k + 1 = ho, so the input side is ho + 2(k − 1 − p) − k + 1 = h (the caller
    // checked p < k)
    let p = g.k - 1 - g.p;
    convolve(grad, [g.b, g.ho, g.wo, g.c], &taps(weight, g.c, g.k, true), g.k, p, None, [g.h, g.w])
}

/// `(∂weight [c, 1, k, k], ∂bias [c])` from `x` and `grad`, each when asked.
pub(super) fn backward_params(x: &[f32], grad: &[f32], g: Geometry, need: [bool; 2]) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (c, k, p) = (g.c, g.k, g.p);
    let kkc = k * k * c;
    let acc = (0..g.b * g.ho)
        .into_par_iter()
        .fold(
            || vec![0f32; kkc + c],
            |mut acc, r| {
                let (bi, yo) = (r / g.ho, r % g.ho);
                let gr = &grad[r * g.wo * c..(r + 1) * g.wo * c];
                let (dw, db) = acc.split_at_mut(kkc);
                if need[1] {
                    gr.chunks_exact(c).for_each(|px| add_into(db, px));
                }
                if need[0] {
                    for i in 0..k {
                        let Some(yi) = (yo + i).checked_sub(p).filter(|&y| y < g.h) else { continue };
                        let row = &x[(bi * g.h + yi) * g.w * c..(bi * g.h + yi + 1) * g.w * c];
                        tap_grad_row(&mut dw[i * k * c..(i + 1) * k * c], gr, row, c, k, p, g.w);
                    }
                }
                acc
            },
        )
        .reduce(
            || vec![0f32; kkc + c],
            |mut a, b| {
                add_into(&mut a, &b);
                a
            },
        );
    let dw = need[0].then(|| {
        let mut w = vec![0f32; kkc];
        for tap in 0..k * k {
            for ch in 0..c {
                w[ch * k * k + tap] = acc[tap * c + ch];
            }
        }
        w
    });
    (dw, need[1].then(|| acc[kkc..].to_vec()))
}
