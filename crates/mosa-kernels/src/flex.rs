//! [`Kernels`] for burn-flex: element-wise kernels over contiguous `f32` storage, split into
//! chunks over rayon's threads, each chunk a loop of [`super::math`]'s branch-free
//! functions compiled for the best SIMD level the CPU has (AVX-512, AVX2 + FMA, or the
//! baseline), chosen at run time; and fused attention (`flex/attention.rs`). Other dtypes take
//! burn-flex's own kernels or the defaults.

use std::mem::MaybeUninit;

use burn::backend::Flex;
use burn::tensor::DType;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::depthwise_conv as composed_depthwise;
use super::window_attention::{self as composed_window, Windows};
use super::{Kernels, attention as composed, layer_norm as composed_layer_norm, linear as composed_linear, math};

/// Defines `fn $name(args…)` (no return value) whose body is compiled three times (AVX-512F,
/// AVX2 + FMA, baseline) and dispatched on the running CPU; helpers it calls must be
/// `#[inline(always)]` to share the features.
macro_rules! multiversion {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $body:block) => {
        $(#[$doc])*
        $vis fn $name($($a: $t),*) {
            #[inline(always)]
            fn body($($a: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($a: $t),*) { body($($a),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($a: $t),*) { body($($a),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx512($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($a),*) };
                }
            }
            body($($a),*)
        }
    };
}

mod attention;
mod depthwise_conv;
pub mod gemm;
mod layer_norm;
mod linear;
mod window_attention;

/// A raw output pointer shared by rayon tasks that each write their own disjoint elements.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every user hands each task a disjoint part of the buffer to write (see the uses).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// Elements per rayon task: large enough to amortise the task, small enough to balance.
const CHUNK: usize = 16 * 1024;

/// The tensor's `f32` values in order (a copy only when it is not a plain contiguous buffer).
fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("contiguous f32").to_vec()),
    }
}

/// A new buffer of `n` floats that `write` fills, all of them, with no zeroing pass first: the
/// kernels' outputs (GEMM products, GELU, attention, LayerNorm's `dx`) are overwritten whole, and
/// zeroing them first stored ~1 GB per ViT-S/16 MoSA step (batch 8, 224 px), 3–4% of its time
/// (`docs/timings.md`). With debug assertions (every `cargo test`) the buffer starts as NaN, so
/// an element `write` misses shows up as NaN in the tests' comparisons with their references.
///
/// # Safety
/// `write` must write every one of the `n` elements.
unsafe fn filled(n: usize, write: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    let spare = &mut v.spare_capacity_mut()[..n];
    if cfg!(debug_assertions) {
        spare.par_chunks_mut(CHUNK).for_each(|c| {
            c.iter_mut().for_each(|x| {
                x.write(f32::NAN);
            })
        });
    }
    write(spare);
    // SAFETY: the caller's contract: all n elements are written.
    unsafe { v.set_len(n) };
    v
}

/// `n` zeros, written on rayon's threads: `vec![0.0; n]` zeroes tens of MB on the calling thread
/// while the others wait (freed heap is reused, so `calloc` cannot skip it).
fn zeros(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    v.spare_capacity_mut().par_chunks_mut(CHUNK).for_each(|c| {
        c.iter_mut().for_each(|x| {
            x.write(0.0);
        })
    });
    // SAFETY: all n elements were initialised above.
    unsafe { v.set_len(n) };
    v
}

/// A contiguous `f32` tensor of `shape` owning `v` (no copy).
fn tensor(v: Vec<f32>, shape: impl Into<Vec<usize>>) -> FlexTensor {
    FlexTensor::from_data(burn::tensor::TensorData::new(v, shape.into()))
}

/// The shape of `t`.
fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

/// The attention geometry of a packed `[b, t, 3d]` f32 `qkv` with `heads` heads, `None` where the
/// kernel does not apply (another dtype or rank, a width that does not split).
fn geometry(qkv: &FlexTensor, heads: usize) -> Option<attention::Geometry> {
    match dims(qkv)[..] {
        [b, t, w] if qkv.dtype() == DType::F32 && heads > 0 && w % (3 * heads) == 0 => Some(attention::Geometry { b, t, h: heads, hd: w / 3 / heads }),
        _ => None,
    }
}

/// The depthwise convolution's sizes for f32 `x` and `weight` that fit the kernel (padding below
/// the kernel size), `None` otherwise.
fn depthwise_geometry(x: &FlexTensor, weight: &FlexTensor, padding: usize) -> Option<composed_depthwise::Geometry> {
    if [x.dtype(), weight.dtype()] != [DType::F32; 2] {
        return None;
    }
    composed_depthwise::geometry(&dims(x), &dims(weight), padding).filter(|g| g.p < g.k)
}

