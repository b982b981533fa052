//! ConvNeXt: one config-driven implementation with timm's parameter names (`stem.{0,1}`,
//! `stages.S.downsample.{0,1}`, `stages.S.blocks.N.{conv_dw,norm,mlp.fc1,mlp.fc2,gamma}`,
//! `head.{norm,fc}`), so timm checkpoints map one to one.
//!
//! Where it comes from: Liu et al. 2022, "A ConvNet for the 2020s" (arXiv 2201.03545), as
//! implemented in timm's `convnext.py` (1.0): a patchify stem (4×4 conv + LayerNorm over
//! channels), downsampling by LayerNorm + 2×2 stride-2 conv between stages, blocks of a 7×7
//! depthwise conv, LayerNorm (channels last), the pointwise MLP (fc1 → GELU → fc2) and the layer
//! scale `gamma`, with drop path on the residual; the head averages, normalises and classifies.
//!
//! Hook points (sites) are declared once, in `ConvNextBlock::sites_mut`: per block an adapter
//! parallel to the pointwise MLP (reading the MLP's own input, the normalised depthwise-conv output,
//! without a LayerNorm of its own — the MoSA reference's Swin convention, our reading for ConvNeXt —
//! and summed with the scaled MLP output under one drop path) and one after the MLP (Pfeiffer), and the
//! linear sites `fc1`, `fc2`. There is no attention (Houlsby's after-attention adapter does not
//! apply) and no token sequence (VPT does not apply).

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, PaddingConfig2d};
use burn::prelude::*;
use mosa_core::layer_norm::{LayerNorm, LayerNormConfig};
use mosa_kernels::{Kernels, depthwise_conv, linear_rows};

use mosa_core::Draws;
use mosa_core::prompt::Prompts;
use mosa_core::site::{AdapterSite, LinearSite, PeftHost, Placement, PromptSite, SiteMut, Targets, TunableLinear};
use mosa_core::slot::AdapterSlot;

use crate::error::Error;
use crate::family::{BackboneOutput, Family, FamilyConfig, Spatial};
use crate::kwargs;
use crate::layers::{Mlp, drop_path, init_linear, sequential, stream};
use crate::load::StateDict;
use crate::load::by_path::Renames;
use serde_json::Value;

/// ConvNeXt's target vocabulary: the pointwise linears (LoRA's / sparse's default: both).
pub const TARGETS: Targets = Targets { family: "convnext", names: &["fc1", "fc2"], default: &["fc1", "fc2"], lora_default: &["fc1", "fc2"], parts: &[] };

/// Configuration of a [`ConvNeXt`]; timm's constructor arguments under the same names.
#[derive(Config, Debug)]
pub struct ConvNextConfig {
    /// The input size the preset's weights are for (the network itself takes any size ≥ 32).
    #[config(default = 224)]
    pub img_size: usize,
    #[config(default = 3)]
    pub in_chans: usize,
    #[config(default = 0)]
    pub num_classes: usize,
    #[config(default = "vec![3, 3, 9, 3]")]
    pub depths: Vec<usize>,
    #[config(default = "vec![96, 192, 384, 768]")]
    pub dims: Vec<usize>,
    #[config(default = 7)]
    pub kernel_size: usize,
    /// Layer scale initial value; `None`: no `gamma`.
    #[config(default = "Some(1e-6)")]
    pub ls_init_value: Option<f64>,
    /// Stem patch size.
    #[config(default = 4)]
    pub patch_size: usize,
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    /// LayerNorm epsilon (timm's ConvNeXt: 1e-6).
    #[config(default = 1e-6)]
    pub norm_eps: f64,
    #[config(default = 0.0)]
    pub drop_rate: f64,
    #[config(default = 0.0)]
    pub drop_path_rate: f64,
}

impl ConvNextConfig {
    pub fn num_features(&self) -> usize {
        self.dims.last().copied().unwrap_or(0)
    }

    fn mlp_hidden(&self, d: usize) -> usize {
        (d as f64 * self.mlp_ratio) as usize
    }

