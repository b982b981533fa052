//! The run: build the model, train epoch by epoch ([`crate::epoch`]), merge and evaluate after
//! each ([`crate::evaluate`]), checkpoint atomically, resume, finish with the summary. Our own
//! loop, not burn-train's `Learner`: the MoSA step needs two stochastic passes with a
//! stop-gradient KL, expert-gradient masking between backward and the optimiser, the reference
//! AdamW, a per-epoch schedule, merge-before-evaluation, and checkpoints that resume
//! bit-for-bit (docs/training.md). Nothing here names a backbone family or a method.

use mosa_core::kernels::{AutodiffKernels, Kernels};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::prelude::*;
use mosa_core::host::HostTensor;
use mosa_core::optim::{AdamW, AdamWConfig, WarmupCosine};
use mosa_core::{PeftHost, Rng, inject, params};
use mosa_data::{Dataset, DatasetSpec, LoadOptions, LoadedSplit, Transform};
use mosa_models::{Backbone, HeadPolicy};

use crate::checkpoint::{BackboneId, RunState, Tensors, file_sha256, read_checkpoint, write_checkpoint, write_model};
use crate::config::HeadInit;
use crate::epoch::{EpochCtx, streams, train_epoch};
use crate::evaluate::evaluate;
use crate::metrics::{Accuracies, EpochMetrics, Summary, summarize, write_metrics};
use crate::progress::Reporter;
use crate::rundir::{DatasetInfo, FORMAT, RunConfig, RunDir, RunSpec};
use crate::{Error, Result};

/// Interrupt a run after this many epochs (tests of `--resume`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Control {
    pub stop_after_epochs: Option<usize>,
}

pub enum Outcome {
    Finished(Box<Summary>),
    Interrupted { epochs_done: usize },
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

/// The run's backbone config at its resolution with `num_classes` classes, validated.
fn model_config(spec: &RunSpec, num_classes: usize) -> Result<mosa_models::BackboneConfig> {
    let cfg = spec.model.clone().with_num_classes(num_classes).with_img_size(spec.train.resolution);
    cfg.validate()
        .map_err(|e| Error::Config(format!("model `{}` at --resolution {} with {num_classes} classes: {e}", spec.model_name, spec.train.resolution)))?;
    Ok(cfg)
}

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
    let model = inject::apply(model, &spec.method, spec.train.seed, device).map_err(Error::Model)?;
    // Materialise every lazily initialised parameter now, in module order (reading its shape
    // does): the random values of a seeded model then do not depend on what reads them first
    // (training's forward pass, or loading a saved run for `mosa eval`).
    let _ = params::list(&model);
    Ok(model)
}

fn backbone_id(spec: &RunSpec) -> Result<BackboneId> {
    Ok(BackboneId {
        model: spec.model_name.clone(),
        weights: spec.weights.as_ref().map(|p| p.display().to_string()),
        sha256: spec.weights.as_ref().map(|p| file_sha256(p)).transpose()?,
    })
}

struct Data {
    dataset: Dataset,
    train: LoadedSplit,
    val: Option<LoadedSplit>,
    test: Option<LoadedSplit>,
}

fn open_dataset(spec: &RunSpec) -> Result<Dataset> {
    let ds_spec: DatasetSpec = spec.dataset.parse()?;
    let mut dataset = Dataset::open(&ds_spec)?;
    if let Some(name) = &spec.train.train_split {
        dataset.train = train_split(&dataset, name)?;
    }
    Ok(dataset)
}

/// The list `--train-split` names: one of the dataset's lists other than its validation and
/// test splits (training on what selects or scores the model is refused).
fn train_split(dataset: &Dataset, name: &str) -> Result<mosa_data::list::Split> {
    let held = [dataset.val.as_ref(), dataset.test.as_ref()].into_iter().flatten().any(|s| s.name == name);
    if held {
        return Err(Error::Config(format!("--train-split {name}: that is {}'s validation or test split, which is not trained on", dataset.name)));
    }
    let known: Vec<&str> = [&dataset.train].into_iter().chain(&dataset.extra).map(|s| s.name.as_str()).collect();
    match dataset.split(name) {
        Some(s) => Ok(s.clone()),
        None => Err(Error::Config(format!("--train-split {name}: {} has no such list (it has {})", dataset.name, known.join(", ")))),
    }
}

