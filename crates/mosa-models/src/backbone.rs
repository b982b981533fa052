//! The one backbone abstraction: [`BackboneConfig`] (which family, with its config) and
//! [`Backbone`] (the model), with one interface for every family — forward with optional
//! per-block hidden states, the common [`BackboneOutput`], the head, the sites methods use
//! ([`PeftHost`]) and loading by path. The engine, the CLI and xtask only see these types.
//!
//! Each family implements [`FamilyConfig`] and [`Family`] in its own file (`vit.rs`, `swin.rs`,
//! `convnext.rs`); the two enums are generated from one registration list (`families!` at the
//! end of this file), and every method of theirs is one exhaustive `match` through the traits.
//! A new family is its file, one line in that list, and its presets.

// `Backbone` (and the record burn derives for it): one per model, boxing would only add an
// indirection; the attribute cannot reach the derive's output from inside `families!`.
#![allow(clippy::large_enum_variant)]

use std::path::Path;

use burn::nn::Linear;
use burn::prelude::*;
use mosa_kernels::Kernels;
use serde::{Deserialize, Serialize};

use mosa_core::prompt::Prompts;
use mosa_core::site::{PeftHost, PromptSite, SiteMut, Targets};
use mosa_core::{Draws, Rng};

use crate::convnext::{ConvNeXt, ConvNextConfig};
use crate::error::Result;
pub use crate::family::{BackboneOutput, Family, FamilyConfig, Spatial};
use crate::load::{self, HeadPolicy};
use crate::swin::{SwinConfig, SwinTransformer};
use crate::vit::{VisionTransformer, VitConfig};

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

