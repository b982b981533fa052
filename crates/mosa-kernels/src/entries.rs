//! Entries of a flat tensor changed in place: what `mosa serve` does to put a sparse expert's
//! change into a weight and to take it out again, bit for bit (`w[i] += v` keeping the old
//! `w[i]`, then `w[i] = old`).
//!
//! The defaults are burn's composition: `add_at` gathers the old entries and scatter-adds the
//! values (a new tensor: O(n) per change), `set_at` goes through the host, since burn's scatter
//! only adds and `a + (b − a)` is not always `b`. Flex overrides both to work in place when the
//! tensor alone owns its buffer, O(k) for k entries.

use burn::prelude::*;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{IndexingUpdateOp, TensorData, TensorPrimitive};

use crate::Kernels;

fn float1<B: Backend>(t: FloatTensor<B>) -> Tensor<B, 1> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn int1<B: Backend>(t: IntTensor<B>) -> Tensor<B, 1, Int> {
    Tensor::from_primitive(t)
}

/// `(x with values added at indices, the previous values there)` by burn's ops.
pub fn composed_add_at<B: Backend>(x: FloatTensor<B>, indices: IntTensor<B>, values: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let (x, indices, values) = (float1::<B>(x), int1::<B>(indices), float1::<B>(values));
    let old = x.clone().select(0, indices.clone());
    (x.scatter(0, indices, values, IndexingUpdateOp::Add).into_primitive().tensor(), old.into_primitive().tensor())
}

/// `x` with exactly `values` at `indices`, through the host.
pub fn composed_set_at<B: Backend>(x: FloatTensor<B>, indices: IntTensor<B>, values: FloatTensor<B>) -> FloatTensor<B> {
    let (x, indices, values) = (float1::<B>(x), int1::<B>(indices), float1::<B>(values));
    let device = x.device();
    let n = x.dims()[0];
    let mut data: Vec<f32> = x.into_data().convert::<f32>().into_vec().expect("f32 values");
    let idx: Vec<i64> = indices.into_data().convert::<i64>().into_vec().expect("integer indices");
    let vals: Vec<f32> = values.into_data().convert::<f32>().into_vec().expect("f32 values");
    for (&i, v) in idx.iter().zip(vals) {
        data[i as usize] = v;
    }
    Tensor::<B, 1>::from_data(TensorData::new(data, [n]), &device).into_primitive().tensor()
}

/// Adds `values` at the flat `indices` of `x`; returns `x` and the entries' previous values.
///
/// # Shapes
/// `x` `[n]`, `indices` / `values` `[k]` → (`[n]`, `[k]`)
pub fn add_at<B: Kernels>(x: Tensor<B, 1>, indices: Tensor<B, 1, Int>, values: Tensor<B, 1>) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let (x, old) = B::add_at(x.into_primitive().tensor(), indices.into_primitive(), values.into_primitive().tensor());
    (float1::<B>(x), float1::<B>(old))
}

/// Writes `values` at the flat `indices` of `x`.
///
/// # Shapes
/// `x` `[n]`, `indices` / `values` `[k]` → `[n]`
pub fn set_at<B: Kernels>(x: Tensor<B, 1>, indices: Tensor<B, 1, Int>, values: Tensor<B, 1>) -> Tensor<B, 1> {
    float1::<B>(B::set_at(x.into_primitive().tensor(), indices.into_primitive(), values.into_primitive().tensor()))
}