fn load_data(spec: &RunSpec, dataset: Dataset, rep: &mut dyn Reporter) -> Result<Data> {
    let opts = LoadOptions { skip_unreadable: spec.skip_unreadable, disk_cache: None };
    let s = spec.train.resolution;
    let mut load = |split: &mosa_data::list::Split, train: bool| -> Result<LoadedSplit> {
        let (l, r) = LoadedSplit::load(split, dataset.num_classes, Transform::new(dataset.style, s, train).with_vtab_resize(spec.train.vtab_resize), &opts)?;
        if !r.skipped.is_empty() {
            rep.message(&format!("warning: {}: skipped {} unreadable image(s), first: {} ({})", r.split, r.skipped.len(), r.skipped[0].0, r.skipped[0].1));
        }
        rep.message(&format!("loaded {} {} images at {s}px in {:.1} s ({:.0} images/s decode+resize)", r.images, r.split, r.seconds, r.images_per_second()));
        Ok(l)
    };
    let train = load(&dataset.train, true)?;
    let val = dataset.val.as_ref().map(|v| load(v, false)).transpose()?;
    let test = dataset.test.as_ref().map(|v| load(v, false)).transpose()?;
    Ok(Data { dataset, train, val, test })
}

/// Trains (or resumes) a run into `out`.
pub fn run<B: AutodiffKernels>(spec: &RunSpec, out: &Path, resume: bool, control: Control, device: &B::Device, rep: &mut dyn Reporter) -> Result<Outcome> {
    spec.train.validate().map_err(Error::Config)?;
    spec.method.validate().map_err(Error::Config)?;
    // the lists and the model's size are checked before anything is written or decoded
    let dataset = open_dataset(spec)?;
    let cfg = model_config(spec, dataset.num_classes)?;
    // the memory the run will hold, bounded before anything is decoded or built
    let t = &spec.train;
    let eval_cap = |n: usize| t.max_eval_images.map_or(n, |m| m.min(n));
    let images = t.max_train_images.map_or(dataset.train.entries.len(), |m| m.min(dataset.train.entries.len()))
        + [dataset.val.as_ref(), dataset.test.as_ref()].into_iter().flatten().map(|s| eval_cap(s.entries.len())).sum::<usize>();
    let batch = t.batch_size.max(t.eval_batch_size.unwrap_or(0));
    crate::memory::Footprint { images, resolution: t.resolution, batch, params: cfg.estimated_params(), training: true }
        .check(&format!("training `{}` at --resolution {} and --batch-size {}", spec.model_name, t.resolution, t.batch_size))?;
    let dir = RunDir::new(out);
    std::fs::create_dir_all(out).map_err(|e| Error::Checkpoint(format!("{}: {e}", out.display())))?;
    let ckpt_path = dir.checkpoint();
    let config_sha = spec.sha256();
    // held until the run returns: a second run on this directory is refused (issue #11 case 1)
    let _lock = dir.lock()?;
    if !resume {
        dir.check_new()?;
    }
    let checkpoint = if resume && ckpt_path.exists() {
        let c = read_checkpoint(&ckpt_path)?;
        // older formats hashed their own config layout; their settings come from their converted
        // config.json
        if c.state.format == Some(FORMAT) && c.state.config_sha256 != config_sha {
            return Err(Error::Config(format!(
                "{}: the run was started with other settings (see its config.json); resume with the same settings",
                out.display()
            )));
        }
        Some(c)
    } else {
        None
    };

    // the backbone file and the lists are checked against a resumed run's before any image is
    // decoded
    let backbone = backbone_id(spec)?;
    if checkpoint.is_some() {
        dir.check_resume(&dir.read_config()?, backbone.sha256.as_deref(), &dataset)?;
    }
    let fingerprint = dataset.fingerprint();
    let data = load_data(spec, dataset, rep)?;
    let nc = data.dataset.num_classes;
    let mut model = build_model::<B>(spec, nc, device)?;
    // (computed here, before the first epoch seeds the backend: merging initialises lazy LoRA
    // factors, so moving this would change their values)
    let trainable = params::count_trainable(&params::list(&model));
    let merged_trainable = params::count_trainable(&params::list(&inject::merged(&model)));
    // a new run, or a format-1 run being resumed (its config.json is rewritten in this format)
    if checkpoint.is_none() || !is_current_format(&dir) {
        let ds = &data.dataset;
        dir.write_config(&RunConfig {
            format: FORMAT,
            run: spec.clone(),
            backbone: backbone.clone(),
            dataset: DatasetInfo {
                name: ds.name.clone(),
                classes: nc,
                style: serde_json::to_value(ds.style).unwrap_or_default(),
                train: data.train.len(),
                val: data.val.as_ref().map(|v| v.len()),
                test: data.test.as_ref().map(|v| v.len()),
                fingerprint: Some(fingerprint),
            },
            trainable_params: trainable,
            backend: std::any::type_name::<B>().to_string(),
        })?;
    }

    let t = &spec.train;
    let mut optim = AdamW::<B>::new(AdamWConfig { beta1: t.beta1, beta2: t.beta2, eps: t.eps, weight_decay: t.weight_decay });
    optim.no_decay = inject::no_decay(&model, &spec.method).into_iter().collect();
    if let (Some(h), Some(head)) = (t.head_lr, model.clone().head_mut()) {
        // the schedule scales both: the head keeps the ratio head_lr / lr
        for id in [Some(head.weight.id), head.bias.as_ref().map(|b| b.id)].into_iter().flatten() {
            optim.lr_scale.insert(id, h / t.lr.max(f64::MIN_POSITIVE));
        }
    }
    let schedule = WarmupCosine { base_lr: t.lr, warmup_epochs: t.warmup_epochs, epochs: t.epochs, kind: t.schedule };
    let mut metrics: Vec<EpochMetrics> = Vec::new();
    let mut start_epoch = 0;
    let mut rng = Rng::new(t.seed);
    if let Some(c) = checkpoint {
        model = restore(model, c.params).map_err(|e| Error::Checkpoint(format!("{}: {e}", ckpt_path.display())))?;
        optim.import(c.state.optim_step, c.adam, device);
        metrics = c.state.metrics;
        start_epoch = c.state.epochs_done;
        rng = c.state.rng;
        rep.message(&format!("resuming {} after epoch {start_epoch}", out.display()));
    }

    let n_train = data.train.len();
    let subset: Vec<usize> = match t.max_train_images {
        Some(m) if m < n_train => {
            let mut p = Rng::derive(t.seed, streams::SUBSET).permutation(n_train);
            p.truncate(m);
            p
        }
        _ => (0..n_train).collect(),
    };
    let eval_bs = t.eval_batch_size.unwrap_or(t.batch_size);

    for epoch in start_epoch..t.epochs {
        let ctx = EpochCtx {
            method: &spec.method,
            t,
            schedule: &schedule,
            train: &data.train,
            subset: &subset,
            device,
            epochs_done: metrics.len(),
            checkpoint: &ckpt_path,
        };
        let (m, tr) = train_epoch(model, &mut optim, epoch, &ctx, rep)?;
        model = m;

        let (val_acc, test_acc, evaluated, eval_seconds) =
            if t.evaluates_after(epoch + 1) { evaluate_merged(&model, &data, eval_bs, t.max_eval_images, device) } else { (None, None, 0, 0.0) };
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr: tr.lr,
            train_loss: tr.train_loss,
            train_acc: tr.train_acc,
            val_acc,
            test_acc,
            train_seconds: tr.seconds,
            eval_seconds,
            train_images_per_second: subset.len() as f64 / tr.seconds,
            eval_images_per_second: evaluated as f64 / eval_seconds.max(1e-9),
        };
        rep.epoch_end(&m);
        metrics.push(m);
        write_metrics(&dir, &metrics)?;
        let state = RunState {
            epochs_done: epoch + 1,
            optim_step: optim.step,
            metrics: metrics.clone(),
            rng: rng.clone(),
            config_sha256: config_sha.clone(),
            format: Some(FORMAT),
        };
        write_checkpoint(&ckpt_path, &with_masks(params::export_trainable(&model), &mut model), optim.export(), &state)?;
        if control.stop_after_epochs == Some(epoch + 1) && epoch + 1 < t.epochs {
            return Ok(Outcome::Interrupted { epochs_done: epoch + 1 });
        }
    }

    let summary = summary_of::<B>(spec, &metrics, trainable, merged_trainable);
    write_model(
        &dir.model(),
        &with_masks(params::export_trainable(&model), &mut model),
        &backbone,
        &[("run_config_sha256", config_sha), ("format", FORMAT.to_string())],
    )?;
    // the task expert (a full expert is W − W0, so it needs the base weights file)
    let makes_expert = match crate::expert::kind_of(&spec.method) {
        Some(mosa_core::expert::ExpertKind::Full) => spec.weights.is_some(),
        kind => kind.is_some(),
    };
    if makes_expert {
        let origin = crate::expert::Origin::new(spec, &backbone, &summary, &data.dataset);
        let e = crate::expert::expert_of(&model.valid(), &origin, mosa_core::expert::ValueDtype::F32, device)?;
        e.write(&dir.expert()).map_err(Error::Checkpoint)?;
    }
    dir.write_summary(&summary)?;
    Ok(Outcome::Finished(Box::new(summary)))
}

