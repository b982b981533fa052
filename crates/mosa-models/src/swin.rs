//! Swin Transformer (v1): one config-driven implementation with timm's parameter names
//! (`patch_embed.{proj,norm}`, `layers.S.downsample.{norm,reduction}`,
//! `layers.S.blocks.N.{norm1,attn.qkv,attn.relative_position_bias_table,attn.proj,norm2,mlp.fc1,
//! mlp.fc2}`, `norm`, `head.fc`), so timm checkpoints map one to one; the original release's
//! layout (patch merging at the end of a stage, `head.`) is mapped by
//! [`crate::load::swin_official`].
//!
//! Where it comes from: Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer using
//! Shifted Windows" (arXiv 2103.14030), as implemented in timm's `swin_transformer.py` (1.0):
//! windows no larger than a stage's grid (and no shift when one window covers it), cyclic shift
//! then zero padding to whole windows, the shifted-window mask of −100 between regions, relative
//! position bias from a `(2w−1)²` table, patch merging of 2×2 neighbours (`x0, x1, x2, x3` order)
//! with a LayerNorm over 4C and a bias-free reduction, mean pooling before the head.
//!
//! Hook points (sites) are declared once, in `SwinBlock::sites_mut`: per block three adapter
//! slots (parallel to the MLP, reading the MLP's own input `norm2(h)` without a LayerNorm of its
//! own, the MLP and the adapter summed under one drop path, as the MoSA reference's Swin; after
//! the attention; after the MLP) and the four linear sites of [`TARGETS`]. VPT prompts are not
//! implemented for windowed attention.

use burn::module::Param;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::{Distribution, Int, TensorData};
use mosa_core::layer_norm::{LayerNorm, LayerNormConfig};
use mosa_kernels::window_attention as wa;
use mosa_kernels::{Kernels, Windows, attention, window_attention};

use mosa_core::Draws;
use mosa_core::prompt::Prompts;
use mosa_core::site::{PeftHost, PromptSite, SiteMut, Targets, TunableLinear};
use mosa_core::slot::AdapterSlot;

use crate::error::Error;
use crate::family::{BackboneOutput, Family, FamilyConfig, Spatial};
use crate::kwargs;
use crate::layers::{BlockSlots, Mlp, PatchEmbed, drop_path, init_linear, sequential, stream};
use crate::load::by_path::Renames;
use crate::load::{HostTensor, StateDict};
use crate::posembed::{self, Resample};
use serde_json::Value;

/// Swin's target vocabulary (the same linear names as a ViT's), and the default (`qkv`).
pub const TARGETS: Targets =
    Targets { family: "swin", names: &["qkv", "proj", "fc1", "fc2"], default: &["qkv"], lora_default: &["q", "v"], parts: &[("qkv", &["q", "k", "v"])] };

/// Configuration of a [`SwinTransformer`]; timm's constructor arguments under the same names.
#[derive(Config, Debug)]
pub struct SwinConfig {
    /// Input resolution the windows are sized for (square).
    #[config(default = 224)]
    pub img_size: usize,
    #[config(default = 4)]
    pub patch_size: usize,
    #[config(default = 3)]
    pub in_chans: usize,
    /// Classes of the linear head; 0 means no head (logits = pre-logits).
    #[config(default = 0)]
    pub num_classes: usize,
    /// Width of the first stage; stage `i` has `embed_dim · 2^i`.
    #[config(default = 96)]
    pub embed_dim: usize,
    #[config(default = "vec![2, 2, 6, 2]")]
    pub depths: Vec<usize>,
    #[config(default = "vec![3, 6, 12, 24]")]
    pub num_heads: Vec<usize>,
    #[config(default = 7)]
    pub window_size: usize,
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    #[config(default = true)]
    pub qkv_bias: bool,
    /// LayerNorm epsilon (timm's Swin uses PyTorch's default, 1e-5).
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// Dropout before the head.
    #[config(default = 0.0)]
    pub drop_rate: f64,
    #[config(default = 0.0)]
    pub proj_drop_rate: f64,
    #[config(default = 0.0)]
    pub attn_drop_rate: f64,
    /// Stochastic depth, increasing linearly to this rate over all blocks.
    #[config(default = 0.0)]
    pub drop_path_rate: f64,
}

