//! The hook points a backbone declares, once per family: adapter sites (block, stage, width,
//! placement), linear sites (target name, path, in, out) and whether prompts apply. Everything
//! a method does to a backbone — inject, merge, mask gradients, re-select and save sparse
//! masks, decide what trains — is written once over these sites ([`crate::inject`]), so a new
//! backbone only says where its sites are ([`PeftHost`]).

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;

use crate::draws::Draws;
use crate::prompt::Prompts;
use crate::slot::{AdapterSlot, LinearBranch};
use mosa_kernels::{Kernels, linear_rows};

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

impl Placement {
    pub fn describe(self) -> &'static str {
        match self {
            Placement::Parallel => "parallel to the MLP",
            Placement::AfterAttention => "after the attention",
            Placement::AfterMlp => "after the MLP",
        }
    }
}

/// An adapter slot of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSite {
    /// Block index over the whole backbone (0-based), the key of per-block seeded streams.
    pub block: usize,
    /// Stage of a hierarchical backbone (0 for a ViT).
    pub stage: usize,
    /// Width of the tokens the adapter reads and writes.
    pub width: usize,
    pub place: Placement,
    /// The site feeds the adapter an already normalised stream (Swin's reference reads the MLP's
    /// own input `norm2(x)`), so the adapter has no LayerNorm of its own there.
    pub normalised_input: bool,
}

/// A linear layer that can carry a branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearSite {
    pub block: usize,
    /// The family's name for it (`qkv`, `proj`, `fc1`, `fc2` on a ViT): what `--targets` names.
    pub target: &'static str,
    /// Module path of the layer (`blocks.3.attn.qkv`).
    pub path: String,
    pub d_in: usize,
    pub d_out: usize,
}

/// Where VPT prompts go, for backbones with a token sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptSite {
    pub width: usize,
    pub patch_size: usize,
    pub depth: usize,
}

/// A family's target vocabulary: the linear sites a method may name, the defaults, and the
/// fused linears whose equal output parts LoRA may name.
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    pub family: &'static str,
    pub names: &'static [&'static str],
    /// The default of MoSA-LoRA and sparse experts.
    pub default: &'static [&'static str],
    /// LoRA's default (the MoSA code base's `MODE "qv"` where the family has a fused `qkv`).
    pub lora_default: &'static [&'static str],
    /// Fused linears whose output is the concatenation of equal parts, with the parts' names
    /// (`("qkv", &["q", "k", "v"])`): a LoRA target may be a part, as the reference's separate
    /// query / key / value projections are.
    pub parts: &'static [(&'static str, &'static [&'static str])],
}

/// One site with mutable access to what it holds.
pub enum SiteMut<'a, B: Backend> {
    Adapter { site: AdapterSite, slot: &'a mut Option<AdapterSlot<B>> },
    Linear { site: LinearSite, linear: &'a mut TunableLinear<B> },
}

/// What a backbone exposes so that any method can be injected into it.
pub trait PeftHost<B: Backend>: Module<B> + Clone {
    /// The family's target vocabulary.
    fn targets(&self) -> Targets;
    /// Every adapter and linear site, in a fixed order (block by block).
    fn sites_mut(&mut self) -> Vec<SiteMut<'_, B>>;
    /// Where prompts go, and their slot; `None` where prompts do not apply.
    fn prompts_mut(&mut self) -> Option<(PromptSite, &mut Option<Prompts<B>>)>;
    /// The task head, if the model has one.
    fn head_mut(&mut self) -> Option<&mut Linear<B>>;
}

/// A frozen linear layer with an optional method branch. The base tensors keep timm's names
/// (`qkv.weight`, `qkv.bias`), so checkpoints map one to one; the branch lives at `qkv.branch`.
#[derive(Module, Debug)]
pub struct TunableLinear<B: Backend> {
    /// `[in, out]`
    pub weight: Param<Tensor<B, 2>>,
    pub bias: Option<Param<Tensor<B, 1>>>,
    pub branch: Option<LinearBranch<B>>,
}

impl<B: Backend> From<Linear<B>> for TunableLinear<B> {
    fn from(l: Linear<B>) -> Self {
        Self { weight: l.weight, bias: l.bias, branch: None }
    }
}

impl<B: Kernels> TunableLinear<B> {
    /// `x·W0 + b`, plus the branch if there is one.
    pub fn forward(&self, x: Tensor<B, 3>, draws: &mut Draws) -> Tensor<B, 3> {
        let bias = self.bias.as_ref().map(|b| b.val());
        match &self.branch {
            Some(br) => br.forward(self.weight.val(), bias, x, draws),
            None => linear_rows(x, self.weight.val(), bias),
        }
    }
}

impl<B: Backend> TunableLinear<B> {
    /// `(in, out)`, without initialising a lazy weight.
    pub fn dims(&self) -> (usize, usize) {
        let [i, o] = self.weight.lazy_shape().dims::<2>();
        (i, o)
    }

    /// Folds the branch into the weight: `W0 + ΔW` as a plain layer (LoRA, MoSA-LoRA, sparse).
    pub fn merge(&mut self) {
        if let Some(br) = self.branch.take() {
            let id = self.weight.id;
            let w = self.weight.val() + br.delta();
            self.weight = Param::initialized(id, w.detach());
        }
    }
}
