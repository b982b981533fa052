//! What a backbone's hook points hold. A block has adapter slots (parallel to the MLP, after
//! the attention, after the MLP) and its linear layers can carry one branch (LoRA, MoSA-LoRA or
//! a sparse delta). These enums are the only place a backbone meets the methods: adding a method
//! of an existing kind is one new arm here and one in [`crate::method`].

use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::module::linear;

use crate::adapter::Adapter;
use crate::lora::{Lora, MosaLora};
use crate::mosa::MosaAdapter;
use crate::rng::Rng;
use crate::sparse::SparseDelta;

/// Where an adapter sits in a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Parallel to the MLP, reading the MLP's input stream (AdaptFormer / MoSA).
    Parallel,
    /// After the attention branch (Houlsby's first adapter).
    AfterAttention,
    /// After the MLP branch (Pfeiffer; Houlsby's second adapter).
    AfterMlp,
}

/// The content of an adapter slot.
#[derive(Module, Debug)]
pub enum AdapterSlot<B: Backend> {
    Plain(Adapter<B>),
    Mosa(MosaAdapter<B>),
}

impl<B: Backend> AdapterSlot<B> {
    /// In training, MoSA draws one expert per projection from `rng` for the whole batch; outside
    /// training (no autodiff), it uses the merged (mean) adapter, so evaluation of an unmerged
    /// model gives the merged model's output.
    pub fn forward(&self, x: Tensor<B, 3>, rng: &mut Rng) -> Tensor<B, 3> {
        match self {
            AdapterSlot::Plain(a) => a.forward(x),
            AdapterSlot::Mosa(m) if B::ad_enabled(&x.device()) => {
                let (d, u) = m.draw(rng);
                m.forward(x, d, u)
            }
            AdapterSlot::Mosa(m) => m.merge().forward(x),
        }
    }

    /// A plain adapter in place of a MoSA one (mode `add`).
    pub fn merged(&self) -> Self {
        match self {
            AdapterSlot::Mosa(m) => AdapterSlot::Plain(m.merge()),
            plain => plain.clone(),
        }
    }
}

impl<B: AutodiffBackend> AdapterSlot<B> {
    pub fn mask_gradients(&self, grads: &mut GradientsParams) {
        if let AdapterSlot::Mosa(m) = self {
            m.mask_gradients(grads);
        }
    }
}

/// A trainable branch on a frozen linear layer.
#[derive(Module, Debug)]
pub enum LinearBranch<B: Backend> {
    Lora(Lora<B>),
    MosaLora(MosaLora<B>),
    Sparse(SparseDelta<B>),
}

impl<B: Backend> LinearBranch<B> {
    /// `x·W0 + b` plus the branch. A sparse delta is folded into the weight (one matmul).
    pub fn forward(&self, base: &burn::nn::Linear<B>, x: Tensor<B, 3>, rng: &mut Rng) -> Tensor<B, 3> {
        let bias = base.bias.as_ref().map(|b| b.val());
        match self {
            LinearBranch::Lora(l) => linear(x.clone(), base.weight.val(), bias) + l.forward(x),
            LinearBranch::MosaLora(m) if B::ad_enabled(&x.device()) => {
                let (a, b) = m.draw(rng);
                linear(x.clone(), base.weight.val(), bias) + m.forward(x, a, b)
            }
            LinearBranch::MosaLora(m) => linear(x.clone(), base.weight.val(), bias) + m.merge().forward(x),
            LinearBranch::Sparse(s) => linear(x, s.apply(base.weight.val()), bias),
        }
    }

    /// The dense `ΔW` (`[in, out]`) this branch adds to the base weight.
    pub fn delta(&self) -> Tensor<B, 2> {
        match self {
            LinearBranch::Lora(l) => l.delta(),
            LinearBranch::MosaLora(m) => m.merge().delta(),
            LinearBranch::Sparse(s) => s.delta.val() * s.mask.clone(),
        }
    }
}

impl<B: AutodiffBackend> LinearBranch<B> {
    pub fn mask_gradients(&self, grads: &mut GradientsParams) {
        match self {
            LinearBranch::MosaLora(m) => m.mask_gradients(grads),
            // The forward pass already gives M ⊙ ∂W; masking again matters in the step of a
            // re-selection, whose gradient was computed under the previous mask.
            LinearBranch::Sparse(s) => {
                let id = s.delta.id;
                if let Some(g) = grads.remove::<B::InnerBackend, 2>(id) {
                    grads.register::<B::InnerBackend, 2>(id, g * s.mask.clone().inner());
                }
            }
            LinearBranch::Lora(_) => {}
        }
    }
}

/// `x·W0 + b` with an optional branch.
pub fn linear_with<B: Backend>(base: &burn::nn::Linear<B>, branch: &Option<LinearBranch<B>>, x: Tensor<B, 3>, rng: &mut Rng) -> Tensor<B, 3> {
    match branch {
        Some(br) => br.forward(base, x, rng),
        None => base.forward(x),
    }
}

/// `base + ΔW` as a plain linear layer (LoRA, MoSA-LoRA and sparse merges).
pub fn merge_linear<B: Backend>(base: &burn::nn::Linear<B>, branch: &LinearBranch<B>) -> burn::nn::Linear<B> {
    let mut out = base.clone();
    let id = base.weight.id;
    let w = base.weight.val() + branch.delta();
    out.weight = burn::module::Param::initialized(id, w.detach());
    out
}
