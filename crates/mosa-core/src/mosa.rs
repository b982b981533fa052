//! MoSA: an adapter whose Down and/or Up projection is split into N disjoint sparse experts
//! (spec `mosa.md` §2–4, as the reference code does it).
//!
//! - The N experts of a projection are one stacked parameter `[N, in, out]` (+ biases `[N, out]`,
//!   not split). A forward pass selects one slice for the whole batch, so unselected experts get a
//!   zero gradient and AdamW keeps stepping them from their moments, as PyTorch 1.11 did.
//! - Masks: a seeded, element-wise random partition of each split matrix into N equal quantile
//!   bins; after backward the stacked gradient is multiplied by the stacked mask once per step.
//! - All experts start as copies of expert 0; with Up at zero, every Up expert stays exactly zero
//!   off its mask, and the mean of the experts is the "complete adapter" divided by N.
//! - `merge` averages the experts (mode `add`) into one plain [`Adapter`]: inference costs exactly
//!   one adapter.

use burn::module::Param;
use burn::nn::{Dropout, Linear};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::adapter::{Activation, Adapter, AdapterConfig, AdapterOptions};
use crate::draws::Draws;
use crate::layer_norm::LayerNorm;
use crate::mask;
use crate::params::Tally;
use crate::rng::Rng;
use crate::slot::{Slot, split_params};
use mosa_kernels::{Kernels, linear_rows};

/// Which projection stays dense and shared by all experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Share {
    /// Dense shared Down, N split Up experts (the reference default).
    #[default]
    Down,
    /// Dense shared Up, N split Down experts.
    Up,
    /// Both split.
    None,
}

/// N experts of one projection, stacked; `mask` is `None` for a dense shared projection.
#[derive(Module, Debug)]
pub struct Experts<B: Backend> {
    /// `[n, in, out]`
    pub weight: Param<Tensor<B, 3>>,
    /// `[n, out]`; not split (every expert has its full bias). LoRA factors have none.
    pub bias: Option<Param<Tensor<B, 2>>>,
    /// `[n, in, out]` 0/1; rebuilt from the seed, never saved.
    pub mask: Option<Tensor<B, 3>>,
}

