//! What a backbone family is: [`FamilyConfig`] (its configuration) and [`Family`] (its model),
//! implemented by each family in its own file, and what every family's forward returns
//! ([`BackboneOutput`]). `backbone.rs` registers the families and dispatches through these traits.

use burn::prelude::*;
use mosa_core::Draws;
use mosa_core::site::PeftHost;
use mosa_kernels::Kernels;

use crate::error::Result;
use crate::load::by_path::{self, Renames};
use crate::load::{HeadPolicy, StateDict};

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

/// What every family's configuration implements (in the family's file).
pub trait FamilyConfig: Sized {
    /// The family's name: its `family` tag in saved configs (`vit`).
    const NAME: &'static str;
    /// One line for logs and `mosa inspect`.
    fn describe(&self) -> String;
    fn validate(&self) -> crate::Result<()>;
    /// The parameter count estimated from the config alone (before anything is allocated).
    fn estimated_params(&self) -> f64;
    /// Number of parameters of the model this config builds (closed form).
    fn num_params(&self) -> usize;
    /// Classes of the config's head (0: no head).
    fn num_classes(&self) -> usize;
    fn with_num_classes(self, n: usize) -> Self;
    /// The configuration for inputs of side `s`.
    fn with_img_size(self, s: usize) -> Self;
    /// Input channels.
    fn in_chans(&self) -> usize;
    /// The smallest input side the model accepts.
    fn min_input(&self) -> usize;
    /// The name of the classifier in timm's layout.
    fn head_key(&self) -> &'static str;
    /// Model FLOPs of one image's forward pass at the configured size, 2 per multiply-add: every
    /// convolution, linear and attention matmul (`q·kᵀ`, `P·v`); element-wise work is not counted.
    fn forward_flops(&self) -> f64;
    /// The family's model type.
    type Model<B: Backend>: Module<B>;
    /// A randomly initialised model.
    fn build<B: Backend>(&self, device: &B::Device) -> Self::Model<B>;
    /// timm's model class of the family (`VisionTransformer`): a `source` naming it picks the family.
    const TIMM_CLASS: &'static str;
    /// Whether timm constructor arguments are this family's by an argument only it has (for a
    /// description that names no class).
    fn claims_timm_kwargs(kwargs: &serde_json::Value) -> bool;
    /// The configuration from timm's constructor arguments (`input_hw`: an input side given
    /// beside them, for a family whose arguments have none). Unsupported arguments are errors,
    /// so that a model we would compute differently is never accepted silently.
    fn from_timm_kwargs(kwargs: &serde_json::Value, input_hw: Option<usize>) -> Result<Self>;
    /// The family's renames of module-path segments into timm's, for the one by-path loader and
    /// writer ([`crate::load::by_path`]).
    const RENAMES: Renames;
    /// What is particular to the family, done to a timm-layout state dict before it is loaded:
    /// a depth or stage count checked, a grid or a table of another size resampled.
    fn prepare(&self, sd: &mut StateDict) -> Result<()>;
    /// The model with an already-read timm-layout state dict put onto it, every tensor checked.
    fn load<B: Backend>(&self, mut sd: StateDict, head: HeadPolicy, device: &B::Device) -> Result<Self::Model<B>> {
        self.validate()?;
        self.prepare(&mut sd)?;
        by_path::load(self.build(device), sd, Self::RENAMES, self.head_key(), head, device)
    }
}

/// What every family's model implements (in the family's file), besides the sites methods use
/// ([`PeftHost`]).
pub trait Family<B: Kernels>: PeftHost<B> + Module<B> + Sized {
    /// The family's configuration type.
    type Config: FamilyConfig;

    /// Forward pass; `collect_hidden` keeps every block's output; `draws` draws MoSA's experts.
    ///
    /// # Shapes
    /// `[b, c, h, w]` → [`BackboneOutput`]
    fn forward_draws(&self, x: Tensor<B, 4>, collect_hidden: bool, draws: &mut Draws) -> BackboneOutput<B>;
    fn num_classes(&self) -> usize;
    /// The model's tensors in timm's names and layout (method modules excluded: merge or export
    /// them first).
    fn state_dict(&self) -> StateDict {
        by_path::state_dict(self, <Self::Config as FamilyConfig>::RENAMES)
    }
    /// Bakes the input size `s` into the model (`cfg`: the config it was built from).
    fn set_img_size(self, cfg: &Self::Config, s: usize) -> Self;
    /// The MoSA reference's training dropout `p` (spec §1), where the family has dropout.
    fn with_training_dropout(self, p: f64) -> Self;
}
