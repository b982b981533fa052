//! One training epoch: seeded order, augmentation and expert streams, the steps, the loss
//! read back every `sync_every` steps (NaN stop, progress), and the epoch's numbers.

use mosa_kernels::AutodiffKernels;
use std::time::Instant;

use crate::optim::{AdamW, WarmupCosine};
use burn::prelude::*;
use mosa_core::{Method, Rng};
use mosa_data::LoadedSplit;
use mosa_models::Backbone;

use crate::config::TrainConfig;
use crate::progress::Reporter;
use crate::step::{PassLayout, step};
use crate::{Error, Result};

/// Seeded streams of a run, all derived from its one seed.
pub mod streams {
    pub const ORDER: u64 = 1 << 40;
    pub const EXPERTS: u64 = 2 << 40;
    pub const BACKEND: u64 = 3 << 40;
    pub const AUGMENT: u64 = 4 << 40;
    pub const SPARSE: u64 = 5 << 40;
    pub const SUBSET: u64 = 6 << 40;
}

/// What a training epoch measured.
pub struct EpochTrain {
    pub train_loss: f64,
    pub train_acc: f64,
    pub lr: f64,
    pub seconds: f64,
}

/// Everything an epoch reads besides the model and the optimiser.
pub struct EpochCtx<'a, B: AutodiffKernels> {
    pub method: &'a Method,
    pub t: &'a TrainConfig,
    pub schedule: &'a WarmupCosine,
    pub train: &'a LoadedSplit,
    /// Indices of the training images used (all, or the seeded `max_train_images` subset).
    pub subset: &'a [usize],
    pub device: &'a B::Device,
    /// For the NaN message: epochs finished before this one, and where their checkpoint is.
    pub epochs_done: usize,
    pub checkpoint: &'a std::path::Path,
    /// The linear probe's training features, computed once ([`crate::probe`]).
    pub features: Option<&'a crate::probe::Features<B>>,
    /// How MoSA's two passes run.
    pub passes: PassLayout,
}

/// Trains one epoch (0-based `epoch`).
pub fn train_epoch<B: AutodiffKernels>(
    mut model: Backbone<B>,
    optim: &mut AdamW<B>,
    epoch: usize,
    c: &EpochCtx<'_, B>,
    rep: &mut dyn Reporter,
) -> Result<(Backbone<B>, EpochTrain)> {
    let t = c.t;
    let t0 = Instant::now();
    let steps = c.subset.len().div_ceil(t.batch_size);
    B::seed(c.device, Rng::derive(t.seed, streams::BACKEND + 1 + epoch as u64).next_u64());
    let perm = Rng::derive(t.seed, streams::ORDER + epoch as u64).permutation(c.subset.len());
    let mut experts = Rng::derive(t.seed, streams::EXPERTS + epoch as u64);
    let mut sparse_rng = Rng::derive(t.seed, streams::SPARSE + epoch as u64);
    rep.epoch_start(epoch + 1, t.epochs, steps);
    let mut pending: Vec<Tensor<B::InnerBackend, 1>> = Vec::new();
    let mut loss_sum = 0.0;
    let mut correct: Option<Tensor<B::InnerBackend, 1, Int>> = None;
    let mut lr_last = 0.0;
    for s in 0..steps {
        let idx: Vec<usize> = perm[s * t.batch_size..((s + 1) * t.batch_size).min(perm.len())].iter().map(|&p| c.subset[p]).collect();
        // the sparse method selects its masks at the base lr (its dense steps must move ΔW)
        let lr = match c.method.sparse() {
            Some(sp) if sp.selection_lr == mosa_core::sparse::SelectionLr::Base && sp.selecting(epoch, s, steps) => t.lr,
            _ => c.schedule.lr(epoch, s, steps),
        };
        lr_last = lr;
        let aug_seed = Rng::derive(t.seed, streams::AUGMENT + (epoch * steps + s) as u64).next_u64();
        let (m, out) = match c.features {
            Some(f) => {
                let y = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(c.train.labels_of(&idx).iter().map(|&l| l as i64).collect::<Vec<_>>(), [idx.len()]),
                    c.device,
                );
                f.step(model, &idx, y, c.method, (epoch, s, steps), &mut sparse_rng)?
            }
            None => {
                let (px, labels) = c.train.batch(&idx, aug_seed);
                let (x, y) = mosa_data::batcher::to_tensors::<B>(px, &labels, t.resolution, c.device);
                step(model, x, y, c.method, t, (epoch, s, steps), c.passes, &mut experts, &mut sparse_rng)?
            }
        };
        // entries that left a re-selected sparse mask start again from zero moments
        for (path, mask) in out.new_masks {
            let n = mask.shape().num_elements();
            optim.mask_moments(&path, mask.inner().reshape([n]));
        }
        correct = Some(match correct {
            Some(a) => a.add(out.correct),
            None => out.correct,
        });
        pending.push(out.loss);
        model = optim.step(lr, m, out.grads);
        if pending.len() >= t.sync_every.max(1) || s + 1 == steps {
            let first = s + 1 - pending.len();
            let values = Tensor::cat(std::mem::take(&mut pending), 0).into_data().to_vec::<f32>().unwrap_or_default();
            for (k, v) in values.iter().enumerate() {
                if !v.is_finite() {
                    return Err(Error::NonFinite {
                        epoch: epoch + 1,
                        step: first + k + 1,
                        value: *v,
                        kept: if c.epochs_done > 0 {
                            format!("the last good checkpoint (epoch {}) is kept in {}", c.epochs_done, c.checkpoint.display())
                        } else {
                            "no epoch had finished, so there is no checkpoint".into()
                        },
                    });
                }
                loss_sum += *v as f64;
            }
            rep.step(s + 1, loss_sum / (s + 1) as f64);
        }
    }
    let train_acc = correct.map(|c| c.into_scalar().elem::<i64>()).unwrap_or(0) as f64 / c.subset.len() as f64;
    Ok((model, EpochTrain { train_loss: loss_sum / steps as f64, train_acc, lr: lr_last, seconds: t0.elapsed().as_secs_f64() }))
}