impl SwinConfig {
    pub fn stage_dim(&self, stage: usize) -> usize {
        self.embed_dim << stage
    }

    pub fn num_features(&self) -> usize {
        self.stage_dim(self.depths.len().saturating_sub(1))
    }

    /// The token grid side of every stage at the configured input size (patch merging pads an
    /// odd side).
    pub fn stage_grids(&self) -> Vec<usize> {
        let mut r = self.img_size / self.patch_size.max(1);
        (0..self.depths.len())
            .map(|i| {
                if i > 0 {
                    r = r.div_ceil(2);
                }
                r
            })
            .collect()
    }

    /// `(window, shift)` of the shifted blocks of a stage: a window no larger than the stage's
    /// grid, and no shift when one window covers it (timm's `_calc_window_shift`).
    pub fn window(&self, stage: usize) -> (usize, usize) {
        let r = self.stage_grids()[stage];
        let ws = self.window_size.min(r).max(1);
        let shift = if r <= ws { 0 } else { self.window_size / 2 };
        (ws, shift)
    }

    fn mlp_hidden(&self, d: usize) -> usize {
        (d as f64 * self.mlp_ratio) as usize
    }

    /// Number of parameters of the model this config builds (closed form).
    pub fn num_params(&self) -> usize {
        let (c, p, d0) = (self.in_chans, self.patch_size, self.embed_dim);
        let mut n = d0 * c * p * p + d0 + 2 * d0;
        for (i, &depth) in self.depths.iter().enumerate() {
            let d = self.stage_dim(i);
            if i > 0 {
                let din = self.stage_dim(i - 1);
                n += 2 * 4 * din + 4 * din * d;
            }
            let (ws, _) = self.window(i);
            let h = self.mlp_hidden(d);
            let qkv_bias = if self.qkv_bias { 3 * d } else { 0 };
            n += depth * (4 * d + 3 * d * d + qkv_bias + (2 * ws - 1).pow(2) * self.num_heads[i] + d * d + d + d * h + h + h * d + d);
        }
        let f = self.num_features();
        n + 2 * f + if self.num_classes > 0 { f * self.num_classes + self.num_classes } else { 0 }
    }

    /// The parameter count, estimated in floating point from the config alone.
    pub fn estimated_params(&self) -> f64 {
        let blocks: f64 = self.depths.iter().enumerate().map(|(i, &d)| crate::limits::transformer_params(d, self.stage_dim(i), self.mlp_ratio)).sum();
        blocks + self.num_classes as f64 * self.depths.len().checked_sub(1).map_or(0, |l| self.stage_dim(l)) as f64
    }

