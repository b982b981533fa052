//! Vision Transformer: one config-driven implementation with timm's parameter names
//! (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.N.{norm1,attn.qkv,attn.proj,ls1,norm2,
//! mlp.fc1,mlp.fc2,ls2}`, `norm`, `head`), so that timm checkpoints map one to one and foreign
//! layouts (original ViT `.npz`, DINOv2) are mapped onto these names by the loaders in `load/`.
//!
//! Training mode follows burn's convention: dropout and drop-path are active when the backend
//! tracks gradients (`B::ad_enabled`), i.e. on an `Autodiff` backend, and off on its inner backend.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Dropout, DropoutConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::module::{attention, linear};

use mosa_core::Rng;
use mosa_core::prompt::Prompts;
use mosa_core::slot::{AdapterSlot, LinearBranch, Placement, linear_with, merge_linear};

use crate::posembed::{self, Resample};

/// Configuration of a [`VisionTransformer`]; timm's constructor arguments under the same names.
#[derive(Config, Debug)]
pub struct VitConfig {
    /// Input resolution the position grid is built for (square).
    #[config(default = 224)]
    pub img_size: usize,
    #[config(default = 16)]
    pub patch_size: usize,
    #[config(default = 3)]
    pub in_chans: usize,
    /// Classes of the linear head; 0 means no head (logits = pre-logits).
    #[config(default = 0)]
    pub num_classes: usize,
    #[config(default = 768)]
    pub embed_dim: usize,
    #[config(default = 12)]
    pub depth: usize,
    #[config(default = 12)]
    pub num_heads: usize,
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    #[config(default = true)]
    pub qkv_bias: bool,
    /// LayerScale initial value (`init_values` in timm); `None` means no LayerScale.
    #[config(default = "None")]
    pub init_values: Option<f64>,
    /// LayerNorm epsilon (timm and the original ViT checkpoints: 1e-6).
    #[config(default = 1e-6)]
    pub norm_eps: f64,
    /// Dropout before the head (timm `drop_rate`).
    #[config(default = 0.0)]
    pub drop_rate: f64,
    /// Dropout after adding position embeddings.
    #[config(default = 0.0)]
    pub pos_drop_rate: f64,
    /// Dropout after the attention projection and inside the MLP.
    #[config(default = 0.0)]
    pub proj_drop_rate: f64,
    /// Dropout on the attention probabilities.
    #[config(default = 0.0)]
    pub attn_drop_rate: f64,
    /// Stochastic depth, increasing linearly to this rate over the blocks.
    #[config(default = 0.0)]
    pub drop_path_rate: f64,
    /// How the position grid is resampled to other input sizes.
    #[config(default = "Resample::BicubicAntialias")]
    pub pos_resample: Resample,
}

impl VitConfig {
    /// Patch grid of the configured input size.
    pub fn grid(&self) -> (usize, usize) {
        (self.img_size / self.patch_size, self.img_size / self.patch_size)
    }

    pub fn mlp_hidden(&self) -> usize {
        (self.embed_dim as f64 * self.mlp_ratio) as usize
    }

    /// Number of parameters of the model this config builds (closed form).
    pub fn num_params(&self) -> usize {
        let (d, h, c, p) = (self.embed_dim, self.mlp_hidden(), self.in_chans, self.patch_size);
        let (gh, gw) = self.grid();
        let qkv_bias = if self.qkv_bias { 3 * d } else { 0 };
        let ls = if self.init_values.is_some() { 2 * d } else { 0 };
        let block = 4 * d + (3 * d * d + qkv_bias) + (d * d + d) + (d * h + h) + (h * d + d) + ls;
        let head = if self.num_classes > 0 { d * self.num_classes + self.num_classes } else { 0 };
        (d * c * p * p + d) + d + (1 + gh * gw) * d + self.depth * block + 2 * d + head
    }

