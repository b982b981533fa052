//! What a backbone's hook points hold: an adapter slot ([`AdapterSlot`]: plain, MoSA or pruned)
//! and a linear layer's branch ([`LinearBranch`]: LoRA, LoRA on parts, MoSA-LoRA or a sparse
//! delta). Where the slots are is declared by each backbone as sites ([`crate::site`]); what goes
//! into them is decided by the method ([`crate::method`], [`crate::inject`]).
//!
//! Each kind of slot content implements [`Slot`], each kind of branch [`Branch`], in the kind's own
//! file (`adapter.rs`, `mosa.rs`, `pruned.rs`; `lora.rs`, `sparse.rs`); the two enums only
//! dispatch, through one exhaustive `match` each (the macros `each_slot!`, `each_branch!`). A new kind is
//! its file, its variant and one line in the macro; the compiler names every place left to decide.

use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

pub use crate::site::Placement;

use crate::adapter::Adapter;
use crate::draws::Draws;
use crate::expert::Delta;
use crate::lora::{Lora, LoraParts, MosaLora};
use crate::mosa::MosaAdapter;
use crate::params::{Tally, tally};
use crate::pruned::PrunedAdapter;
use crate::sparse::SparseDelta;
use mosa_kernels::Kernels;

/// What every adapter-slot content implements (in its own file).
pub trait Slot<B: Backend>: Module<B> {
    /// The adapter's output (added to the stream, or replacing it for a sequential adapter, by
    /// the block). In training a MoSA adapter draws one expert per projection from `draws` (per
    /// half of a stacked batch, [`Draws::each`]).
    ///
    /// # Shapes
    /// - `x`: `[batch, tokens, width]` → `[batch, tokens, width]`
    fn forward(&self, x: Tensor<B, 3>, draws: &mut Draws) -> Tensor<B, 3>
    where
        B: Kernels;

    /// The plain adapter inference uses (MoSA: the experts' mean, mode `add`).
    fn merged(&self) -> Adapter<B>;

    /// The bound `n` of each `below(n)` one training forward draws (MoSA: the expert counts of
    /// its split projections); none for kinds without experts.
    fn expert_draws(&self) -> Vec<usize> {
        Vec::new()
    }

    /// Whether a sequential adapter reads the stream after the residual
    /// ([`crate::adapter::SequentialPosition`]).
    fn on_stream(&self) -> bool {
        false
    }

    /// Parameters of the expert-split tensors (the rest of the slot is "adapter").
    fn expert_params(&self) -> Tally {
        Tally::default()
    }

    /// Masks the gradients of tensors that train on part of their entries (after backward).
    fn mask_gradients(&self, _grads: &mut GradientsParams)
    where
        B: AutodiffBackend,
    {
    }
}

/// What every linear-layer branch implements (in its own file).
pub trait Branch<B: Backend>: Module<B> {
    /// `x·W0 + b` plus the branch.
    ///
    /// # Shapes
    /// - `weight`: `[in, out]`, `bias`: `[out]`
    /// - `x`: `[batch, tokens, in]` → `[batch, tokens, out]`
    fn forward(&self, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>, x: Tensor<B, 3>, draws: &mut Draws) -> Tensor<B, 3>
    where
        B: Kernels;

    /// The dense `ΔW` (`[in, out]`) the branch adds to the base weight (MoSA-LoRA: merged).
    fn delta(&self) -> Tensor<B, 2>;

    /// The branch as a task expert's update, in timm's `[out, in]` layout.
    fn expert_delta(&self) -> Delta;

    /// The bound `n` of each `below(n)` one training forward draws (MoSA-LoRA: the expert
    /// counts of its split factors); none for kinds without experts.
    fn expert_draws(&self) -> Vec<usize> {
        Vec::new()
    }

    /// Parameters of the expert-split tensors (the rest of the branch is "adapter").
    fn expert_params(&self) -> Tally {
        Tally::default()
    }

    /// Masks the gradients of tensors that train on part of their entries (after backward).
    fn mask_gradients(&self, _grads: &mut GradientsParams)
    where
        B: AutodiffBackend,
    {
    }
}

/// The parameters of those of `tensors` that are split into more than one expert.
pub(crate) fn split_params<B: Backend>(tensors: [&crate::mosa::Experts<B>; 2]) -> Tally {
    tensors.into_iter().filter(|x| x.len() > 1).map(tally).fold(Tally::default(), |a, b| a + b)
}