    pub fn validate(&self) -> crate::Result<()> {
        if self.depths.is_empty() || self.depths.len() != self.num_heads.len() {
            return Err(crate::Error::Config(format!(
                "depths ({}) and num_heads ({}) must be non-empty and of one length",
                self.depths.len(),
                self.num_heads.len()
            )));
        }
        if self.embed_dim == 0 || self.patch_size == 0 || self.window_size == 0 || self.depths.contains(&0) || self.num_heads.contains(&0) {
            return Err(crate::Error::Config("embed_dim, patch_size, window_size, depths and num_heads must be positive".into()));
        }
        if self.depths.len() > 8 {
            return Err(crate::Error::Config(format!("{} stages: at most 8 are supported", self.depths.len())));
        }
        for (i, &h) in self.num_heads.iter().enumerate() {
            if !self.stage_dim(i).is_multiple_of(h) {
                return Err(crate::Error::Config(format!("stage {i}: width {} is not divisible by {h} heads", self.stage_dim(i))));
            }
        }
        if self.img_size < self.patch_size {
            return Err(crate::Error::Config(format!("img_size {} is smaller than patch_size {}", self.img_size, self.patch_size)));
        }
        crate::limits::at_most("embed_dim", self.embed_dim, crate::limits::MAX_WIDTH)?;
        crate::limits::at_most("patch_size", self.patch_size, crate::limits::MAX_WIDTH)?;
        crate::limits::at_most("window_size", self.window_size, crate::limits::MAX_WIDTH)?;
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= 64.0) {
            return Err(crate::Error::Config(format!("mlp_ratio {} must be in (0, 64]", self.mlp_ratio)));
        }
        let blocks = self.depths.iter().try_fold(0usize, |a, &d| a.checked_add(d)).unwrap_or(usize::MAX);
        let tokens = (self.img_size / self.patch_size).saturating_pow(2);
        crate::limits::check(self.img_size, self.in_chans, self.num_classes, tokens, blocks, self.estimated_params())?;
        for (name, p) in [
            ("drop_rate", self.drop_rate),
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

    /// A randomly initialised model (timm-like: N(0, 0.02) weights and bias table, zero biases,
    /// unit norms).
    pub fn init<B: Backend>(&self, device: &B::Device) -> SwinTransformer<B> {
        let norm = |d: usize| LayerNormConfig::new(d).with_epsilon(self.norm_eps).init(device);
        let tlin = |i: usize, o: usize, bias: bool| TunableLinear::from(init_linear::<B>(i, o, bias, device));
        let total: usize = self.depths.iter().sum();
        let mut k = 0;
        let layers = self
            .depths
            .iter()
            .enumerate()
            .map(|(i, &depth)| {
                let d = self.stage_dim(i);
                let (ws, shift) = self.window(i);
                let downsample = (i > 0)
                    .then(|| PatchMerging { norm: norm(4 * self.stage_dim(i - 1)), reduction: init_linear(4 * self.stage_dim(i - 1), d, false, device) });
                let blocks = (0..depth)
                    .map(|j| {
                        let dpr = if total > 1 { self.drop_path_rate * k as f64 / (total - 1) as f64 } else { 0.0 };
                        k += 1;
                        SwinBlock {
                            norm1: norm(d),
                            attn: WindowAttention {
                                qkv: tlin(d, 3 * d, self.qkv_bias),
                                proj: tlin(d, d, true),
                                relative_position_bias_table: Param::from_tensor(Tensor::random(
                                    [(2 * ws - 1).pow(2), self.num_heads[i]],
                                    Distribution::Normal(0.0, 0.02),
                                    device,
                                )),
                                attn_drop: DropoutConfig::new(self.attn_drop_rate).init(),
                                proj_drop: DropoutConfig::new(self.proj_drop_rate).init(),
                                num_heads: self.num_heads[i],
                                window: ws,
                            },
                            norm2: norm(d),
                            mlp: Mlp {
                                fc1: tlin(d, self.mlp_hidden(d), true),
                                fc2: tlin(self.mlp_hidden(d), d, true),
                                drop: DropoutConfig::new(self.proj_drop_rate).init(),
                            },
                            adapter: None,
                            adapter_attn: None,
                            adapter_mlp: None,
                            shift: if j % 2 == 1 { shift } else { 0 },
                            drop_path: dpr,
                        }
                    })
                    .collect();
                SwinStage { downsample, blocks }
            })
            .collect();
        let proj = Conv2dConfig::new([self.in_chans, self.embed_dim], [self.patch_size, self.patch_size])
            .with_stride([self.patch_size, self.patch_size])
            .with_initializer(Initializer::Normal { mean: 0.0, std: 0.02 })
            .init(device);
        let f = self.num_features();
        SwinTransformer {
            patch_embed: PatchEmbed { proj, norm: Some(norm(self.embed_dim)), patch_size: self.patch_size },
            layers,
            norm: norm(f),
            head_drop: DropoutConfig::new(self.drop_rate).init(),
            head: (self.num_classes > 0).then(|| init_linear(f, self.num_classes, true, device)),
        }
    }
}

/// Relative position index of a `w × w` window: `index[i][j]` into the `(2w−1)²` table.
fn relative_position_index(w: usize) -> Vec<i64> {
    let n = w * w;
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            let (dh, dw) = ((i / w) as i64 - (j / w) as i64 + w as i64 - 1, (i % w) as i64 - (j % w) as i64 + w as i64 - 1);
            idx.push(dh * (2 * w as i64 - 1) + dw);
        }
    }
    idx
}

