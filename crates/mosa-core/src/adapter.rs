//! Bottleneck adapters (AdaptFormer / Pfeiffer / Houlsby): `scale · Up(Dropout(act(Down(LN(x)))))`.
//! Where an adapter sits (parallel to the MLP, after it, or two per block) is the method's
//! choice; see [`crate::method`].

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, silu};

use crate::draws::Draws;
use crate::layer_norm::{LayerNorm, LayerNormConfig};
use crate::slot::Slot;
use mosa_kernels::{Kernels, gelu, linear_layer};
use serde::{Deserialize, Serialize};

/// Adapter non-linearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Exact (erf) GELU: MoSA (`vit_mosa.py`).
    #[default]
    Gelu,
    /// The plain adapter (AdaptFormer in `vit_adapter.py`) and Pfeiffer.
    Relu,
    /// Houlsby in the MoSA code base.
    Silu,
}

/// Where a sequential adapter (Pfeiffer, Houlsby) reads and writes, around a sublayer `f` with
/// residual `x + f(x)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum SequentialPosition {
    /// On the sublayer's output, before the residual: `x + (f + A(f))` (Houlsby et al. 2019,
    /// Pfeiffer in the MoSA code base).
    Branch,
    /// On the stream after the residual: `y = x + f`, then `y + A(y)` (Houlsby in the MoSA code
    /// base, `vit_adapter.py`).
    Stream,
}

impl Activation {
    pub fn apply<B: Kernels, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::Gelu => gelu(x),
            Activation::Relu => relu(x),
            Activation::Silu => silu(x),
        }
    }
}

/// The adapter options a method exposes (`--r`, `--scale`, `--adapter-dropout`); the one source
/// of their defaults, the MoSA reference (spec §1).
#[derive(Config, Debug)]
pub struct AdapterOptions {
    /// Bottleneck width.
    #[config(default = 16)]
    pub r: usize,
    /// Output scale `s`.
    #[config(default = 0.1)]
    pub scale: f64,
    /// Dropout between the activation and Up.
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Own LayerNorm on the input (AdaptFormer's `adapter_layernorm_option = "in"`).
    #[config(default = true)]
    pub norm: bool,
    /// That LayerNorm's epsilon: the reference's `LayerNorm(hidden, eps=1e-6)` (`vit_mosa.py`).
    /// Run directories of formats 1 and 2 recorded none and used PyTorch's default 1e-5; they are
    /// converted with it.
    #[config(default = 1e-6)]
    pub norm_eps: f64,
    /// The non-linearity (each method's default is set by [`crate::method::Method::new`]).
    #[config(default = "Activation::Gelu")]
    pub activation: Activation,
    /// Where a sequential adapter (Pfeiffer, Houlsby) sits; parallel adapters (adapter, MoSA)
    /// ignore it.
    #[config(default = "SequentialPosition::Branch")]
    pub position: SequentialPosition,
}

/// One adapter module: its width and the method's options.
#[derive(Config, Debug)]
pub struct AdapterConfig {
    /// Width of the tokens the adapter reads and writes.
    pub d_model: usize,
    pub options: AdapterOptions,
}

impl AdapterConfig {
    /// Down: kaiming-uniform(a = √5), i.e. U(±1/√d); Up: zeros; biases zero (spec §1).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Adapter<B> {
        let (o, r) = (&self.options, self.options.r);
        let bound = 1.0 / (self.d_model as f64).sqrt();
        let mut down = LinearConfig::new(self.d_model, r).with_initializer(Initializer::Uniform { min: -bound, max: bound }).init(device);
        down.bias = Some(Param::from_tensor(Tensor::zeros([r], device)));
        let up = LinearConfig::new(r, self.d_model).with_initializer(Initializer::Zeros).init(device);
        Adapter {
            norm: o.norm.then(|| LayerNormConfig::new(self.d_model).with_epsilon(o.norm_eps).init(device)),
            down,
            up,
            dropout: DropoutConfig::new(o.dropout).init(),
            activation: o.activation,
            scale: o.scale,
            on_stream: o.position == SequentialPosition::Stream,
        }
    }

    /// Trainable parameters of one adapter: LN 2d + Down (d+1)·r + Up (r+1)·d.
    pub fn num_params(&self) -> usize {
        let (d, r) = (self.d_model, self.options.r);
        let ln = if self.options.norm { 2 * d } else { 0 };
        ln + (d + 1) * r + (r + 1) * d
    }
}

/// A plain bottleneck adapter.
#[derive(Module, Debug)]
pub struct Adapter<B: Backend> {
    pub norm: Option<LayerNorm<B>>,
    pub down: Linear<B>,
    pub up: Linear<B>,
    pub dropout: Dropout,
    #[module(skip)]
    pub activation: Activation,
    #[module(skip)]
    pub scale: f64,
    /// A sequential adapter placed after the residual ([`SequentialPosition::Stream`]).
    #[module(skip)]
    pub on_stream: bool,
}

impl<B: Kernels> Adapter<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = match &self.norm {
            Some(n) => n.forward(x),
            None => x,
        };
        let h = self.dropout.forward(self.activation.apply(linear_layer(&self.down, x)));
        linear_layer(&self.up, h) * self.scale
    }
}

/// The plain adapter in a slot: no experts, nothing masked.
impl<B: Backend> Slot<B> for Adapter<B> {
    fn forward(&self, x: Tensor<B, 3>, _draws: &mut Draws) -> Tensor<B, 3>
    where
        B: Kernels,
    {
        Adapter::forward(self, x)
    }

    fn merged(&self) -> Adapter<B> {
        self.clone()
    }

    fn on_stream(&self) -> bool {
        self.on_stream
    }
}
