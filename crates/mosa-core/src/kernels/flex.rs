//! [`Kernels`] for burn-flex: element-wise kernels over contiguous `f32` storage, split into
//! chunks over rayon's threads, each chunk a loop of [`math`](super::math)'s branch-free
//! functions compiled for the best SIMD level the CPU has (AVX-512, AVX2 + FMA, or the
//! baseline), chosen at run time. Other dtypes take burn-flex's own kernels.

use burn::backend::Flex;
use burn::tensor::DType;
use burn::tensor::ops::FloatTensor;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::{Kernels, math};

/// Elements per rayon task: large enough to amortise the task, small enough to balance.
const CHUNK: usize = 16 * 1024;

/// The tensor's `f32` values in order (a copy only when it is not a plain contiguous buffer).
fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("contiguous f32").to_vec()),
    }
}

fn from_vec(v: Vec<f32>, like: &FlexTensor) -> FlexTensor {
    FlexTensor::from_data(burn::tensor::TensorData::new(v, like.layout().shape().clone()))
}

/// Defines `$name(inputs…, out)` as `out[i] = $f(inputs[i]…)` over a chunk, compiled three times
/// (AVX-512F, AVX2 + FMA, baseline) and dispatched on the running CPU.
macro_rules! simd_map {
    ($name:ident, |$($a:ident),+| $body:expr) => {
        fn $name($($a: &[f32],)+ out: &mut [f32]) {
            #[inline(always)]
            fn body($($a: &[f32],)+ out: &mut [f32]) {
                let n = out.len();
                $(let $a = &$a[..n];)+
                for i in 0..n {
                    out[i] = { $(let $a = $a[i];)+ $body };
                }
            }
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($a: &[f32],)+ out: &mut [f32]) { body($($a,)+ out) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($a: &[f32],)+ out: &mut [f32]) { body($($a,)+ out) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx512($($a,)+ out) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($a,)+ out) };
                }
            }
            body($($a,)+ out)
        }
    };
}

simd_map!(gelu_chunk, |x| math::gelu(x));
simd_map!(gelu_grad_chunk, |x, g| math::gelu_grad(x, g));

impl Kernels for Flex {
    fn gelu_exact(x: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 {
            return <Self as burn::tensor::ops::ActivationOps<Self>>::gelu(x);
        }
        let src = values(&x);
        let mut out = vec![0f32; src.len()];
        out.par_chunks_mut(CHUNK).zip(src.par_chunks(CHUNK)).for_each(|(o, s)| gelu_chunk(s, o));
        from_vec(out, &x)
    }

    fn gelu_exact_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if x.dtype() != DType::F32 || grad.dtype() != DType::F32 || x.layout().shape() != grad.layout().shape() {
            return <Self as burn::tensor::ops::ActivationOps<Self>>::gelu_backward(x, grad);
        }
        let (xs, gs) = (values(&x), values(&grad));
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(CHUNK).zip(xs.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK))).for_each(|(o, (a, g))| gelu_grad_chunk(a, g, o));
        from_vec(out, &x)
    }
}