/// The shifted-window attention mask `[windows, w², w²]` of a padded `hp × wp` grid: 0 within a
/// region, −100 between the regions the cyclic shift brought together.
fn shift_mask<B: Backend>(hp: usize, wp: usize, w: usize, shift: usize, device: &B::Device) -> Tensor<B, 3> {
    let region = |x: usize, size: usize| {
        if x < size - w {
            0
        } else if x < size - shift {
            1
        } else {
            2
        }
    };
    let (nh, nw, n) = (hp / w, wp / w, w * w);
    let mut data = Vec::with_capacity(nh * nw * n * n);
    for bh in 0..nh {
        for bw in 0..nw {
            let ids: Vec<usize> = (0..n).map(|t| region(bh * w + t / w, hp) * 3 + region(bw * w + t % w, wp)).collect();
            for a in &ids {
                for b in &ids {
                    data.push(if a == b { 0.0f32 } else { -100.0 });
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [nh * nw, n, n]), device)
}

/// Window attention with a relative position bias.
#[derive(Module, Debug)]
pub struct WindowAttention<B: Backend> {
    pub qkv: TunableLinear<B>,
    pub proj: TunableLinear<B>,
    /// `[(2w−1)², heads]`
    pub relative_position_bias_table: Param<Tensor<B, 2>>,
    pub attn_drop: Dropout,
    pub proj_drop: Dropout,
    #[module(skip)]
    pub num_heads: usize,
    #[module(skip)]
    pub window: usize,
}

impl<B: Kernels> WindowAttention<B> {
    /// `[heads, w², w²]`
    fn bias(&self) -> Tensor<B, 3> {
        let n = self.window * self.window;
        let table = self.relative_position_bias_table.val();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(relative_position_index(self.window), [n * n]), &table.device());
        table.select(0, idx).reshape([n, n, self.num_heads]).permute([2, 0, 1])
    }

    /// Attention in the windows of a grid whose sides are whole windows, with the cyclic `shift`
    /// folded into the kernel's reads ([`window_attention()`]: no partition or roll copies), then
    /// the projection (per token, so on the grid's own order).
    ///
    /// # Shapes
    /// `x` `[b, H, W, c]`, mask `[windows, w², w²]` (the shifted-window mask, when it applies) →
    /// `[b, H·W, c]`
    pub fn forward(&self, x: Tensor<B, 4>, shift: usize, mask: Option<&Tensor<B, 3>>, draws: &mut Draws) -> Tensor<B, 3> {
        let [b, h, w, c] = x.dims();
        let qkv = self.qkv.forward(x.reshape([b, h * w, c]), draws).reshape([b, h, w, 3 * c]);
        let bias = self.bias().unsqueeze_dim::<4>(0);
        let bias = match mask {
            Some(m) => bias + m.clone().unsqueeze_dim::<4>(1),
            None => bias,
        };
        let win = Windows { heads: self.num_heads, window: self.window, shift };
        let out = if self.attn_drop.prob > 0.0 && B::ad_enabled(&qkv.device()) { self.with_dropout(qkv, bias, win) } else { window_attention(qkv, bias, win) };
        self.proj_drop.forward(self.proj.forward(out.reshape([b, h * w, c]), draws))
    }

    /// Window attention with dropout on the probabilities (training only), composed of tensor ops.
    fn with_dropout(&self, qkv: Tensor<B, 4>, bias: Tensor<B, 4>, win: Windows) -> Tensor<B, 4> {
        let [b, h, w, _] = qkv.dims();
        let [q, k, v] = attention::split(wa::partition(qkv, win), win.heads);
        let p = self.attn_drop.forward(softmax(wa::biased_scores(q, k, bias), 3));
        wa::reverse(attention::merge_heads(p.matmul(v)), [b, h, w], win)
    }
}

/// Patch merging: 2×2 neighbours concatenated (`x0, x1, x2, x3`), LayerNorm over 4C, reduction.
#[derive(Module, Debug)]
pub struct PatchMerging<B: Backend> {
    pub norm: LayerNorm<B>,
    /// `[4c, c']`, no bias.
    pub reduction: Linear<B>,
}

impl<B: Kernels> PatchMerging<B> {
    /// # Shapes
    /// `[b, h·w, c]`, (h, w) → `[b, ⌈h/2⌉·⌈w/2⌉, c']`, (⌈h/2⌉, ⌈w/2⌉)
    pub fn forward(&self, x: Tensor<B, 3>, (h, w): (usize, usize)) -> (Tensor<B, 3>, (usize, usize)) {
        let [b, _, c] = x.dims();
        let mut x = x.reshape([b, h, w, c]);
        if h % 2 == 1 || w % 2 == 1 {
            x = x.pad([(0, h % 2), (0, w % 2), (0, 0)], burn::tensor::ops::PadMode::Constant(0.0));
        }
        let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
        let x = x.reshape([b, h2, 2, w2, 2, c]).permute([0, 1, 3, 4, 2, 5]).reshape([b, h2 * w2, 4 * c]);
        (self.reduction.forward(self.norm.forward(x)), (h2, w2))
    }
}

/// A Swin block: (shifted) window attention and the MLP, pre-norm.
#[derive(Module, Debug)]
pub struct SwinBlock<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub attn: WindowAttention<B>,
    pub norm2: LayerNorm<B>,
    pub mlp: Mlp<B>,
    /// Adapter parallel to the MLP, reading the MLP's own input (no LayerNorm of its own), as the
    /// MoSA reference's Swin: `h + DP(MLP(LN2(h)) + s·A(LN2(h)))`.
    pub adapter: Option<AdapterSlot<B>>,
    /// Adapter on the attention output, before the residual (Houlsby).
    pub adapter_attn: Option<AdapterSlot<B>>,
    /// Adapter on the MLP output, before the residual (Pfeiffer, Houlsby).
    pub adapter_mlp: Option<AdapterSlot<B>>,
    /// Cyclic shift of this block (0 for the even blocks of a stage).
    #[module(skip)]
    pub shift: usize,
    #[module(skip)]
    pub drop_path: f64,
}