/// The content of an adapter slot.
#[derive(Module, Debug)]
pub enum AdapterSlot<B: Backend> {
    Plain(Adapter<B>),
    Mosa(MosaAdapter<B>),
    Pruned(PrunedAdapter<B>),
}

/// `$body` with `$x` bound to the slot's content, whatever its kind.
macro_rules! each_slot {
    ($slot:expr, $x:ident => $body:expr) => {
        match $slot {
            AdapterSlot::Plain($x) => $body,
            AdapterSlot::Mosa($x) => $body,
            AdapterSlot::Pruned($x) => $body,
        }
    };
}

impl<B: Kernels> AdapterSlot<B> {
    /// In training, MoSA draws one expert per projection from `draws` for the whole batch (or per
    /// half of a stacked one); outside training (no autodiff), it uses the merged (mean) adapter,
    /// so evaluation of an unmerged model gives the merged model's output.
    pub fn forward(&self, x: Tensor<B, 3>, draws: &mut Draws) -> Tensor<B, 3> {
        each_slot!(self, s => Slot::forward(s, x, draws))
    }
}

impl<B: Backend> AdapterSlot<B> {
    /// Whether a sequential adapter in this slot reads the stream after the residual rather than
    /// the sublayer's output ([`crate::adapter::SequentialPosition`]).
    pub fn on_stream(&self) -> bool {
        each_slot!(self, s => s.on_stream())
    }

    /// A plain adapter in place of a MoSA one (mode `add`) or of a pruned one (its weights; the
    /// masks only shaped training).
    pub fn merged(&self) -> Self {
        AdapterSlot::Plain(each_slot!(self, s => s.merged()))
    }

    /// Parameters of the expert-split tensors (MoSA's stacked experts) and of everything else.
    pub fn param_split(&self) -> (Tally, Tally) {
        let experts = each_slot!(self, s => s.expert_params());
        (experts, tally(self) - experts)
    }

    /// The bounds of the draws one training forward makes ([`Slot::expert_draws`]).
    pub fn expert_draws(&self) -> Vec<usize> {
        each_slot!(self, s => s.expert_draws())
    }
}

impl<B: AutodiffBackend> AdapterSlot<B> {
    pub fn mask_gradients(&self, grads: &mut GradientsParams) {
        each_slot!(self, s => s.mask_gradients(grads))
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

/// `$body` with `$x` bound to the branch, whatever its kind.
macro_rules! each_branch {
    ($branch:expr, $x:ident => $body:expr) => {
        match $branch {
            LinearBranch::Lora($x) => $body,
            LinearBranch::LoraParts($x) => $body,
            LinearBranch::MosaLora($x) => $body,
            LinearBranch::Sparse($x) => $body,
        }
    };
}

impl<B: Kernels> LinearBranch<B> {
    /// `x·W0 + b` plus the branch. A sparse delta is folded into the weight (one matmul).
    pub fn forward(&self, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>, x: Tensor<B, 3>, draws: &mut Draws) -> Tensor<B, 3> {
        each_branch!(self, b => Branch::forward(b, weight, bias, x, draws))
    }
}

impl<B: Backend> LinearBranch<B> {
    /// Parameters of the expert-split tensors (MoSA-LoRA's split factor) and of everything else.
    pub fn param_split(&self) -> (Tally, Tally) {
        let experts = each_branch!(self, b => b.expert_params());
        (experts, tally(self) - experts)
    }

    /// The bounds of the draws one training forward makes ([`Branch::expert_draws`]).
    pub fn expert_draws(&self) -> Vec<usize> {
        each_branch!(self, b => b.expert_draws())
    }

    /// The dense `ΔW` (`[in, out]`) this branch adds to the base weight.
    pub fn delta(&self) -> Tensor<B, 2> {
        each_branch!(self, b => Branch::delta(b))
    }

    /// The branch as a task expert's update, in timm's `[out, in]` layout.
    pub fn expert_delta(&self) -> Delta {
        each_branch!(self, b => b.expert_delta())
    }
}

impl<B: AutodiffBackend> LinearBranch<B> {
    pub fn mask_gradients(&self, grads: &mut GradientsParams) {
        each_branch!(self, b => b.mask_gradients(grads))
    }
}
