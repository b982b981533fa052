//! **mosa** as a library: parameter-efficient fine-tuning of vision backbones (ViT, Swin, ConvNeXt)
//! with sparse adapters (MoSA, arXiv 2312.02923), and sparse task experts that merge (arXiv
//! 2507.07140) — one dependency for the crates behind the `mosa` command, and a [`prelude`].
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::{Distribution, Tensor};
//! use mosa::prelude::*;
//!
//! let device = Default::default();
//! // a small ViT from its config (a preset is `preset("vit-b16")`, a timm fixture `resolve_model("vit.json")`)
//! let vit = VitConfig::new().with_embed_dim(48).with_depth(2).with_num_heads(3).with_patch_size(8).with_img_size(32).with_num_classes(5);
//! let model = BackboneConfig::Vit(vit).init::<Flex>(&device);
//! // MoSA: the adapter split into 4 sparse experts per block; LoRA, sparse, … the same way
//! let tuned = inject::apply(model, &Method::new(MethodKind::Mosa), 3407, &device)?;
//! let x = Tensor::<Flex, 4>::random([2, 3, 32, 32], Distribution::Default, &device);
//! // the MoSA experts merged into one adapter: a plain forward pass at no extra cost
//! let logits = inject::merged(&tuned).forward(x).logits;
//! assert_eq!(logits.dims(), [2, 5]);
//! # Ok::<(), mosa::core::Error>(())
//! ```
//!
//! Training runs on a dataset ([`train::run`]), experts and their merge ([`core::expert`],
//! [`core::merge`], [`train::merged`]), and HF PEFT adapters in and out ([`train::peft`]) are shown
//! end to end in the workspace's `examples/` (`cargo run --release -p mosa --example finetune`,
//! `merge_experts`, `peft_eval`).
//!
//! The crates, re-exported whole:
//!
//! | module | crate | what |
//! |---|---|---|
//! | [`core`] | mosa-core | methods and their injection, masks, experts, merging, PEFT adapter files |
//! | [`models`] | mosa-models | ViT, Swin, ConvNeXt, presets, checkpoint loaders |
//! | [`data`] | mosa-data | VTAB-1k, FGVC, image folders, preprocessing, loaders |
//! | [`train`] | mosa-train | the training engine, run folders, evaluation, experts of runs, merged files |
//! | [`kernels`] | mosa-kernels | the backend-extension trait [`Kernels`](kernels::Kernels) and its CPU kernels |
//!
//! Everything is generic over burn's `Backend` (through [`Kernels`](kernels::Kernels)): the binary
//! that uses it chooses the backend (Flex on the CPU, CUDA, wgpu), as these examples do.

pub use mosa_core as core;
pub use mosa_data as data;
pub use mosa_kernels as kernels;
pub use mosa_models as models;
pub use mosa_train as train;

/// The types a fine-tuning, merging or PEFT-exchanging program needs.
pub mod prelude {
    pub use mosa_core::expert::{Expert, ExpertKind};
    pub use mosa_core::merge::{MergeConfig, MergeMethod};
    pub use mosa_core::{AutodiffKernels, HostTensor, Kernels, Method, MethodKind, inject};
    pub use mosa_data::{Dataset, DatasetSpec};
    pub use mosa_models::{Backbone, BackboneConfig, ConvNextConfig, HeadPolicy, SwinConfig, VitConfig, preset, resolve_model};
    pub use mosa_train::evaluate::accuracy_on;
    pub use mosa_train::merged::{merge_files, read_merged};
    pub use mosa_train::peft::ImportSpec;
    pub use mosa_train::progress::{Console, Silent};
    pub use mosa_train::{Control, Outcome, RunSpec, Summary, TrainConfig};
}