impl<B: Backend> Experts<B> {
    pub fn len(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Builds `n` copies of `linear` with a random partition mask drawn from `rng` (none if n = 1).
    /// With `prune`, only the first expert's share is kept and the weight is zeroed elsewhere
    /// (the reference's "randomly pruned adapter").
    pub fn from_linear(linear: Linear<B>, n: usize, rng: &mut Rng, prune: bool) -> Self {
        let w = linear.weight.val();
        let [i, o] = w.dims();
        let device = w.device();
        let groups = if prune { n } else { n.max(1) };
        let mask = (groups > 1).then(|| {
            let owner = mask::partition(i * o, groups, rng);
            let experts = if prune { 1 } else { n };
            let data: Vec<f32> = (0..experts as u32).flat_map(|e| mask::expert_mask(&owner, e)).collect();
            Tensor::<B, 3>::from_data(TensorData::new(data, [experts, i, o]), &device)
        });
        let n_out = if prune { 1 } else { n };
        let mut weight = w.unsqueeze::<3>().repeat_dim(0, n_out);
        if prune {
            weight = weight * mask.clone().unwrap();
        }
        let bias = linear.bias.map(|b| Param::from_tensor(b.val().unsqueeze::<2>().repeat_dim(0, n_out).detach()));
        Self { weight: Param::from_tensor(weight.detach()), bias, mask }
    }

    /// `x · W_e + b_e` with expert `e`.
    pub fn forward(&self, x: Tensor<B, 3>, e: usize) -> Tensor<B, 3>
    where
        B: Kernels,
    {
        let [n, i, o] = self.weight.dims();
        debug_assert!(e < n);
        let w = self.weight.val().slice([e..e + 1, 0..i, 0..o]).reshape([i, o]);
        let b = self.bias.as_ref().map(|b| b.val().slice([e..e + 1, 0..o]).reshape([o]));
        linear_rows(x, w, b)
    }

    /// `x·W_e + b_e` with expert `experts[p]` on part `p` of the batch's equal parts (a stacked
    /// batch's halves), the parts' outputs stacked back in order; equal experts (a shared
    /// projection) are one [`Self::forward`] over the whole batch.
    ///
    /// Each part is its own product on a view of `x`: a batched product with the selected
    /// experts gathered and the bias broadcast measured slower on the CPU backend (the
    /// broadcast add and the gather's backward over the full output).
    ///
    /// # Shapes
    /// - `x`: `[batch, tokens, in]`, batch a multiple of the parts → `[batch, tokens, out]`
    pub fn forward_parts(&self, x: Tensor<B, 3>, experts: &[usize]) -> Tensor<B, 3>
    where
        B: Kernels,
    {
        let e0 = experts[0];
        if experts.iter().all(|&e| e == e0) {
            return self.forward(x, e0);
        }
        let (n, k) = (x.dims()[0], experts.len());
        debug_assert!(n % k == 0, "{n} rows in {k} parts");
        let rows = n / k;
        Tensor::cat(experts.iter().enumerate().map(|(p, &e)| self.forward(x.clone().narrow(0, p * rows, rows), e)).collect(), 0)
    }

    /// The weight of expert `e`, `[in, out]`.
    pub fn expert_weight(&self, e: usize) -> Tensor<B, 2> {
        let [_, i, o] = self.weight.dims();
        self.weight.val().slice([e..e + 1, 0..i, 0..o]).reshape([i, o])
    }

    /// Mean of the experts (merge mode `add`), as a plain linear layer.
    pub fn mean(&self) -> Linear<B> {
        let [_, i, o] = self.weight.dims();
        Linear {
            weight: Param::from_tensor(self.weight.val().mean_dim(0).reshape([i, o]).detach()),
            bias: self.bias.as_ref().map(|b| Param::from_tensor(b.val().mean_dim(0).reshape([o]).detach())),
        }
    }
}

impl<B: AutodiffBackend> Experts<B> {
    /// Multiplies the stacked weight gradient by the stacked mask (one op per step).
    pub fn mask_gradients(&self, grads: &mut GradientsParams) {
        let Some(mask) = &self.mask else { return };
        let id = self.weight.id;
        if let Some(g) = grads.remove::<B::InnerBackend, 3>(id) {
            grads.register::<B::InnerBackend, 3>(id, g * mask.clone().inner());
        }
    }
}

/// MoSA's options (`--r` … of the adapter, `--experts`, `--share`); the one source of their
/// defaults (spec §2).
#[derive(Config, Debug)]
pub struct MosaOptions {
    #[config(default = "AdapterOptions::new()")]
    pub adapter: AdapterOptions,
    #[config(default = 4)]
    pub experts: usize,
    #[config(default = "Share::Down")]
    pub share: Share,
}

impl MosaOptions {
    /// The module config at a site of width `d`.
    pub fn config(&self, d: usize) -> MosaConfig {
        MosaConfig::new(AdapterConfig::new(d, self.adapter.clone()), self.experts, self.share)
    }
}

/// One MoSA module: the adapter it splits, the number of experts and which projection is shared.
#[derive(Config, Debug)]
pub struct MosaConfig {
    pub adapter: AdapterConfig,
    pub experts: usize,
    pub share: Share,
}

impl MosaConfig {
    /// A MoSA adapter whose masks come from `rng` (one stream per block keeps runs reproducible).
    pub fn init<B: Backend>(&self, rng: &mut Rng, device: &B::Device) -> MosaAdapter<B> {
        let base = self.adapter.init::<B>(device);
        let (n_down, n_up) = match self.share {
            Share::Down => (1, self.experts),
            Share::Up => (self.experts, 1),
            Share::None => (self.experts, self.experts),
        };
        MosaAdapter {
            norm: base.norm,
            down: Experts::from_linear(base.down, n_down, rng, false),
            up: Experts::from_linear(base.up, n_up, rng, false),
            dropout: base.dropout,
            activation: base.activation,
            scale: base.scale,
        }
    }

