//! Resampling of a position-embedding grid to another grid size.
//!
//! Two conventions exist and checkpoints depend on the one they were trained with:
//! - [`Resample::BicubicAntialias`]: timm's `resample_abs_pos_embed`, i.e. PyTorch
//!   `F.interpolate(mode="bicubic", antialias=True, align_corners=False)` (separable Keys
//!   kernel with a = -0.5, support widened by the scale when shrinking, weights normalised);
//! - [`Resample::Bicubic`]: DINOv2 / transformers, `F.interpolate(mode="bicubic",
//!   align_corners=False)` without antialias (a = -0.75, four taps, edge-clamped).
//!
//! Both are linear maps, so a resampling is one `[new_h·new_w, old_h·old_w]` matrix (the
//! Kronecker product of a row and a column matrix). It is computed on the host once per
//! (grid, size) pair and applied as a matmul, which keeps it differentiable for full fine-tuning.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::{Tensor, TensorData, backend::Backend};
use serde::{Deserialize, Serialize};

/// How a position grid is resampled to a new size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Resample {
    /// PyTorch bicubic with antialias (timm).
    #[default]
    BicubicAntialias,
    /// PyTorch bicubic without antialias (DINOv2).
    Bicubic,
}

impl std::fmt::Display for Resample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resample::BicubicAntialias => "bicubic-antialias",
            Resample::Bicubic => "bicubic",
        })
    }
}

