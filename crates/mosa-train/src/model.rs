//! The model of a run, built from its spec: the backbone (loaded or seeded random) at the run's
//! resolution and classes, the head initialised, the method injected.

use burn::prelude::*;
use mosa_core::{PeftHost, Rng, inject, params};
use mosa_kernels::Kernels;
use mosa_models::{Backbone, HeadPolicy};

use crate::config::{HeadInit, RunSpec};
use crate::epoch::streams;
use crate::{Error, Result};

/// Builds the model of a run: backbone (loaded or seeded random), head init, method injected.
pub fn build_model<B: Kernels>(spec: &RunSpec, num_classes: usize, device: &B::Device) -> Result<Backbone<B>> {
    let cfg = model_config(spec, num_classes)?;
    B::seed(device, Rng::derive(spec.train.seed, streams::BACKEND).next_u64());
    let model = match &spec.weights {
        Some(w) => cfg.load::<B>(w, HeadPolicy::Skip, device).map_err(|e| Error::Model(e.to_string()))?,
        None => cfg.init::<B>(device),
    };
    let model = match spec.train.backbone_dropout {
        Some(p) => model.with_training_dropout(p),
        None => model,
    };
    let model = head_init(model, spec.train.head_init, spec.train.seed);
    let model = inject::apply(model, &spec.method, spec.train.seed, device).map_err(|e| Error::Model(e.to_string()))?;
    // Materialise every lazily initialised parameter now, in module order (reading its shape
    // does): the random values of a seeded model then do not depend on what reads them first
    // (training's forward pass, or loading a saved run for `mosa eval`).
    let _ = params::list(&model);
    Ok(model)
}

/// The run's backbone config at its resolution with `num_classes` classes, validated.
pub fn model_config(spec: &RunSpec, num_classes: usize) -> Result<mosa_models::BackboneConfig> {
    let cfg = spec.model.clone().with_num_classes(num_classes).with_img_size(spec.train.resolution);
    cfg.validate()
        .map_err(|e| Error::Config(format!("model `{}` at --resolution {} with {num_classes} classes: {e}", spec.model_name, spec.train.resolution)))?;
    Ok(cfg)
}

fn head_init<B: Kernels>(mut model: Backbone<B>, init: HeadInit, seed: u64) -> Backbone<B> {
    if let Some(head) = model.head_mut() {
        let [d, c] = head.weight.dims();
        let device = head.weight.device();
        let (w, b): (Vec<f32>, Vec<f32>) = match init {
            HeadInit::Zero => (vec![0.0; d * c], vec![0.0; c]),
            HeadInit::Reference => {
                // kaiming-normal with fan_out (= classes for a [classes, d] PyTorch weight), gain sqrt 2
                let std = (2.0 / c as f64).sqrt();
                let mut rng = Rng::derive(seed, 0x4ead);
                let w = (0..d * c)
                    .map(|_| {
                        let (u1, u2) = (rng.uniform().max(1e-300), rng.uniform());
                        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
                    })
                    .collect();
                (w, vec![-(99f32.ln()); c])
            }
        };
        let old = head.clone();
        let weight = old.weight.map(|_| Tensor::from_data(TensorData::new(w, [d, c]), &device));
        let bias = old.bias.map(|p| p.map(|_| Tensor::from_data(TensorData::new(b, [c]), &device)));
        *head = burn::nn::Linear { weight, bias };
    }
    model
}