    /// The reference ablation: one fixed random 1/N of each adapter weight, no mixture.
    pub fn init_pruned<B: Backend>(&self, rng: &mut Rng, device: &B::Device) -> MosaAdapter<B> {
        let base = self.adapter.init::<B>(device);
        MosaAdapter {
            norm: base.norm,
            down: Experts::from_linear(base.down, self.experts, rng, true),
            up: Experts::from_linear(base.up, self.experts, rng, true),
            dropout: base.dropout,
            activation: base.activation,
            scale: base.scale,
        }
    }
}

/// An adapter with expert-split projections.
#[derive(Module, Debug)]
pub struct MosaAdapter<B: Backend> {
    pub norm: Option<LayerNorm<B>>,
    pub down: Experts<B>,
    pub up: Experts<B>,
    pub dropout: Dropout,
    #[module(skip)]
    pub activation: Activation,
    #[module(skip)]
    pub scale: f64,
}

impl<B: Kernels> MosaAdapter<B> {
    /// Forward with Down expert `ed` and Up expert `eu`.
    pub fn forward(&self, x: Tensor<B, 3>, ed: usize, eu: usize) -> Tensor<B, 3> {
        self.forward_parts(x, &[(ed, eu)])
    }

    /// Forward with Down expert `parts[p].0` and Up expert `parts[p].1` on part `p` of the
    /// batch's equal parts (one part: the whole batch).
    pub fn forward_parts(&self, x: Tensor<B, 3>, parts: &[(usize, usize)]) -> Tensor<B, 3> {
        let x = match &self.norm {
            Some(n) => n.forward(x),
            None => x,
        };
        let (down, up): (Vec<usize>, Vec<usize>) = parts.iter().copied().unzip();
        let h = self.dropout.forward(self.activation.apply(self.down.forward_parts(x, &down)));
        self.up.forward_parts(h, &up) * self.scale
    }
}

impl<B: Backend> MosaAdapter<B> {
    /// Draws one expert per split projection (independently for Down and Up).
    pub fn draw(&self, rng: &mut Rng) -> (usize, usize) {
        let d = if self.down.len() > 1 { rng.below(self.down.len()) } else { 0 };
        let u = if self.up.len() > 1 { rng.below(self.up.len()) } else { 0 };
        (d, u)
    }

    /// The bounds of [`Self::draw`]'s draws.
    pub fn draw_bounds(&self) -> Vec<usize> {
        [self.down.len(), self.up.len()].into_iter().filter(|&n| n > 1).collect()
    }

    /// Mode `add`: `W = mean_i W_i`, `b = mean_i b_i`, as one plain adapter.
    pub fn merge(&self) -> Adapter<B> {
        Adapter {
            norm: self.norm.clone(),
            down: self.down.mean(),
            up: self.up.mean(),
            dropout: self.dropout.clone(),
            activation: self.activation,
            scale: self.scale,
            on_stream: false,
        }
    }
}

/// In training (autodiff), one expert per split projection drawn for the whole batch (for each
/// half of a stacked batch from its own stream); outside training the merged (mean) adapter, so
/// that evaluating an unmerged model gives the merged model's output.
impl<B: Backend> Slot<B> for MosaAdapter<B> {
    fn forward(&self, x: Tensor<B, 3>, draws: &mut Draws) -> Tensor<B, 3>
    where
        B: Kernels,
    {
        if B::ad_enabled(&x.device()) {
            let parts = draws.each(|rng| self.draw(rng));
            self.forward_parts(x, &parts)
        } else {
            self.merge().forward(x)
        }
    }

    fn merged(&self) -> Adapter<B> {
        self.merge()
    }

    fn expert_draws(&self) -> Vec<usize> {
        self.draw_bounds()
    }

    fn expert_params(&self) -> Tally {
        split_params([&self.down, &self.up])
    }

    fn mask_gradients(&self, grads: &mut GradientsParams)
    where
        B: AutodiffBackend,
    {
        self.down.mask_gradients(grads);
        self.up.mask_gradients(grads);
    }
}
