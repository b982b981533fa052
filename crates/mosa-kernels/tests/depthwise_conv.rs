//! The channels-last depthwise convolution kernel (Flex) against the trait's default (burn's
//! grouped `conv2d` between permutes, on NdArray) and against f64 loops, forward and gradients
//! (∂x, ∂weight, ∂bias through `Autodiff`), on odd kernels, grids smaller than the kernel, no
//! padding, channel counts around the SIMD width, and a non-contiguous input.

use burn::backend::{Autodiff, Flex, NdArray};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use mosa_kernels::{Kernels, depthwise_conv};
use mosa_testkit::{host, on, scaled_worst, spread_values, worst};

/// (b, H, W, C, k, padding)
const SHAPES: [[usize; 6]; 7] =
    [[1, 1, 1, 1, 1, 0], [2, 5, 7, 3, 3, 1], [1, 6, 9, 17, 7, 3], [2, 7, 7, 33, 5, 2], [1, 4, 5, 16, 3, 0], [1, 3, 2, 5, 5, 4], [2, 14, 14, 96, 7, 3]];

fn out_side(side: usize, k: usize, p: usize) -> usize {
    side + 2 * p + 1 - k
}

/// `(out, ∂x, ∂weight, ∂bias)` of `L = Σ w ⊙ conv(x)` in f64 loops.
fn reference(x: &[f32], weight: &[f32], bias: &[f32], wgt: &[f32], [b, h, w, c, k, p]: [usize; 6]) -> [Vec<f32>; 4] {
    let (ho, wo) = (out_side(h, k, p), out_side(w, k, p));
    let mut out = vec![0f64; b * ho * wo * c];
    let (mut dx, mut dw, mut db) = (vec![0f64; x.len()], vec![0f64; weight.len()], vec![0f64; c]);
    for bi in 0..b {
        for y in 0..ho {
            for xo in 0..wo {
                for ch in 0..c {
                    let o = ((bi * ho + y) * wo + xo) * c + ch;
                    let g = wgt[o] as f64;
                    let mut acc = bias[ch] as f64;
                    db[ch] += g;
                    for i in 0..k {
                        for j in 0..k {
                            let (yi, xi) = ((y + i) as i64 - p as i64, (xo + j) as i64 - p as i64);
                            if yi < 0 || xi < 0 || yi >= h as i64 || xi >= w as i64 {
                                continue;
                            }
                            let at = ((bi * h + yi as usize) * w + xi as usize) * c + ch;
                            let wi = ch * k * k + i * k + j;
                            acc += weight[wi] as f64 * x[at] as f64;
                            dx[at] += weight[wi] as f64 * g;
                            dw[wi] += x[at] as f64 * g;
                        }
                    }
                    out[o] = acc;
                }
            }
        }
    }
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    [f(out), f(dx), f(dw), f(db)]
}

fn inputs(shape: [usize; 6], seed: u64) -> [Vec<f32>; 4] {
    let [b, h, w, c, k, p] = shape;
    let n_out = b * out_side(h, k, p) * out_side(w, k, p) * c;
    [
        spread_values::<Flex>(b * h * w * c, seed, 1.0),
        spread_values::<Flex>(c * k * k, seed + 1, 0.3),
        spread_values::<Flex>(c, seed + 2, 1.0),
        spread_values::<Flex>(n_out, seed + 3, 1.0),
    ]
}

fn out_dims([b, h, w, c, k, p]: [usize; 6]) -> [usize; 4] {
    [b, out_side(h, k, p), out_side(w, k, p), c]
}