    /// The smallest input side: every stage halves the grid after the stem's patches.
    pub fn min_input(&self) -> usize {
        self.patch_size << self.dims.len().saturating_sub(1)
    }

    pub fn num_params(&self) -> usize {
        let (c, p, k) = (self.in_chans, self.patch_size, self.kernel_size);
        let d0 = self.dims.first().copied().unwrap_or(0);
        let mut n = d0 * c * p * p + d0 + 2 * d0;
        for (i, (&depth, &d)) in self.depths.iter().zip(&self.dims).enumerate() {
            if i > 0 {
                let din = self.dims[i - 1];
                n += 2 * din + din * d * 4 + d;
            }
            let h = self.mlp_hidden(d);
            let ls = if self.ls_init_value.is_some() { d } else { 0 };
            n += depth * (d * k * k + d + 2 * d + d * h + h + h * d + d + ls);
        }
        let f = self.num_features();
        n + 2 * f + if self.num_classes > 0 { f * self.num_classes + self.num_classes } else { 0 }
    }

    /// The parameter count, estimated in floating point from the config alone.
    pub fn estimated_params(&self) -> f64 {
        let blocks: f64 = self
            .depths
            .iter()
            .zip(&self.dims)
            .map(|(&n, &d)| n as f64 * (2.0 * self.mlp_ratio * (d as f64).powi(2) + (self.kernel_size * self.kernel_size) as f64 * d as f64))
            .sum();
        blocks + self.num_classes as f64 * self.dims.last().copied().unwrap_or(0) as f64
    }

    pub fn validate(&self) -> crate::Result<()> {
        if self.depths.is_empty() || self.depths.len() != self.dims.len() {
            return Err(crate::Error::Config(format!("depths ({}) and dims ({}) must be non-empty and of one length", self.depths.len(), self.dims.len())));
        }
        if self.depths.len() > 8 {
            return Err(crate::Error::Config(format!("{} stages: at most 8 are supported", self.depths.len())));
        }
        if self.dims.contains(&0) || self.depths.contains(&0) || self.patch_size == 0 || self.kernel_size.is_multiple_of(2) {
            return Err(crate::Error::Config("dims, depths and patch_size must be positive and kernel_size odd".into()));
        }
        for (i, &d) in self.dims.iter().enumerate() {
            crate::limits::at_most(&format!("dims[{i}]"), d, crate::limits::MAX_WIDTH)?;
        }
        crate::limits::at_most("patch_size", self.patch_size, crate::limits::MAX_WIDTH)?;
        crate::limits::at_most("kernel_size", self.kernel_size, 63)?;
        if !(self.mlp_ratio > 0.0 && self.mlp_ratio <= 64.0) {
            return Err(crate::Error::Config(format!("mlp_ratio {} must be in (0, 64]", self.mlp_ratio)));
        }
        let blocks = self.depths.iter().try_fold(0usize, |a, &d| a.checked_add(d)).unwrap_or(usize::MAX);
        let tokens = (self.img_size / self.patch_size.max(1)).saturating_pow(2);
        crate::limits::check(self.img_size, self.in_chans, self.num_classes, tokens, blocks, self.estimated_params())?;
        for (name, p) in [("drop_rate", self.drop_rate), ("drop_path_rate", self.drop_path_rate)] {
            if !(0.0..1.0).contains(&p) {
                return Err(crate::Error::Config(format!("{name} must be in [0, 1), got {p}")));
            }
        }
        Ok(())
    }

