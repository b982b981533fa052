//! The one host-side tensor type: row-major f32 values and a PyTorch-order shape. Checkpoints,
//! saved runs, experts and parameter exports all travel as `HostTensor`s.

/// One tensor on the host: row-major f32 values and their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Self { shape, data }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The same values under another shape with the same number of elements.
    pub fn reshape(self, shape: Vec<usize>) -> Option<Self> {
        (shape.iter().product::<usize>() == self.data.len()).then_some(Self { shape, data: self.data })
    }

    /// Transpose of a 2-D tensor.
    pub fn t(&self) -> Self {
        assert_eq!(self.shape.len(), 2, "t() needs a 2-D tensor");
        let (r, c) = (self.shape[0], self.shape[1]);
        let mut out = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                out[j * r + i] = self.data[i * c + j];
            }
        }
        Self::new(vec![c, r], out)
    }

    /// General axis permutation: output axis k is input axis `perm[k]`.
    pub fn permute(&self, perm: &[usize]) -> Self {
        let nd = self.shape.len();
        assert_eq!(perm.len(), nd);
        let shape: Vec<usize> = perm.iter().map(|&p| self.shape[p]).collect();
        let mut in_strides = vec![1usize; nd];
        for k in (0..nd.saturating_sub(1)).rev() {
            in_strides[k] = in_strides[k + 1] * self.shape[k + 1];
        }
        let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
        let mut out = Vec::with_capacity(self.data.len());
        let mut idx = vec![0usize; nd];
        for _ in 0..self.data.len() {
            let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
            out.push(self.data[off]);
            for k in (0..nd).rev() {
                idx[k] += 1;
                if idx[k] < shape[k] {
                    break;
                }
                idx[k] = 0;
            }
        }
        Self::new(shape, out)
    }

    /// Concatenate along axis 0.
    pub fn cat0(parts: &[&HostTensor]) -> Option<Self> {
        let first = parts.first()?;
        let rest = &first.shape[1..];
        if parts.iter().any(|p| p.shape.len() != first.shape.len() || &p.shape[1..] != rest) {
            return None;
        }
        let mut shape = first.shape.clone();
        shape[0] = parts.iter().map(|p| p.shape[0]).sum();
        Some(Self::new(shape, parts.iter().flat_map(|p| p.data.iter().copied()).collect()))
    }
}

impl HostTensor {
    /// A tensor's values read back from a device (any float dtype becomes f32).
    pub fn from_tensor<B: burn::prelude::Backend, const D: usize>(t: burn::prelude::Tensor<B, D>) -> Self {
        let shape = t.dims().to_vec();
        Self::new(shape, t.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default())
    }

    /// The values as a tensor on `device`.
    pub fn to_tensor<B: burn::prelude::Backend, const D: usize>(&self, device: &B::Device) -> burn::prelude::Tensor<B, D> {
        burn::prelude::Tensor::from_data(burn::tensor::TensorData::new(self.data.clone(), self.shape.clone()), device)
    }
}

/// Named host tensors, in a stable order.
pub type NamedTensors = Vec<(String, HostTensor)>;
