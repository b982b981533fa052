//! Layers shared by every backbone family: patch embedding, attention, the transformer MLP,
//! LayerScale and stochastic depth. Linear layers that a method may target are
//! [`TunableLinear`]s, so every family's sites hold the same type.
//!
//! Training mode follows burn's convention: dropout and drop-path are active when the backend
//! tracks gradients (`B::ad_enabled`), i.e. on an `Autodiff` backend, and off on its inner backend.

use burn::module::Param;
use burn::nn::Dropout;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::softmax;
use burn::tensor::module::linear;
use mosa_core::layer_norm::LayerNorm;
use mosa_kernels::{Kernels, attention, attention_packed, gelu};

use mosa_core::Draws;
use mosa_core::site::{AdapterSite, LinearSite, Placement, SiteMut, TunableLinear};
use mosa_core::slot::AdapterSlot;

/// Non-overlapping patches → tokens, stored as timm's convolution (`patch_embed.proj`)
/// and computed as one matmul over flattened patches; Swin normalises the tokens
/// (`patch_embed.norm`), a ViT does not.
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    pub proj: Conv2d<B>,
    pub norm: Option<LayerNorm<B>>,
    #[module(skip)]
    pub patch_size: usize,
}

impl<B: Kernels> PatchEmbed<B> {
    /// `[b, c, h, w]` → (`[b, gh·gw, d]`, (gh, gw)). Rows/columns that do not fill a patch are
    /// dropped, as a strided convolution does.
    pub fn forward(&self, x: Tensor<B, 4>) -> (Tensor<B, 3>, (usize, usize)) {
        let [b, c, h, w] = x.dims();
        let p = self.patch_size;
        let (gh, gw) = (h / p, w / p);
        let x = if h != gh * p || w != gw * p { x.slice([0..b, 0..c, 0..gh * p, 0..gw * p]) } else { x };
        let patches = x.reshape([b, c, gh, p, gw, p]).permute([0, 2, 4, 1, 3, 5]).reshape([b, gh * gw, c * p * p]);
        let weight = self.proj.weight.val();
        let d = weight.dims()[0];
        let weight = weight.reshape([d, c * p * p]).transpose();
        let tokens = linear(patches, weight, self.proj.bias.as_ref().map(|b| b.val()));
        let tokens = match &self.norm {
            Some(n) => n.forward(tokens),
            None => tokens,
        };
        (tokens, (gh, gw))
    }
}

/// Multi-head self-attention with a fused `qkv` projection.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[d, 3d]`; a method's branch (LoRA, MoSA-LoRA, sparse delta) sits at `qkv.branch`.
    pub qkv: TunableLinear<B>,
    pub proj: TunableLinear<B>,
    pub attn_drop: Dropout,
    pub proj_drop: Dropout,
    #[module(skip)]
    pub num_heads: usize,
}

impl<B: Kernels> Attention<B> {
    /// # Shapes
    /// `[b, t, d]` → `[b, t, d]`
    pub fn forward(&self, x: Tensor<B, 3>, draws: &mut Draws) -> Tensor<B, 3> {
        let qkv = self.qkv.forward(x, draws);
        let out = if self.attn_drop.prob > 0.0 && B::ad_enabled(&qkv.device()) { self.with_dropout(qkv) } else { attention_packed(qkv, self.num_heads) };
        self.proj_drop.forward(self.proj.forward(out, draws))
    }

    /// Attention with dropout on the probabilities (training only), composed of tensor ops.
    fn with_dropout(&self, qkv: Tensor<B, 3>) -> Tensor<B, 3> {
        let [q, k, v] = attention::split(qkv, self.num_heads);
        attention::merge_heads(self.attn_drop.forward(softmax(attention::scores(q, k), 3)).matmul(v))
    }
}

/// The transformer MLP: fc1 → exact GELU → dropout → fc2 → dropout.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub fc1: TunableLinear<B>,
    pub fc2: TunableLinear<B>,
    pub drop: Dropout,
}

impl<B: Kernels> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>, draws: &mut Draws) -> Tensor<B, 3> {
        let x = self.drop.forward(gelu(self.fc1.forward(x, draws)));
        self.drop.forward(self.fc2.forward(x, draws))
    }
}

/// Per-channel scaling of a residual branch (`ls1`, `ls2`; `gamma` in timm).
#[derive(Module, Debug)]
pub struct LayerScale<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
}

impl<B: Backend> LayerScale<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        x * self.gamma.val().unsqueeze::<3>()
    }
}