    /// A randomly initialised model (timm-like: N(0, 0.02) weights, zero biases, unit norms,
    /// `gamma` at `ls_init_value`).
    pub fn init<B: Backend>(&self, device: &B::Device) -> ConvNeXt<B> {
        let init = Initializer::Normal { mean: 0.0, std: 0.02 };
        let norm = |d: usize| LayerNormConfig::new(d).with_epsilon(self.norm_eps).init(device);
        let conv = |i: usize, o: usize, k: usize, stride: usize, groups: usize, pad: usize| -> Conv2d<B> {
            let mut c = Conv2dConfig::new([i, o], [k, k])
                .with_stride([stride, stride])
                .with_groups(groups)
                .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
                .with_initializer(init.clone())
                .init(device);
            c.bias = c.bias.map(|b| Param::from_tensor(Tensor::zeros(b.dims(), device)));
            c
        };
        let total: usize = self.depths.iter().sum();
        let mut k = 0;
        let d0 = self.dims[0];
        let stages = self
            .depths
            .iter()
            .zip(&self.dims)
            .enumerate()
            .map(|(i, (&depth, &d))| {
                let downsample = (i > 0).then(|| Downsample { norm: norm(self.dims[i - 1]), conv: conv(self.dims[i - 1], d, 2, 2, 1, 0) });
                let blocks = (0..depth)
                    .map(|_| {
                        let dpr = if total > 1 { self.drop_path_rate * k as f64 / (total - 1) as f64 } else { 0.0 };
                        k += 1;
                        let h = self.mlp_hidden(d);
                        ConvNextBlock {
                            conv_dw: conv(d, d, self.kernel_size, 1, d, self.kernel_size / 2),
                            norm: norm(d),
                            mlp: Mlp {
                                fc1: TunableLinear::from(init_linear(d, h, true, device)),
                                fc2: TunableLinear::from(init_linear(h, d, true, device)),
                                drop: DropoutConfig::new(0.0).init(),
                            },
                            gamma: self.ls_init_value.map(|v| Param::from_tensor(Tensor::full([d], v, device))),
                            adapter: None,
                            adapter_mlp: None,
                            drop_path: dpr,
                        }
                    })
                    .collect();
                ConvNextStage { downsample, blocks }
            })
            .collect();
        let f = self.num_features();
        ConvNeXt {
            stem: Stem { conv: conv(self.in_chans, d0, self.patch_size, self.patch_size, 1, 0), norm: norm(d0) },
            stages,
            head_norm: norm(f),
            head_drop: DropoutConfig::new(self.drop_rate).init(),
            head: (self.num_classes > 0).then(|| init_linear(f, self.num_classes, true, device)),
        }
    }
}

/// A `k × k` stride-`k` convolution (the stem's and the downsampling's patchify) of a
/// channels-last grid as one linear over the patches: the conv's sums through the linear kernel
/// (one GEMM, one GEMM for `∂x`) instead of burn's conv ops between NCHW permutes. Rows and
/// columns beyond the last whole patch are dropped, as the conv does.
///
/// # Shapes
/// `x` `[b, h, w, c]`, conv weight `[o, c, k, k]` → `[b, ⌊h/k⌋, ⌊w/k⌋, o]`
fn patchify<B: Kernels>(x: Tensor<B, 4>, conv: &Conv2d<B>) -> Tensor<B, 4> {
    let [b, h, w, c] = x.dims();
    let [o, _, k, _] = conv.weight.dims();
    let (h2, w2) = (h / k, w / k);
    let x = if h % k != 0 || w % k != 0 { x.slice([0..b, 0..h2 * k, 0..w2 * k, 0..c]) } else { x };
    // a patch's values in (row, column, channel) order, the weight's [kh, kw, c, o] to match
    let patches = x.reshape([b, h2, k, w2, k, c]).permute([0, 1, 3, 2, 4, 5]).reshape([b, h2, w2, k * k * c]);
    let weight = conv.weight.val().permute([2, 3, 1, 0]).reshape([k * k * c, o]);
    linear_rows(patches, weight, conv.bias.as_ref().map(|b| b.val()))
}

/// Patchify stem: conv (timm `stem.0`) and LayerNorm over channels (`stem.1`).
#[derive(Module, Debug)]
pub struct Stem<B: Backend> {
    pub conv: Conv2d<B>,
    pub norm: LayerNorm<B>,
}

/// Between stages: LayerNorm over channels (`downsample.0`), 2×2 stride-2 conv (`downsample.1`).
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    pub norm: LayerNorm<B>,
    pub conv: Conv2d<B>,
}

