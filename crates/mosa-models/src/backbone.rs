//! The one backbone abstraction: [`BackboneConfig`] (which family, with its config) and
//! [`Backbone`] (the model), with one interface for every family — forward with optional
//! per-block hidden states, the common [`BackboneOutput`], the head, the sites methods use
//! ([`PeftHost`]) and loading by path. The engine, the CLI and xtask only see these types;
//! a new family is one more variant here and its own file.

use std::path::Path;

use burn::nn::Linear;
use burn::prelude::*;
use mosa_core::kernels::Kernels;
use serde::{Deserialize, Serialize};

use mosa_core::Rng;
use mosa_core::prompt::Prompts;
use mosa_core::site::{PeftHost, PromptSite, SiteMut, Targets};

use crate::convnext::{ConvNeXt, ConvNextConfig};
use crate::error::Result;
use crate::load::{self, HeadPolicy};
use crate::swin::{SwinConfig, SwinTransformer};
use crate::vit::{VisionTransformer, VitConfig};

/// Where the features of a hierarchical family lie on a grid, and their layout in the
/// reference (timm's `forward_features`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spatial {
    pub grid: [usize; 2],
    /// NCHW in the reference (ConvNeXt); NHWC otherwise (Swin).
    pub channels_first: bool,
}

/// What every family's forward pass returns.
#[derive(Debug, Clone)]
pub struct BackboneOutput<B: Backend> {
    /// The final features as tokens `[b, t, d]`: all tokens after the last norm for a ViT, the
    /// grid's cells row by row for Swin and ConvNeXt (see [`BackboneOutput::features_as_reference`]).
    pub features: Tensor<B, 3>,
    /// The pooled representation the head reads, `[b, d]` (the class token for a ViT).
    pub pre_logits: Tensor<B, 2>,
    /// Head output `[b, classes]` (equal to `pre_logits` when the model has no head).
    pub logits: Tensor<B, 2>,
    /// The output of every block (before the final norm), when asked for.
    pub hidden: Vec<Tensor<B, 3>>,
    /// The grid of `features` (hierarchical families), `None` for a token sequence.
    pub spatial: Option<Spatial>,
}

impl<B: Backend> BackboneOutput<B> {
    /// The features in the reference's layout: `[b, t, d]` (ViT), `[b, h, w, d]` (Swin) or
    /// `[b, d, h, w]` (ConvNeXt), as host tensors.
    pub fn features_as_reference(&self) -> mosa_core::HostTensor {
        let t = mosa_core::HostTensor::from_tensor(self.features.clone());
        match self.spatial {
            None => t,
            Some(s) => {
                let [b, _, d] = self.features.dims();
                let [h, w] = s.grid;
                let x = self.features.clone().reshape([b, h, w, d]);
                if s.channels_first { mosa_core::HostTensor::from_tensor(x.permute([0, 3, 1, 2])) } else { mosa_core::HostTensor::from_tensor(x) }
            }
        }
    }
}

/// Input preprocessing of a preset: the normalisation its weights were trained with and the
/// resolution they are for.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub size: usize,
}

/// ImageNet mean / std (timm's `IMAGENET_DEFAULT_*`), what every preset here was trained with.
pub const IMAGENET: ([f32; 3], [f32; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);

/// A backbone family and its configuration. Saved as `{"family": "vit", …config…}`; a bare ViT
/// config (run directories written before families existed) reads as a ViT.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum BackboneConfig {
    Vit(VitConfig),
    Swin(SwinConfig),
    #[serde(rename = "convnext")]
    ConvNext(ConvNextConfig),
}

impl<'de> Deserialize<'de> for BackboneConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut v = serde_json::Value::deserialize(d)?;
        let family = v.as_object_mut().and_then(|o| o.remove("family")).and_then(|f| f.as_str().map(String::from));
        match family.as_deref() {
            Some("vit") | None => serde_json::from_value(v).map(BackboneConfig::Vit).map_err(serde::de::Error::custom),
            Some("swin") => serde_json::from_value(v).map(BackboneConfig::Swin).map_err(serde::de::Error::custom),
            Some("convnext") => serde_json::from_value(v).map(BackboneConfig::ConvNext).map_err(serde::de::Error::custom),
            Some(other) => Err(serde::de::Error::custom(format!("unknown backbone family `{other}`"))),
        }
    }
}

impl From<VitConfig> for BackboneConfig {
    fn from(c: VitConfig) -> Self {
        BackboneConfig::Vit(c)
    }
}