/// The window attention's sizes for f32 `qkv` and `bias` that fit the kernel, `None` otherwise.
fn window_grid(qkv: &FlexTensor, bias: &FlexTensor, win: Windows) -> Option<composed_window::Grid> {
    if [qkv.dtype(), bias.dtype()] != [DType::F32; 2] {
        return None;
    }
    composed_window::grid(&dims(qkv), &dims(bias), win)
}

multiversion! {
    /// `out ← GELU(x)`.
    fn gelu_chunk(x: &[f32], out: &mut [MaybeUninit<f32>]) {
        let x = &x[..out.len()];
        for (o, &v) in out.iter_mut().zip(x) {
            o.write(math::gelu(v));
        }
    }
}

multiversion! {
    /// `out ← g · GELU'(x)`.
    fn gelu_grad_chunk(x: &[f32], g: &[f32], out: &mut [MaybeUninit<f32>]) {
        let (x, g) = (&x[..out.len()], &g[..out.len()]);
        for i in 0..out.len() {
            out[i].write(math::gelu_grad(x[i], g[i]));
        }
    }
}

multiversion! {
    /// `x ← GELU(x)`.
    fn gelu_in_place(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = math::gelu(*v);
        }
    }
}

multiversion! {
    /// `g ← g · GELU'(x)`.
    fn gelu_grad_in_place(x: &[f32], g: &mut [f32]) {
        let n = g.len();
        let x = &x[..n];
        for i in 0..n {
            g[i] = math::gelu_grad(x[i], g[i]);
        }
    }
}

/// The tensor's `f32` values to overwrite, when it alone owns a contiguous buffer (an input no
/// one else holds: inference, or an incoming gradient); `None` otherwise.
fn in_place(x: &mut FlexTensor) -> Option<&mut [f32]> {
    let (start, end) = x.layout().contiguous_offsets()?;
    if x.dtype() != DType::F32 || !x.is_unique() {
        return None;
    }
    x.try_storage_mut::<f32>().map(|s| &mut s[start..end])
}

/// Flat indices as `usize`, when every one is below `n` (i32 or i64 storage).
fn flat_indices(t: &FlexTensor, n: usize) -> Option<Vec<usize>> {
    let t = t.to_contiguous();
    let idx: Vec<usize> = match t.dtype() {
        DType::I32 => t.as_slice::<i32>()?.iter().map(|&i| usize::try_from(i).unwrap_or(usize::MAX)).collect(),
        DType::I64 => t.as_slice::<i64>()?.iter().map(|&i| usize::try_from(i).unwrap_or(usize::MAX)).collect(),
        _ => return None,
    };
    idx.iter().all(|&i| i < n).then_some(idx)
}

/// `f(&mut x[i], v)` for every index `i` and value `v`, in place, when `x` alone owns its
/// buffer and the indices and values fit it; `false` (nothing done) otherwise.
fn each_entry(x: &mut FlexTensor, indices: &FlexTensor, vals: &FlexTensor, mut f: impl FnMut(&mut f32, f32)) -> bool {
    let n = x.layout().shape().num_elements();
    let (Some(idx), Some(buf)) = (flat_indices(indices, n), in_place(x)) else { return false };
    let v = values(vals);
    if v.len() != idx.len() {
        return false;
    }
    for (&i, &w) in idx.iter().zip(v.iter()) {
        f(&mut buf[i], w);
    }
    true
}

impl Kernels for Flex {
    fn add_at(x: FloatTensor<Self>, indices: IntTensor<Self>, vals: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let mut x = x;
        let mut old = Vec::with_capacity(indices.layout().shape().num_elements());
        if each_entry(&mut x, &indices, &vals, |w, d| {
            old.push(*w);
            *w += d;
        }) {
            let k = old.len();
            return (x, tensor(old, [k]));
        }
        crate::entries::composed_add_at::<Self>(x, indices, vals)
    }

    fn set_at(x: FloatTensor<Self>, indices: IntTensor<Self>, vals: FloatTensor<Self>) -> FloatTensor<Self> {
        let mut x = x;
        if each_entry(&mut x, &indices, &vals, |w, v| *w = v) {
            return x;
        }
        crate::entries::composed_set_at::<Self>(x, indices, vals)
    }

    const FUSED_LINEAR: bool = true;

