//! One training step, shaped by the method ([`Passes`]): one stochastic pass with
//! cross-entropy, or two passes with independent expert draws, CE on the first and the
//! consistency terms between them (symmetric KL with stop-gradient, optionally DEEPREG); then
//! backward and the method's post-backward hook ([`inject::after_backward`]).
//!
//! Two passes run as one forward over the stacked batch `[x; x]` by default ([`PassLayout`]):
//! the frozen backbone's products then see 2B rows, and each expert-split module runs each half
//! with that pass's draw ([`mosa_core::draws`]), so the step computes what two forwards compute.

use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use mosa_core::{Draws, Method, Passes, Rng, draws, inject};
use mosa_kernels::AutodiffKernels;
use mosa_models::Backbone;

use crate::config::TrainConfig;
use crate::loss::{cross_entropy, deepreg, symmetric_kl};
use crate::{Error, Result};

/// What a step leaves for the epoch: the loss (not yet read back), correct predictions of the
/// first pass, the gradients after the hook, and the sparse masks if the hook re-selected them.
pub struct StepOut<B: AutodiffBackend> {
    pub loss: Tensor<B::InnerBackend, 1>,
    pub correct: Tensor<B::InnerBackend, 1, Int>,
    pub grads: GradientsParams,
    pub new_masks: Vec<(String, Tensor<B, 2>)>,
}

/// Whether this run's step makes two passes: the method asks for them and a consistency term
/// is on.
pub fn two_passes(method: &Method, t: &TrainConfig) -> bool {
    method.passes() == Passes::Two && (t.kl_weight > 0.0 || t.deepreg)
}

/// How a step with two passes runs them. Both compute the same step; the numbers agree up to
/// float rounding (`tests/mosa_step.rs` holds losses, gradients and parameters within 1e-5 over
/// the fixture's three steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum PassLayout {
    /// One forward over the stacked batch `[x; x]`, each half with its pass's expert draws:
    /// the frozen backbone's products run over 2B rows (faster where B rows leave the cores
    /// short of work; `docs/timings.md`).
    #[default]
    Stacked,
    /// Two forwards of the batch, one after the other.
    Separate,
}

/// Forward, loss, backward and the post-backward hook for one batch. `experts` draws the active
/// experts of each pass (block by block); `sparse_rng` breaks ties of a re-selection.
#[allow(clippy::too_many_arguments)]
pub fn step<B: AutodiffKernels>(
    model: Backbone<B>,
    x: Tensor<B, 4>,
    y: Tensor<B, 1, Int>,
    method: &Method,
    t: &TrainConfig,
    (epoch, step, steps): (usize, usize, usize),
    layout: PassLayout,
    experts: &mut Rng,
    sparse_rng: &mut Rng,
) -> Result<(Backbone<B>, StepOut<B>)> {
    let two = two_passes(method, t);
    let mut model = model;
    inject::before_forward(&mut model, method, (epoch, step, steps));
    match layout {
        PassLayout::Stacked if two => return stacked(model, x, y, method, t, (epoch, step, steps), experts, sparse_rng),
        PassLayout::Stacked | PassLayout::Separate => {}
    }
    let out1 = model.forward_rng(x.clone(), two && t.deepreg, experts);
    let loss = if two {
        let out2 = model.forward_rng(x, t.deepreg, experts);
        two_pass_loss(out1.logits.clone(), out2.logits, &out1.hidden, &out2.hidden, y.clone(), t)
    } else {
        cross_entropy(out1.logits.clone(), y.clone())
    };
    finish(model, out1.logits, y, loss, method, (epoch, step, steps), sparse_rng)
}

/// The two-pass loss, whichever the layout: CE on the first pass's logits `z1`, plus the
/// symmetric KL between `z1` and `z2` and, with DEEPREG, the MSE between the passes' hidden
/// states (`h1`, `h2`; read only then).
fn two_pass_loss<B: AutodiffKernels>(
    z1: Tensor<B, 2>,
    z2: Tensor<B, 2>,
    h1: &[Tensor<B, 3>],
    h2: &[Tensor<B, 3>],
    y: Tensor<B, 1, Int>,
    t: &TrainConfig,
) -> Tensor<B, 1> {
    let mut loss = cross_entropy(z1.clone(), y);
    if t.kl_weight > 0.0 {
        loss = loss.add(symmetric_kl(z1, z2).mul_scalar(t.kl_weight));
    }
    if t.deepreg {
        loss = loss.add(deepreg(h1, h2).mul_scalar(t.deepreg_weight));
    }
    loss
}

/// Two passes as one forward over `[x; x]`: the first half draws from `experts` as the first pass
/// would, the second from where the first pass's draws end ([`draws::advanced`]).
#[allow(clippy::too_many_arguments)]
fn stacked<B: AutodiffKernels>(
    mut model: Backbone<B>,
    x: Tensor<B, 4>,
    y: Tensor<B, 1, Int>,
    method: &Method,
    t: &TrainConfig,
    at: (usize, usize, usize),
    experts: &mut Rng,
    sparse_rng: &mut Rng,
) -> Result<(Backbone<B>, StepOut<B>)> {
    let b = x.dims()[0];
    let second = draws::advanced(experts, &inject::expert_draws(&mut model));
    let mut halves = Draws::halves(experts.clone(), second.clone());
    let out = model.forward_draws(Tensor::cat(vec![x.clone(), x], 0), t.deepreg, &mut halves);
    if *halves.first() != second {
        return Err(Error::Model(
            "the stacked MoSA step's first half did not end its expert draws where the second half's began \
             (a module draws beyond its `expert_draws`); train with --passes separate"
                .into(),
        ));
    }
    *experts = halves.into_last();
    let half = |z: &Tensor<B, 2>, i: usize| z.clone().narrow(0, i * b, b);
    let (z1, z2) = (half(&out.logits, 0), half(&out.logits, 1));
    // the hidden states are collected (and split) only for DEEPREG
    let hidden = |i: usize| out.hidden.iter().map(|h| h.clone().narrow(0, i * b, b)).collect::<Vec<_>>();
    let loss = two_pass_loss(z1.clone(), z2, &hidden(0), &hidden(1), y.clone(), t);
    finish(model, z1, y, loss, method, at, sparse_rng)
}

/// The end of every step: correct predictions of `logits` (the first pass's), backward of
/// `loss`, and the method's post-backward hook.
pub(crate) fn finish<B: AutodiffKernels>(
    model: Backbone<B>,
    logits: Tensor<B, 2>,
    y: Tensor<B, 1, Int>,
    loss: Tensor<B, 1>,
    method: &Method,
    at: (usize, usize, usize),
    sparse_rng: &mut Rng,
) -> Result<(Backbone<B>, StepOut<B>)> {
    let n = y.dims()[0];
    let correct = logits.inner().argmax(1).reshape([n]).equal(y.inner()).int().sum();
    let loss_value = loss.clone().inner();
    let mut grads = GradientsParams::from_grads(loss.backward(), &model);
    let (model, new_masks) = inject::after_backward(model, &mut grads, method, at, sparse_rng).map_err(|e| Error::Model(e.to_string()))?;
    Ok((model, StepOut { loss: loss_value, correct, grads, new_masks }))
}
