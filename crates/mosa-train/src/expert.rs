//! A trained run as a task expert (`mosa_core::expert`): what the run changed, in timm's names
//! and layout, with its head, classes and identity. `mosa train` writes `expert.safetensors` for
//! `sparse`, `lora` and `full` runs; `mosa expert export` makes one from any such run.
//!
//! - sparse: per sparse delta, the mask's positions (flat `[out, in]` indices, sorted) and the
//!   delta's values there;
//! - lora: `lora_a = Aᵀ` `[r, in]`, `lora_b = Bᵀ` `[out, r]`, scale = alpha / r (PEFT's layout);
//! - full: `W − W0` of every backbone tensor but the head, and but the position embedding when
//!   the run trained at another grid than the stored one (that Δ cannot be merged onto it).

use mosa_kernels::Kernels;
use std::path::Path;

use burn::prelude::*;
use mosa_core::expert::{BackboneIdentity, Delta, EXPERT_FORMAT, Expert, ExpertKind, ExpertMeta, ExpertTensor, Head, ValueDtype};
use mosa_core::host::HostTensor;
use mosa_core::places::{BranchKind, Places};
use mosa_core::site::SiteMut;
use mosa_core::{Method, PeftHost};
use mosa_models::{Backbone, HeadPolicy};

use crate::config::RunSpec;
use crate::metrics::Summary;
use crate::rundir::BackboneId;
use crate::{Error, Result};

/// The expert kind a method produces, if it produces one.
pub fn kind_of(method: &Method) -> Option<ExpertKind> {
    match method.places() {
        Places::Branches(BranchKind::Sparse(_)) => Some(ExpertKind::Sparse),
        Places::Branches(BranchKind::Lora(_)) => Some(ExpertKind::Lora),
        Places::Backbone { biases_only: false } => Some(ExpertKind::Full),
        Places::Branches(BranchKind::MosaLora(_))
        | Places::Backbone { biases_only: true }
        | Places::Head
        | Places::Adapters { .. }
        | Places::Prompts { .. } => None,
    }
}

fn transposed(t: Tensor<impl Backend, 2>) -> HostTensor {
    HostTensor::from_tensor(t.transpose())
}

/// The changed weights of a trained (unmerged) model.
fn tensors<B: Kernels>(spec: &RunSpec, model: &Backbone<B>, kind: ExpertKind, device: &B::Device) -> Result<Vec<ExpertTensor>> {
    let mut m = model.clone();
    let mut out = Vec::new();
    match kind {
        ExpertKind::Sparse | ExpertKind::Lora => {
            for s in m.sites_mut() {
                let SiteMut::Linear { site, linear } = s else { continue };
                let (d_in, d_out) = (site.d_in, site.d_out);
                let name = format!("{}.weight", site.path);
                let shape = vec![d_out, d_in];
                if let Some(b) = &linear.branch {
                    out.push(ExpertTensor { name, shape, delta: b.expert_delta() });
                }
            }
        }
        ExpertKind::Full => {
            let Some(w) = &spec.weights else {
                return Err(Error::Model("a full expert needs the base weights file it was trained from (this run used random initialisation)".into()));
            };
            let sd = mosa_models::read_checkpoint(w).map_err(|e| Error::Model(e.to_string()))?;
            // a tensor resampled for the run's resolution (a ViT's position grid, a Swin's bias
            // tables) can be merged only where it has the stored shape
            let stored: std::collections::HashMap<String, Vec<usize>> = sd.tensors.iter().map(|(k, t)| (k.clone(), t.shape.clone())).collect();
            let cfg = spec.model.clone().with_num_classes(model.num_classes()).with_img_size(spec.train.resolution);
            let base = cfg.load_state::<B>(sd, HeadPolicy::Skip, device).map_err(|e| Error::Model(e.to_string()))?;
            let (trained, base) = (model.state_dict(), base.state_dict());
            let head = cfg.head_key();
            for (name, w) in &trained.tensors {
                let is_head = name.strip_prefix(head).is_some_and(|r| r == ".weight" || r == ".bias");
                if is_head || stored.get(name) != Some(&w.shape) {
                    continue;
                }
                let w0 = &base.tensors[name];
                let d: Vec<f32> = w.data.iter().zip(&w0.data).map(|(a, b)| a - b).collect();
                out.push(ExpertTensor { name: name.clone(), shape: w.shape.clone(), delta: Delta::Dense(d) });
            }
        }
    }
    Ok(out)
}