    /// Checks the configuration for consistency.
    pub fn validate(&self) -> Result<(), String> {
        if self.embed_dim == 0 || self.depth == 0 || self.num_heads == 0 || self.patch_size == 0 {
            return Err("embed_dim, depth, num_heads and patch_size must be positive".into());
        }
        if self.embed_dim % self.num_heads != 0 {
            return Err(format!("embed_dim {} is not divisible by num_heads {}", self.embed_dim, self.num_heads));
        }
        if self.img_size < self.patch_size {
            return Err(format!("img_size {} is smaller than patch_size {}", self.img_size, self.patch_size));
        }
        for (name, p) in [
            ("drop_rate", self.drop_rate),
            ("pos_drop_rate", self.pos_drop_rate),
            ("proj_drop_rate", self.proj_drop_rate),
            ("attn_drop_rate", self.attn_drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} must be in [0, 1), got {p}"));
            }
        }
        Ok(())
    }

    /// Builds a randomly initialised model (timm-like init: N(0, 0.02) weights, zero biases,
    /// unit norms; LayerScale at `init_values`).
    pub fn init<B: Backend>(&self, device: &B::Device) -> VisionTransformer<B> {
        let d = self.embed_dim;
        let (gh, gw) = self.grid();
        let w_init = Initializer::Normal { mean: 0.0, std: 0.02 };
        let lin = |i: usize, o: usize, bias: bool| {
            let mut l = LinearConfig::new(i, o).with_bias(bias).with_initializer(w_init.clone()).init(device);
            l.bias = l.bias.map(|b| Param::from_tensor(Tensor::zeros(b.dims(), device)));
            l
        };
        let norm = || LayerNormConfig::new(d).with_epsilon(self.norm_eps).init(device);
        let ls = || {
            self.init_values.map(|v| LayerScale { gamma: Param::from_tensor(Tensor::full([d], v, device)) })
        };
        let blocks = (0..self.depth)
            .map(|i| {
                let dpr = if self.depth > 1 { self.drop_path_rate * i as f64 / (self.depth - 1) as f64 } else { 0.0 };
                Block {
                    norm1: norm(),
                    attn: Attention {
                        qkv: lin(d, 3 * d, self.qkv_bias),
                        qkv_branch: None,
                        proj: lin(d, d, true),
                        proj_branch: None,
                        attn_drop: DropoutConfig::new(self.attn_drop_rate).init(),
                        proj_drop: DropoutConfig::new(self.proj_drop_rate).init(),
                        num_heads: self.num_heads,
                    },
                    ls1: ls(),
                    norm2: norm(),
                    mlp: Mlp {
                        fc1: lin(d, self.mlp_hidden(), true),
                        fc1_branch: None,
                        fc2: lin(self.mlp_hidden(), d, true),
                        fc2_branch: None,
                        drop: DropoutConfig::new(self.proj_drop_rate).init(),
                    },
                    ls2: ls(),
                    adapter: None,
                    adapter_attn: None,
                    adapter_mlp: None,
                    drop_path: dpr,
                }
            })
            .collect();
        let proj = Conv2dConfig::new([self.in_chans, d], [self.patch_size, self.patch_size])
            .with_stride([self.patch_size, self.patch_size])
            .with_initializer(w_init.clone())
            .init(device);
        VisionTransformer {
            patch_embed: PatchEmbed { proj, patch_size: self.patch_size },
            cls_token: Param::from_tensor(Tensor::random([1, 1, d], Distribution::Normal(0.0, 1e-6), device)),
            pos_embed: Param::from_tensor(Tensor::random([1, 1 + gh * gw, d], Distribution::Normal(0.0, 0.02), device)),
            pos_drop: DropoutConfig::new(self.pos_drop_rate).init(),
            prompts: None,
            blocks,
            norm: norm(),
            head_drop: DropoutConfig::new(self.drop_rate).init(),
            head: (self.num_classes > 0).then(|| lin(d, self.num_classes, true)),
            grid: [gh, gw],
            pos_resample: self.pos_resample,
        }
    }
}

/// Non-overlapping patches → tokens, stored as timm's convolution (`patch_embed.proj`)
/// and computed as one matmul over flattened patches.
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    pub proj: Conv2d<B>,
    #[module(skip)]
    pub patch_size: usize,
}

impl<B: Backend> PatchEmbed<B> {
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
        (linear(patches, weight, self.proj.bias.as_ref().map(|b| b.val())), (gh, gw))
    }
}