impl BackboneConfig {
    pub fn family(&self) -> &'static str {
        match self {
            BackboneConfig::Vit(_) => "vit",
            BackboneConfig::Swin(_) => "swin",
            BackboneConfig::ConvNext(_) => "convnext",
        }
    }

    /// One line for logs and `mosa inspect`.
    pub fn describe(&self) -> String {
        match self {
            BackboneConfig::Vit(c) => format!("d {}, {} blocks, {} heads, patch {}", c.embed_dim, c.depth, c.num_heads, c.patch_size),
            BackboneConfig::Swin(c) => {
                format!("Swin d {}, depths {:?}, heads {:?}, window {}, patch {}", c.embed_dim, c.depths, c.num_heads, c.window_size, c.patch_size)
            }
            BackboneConfig::ConvNext(c) => format!("ConvNeXt dims {:?}, depths {:?}, kernel {}", c.dims, c.depths, c.kernel_size),
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        match self {
            BackboneConfig::Vit(c) => c.validate(),
            BackboneConfig::Swin(c) => c.validate(),
            BackboneConfig::ConvNext(c) => c.validate(),
        }
    }

    /// The parameter count estimated from the config alone (before anything is allocated).
    pub fn estimated_params(&self) -> f64 {
        match self {
            BackboneConfig::Vit(c) => c.estimated_params(),
            BackboneConfig::Swin(c) => c.estimated_params(),
            BackboneConfig::ConvNext(c) => c.estimated_params(),
        }
    }

    /// Classes of the config's head (0: no head).
    pub fn num_classes(&self) -> usize {
        match self {
            BackboneConfig::Vit(c) => c.num_classes,
            BackboneConfig::Swin(c) => c.num_classes,
            BackboneConfig::ConvNext(c) => c.num_classes,
        }
    }

    pub fn with_num_classes(self, n: usize) -> Self {
        match self {
            BackboneConfig::Vit(c) => BackboneConfig::Vit(c.with_num_classes(n)),
            BackboneConfig::Swin(c) => BackboneConfig::Swin(c.with_num_classes(n)),
            BackboneConfig::ConvNext(c) => BackboneConfig::ConvNext(c.with_num_classes(n)),
        }
    }

    /// The configuration for inputs of side `s` (a ViT resamples its position grid to it, a Swin
    /// sizes its windows for it).
    pub fn with_img_size(self, s: usize) -> Self {
        match self {
            BackboneConfig::Vit(c) => BackboneConfig::Vit(c.with_img_size(s)),
            BackboneConfig::Swin(c) => BackboneConfig::Swin(c.with_img_size(s)),
            BackboneConfig::ConvNext(c) => BackboneConfig::ConvNext(c.with_img_size(s)),
        }
    }

    /// Input channels.
    pub fn in_chans(&self) -> usize {
        match self {
            BackboneConfig::Vit(c) => c.in_chans,
            BackboneConfig::Swin(c) => c.in_chans,
            BackboneConfig::ConvNext(c) => c.in_chans,
        }
    }

    /// The smallest input side the model accepts.
    pub fn min_input(&self) -> usize {
        match self {
            BackboneConfig::Vit(c) => c.patch_size,
            BackboneConfig::Swin(c) => c.patch_size,
            BackboneConfig::ConvNext(c) => c.min_input(),
        }
    }

    /// The name of the classifier in timm's layout (`head` on a ViT, `head.fc` on Swin and
    /// ConvNeXt, whose `head.norm` belongs to the backbone).
    pub fn head_key(&self) -> &'static str {
        match self {
            BackboneConfig::Vit(_) => "head",
            BackboneConfig::Swin(_) | BackboneConfig::ConvNext(_) => "head.fc",
        }
    }

    /// Number of parameters of the model this config builds (closed form).
    pub fn num_params(&self) -> usize {
        match self {
            BackboneConfig::Vit(c) => c.num_params(),
            BackboneConfig::Swin(c) => c.num_params(),
            BackboneConfig::ConvNext(c) => c.num_params(),
        }
    }

    /// A randomly initialised model.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Backbone<B> {
        match self {
            BackboneConfig::Vit(c) => Backbone::Vit(c.init(device)),
            BackboneConfig::Swin(c) => Backbone::Swin(c.init(device)),
            BackboneConfig::ConvNext(c) => Backbone::ConvNext(c.init(device)),
        }
    }

    /// Builds the model and loads a checkpoint of any supported layout into it.
    pub fn load<B: Backend>(&self, path: &Path, head: HeadPolicy, device: &B::Device) -> Result<Backbone<B>> {
        let sd = load::read_checkpoint(path)?;
        self.load_state(sd, head, device)
    }

    /// Builds the model and puts an already-read timm-layout state dict onto it.
    pub fn load_state<B: Backend>(&self, sd: load::StateDict, head: HeadPolicy, device: &B::Device) -> Result<Backbone<B>> {
        match self {
            BackboneConfig::Vit(c) => {
                load::check_depth(c, &sd)?;
                Ok(Backbone::Vit(load::apply(c.init(device), c, sd, head)?))
            }
            BackboneConfig::Swin(c) => Ok(Backbone::Swin(crate::swin::load_state(c, sd, head, device)?)),
            BackboneConfig::ConvNext(c) => Ok(Backbone::ConvNext(crate::convnext::load_state(c, sd, head, device)?)),
        }
    }
}