/// The registered families: `Variant(config type, model type)`. Generates [`BackboneConfig`],
/// [`Backbone`] and their dispatch, each an exhaustive `match` over this list.
macro_rules! families {
    ($($variant:ident($config:ident, $model:ident)),* $(,)?) => {
        /// A backbone family and its configuration. Saved as `{"family": "vit", …config…}`; a bare
        /// ViT config (run directories written before families existed) reads as a ViT. The tag
        /// is the variant's name in lower case, which must be the family's
        /// [`FamilyConfig::NAME`] (a test checks it).
        #[derive(Debug, Clone, Serialize)]
        #[serde(tag = "family", rename_all = "lowercase")]
        pub enum BackboneConfig {
            $($variant($config),)*
        }

        /// A backbone of any family.
        #[derive(Module, Debug)]
        pub enum Backbone<B: Backend> {
            $($variant($model<B>),)*
        }

        $(impl From<$config> for BackboneConfig {
            fn from(c: $config) -> Self {
                BackboneConfig::$variant(c)
            }
        })*

        impl<'de> Deserialize<'de> for BackboneConfig {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let mut v = serde_json::Value::deserialize(d)?;
                let family = v.as_object_mut().and_then(|o| o.remove("family")).and_then(|f| f.as_str().map(String::from));
                // a config without a family predates families: a ViT
                let family = family.unwrap_or_else(|| VitConfig::NAME.to_string());
                $(if family == <$config as FamilyConfig>::NAME {
                    return serde_json::from_value(v).map(BackboneConfig::$variant).map_err(serde::de::Error::custom);
                })*
                let known = [$(<$config as FamilyConfig>::NAME),*];
                Err(serde::de::Error::custom(format!("unknown backbone family `{family}` (families: {})", known.join(", "))))
            }
        }

        impl BackboneConfig {
            pub fn family(&self) -> &'static str {
                match self {
                    $(BackboneConfig::$variant(_) => <$config as FamilyConfig>::NAME,)*
                }
            }

            /// The config described by timm constructor arguments: the family whose class
            /// `source` names, else the one whose arguments these are; `None` where neither
            /// tells (the caller decides).
            pub fn from_timm(source: &str, kwargs: &serde_json::Value, input_hw: Option<usize>) -> Option<crate::Result<BackboneConfig>> {
                $(if source.contains(<$config as FamilyConfig>::TIMM_CLASS) {
                    return Some(<$config as FamilyConfig>::from_timm_kwargs(kwargs, input_hw).map(BackboneConfig::$variant));
                })*
                $(if <$config as FamilyConfig>::claims_timm_kwargs(kwargs) {
                    return Some(<$config as FamilyConfig>::from_timm_kwargs(kwargs, input_hw).map(BackboneConfig::$variant));
                })*
                None
            }

            /// One line for logs and `mosa inspect`.
            pub fn describe(&self) -> String {
                match self {
                    $(BackboneConfig::$variant(c) => FamilyConfig::describe(c),)*
                }
            }

            pub fn validate(&self) -> crate::Result<()> {
                match self {
                    $(BackboneConfig::$variant(c) => FamilyConfig::validate(c),)*
                }
            }

            /// The parameter count estimated from the config alone (before anything is allocated).
            pub fn estimated_params(&self) -> f64 {
                match self {
                    $(BackboneConfig::$variant(c) => FamilyConfig::estimated_params(c),)*
                }
            }

            /// Classes of the config's head (0: no head).
            pub fn num_classes(&self) -> usize {
                match self {
                    $(BackboneConfig::$variant(c) => FamilyConfig::num_classes(c),)*
                }
            }

            pub fn with_num_classes(self, n: usize) -> Self {
                match self {
                    $(BackboneConfig::$variant(c) => BackboneConfig::$variant(FamilyConfig::with_num_classes(c, n)),)*
                }
            }

            /// The configuration for inputs of side `s` (a ViT resamples its position grid to it, a
            /// Swin sizes its windows for it).
            pub fn with_img_size(self, s: usize) -> Self {
                match self {
                    $(BackboneConfig::$variant(c) => BackboneConfig::$variant(FamilyConfig::with_img_size(c, s)),)*
                }
            }

            /// Input channels.
            pub fn in_chans(&self) -> usize {
                match self {
                    $(BackboneConfig::$variant(c) => FamilyConfig::in_chans(c),)*
                }
            }

            /// The smallest input side the model accepts.
            pub fn min_input(&self) -> usize {
                match self {
                    $(BackboneConfig::$variant(c) => FamilyConfig::min_input(c),)*
                }
            }

            /// The name of the classifier in timm's layout (`head` on a ViT, `head.fc` on Swin and
            /// ConvNeXt, whose `head.norm` belongs to the backbone).
            pub fn head_key(&self) -> &'static str {
                match self {
                    $(BackboneConfig::$variant(c) => FamilyConfig::head_key(c),)*
                }
            }

            /// Model FLOPs of one image's forward pass ([`FamilyConfig::forward_flops`]).
            pub fn forward_flops(&self) -> f64 {
                match self {
                    $(BackboneConfig::$variant(c) => FamilyConfig::forward_flops(c),)*
                }
            }

            /// Number of parameters of the model this config builds (closed form).
            pub fn num_params(&self) -> usize {
                match self {
                    $(BackboneConfig::$variant(c) => FamilyConfig::num_params(c),)*
                }
            }

            /// A randomly initialised model.
            pub fn init<B: Backend>(&self, device: &B::Device) -> Backbone<B> {
                match self {
                    $(BackboneConfig::$variant(c) => Backbone::$variant(FamilyConfig::build(c, device)),)*
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
                    $(BackboneConfig::$variant(c) => Ok(Backbone::$variant(FamilyConfig::load(c, sd, head, device)?)),)*
                }
            }
        }

        impl<B: Kernels> Backbone<B> {
            /// Forward pass; `collect_hidden` keeps every block's output; `draws` draws the active
            /// experts of MoSA methods (one per split projection, for the whole batch or per half
            /// of a stacked one).
            ///
            /// # Shapes
            /// `[b, c, h, w]` → [`BackboneOutput`]
            pub fn forward_draws(&self, x: Tensor<B, 4>, collect_hidden: bool, draws: &mut Draws) -> BackboneOutput<B> {
                match self {
                    $(Backbone::$variant(m) => Family::forward_draws(m, x, collect_hidden, draws),)*
                }
            }

            pub fn num_classes(&self) -> usize {
                match self {
                    $(Backbone::$variant(m) => Family::num_classes(m),)*
                }
            }

            /// Bakes the input size into the model once (a ViT re-grids its position embeddings, a
            /// Swin re-sizes its windows as `cfg.with_img_size(s)` would; ConvNeXt takes any size).
            /// A config of another family than the model's is an error.
            pub fn set_img_size(self, cfg: &BackboneConfig, s: usize) -> crate::Result<Self> {
                match (self, cfg) {
                    $((Backbone::$variant(m), BackboneConfig::$variant(c)) => Ok(Backbone::$variant(Family::set_img_size(m, c, s))),)*
                    (m, c) => Err(crate::Error::Config(format!("a {} config for a {} model", c.family(), m.family()))),
                }
            }

            /// The family's name (`vit`).
            pub fn family(&self) -> &'static str {
                match self {
                    $(Backbone::$variant(_) => <$config as FamilyConfig>::NAME,)*
                }
            }

            /// The model's tensors in timm's names and layout (method modules excluded).
            pub fn state_dict(&self) -> load::StateDict {
                match self {
                    $(Backbone::$variant(m) => Family::state_dict(m),)*
                }
            }

            /// Every backbone parameter by timm name, with its layout in the model.
            pub fn param_layout(&self) -> std::collections::BTreeMap<String, load::by_path::ParamLayout> {
                match self {
                    $(Backbone::$variant(m) => load::by_path::layout(m, <$config as FamilyConfig>::RENAMES),)*
                }
            }

            /// The named backbone parameters (timm names), flattened, shared with the model.
            pub fn params_flat(&self, names: &std::collections::HashSet<String>) -> std::collections::HashMap<String, Tensor<B, 1>> {
                match self {
                    $(Backbone::$variant(m) => load::by_path::flat(m, <$config as FamilyConfig>::RENAMES, names),)*
                }
            }

            /// Maps the named backbone parameters (timm names), each flattened and handed over
            /// by value ([`load::by_path::map_named`]).
            pub fn map_params(self, names: &std::collections::HashSet<String>, f: &mut dyn FnMut(&str, Tensor<B, 1>) -> Tensor<B, 1>) -> Self {
                match self {
                    $(Backbone::$variant(m) => Backbone::$variant(load::by_path::map_named(m, <$config as FamilyConfig>::RENAMES, names, f)),)*
                }
            }

            /// The MoSA reference's training dropout (spec §1): `p` after the position embedding
            /// (a ViT) and in every MLP (after the activation and after fc2), attention
            /// probabilities and attention output 0. Active only on an autodiff backend
            /// (training), as all dropout.
            pub fn with_training_dropout(self, p: f64) -> Self {
                match self {
                    $(Backbone::$variant(m) => Backbone::$variant(Family::with_training_dropout(m, p)),)*
                }
            }
        }

        impl<B: Kernels> PeftHost<B> for Backbone<B> {
            fn targets(&self) -> Targets {
                match self {
                    $(Backbone::$variant(m) => m.targets(),)*
                }
            }
            fn sites_mut(&mut self) -> Vec<SiteMut<'_, B>> {
                match self {
                    $(Backbone::$variant(m) => m.sites_mut(),)*
                }
            }
            fn prompts_mut(&mut self) -> Option<(PromptSite, &mut Option<Prompts<B>>)> {
                match self {
                    $(Backbone::$variant(m) => m.prompts_mut(),)*
                }
            }
            fn head_mut(&mut self) -> Option<&mut Linear<B>> {
                match self {
                    $(Backbone::$variant(m) => m.head_mut(),)*
                }
            }
        }
    };
}

