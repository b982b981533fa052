//! Swin's window attention kernel (Flex: gathered from the grid through the shift) against the
//! trait's default (burn's roll / partition / attention composition, on NdArray) and against f64
//! loops, forward and gradients (∂qkv and ∂bias, through `Autodiff`), on odd windows, grids,
//! shifts, head widths and bias blocks (one shared block, one per window, one per pair).

use burn::backend::{Autodiff, Flex, NdArray};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use mosa_kernels::{Kernels, Windows, window_attention};
use mosa_testkit::{host, on, scaled_worst, spread_values, worst};

/// (b, H, W, heads, hd, window, shift, bias blocks)
const SHAPES: [[usize; 8]; 6] = [
    [1, 3, 3, 1, 1, 3, 0, 1],
    [2, 6, 9, 2, 5, 3, 1, 6],
    [1, 14, 7, 3, 4, 7, 3, 2],
    [2, 8, 8, 2, 3, 4, 2, 1],
    [1, 10, 15, 2, 17, 5, 4, 3],
    [2, 14, 14, 3, 32, 7, 3, 4],
];

/// The grid rows of window `j`'s tokens, row-major inside the window: the token at
/// `((y + s) mod H, (x + s) mod W)` (timm: `roll(x, −s)`, then partition).
fn window_rows(h: usize, w: usize, ws: usize, s: usize, j: usize) -> Vec<usize> {
    let (wy, wx) = (j / (w / ws), j % (w / ws));
    (0..ws * ws).map(|r| ((wy * ws + r / ws + s) % h) * w + (wx * ws + r % ws + s) % w).collect()
}

/// Inputs: qkv and a bias with the mask's −100 in about a fifth of its entries.
fn inputs(shape: [usize; 8], seed: u64) -> (Vec<f32>, Vec<f32>) {
    let [b, h, w, heads, hd, ws, _, nb] = shape;
    let qkv = spread_values::<Flex>(b * h * w * 3 * heads * hd, seed, 1.0);
    let n = ws * ws;
    let mut bias = spread_values::<Flex>(nb * heads * n * n, seed + 100, 0.5);
    for (i, x) in bias.iter_mut().enumerate() {
        if nb > 1 && (i * 7 + seed as usize).is_multiple_of(5) {
            *x -= 100.0;
        }
    }
    (qkv, bias)
}

