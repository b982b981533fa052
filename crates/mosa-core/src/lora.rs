//! LoRA on a linear layer: `y = x·W + scaling · dropout(x)·A·B`, `scaling = alpha / r`;
//! `A` kaiming-uniform (U(±1/√in)), `B` zero (HF PEFT's init). Mergeable into `W`.
//! MoSA-LoRA splits `A` or `B` into N sparse experts in the same way as [`crate::mosa`].

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, Initializer, Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::draws::Draws;
use crate::expert::Delta;
use crate::host::HostTensor;
use crate::mosa::Experts;
use crate::params::Tally;
use crate::rng::Rng;
use crate::slot::{Branch, split_params};
use mosa_kernels::{Kernels, linear_rows};

/// LoRA's options (`--lora-r`, `--lora-alpha`, `--lora-dropout`, `--targets`); the one source of
/// their defaults: the MoSA code base's (`_C.MODEL.LORA`: `RANK 16`, `SCALAR 1.0` = alpha / r,
/// `DROPOUT 0`, `MODE "qv"`).
#[derive(Config, Debug)]
pub struct LoraOptions {
    #[config(default = 16)]
    pub r: usize,
    #[config(default = 16.0)]
    pub alpha: f64,
    #[config(default = 0.0)]
    pub dropout: f64,
    /// Linear sites by the family's names (ViT: `qkv`, `proj`, `fc1`, `fc2`) or parts of a fused
    /// one (`q`, `k`, `v` of `qkv`); empty = the family's default (ViT, Swin: `q`, `v`).
    #[config(default = "Vec::new()")]
    pub targets: Vec<String>,
}

/// MoSA-LoRA's options: LoRA's, the number of experts and the split factor.
#[derive(Config, Debug)]
pub struct MosaLoraOptions {
    #[config(default = "LoraOptions::new()")]
    pub lora: LoraOptions,
    #[config(default = 4)]
    pub experts: usize,
    #[config(default = "LoraSplit::B")]
    pub split: LoraSplit,
}

/// Which LoRA factor MoSA-LoRA splits into experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum LoraSplit {
    A,
    /// The factor that starts at zero, like MoSA's Up.
    #[default]
    B,
}

impl LoraOptions {
    fn factors<B: Backend>(&self, d_in: usize, d_out: usize, device: &B::Device) -> (Linear<B>, Linear<B>) {
        let bound = 1.0 / (d_in as f64).sqrt();
        let a = LinearConfig::new(d_in, self.r).with_bias(false).with_initializer(Initializer::Uniform { min: -bound, max: bound }).init(device);
        let b = LinearConfig::new(self.r, d_out).with_bias(false).with_initializer(Initializer::Zeros).init(device);
        (a, b)
    }

    pub fn init<B: Backend>(&self, d_in: usize, d_out: usize, device: &B::Device) -> Lora<B> {
        let (a, b) = self.factors(d_in, d_out, device);
        Lora { a: a.weight, b: b.weight, dropout: DropoutConfig::new(self.dropout).init(), scaling: self.alpha / self.r as f64 }
    }

    /// One LoRA per chosen part of a fused linear whose `d_out` outputs are `n` equal parts.
    pub fn init_parts<B: Backend>(&self, d_in: usize, d_out: usize, parts: &[usize], n: usize, device: &B::Device) -> LoraParts<B> {
        let len = d_out / n;
        LoraParts { parts: parts.iter().map(|_| self.init(d_in, len, device)).collect(), windows: parts.iter().map(|&p| (p * len, len)).collect(), d_out }
    }
}

impl MosaLoraOptions {
    pub fn init<B: Backend>(&self, d_in: usize, d_out: usize, rng: &mut Rng, device: &B::Device) -> MosaLora<B> {
        let (experts, l) = (self.experts, &self.lora);
        let (a, b) = l.factors(d_in, d_out, device);
        let (na, nb) = match self.split {
            LoraSplit::A => (experts, 1),
            LoraSplit::B => (1, experts),
        };
        MosaLora {
            a: Experts::from_linear(a, na, rng, false),
            b: Experts::from_linear(b, nb, rng, false),
            dropout: DropoutConfig::new(l.dropout).init(),
            scaling: l.alpha / l.r as f64,
        }
    }
}