    fn linear_rows_backward(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, need: [bool; 3]) -> [Option<FloatTensor<Self>>; 3] {
        let (xd, wd, gd) = (dims(&x), dims(&weight), dims(&grad));
        let f32s = [x.dtype(), weight.dtype(), grad.dtype()] == [DType::F32; 3];
        let (&[rows, k], &[wk, n], &[grows, gn]) = (&xd[..], &wd[..], &gd[..]) else {
            return composed_linear::composed_backward::<Self>(x, weight, grad, need);
        };
        if !f32s || wk != k || grows != rows || gn != n {
            return composed_linear::composed_backward::<Self>(x, weight, grad, need);
        }
        let g = values(&grad);
        [
            need[0].then(|| tensor(linear::backward_x(&values(&weight), &g, rows, k, n), [rows, k])),
            need[1].then(|| tensor(linear::backward_weight(&values(&x), &g, rows, k, n), [k, n])),
            need[2].then(|| tensor(linear::backward_bias(&g, n), [n])),
        ]
    }

    fn linear_rows(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        let (xd, wd) = (dims(&x), dims(&weight));
        let f32s = x.dtype() == DType::F32 && weight.dtype() == DType::F32 && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
        let fits = match (xd.last(), &wd[..]) {
            (Some(&k), &[wk, n]) => k == wk && bias.as_ref().is_none_or(|b| dims(b) == [n]),
            _ => false,
        };
        if !f32s || !fits {
            return <Self as burn::tensor::ops::ModuleOps<Self>>::linear(x, weight, bias);
        }
        let (k, n) = (wd[0], wd[1]);
        let rows = xd.iter().product::<usize>() / k.max(1);
        let b = bias.as_ref().map(values);
        let out = linear::forward(&values(&x), &values(&weight), b.as_deref(), rows, k, n);
        let mut shape = xd;
        *shape.last_mut().unwrap() = n;
        tensor(out, shape)
    }

