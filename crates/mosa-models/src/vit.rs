//! Vision Transformer: one config-driven implementation with timm's parameter names
//! (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.N.{norm1,attn.qkv,attn.proj,ls1,norm2,
//! mlp.fc1,mlp.fc2,ls2}`, `norm`, `head`), so that timm checkpoints map one to one and foreign
//! layouts (original ViT `.npz`, DINOv2) are mapped onto these names by the loaders in `load/`.
//!
//! Where it comes from: Dosovitskiy et al. 2021 (arXiv 2010.11929) as implemented in timm's
//! `vision_transformer.py`; DINOv2 (Oquab et al. 2023) is the same family with LayerScale and
//! bicubic position resampling without antialias.
//!
//! Its hook points (sites) are declared once, in [`VisionTransformer::sites_mut`]: per block three
//! adapter slots (parallel to the MLP, after the attention, after the MLP) and four linear sites
//! named by [`TARGETS`]; prompts apply.

use std::path::Path;

use burn::module::Param;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use mosa_core::layer_norm::{LayerNorm, LayerNormConfig};
use mosa_kernels::Kernels;

use mosa_core::prompt::Prompts;
use mosa_core::site::{PeftHost, PromptSite, SiteMut, Targets, TunableLinear};
use mosa_core::slot::AdapterSlot;
use mosa_core::{Draws, Rng};

use crate::error::Error;
use crate::family::{BackboneOutput, Family, FamilyConfig};
use crate::kwargs;
use crate::layers::{Attention, BlockSlots, LayerScale, Mlp, PatchEmbed, drop_path, opt_scale, sequential, stream};
use crate::load::by_path::Renames;
use crate::load::{HeadPolicy, StateDict};
use crate::posembed::{self, Resample};
use serde_json::Value;