impl<B: Kernels> SwinBlock<B> {
    /// # Shapes
    /// `[b, h·w, c]` → `[b, h·w, c]`
    pub fn forward(&self, x: Tensor<B, 3>, grid: (usize, usize), mask: Option<&Tensor<B, 3>>, draws: &mut Draws) -> Tensor<B, 3> {
        let a = sequential(&self.adapter_attn, self.windowed(self.norm1.forward(x.clone()), grid, mask, draws), draws);
        let h = stream(&self.adapter_attn, x + drop_path(a, self.drop_path), draws);
        let n = self.norm2.forward(h.clone());
        let m = sequential(&self.adapter_mlp, self.mlp.forward(n.clone(), draws), draws);
        let m = match &self.adapter {
            Some(slot) => m + slot.forward(n, draws),
            None => m,
        };
        stream(&self.adapter_mlp, h + drop_path(m, self.drop_path), draws)
    }

    /// Window attention over the grid. Grids of whole windows go to the kernel as they are (the
    /// shift is its index arithmetic); others are shifted and zero-padded first, as timm does
    /// before the projection, attended unshifted, then cropped and shifted back.
    fn windowed(&self, x: Tensor<B, 3>, (h, w): (usize, usize), mask: Option<&Tensor<B, 3>>, draws: &mut Draws) -> Tensor<B, 3> {
        let [b, _, c] = x.dims();
        let ws = self.attn.window;
        let mask = if self.shift > 0 { mask } else { None };
        let x = x.reshape([b, h, w, c]);
        let (ph, pw) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
        if ph == 0 && pw == 0 {
            return self.attn.forward(x, self.shift, mask, draws);
        }
        let s = self.shift as i64;
        // burn's `roll_dim(k)` moves element i + k to i: torch's `roll(x, -k)`
        let x = if s > 0 { x.roll_dim(s, 1).roll_dim(s, 2) } else { x };
        let x = x.pad([(0, ph), (0, pw), (0, 0)], burn::tensor::ops::PadMode::Constant(0.0));
        let out = self.attn.forward(x, 0, mask, draws).reshape([b, h + ph, w + pw, c]).slice([0..b, 0..h, 0..w, 0..c]);
        let out = if s > 0 { out.roll_dim(-s, 1).roll_dim(-s, 2) } else { out };
        out.reshape([b, h * w, c])
    }