fn keys_cubic(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// The `[out_size, in_size]` matrix that resamples one axis (row-major).
pub fn axis_matrix(in_size: usize, out_size: usize, method: Resample) -> Vec<f64> {
    let mut m = vec![0.0f64; out_size * in_size];
    let scale = in_size as f64 / out_size as f64;
    match method {
        Resample::Bicubic => {
            const A: f64 = -0.75;
            for i in 0..out_size {
                let src = scale * (i as f64 + 0.5) - 0.5;
                let x0 = src.floor();
                let t = src - x0;
                let w = [keys_cubic(t + 1.0, A), keys_cubic(t, A), keys_cubic(1.0 - t, A), keys_cubic(2.0 - t, A)];
                for (k, wk) in w.iter().enumerate() {
                    let idx = (x0 as i64 - 1 + k as i64).clamp(0, in_size as i64 - 1) as usize;
                    m[i * in_size + idx] += wk;
                }
            }
        }
        Resample::BicubicAntialias => {
            const A: f64 = -0.5;
            let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
            let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
            for i in 0..out_size {
                let center = scale * (i as f64 + 0.5);
                // Truncation toward zero, as the C++ `int64_t` cast does.
                let xmin = ((center - support + 0.5) as i64).max(0) as usize;
                let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
                let mut total = 0.0;
                for j in xmin..xmax {
                    let w = keys_cubic((j as f64 - center + 0.5) * invscale, A);
                    m[i * in_size + j] = w;
                    total += w;
                }
                if total != 0.0 {
                    for j in xmin..xmax {
                        m[i * in_size + j] /= total;
                    }
                }
            }
        }
    }
    m
}

/// The `[new_h·new_w, old_h·old_w]` matrix resampling a row-major grid of tokens.
pub fn grid_matrix(from: (usize, usize), to: (usize, usize), method: Resample) -> Vec<f32> {
    let mh = axis_matrix(from.0, to.0, method);
    let mw = axis_matrix(from.1, to.1, method);
    let (n_in, n_out) = (from.0 * from.1, to.0 * to.1);
    let mut k = vec![0.0f32; n_out * n_in];
    for i in 0..to.0 {
        for j in 0..to.1 {
            let row = (i * to.1 + j) * n_in;
            for a in 0..from.0 {
                let wa = mh[i * from.0 + a];
                if wa == 0.0 {
                    continue;
                }
                for b in 0..from.1 {
                    k[row + a * from.1 + b] = (wa * mw[j * from.1 + b]) as f32;
                }
            }
        }
    }
    k
}

type GridKey = ((usize, usize), (usize, usize), Resample);

/// [`grid_matrix`], computed once per (from, to, method) for the whole process.
pub fn cached_grid_matrix(from: (usize, usize), to: (usize, usize), method: Resample) -> Arc<Vec<f32>> {
    static CACHE: OnceLock<Mutex<HashMap<GridKey, Arc<Vec<f32>>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    cache.entry((from, to, method)).or_insert_with(|| Arc::new(grid_matrix(from, to, method))).clone()
}

/// Resample `[old_h·old_w, d]` grid tokens on the host (used when loading a checkpoint).
pub fn resample_host(tokens: &[f32], d: usize, from: (usize, usize), to: (usize, usize), method: Resample) -> Vec<f32> {
    if from == to {
        return tokens.to_vec();
    }
    let k = grid_matrix(from, to, method);
    let (n_in, n_out) = (from.0 * from.1, to.0 * to.1);
    let mut out = vec![0.0f32; n_out * d];
    for r in 0..n_out {
        for c in 0..n_in {
            let w = k[r * n_in + c] as f64;
            if w == 0.0 {
                continue;
            }
            for e in 0..d {
                out[r * d + e] = (out[r * d + e] as f64 + w * tokens[c * d + e] as f64) as f32;
            }
        }
    }
    out
}

/// Resample `[batch, old_h·old_w, d]` grid tokens on the device (differentiable).
pub fn resample<B: Backend>(tokens: Tensor<B, 3>, from: (usize, usize), to: (usize, usize), method: Resample) -> Tensor<B, 3> {
    if from == to {
        return tokens;
    }
    let device = tokens.device();
    let k = cached_grid_matrix(from, to, method);
    let k = Tensor::<B, 2>::from_data(TensorData::new(k.to_vec(), [to.0 * to.1, from.0 * from.1]), &device);
    let [b, _, d] = tokens.dims();
    k.unsqueeze::<3>().expand([b, to.0 * to.1, from.0 * from.1]).matmul(tokens).reshape([b, to.0 * to.1, d])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_one_and_identity_at_same_size() {
        for method in [Resample::Bicubic, Resample::BicubicAntialias] {
            for (i, o) in [(37, 16), (4, 3), (5, 2), (3, 7), (16, 16)] {
                let m = axis_matrix(i, o, method);
                for r in 0..o {
                    let s: f64 = m[r * i..(r + 1) * i].iter().sum();
                    assert!((s - 1.0).abs() < 1e-12, "{method} {i}->{o} row {r} sums to {s}");
                }
            }
            let m = axis_matrix(6, 6, method);
            for r in 0..6 {
                for c in 0..6 {
                    let want = if r == c { 1.0 } else { 0.0 };
                    assert!((m[r * 6 + c] - want).abs() < 1e-12, "{method}: not identity at ({r},{c})");
                }
            }
        }
    }

    #[test]
    fn bicubic_upsampling_by_two_matches_keys_weights() {
        // 2x upsampling, no antialias: output 4 maps to source 0.5·4.5 − 0.5 = 1.75, so t = 0.75
        // and the taps are inputs 0..3 with the Keys kernel (a = -0.75) weights.
        let m = axis_matrix(4, 8, Resample::Bicubic);
        let a = -0.75f64;
        let t: f64 = 0.75;
        let w = [
            ((a * (t + 1.0) - 5.0 * a) * (t + 1.0) + 8.0 * a) * (t + 1.0) - 4.0 * a,
            ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0,
            ((a + 2.0) * (1.0 - t) - (a + 3.0)) * (1.0 - t) * (1.0 - t) + 1.0,
            ((a * (2.0 - t) - 5.0 * a) * (2.0 - t) + 8.0 * a) * (2.0 - t) - 4.0 * a,
        ];
        let row = &m[4 * 4..5 * 4];
        for k in 0..4 {
            assert!((row[k] - w[k]).abs() < 1e-12, "tap {k}: {} vs {}", row[k], w[k]);
        }
        // Output 0 maps to source -0.25: its taps -2..1 are clamped onto inputs 0 and 1.
        let t0: f64 = 0.75;
        let w0 = [
            ((a * (t0 + 1.0) - 5.0 * a) * (t0 + 1.0) + 8.0 * a) * (t0 + 1.0) - 4.0 * a,
            ((a + 2.0) * t0 - (a + 3.0)) * t0 * t0 + 1.0,
            ((a + 2.0) * (1.0 - t0) - (a + 3.0)) * (1.0 - t0) * (1.0 - t0) + 1.0,
            ((a * (2.0 - t0) - 5.0 * a) * (2.0 - t0) + 8.0 * a) * (2.0 - t0) - 4.0 * a,
        ];
        assert!((m[0] - (w0[0] + w0[1] + w0[2])).abs() < 1e-12 && (m[1] - w0[3]).abs() < 1e-12 && m[2] == 0.0);
    }

    #[test]
    fn antialiased_shrink_keeps_an_interior_ramp() {
        // A linear ramp stays linear in the interior under a symmetric, normalised kernel.
        let m = axis_matrix(15, 5, Resample::BicubicAntialias);
        let ramp: Vec<f64> = (0..15).map(|x| x as f64).collect();
        let out: Vec<f64> = (0..5).map(|r| (0..15).map(|c| m[r * 15 + c] * ramp[c]).sum()).collect();
        // Output 2 covers pixels 6..9 (centre 7.5 in continuous coordinates, pixel j sits at
        // j + 0.5) and its 12-pixel window is not clipped, so it returns the ramp's value 7.
        assert!((out[2] - 7.0).abs() < 1e-9, "{out:?}");
        // The kernel is wider than 3 taps when shrinking by 3: more than 4 non-zero weights.
        assert!(m[2 * 15..3 * 15].iter().filter(|w| **w != 0.0).count() > 4);
    }

    #[test]
    fn host_and_kronecker_agree() {
        let d = 3;
        let from = (4, 5);
        let to = (3, 2);
        let tokens: Vec<f32> = (0..from.0 * from.1 * d).map(|i| (i as f32 * 0.37).sin()).collect();
        let out = resample_host(&tokens, d, from, to, Resample::BicubicAntialias);
        // Separable reference: rows then columns.
        let mh = axis_matrix(from.0, to.0, Resample::BicubicAntialias);
        let mw = axis_matrix(from.1, to.1, Resample::BicubicAntialias);
        for i in 0..to.0 {
            for j in 0..to.1 {
                for e in 0..d {
                    let mut s = 0.0f64;
                    for a in 0..from.0 {
                        for b in 0..from.1 {
                            s += mh[i * from.0 + a] * mw[j * from.1 + b] * tokens[(a * from.1 + b) * d + e] as f64;
                        }
                    }
                    assert!((s as f32 - out[(i * to.1 + j) * d + e]).abs() < 1e-6);
                }
            }
        }
    }
}
