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

/// IEEE half → single precision (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // subnormal: renormalise
            let mut e = 127 - 15 + 1;
            let mut f = f;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Single → half precision, rounding to nearest even (overflow to ±inf).
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let frac = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if frac != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        if e < -10 {
            return sign;
        }
        let m = frac | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = m >> shift;
        let rem = m & ((1 << shift) - 1);
        let mid = 1 << (shift - 1);
        let round = (rem > mid || (rem == mid && half & 1 == 1)) as u32;
        return sign | (half + round) as u16;
    }
    let half = ((e as u32) << 10) | (frac >> 13);
    let rem = frac & 0x1fff;
    let round = (rem > 0x1000 || (rem == 0x1000 && half & 1 == 1)) as u32;
    sign | (half + round) as u16
}
