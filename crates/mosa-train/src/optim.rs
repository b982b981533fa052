//! The reference optimiser and learning-rate schedule of the MoSA code (spec §5), written here
//! because burn 0.21's AdamW differs (its decay is applied before the Adam step and its state is
//! not addressable per entry) and its cosine schedule restarts.
//!
//! AdamW, as the VPT/MoSA code base does it (the `transformers` AdamW):
//! ```text
//! m = β1·m + (1−β1)·g            v = β2·v + (1−β2)·g²
//! p ← p − lr·sqrt(1−β2^t)/(1−β1^t) · m / (sqrt(v) + ε)
//! p ← p − lr·wd·p                (decoupled decay after the Adam update; not for biases)
//! ```
//! State is kept per parameter *path*, so a checkpoint restores it into a freshly built model.

use std::collections::HashMap;

use burn::module::{AutodiffModule, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

use mosa_core::params::{MapParam, is_bias};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// The reference: betas (0.9, 0.999), eps 1e-6, weight decay 0.01.
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-6, weight_decay: 0.01 }
    }
}

/// First and second moments of one parameter, flattened.
#[derive(Clone)]
struct Moments<B: Backend> {
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
}

pub struct AdamW<B: AutodiffBackend> {
    pub config: AdamWConfig,
    /// Steps taken so far (t of the bias correction is `step` after increment).
    pub step: u64,
    state: HashMap<String, Moments<B::InnerBackend>>,
    /// Parameters that get no weight decay besides the biases (e.g. sparse deltas).
    pub no_decay: std::collections::HashSet<burn::module::ParamId>,
    /// Per-parameter learning-rate factors (e.g. the head at its own lr); 1 for the others.
    pub lr_scale: HashMap<burn::module::ParamId, f64>,
}

struct Stepper<'a, B: AutodiffBackend> {
    opt: &'a mut AdamW<B>,
    grads: &'a mut GradientsParams,
    lr: f64,
}

impl<B: AutodiffBackend> MapParam<B> for Stepper<'_, B> {
    fn param<const D: usize>(&mut self, path: &str, _: (&str, &str), param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let path = path.to_string();
        let c = self.opt.config;
        let shape = tensor.shape();
        let n = shape.num_elements();
        let g = grad.reshape([n]);
        let p = tensor.inner().reshape([n]);
        let (m, v) = match self.opt.state.remove(&path) {
            Some(s) => {
                (s.m.mul_scalar(c.beta1).add(g.clone().mul_scalar(1.0 - c.beta1)), s.v.mul_scalar(c.beta2).add(g.clone().mul(g).mul_scalar(1.0 - c.beta2)))
            }
            None => (g.clone().mul_scalar(1.0 - c.beta1), g.clone().mul(g).mul_scalar(1.0 - c.beta2)),
        };
        let t = self.opt.step as i32;
        let lr = self.lr * self.opt.lr_scale.get(&id).copied().unwrap_or(1.0);
        let step_size = lr * (1.0 - c.beta2.powi(t)).sqrt() / (1.0 - c.beta1.powi(t));
        let mut p = p.sub(m.clone().div(v.clone().sqrt().add_scalar(c.eps)).mul_scalar(step_size));
        if c.weight_decay != 0.0 && !is_bias(&path) && !self.opt.no_decay.contains(&id) {
            p = p.mul_scalar(1.0 - lr * c.weight_decay);
        }
        self.opt.state.insert(path, Moments { m, v });
        let new = Tensor::<B, D>::from_inner(p.reshape(shape)).require_grad();
        Param::from_mapped_value(id, new, mapper)
    }
}