/// A backbone of any family.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one per model: boxing would only add an indirection
pub enum Backbone<B: Backend> {
    Vit(VisionTransformer<B>),
    Swin(SwinTransformer<B>),
    ConvNext(ConvNeXt<B>),
}

/// `match` over every family with the same body.
macro_rules! each {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            Backbone::Vit($m) => $body,
            Backbone::Swin($m) => $body,
            Backbone::ConvNext($m) => $body,
        }
    };
}

impl<B: Kernels> Backbone<B> {
    /// Forward pass; `collect_hidden` keeps every block's output; `rng` draws the active experts
    /// of MoSA methods (one per block and pass, whole batch).
    ///
    /// # Shapes
    /// `[b, c, h, w]` → [`BackboneOutput`]
    pub fn forward_rng(&self, x: Tensor<B, 4>, collect_hidden: bool, rng: &mut Rng) -> BackboneOutput<B> {
        each!(self, m => m.forward_rng(x, collect_hidden, rng))
    }

    /// Forward pass with a fixed expert stream (evaluation uses merged experts and needs none).
    pub fn forward_with(&self, x: Tensor<B, 4>, collect_hidden: bool) -> BackboneOutput<B> {
        self.forward_rng(x, collect_hidden, &mut Rng::new(0))
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> BackboneOutput<B> {
        self.forward_with(x, false)
    }

    pub fn num_classes(&self) -> usize {
        each!(self, m => m.num_classes())
    }

    /// Bakes the input size into the model once (a ViT re-grids its position embeddings, a Swin
    /// re-sizes its windows as `cfg.with_img_size(s)` would; ConvNeXt takes any size).
    pub fn set_img_size(self, cfg: &BackboneConfig, s: usize) -> Self {
        match (self, cfg) {
            (Backbone::Vit(m), _) => Backbone::Vit(m.set_img_size(s)),
            (Backbone::Swin(m), BackboneConfig::Swin(c)) => Backbone::Swin(m.set_img_size(c, s)),
            (m, _) => m,
        }
    }

    /// The model's tensors in timm's names and layout (method modules excluded).
    pub fn state_dict(&self) -> load::StateDict {
        each!(self, m => m.state_dict())
    }

    /// The MoSA reference's training dropout (spec §1): `p` after the position embedding (a ViT)
    /// and in every MLP (after the activation and after fc2), attention probabilities and
    /// attention output 0. Active only on an autodiff backend (training), as all dropout.
    pub fn with_training_dropout(mut self, p: f64) -> Self {
        let zero = || burn::nn::DropoutConfig::new(0.0).init();
        let rate = || burn::nn::DropoutConfig::new(p).init();
        match &mut self {
            Backbone::Vit(m) => {
                m.pos_drop = rate();
                for b in &mut m.blocks {
                    (b.mlp.drop, b.attn.attn_drop, b.attn.proj_drop) = (rate(), zero(), zero());
                }
            }
            Backbone::Swin(m) => {
                for b in m.layers.iter_mut().flat_map(|s| s.blocks.iter_mut()) {
                    (b.mlp.drop, b.attn.attn_drop, b.attn.proj_drop) = (rate(), zero(), zero());
                }
            }
            Backbone::ConvNext(m) => {
                for b in m.stages.iter_mut().flat_map(|s| s.blocks.iter_mut()) {
                    b.mlp.drop = rate();
                }
            }
        }
        self
    }
}

impl<B: Kernels> PeftHost<B> for Backbone<B> {
    fn targets(&self) -> Targets {
        each!(self, m => m.targets())
    }
    fn sites_mut(&mut self) -> Vec<SiteMut<'_, B>> {
        each!(self, m => m.sites_mut())
    }
    fn prompts_mut(&mut self) -> Option<(PromptSite, &mut Option<Prompts<B>>)> {
        each!(self, m => m.prompts_mut())
    }
    fn head_mut(&mut self) -> Option<&mut Linear<B>> {
        each!(self, m => m.head_mut())
    }
}