/// A LoRA branch, `[in, r]` and `[r, out]` factors.
#[derive(Module, Debug)]
pub struct Lora<B: Backend> {
    pub a: Param<Tensor<B, 2>>,
    pub b: Param<Tensor<B, 2>>,
    pub dropout: Dropout,
    #[module(skip)]
    pub scaling: f64,
}

impl<B: Backend> Lora<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D>
    where
        B: Kernels,
    {
        let down = linear_rows(self.dropout.forward(x), self.a.val(), None);
        linear_rows(down, self.b.val() * self.scaling, None)
    }
}

/// The factors exported as PEFT lays them out: `lora_a = Aᵀ` `[r, in]`, `lora_b = Bᵀ` `[out, r]`.
fn low_rank<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>, scaling: f64) -> Delta {
    Delta::LowRank { a: HostTensor::from_tensor(a.transpose()), b: HostTensor::from_tensor(b.transpose()), scale: scaling as f32 }
}

impl<B: Backend> Branch<B> for Lora<B> {
    fn forward(&self, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>, x: Tensor<B, 3>, _draws: &mut Draws) -> Tensor<B, 3>
    where
        B: Kernels,
    {
        linear_rows(x.clone(), weight, bias) + Lora::forward(self, x)
    }

    /// `ΔW = scaling · A·B`, `[in, out]` (the product is merged, never the factors).
    fn delta(&self) -> Tensor<B, 2> {
        self.a.val().matmul(self.b.val()) * self.scaling
    }

    fn expert_delta(&self) -> Delta {
        low_rank(self.a.val(), self.b.val(), self.scaling)
    }
}

/// LoRA on some of the equal output parts of a fused linear (the reference's LoRA on the query and
/// value projections, on timm's fused `qkv`): `y = x·W + Σ_p pad_p(LoRA_p(x))`, each part's
/// output written to its columns.
#[derive(Module, Debug)]
pub struct LoraParts<B: Backend> {
    pub parts: Vec<Lora<B>>,
    /// `(first column, width)` of each part, in increasing order.
    #[module(skip)]
    pub windows: Vec<(usize, usize)>,
    #[module(skip)]
    pub d_out: usize,
}

impl<B: Backend> LoraParts<B> {
    /// The parts' outputs placed in their columns of a `[…, d_out]` tensor (zeros elsewhere).
    fn placed<const D: usize>(&self, ys: Vec<Tensor<B, D>>) -> Tensor<B, D> {
        let mut dims = ys[0].dims();
        let device = ys[0].device();
        let mut pieces = Vec::new();
        let mut at = 0;
        let mut zeros = |from: usize, to: usize, pieces: &mut Vec<Tensor<B, D>>| {
            if to > from {
                dims[D - 1] = to - from;
                pieces.push(Tensor::zeros(dims, &device));
            }
        };
        for (y, &(start, len)) in ys.into_iter().zip(&self.windows) {
            zeros(at, start, &mut pieces);
            pieces.push(y);
            at = start + len;
        }
        zeros(at, self.d_out, &mut pieces);
        Tensor::cat(pieces, D - 1)
    }

    /// Each part's own dropout draw and down-projection, side by side (`[…, Σr]`), then one
    /// up-projection into the full width by the stacked `B` of [`LoraParts::as_one`] (zeros
    /// outside each part's columns): no zero blocks and concatenation at the output's width.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D>
    where
        B: Kernels,
    {
        let down = self.parts.iter().map(|l| linear_rows(l.dropout.forward(x.clone()), l.a.val(), None)).collect();
        linear_rows(Tensor::cat(down, D - 1), self.stacked_b() * self.parts[0].scaling, None)
    }

    /// Each part's `B_p` in its rows and columns of `[Σr, out]`, zeros elsewhere.
    fn stacked_b(&self) -> Tensor<B, 2> {
        let rows: Vec<Tensor<B, 2>> = (0..self.parts.len())
            .map(|p| {
                let only = LoraParts { parts: vec![], windows: vec![self.windows[p]], d_out: self.d_out };
                only.placed(vec![self.parts[p].b.val()])
            })
            .collect();
        Tensor::cat(rows, 0)
    }