impl<B: AutodiffBackend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Self {
        Self { config, step: 0, state: HashMap::new(), no_decay: Default::default(), lr_scale: HashMap::new() }
    }

    /// One step at learning rate `lr` for every parameter that has a gradient in `grads`.
    pub fn step<M: AutodiffModule<B>>(&mut self, lr: f64, module: M, mut grads: GradientsParams) -> M {
        self.step += 1;
        mosa_core::params::map(module, Stepper { opt: self, grads: &mut grads, lr }).0
    }

    /// Multiplies the moments of `path` by a 0/1 mask (flattened): entries dropped from a
    /// sparse mask start again from zero moments, as if never trained.
    pub fn mask_moments(&mut self, path: &str, mask: Tensor<B::InnerBackend, 1>) {
        if let Some(s) = self.state.get_mut(path) {
            s.m = s.m.clone().mul(mask.clone());
            s.v = s.v.clone().mul(mask);
        }
    }

    /// The state on the host: `(path, m, v)` sorted by path.
    pub fn export(&self) -> Vec<(String, Vec<f32>, Vec<f32>)> {
        let mut v: Vec<_> = self
            .state
            .iter()
            .map(|(k, s)| (k.clone(), s.m.clone().into_data().to_vec::<f32>().unwrap_or_default(), s.v.clone().into_data().to_vec::<f32>().unwrap_or_default()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Restores a state exported by [`AdamW::export`].
    pub fn import(&mut self, step: u64, state: Vec<(String, Vec<f32>, Vec<f32>)>, device: &burn::tensor::Device<B::InnerBackend>) {
        self.step = step;
        self.state = state
            .into_iter()
            .map(|(k, m, v)| {
                let n = m.len();
                (k, Moments { m: Tensor::from_data(TensorData::new(m, [n]), device), v: Tensor::from_data(TensorData::new(v, [n]), device) })
            })
            .collect();
    }
}

/// When the learning rate changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// Once per epoch, as the reference code (`lr = base·e/W` in warm-up, so epoch 0 trains at 0).
    #[default]
    PerEpoch,
    /// Every step, with the epoch counted fractionally.
    PerStep,
}

/// Linear warm-up then half-cosine decay to 0 (no restarts).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WarmupCosine {
    pub base_lr: f64,
    pub warmup_epochs: usize,
    pub epochs: usize,
    pub kind: ScheduleKind,
}