/// `(out, ∂qkv, ∂bias)` of `L = Σ w ⊙ out` in f64 loops, from the softmax's Jacobian.
fn reference(qkv: &[f32], bias: &[f32], wgt: &[f32], shape: [usize; 8]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let [b, h, w, heads, hd, ws, s, nb] = shape;
    let (c, n) = (heads * hd, ws * ws);
    let windows = (h / ws) * (w / ws);
    let scale = 1.0 / (hd as f64).sqrt();
    let (mut out, mut dqkv, mut dbias) = (vec![0f64; b * h * w * c], vec![0f64; qkv.len()], vec![0f64; bias.len()]);
    let at = |row: usize, part: usize, head: usize, k: usize| qkv[row * 3 * c + part * c + head * hd + k] as f64;
    for bi in 0..b {
        for j in 0..windows {
            let rows: Vec<usize> = window_rows(h, w, ws, s, j).into_iter().map(|r| bi * h * w + r).collect();
            for head in 0..heads {
                let blk = ((j % nb) * heads + head) * n * n;
                for i in 0..n {
                    let sc: Vec<f64> = (0..n)
                        .map(|l| (0..hd).map(|k| at(rows[i], 0, head, k) * at(rows[l], 1, head, k)).sum::<f64>() * scale + bias[blk + i * n + l] as f64)
                        .collect();
                    let max = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = sc.iter().map(|x| (x - max).exp()).sum();
                    let p: Vec<f64> = sc.iter().map(|x| (x - max).exp() / z).collect();
                    let dy = |k: usize| wgt[rows[i] * c + head * hd + k] as f64;
                    for k in 0..hd {
                        out[rows[i] * c + head * hd + k] = (0..n).map(|l| p[l] * at(rows[l], 2, head, k)).sum();
                    }
                    let dp: Vec<f64> = (0..n).map(|l| (0..hd).map(|k| dy(k) * at(rows[l], 2, head, k)).sum()).collect();
                    let mean: f64 = (0..n).map(|l| p[l] * dp[l]).sum();
                    for l in 0..n {
                        let ds = p[l] * (dp[l] - mean);
                        dbias[blk + i * n + l] += ds;
                        for k in 0..hd {
                            let idx = |row: usize, part: usize| row * 3 * c + part * c + head * hd + k;
                            dqkv[idx(rows[l], 2)] += p[l] * dy(k);
                            dqkv[idx(rows[i], 0)] += ds * scale * at(rows[l], 1, head, k);
                            dqkv[idx(rows[l], 1)] += ds * scale * at(rows[i], 0, head, k);
                        }
                    }
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (f(out), f(dqkv), f(dbias))
}

fn dims(shape: [usize; 8]) -> ([usize; 4], [usize; 4], [usize; 4], Windows) {
    let [b, h, w, heads, hd, ws, s, nb] = shape;
    let n = ws * ws;
    ([b, h, w, 3 * heads * hd], [nb, heads, n, n], [b, h, w, heads * hd], Windows { heads, window: ws, shift: s })
}

#[test]
fn window_attention_forward_matches_the_default_path_and_f64_loops() {
    for (k, shape) in SHAPES.into_iter().enumerate() {
        let (qkv, bias) = inputs(shape, k as u64);
        let (sq, sb, so, win) = dims(shape);
        let ours = host(window_attention(on::<Flex, 4>(&qkv, sq), on::<Flex, 4>(&bias, sb), win));
        let default = host(window_attention(on::<NdArray, 4>(&qkv, sq), on::<NdArray, 4>(&bias, sb), win));
        let (exact, _, _) = reference(&qkv, &bias, &vec![0.0; so.iter().product()], shape);
        assert!(worst(&ours, &exact) < 2e-5, "{shape:?}: vs f64 {}", worst(&ours, &exact));
        assert!(worst(&default, &exact) < 2e-5, "{shape:?}: the default vs f64 {}", worst(&default, &exact));
        // the log-sum-exp the backward reuses, against the default's
        let prim = |v: &[f32], s: [usize; 4]| on::<Flex, 4>(v, s).into_primitive().tensor();
        let nprim = |v: &[f32], s: [usize; 4]| on::<NdArray, 4>(v, s).into_primitive().tensor();
        let (_, lse) = <Flex as Kernels>::window_attention_with_lse(prim(&qkv, sq), prim(&bias, sb), win);
        let (_, lse_default) = <NdArray as Kernels>::window_attention_with_lse(nprim(&qkv, sq), nprim(&bias, sb), win);
        let lse = host(Tensor::<Flex, 3>::from_primitive(TensorPrimitive::Float(lse)));
        let lse_default = host(Tensor::<NdArray, 3>::from_primitive(TensorPrimitive::Float(lse_default)));
        assert!(worst(&lse, &lse_default) < 2e-6, "{shape:?}: lse {}", worst(&lse, &lse_default));
    }
    // a non-contiguous qkv (a permuted view) reads the same values
    let shape = SHAPES[1];
    let (qkv, bias) = inputs(shape, 9);
    let (sq, sb, so, win) = dims(shape);
    let [b, h, w, c3] = sq;
    let view = on::<Flex, 4>(&qkv, [b, c3, h, w]).permute([0, 2, 3, 1]);
    let dense = host(view.clone());
    let (exact, _, _) = reference(&dense, &bias, &vec![0.0; so.iter().product()], shape);
    assert!(worst(&host(window_attention(view, on::<Flex, 4>(&bias, sb), win)), &exact) < 2e-5);
}

#[test]
fn window_attention_gradients_match_f64_and_burns_autodiff_of_the_composition() {
    type AF = Autodiff<Flex>;
    type AN = Autodiff<NdArray>;
    for (k, shape) in SHAPES.into_iter().enumerate() {
        let (qkv, bias) = inputs(shape, 20 + k as u64);
        let (sq, sb, so, win) = dims(shape);
        let wgt = spread_values::<Flex>(so.iter().product(), 60 + k as u64, 1.0);
        let (_, dq_exact, db_exact) = reference(&qkv, &bias, &wgt, shape);
        // L = Σ w ⊙ window_attention(qkv, bias): our fused backward on Flex, burn's autodiff of the
        // composition op by op on NdArray (it has no fused kernel)
        macro_rules! grads {
            ($B:ty, $bias_grad:expr) => {{
                let x = on::<$B, 4>(&qkv, sq).require_grad();
                let bb = on::<$B, 4>(&bias, sb);
                let bb = if $bias_grad { bb.require_grad() } else { bb };
                let g = (window_attention(x.clone(), bb.clone(), win) * on::<$B, 4>(&wgt, so)).sum().backward();
                (host(x.grad(&g).unwrap()), bb.grad(&g).map(host))
            }};
        }
        let (dq_ours, db_ours) = grads!(AF, true);
        let (dq_burn, db_burn) = grads!(AN, true);
        let (db_ours, db_burn) = (db_ours.unwrap(), db_burn.unwrap());
        let (e_ours, e_burn) = (scaled_worst(&dq_ours, &dq_exact), scaled_worst(&dq_burn, &dq_exact));
        assert!(e_ours < 2e-5 && e_ours <= 2.0 * e_burn.max(1e-6), "{shape:?}: ∂qkv vs f64 {e_ours} (burn's autodiff {e_burn})");
        assert!(scaled_worst(&db_ours, &db_exact) < 2e-5, "{shape:?}: ∂bias vs f64 {}", scaled_worst(&db_ours, &db_exact));
        assert!(scaled_worst(&dq_ours, &dq_burn) < 5e-4 && scaled_worst(&db_ours, &db_burn) < 5e-4, "{shape:?}: vs burn's autodiff");
        // a frozen bias (the PEFT case): no bias gradient, the same ∂qkv
        let (dq_frozen, db_frozen) = grads!(AF, false);
        assert!(db_frozen.is_none());
        assert_eq!(dq_frozen, dq_ours, "{shape:?}");
        // the trait's default backward (the composed formula other backends run) against f64
        let prim = |v: &[f32], s: [usize; 4]| on::<NdArray, 4>(v, s).into_primitive().tensor();
        let (_, lse) = <NdArray as Kernels>::window_attention_with_lse(prim(&qkv, sq), prim(&bias, sb), win);
        let (dq, db) = <NdArray as Kernels>::window_attention_backward(prim(&qkv, sq), prim(&bias, sb), lse, prim(&wgt, so), win, true);
        let dq = host(Tensor::<NdArray, 4>::from_primitive(TensorPrimitive::Float(dq)));
        let db = host(Tensor::<NdArray, 4>::from_primitive(TensorPrimitive::Float(db.unwrap())));
        assert!(scaled_worst(&dq, &dq_exact) < 1e-4, "{shape:?}: default ∂qkv vs f64 {}", scaled_worst(&dq, &dq_exact));
        assert!(scaled_worst(&db, &db_exact) < 1e-4, "{shape:?}: default ∂bias vs f64 {}", scaled_worst(&db, &db_exact));
    }
}
