//! The run: build the model, train epoch by epoch ([`crate::epoch`]), merge and evaluate after
//! each ([`crate::evaluate`]), checkpoint atomically, resume, finish with the summary. Our own
//! loop, not burn-train's `Learner`: the MoSA step needs two stochastic passes with a
//! stop-gradient KL, expert-gradient masking between backward and the optimiser, the reference
//! AdamW, a per-epoch schedule, merge-before-evaluation, and checkpoints that resume
//! bit-for-bit (docs/training.md). Nothing here names a backbone family or a method.

use mosa_kernels::{AutodiffKernels, Kernels};
use std::path::Path;
use std::time::Instant;

use crate::optim::{AdamW, AdamWConfig, WarmupCosine};
use burn::module::AutodiffModule;
use mosa_core::{PeftHost, Rng, inject, params};
use mosa_data::{Dataset, DatasetSpec, LoadOptions, LoadedSplit, Transform};
use mosa_models::Backbone;

use crate::checkpoint::{RunState, read_checkpoint, write_checkpoint};
use crate::config::RunSpec;
use crate::epoch::{EpochCtx, streams, train_epoch};
use crate::evaluate::evaluate;
use crate::metrics::{Accuracies, EpochMetrics, Summary, summarize};
use crate::model::{build_model, model_config};
use crate::progress::Reporter;
use crate::rundir::{BackboneId, DatasetInfo, FORMAT, RunConfig, RunDir, file_sha256, restore, with_masks, write_model};
use crate::step::PassLayout;
use crate::{Error, Result};

/// How a run is driven, beyond its spec (nothing here changes its numbers).
#[derive(Debug, Clone, Copy, Default)]
pub struct Control {
    /// Interrupt the run after this many epochs (tests of `--resume`).
    pub stop_after_epochs: Option<usize>,
    /// Recompute the linear probe's features every epoch instead of once ([`crate::probe`]; the
    /// test that both give the same run).
    pub recompute_probe_features: bool,
}

pub enum Outcome {
    Finished(Box<Summary>),
    Interrupted { epochs_done: usize },
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

/// `spec` with a two-pass method's layout decided: the caller's; else, resuming, the saved run's
/// (none recorded: a run from before the layout was, which ran two forwards); else stacked.
fn with_pass_layout(spec: &RunSpec, resume: bool, out: &Path) -> Result<RunSpec> {
    let mut s = spec.clone();
    if s.train.passes.is_none() && crate::step::two_passes(&s.method, &s.train) {
        let dir = RunDir::new(out);
        s.train.passes = if resume && dir.config().exists() { dir.read_config()?.run.train.passes } else { Some(PassLayout::Stacked) };
    }
    Ok(s)
}

/// Trains (or resumes) a run into `out`.
pub fn run<B: AutodiffKernels>(spec: &RunSpec, out: &Path, resume: bool, control: Control, device: &B::Device, rep: &mut dyn Reporter) -> Result<Outcome> {
    let spec = &with_pass_layout(spec, resume, out)?;
    spec.train.validate().map_err(|e| Error::Config(e.to_string()))?;
    spec.method.validate().map_err(|e| Error::Config(e.to_string()))?;
    // the lists and the model's size are checked before anything is written or decoded
    let dataset = open_dataset(spec)?;
    let cfg = model_config(spec, dataset.num_classes)?;
    // the memory the run will hold, bounded before anything is decoded or built
    let t = &spec.train;
    let images = t.train_images(dataset.train.entries.len())
        + [dataset.val.as_ref(), dataset.test.as_ref()].into_iter().flatten().map(|s| t.eval_images(s.entries.len())).sum::<usize>();
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
    // the linear probe without augmentation or dropout: its features once, not every epoch
    // (their time counts as training time of the first epoch this process trains)
    let mut features_seconds = 0.0;
    let features = (!control.recompute_probe_features && crate::probe::applies(spec, &data.train)).then(|| {
        let t0 = std::time::Instant::now();
        let f = crate::probe::Features::compute(&model, &data.train, t.batch_size, device);
        features_seconds = t0.elapsed().as_secs_f64();
        rep.message(&format!(
            "linear probe: the frozen backbone's features of the {} training images computed once in {features_seconds:.1} s",
            data.train.len()
        ));
        f
    });

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
            features: features.as_ref(),
            passes: spec.train.passes.unwrap_or(PassLayout::Separate),
        };
        let (m, mut tr) = train_epoch(model, &mut optim, epoch, &ctx, rep)?;
        model = m;
        tr.seconds += std::mem::take(&mut features_seconds);

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
        dir.write_metrics(&metrics)?;
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
        e.write(&dir.expert()).map_err(|e| Error::Checkpoint(e.to_string()))?;
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