impl WarmupCosine {
    /// Learning rate for `step` (0-based) of `epoch` (0-based) with `steps_per_epoch` steps.
    pub fn lr(&self, epoch: usize, step: usize, steps_per_epoch: usize) -> f64 {
        let t = match self.kind {
            ScheduleKind::PerEpoch => epoch as f64,
            ScheduleKind::PerStep => epoch as f64 + step as f64 / steps_per_epoch.max(1) as f64,
        };
        let w = self.warmup_epochs as f64;
        if t < w {
            self.base_lr * t / w
        } else {
            let span = (self.epochs as f64 - w).max(1e-12);
            self.base_lr * 0.5 * (1.0 + (std::f64::consts::PI * ((t - w) / span).min(1.0)).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::Linear;

    type AB = Autodiff<Flex>;

    #[test]
    fn schedule_matches_the_reference_sequence() {
        let s = WarmupCosine { base_lr: 0.005, warmup_epochs: 10, epochs: 100, kind: ScheduleKind::PerEpoch };
        let hand = |e: usize| if e < 10 { 0.005 * e as f64 / 10.0 } else { 0.005 * 0.5 * (1.0 + (std::f64::consts::PI * (e as f64 - 10.0) / 90.0).cos()) };
        for e in 0..100 {
            assert!((s.lr(e, 7, 8) - hand(e)).abs() < 1e-15, "epoch {e}");
        }
        assert_eq!(s.lr(0, 5, 8), 0.0);
        assert!((s.lr(10, 0, 8) - 0.005).abs() < 1e-15);
        assert!((s.lr(55, 0, 8) - 0.0025).abs() < 1e-12);
        // per step: fractional epochs, continuous at epoch boundaries
        let p = WarmupCosine { kind: ScheduleKind::PerStep, ..s };
        assert!((p.lr(0, 4, 8) - 0.005 * 0.05).abs() < 1e-15); // t = 0.5 of 10 warm-up epochs
        assert!((p.lr(3, 8, 8) - p.lr(4, 0, 8)).abs() < 1e-15);
        assert!((p.lr(55, 4, 8) - 0.005 * 0.5 * (1.0 + (std::f64::consts::PI * 45.5 / 90.0).cos())).abs() < 1e-15);
    }

    /// A 2 → 1 linear layer (W = [0.5, −1], b = 0.25), the reference AdamW, and the inputs
    /// x = [[1, 2], [3, −1]] of loss = sum(x·W + b): dW = column sums [4, 1], db = 2.
    fn fixture() -> (Linear<AB>, AdamW<AB>, Tensor<AB, 2>, AdamWConfig) {
        let device = Default::default();
        let lin: Linear<AB> = Linear {
            weight: Param::from_tensor(Tensor::from_data(TensorData::new(vec![0.5f32, -1.0], [2, 1]), &device)),
            bias: Some(Param::from_tensor(Tensor::from_data(TensorData::new(vec![0.25f32], [1]), &device))),
        };
        let cfg = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-6, weight_decay: 0.01 };
        let x = Tensor::<AB, 2>::from_data(TensorData::new(vec![1f32, 2., 3., -1.], [2, 2]), &device);
        (lin, AdamW::<AB>::new(cfg), x, cfg)
    }

    #[test]
    fn per_parameter_lr_and_no_decay_follow_the_hand_computed_step() {
        let (lin, mut opt, x, _) = fixture();
        opt.lr_scale.insert(lin.weight.id, 0.1);
        opt.no_decay.insert(lin.weight.id);
        let loss = lin.forward(x).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &lin);
        let model = opt.step(0.1, lin, grads);
        // step 1: m̂/√v̂ = sign(g) = 1, so W moves by exactly lr·0.1 and is not decayed; b by lr
        let w = model.weight.val().into_data().to_vec::<f32>().unwrap();
        let b = model.bias.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap();
        assert!((w[0] as f64 - (0.5 - 0.01)).abs() < 1e-5 && (w[1] as f64 - (-1.0 - 0.01)).abs() < 1e-5, "{w:?}");
        assert!((b[0] as f64 - (0.25 - 0.1)).abs() < 1e-5, "{b:?}");
    }

    #[test]
    fn adamw_matches_a_hand_computed_sequence() {
        let device = Default::default();
        let (lin, mut opt, x, cfg) = fixture();
        let (g_w, g_b) = ([4.0f64, 1.0], 2.0f64);
        let mut w = [0.5f64, -1.0];
        let mut b = 0.25f64;
        let (mut mw, mut vw, mut mb, mut vb) = ([0.0f64; 2], [0.0f64; 2], 0.0f64, 0.0f64);
        let mut model = lin;
        for (t, lr) in [(1, 0.1), (2, 0.05), (3, 0.0), (4, 0.2)] {
            let loss = model.forward(x.clone()).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = opt.step(lr, model, grads);
            let ss = lr * (1.0 - 0.999f64.powi(t)).sqrt() / (1.0 - 0.9f64.powi(t));
            for i in 0..2 {
                mw[i] = 0.9 * mw[i] + 0.1 * g_w[i];
                vw[i] = 0.999 * vw[i] + 0.001 * g_w[i] * g_w[i];
                w[i] -= ss * mw[i] / (vw[i].sqrt() + 1e-6);
                w[i] -= lr * 0.01 * w[i];
            }
            mb = 0.9 * mb + 0.1 * g_b;
            vb = 0.999 * vb + 0.001 * g_b * g_b;
            b -= ss * mb / (vb.sqrt() + 1e-6); // biases are not decayed
            let gw = model.weight.val().into_data().to_vec::<f32>().unwrap();
            let gb = model.bias.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap();
            for i in 0..2 {
                assert!((gw[i] as f64 - w[i]).abs() < 1e-6, "step {t} w{i}: {} vs {}", gw[i], w[i]);
            }
            assert!((gb[0] as f64 - b).abs() < 1e-6, "step {t} b: {} vs {b}", gb[0]);
        }
        // the state survives export/import
        let exported = opt.export();
        assert_eq!(exported.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), vec!["bias", "weight"]);
        assert!((exported[1].1[0] as f64 - mw[0]).abs() < 1e-6 && (exported[1].2[1] as f64 - vw[1]).abs() < 1e-6);
        let mut other = AdamW::<AB>::new(cfg);
        other.import(opt.step, exported.clone(), &device);
        assert_eq!(other.export(), exported);
        other.mask_moments("weight", Tensor::from_data(TensorData::new(vec![1f32, 0.], [2]), &device));
        let masked = other.export();
        assert_eq!((masked[1].1[1], masked[1].2[1]), (0.0, 0.0));
        assert_eq!(masked[1].1[0], exported[1].1[0]);
    }
}