/// Stochastic depth: drops a whole residual branch per sample while training.
pub fn drop_path<B: Backend>(x: Tensor<B, 3>, rate: f64) -> Tensor<B, 3> {
    if rate == 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    let keep = 1.0 - rate;
    let [b, _, _] = x.dims();
    let mask = Tensor::<B, 3>::random([b, 1, 1], Distribution::Bernoulli(keep), &x.device());
    x * mask / keep
}

pub fn opt_scale<B: Backend>(ls: &Option<LayerScale<B>>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    match ls {
        Some(ls) => ls.forward(x),
        None => x,
    }
}

/// A randomly initialised layer of every family: N(0, 0.02) weights, zero bias (timm's init).
pub fn init_linear<B: Backend>(d_in: usize, d_out: usize, bias: bool, device: &B::Device) -> burn::nn::Linear<B> {
    let mut l = burn::nn::LinearConfig::new(d_in, d_out).with_bias(bias).with_initializer(burn::nn::Initializer::Normal { mean: 0.0, std: 0.02 }).init(device);
    l.bias = l.bias.map(|b| Param::from_tensor(Tensor::zeros(b.dims(), device)));
    l
}

/// The hook points of a pre-norm transformer block (ViT, Swin), borrowed from its fields.
pub struct BlockSlots<'a, B: Backend> {
    pub adapter: &'a mut Option<AdapterSlot<B>>,
    pub adapter_attn: &'a mut Option<AdapterSlot<B>>,
    pub adapter_mlp: &'a mut Option<AdapterSlot<B>>,
    pub qkv: &'a mut TunableLinear<B>,
    pub proj: &'a mut TunableLinear<B>,
    pub fc1: &'a mut TunableLinear<B>,
    pub fc2: &'a mut TunableLinear<B>,
}

impl<'a, B: Backend> BlockSlots<'a, B> {
    /// The block's sites: three adapter slots (parallel to the MLP — reading a normalised stream
    /// when `normalised_parallel` — after the attention, after the MLP), then the linear sites
    /// `qkv`, `proj`, `fc1`, `fc2` under the block's module path `prefix`.
    pub fn sites(self, block: usize, stage: usize, width: usize, prefix: &str, normalised_parallel: bool) -> Vec<SiteMut<'a, B>> {
        let adapter = |place| AdapterSite { block, stage, width, place, normalised_input: normalised_parallel && place == Placement::Parallel };
        let linear = |target: &'static str, path: &str, l: &TunableLinear<B>| {
            let (d_in, d_out) = l.dims();
            LinearSite { block, target, path: format!("{prefix}.{path}"), d_in, d_out }
        };
        let (qkv, proj, fc1, fc2) = (
            linear("qkv", "attn.qkv", self.qkv),
            linear("proj", "attn.proj", self.proj),
            linear("fc1", "mlp.fc1", self.fc1),
            linear("fc2", "mlp.fc2", self.fc2),
        );
        vec![
            SiteMut::Adapter { site: adapter(Placement::Parallel), slot: self.adapter },
            SiteMut::Adapter { site: adapter(Placement::AfterAttention), slot: self.adapter_attn },
            SiteMut::Adapter { site: adapter(Placement::AfterMlp), slot: self.adapter_mlp },
            SiteMut::Linear { site: qkv, linear: self.qkv },
            SiteMut::Linear { site: proj, linear: self.proj },
            SiteMut::Linear { site: fc1, linear: self.fc1 },
            SiteMut::Linear { site: fc2, linear: self.fc2 },
        ]
    }
}

/// A sequential adapter on a sublayer's output, before the residual: `f + A(f)`, or `f` when the
/// slot is empty or its adapter sits after the residual ([`stream`]).
pub fn sequential<B: Kernels>(slot: &Option<AdapterSlot<B>>, f: Tensor<B, 3>, draws: &mut Draws) -> Tensor<B, 3> {
    match slot {
        Some(a) if !a.on_stream() => f.clone() + a.forward(f, draws),
        _ => f,
    }
}

/// A sequential adapter on the stream after the residual: `y + A(y)` (Houlsby in the MoSA code
/// base), or `y` when the slot is empty or its adapter sits on the branch ([`sequential`]).
pub fn stream<B: Kernels>(slot: &Option<AdapterSlot<B>>, y: Tensor<B, 3>, draws: &mut Draws) -> Tensor<B, 3> {
    match slot {
        Some(a) if a.on_stream() => y.clone() + a.forward(y, draws),
        _ => y,
    }
}