/// Merges (MoSA: mean of the experts; branches folded) and evaluates on the inner backend:
/// validation and test accuracy, images evaluated, seconds.
fn evaluate_merged<B: AutodiffKernels>(
    model: &Backbone<B>,
    data: &Data,
    batch: usize,
    limit: Option<usize>,
    device: &B::Device,
) -> (Option<f64>, Option<f64>, usize, f64) {
    let t1 = Instant::now();
    let eval_model = inject::merged(&model.valid());
    let mut evaluated = 0;
    let mut eval = |s: &Option<LoadedSplit>| {
        s.as_ref().map(|s| {
            let (a, n) = evaluate(&eval_model, s, batch, limit, device);
            evaluated += n;
            a
        })
    };
    let val = eval(&data.val);
    let test = eval(&data.test);
    (val, test, evaluated, t1.elapsed().as_secs_f64())
}

/// The run's summary from its per-epoch metrics.
fn summary_of<B: Kernels>(spec: &RunSpec, metrics: &[EpochMetrics], trainable: usize, merged_trainable: usize) -> Summary {
    let t = &spec.train;
    let Accuracies { best_val_epoch, best_val, test_at_best_val, best_test_epoch, best_test, last_test } = summarize(metrics);
    let total = |f: fn(&EpochMetrics) -> f64| metrics.iter().map(f).sum::<f64>();
    let (ts, es) = (total(|m| m.train_seconds), total(|m| m.eval_seconds));
    Summary {
        dataset: spec.dataset.clone(),
        method: spec.method.name().to_string(),
        model: spec.model_name.clone(),
        epochs: t.epochs,
        trainable_params: trainable,
        merged_trainable_params: merged_trainable,
        test_at_best_val,
        best_val_epoch,
        best_val,
        best_test,
        best_test_epoch,
        last_test,
        train_seconds: ts,
        eval_seconds: es,
        train_images_per_second: total(|m| m.train_images_per_second * m.train_seconds) / ts.max(1e-9),
        eval_images_per_second: total(|m| m.eval_images_per_second * m.eval_seconds) / es.max(1e-9),
        head_init: serde_json::to_value(t.head_init).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
        backend: std::any::type_name::<B>().to_string(),
    }
}