/// Multi-head self-attention with a fused `qkv` projection.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub qkv: Linear<B>,
    /// A method's branch on `qkv` (LoRA, MoSA-LoRA, sparse delta).
    pub qkv_branch: Option<LinearBranch<B>>,
    pub proj: Linear<B>,
    pub proj_branch: Option<LinearBranch<B>>,
    pub attn_drop: Dropout,
    pub proj_drop: Dropout,
    #[module(skip)]
    pub num_heads: usize,
}

impl<B: Backend> Attention<B> {
    pub fn forward(&self, x: Tensor<B, 3>, rng: &mut Rng) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let h = self.num_heads;
        let hd = d / h;
        let qkv = linear_with(&self.qkv, &self.qkv_branch, x, rng).reshape([b, t, 3, h, hd]).permute([2, 0, 3, 1, 4]);
        let mut parts = qkv.chunk(3, 0).into_iter().map(|p| p.reshape([b, h, t, hd]));
        let (q, k, v) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let out = if self.attn_drop.prob > 0.0 && B::ad_enabled(&q.device()) {
            let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt());
            self.attn_drop.forward(softmax(scores, 3)).matmul(v)
        } else {
            attention(q, k, v, None, None, Default::default())
        };
        let out = out.swap_dims(1, 2).reshape([b, t, d]);
        self.proj_drop.forward(linear_with(&self.proj, &self.proj_branch, out, rng))
    }
}

/// The transformer MLP: fc1 → exact GELU → dropout → fc2 → dropout.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc1_branch: Option<LinearBranch<B>>,
    pub fc2: Linear<B>,
    pub fc2_branch: Option<LinearBranch<B>>,
    pub drop: Dropout,
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>, rng: &mut Rng) -> Tensor<B, 3> {
        let x = self.drop.forward(gelu(linear_with(&self.fc1, &self.fc1_branch, x, rng)));
        self.drop.forward(linear_with(&self.fc2, &self.fc2_branch, x, rng))
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

fn opt_scale<B: Backend>(ls: &Option<LayerScale<B>>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    match ls {
        Some(ls) => ls.forward(x),
        None => x,
    }
}

/// A pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn: Attention<B>,
    pub ls1: Option<LayerScale<B>>,
    pub norm2: LayerNorm<B>,
    pub mlp: Mlp<B>,
    pub ls2: Option<LayerScale<B>>,
    /// Adapter parallel to the MLP, reading the MLP's input stream: `h + MLP(LN2(h)) + A(h)`
    /// (AdaptFormer / MoSA; the adapter has its own LayerNorm).
    pub adapter: Option<AdapterSlot<B>>,
    /// Adapter on the attention output, before the residual: `a + A(a)` (Houlsby).
    pub adapter_attn: Option<AdapterSlot<B>>,
    /// Adapter on the MLP output, before the residual: `m + A(m)` (Pfeiffer, Houlsby).
    pub adapter_mlp: Option<AdapterSlot<B>>,
    #[module(skip)]
    pub drop_path: f64,
}

fn sequential<B: Backend>(slot: &Option<AdapterSlot<B>>, x: Tensor<B, 3>, rng: &mut Rng) -> Tensor<B, 3> {
    match slot {
        Some(a) => x.clone() + a.forward(x, rng),
        None => x,
    }
}

/// Module paths (inside a block) of the four linear-layer branch slots, in [`Block::branches`] order.
const BRANCH_PATHS: [&str; 4] = ["attn.qkv_branch", "attn.proj_branch", "mlp.fc1_branch", "mlp.fc2_branch"];

impl<B: Backend> Block<B> {
    /// The branch slots of qkv, proj, fc1, fc2 (see [`BRANCH_PATHS`]).
    fn branches(&self) -> [&Option<LinearBranch<B>>; 4] {
        [&self.attn.qkv_branch, &self.attn.proj_branch, &self.mlp.fc1_branch, &self.mlp.fc2_branch]
    }