    const FUSED_LAYER_NORM: bool = true;

    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
        params: bool,
    ) -> (FloatTensor<Self>, Option<(FloatTensor<Self>, FloatTensor<Self>)>) {
        let shape = dims(&x);
        let d = *shape.last().unwrap_or(&0);
        let fits = [x.dtype(), gamma.dtype(), grad.dtype()] == [DType::F32; 3] && d > 0 && dims(&gamma) == [d] && dims(&grad) == shape;
        if !fits {
            return composed_layer_norm::composed_backward::<Self>(x, gamma, grad, epsilon, params);
        }
        let (dx, acc) = layer_norm::backward(&values(&x), &values(&gamma), &values(&grad), epsilon as f32, params);
        let params = acc.map(|mut acc| {
            let dbeta = acc.split_off(d);
            (tensor(acc, [d]), tensor(dbeta, [d]))
        });
        (tensor(dx, dims(&x)), params)
    }

    const FUSED_ATTENTION: bool = true;

    fn attention_packed(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        match geometry(&qkv, heads) {
            Some(_) => Self::attention_packed_with_lse(qkv, heads).0,
            None => composed::composed::<Self>(qkv, heads),
        }
    }

    fn attention_packed_with_lse(qkv: FloatTensor<Self>, heads: usize) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let Some(g) = geometry(&qkv, heads) else {
            return composed::composed_with_lse::<Self>(qkv, heads);
        };
        let mut lse = zeros(g.b * g.h * g.t);
        // SAFETY: `attention::forward` writes every element of `out` (each task its head's columns of its image's rows).
        let out = unsafe { filled(g.b * g.t * g.h * g.hd, |out| attention::forward(&values(&qkv), g, out, &mut lse)) };
        (tensor(out, [g.b, g.t, g.h * g.hd]), tensor(lse, [g.b, g.h, g.t]))
    }

    fn attention_packed_backward(qkv: FloatTensor<Self>, lse: FloatTensor<Self>, grad: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        let fits = |g: &attention::Geometry| {
            grad.dtype() == DType::F32 && lse.dtype() == DType::F32 && dims(&grad) == [g.b, g.t, g.h * g.hd] && dims(&lse) == [g.b, g.h, g.t]
        };
        match geometry(&qkv, heads) {
            Some(g) if fits(&g) => {
                // SAFETY: `attention::backward` writes every element (each task its head's q, k and v columns).
                let dqkv = unsafe { filled(g.b * g.t * 3 * g.h * g.hd, |dqkv| attention::backward(&values(&qkv), &values(&lse), &values(&grad), g, dqkv)) };
                tensor(dqkv, [g.b, g.t, 3 * g.h * g.hd])
            }
            _ => composed::composed_backward::<Self>(qkv, lse, grad, heads),
        }
    }

    const FUSED_DEPTHWISE_CONV: bool = true;

    fn depthwise_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, padding: usize) -> FloatTensor<Self> {
        match depthwise_geometry(&x, &weight, padding) {
            Some(g) if bias.dtype() == DType::F32 && dims(&bias) == [g.c] => {
                tensor(depthwise_conv::forward(&values(&x), &values(&weight), &values(&bias), g), [g.b, g.ho, g.wo, g.c])
            }
            _ => composed_depthwise::composed::<Self>(x, weight, bias, padding),
        }
    }

    fn depthwise_conv_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        padding: usize,
        need: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 3] {
        match depthwise_geometry(&x, &weight, padding) {
            Some(g) if grad.dtype() == DType::F32 && dims(&grad) == [g.b, g.ho, g.wo, g.c] => {
                let gv = values(&grad);
                let dx = need[0].then(|| tensor(depthwise_conv::backward_x(&values(&weight), &gv, g), [g.b, g.h, g.w, g.c]));
                let (dw, db) = if need[1] || need[2] { depthwise_conv::backward_params(&values(&x), &gv, g, [need[1], need[2]]) } else { (None, None) };
                [dx, dw.map(|w| tensor(w, [g.c, 1, g.k, g.k])), db.map(|b| tensor(b, [g.c]))]
            }
            _ => composed_depthwise::composed_backward::<Self>(x, weight, grad, padding, need),
        }
    }

    const FUSED_WINDOW_ATTENTION: bool = true;

    fn window_attention(qkv: FloatTensor<Self>, bias: FloatTensor<Self>, win: Windows) -> FloatTensor<Self> {
        match window_grid(&qkv, &bias, win) {
            Some(_) => Self::window_attention_with_lse(qkv, bias, win).0,
            None => composed_window::composed::<Self>(qkv, bias, win),
        }
    }

    fn window_attention_with_lse(qkv: FloatTensor<Self>, bias: FloatTensor<Self>, win: Windows) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let Some(g) = window_grid(&qkv, &bias, win) else {
            return composed_window::composed_with_lse::<Self>(qkv, bias, win);
        };
        let n = win.window * win.window;
        let mut lse = zeros(g.b * g.windows * win.heads * n);
        // SAFETY: the grid is whole windows: `window_attention::forward` writes each token's
        // columns of each head once, in the task of its window and head.
        let out = unsafe { filled(g.b * g.h * g.w * g.c, |out| window_attention::forward(&values(&qkv), &values(&bias), g, win, out, &mut lse)) };
        (tensor(out, [g.b, g.h, g.w, g.c]), tensor(lse, [g.b * g.windows, win.heads, n]))
    }

    fn window_attention_backward(
        qkv: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        win: Windows,
        need_bias: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let n = win.window * win.window;
        let fits = |g: &composed_window::Grid| {
            [grad.dtype(), lse.dtype()] == [DType::F32; 2] && dims(&grad) == [g.b, g.h, g.w, g.c] && dims(&lse) == [g.b * g.windows, win.heads, n]
        };
        match window_grid(&qkv, &bias, win) {
            Some(g) if fits(&g) => {
                let mut ds = need_bias.then(|| zeros(g.b * g.windows * win.heads * n * n));
                let biases = values(&bias);
                // SAFETY: as in the forward, every token's q, k and v columns of each head are written once.
                let dqkv = unsafe {
                    filled(g.b * g.h * g.w * 3 * g.c, |dqkv| {
                        window_attention::backward(&values(&qkv), &biases, &values(&lse), &values(&grad), g, win, dqkv, ds.as_deref_mut())
                    })
                };
                let dbias = ds.map(|ds| tensor(window_attention::bias_gradient(&ds, g, win), dims(&bias)));
                (tensor(dqkv, [g.b, g.h, g.w, 3 * g.c]), dbias)
            }
            _ => composed_window::composed_backward::<Self>(qkv, bias, lse, grad, win, need_bias),
        }
    }

    fn gelu_exact(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return <Self as burn::tensor::ops::ActivationOps<Self>>::gelu(x);
        }
        let mut x = x;
        if let Some(buf) = in_place(&mut x) {
            buf.par_chunks_mut(CHUNK).for_each(gelu_in_place);
            return x;
        }
        let src = values(&x);
        // SAFETY: the chunks cover the buffer, each written whole by `gelu_chunk`.
        let out = unsafe { filled(src.len(), |out| out.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(o, s)| gelu_chunk(s, o))) };
        tensor(out, dims(&x))
    }

    fn gelu_exact_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 || x.layout().shape() != grad.layout().shape() {
            return <Self as burn::tensor::ops::ActivationOps<Self>>::gelu_backward(x, grad);
        }
        let xs = values(&x);
        let mut grad = grad;
        if let Some(buf) = in_place(&mut grad) {
            buf.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK)).for_each(|(g, a)| gelu_grad_in_place(a, g));
            return grad;
        }
        let gs = values(&grad);
        // SAFETY: the chunks cover the buffer, each written whole by `gelu_grad_chunk`.
        let out = unsafe {
            filled(xs.len(), |out| {
                out.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK))).for_each(|(o, (a, g))| gelu_grad_chunk(a, g, o))
            })
        };
        tensor(out, dims(&x))
    }
}
