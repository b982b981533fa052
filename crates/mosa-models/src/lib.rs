//! Vision backbones for mosa, generic over burn's `Backend`, with loaders for real checkpoints.
//!
//! - [`vit`]: the config-driven Vision Transformer (timm names);
//! - [`presets`]: named presets and `--model <preset | config.json>` resolution;
//! - [`posembed`]: position-grid resampling (bicubic with and without antialias);
//! - [`load`]: timm safetensors, original ViT `.npz`, DINOv2 in ONNX → our layout.

pub mod error;
pub mod load;
pub mod posembed;
pub mod presets;
pub mod vit;
pub mod weights;

pub use error::{Error, Result};
pub use load::{HeadPolicy, StateDict, load_vit, read_checkpoint};
pub use posembed::Resample;
pub use presets::{PRESETS, preset, resolve_model};
pub use vit::{VisionTransformer, VitConfig, VitOutput};