    fn branches_mut(&mut self) -> [&mut Option<LinearBranch<B>>; 4] {
        [&mut self.attn.qkv_branch, &mut self.attn.proj_branch, &mut self.mlp.fc1_branch, &mut self.mlp.fc2_branch]
    }

    pub fn forward(&self, x: Tensor<B, 3>, rng: &mut Rng) -> Tensor<B, 3> {
        let a = sequential(&self.adapter_attn, self.attn.forward(self.norm1.forward(x.clone()), rng), rng);
        let h = x + drop_path(opt_scale(&self.ls1, a), self.drop_path);
        let m = sequential(&self.adapter_mlp, self.mlp.forward(self.norm2.forward(h.clone()), rng), rng);
        let out = h.clone() + drop_path(opt_scale(&self.ls2, m), self.drop_path);
        match &self.adapter {
            Some(slot) => out + slot.forward(h, rng),
            None => out,
        }
    }

    /// Every MoSA slot averaged into a plain adapter and every linear branch folded into its
    /// base weight: the inference model, costing exactly one plain adapter per slot.
    pub fn merged(&self) -> Self {
        let mut b = self.clone();
        for slot in [&mut b.adapter, &mut b.adapter_attn, &mut b.adapter_mlp].into_iter().flatten() {
            *slot = slot.merged();
        }
        for (lin, branch) in [
            (&mut b.attn.qkv, &mut b.attn.qkv_branch),
            (&mut b.attn.proj, &mut b.attn.proj_branch),
            (&mut b.mlp.fc1, &mut b.mlp.fc1_branch),
            (&mut b.mlp.fc2, &mut b.mlp.fc2_branch),
        ] {
            if let Some(br) = branch.take() {
                *lin = merge_linear(lin, &br);
            }
        }
        b
    }
}

/// What a forward pass returns.
#[derive(Debug, Clone)]
pub struct VitOutput<B: Backend> {
    /// All tokens after the final norm, `[b, 1 + gh·gw, d]`.
    pub tokens: Tensor<B, 3>,
    /// The class token after the final norm, `[b, d]`.
    pub pre_logits: Tensor<B, 2>,
    /// Head output `[b, classes]` (equal to `pre_logits` when the model has no head).
    pub logits: Tensor<B, 2>,
    /// The output of every block (before the final norm), when asked for.
    pub hidden: Vec<Tensor<B, 3>>,
}

/// The Vision Transformer.
#[derive(Module, Debug)]
pub struct VisionTransformer<B: Backend> {
    pub patch_embed: PatchEmbed<B>,
    pub cls_token: Param<Tensor<B, 3>>,
    pub pos_embed: Param<Tensor<B, 3>>,
    pub pos_drop: Dropout,
    /// VPT prompt tokens, inserted after the class token.
    pub prompts: Option<Prompts<B>>,
    pub blocks: Vec<Block<B>>,
    pub norm: LayerNorm<B>,
    pub head_drop: Dropout,
    pub head: Option<Linear<B>>,
    /// Patch grid the stored `pos_embed` belongs to.
    #[module(skip)]
    pub grid: [usize; 2],
    #[module(skip)]
    pub pos_resample: Resample,
}

impl<B: Backend> VisionTransformer<B> {
    pub fn embed_dim(&self) -> usize {
        self.cls_token.dims()[2]
    }

    pub fn num_classes(&self) -> usize {
        self.head.as_ref().map(|h| h.weight.dims()[1]).unwrap_or(0)
    }

    /// Position embeddings for a patch grid: the stored ones, or a resampling of them.
    pub fn pos_embed_for(&self, grid: (usize, usize)) -> Tensor<B, 3> {
        let pos = self.pos_embed.val();
        let stored = (self.grid[0], self.grid[1]);
        if grid == stored {
            return pos;
        }
        let [_, t, d] = pos.dims();
        let cls = pos.clone().slice([0..1, 0..1, 0..d]);
        let patches = pos.slice([0..1, 1..t, 0..d]);
        Tensor::cat(vec![cls, posembed::resample(patches, stored, grid, self.pos_resample)], 1)
    }

