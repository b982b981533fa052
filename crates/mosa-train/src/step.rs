//! One training step, shaped by the method ([`Passes`]): one stochastic pass with
//! cross-entropy, or two passes with independent expert draws, CE on the first and the
//! consistency terms between them (symmetric KL with stop-gradient, optionally DEEPREG); then
//! backward and the method's post-backward hook ([`inject::after_backward`]).

use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use mosa_core::{Method, Passes, Rng, inject};
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
    experts: &mut Rng,
    sparse_rng: &mut Rng,
) -> Result<(Backbone<B>, StepOut<B>)> {
    let two = two_passes(method, t);
    let mut model = model;
    inject::before_forward(&mut model, method, (epoch, step, steps));
    let out1 = model.forward_rng(x.clone(), two && t.deepreg, experts);
    let mut loss = cross_entropy(out1.logits.clone(), y.clone());
    if two {
        let out2 = model.forward_rng(x, t.deepreg, experts);
        if t.kl_weight > 0.0 {
            loss = loss.add(symmetric_kl(out1.logits.clone(), out2.logits).mul_scalar(t.kl_weight));
        }
        if t.deepreg {
            loss = loss.add(deepreg(&out1.hidden, &out2.hidden).mul_scalar(t.deepreg_weight));
        }
    }
    finish(model, out1.logits, y, loss, method, (epoch, step, steps), sparse_rng)
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