/// A ConvNeXt block.
#[derive(Module, Debug)]
pub struct ConvNextBlock<B: Backend> {
    /// Depthwise `k × k`.
    pub conv_dw: Conv2d<B>,
    pub norm: LayerNorm<B>,
    pub mlp: Mlp<B>,
    pub gamma: Option<Param<Tensor<B, 1>>>,
    /// Adapter parallel to the pointwise MLP, reading the MLP's own input `LN(dwconv(x))` (no
    /// LayerNorm of its own, as the reference's Swin variant): `x + DP(γ·MLP(n) + s·A(n))`.
    pub adapter: Option<AdapterSlot<B>>,
    /// Adapter on the MLP output, before the layer scale (Pfeiffer).
    pub adapter_mlp: Option<AdapterSlot<B>>,
    #[module(skip)]
    pub drop_path: f64,
}

impl<B: Kernels> ConvNextBlock<B> {
    /// Channels last throughout: the depthwise conv ([`depthwise_conv()`]), LayerNorm and MLP all
    /// read the grid as tokens without a permute.
    ///
    /// # Shapes
    /// `[b, h, w, c]` → `[b, h, w, c]`
    pub fn forward(&self, x: Tensor<B, 4>, draws: &mut Draws) -> Tensor<B, 4> {
        let [b, h, w, c] = x.dims();
        let weight = self.conv_dw.weight.val();
        // timm's "same" padding of the odd k × k kernel
        let padding = weight.dims()[2] / 2;
        let conv = depthwise_conv(x.clone(), weight, self.conv_dw.bias.as_ref().map(|b| b.val()), padding);
        let y = self.norm.forward(conv.reshape([b, h * w, c]));
        let mut m = self.mlp.forward(y.clone(), draws);
        m = sequential(&self.adapter_mlp, m, draws);
        if let Some(g) = &self.gamma {
            m = m * g.val().unsqueeze::<3>();
        }
        if let Some(a) = &self.adapter {
            m = m + a.forward(y, draws);
        }
        let out = x + drop_path(m, self.drop_path).reshape([b, h, w, c]);
        // an adapter after the residual reads the block's output as tokens
        stream(&self.adapter_mlp, out.reshape([b, h * w, c]), draws).reshape([b, h, w, c])
    }

    fn sites_mut(&mut self, stage: usize, index: usize, block: usize, d: usize) -> Vec<SiteMut<'_, B>> {
        let adapter = |place| AdapterSite { block, stage, width: d, place, normalised_input: place == Placement::Parallel };
        let linear = |target: &'static str, l: &TunableLinear<B>| {
            let (d_in, d_out) = l.dims();
            LinearSite { block, target, path: format!("stages.{stage}.blocks.{index}.mlp.{target}"), d_in, d_out }
        };
        let (fc1, fc2) = (linear("fc1", &self.mlp.fc1), linear("fc2", &self.mlp.fc2));
        vec![
            SiteMut::Adapter { site: adapter(Placement::Parallel), slot: &mut self.adapter },
            SiteMut::Adapter { site: adapter(Placement::AfterMlp), slot: &mut self.adapter_mlp },
            SiteMut::Linear { site: fc1, linear: &mut self.mlp.fc1 },
            SiteMut::Linear { site: fc2, linear: &mut self.mlp.fc2 },
        ]
    }
}

#[derive(Module, Debug)]
pub struct ConvNextStage<B: Backend> {
    pub downsample: Option<Downsample<B>>,
    pub blocks: Vec<ConvNextBlock<B>>,
}

/// ConvNeXt.
#[derive(Module, Debug)]
pub struct ConvNeXt<B: Backend> {
    pub stem: Stem<B>,
    pub stages: Vec<ConvNextStage<B>>,
    /// timm's `head.norm`.
    pub head_norm: LayerNorm<B>,
    pub head_drop: Dropout,
    /// timm's `head.fc`.
    pub head: Option<Linear<B>>,
}

impl<B: Kernels> ConvNeXt<B> {
    pub fn num_classes(&self) -> usize {
        self.head.as_ref().map(|h| h.weight.dims()[1]).unwrap_or(0)
    }

