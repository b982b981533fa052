//! Sparse adapters (arXiv 2507.07140, spec `sparse-experts.md` §1): a full-size trainable
//! `ΔW` on a frozen weight `W0`, used through a binary mask `M` as `W0 + M ⊙ ΔW`.
//!
//! The forward pass folds the masked delta into the weight, so it costs one matmul, and the
//! gradient of `ΔW` is masked by construction. The mask starts all-ones (dense warm-up), is
//! re-selected every K steps during the first epoch, then frozen: [`SparseConfig::action`] says when,
//! [`select`] computes the masks from per-layer scores.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;

use crate::draws::Draws;
use crate::expert::Delta;
use crate::host::HostTensor;
use crate::mask;
use crate::rng::Rng;
use crate::slot::Branch;
use mosa_kernels::{Kernels, linear_rows};

/// How entries are scored for the mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Criterion {
    /// Connection sensitivity `(∂L/∂ΔW) ⊙ ΔW`, ranked signed, as the reference code does (default).
    #[default]
    SensitivitySigned,
    /// Connection sensitivity ranked by magnitude (SNIP).
    SensitivityAbs,
    /// `|∂L/∂ΔW|`.
    GradMagnitude,
    /// `|ΔW|`.
    WeightMagnitude,
    /// Seeded random.
    Random,
}

/// Over which entries the top-k is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// ⌊keep·numel⌋ entries of every targeted matrix (default).
    #[default]
    PerLayer,
    /// ⌊keep·Σ numel⌋ entries over all targeted matrices together.
    Global,
    /// Whole `tile × tile` blocks of each matrix, ranked by their summed score:
    /// ⌊keep·tiles⌋ tiles per matrix.
    Block { tile: usize },
}

/// What happens to entries that leave the mask at a re-selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum OnDrop {
    /// Zero their delta (and optimiser moments): the expert holds only masked entries.
    #[default]
    Zero,
    /// Keep their values (inactive while masked out).
    Keep,
}

/// The sparse method's options: targets, budget, criterion, scope and schedule; the one source
/// of their defaults (sparse-experts spec §1).
#[derive(Config, Debug)]
pub struct SparseConfig {
    /// Linear sites by the family's names; empty = the family's default.
    #[config(default = "Vec::new()")]
    pub targets: Vec<String>,
    /// Fraction of each targeted matrix kept.
    #[config(default = 0.05)]
    pub keep_ratio: f64,
    #[config(default = "Criterion::SensitivitySigned")]
    pub criterion: Criterion,
    #[config(default = "Scope::PerLayer")]
    pub scope: Scope,
    /// Re-select every this many steps during the first epoch.
    #[config(default = 5)]
    pub reselect_every: usize,
    /// Dense steps before the first selection (one-shot selection after a warm-up when
    /// `reselect_every` ≥ the epoch length).
    #[config(default = 5)]
    pub warmup_steps: usize,
    /// What happens to entries that leave the mask. Default `zero`: an expert then holds exactly
    /// its masked entries, and the stored values are the ones that trained (the reference keeps
    /// them, `keep`, so that an entry can come back with its old value).
    #[config(default = "OnDrop::Zero")]
    pub on_drop: OnDrop,
    /// Weight decay on ΔW. Off by default (sparse-experts spec §1); on reproduces format-1 runs.
    #[config(default = false)]
    pub weight_decay: bool,
    /// The learning rate while masks are selected (epoch 0 up to its last re-selection).
    #[config(default = "SelectionLr::Base")]
    pub selection_lr: SelectionLr,
}

/// The learning rate of the mask-selection phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum SelectionLr {
    /// The recipe's base learning rate, whatever its warm-up says: the dense steps before a
    /// selection must move ΔW, or connection sensitivity (∂L/∂ΔW ⊙ ΔW) is 0 everywhere.
    #[default]
    Base,
    /// The recipe's schedule (format-1 behaviour: under a per-epoch warm-up, epoch 0 is at lr 0).
    Schedule,
}

/// The mask schedule: what the training loop does after step `step` (0-based) of epoch `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseAction {
    /// Nothing to do.
    Keep,
    /// Score and re-select the masks now.
    Reselect,
}