    /// Re-grids the stored position embeddings for `img_size` once, so that training at a fixed
    /// resolution does no resampling per forward pass (timm does the same when loading a
    /// checkpoint at another size).
    pub fn set_img_size(mut self, img_size: usize) -> Self {
        let g = img_size / self.patch_embed.patch_size;
        if [g, g] != self.grid {
            let pos = self.pos_embed_for((g, g));
            self.pos_embed = Param::from_tensor(pos.detach());
            self.grid = [g, g];
        }
        self
    }

    /// Tokens entering the first block: patch embedding, class token, position embedding.
    pub fn embed(&self, x: Tensor<B, 4>) -> Tensor<B, 3> {
        let (tokens, grid) = self.patch_embed.forward(x);
        let [b, _, d] = tokens.dims();
        let cls = self.cls_token.val().expand([b, 1, d]);
        let x = Tensor::cat(vec![cls, tokens], 1) + self.pos_embed_for(grid);
        self.pos_drop.forward(x)
    }

    /// Final norm, pooling and head on the output of the last block.
    pub fn head_forward(&self, x: Tensor<B, 3>, hidden: Vec<Tensor<B, 3>>) -> VitOutput<B> {
        let tokens = self.norm.forward(x);
        let [b, _, d] = tokens.dims();
        let pre_logits = tokens.clone().slice([0..b, 0..1, 0..d]).reshape([b, d]);
        let logits = match &self.head {
            Some(head) => head.forward(self.head_drop.forward(pre_logits.clone())),
            None => pre_logits.clone(),
        };
        VitOutput { tokens, pre_logits, logits, hidden }
    }

    /// Forward pass; `collect_hidden` keeps every block's output in [`VitOutput::hidden`];
    /// `rng` draws the active experts of MoSA methods (one per block and pass, whole batch).
    pub fn forward_rng(&self, x: Tensor<B, 4>, collect_hidden: bool, rng: &mut Rng) -> VitOutput<B> {
        let mut x = self.embed(x);
        let mut hidden = Vec::new();
        for (l, block) in self.blocks.iter().enumerate() {
            if let Some(p) = &self.prompts {
                x = match (l, p.deep()) {
                    (0, _) => p.insert(x, 0),
                    (_, true) => p.replace(x, l),
                    _ => x,
                };
            }
            x = block.forward(x, rng);
            if collect_hidden {
                hidden.push(x.clone());
            }
        }
        if let Some(p) = &self.prompts {
            x = p.remove(x);
        }
        self.head_forward(x, hidden)
    }