/// Everything an expert records about where it came from.
pub struct Origin<'a> {
    pub spec: &'a RunSpec,
    pub backbone: &'a BackboneId,
    pub summary: &'a Summary,
    /// The dataset's name (the task) and class names.
    pub task: String,
    pub classes: Vec<String>,
}

impl<'a> Origin<'a> {
    /// The origin of a run on `dataset`.
    pub fn new(spec: &'a RunSpec, backbone: &'a BackboneId, summary: &'a Summary, dataset: &mosa_data::Dataset) -> Self {
        let classes = dataset.class_names.clone().unwrap_or_else(|| (0..dataset.num_classes).map(|c| c.to_string()).collect());
        Self { spec, backbone, summary, task: dataset.name.clone(), classes }
    }
}

/// The expert of a trained, unmerged model.
pub fn expert_of<B: Kernels>(model: &Backbone<B>, o: &Origin<'_>, values: ValueDtype, device: &B::Device) -> Result<Expert> {
    let spec = o.spec;
    let kind = kind_of(&spec.method).ok_or_else(|| Error::Config(format!("method {} makes no expert (sparse, lora or full do)", spec.method.name())))?;
    let tensors = tensors(spec, model, kind, device)?;
    let mut m = model.clone();
    let head = m.head_mut().map(|h| Head { weight: transposed(h.weight.val()), bias: h.bias.as_ref().map(|b| HostTensor::from_tensor(b.val())) });
    let sparse = spec.method.sparse();
    let meta = ExpertMeta {
        format: EXPERT_FORMAT,
        kind,
        backbone: BackboneIdentity {
            model: o.backbone.model.clone(),
            config: serde_json::to_value(&spec.model).unwrap_or_default(),
            weights: o.backbone.weights.clone(),
            sha256: o.backbone.sha256.clone(),
        },
        method: serde_json::to_value(&spec.method).unwrap_or_default(),
        task: o.task.clone(),
        dataset: spec.dataset.clone(),
        keep_ratio: sparse.map(|s| s.keep_ratio),
        criterion: sparse.and_then(|s| serde_json::to_value(s.criterion).ok()).and_then(|v| v.as_str().map(String::from)),
        summary: serde_json::to_value(o.summary).unwrap_or_default(),
        classes: o.classes.clone(),
        values,
        resolution: Some(spec.train.resolution),
        tensors: Default::default(),
    };
    let e = Expert { meta, tensors, head };
    e.validate().map_err(|e| Error::Model(e.to_string()))?;
    Ok(e)
}

/// The expert of a finished run directory (refused, saying why, for a run that has not finished).
pub fn expert_of_run<B: Kernels>(dir: &Path, values: ValueDtype, device: &B::Device) -> Result<Expert> {
    let rd = crate::rundir::RunDir::new(dir);
    if !rd.config().exists() {
        return Err(Error::Input(format!("--run {}: not a run directory (no config.json)", dir.display())));
    }
    if !rd.finished() {
        let how = if rd.resumable() {
            format!("it was interrupted or is still training; finish it with `mosa train --resume --out {}`", dir.display())
        } else {
            "it never finished an epoch; train it again".to_string()
        };
        return Err(Error::Input(format!("--run {}: the run has not finished (no summary.json yet): {how}", dir.display())));
    }
    let cfg = rd.read_config()?;
    let summary = rd.summary()?;
    let model = crate::rundir::load_run_unmerged::<B>(dir, device)?;
    let ds = mosa_data::Dataset::open(&cfg.run.dataset.parse()?)?;
    expert_of(&model, &Origin::new(&cfg.run, &cfg.backbone, &summary, &ds), values, device)
}

/// Makes the expert of a finished run directory and writes it to `out`; returns the expert and
/// the file size.
pub fn export_run<B: Kernels>(dir: &Path, out: &Path, values: ValueDtype, device: &B::Device) -> Result<(Expert, u64)> {
    let rd = crate::rundir::RunDir::new(dir);
    // the expert may replace none of the run's other files (only its own expert.safetensors)
    crate::output::check_output(out, &[rd.checkpoint().as_path(), rd.model().as_path(), rd.config().as_path()], Some(&rd.expert()))?;
    let e = expert_of_run::<B>(dir, values, device)?;
    let bytes = e.write(out).map_err(|e| Error::Checkpoint(e.to_string()))?;
    Ok((e, bytes))
}