impl SparseConfig {
    /// Whether step `step` of epoch `epoch` (of `steps`) is in the mask-selection phase: epoch 0
    /// up to and including its last re-selection.
    pub fn selecting(&self, epoch: usize, step: usize, steps: usize) -> bool {
        epoch == 0 && (step..steps).any(|s| self.action(0, s, steps) == SparseAction::Reselect)
    }

    /// What to do after step `step` (0-based) of an epoch of `steps` steps. An epoch shorter than
    /// the warm-up still selects once, after its last step: a sparse run is never left dense.
    pub fn action(&self, epoch: usize, step: usize, steps: usize) -> SparseAction {
        if epoch == 0 && step + 1 == steps && steps < self.warmup_steps {
            return SparseAction::Reselect;
        }
        if epoch > 0 || step + 1 < self.warmup_steps {
            return SparseAction::Keep;
        }
        let since = step + 1 - self.warmup_steps;
        if since.is_multiple_of(self.reselect_every.max(1)) { SparseAction::Reselect } else { SparseAction::Keep }
    }

    /// Per-entry scores of one matrix from its delta and gradient (host values).
    pub fn score(&self, delta: &[f32], grad: &[f32], rng: &mut Rng) -> Vec<f32> {
        match self.criterion {
            Criterion::SensitivitySigned => delta.iter().zip(grad).map(|(w, g)| w * g).collect(),
            Criterion::SensitivityAbs => delta.iter().zip(grad).map(|(w, g)| (w * g).abs()).collect(),
            Criterion::GradMagnitude => grad.iter().map(|g| g.abs()).collect(),
            Criterion::WeightMagnitude => delta.iter().map(|w| w.abs()).collect(),
            Criterion::Random => (0..delta.len()).map(|_| rng.uniform() as f32).collect(),
        }
    }
}

/// Kept flat indices (sorted) for each matrix, given per-matrix scores and shapes `[rows, cols]`.
pub fn select(cfg: &SparseConfig, scores: &[Vec<f32>], shapes: &[[usize; 2]], rng: &mut Rng) -> Vec<Vec<u32>> {
    match cfg.scope {
        Scope::PerLayer => scores.iter().map(|s| mask::topk(s, (cfg.keep_ratio * s.len() as f64) as usize, rng)).collect(),
        Scope::Global => {
            let all: Vec<f32> = scores.iter().flatten().copied().collect();
            let k = (cfg.keep_ratio * all.len() as f64) as usize;
            let kept = mask::topk(&all, k, rng);
            let mut out = vec![Vec::new(); scores.len()];
            let mut offsets = Vec::with_capacity(scores.len());
            let mut acc = 0u32;
            for s in scores {
                offsets.push(acc);
                acc += s.len() as u32;
            }
            for i in kept {
                let l = offsets.partition_point(|&o| o <= i) - 1;
                out[l].push(i - offsets[l]);
            }
            out
        }
        Scope::Block { tile } => scores
            .iter()
            .zip(shapes)
            .map(|(s, &[rows, cols])| {
                let (tr, tc) = (rows.div_ceil(tile), cols.div_ceil(tile));
                let mut tile_score = vec![0f32; tr * tc];
                for r in 0..rows {
                    for c in 0..cols {
                        tile_score[(r / tile) * tc + c / tile] += s[r * cols + c];
                    }
                }
                let keep_tiles = mask::topk(&tile_score, (cfg.keep_ratio * (tr * tc) as f64) as usize, rng);
                let mut idx: Vec<u32> = Vec::new();
                for t in keep_tiles {
                    let (br, bc) = (t as usize / tc, t as usize % tc);
                    for r in br * tile..((br + 1) * tile).min(rows) {
                        for c in bc * tile..((bc + 1) * tile).min(cols) {
                            idx.push((r * cols + c) as u32);
                        }
                    }
                }
                idx.sort_unstable();
                idx
            })
            .collect(),
    }
}

/// A masked trainable delta on one frozen `[in, out]` weight.
#[derive(Module, Debug)]
pub struct SparseDelta<B: Backend> {
    /// `[in, out]`, starts at zero.
    pub delta: Param<Tensor<B, 2>>,
    /// `[in, out]` 0/1; all ones during the dense warm-up.
    pub mask: Tensor<B, 2>,
    /// On a re-selection step: the gradient reaches every entry of ΔW, as if the mask were all
    /// ones, while the forward value stays `W0 + M ⊙ ΔW`.
    #[module(skip)]
    pub score_all: bool,
}

