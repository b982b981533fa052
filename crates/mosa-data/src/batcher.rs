//! The one backend-specific piece of the data layer: a host batch as burn tensors.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

/// `[n, 3, s, s]` images and `[n]` labels on `device`.
pub fn to_tensors<B: Backend>(pixels: Vec<f32>, labels: &[usize], size: usize, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 1, Int>) {
    let n = labels.len();
    let x = Tensor::from_data(TensorData::new(pixels, [n, 3, size, size]), device);
    let y = Tensor::from_data(TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [n]), device);
    (x, y)
}