/// Whether `config.json` is already in this build's format (an older run is converted when it
/// is resumed).
fn is_current_format(dir: &RunDir) -> bool {
    std::fs::read_to_string(dir.config())
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("format").and_then(|f| f.as_u64()) == Some(FORMAT as u64))
}

const MASK_PREFIX: &str = "sparse_mask/";

/// Trainable parameters plus the sparse masks (`sparse_mask/<delta path>`), for saving.
fn with_masks<B: Kernels>(mut t: Tensors, model: &mut Backbone<B>) -> Tensors {
    for (path, mask) in inject::sparse_masks(model) {
        t.push((format!("{MASK_PREFIX}{path}"), HostTensor::from_tensor(mask)));
    }
    t
}

/// Loads saved parameters and sparse masks into a freshly built model.
fn restore<B: Kernels>(model: Backbone<B>, mut values: HashMap<String, HostTensor>) -> std::result::Result<Backbone<B>, String> {
    let keys: Vec<String> = values.keys().filter(|k| k.starts_with(MASK_PREFIX)).cloned().collect();
    let masks: HashMap<String, HostTensor> = keys.into_iter().filter_map(|k| values.remove(&k).map(|v| (k[MASK_PREFIX.len()..].to_string(), v))).collect();
    let model = params::load_by_path(model, &values)?;
    if masks.is_empty() { Ok(model) } else { inject::with_sparse_masks(model, &masks) }
}

