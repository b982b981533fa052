//! The pruned adapter, the MoSA paper's ablation of sparse training without a mixture: a plain
//! adapter whose every trainable tensor trains on one fixed random 1/N of its entries.
//!
//! As the reference runs it (`train.py --sparse-train` with `MODEL.TRANSFER_TYPE adapter`,
//! `MOE False`: the plain AdaptFormer adapter of `vit_adapter.py`, and `src/utils/pruner.py`'s
//! `Rand` pruner): every trainable tensor that is not the head — the adapter's LayerNorm weight and
//! bias, Down's and Up's weight and bias — gets a random 0/1 mask keeping 1/N of its entries, and
//! after each backward its gradient is multiplied by the mask. The weights keep their initial
//! values off the mask (only AdamW's decoupled decay moves them there), and the masks never change.
//!
//! [`PruneStyle::Legacy`] is what mosa did before run format 4 (a MoSA adapter with one expert:
//! only the two weight matrices masked, zeroed off the mask, GELU), kept so that older runs resume.

use burn::module::Param;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use crate::adapter::{Activation, Adapter, AdapterConfig, AdapterOptions};
use crate::draws::Draws;
use crate::mask;
use crate::mosa::{MosaAdapter, MosaConfig, Share};
use crate::rng::Rng;
use crate::slot::Slot;
use mosa_kernels::Kernels;

/// Which construction of the pruned adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PruneStyle {
    /// The reference's (module docs).
    #[default]
    Reference,
    /// mosa's before run format 4.
    Legacy,
}

/// The pruned adapter's options: the adapter's, and N (each tensor trains 1/N of its entries).
#[derive(Config, Debug)]
pub struct PrunedOptions {
    /// The plain adapter's defaults (ReLU: the reference prunes `vit_adapter.py`'s adapter).
    #[config(default = "AdapterOptions::new().with_activation(Activation::Relu)")]
    pub adapter: AdapterOptions,
    #[config(default = 4)]
    pub experts: usize,
    #[config(default = "PruneStyle::Reference")]
    pub style: PruneStyle,
}

/// A plain adapter with one fixed gradient mask per trainable tensor.
#[derive(Module, Debug)]
pub struct PrunedAdapter<B: Backend> {
    pub adapter: Adapter<B>,
    /// 0/1 masks of the LayerNorm's weight and bias (when the adapter has one).
    pub norm_masks: Option<(Tensor<B, 1>, Tensor<B, 1>)>,
    pub down_masks: (Tensor<B, 2>, Tensor<B, 1>),
    pub up_masks: (Tensor<B, 2>, Tensor<B, 1>),
}

/// A mask keeping one random 1/N of `shape`'s entries (the entries of the first of N equal
/// random bins, [`mask::partition`]).
fn keep_one_in<B: Backend, const D: usize>(shape: [usize; D], n: usize, rng: &mut Rng, device: &B::Device) -> Tensor<B, D> {
    let numel = shape.iter().product();
    let owner = mask::partition(numel, n, rng);
    Tensor::from_data(TensorData::new(mask::expert_mask(&owner, 0), shape), device)
}

impl PrunedOptions {
    /// The slot content at a site of width `d` ([`PruneStyle::Legacy`]: a one-expert MoSA adapter).
    pub fn init<B: Backend>(&self, d: usize, rng: &mut Rng, device: &B::Device) -> PrunedSlot<B> {
        if self.style == PruneStyle::Legacy {
            let legacy = MosaConfig::new(AdapterConfig::new(d, self.adapter.clone()), self.experts, Share::Down);
            return PrunedSlot::Legacy(legacy.init_pruned(rng, device));
        }
        let adapter = AdapterConfig::new(d, self.adapter.clone()).init::<B>(device);
        let n = self.experts;
        let pair2 = |l: &burn::nn::Linear<B>, rng: &mut Rng| {
            let w = keep_one_in::<B, 2>(l.weight.dims(), n, rng, device);
            let b = keep_one_in::<B, 1>(l.bias.as_ref().map(|b| b.dims()).unwrap_or([0]), n, rng, device);
            (w, b)
        };
        let norm_masks = adapter.norm.as_ref().map(|ln| (keep_one_in::<B, 1>(ln.gamma.dims(), n, rng, device), keep_one_in::<B, 1>([d], n, rng, device)));
        let down_masks = pair2(&adapter.down, rng);
        let up_masks = pair2(&adapter.up, rng);
        PrunedSlot::Reference(PrunedAdapter { adapter, norm_masks, down_masks, up_masks })
    }
}

/// What [`PrunedOptions::init`] builds.
pub enum PrunedSlot<B: Backend> {
    Reference(PrunedAdapter<B>),
    Legacy(MosaAdapter<B>),
}

fn mask_grad<B: AutodiffBackend, const D: usize>(grads: &mut GradientsParams, p: &Param<Tensor<B, D>>, mask: &Tensor<B, D>) {
    if let Some(g) = grads.remove::<B::InnerBackend, D>(p.id) {
        grads.register::<B::InnerBackend, D>(p.id, g * mask.clone().inner());
    }
}

/// The adapter's own forward; after backward every adapter gradient is multiplied by its mask.
impl<B: Backend> Slot<B> for PrunedAdapter<B> {
    fn forward(&self, x: Tensor<B, 3>, _draws: &mut Draws) -> Tensor<B, 3>
    where
        B: Kernels,
    {
        self.adapter.forward(x)
    }

    fn merged(&self) -> Adapter<B> {
        self.adapter.clone()
    }

    fn mask_gradients(&self, grads: &mut GradientsParams)
    where
        B: AutodiffBackend,
    {
        let a = &self.adapter;
        if let (Some(ln), Some((mg, mb))) = (&a.norm, &self.norm_masks) {
            mask_grad(grads, &ln.gamma, mg);
            if let Some(beta) = &ln.beta {
                mask_grad(grads, beta, mb);
            }
        }
        for (l, (mw, mb)) in [(&a.down, &self.down_masks), (&a.up, &self.up_masks)] {
            mask_grad(grads, &l.weight, mw);
            if let Some(b) = &l.bias {
                mask_grad(grads, b, mb);
            }
        }
    }
}
