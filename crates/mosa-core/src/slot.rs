//! What a backbone's hook points hold: an adapter slot ([`AdapterSlot`]: plain or MoSA) and a
//! linear layer's branch ([`LinearBranch`]: LoRA, MoSA-LoRA or a sparse delta). Where the slots
//! are is declared by each backbone as sites ([`crate::site`]); what goes into them is decided by
//! the method ([`crate::method`], [`crate::inject`]).

use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

pub use crate::site::Placement;

use crate::adapter::Adapter;
use crate::kernels::{Kernels, linear_rows};
use crate::lora::{Lora, LoraParts, MosaLora};
use crate::mosa::MosaAdapter;
use crate::params::{Tally, tally};
use crate::pruned::PrunedAdapter;
use crate::rng::Rng;
use crate::sparse::SparseDelta;

/// The content of an adapter slot.
#[derive(Module, Debug)]
pub enum AdapterSlot<B: Backend> {
    Plain(Adapter<B>),
    Mosa(MosaAdapter<B>),
    Pruned(PrunedAdapter<B>),
}

impl<B: Kernels> AdapterSlot<B> {
    /// In training, MoSA draws one expert per projection from `rng` for the whole batch; outside
    /// training (no autodiff), it uses the merged (mean) adapter, so evaluation of an unmerged
    /// model gives the merged model's output.
    pub fn forward(&self, x: Tensor<B, 3>, rng: &mut Rng) -> Tensor<B, 3> {
        match self {
            AdapterSlot::Plain(a) => a.forward(x),
            AdapterSlot::Pruned(p) => p.adapter.forward(x),
            AdapterSlot::Mosa(m) if B::ad_enabled(&x.device()) => {
                let (d, u) = m.draw(rng);
                m.forward(x, d, u)
            }
            AdapterSlot::Mosa(m) => m.merge().forward(x),
        }
    }
}

impl<B: Backend> AdapterSlot<B> {
    /// Whether a sequential adapter in this slot reads the stream after the residual rather than
    /// the sublayer's output ([`crate::adapter::SequentialPosition`]).
    pub fn on_stream(&self) -> bool {
        matches!(self, AdapterSlot::Plain(a) if a.on_stream)
    }

    /// A plain adapter in place of a MoSA one (mode `add`) or of a pruned one (its weights; the
    /// masks only shaped training).
    pub fn merged(&self) -> Self {
        match self {
            AdapterSlot::Mosa(m) => AdapterSlot::Plain(m.merge()),
            AdapterSlot::Pruned(p) => AdapterSlot::Plain(p.adapter.clone()),
            plain => plain.clone(),
        }
    }
}

impl<B: Backend> AdapterSlot<B> {
    /// Parameters of the expert-split tensors (MoSA's stacked experts) and of everything else.
    pub fn param_split(&self) -> (Tally, Tally) {
        let experts = match self {
            AdapterSlot::Plain(_) | AdapterSlot::Pruned(_) => Tally::default(),
            AdapterSlot::Mosa(m) => [&m.down, &m.up].into_iter().filter(|x| x.len() > 1).map(tally).fold(Tally::default(), |a, b| a + b),
        };
        (experts, tally(self) - experts)
    }
}

impl<B: AutodiffBackend> AdapterSlot<B> {
    pub fn mask_gradients(&self, grads: &mut GradientsParams) {
        match self {
            AdapterSlot::Mosa(m) => m.mask_gradients(grads),
            AdapterSlot::Pruned(p) => p.mask_gradients(grads),
            AdapterSlot::Plain(_) => {}
        }
    }
}

/// A trainable branch on a frozen linear layer.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one per layer, built once: boxing would only add an indirection
pub enum LinearBranch<B: Backend> {
    Lora(Lora<B>),
    /// LoRA on parts of a fused linear (`q`, `v` of `qkv`).
    LoraParts(LoraParts<B>),
    MosaLora(MosaLora<B>),
    Sparse(SparseDelta<B>),
}

impl<B: Kernels> LinearBranch<B> {
    /// `x·W0 + b` plus the branch. A sparse delta is folded into the weight (one matmul).
    pub fn forward(&self, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>, x: Tensor<B, 3>, rng: &mut Rng) -> Tensor<B, 3> {
        match self {
            LinearBranch::Lora(l) => linear_rows(x.clone(), weight, bias) + l.forward(x),
            LinearBranch::LoraParts(l) => linear_rows(x.clone(), weight, bias) + l.forward(x),
            LinearBranch::MosaLora(m) if B::ad_enabled(&x.device()) => {
                let (a, b) = m.draw(rng);
                linear_rows(x.clone(), weight, bias) + m.forward(x, a, b)
            }
            LinearBranch::MosaLora(m) => linear_rows(x.clone(), weight, bias) + m.merge().forward(x),
            LinearBranch::Sparse(s) => linear_rows(x, s.apply(weight), bias),
        }
    }
}

impl<B: Backend> LinearBranch<B> {
    /// Parameters of the expert-split tensors (MoSA-LoRA's split factor) and of everything else.
    pub fn param_split(&self) -> (Tally, Tally) {
        let experts = match self {
            LinearBranch::MosaLora(m) => [&m.a, &m.b].into_iter().filter(|x| x.len() > 1).map(tally).fold(Tally::default(), |a, b| a + b),
            _ => Tally::default(),
        };
        (experts, tally(self) - experts)
    }

    /// The dense `ΔW` (`[in, out]`) this branch adds to the base weight.
    pub fn delta(&self) -> Tensor<B, 2> {
        match self {
            LinearBranch::Lora(l) => l.delta(),
            LinearBranch::LoraParts(l) => l.delta(),
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
            LinearBranch::Lora(_) | LinearBranch::LoraParts(_) => {}
        }
    }
}
