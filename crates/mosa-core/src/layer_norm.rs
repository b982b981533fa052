//! LayerNorm over the last axis, the one used by every backbone and adapter: burn's
//! `nn::LayerNorm` parameters (`gamma`, `beta`, the same record paths), computed through the
//! backend's [`Kernels::layer_norm`] so that training records it as one node with a fused
//! backward where the backend has one (`kernels/layer_norm.rs`).

use burn::module::{Initializer, Param};
use burn::prelude::*;

use mosa_kernels::{Kernels, layer_norm};

/// A [`LayerNorm`]'s configuration (the fields of burn's `LayerNormConfig`; PyTorch's ε is 1e-5,
/// timm's ViT and ConvNeXt use 1e-6: set it explicitly).
#[derive(Config, Debug)]
pub struct LayerNormConfig {
    /// Features of the last axis.
    pub d_model: usize,
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Whether it has a bias `beta`.
    #[config(default = true)]
    pub bias: bool,
}

impl LayerNormConfig {
    /// γ = 1, β = 0.
    pub fn init<B: Backend>(&self, device: &B::Device) -> LayerNorm<B> {
        LayerNorm {
            gamma: Initializer::Ones.init([self.d_model], device),
            beta: self.bias.then(|| Initializer::Zeros.init([self.d_model], device)),
            epsilon: self.epsilon,
        }
    }
}

/// `y = γ ⊙ (x − μ)/√(σ² + ε) + β` over the last axis.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
    pub beta: Option<Param<Tensor<B, 1>>>,
    #[module(skip)]
    pub epsilon: f64,
}

impl<B: Kernels> LayerNorm<B> {
    /// # Shapes
    /// `[…, d]` → `[…, d]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        layer_norm(x, self.gamma.val(), self.beta.as_ref().map(|b| b.val()), self.epsilon)
    }
}