impl<B: Kernels> Backbone<B> {
    /// [`Self::forward_draws`] with one expert stream for the whole batch, left where the
    /// forward's draws end.
    pub fn forward_rng(&self, x: Tensor<B, 4>, collect_hidden: bool, rng: &mut Rng) -> BackboneOutput<B> {
        mosa_core::draws::with_whole(rng, |draws| self.forward_draws(x, collect_hidden, draws))
    }

    /// Forward pass with a fixed expert stream (evaluation uses merged experts and needs none).
    pub fn forward_with(&self, x: Tensor<B, 4>, collect_hidden: bool) -> BackboneOutput<B> {
        self.forward_rng(x, collect_hidden, &mut Rng::new(0))
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> BackboneOutput<B> {
        self.forward_with(x, false)
    }
}

// The registration list: a new family is one line here (and its file and presets).
families! {
    Vit(VitConfig, VisionTransformer),
    Swin(SwinConfig, SwinTransformer),
    ConvNext(ConvNextConfig, ConvNeXt),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family's saved tag is its name, and its config reads back as the same family.
    #[test]
    fn family_tags_round_trip() {
        let configs: Vec<BackboneConfig> = vec![VitConfig::new().into(), SwinConfig::new().into(), ConvNextConfig::new().into()];
        for c in configs {
            let v = serde_json::to_value(&c).unwrap();
            assert_eq!(v["family"], c.family(), "{v}");
            let back: BackboneConfig = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(serde_json::to_value(&back).unwrap(), v);
        }
        let mut bare = serde_json::to_value(BackboneConfig::from(VitConfig::new())).unwrap();
        bare.as_object_mut().unwrap().remove("family");
        assert_eq!(serde_json::from_value::<BackboneConfig>(bare).unwrap().family(), "vit");
        let err = serde_json::from_value::<BackboneConfig>(serde_json::json!({"family": "resnet"})).unwrap_err().to_string();
        assert!(err.contains("unknown backbone family `resnet`") && err.contains("vit, swin, convnext"), "{err}");
    }

    /// Forward FLOPs against the published counts (timm's model tables, GMACs at 224 px with a
    /// 1,000-class head, × 2 FLOPs per multiply-add), within 3%.
    #[test]
    fn forward_flops_match_published_counts() {
        for (preset, gmacs) in [("vit-b16", 17.58), ("swin-t", 4.51), ("swin-b", 15.47), ("convnext-t", 4.47), ("convnext-b", 15.38)] {
            let cfg = crate::presets::preset(preset).unwrap().with_num_classes(1000).with_img_size(224);
            let ours = cfg.forward_flops() / 2e9;
            assert!((ours / gmacs - 1.0).abs() < 0.03, "{preset}: {ours:.2} GMACs, published {gmacs}");
        }
    }
}
