//! Vision backbones for mosa, generic over burn's `Backend`, with loaders for real checkpoints.
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::{Distribution, Tensor};
//! use mosa_models::{BackboneConfig, SwinConfig};
//!
//! let device = Default::default();
//! // one interface for every family: a tiny Swin here, `mosa_models::preset("vit-b16")` likewise
//! let swin = SwinConfig::new().with_img_size(32).with_patch_size(2).with_window_size(4).with_embed_dim(24)
//!     .with_depths(vec![2, 2]).with_num_heads(vec![2, 4]).with_num_classes(5);
//! let model = BackboneConfig::Swin(swin).init::<Flex>(&device);
//! let out = model.forward(Tensor::<Flex, 4>::random([2, 3, 32, 32], Distribution::Default, &device));
//! assert_eq!((out.pre_logits.dims(), out.logits.dims()), ([2, 48], [2, 5]));
//! ```
//!
//! - [`backbone`]: the one abstraction over families ([`BackboneConfig`], [`Backbone`],
//!   [`BackboneOutput`]) that the engine and the CLI use;
//! - [`vit`]: the config-driven Vision Transformer (timm names) and its sites;
//! - [`swin`]: the Swin Transformer (v1; timm names, the original release's layout mapped);
//! - [`convnext`]: ConvNeXt (timm names);
//! - [`layers`]: patch embedding, attention, MLP, LayerScale, drop path — shared by every family;
//! - [`presets`]: named presets with their preprocessing, `--model <preset | config.json>`;
//! - [`posembed`]: position-grid resampling (bicubic with and without antialias);
//! - [`load`]: timm safetensors, original ViT `.npz`, DINOv2 in ONNX → timm's layout → the module;
//! - [`weights`]: known downloadable weights and the cache.

pub mod backbone;
pub mod convnext;
pub mod error;
pub mod family;
pub mod kwargs;
pub mod layers;
pub mod limits;
pub mod load;
pub mod posembed;
pub mod presets;
pub mod swin;
pub mod vit;
pub mod weights;

pub use backbone::{Backbone, BackboneConfig, Preprocess};
pub use convnext::{ConvNeXt, ConvNextConfig};
pub use error::{Error, Result};
pub use family::{BackboneOutput, Family, FamilyConfig, Spatial};
pub use load::{HeadPolicy, StateDict, read_checkpoint};
pub use posembed::Resample;
pub use presets::{PRESETS, preset, resolve_model};
pub use swin::{SwinConfig, SwinTransformer};
pub use vit::load_vit;
pub use vit::{VisionTransformer, VitConfig};