    /// The block's sites: three adapter slots (the parallel one reads the normalised MLP input),
    /// then the four linear sites of [`TARGETS`].
    fn sites_mut(&mut self, stage: usize, index: usize, block: usize, d: usize) -> Vec<SiteMut<'_, B>> {
        let slots = BlockSlots {
            adapter: &mut self.adapter,
            adapter_attn: &mut self.adapter_attn,
            adapter_mlp: &mut self.adapter_mlp,
            qkv: &mut self.attn.qkv,
            proj: &mut self.attn.proj,
            fc1: &mut self.mlp.fc1,
            fc2: &mut self.mlp.fc2,
        };
        slots.sites(block, stage, d, &format!("layers.{stage}.blocks.{index}"), true)
    }
}

/// A stage: patch merging (from the second stage on), then its blocks.
#[derive(Module, Debug)]
pub struct SwinStage<B: Backend> {
    pub downsample: Option<PatchMerging<B>>,
    pub blocks: Vec<SwinBlock<B>>,
}

/// The Swin Transformer.
#[derive(Module, Debug)]
pub struct SwinTransformer<B: Backend> {
    pub patch_embed: PatchEmbed<B>,
    pub layers: Vec<SwinStage<B>>,
    pub norm: LayerNorm<B>,
    pub head_drop: Dropout,
    /// timm's `head.fc`.
    pub head: Option<Linear<B>>,
}

impl<B: Kernels> SwinTransformer<B> {
    pub fn num_classes(&self) -> usize {
        self.head.as_ref().map(|h| h.weight.dims()[1]).unwrap_or(0)
    }

    fn stage_width(&self, stage: usize) -> usize {
        self.layers[stage].blocks[0].norm1.gamma.dims()[0]
    }

    /// Forward pass; `collect_hidden` keeps every block's output; `draws` draws MoSA's experts.
    ///
    /// # Shapes
    /// `[b, c, h, w]` → features `[b, h'·w', c']` (NHWC after the final norm), pooled pre-logits
    pub fn forward_draws(&self, x: Tensor<B, 4>, collect_hidden: bool, draws: &mut Draws) -> BackboneOutput<B> {
        let (mut x, mut grid) = self.patch_embed.forward(x);
        let mut hidden = Vec::new();
        for stage in &self.layers {
            if let Some(m) = &stage.downsample {
                (x, grid) = m.forward(x, grid);
            }
            // one mask per stage: every shifted block of a stage has the same window and shift
            let mask = stage.blocks.iter().find(|b| b.shift > 0).map(|b| {
                let ws = b.attn.window;
                shift_mask::<B>(grid.0.div_ceil(ws) * ws, grid.1.div_ceil(ws) * ws, ws, b.shift, &x.device())
            });
            for block in &stage.blocks {
                x = block.forward(x, grid, mask.as_ref(), draws);
                if collect_hidden {
                    hidden.push(x.clone());
                }
            }
        }
        let features = self.norm.forward(x);
        let [b, t, d] = features.dims();
        let pre_logits = features.clone().mean_dim(1).reshape([b, d]);
        let logits = match &self.head {
            Some(h) => h.forward(self.head_drop.forward(pre_logits.clone())),
            None => pre_logits.clone(),
        };
        debug_assert_eq!(t, grid.0 * grid.1);
        BackboneOutput { features, pre_logits, logits, hidden, spatial: Some(Spatial { grid: [grid.0, grid.1], channels_first: false }) }
    }

    /// Re-sizes every window for inputs of side `s` (a table for another window is resampled).
    pub fn set_img_size(mut self, cfg: &SwinConfig, s: usize) -> Self {
        let cfg = cfg.clone().with_img_size(s);
        for (i, stage) in self.layers.iter_mut().enumerate() {
            let (ws, shift) = cfg.window(i);
            for (j, b) in stage.blocks.iter_mut().enumerate() {
                if b.attn.window != ws {
                    let t = HostTensor::from_tensor(b.attn.relative_position_bias_table.val());
                    let t = resample_table(&t, b.attn.window, ws);
                    let device = b.attn.relative_position_bias_table.device();
                    b.attn.relative_position_bias_table = Param::from_tensor(Tensor::from_data(TensorData::new(t.data, t.shape), &device));
                    b.attn.window = ws;
                }
                b.shift = if j % 2 == 1 { shift } else { 0 };
            }
        }
        self
    }
}