/// The ViT's target vocabulary: its linear sites, and LoRA's / sparse's default (`qkv`).
pub const TARGETS: Targets =
    Targets { family: "vit", names: &["qkv", "proj", "fc1", "fc2"], default: &["qkv"], lora_default: &["q", "v"], parts: &[("qkv", &["q", "k", "v"])] };

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

    /// The parameter count, estimated in floating point from the config alone (no overflow on a
    /// hostile config; checked before anything is allocated).
    pub fn estimated_params(&self) -> f64 {
        crate::limits::transformer_params(self.depth, self.embed_dim, self.mlp_ratio)
            + self.in_chans as f64 * (self.patch_size * self.patch_size * self.embed_dim) as f64
            + self.num_classes as f64 * self.embed_dim as f64
    }

    /// Checks the configuration for consistency.
    pub fn validate(&self) -> crate::Result<()> {
        if self.embed_dim == 0 || self.depth == 0 || self.num_heads == 0 || self.patch_size == 0 {
            return Err(crate::Error::Config("embed_dim, depth, num_heads and patch_size must be positive".into()));
        }
        if !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(crate::Error::Config(format!("embed_dim {} is not divisible by num_heads {}", self.embed_dim, self.num_heads)));
        }
        if self.img_size < self.patch_size {
            return Err(crate::Error::Config(format!("img_size {} is smaller than patch_size {}", self.img_size, self.patch_size)));
        }
        if !self.img_size.is_multiple_of(self.patch_size) {
            let (lo, hi) = (self.img_size / self.patch_size * self.patch_size, (self.img_size / self.patch_size + 1) * self.patch_size);
            return Err(crate::Error::Config(format!(
                "img_size {} is not a multiple of patch_size {} (the patch grid would drop the last pixels); use {lo} or {hi}",
                self.img_size, self.patch_size
            )));
        }
        crate::limits::at_most("embed_dim", self.embed_dim, crate::limits::MAX_WIDTH)?;
        crate::limits::at_most("patch_size", self.patch_size, crate::limits::MAX_WIDTH)?;
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= 64.0) {
            return Err(crate::Error::Config(format!("mlp_ratio {} must be in (0, 64]", self.mlp_ratio)));
        }
        let tokens = (self.img_size / self.patch_size).saturating_pow(2).saturating_add(1);
        crate::limits::check(self.img_size, self.in_chans, self.num_classes, tokens, self.depth, self.estimated_params())?;
        for (name, p) in [
            ("drop_rate", self.drop_rate),
            ("pos_drop_rate", self.pos_drop_rate),
            ("proj_drop_rate", self.proj_drop_rate),
            ("attn_drop_rate", self.attn_drop_rate),
            ("drop_path_rate", self.drop_path_rate),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(crate::Error::Config(format!("{name} must be in [0, 1), got {p}")));
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
        let tlin = |i: usize, o: usize, bias: bool| TunableLinear::from(lin(i, o, bias));
        let norm = || LayerNormConfig::new(d).with_epsilon(self.norm_eps).init(device);
        let ls = || self.init_values.map(|v| LayerScale { gamma: Param::from_tensor(Tensor::full([d], v, device)) });
        let blocks = (0..self.depth)
            .map(|i| {
                let dpr = if self.depth > 1 { self.drop_path_rate * i as f64 / (self.depth - 1) as f64 } else { 0.0 };
                Block {
                    norm1: norm(),
                    attn: Attention {
                        qkv: tlin(d, 3 * d, self.qkv_bias),
                        proj: tlin(d, d, true),
                        attn_drop: DropoutConfig::new(self.attn_drop_rate).init(),
                        proj_drop: DropoutConfig::new(self.proj_drop_rate).init(),
                        num_heads: self.num_heads,
                    },
                    ls1: ls(),
                    norm2: norm(),
                    mlp: Mlp {
                        fc1: tlin(d, self.mlp_hidden(), true),
                        fc2: tlin(self.mlp_hidden(), d, true),
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
            patch_embed: PatchEmbed { proj, norm: None, patch_size: self.patch_size },
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
    /// Adapter after the attention (Houlsby): on its output before the residual, `a + A(a)`, or
    /// on the stream after it, `h + A(h)` (the slot's position).
    pub adapter_attn: Option<AdapterSlot<B>>,
    /// Adapter after the MLP (Pfeiffer, Houlsby): `m + A(m)` before the residual, or `y + A(y)`
    /// after it.
    pub adapter_mlp: Option<AdapterSlot<B>>,
    #[module(skip)]
    pub drop_path: f64,
}

impl<B: Kernels> Block<B> {
    /// # Shapes
    /// `[b, t, d]` → `[b, t, d]`
    pub fn forward(&self, x: Tensor<B, 3>, draws: &mut Draws) -> Tensor<B, 3> {
        let a = sequential(&self.adapter_attn, self.attn.forward(self.norm1.forward(x.clone()), draws), draws);
        let h = stream(&self.adapter_attn, x + drop_path(opt_scale(&self.ls1, a), self.drop_path), draws);
        let m = sequential(&self.adapter_mlp, self.mlp.forward(self.norm2.forward(h.clone()), draws), draws);
        let out = h.clone() + drop_path(opt_scale(&self.ls2, m), self.drop_path);
        let out = match &self.adapter {
            Some(slot) => out + slot.forward(h, draws),
            None => out,
        };
        stream(&self.adapter_mlp, out, draws)
    }

    /// The block's sites: three adapter slots, then the four linear sites of [`TARGETS`].
    fn sites_mut(&mut self, block: usize, d: usize) -> Vec<SiteMut<'_, B>> {
        let slots = BlockSlots {
            adapter: &mut self.adapter,
            adapter_attn: &mut self.adapter_attn,
            adapter_mlp: &mut self.adapter_mlp,
            qkv: &mut self.attn.qkv,
            proj: &mut self.attn.proj,
            fc1: &mut self.mlp.fc1,
            fc2: &mut self.mlp.fc2,
        };
        slots.sites(block, 0, d, &format!("blocks.{block}"), false)
    }
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

impl<B: Kernels> VisionTransformer<B> {
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
    pub fn head_forward(&self, x: Tensor<B, 3>, hidden: Vec<Tensor<B, 3>>) -> BackboneOutput<B> {
        let tokens = self.norm.forward(x);
        let [b, _, d] = tokens.dims();
        let pre_logits = tokens.clone().slice([0..b, 0..1, 0..d]).reshape([b, d]);
        let logits = match &self.head {
            Some(head) => head.forward(self.head_drop.forward(pre_logits.clone())),
            None => pre_logits.clone(),
        };
        BackboneOutput { features: tokens, pre_logits, logits, hidden, spatial: None }
    }

    /// Forward pass; `collect_hidden` keeps every block's output in [`BackboneOutput::hidden`];
    /// `draws` draws the active experts of MoSA methods (one per block and pass, whole batch).
    pub fn forward_draws(&self, x: Tensor<B, 4>, collect_hidden: bool, draws: &mut Draws) -> BackboneOutput<B> {
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
            x = block.forward(x, draws);
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
    pub fn forward_with(&self, x: Tensor<B, 4>, collect_hidden: bool) -> BackboneOutput<B> {
        self.forward_draws(x, collect_hidden, &mut Draws::whole(Rng::new(0)))
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> BackboneOutput<B> {
        self.forward_with(x, false)
    }
}

impl<B: Kernels> PeftHost<B> for VisionTransformer<B> {
    fn targets(&self) -> Targets {
        TARGETS
    }
    fn sites_mut(&mut self) -> Vec<SiteMut<'_, B>> {
        let d = self.embed_dim();
        self.blocks.iter_mut().enumerate().flat_map(|(i, b)| b.sites_mut(i, d)).collect()
    }
    fn prompts_mut(&mut self) -> Option<(PromptSite, &mut Option<Prompts<B>>)> {
        let site = PromptSite { width: self.embed_dim(), patch_size: self.patch_embed.patch_size, depth: self.blocks.len() };
        Some((site, &mut self.prompts))
    }
    fn head_mut(&mut self) -> Option<&mut Linear<B>> {
        self.head.as_mut()
    }
}

/// Builds a ViT for `config` and loads `path` into it (`BackboneConfig::load` for any family).
pub fn load_vit<B: Backend>(config: &VitConfig, path: &Path, head: HeadPolicy, device: &B::Device) -> crate::Result<VisionTransformer<B>> {
    FamilyConfig::load(config, crate::load::read_checkpoint(path)?, head, device)
}

/// If a state dict's `pos_embed` is for another (square) grid than `config`'s, resamples it to
/// the config's grid with the config's resampling method (other shapes are left for the loader
/// to report).
fn resample_stored_pos_embed(sd: &mut StateDict, config: &VitConfig) -> crate::Result<()> {
    let (gh, gw) = config.grid();
    let source = sd.source.clone();
    let Some(pos) = sd.tensors.get_mut("pos_embed") else { return Ok(()) };
    let d = config.embed_dim;
    if pos.shape.len() != 3 || pos.shape[0] != 1 || pos.shape[2] != d || pos.shape[1] == 1 + gh * gw {
        return Ok(());
    }
    let n = pos.shape[1] - 1;
    let g = (n as f64).sqrt().round() as usize;
    if g * g != n {
        return Err(crate::Error::Mismatch { path: source, problems: vec![format!("tensor `pos_embed` has {n} patch positions, which is not a square grid")] });
    }
    let grid = crate::posembed::resample_host(&pos.data[d..], d, (g, g), (gh, gw), config.pos_resample);
    let mut data = pos.data[..d].to_vec();
    data.extend(grid);
    *pos = mosa_core::HostTensor::new(vec![1, 1 + gh * gw, d], data);
    Ok(())
}

impl FamilyConfig for VitConfig {
    const NAME: &'static str = "vit";
    type Model<B: Backend> = VisionTransformer<B>;

    fn describe(&self) -> String {
        format!("d {}, {} blocks, {} heads, patch {}", self.embed_dim, self.depth, self.num_heads, self.patch_size)
    }
    fn validate(&self) -> crate::Result<()> {
        VitConfig::validate(self)
    }
    fn estimated_params(&self) -> f64 {
        VitConfig::estimated_params(self)
    }
    fn num_params(&self) -> usize {
        VitConfig::num_params(self)
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn with_num_classes(self, n: usize) -> Self {
        VitConfig::with_num_classes(self, n)
    }
    /// The position grid is resampled to the new size.
    fn with_img_size(self, s: usize) -> Self {
        VitConfig::with_img_size(self, s)
    }
    fn in_chans(&self) -> usize {
        self.in_chans
    }
    fn min_input(&self) -> usize {
        self.patch_size
    }
    fn head_key(&self) -> &'static str {
        "head"
    }
    /// The patch embedding, every block's qkv, proj, fc1, fc2 and attention over all tokens (the
    /// class token included), the head.
    fn forward_flops(&self) -> f64 {
        let (d, p) = (self.embed_dim as f64, self.patch_size as f64);
        let patches = ((self.img_size / self.patch_size) as f64).powi(2);
        let t = patches + 1.0;
        let hidden = d * self.mlp_ratio;
        let block = 2.0 * t * (3.0 * d * d + d * d + 2.0 * d * hidden) + 4.0 * t * t * d;
        2.0 * patches * (self.in_chans as f64 * p * p) * d + self.depth as f64 * block + 2.0 * d * self.num_classes as f64
    }
    fn build<B: Backend>(&self, device: &B::Device) -> VisionTransformer<B> {
        self.init(device)
    }
    const TIMM_CLASS: &'static str = "VisionTransformer";
    /// timm's plain ViT has no argument of its own: it is the default of an unnamed description
    /// (`presets::config_from_json`).
    fn claims_timm_kwargs(_kwargs: &serde_json::Value) -> bool {
        false
    }
    /// The arguments carry `img_size`: `input_hw` is not needed.
    fn from_timm_kwargs(kwargs: &serde_json::Value, _input_hw: Option<usize>) -> crate::Result<Self> {
        let obj = kwargs::object(kwargs)?;
        let mut c = VitConfig::new();
        for (k, v) in obj {
            match k.as_str() {
                "img_size" => c.img_size = kwargs::as_usize(k, v)?,
                "patch_size" => c.patch_size = kwargs::as_usize(k, v)?,
                "in_chans" => c.in_chans = kwargs::as_usize(k, v)?,
                "num_classes" => c.num_classes = kwargs::as_usize(k, v)?,
                "embed_dim" => c.embed_dim = kwargs::as_usize(k, v)?,
                "depth" => c.depth = kwargs::as_usize(k, v)?,
                "num_heads" => c.num_heads = kwargs::as_usize(k, v)?,
                "mlp_ratio" => c.mlp_ratio = kwargs::as_f64(k, v)?,
                "qkv_bias" => c.qkv_bias = kwargs::as_bool(k, v)?,
                "init_values" => c.init_values = if v.is_null() { None } else { Some(kwargs::as_f64(k, v)?) },
                "drop_rate" => c.drop_rate = kwargs::as_f64(k, v)?,
                "pos_drop_rate" => c.pos_drop_rate = kwargs::as_f64(k, v)?,
                "proj_drop_rate" => c.proj_drop_rate = kwargs::as_f64(k, v)?,
                "attn_drop_rate" => c.attn_drop_rate = kwargs::as_f64(k, v)?,
                "drop_path_rate" => c.drop_path_rate = kwargs::as_f64(k, v)?,
                // We always accept other input sizes (resampling the grid), as timm does with this flag.
                "dynamic_img_size" => {
                    kwargs::as_bool(k, v)?;
                }
                "class_token" if v == &Value::Bool(true) => {}
                "global_pool" if v == "token" => {}
                "qk_norm" | "no_embed_class" | "reg_tokens" | "pre_norm" | "fc_norm" | "dynamic_img_pad"
                    if v == &Value::Bool(false) || v == &Value::from(0) || v.is_null() => {}
                _ => return Err(crate::Error::Config(format!("timm argument `{k}` = {v} is not supported"))),
            }
        }
        Ok(c)
    }
    /// timm's names throughout.
    const RENAMES: Renames = &[];
    /// The depth is checked; a stored position grid of another (square) size is resampled to the
    /// model's grid with the model's resampling method.
    fn prepare(&self, sd: &mut StateDict) -> crate::Result<()> {
        let depth = sd.depth();
        if depth != self.depth {
            return Err(Error::Mismatch { path: sd.source.clone(), problems: vec![format!("checkpoint has {depth} blocks, the model {}", self.depth)] });
        }
        resample_stored_pos_embed(sd, self)
    }
}

impl<B: Kernels> Family<B> for VisionTransformer<B> {
    type Config = VitConfig;

    fn forward_draws(&self, x: Tensor<B, 4>, collect_hidden: bool, draws: &mut Draws) -> BackboneOutput<B> {
        VisionTransformer::forward_draws(self, x, collect_hidden, draws)
    }
    fn num_classes(&self) -> usize {
        VisionTransformer::num_classes(self)
    }
    /// The position embeddings are re-gridded; the config is not needed.
    fn set_img_size(self, _cfg: &VitConfig, s: usize) -> Self {
        VisionTransformer::set_img_size(self, s)
    }
    /// `p` after the position embedding and in every MLP; attention dropout 0.
    fn with_training_dropout(mut self, p: f64) -> Self {
        let zero = || DropoutConfig::new(0.0).init();
        let rate = || DropoutConfig::new(p).init();
        self.pos_drop = rate();
        for b in &mut self.blocks {
            (b.mlp.drop, b.attn.attn_drop, b.attn.proj_drop) = (rate(), zero(), zero());
        }
        self
    }
}