    /// Forward pass with a fixed expert stream (evaluation uses merged experts and needs none).
    pub fn forward_with(&self, x: Tensor<B, 4>, collect_hidden: bool) -> VitOutput<B> {
        self.forward_rng(x, collect_hidden, &mut Rng::new(0))
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> VitOutput<B> {
        self.forward_with(x, false)
    }

    /// The inference model: MoSA experts averaged, LoRA and sparse deltas folded into weights.
    pub fn merged(&self) -> Self {
        let mut m = self.clone();
        m.blocks = self.blocks.iter().map(Block::merged).collect();
        m
    }

    /// The 0/1 masks of the sparse deltas, keyed by the path of their `delta` parameter.
    /// Masks are state, not parameters: checkpoints and saved runs store them with these keys.
    pub fn sparse_masks(&self) -> Vec<(String, Tensor<B, 2>)> {
        let mut v = Vec::new();
        for (l, b) in self.blocks.iter().enumerate() {
            for (name, br) in BRANCH_PATHS.into_iter().zip(b.branches()) {
                if let Some(LinearBranch::Sparse(s)) = br {
                    v.push((format!("blocks.{l}.{name}.Sparse.delta"), s.mask.clone()));
                }
            }
        }
        v
    }

    /// Restores sparse masks saved by [`VisionTransformer::sparse_masks`]; every key must name a
    /// sparse delta of this model, with its shape.
    pub fn with_sparse_masks(mut self, masks: &std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>) -> std::result::Result<Self, String> {
        let mut used = 0;
        for (l, b) in self.blocks.iter_mut().enumerate() {
            for (name, br) in BRANCH_PATHS.into_iter().zip(b.branches_mut()) {
                if let Some(LinearBranch::Sparse(s)) = br {
                    let key = format!("blocks.{l}.{name}.Sparse.delta");
                    if let Some((shape, data)) = masks.get(&key) {
                        let dims = s.mask.dims();
                        if shape.as_slice() != dims.as_slice() {
                            return Err(format!("sparse mask {key}: shape {shape:?}, the model has {dims:?}"));
                        }
                        s.mask = Tensor::from_data(TensorData::new(data.clone(), [dims[0], dims[1]]), &s.mask.device());
                        used += 1;
                    }
                }
            }
        }
        if used != masks.len() {
            return Err(format!("{} sparse mask(s) do not match a sparse delta of this model", masks.len() - used));
        }
        Ok(self)
    }
}

impl<B: burn::tensor::backend::AutodiffBackend> VisionTransformer<B> {
    /// Sparse adapters: re-selects every sparse delta's mask from the gradients of the last
    /// backward pass. The training loop calls this when `SparseConfig::action` says so.
    pub fn reselect_sparse(mut self, grads: &burn::optim::GradientsParams, cfg: &mosa_core::sparse::SparseConfig, rng: &mut Rng) -> Self {
        let mut slots: Vec<&mut Option<LinearBranch<B>>> = Vec::new();
        for b in &mut self.blocks {
            slots.extend(b.branches_mut());
        }
        let mut owners = Vec::new();
        let mut deltas = Vec::new();
        for (k, slot) in slots.iter_mut().enumerate() {
            if let Some(LinearBranch::Sparse(_)) = slot {
                if let Some(LinearBranch::Sparse(d)) = slot.take() {
                    owners.push(k);
                    deltas.push(d);
                }
            }
        }
        let deltas = mosa_core::sparse::reselect(deltas, grads, cfg, rng);
        for (k, d) in owners.into_iter().zip(deltas) {
            *slots[k] = Some(LinearBranch::Sparse(d));
        }
        self
    }

    /// Masks the gradients of every expert-split tensor (call once per step, after backward).
    pub fn mask_gradients(&self, grads: &mut burn::optim::GradientsParams) {
        for b in &self.blocks {
            for slot in [&b.adapter, &b.adapter_attn, &b.adapter_mlp].into_iter().flatten() {
                slot.mask_gradients(grads);
            }
            for br in b.branches().into_iter().flatten() {
                br.mask_gradients(grads);
            }
        }
    }
}

impl<B: Backend> mosa_core::PeftHost<B> for VisionTransformer<B> {
    fn depth(&self) -> usize {
        self.blocks.len()
    }
    fn width(&self) -> usize {
        self.embed_dim()
    }
    fn patch_size(&self) -> usize {
        self.patch_embed.patch_size
    }
    fn linear_dims(&self, block: usize, name: &str) -> Option<(usize, usize)> {
        let b = self.blocks.get(block)?;
        let l = match name {
            "qkv" => &b.attn.qkv,
            "proj" => &b.attn.proj,
            "fc1" => &b.mlp.fc1,
            "fc2" => &b.mlp.fc2,
            _ => return None,
        };
        let [i, o] = l.weight.dims();
        Some((i, o))
    }
    fn set_adapter(&mut self, block: usize, place: Placement, slot: AdapterSlot<B>) {
        let b = &mut self.blocks[block];
        match place {
            Placement::Parallel => b.adapter = Some(slot),
            Placement::AfterAttention => b.adapter_attn = Some(slot),
            Placement::AfterMlp => b.adapter_mlp = Some(slot),
        }
    }
    fn set_linear_branch(&mut self, block: usize, name: &str, branch: LinearBranch<B>) {
        let b = &mut self.blocks[block];
        match name {
            "qkv" => b.attn.qkv_branch = Some(branch),
            "proj" => b.attn.proj_branch = Some(branch),
            "fc1" => b.mlp.fc1_branch = Some(branch),
            "fc2" => b.mlp.fc2_branch = Some(branch),
            other => panic!("no linear layer `{other}` (checked by linear_dims first)"),
        }
    }
    fn set_prompts(&mut self, prompts: Prompts<B>) {
        self.prompts = Some(prompts);
    }
}