    /// Forward pass; `collect_hidden` keeps every block's output (as `[b, h·w, c]`).
    ///
    /// # Shapes
    /// `[b, c, h, w]` → features `[b, h'·w', c']` (NCHW before the head norm, as tokens), pooled
    /// and normalised pre-logits
    pub fn forward_draws(&self, x: Tensor<B, 4>, collect_hidden: bool, draws: &mut Draws) -> BackboneOutput<B> {
        // channels last from the stem on; the stem and downsampling convs are patchify convs
        let mut x = self.stem.norm.forward(patchify(x.permute([0, 2, 3, 1]), &self.stem.conv));
        let mut hidden = Vec::new();
        for stage in &self.stages {
            if let Some(d) = &stage.downsample {
                x = patchify(d.norm.forward(x), &d.conv);
            }
            for block in &stage.blocks {
                x = block.forward(x, draws);
                if collect_hidden {
                    let [b, h, w, c] = x.dims();
                    hidden.push(x.clone().reshape([b, h * w, c]));
                }
            }
        }
        let [b, h, w, c] = x.dims();
        let features = x.reshape([b, h * w, c]);
        let pre_logits = self.head_norm.forward(features.clone().mean_dim(1).reshape([b, c]));
        let logits = match &self.head {
            Some(hd) => hd.forward(self.head_drop.forward(pre_logits.clone())),
            None => pre_logits.clone(),
        };
        BackboneOutput { features, pre_logits, logits, hidden, spatial: Some(Spatial { grid: [h, w], channels_first: true }) }
    }
}