impl<B: Kernels> PeftHost<B> for SwinTransformer<B> {
    fn targets(&self) -> Targets {
        TARGETS
    }
    fn sites_mut(&mut self) -> Vec<SiteMut<'_, B>> {
        let widths: Vec<usize> = (0..self.layers.len()).map(|i| self.stage_width(i)).collect();
        let mut block = 0;
        let mut v = Vec::new();
        for (i, stage) in self.layers.iter_mut().enumerate() {
            for (j, b) in stage.blocks.iter_mut().enumerate() {
                v.extend(b.sites_mut(i, j, block, widths[i]));
                block += 1;
            }
        }
        v
    }
    fn prompts_mut(&mut self) -> Option<(PromptSite, &mut Option<Prompts<B>>)> {
        None
    }
    fn head_mut(&mut self) -> Option<&mut Linear<B>> {
        self.head.as_mut()
    }
}

/// A relative position bias table of window `from` resampled to window `to` (bicubic over the
/// `(2w−1)²` grid, as timm's checkpoint filter does).
fn resample_table(t: &HostTensor, from: usize, to: usize) -> HostTensor {
    let heads = t.shape[1];
    let (a, b) = (2 * from - 1, 2 * to - 1);
    HostTensor::new(vec![b * b, heads], posembed::resample_host(&t.data, heads, (a, a), (b, b), Resample::Bicubic))
}

impl FamilyConfig for SwinConfig {
    const NAME: &'static str = "swin";
    type Model<B: Backend> = SwinTransformer<B>;