    /// The same update as one LoRA of rank Σr: `A = [A_1 … A_k]` (`[in, Σr]`), and `B` with
    /// part p's `B_p` in its rows and columns, zeros elsewhere (`[Σr, out]`); its scaling.
    pub fn as_one(&self) -> (Tensor<B, 2>, Tensor<B, 2>, f64) {
        let a = Tensor::cat(self.parts.iter().map(|l| l.a.val()).collect(), 1);
        (a, self.stacked_b(), self.parts[0].scaling)
    }
}

impl<B: Backend> Branch<B> for LoraParts<B> {
    fn forward(&self, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>, x: Tensor<B, 3>, _draws: &mut Draws) -> Tensor<B, 3>
    where
        B: Kernels,
    {
        linear_rows(x.clone(), weight, bias) + LoraParts::forward(self, x)
    }

    /// `ΔW`, `[in, out]`.
    fn delta(&self) -> Tensor<B, 2> {
        self.placed(self.parts.iter().map(Branch::delta).collect())
    }

    /// As one LoRA of rank Σr whose B is zero outside each part's columns ([`LoraParts::as_one`]).
    fn expert_delta(&self) -> Delta {
        let (a, b, scaling) = self.as_one();
        low_rank(a, b, scaling)
    }
}

/// LoRA with one factor split into sparse experts.
#[derive(Module, Debug)]
pub struct MosaLora<B: Backend> {
    pub a: Experts<B>,
    pub b: Experts<B>,
    pub dropout: Dropout,
    #[module(skip)]
    pub scaling: f64,
}

impl<B: Backend> MosaLora<B> {
    pub fn forward(&self, x: Tensor<B, 3>, ea: usize, eb: usize) -> Tensor<B, 3>
    where
        B: Kernels,
    {
        self.forward_parts(x, &[(ea, eb)])
    }

    /// Factor experts `parts[p]` on part `p` of the batch's equal parts (one part: the whole
    /// batch).
    pub fn forward_parts(&self, x: Tensor<B, 3>, parts: &[(usize, usize)]) -> Tensor<B, 3>
    where
        B: Kernels,
    {
        let (a, b): (Vec<usize>, Vec<usize>) = parts.iter().copied().unzip();
        self.b.forward_parts(self.a.forward_parts(self.dropout.forward(x), &a), &b) * self.scaling
    }

    pub fn draw(&self, rng: &mut Rng) -> (usize, usize) {
        let a = if self.a.len() > 1 { rng.below(self.a.len()) } else { 0 };
        let b = if self.b.len() > 1 { rng.below(self.b.len()) } else { 0 };
        (a, b)
    }

    /// The bounds of [`Self::draw`]'s draws.
    pub fn draw_bounds(&self) -> Vec<usize> {
        [self.a.len(), self.b.len()].into_iter().filter(|&n| n > 1).collect()
    }

    /// Merged LoRA: the mean of the split factor's experts (mode `add`), as a plain LoRA.
    pub fn merge(&self) -> Lora<B> {
        Lora { a: self.a.mean().weight, b: self.b.mean().weight, dropout: self.dropout.clone(), scaling: self.scaling }
    }
}

/// In training (autodiff), one expert of the split factor drawn for the whole batch (for each half
/// of a stacked batch from its own stream); outside training the merged LoRA.
impl<B: Backend> Branch<B> for MosaLora<B> {
    fn forward(&self, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>, x: Tensor<B, 3>, draws: &mut Draws) -> Tensor<B, 3>
    where
        B: Kernels,
    {
        if B::ad_enabled(&x.device()) {
            let parts = draws.each(|rng| self.draw(rng));
            linear_rows(x.clone(), weight, bias) + self.forward_parts(x, &parts)
        } else {
            linear_rows(x.clone(), weight, bias) + self.merge().forward(x)
        }
    }

    fn delta(&self) -> Tensor<B, 2> {
        Branch::delta(&self.merge())
    }

    fn expert_delta(&self) -> Delta {
        self.merge().expert_delta()
    }

    fn expert_draws(&self) -> Vec<usize> {
        self.draw_bounds()
    }

    fn expert_params(&self) -> Tally {
        split_params([&self.a, &self.b])
    }

    fn mask_gradients(&self, grads: &mut GradientsParams)
    where
        B: AutodiffBackend,
    {
        self.a.mask_gradients(grads);
        self.b.mask_gradients(grads);
    }
}