impl<B: Kernels> PeftHost<B> for ConvNeXt<B> {
    fn targets(&self) -> Targets {
        TARGETS
    }
    fn sites_mut(&mut self) -> Vec<SiteMut<'_, B>> {
        let mut block = 0;
        let mut v = Vec::new();
        for (i, stage) in self.stages.iter_mut().enumerate() {
            for (j, b) in stage.blocks.iter_mut().enumerate() {
                let d = b.norm.gamma.dims()[0];
                v.extend(b.sites_mut(i, j, block, d));
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

impl FamilyConfig for ConvNextConfig {
    const NAME: &'static str = "convnext";
    type Model<B: Backend> = ConvNeXt<B>;

    fn describe(&self) -> String {
        format!("ConvNeXt dims {:?}, depths {:?}, kernel {}", self.dims, self.depths, self.kernel_size)
    }
    fn validate(&self) -> crate::Result<()> {
        ConvNextConfig::validate(self)
    }
    fn estimated_params(&self) -> f64 {
        ConvNextConfig::estimated_params(self)
    }
    fn num_params(&self) -> usize {
        ConvNextConfig::num_params(self)
    }
    fn num_classes(&self) -> usize {
        self.num_classes
    }
    fn with_num_classes(self, n: usize) -> Self {
        ConvNextConfig::with_num_classes(self, n)
    }
    fn with_img_size(self, s: usize) -> Self {
        ConvNextConfig::with_img_size(self, s)
    }
    fn in_chans(&self) -> usize {
        self.in_chans
    }
    fn min_input(&self) -> usize {
        ConvNextConfig::min_input(self)
    }
    /// `head.fc`: timm's `head.norm` belongs to the backbone.
    fn head_key(&self) -> &'static str {
        "head.fc"
    }
    /// The stem (a p×p patch convolution); per stage its downsampling (a 2×2 stride-2
    /// convolution) and per block the depthwise k×k convolution and the two pointwise linears;
    /// the head.
    fn forward_flops(&self) -> f64 {
        let p = self.patch_size as f64;
        let mut r = (self.img_size / self.patch_size) as f64;
        let d0 = self.dims.first().copied().unwrap_or(0) as f64;
        let mut f = 2.0 * r * r * self.in_chans as f64 * p * p * d0;
        let k2 = (self.kernel_size * self.kernel_size) as f64;
        for (i, (&depth, &d)) in self.depths.iter().zip(&self.dims).enumerate() {
            let c = d as f64;
            if i > 0 {
                r = (r / 2.0).floor();
                f += 2.0 * r * r * 4.0 * self.dims[i - 1] as f64 * c;
            }
            let n = r * r;
            f += depth as f64 * (2.0 * n * c * k2 + 2.0 * n * 2.0 * c * self.mlp_hidden(d) as f64);
        }
        f + 2.0 * self.num_features() as f64 * self.num_classes as f64
    }
    fn build<B: Backend>(&self, device: &B::Device) -> ConvNeXt<B> {
        self.init(device)
    }
    const TIMM_CLASS: &'static str = "ConvNeXt";
    /// Per-stage `dims`.
    fn claims_timm_kwargs(kwargs: &serde_json::Value) -> bool {
        kwargs.get("dims").is_some()
    }
    /// No argument gives the input side (timm's ConvNeXt takes any): `input_hw` does.
    fn from_timm_kwargs(kwargs: &serde_json::Value, input_hw: Option<usize>) -> crate::Result<Self> {
        let obj = kwargs::object(kwargs)?;
        let mut c = ConvNextConfig::new();
        for (k, v) in obj {
            match k.as_str() {
                "in_chans" => c.in_chans = kwargs::as_usize(k, v)?,
                "num_classes" => c.num_classes = kwargs::as_usize(k, v)?,
                "depths" => c.depths = kwargs::as_usizes(k, v)?,
                "dims" => c.dims = kwargs::as_usizes(k, v)?,
                "kernel_sizes" => c.kernel_size = kwargs::as_usize(k, v)?,
                "ls_init_value" => c.ls_init_value = if v.is_null() { None } else { Some(kwargs::as_f64(k, v)?) },
                "patch_size" => c.patch_size = kwargs::as_usize(k, v)?,
                "drop_rate" => c.drop_rate = kwargs::as_f64(k, v)?,
                "drop_path_rate" => c.drop_path_rate = kwargs::as_f64(k, v)?,
                "global_pool" if v == "avg" => {}
                "stem_type" if v == "patch" => {}
                "conv_mlp" | "use_grn" | "head_norm_first" if v == &Value::Bool(false) => {}
                "conv_bias" if v == &Value::Bool(true) => {}
                _ => return Err(crate::Error::Config(format!("timm ConvNeXt argument `{k}` = {v} is not supported"))),
            }
        }
        // timm's ConvNeXt takes any input size: the side comes from beside the arguments
        if let Some(s) = input_hw {
            c.img_size = s;
        }
        Ok(c)
    }
    /// timm's `Sequential` stem and downsampling layers number their parts; its head holds the
    /// final norm and the classifier.
    const RENAMES: Renames = &[
        ("stem.conv", "stem.0"),
        ("stem.norm", "stem.1"),
        ("downsample.norm", "downsample.0"),
        ("downsample.conv", "downsample.1"),
        ("head_norm", "head.norm"),
        ("head", "head.fc"),
    ];
    /// The stage count is checked.
    fn prepare(&self, sd: &mut StateDict) -> crate::Result<()> {
        let stages = sd.tensors.keys().filter_map(|k| k.strip_prefix("stages.")?.split('.').next()?.parse::<usize>().ok()).max().map_or(0, |m| m + 1);
        if stages != self.depths.len() {
            return Err(Error::Mismatch {
                path: sd.source.clone(),
                problems: vec![format!("checkpoint has {stages} stages, the model {}", self.depths.len())],
            });
        }
        Ok(())
    }
}

impl<B: Kernels> Family<B> for ConvNeXt<B> {
    type Config = ConvNextConfig;

    fn forward_draws(&self, x: Tensor<B, 4>, collect_hidden: bool, draws: &mut Draws) -> BackboneOutput<B> {
        ConvNeXt::forward_draws(self, x, collect_hidden, draws)
    }
    fn num_classes(&self) -> usize {
        ConvNeXt::num_classes(self)
    }
    /// A ConvNeXt takes any input size: unchanged.
    fn set_img_size(self, _cfg: &ConvNextConfig, _s: usize) -> Self {
        self
    }
    /// `p` in every MLP.
    fn with_training_dropout(mut self, p: f64) -> Self {
        for b in self.stages.iter_mut().flat_map(|s| s.blocks.iter_mut()) {
            b.mlp.drop = DropoutConfig::new(p).init();
        }
        self
    }
}