impl<B: Backend> SparseDelta<B> {
    pub fn new(d_in: usize, d_out: usize, device: &B::Device) -> Self {
        Self { delta: Param::from_tensor(Tensor::zeros([d_in, d_out], device)), mask: Tensor::ones([d_in, d_out], device), score_all: false }
    }

    /// The effective weight `W0 + M ⊙ ΔW` (with [`Self::score_all`], plus `(ΔW − ΔW) ⊙ (1 − M)`,
    /// which is 0 in value and lets the gradient reach the masked-out entries too).
    pub fn apply(&self, w0: Tensor<B, 2>) -> Tensor<B, 2> {
        let d = self.delta.val();
        let w = w0 + d.clone() * self.mask.clone();
        if self.score_all {
            let off = self.mask.clone().neg().add_scalar(1.0);
            w + (d.clone() - d.detach()) * off
        } else {
            w
        }
    }

    /// Installs a new mask from kept flat indices; with [`OnDrop::Zero`] the delta is zeroed off it.
    pub fn set_mask(mut self, kept: &[u32], on_drop: OnDrop) -> Self {
        let [i, o] = self.mask.dims();
        let device = self.mask.device();
        self.mask = Tensor::from_data(TensorData::new(mask::dense(kept, i * o), [i, o]), &device);
        if on_drop == OnDrop::Zero {
            let id = self.delta.id;
            let masked = self.delta.val() * self.mask.clone();
            self.delta = Param::initialized(id, masked.detach().require_grad());
        }
        self
    }

    /// Number of entries in the mask.
    pub fn kept(&self) -> usize {
        self.mask.clone().sum().into_scalar().elem::<f64>() as usize
    }
}

/// `[in, out]` (burn) flat index → `[out, in]` (timm) flat index.
fn to_timm(k: usize, d_in: usize, d_out: usize) -> u32 {
    let (i, o) = (k / d_out, k % d_out);
    (o * d_in + i) as u32
}

/// `W0 + M ⊙ ΔW` folded into the weight (one matmul); exported as the mask's positions and the
/// delta's values there.
impl<B: Backend> Branch<B> for SparseDelta<B> {
    fn forward(&self, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>, x: Tensor<B, 3>, _draws: &mut Draws) -> Tensor<B, 3>
    where
        B: Kernels,
    {
        linear_rows(x, self.apply(weight), bias)
    }

    fn delta(&self) -> Tensor<B, 2> {
        self.delta.val() * self.mask.clone()
    }

    /// Flat `[out, in]` indices of the mask's entries, sorted, and the delta's values there.
    fn expert_delta(&self) -> Delta {
        let [d_in, d_out] = self.mask.dims();
        let mask = HostTensor::from_tensor(self.mask.clone());
        let delta = HostTensor::from_tensor(self.delta.val());
        let mut kept: Vec<(u32, f32)> =
            mask.data.iter().enumerate().filter(|(_, m)| **m == 1.0).map(|(k, _)| (to_timm(k, d_in, d_out), delta.data[k])).collect();
        kept.sort_by_key(|x| x.0);
        Delta::Sparse { indices: kept.iter().map(|x| x.0).collect(), values: kept.iter().map(|x| x.1).collect() }
    }

    /// The forward pass already gives `M ⊙ ∂W`; masking again matters in the step of a
    /// re-selection, whose gradient was computed under the previous mask.
    fn mask_gradients(&self, grads: &mut GradientsParams)
    where
        B: AutodiffBackend,
    {
        let id = self.delta.id;
        if let Some(g) = grads.remove::<B::InnerBackend, 2>(id) {
            grads.register::<B::InnerBackend, 2>(id, g * self.mask.clone().inner());
        }
    }
}