    fn describe(&self) -> String {
        format!("Swin d {}, depths {:?}, heads {:?}, window {}, patch {}", self.embed_dim, self.depths, self.num_heads, self.window_size, self.patch_size)
    }
    fn validate(&self) -> crate::Result<()> {
        SwinConfig::validate(self)
    }
    fn estimated_params(&self) -> f64 {
        SwinConfig::estimated_params(self)
    }
    fn num_params(&self) -> usize {
        SwinConfig::num_params(self)
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn with_num_classes(self, n: usize) -> Self {
        SwinConfig::with_num_classes(self, n)
    }
    /// The windows are sized for the new input.
    fn with_img_size(self, s: usize) -> Self {
        SwinConfig::with_img_size(self, s)
    }
    fn in_chans(&self) -> usize {
        self.in_chans
    }
    fn min_input(&self) -> usize {
        self.patch_size
    }
    /// `head.fc`: timm's `head.norm` belongs to the backbone.
    fn head_key(&self) -> &'static str {
        "head.fc"
    }
    /// The patch embedding; per stage its patch merging (4C → 2C on the new grid) and per block
    /// qkv, proj and window attention on the grid padded to whole windows, the MLP on the grid;
    /// the head.
    fn forward_flops(&self) -> f64 {
        let grids = self.stage_grids();
        let (c0, p) = (self.embed_dim as f64, self.patch_size as f64);
        let mut f = 2.0 * (grids[0] as f64).powi(2) * self.in_chans as f64 * p * p * c0;
        for (i, &depth) in self.depths.iter().enumerate() {
            let (c, r) = (self.stage_dim(i) as f64, grids[i] as f64);
            if i > 0 {
                f += 2.0 * r * r * (4.0 * c / 2.0) * c;
            }
            let ws = self.window(i).0;
            let padded = (grids[i].div_ceil(ws) * ws) as f64;
            let (n, np, w2) = (r * r, padded * padded, (ws * ws) as f64);
            let block = 2.0 * np * 4.0 * c * c + 4.0 * np * w2 * c + 2.0 * n * 2.0 * c * self.mlp_hidden(c as usize) as f64;
            f += depth as f64 * block;
        }
        f + 2.0 * self.num_features() as f64 * self.num_classes as f64
    }
    fn build<B: Backend>(&self, device: &B::Device) -> SwinTransformer<B> {
        self.init(device)
    }
    const TIMM_CLASS: &'static str = "SwinTransformer";
    /// `window_size` with per-stage `depths`.
    fn claims_timm_kwargs(kwargs: &serde_json::Value) -> bool {
        kwargs.get("window_size").is_some() && kwargs.get("depths").is_some()
    }
    /// The arguments carry `img_size`: `input_hw` is not needed.
    fn from_timm_kwargs(kwargs: &serde_json::Value, _input_hw: Option<usize>) -> crate::Result<Self> {
        let obj = kwargs::object(kwargs)?;
        let mut c = SwinConfig::new();
        for (k, v) in obj {
            match k.as_str() {
                "img_size" => c.img_size = kwargs::as_usize(k, v)?,
                "patch_size" => c.patch_size = kwargs::as_usize(k, v)?,
                "in_chans" => c.in_chans = kwargs::as_usize(k, v)?,
                "num_classes" => c.num_classes = kwargs::as_usize(k, v)?,
                "embed_dim" => c.embed_dim = kwargs::as_usize(k, v)?,
                "depths" => c.depths = kwargs::as_usizes(k, v)?,
                "num_heads" => c.num_heads = kwargs::as_usizes(k, v)?,
                "window_size" => c.window_size = kwargs::as_usize(k, v)?,
                "mlp_ratio" => c.mlp_ratio = kwargs::as_f64(k, v)?,
                "qkv_bias" => c.qkv_bias = kwargs::as_bool(k, v)?,
                "drop_rate" => c.drop_rate = kwargs::as_f64(k, v)?,
                "proj_drop_rate" => c.proj_drop_rate = kwargs::as_f64(k, v)?,
                "attn_drop_rate" => c.attn_drop_rate = kwargs::as_f64(k, v)?,
                "drop_path_rate" => c.drop_path_rate = kwargs::as_f64(k, v)?,
                "global_pool" if v == "avg" => {}
                "ape" | "always_partition" | "strict_img_size" if v == &Value::Bool(false) => {}
                _ => return Err(crate::Error::Config(format!("timm SwinTransformer argument `{k}` = {v} is not supported"))),
            }
        }
        Ok(c)
    }
    /// timm's classifier is `head.fc`.
    const RENAMES: Renames = &[("head", "head.fc")];
    /// The stage count is checked; a relative-position table of another window (a checkpoint at
    /// another resolution) is resampled to the model's.
    fn prepare(&self, sd: &mut StateDict) -> crate::Result<()> {
        let stages = sd.tensors.keys().filter_map(|k| k.strip_prefix("layers.")?.split('.').next()?.parse::<usize>().ok()).max().map_or(0, |m| m + 1);
        if stages != self.depths.len() {
            return Err(Error::Mismatch {
                path: sd.source.clone(),
                problems: vec![format!("checkpoint has {stages} stages, the model {}", self.depths.len())],
            });
        }
        for (name, t) in sd.tensors.iter_mut() {
            let Some(i) = name.strip_prefix("layers.").and_then(|r| r.split('.').next()?.parse::<usize>().ok()) else { continue };
            if !name.ends_with(".attn.relative_position_bias_table") || i >= self.depths.len() {
                continue;
            }
            let ws = self.window(i).0;
            let side = ((t.shape[0] as f64).sqrt().round() as usize).div_ceil(2);
            if t.shape.len() == 2 && t.shape[1] == self.num_heads[i] && (2 * side - 1).pow(2) == t.shape[0] && side != ws {
                *t = resample_table(t, side, ws);
            }
        }
        Ok(())
    }
}

impl<B: Kernels> Family<B> for SwinTransformer<B> {
    type Config = SwinConfig;

    fn forward_draws(&self, x: Tensor<B, 4>, collect_hidden: bool, draws: &mut Draws) -> BackboneOutput<B> {
        SwinTransformer::forward_draws(self, x, collect_hidden, draws)
    }
    fn num_classes(&self) -> usize {
        SwinTransformer::num_classes(self)
    }
    fn set_img_size(self, cfg: &SwinConfig, s: usize) -> Self {
        SwinTransformer::set_img_size(self, cfg, s)
    }
    /// `p` in every MLP; attention dropout 0.
    fn with_training_dropout(mut self, p: f64) -> Self {
        let zero = || DropoutConfig::new(0.0).init();
        let rate = || DropoutConfig::new(p).init();
        for b in self.layers.iter_mut().flat_map(|s| s.blocks.iter_mut()) {
            (b.mlp.drop, b.attn.attn_drop, b.attn.proj_drop) = (rate(), zero(), zero());
        }
        self
    }
}