#[test]
fn depthwise_conv_forward_matches_the_default_path_and_f64_loops() {
    for (s, shape) in SHAPES.into_iter().enumerate() {
        let [b, h, w, c, k, p] = shape;
        let [x, weight, bias, _] = inputs(shape, 10 * s as u64);
        let run = |flex: bool| {
            if flex {
                host(depthwise_conv(on::<Flex, 4>(&x, [b, h, w, c]), on::<Flex, 4>(&weight, [c, 1, k, k]), Some(on::<Flex, 1>(&bias, [c])), p))
            } else {
                host(depthwise_conv(on::<NdArray, 4>(&x, [b, h, w, c]), on::<NdArray, 4>(&weight, [c, 1, k, k]), Some(on::<NdArray, 1>(&bias, [c])), p))
            }
        };
        let (ours, default) = (run(true), run(false));
        let [exact, ..] = reference(&x, &weight, &bias, &vec![0.0; out_dims(shape).iter().product()], shape);
        assert_eq!(ours.len(), exact.len(), "{shape:?}");
        assert!(worst(&ours, &exact) < 2e-6, "{shape:?}: vs f64 {}", worst(&ours, &exact));
        assert!(worst(&default, &exact) < 2e-5, "{shape:?}: the default vs f64 {}", worst(&default, &exact));
    }
    // a non-contiguous input (an NCHW tensor seen channels last) and no bias
    let [b, h, w, c, k, p] = SHAPES[3];
    let [x, weight, _, _] = inputs(SHAPES[3], 7);
    let view = on::<Flex, 4>(&x, [b, c, h, w]).permute([0, 2, 3, 1]);
    let dense = host(view.clone());
    let [exact, ..] = reference(&dense, &weight, &vec![0.0; c], &vec![0.0; out_dims(SHAPES[3]).iter().product()], SHAPES[3]);
    let ours = host(depthwise_conv(view, on::<Flex, 4>(&weight, [c, 1, k, k]), None, p));
    assert!(worst(&ours, &exact) < 2e-6, "view: {}", worst(&ours, &exact));
}

#[test]
fn depthwise_conv_gradients_match_f64_and_burns_autodiff() {
    type AF = Autodiff<Flex>;
    type AN = Autodiff<NdArray>;
    for (s, shape) in SHAPES.into_iter().enumerate() {
        let [b, h, w, c, k, p] = shape;
        let [x, weight, bias, wgt] = inputs(shape, 100 + 10 * s as u64);
        let [_, dx_exact, dw_exact, db_exact] = reference(&x, &weight, &bias, &wgt, shape);
        macro_rules! grads {
            ($B:ty, $params:expr) => {{
                let xt = on::<$B, 4>(&x, [b, h, w, c]).require_grad();
                let (wt, bt) = (on::<$B, 4>(&weight, [c, 1, k, k]), on::<$B, 1>(&bias, [c]));
                let (wt, bt) = if $params { (wt.require_grad(), bt.require_grad()) } else { (wt, bt) };
                let g = (depthwise_conv(xt.clone(), wt.clone(), Some(bt.clone()), p) * on::<$B, 4>(&wgt, out_dims(shape))).sum().backward();
                (host(xt.grad(&g).unwrap()), wt.grad(&g).map(host), bt.grad(&g).map(host))
            }};
        }
        let (dx, dw, db) = grads!(AF, true);
        let (dx_burn, dw_burn, db_burn) = grads!(AN, true);
        let (dw, db, dw_burn, db_burn) = (dw.unwrap(), db.unwrap(), dw_burn.unwrap(), db_burn.unwrap());
        for (what, ours, burns, exact) in [("∂x", &dx, &dx_burn, &dx_exact), ("∂weight", &dw, &dw_burn, &dw_exact), ("∂bias", &db, &db_burn, &db_exact)] {
            assert!(scaled_worst(ours, exact) < 2e-6, "{shape:?} {what}: vs f64 {}", scaled_worst(ours, exact));
            assert!(scaled_worst(burns, exact) < 2e-5, "{shape:?} {what}: burn's autodiff vs f64 {}", scaled_worst(burns, exact));
        }
        // frozen weights (the PEFT case): only ∂x, the same
        let (dx_frozen, dw_frozen, db_frozen) = grads!(AF, false);
        assert!(dw_frozen.is_none() && db_frozen.is_none());
        assert_eq!(dx_frozen, dx, "{shape:?}");
        // the trait's default backward (what other backends run) against f64
        let prim = |v: &[f32], s: [usize; 4]| on::<NdArray, 4>(v, s).into_primitive().tensor();
        let got = <NdArray as Kernels>::depthwise_conv_backward(prim(&x, [b, h, w, c]), prim(&weight, [c, 1, k, k]), prim(&wgt, out_dims(shape)), p, [true; 3]);
        let [dx_d, dw_d, db_d] = got.map(|t| t.unwrap());
        let four = |t| host(Tensor::<NdArray, 4>::from_primitive(TensorPrimitive::Float(t)));
        let (dx_d, dw_d, db_d) = (four(dx_d), four(dw_d), host(Tensor::<NdArray, 1>::from_primitive(TensorPrimitive::Float(db_d))));
        for (what, d, exact) in [("∂x", &dx_d, &dx_exact), ("∂weight", &dw_d, &dw_exact), ("∂bias", &db_d, &db_exact)] {
            assert!(scaled_worst(d, exact) < 2e-5, "{shape:?} {what}: default backward vs f64 {}", scaled_worst(d, exact));
        }
    }
}
