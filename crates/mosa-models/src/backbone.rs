//! The one backbone abstraction: [`BackboneConfig`] (which family, with its config) and
//! [`Backbone`] (the model), with one interface for every family — forward with optional
//! per-block hidden states, the common [`BackboneOutput`], the head, the sites methods use
//! ([`PeftHost`]) and loading by path. The engine, the CLI and xtask only see these types;
//! a new family is one more variant here and its own file.

use std::path::Path;

use burn::nn::Linear;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

use mosa_core::Rng;
use mosa_core::prompt::Prompts;
use mosa_core::site::{PeftHost, PromptSite, SiteMut, Targets};

use crate::error::Result;
use crate::load::{self, HeadPolicy};
use crate::vit::{VisionTransformer, VitConfig};

/// What every family's forward pass returns.
#[derive(Debug, Clone)]
pub struct BackboneOutput<B: Backend> {
    /// The final features after the last norm: all tokens `[b, t, d]` for a ViT.
    pub features: Tensor<B, 3>,
    /// The pooled representation the head reads, `[b, d]` (the class token for a ViT).
    pub pre_logits: Tensor<B, 2>,
    /// Head output `[b, classes]` (equal to `pre_logits` when the model has no head).
    pub logits: Tensor<B, 2>,
    /// The output of every block (before the final norm), when asked for.
    pub hidden: Vec<Tensor<B, 3>>,
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
}

impl<'de> Deserialize<'de> for BackboneConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut v = serde_json::Value::deserialize(d)?;
        let family = v.as_object_mut().and_then(|o| o.remove("family")).and_then(|f| f.as_str().map(String::from));
        match family.as_deref() {
            Some("vit") | None => serde_json::from_value(v).map(BackboneConfig::Vit).map_err(serde::de::Error::custom),
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
        }
    }

    /// One line for logs and `mosa inspect`.
    pub fn describe(&self) -> String {
        match self {
            BackboneConfig::Vit(c) => format!("d {}, {} blocks, {} heads, patch {}", c.embed_dim, c.depth, c.num_heads, c.patch_size),
        }
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        match self {
            BackboneConfig::Vit(c) => c.validate(),
        }
    }

    pub fn with_num_classes(self, n: usize) -> Self {
        match self {
            BackboneConfig::Vit(c) => BackboneConfig::Vit(c.with_num_classes(n)),
        }
    }

    /// The configuration for inputs of side `s` (a ViT resamples its position grid to it).
    pub fn with_img_size(self, s: usize) -> Self {
        match self {
            BackboneConfig::Vit(c) => BackboneConfig::Vit(c.with_img_size(s)),
        }
    }

    /// Input channels.
    pub fn in_chans(&self) -> usize {
        match self {
            BackboneConfig::Vit(c) => c.in_chans,
        }
    }

    /// The smallest input side the model accepts.
    pub fn min_input(&self) -> usize {
        match self {
            BackboneConfig::Vit(c) => c.patch_size,
        }
    }

    /// Number of parameters of the model this config builds (closed form).
    pub fn num_params(&self) -> usize {
        match self {
            BackboneConfig::Vit(c) => c.num_params(),
        }
    }

    /// A randomly initialised model.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Backbone<B> {
        match self {
            BackboneConfig::Vit(c) => Backbone::Vit(c.init(device)),
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
        }
    }
}

/// A backbone of any family.
#[derive(Module, Debug)]
pub enum Backbone<B: Backend> {
    Vit(VisionTransformer<B>),
}

impl<B: Backend> Backbone<B> {
    /// Forward pass; `collect_hidden` keeps every block's output; `rng` draws the active experts
    /// of MoSA methods (one per block and pass, whole batch).
    ///
    /// # Shapes
    /// `[b, c, h, w]` → [`BackboneOutput`]
    pub fn forward_rng(&self, x: Tensor<B, 4>, collect_hidden: bool, rng: &mut Rng) -> BackboneOutput<B> {
        match self {
            Backbone::Vit(m) => m.forward_rng(x, collect_hidden, rng),
        }
    }

    /// Forward pass with a fixed expert stream (evaluation uses merged experts and needs none).
    pub fn forward_with(&self, x: Tensor<B, 4>, collect_hidden: bool) -> BackboneOutput<B> {
        self.forward_rng(x, collect_hidden, &mut Rng::new(0))
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> BackboneOutput<B> {
        self.forward_with(x, false)
    }

    pub fn num_classes(&self) -> usize {
        match self {
            Backbone::Vit(m) => m.num_classes(),
        }
    }

    /// Bakes the input size into the model once (a ViT re-grids its position embeddings).
    pub fn set_img_size(self, s: usize) -> Self {
        match self {
            Backbone::Vit(m) => Backbone::Vit(m.set_img_size(s)),
        }
    }

    /// The model's tensors in timm's names and layout (method modules excluded).
    pub fn state_dict(&self) -> load::StateDict {
        match self {
            Backbone::Vit(m) => m.state_dict(),
        }
    }
}

impl<B: Backend> PeftHost<B> for Backbone<B> {
    fn targets(&self) -> Targets {
        match self {
            Backbone::Vit(m) => m.targets(),
        }
    }
    fn sites_mut(&mut self) -> Vec<SiteMut<'_, B>> {
        match self {
            Backbone::Vit(m) => m.sites_mut(),
        }
    }
    fn prompts_mut(&mut self) -> Option<(PromptSite, &mut Option<Prompts<B>>)> {
        match self {
            Backbone::Vit(m) => m.prompts_mut(),
        }
    }
    fn head_mut(&mut self) -> Option<&mut Linear<B>> {
        match self {
            Backbone::Vit(m) => m.head_mut(),
        }
    }
}
