//! The linear probe's shortcut: with the backbone frozen, no augmentation and no dropout, every
//! epoch computes the same features of every training image, so they are computed once and the
//! head trains on them. The step is the head half of [`crate::step::step`] for `linear` (the head
//! on the pre-logits, cross-entropy, backward, the method's hooks), and the features are the
//! pre-logits the training forward computes, so the run's numbers do not change (a test trains
//! runs both ways and compares their metrics and saved models bit for bit).

use burn::prelude::*;
use mosa_core::{Method, PeftHost, Rng, inject};
use mosa_data::LoadedSplit;
use mosa_kernels::AutodiffKernels;
use mosa_models::Backbone;

use crate::config::RunSpec;
use crate::loss::cross_entropy;
use crate::step::StepOut;
use crate::{Error, Result};

/// Whether a run may train on features computed once: the linear probe, images without
/// augmentation, and no dropout or drop-path anywhere in the backbone (every rate in its config
/// and the recipe's `backbone_dropout` zero).
pub fn applies(spec: &RunSpec, train: &LoadedSplit) -> bool {
    fn no_drop(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => m.iter().all(|(k, v)| if k.contains("drop") { v.as_f64().is_none_or(|x| x == 0.0) } else { no_drop(v) }),
            serde_json::Value::Array(a) => a.iter().all(no_drop),
            _ => true,
        }
    }
    matches!(spec.method, Method::Linear)
        && !train.transform.augments()
        && spec.train.backbone_dropout.unwrap_or(0.0) == 0.0
        && no_drop(&serde_json::to_value(&spec.model).unwrap_or_default())
}

/// The pre-logits of every training image, `[images, features]`, by image index.
pub struct Features<B: AutodiffKernels> {
    rows: Tensor<B::InnerBackend, 2>,
}

impl<B: AutodiffKernels> Features<B> {
    /// Runs the (frozen) backbone once over the training images, `batch` at a time, as the
    /// training forward does.
    pub fn compute(model: &Backbone<B>, train: &LoadedSplit, batch: usize, device: &B::Device) -> Self {
        let all: Vec<usize> = (0..train.len()).collect();
        let rows = all
            .chunks(batch.max(1))
            .map(|idx| {
                let (px, labels) = train.batch(idx, 0);
                let (x, _) = mosa_data::batcher::to_tensors::<B>(px, &labels, train.transform.size, device);
                model.forward_rng(x, false, &mut Rng::new(0)).pre_logits.inner()
            })
            .collect();
        Self { rows: Tensor::cat(rows, 0) }
    }

    /// One step of the head on the features of images `idx` with labels `y`.
    pub fn step(
        &self,
        model: Backbone<B>,
        idx: &[usize],
        y: Tensor<B, 1, Int>,
        method: &Method,
        at: (usize, usize, usize),
        rng: &mut Rng,
    ) -> Result<(Backbone<B>, StepOut<B>)> {
        let mut model = model;
        inject::before_forward(&mut model, method, at);
        let device = self.rows.device();
        let ids = Tensor::<B::InnerBackend, 1, Int>::from_data(TensorData::new(idx.iter().map(|&i| i as i64).collect::<Vec<_>>(), [idx.len()]), &device);
        let x = Tensor::<B, 2>::from_inner(self.rows.clone().select(0, ids));
        let head = model.head_mut().ok_or_else(|| Error::Model("a linear probe needs a head".into()))?.clone();
        let logits = head.forward(x);
        let loss = cross_entropy(logits.clone(), y.clone());
        crate::step::finish(model, logits, y, loss, method, at, rng)
    }
}