/// Rebuilds a finished run's model (backbone + saved trainables), merged, for evaluation.
pub fn load_run<B: Kernels>(dir: &Path, device: &B::Device) -> Result<(RunSpec, Backbone<B>, usize)> {
    let (spec, model, nc) = load_run_parts::<B>(dir, device)?;
    Ok((spec, inject::merged(&model), nc))
}

/// Rebuilds a finished run's model as trained (experts and branches not merged).
pub fn load_run_unmerged<B: Kernels>(dir: &Path, device: &B::Device) -> Result<Backbone<B>> {
    Ok(load_run_parts::<B>(dir, device)?.1)
}

fn load_run_parts<B: Kernels>(dir: &Path, device: &B::Device) -> Result<(RunSpec, Backbone<B>, usize)> {
    let rd = RunDir::new(dir);
    let cfg = rd.read_config()?;
    let (spec, nc) = (cfg.run, cfg.dataset.classes);
    let model_path = rd.model();
    let (values, meta) = crate::checkpoint::read_model(&model_path)?;
    // a damaged model is refused, not scored (a run's own training stops at a non-finite loss)
    if let Some((name, t)) = values.iter().find(|(_, t)| t.data.iter().any(|v| !v.is_finite())) {
        return Err(Error::Checkpoint(format!(
            "{}: tensor `{name}` holds {} non-finite value(s); a model with inf or NaN weights is not evaluated",
            model_path.display(),
            t.data.iter().filter(|v| !v.is_finite()).count()
        )));
    }
    let values = if meta.contains_key("mosa.format") { values } else { values.into_iter().map(|(k, v)| (crate::rundir::legacy::path(&k), v)).collect() };
    if let (Some(b), Some(w)) = (meta.get("mosa.backbone"), &spec.weights) {
        let id: BackboneId = serde_json::from_str(b).map_err(|e| Error::Checkpoint(format!("{}: {e}", model_path.display())))?;
        let now = file_sha256(w)?;
        if id.sha256.as_deref() != Some(now.as_str()) {
            return Err(Error::Checkpoint(format!(
                "{}: trained on backbone {} with SHA-256 {}, but {} now has {now}",
                model_path.display(),
                id.model,
                id.sha256.unwrap_or_default(),
                w.display()
            )));
        }
    }
    let model = build_model::<B>(&spec, nc, device)?;
    let model = restore(model, values).map_err(|e| Error::Checkpoint(format!("{}: {e}", model_path.display())))?;
    Ok((spec, model, nc))
}