/// Scores every delta from its current gradient and installs new masks (one host round trip per
/// re-selection, which happens only every K steps of the first epoch). The gradient is the one of
/// a pass with [`SparseDelta::score_all`] on, so every entry is scored as if the mask were all
/// ones. A tensor whose scores are all zero or not finite is an error naming it (`names`), never
/// a tie-break, which would silently make every criterion `random`. Returns the deltas in order.
pub fn reselect<B: burn::tensor::backend::AutodiffBackend>(
    deltas: Vec<SparseDelta<B>>,
    names: &[String],
    grads: &burn::optim::GradientsParams,
    cfg: &SparseConfig,
    rng: &mut Rng,
) -> crate::Result<Vec<SparseDelta<B>>> {
    let mut scores = Vec::with_capacity(deltas.len());
    let mut shapes = Vec::with_capacity(deltas.len());
    for (d, name) in deltas.iter().zip(names) {
        let [i, o] = d.delta.dims();
        let w = d.delta.val().inner().into_data().to_vec::<f32>().unwrap_or_default();
        let g = grads.get::<B::InnerBackend, 2>(d.delta.id).map(|g| g.into_data().to_vec::<f32>().unwrap_or_default()).unwrap_or_else(|| vec![0.0; i * o]);
        let sc = cfg.score(&w, &g, rng);
        if sc.iter().any(|x| !x.is_finite()) {
            return Err(crate::Error::Selection(format!("sparse mask selection: `{name}` has non-finite scores")));
        }
        if sc.iter().all(|&x| x == 0.0) {
            return Err(crate::Error::Selection(format!(
                "sparse mask selection: every {:?} score of `{name}` is 0 (ΔW or its gradient is still 0: train more dense steps before the first selection, --sparse warm-up, or use a non-zero learning rate)",
                cfg.criterion
            )));
        }
        scores.push(sc);
        shapes.push([i, o]);
    }
    let kept = select(cfg, &scores, &shapes, rng);
    Ok(deltas.into_iter().zip(kept).map(|(d, k)| d.set_mask(&k, cfg.on_drop)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_dense_warmup_then_periodic_in_the_first_epoch_only() {
        let cfg = SparseConfig::new().with_warmup_steps(3).with_reselect_every(2);
        let acts: Vec<bool> = (0..9).map(|s| cfg.action(0, s, 9) == SparseAction::Reselect).collect();
        assert_eq!(acts, [false, false, true, false, true, false, true, false, true]);
        assert!((0..20).all(|s| cfg.action(1, s, 20) == SparseAction::Keep));
        // an epoch shorter than the warm-up selects once, after its last step
        let short: Vec<bool> = (0..2).map(|s| cfg.action(0, s, 2) == SparseAction::Reselect).collect();
        assert_eq!(short, [false, true]);
    }

    #[test]
    fn per_layer_and_global_budgets_are_exact() {
        let mut rng = Rng::new(0);
        let scores: Vec<Vec<f32>> = vec![(0..100).map(|i| (i % 7) as f32).collect(), (0..50).map(|i| (i % 3) as f32 + 10.0).collect()];
        let shapes = [[10, 10], [5, 10]];
        let cfg = SparseConfig::new().with_keep_ratio(0.05);
        let kept = select(&cfg, &scores, &shapes, &mut rng);
        assert_eq!((kept[0].len(), kept[1].len()), (5, 2));
        assert!(kept[0].iter().all(|&i| i % 7 == 6), "highest scores first");
        let glob = select(&cfg.clone().with_scope(Scope::Global), &scores, &shapes, &mut rng);
        assert_eq!(glob[0].len() + glob[1].len(), 7, "⌊0.05 · 150⌋");
        assert!(glob[0].is_empty(), "layer 2's scores are all larger");
        let block = select(&cfg.with_keep_ratio(0.25).with_scope(Scope::Block { tile: 5 }), &scores, &shapes, &mut rng);
        assert_eq!(block[0].len(), 25, "one of four 5×5 tiles");
    }

    #[test]
    fn criteria_score_as_defined() {
        let mut rng = Rng::new(0);
        let (w, g) = ([1.0, -2.0, 3.0], [-1.0, -1.0, 0.5]);
        let s = |c| SparseConfig::new().with_criterion(c).score(&w, &g, &mut Rng::new(0));
        assert_eq!(s(Criterion::SensitivitySigned), vec![-1.0, 2.0, 1.5]);
        assert_eq!(s(Criterion::SensitivityAbs), vec![1.0, 2.0, 1.5]);
        assert_eq!(s(Criterion::GradMagnitude), vec![1.0, 1.0, 0.5]);
        assert_eq!(s(Criterion::WeightMagnitude), vec![1.0, 2.0, 3.0]);
        let r = SparseConfig::new().with_criterion(Criterion::Random).score(&w, &g, &mut rng);
        assert!(r.iter().all(|x| (0.0..1.0).contains(x)));
    }
}
