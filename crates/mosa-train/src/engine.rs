//! The training loop (our own, not burn-train's `Learner`: the MoSA step needs two stochastic
//! passes with a stop-gradient KL, expert-gradient masking between backward and the optimiser,
//! the reference AdamW, a per-epoch schedule, merge-before-evaluation, and checkpoints that
//! resume bit-for-bit; see docs/training.md).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use mosa_core::optim::{AdamW, AdamWConfig, WarmupCosine};
use mosa_core::sparse::SparseAction;
use mosa_core::{MethodConfig, MethodKind, Rng, method, params};
use mosa_data::{Dataset, DatasetSpec, LoadOptions, LoadedSplit, Transform};
use mosa_models::{HeadPolicy, VisionTransformer, VitConfig};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{BackboneId, RunState, file_sha256, read_checkpoint, write_checkpoint, write_model, write_text};
use crate::config::{HeadInit, TrainConfig};
use crate::loss::{cross_entropy, deepreg, symmetric_kl};
use crate::metrics::{EpochMetrics, Summary, summarize, write_metrics};
use crate::progress::Reporter;
use crate::{Error, Result};

/// Everything that defines a run; saved as the run's `config.json` (a resume must match it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    /// Preset name or config file the model came from (for display).
    pub model_name: String,
    pub model: VitConfig,
    /// Backbone weights (None: random initialisation).
    pub weights: Option<PathBuf>,
    pub method: MethodConfig,
    pub dataset: String,
    pub train: TrainConfig,
    pub skip_unreadable: bool,
}

/// Interrupt a run after this many epochs (tests of `--resume`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Control {
    pub stop_after_epochs: Option<usize>,
}

pub enum Outcome {
    Finished(Box<Summary>),
    Interrupted { epochs_done: usize },
}

/// Methods whose step uses two stochastic passes and the consistency loss.
pub fn two_pass(m: MethodKind) -> bool {
    matches!(m, MethodKind::Mosa | MethodKind::MosaLora)
}

const STREAM_ORDER: u64 = 1 << 40;
const STREAM_EXPERTS: u64 = 2 << 40;
const STREAM_BACKEND: u64 = 3 << 40;
const STREAM_AUGMENT: u64 = 4 << 40;
const STREAM_SPARSE: u64 = 5 << 40;
const STREAM_SUBSET: u64 = 6 << 40;

fn head_init<B: Backend>(mut model: VisionTransformer<B>, init: HeadInit, seed: u64) -> VisionTransformer<B> {
    if let Some(head) = model.head.take() {
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
        let weight = head.weight.map(|_| Tensor::from_data(TensorData::new(w, [d, c]), &device));
        let bias = head.bias.map(|p| p.map(|_| Tensor::from_data(TensorData::new(b, [c]), &device)));
        model.head = Some(burn::nn::Linear { weight, bias });
    }
    model
}

/// Builds the model of a run: backbone (loaded or seeded random), head init, method injected.
pub fn build_model<B: Backend>(spec: &RunSpec, num_classes: usize, device: &B::Device) -> Result<VisionTransformer<B>> {
    let cfg = spec.model.clone().with_num_classes(num_classes).with_img_size(spec.train.resolution);
    B::seed(device, Rng::derive(spec.train.seed, STREAM_BACKEND).next_u64());
    let model = match &spec.weights {
        Some(w) => mosa_models::load_vit::<B>(&cfg, w, HeadPolicy::Skip, device).map_err(|e| Error::Model(e.to_string()))?,
        None => cfg.init::<B>(device),
    };
    let model = head_init(model, spec.train.head_init, spec.train.seed);
    method::apply(model, &spec.method, device).map_err(Error::Model)
}

fn backbone_id(spec: &RunSpec) -> Result<BackboneId> {
    Ok(BackboneId {
        model: spec.model_name.clone(),
        weights: spec.weights.as_ref().map(|p| p.display().to_string()),
        sha256: spec.weights.as_ref().map(|p| file_sha256(p)).transpose()?,
    })
}

/// Accuracy of `model` (evaluation mode: the inner, non-autodiff backend) on a split.
pub fn evaluate<B: Backend>(model: &VisionTransformer<B>, split: &LoadedSplit, batch: usize, limit: Option<usize>, device: &B::Device) -> (f64, usize) {
    let n = limit.map_or(split.len(), |l| l.min(split.len()));
    let idx: Vec<usize> = (0..n).collect();
    let mut correct: Option<Tensor<B, 1, Int>> = None;
    for chunk in idx.chunks(batch.max(1)) {
        let (px, labels) = split.batch(chunk, 0);
        let (x, y) = mosa_data::batcher::to_tensors::<B>(px, &labels, split.transform.size, device);
        let pred = model.forward(x).logits.argmax(1).reshape([chunk.len()]);
        let c = pred.equal(y).int().sum();
        correct = Some(match correct {
            Some(t) => t.add(c),
            None => c,
        });
    }
    let c = correct.map(|t| t.into_scalar().elem::<i64>()).unwrap_or(0);
    (c as f64 / n.max(1) as f64, n)
}

struct Data {
    dataset: Dataset,
    train: LoadedSplit,
    val: Option<LoadedSplit>,
    test: Option<LoadedSplit>,
}

fn load_data(spec: &RunSpec, rep: &mut dyn Reporter) -> Result<Data> {
    let ds_spec: DatasetSpec = spec.dataset.parse()?;
    let dataset = Dataset::open(&ds_spec)?;
    let opts = LoadOptions { skip_unreadable: spec.skip_unreadable, disk_cache: None };
    let s = spec.train.resolution;
    let mut load = |split: &mosa_data::list::Split, train: bool| -> Result<LoadedSplit> {
        let (l, r) = LoadedSplit::load(split, dataset.num_classes, Transform::new(dataset.style, s, train), &opts)?;
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
pub fn run<B: AutodiffBackend>(spec: &RunSpec, out: &Path, resume: bool, control: Control, device: &B::Device, rep: &mut dyn Reporter) -> Result<Outcome> {
    spec.train.validate().map_err(Error::Config)?;
    spec.method.validate().map_err(Error::Config)?;
    std::fs::create_dir_all(out).map_err(|e| Error::Checkpoint(format!("{}: {e}", out.display())))?;
    let ckpt_path = out.join("checkpoint.safetensors");
    let config_path = out.join("config.json");
    let spec_json = serde_json::to_string_pretty(spec).map_err(|e| Error::Config(e.to_string()))?;
    let config_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(spec_json.as_bytes()));
    if !resume {
        check_new_run_dir(out)?;
    }
    let checkpoint = if resume && ckpt_path.exists() {
        let c = read_checkpoint(&ckpt_path)?;
        if c.state.config_sha256 != config_sha {
            return Err(Error::Config(format!("{}: the run was started with other settings (see its config.json); resume with the same settings", out.display())));
        }
        Some(c)
    } else {
        None
    };

    let data = load_data(spec, rep)?;
    let nc = data.dataset.num_classes;
    let mut model = build_model::<B>(spec, nc, device)?;
    let trainable = params::count_trainable(&params::list(&model));
    let merged_trainable = params::count_trainable(&params::list(&model.merged()));
    let backbone = backbone_id(spec)?;
    if checkpoint.is_none() {
        let cfg = serde_json::json!({
            "run": spec,
            "backbone": backbone,
            "dataset": { "name": data.dataset.name, "classes": nc, "style": data.dataset.style, "train": data.train.len(), "val": data.val.as_ref().map(|v| v.len()), "test": data.test.as_ref().map(|v| v.len()) },
            "trainable_params": trainable,
            "backend": std::any::type_name::<B>(),
        });
        write_text(&config_path, &(serde_json::to_string_pretty(&cfg).unwrap_or_default() + "\n"))?;
    }

    let t = &spec.train;
    let mut optim = AdamW::<B>::new(AdamWConfig { beta1: t.beta1, beta2: t.beta2, eps: t.eps, weight_decay: t.weight_decay });
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
            let mut p = Rng::derive(t.seed, STREAM_SUBSET).permutation(n_train);
            p.truncate(m);
            p
        }
        _ => (0..n_train).collect(),
    };
    let steps = subset.len().div_ceil(t.batch_size);
    let eval_bs = t.eval_batch_size.unwrap_or(t.batch_size);
    let two = two_pass(spec.method.method) && (t.kl_weight > 0.0 || t.deepreg);

    for epoch in start_epoch..t.epochs {
        let t0 = Instant::now();
        B::seed(device, Rng::derive(t.seed, STREAM_BACKEND + 1 + epoch as u64).next_u64());
        let perm = Rng::derive(t.seed, STREAM_ORDER + epoch as u64).permutation(subset.len());
        let mut experts = Rng::derive(t.seed, STREAM_EXPERTS + epoch as u64);
        let mut sparse_rng = Rng::derive(t.seed, STREAM_SPARSE + epoch as u64);
        rep.epoch_start(epoch + 1, t.epochs, steps);
        let mut pending: Vec<Tensor<B::InnerBackend, 1>> = Vec::new();
        let mut loss_sum = 0.0;
        let mut correct: Option<Tensor<B::InnerBackend, 1, Int>> = None;
        let mut lr_last = 0.0;
        for step in 0..steps {
            let idx: Vec<usize> = perm[step * t.batch_size..((step + 1) * t.batch_size).min(perm.len())].iter().map(|&p| subset[p]).collect();
            let lr = schedule.lr(epoch, step, steps);
            lr_last = lr;
            let aug_seed = Rng::derive(t.seed, STREAM_AUGMENT + (epoch * steps + step) as u64).next_u64();
            let (px, labels) = data.train.batch(&idx, aug_seed);
            let (x, y) = mosa_data::batcher::to_tensors::<B>(px, &labels, t.resolution, device);
            let out1 = model.forward_rng(x.clone(), two && t.deepreg, &mut experts);
            let mut loss = cross_entropy(out1.logits.clone(), y.clone());
            if two {
                let out2 = model.forward_rng(x, t.deepreg, &mut experts);
                if t.kl_weight > 0.0 {
                    loss = loss.add(symmetric_kl(out1.logits.clone(), out2.logits).mul_scalar(t.kl_weight));
                }
                if t.deepreg {
                    loss = loss.add(deepreg(&out1.hidden, &out2.hidden).mul_scalar(t.deepreg_weight));
                }
            }
            let c = out1.logits.inner().argmax(1).reshape([idx.len()]).equal(y.inner()).int().sum();
            correct = Some(match correct {
                Some(a) => a.add(c),
                None => c,
            });
            pending.push(loss.clone().inner());
            let mut grads = GradientsParams::from_grads(loss.backward(), &model);
            if spec.method.method == MethodKind::Sparse && spec.method.sparse.action(epoch, step) == SparseAction::Reselect {
                model = model.reselect_sparse(&grads, &spec.method.sparse, &mut sparse_rng);
                // entries that left the mask start again from zero moments
                for (path, mask) in model.sparse_masks() {
                    let n = mask.shape().num_elements();
                    optim.mask_moments(&path, mask.inner().reshape([n]));
                }
            }
            model.mask_gradients(&mut grads);
            model = optim.step(lr, model, grads);
            if pending.len() >= t.sync_every.max(1) || step + 1 == steps {
                let first = step + 1 - pending.len();
                let values = Tensor::cat(std::mem::take(&mut pending), 0).into_data().to_vec::<f32>().unwrap_or_default();
                for (k, v) in values.iter().enumerate() {
                    if !v.is_finite() {
                        return Err(Error::NonFinite {
                            epoch: epoch + 1,
                            step: first + k + 1,
                            value: *v,
                            kept: if !metrics.is_empty() { format!("the last good checkpoint (epoch {}) is kept in {}", metrics.len(), ckpt_path.display()) } else { "no epoch had finished, so there is no checkpoint".into() },
                        });
                    }
                    loss_sum += *v as f64;
                }
                rep.step(step + 1, loss_sum / (step + 1) as f64);
            }
        }
        let train_seconds = t0.elapsed().as_secs_f64();
        let train_acc = correct.map(|c| c.into_scalar().elem::<i64>()).unwrap_or(0) as f64 / subset.len() as f64;

        // merge (MoSA: mean of the experts), then evaluate on the inner backend
        let t1 = Instant::now();
        let eval_model = model.valid().merged();
        let inner_device = device;
        let mut evaluated = 0;
        let mut eval = |s: &Option<LoadedSplit>| {
            s.as_ref().map(|s| {
                let (a, n) = evaluate(&eval_model, s, eval_bs, t.max_eval_images, inner_device);
                evaluated += n;
                a
            })
        };
        let val_acc = eval(&data.val);
        let test_acc = eval(&data.test);
        let eval_seconds = t1.elapsed().as_secs_f64();
        let m = EpochMetrics {
            epoch: epoch + 1,
            lr: lr_last,
            train_loss: loss_sum / steps as f64,
            train_acc,
            val_acc,
            test_acc,
            train_seconds,
            eval_seconds,
            train_images_per_second: subset.len() as f64 / train_seconds,
            eval_images_per_second: evaluated as f64 / eval_seconds.max(1e-9),
        };
        rep.epoch_end(&m);
        metrics.push(m);
        write_metrics(out, &metrics)?;
        let state = RunState { epochs_done: epoch + 1, optim_step: optim.step, metrics: metrics.clone(), rng: rng.clone(), config_sha256: config_sha.clone() };
        write_checkpoint(&ckpt_path, &with_masks(params::export_trainable(&model), &model), &optim.export(), &state)?;
        if control.stop_after_epochs == Some(epoch + 1) && epoch + 1 < t.epochs {
            return Ok(Outcome::Interrupted { epochs_done: epoch + 1 });
        }
    }

    let (best_val_epoch, best_val, test_at_best_val, best_test_epoch, best_test, last_test) = summarize(&metrics);
    let total = |f: fn(&EpochMetrics) -> f64| metrics.iter().map(f).sum::<f64>();
    let (ts, es) = (total(|m| m.train_seconds), total(|m| m.eval_seconds));
    let summary = Summary {
        dataset: spec.dataset.clone(),
        method: serde_json::to_value(spec.method.method).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
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
    };
    write_model(&out.join("model.safetensors"), &with_masks(params::export_trainable(&model), &model), &backbone, &[("run_config_sha256", config_sha)])?;
    write_text(&out.join("summary.json"), &(serde_json::to_string_pretty(&summary).unwrap_or_default() + "\n"))?;
    Ok(Outcome::Finished(Box::new(summary)))
}

const MASK_PREFIX: &str = "sparse_mask/";

/// Trainable parameters plus the sparse masks (`sparse_mask/<delta path>`), for saving.
fn with_masks<B: Backend>(mut t: crate::checkpoint::Tensors, model: &VisionTransformer<B>) -> crate::checkpoint::Tensors {
    for (path, mask) in model.sparse_masks() {
        let shape = mask.dims().to_vec();
        t.push((format!("{MASK_PREFIX}{path}"), shape, mask.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default()));
    }
    t
}

/// Loads saved parameters and sparse masks into a freshly built model.
fn restore<B: Backend>(model: VisionTransformer<B>, mut values: HashMap<String, (Vec<usize>, Vec<f32>)>) -> std::result::Result<VisionTransformer<B>, String> {
    let masks: HashMap<String, (Vec<usize>, Vec<f32>)> = values.keys().filter(|k| k.starts_with(MASK_PREFIX)).cloned().collect::<Vec<_>>().into_iter().filter_map(|k| values.remove(&k).map(|v| (k[MASK_PREFIX.len()..].to_string(), v))).collect();
    let model = params::load_by_path(model, &values)?;
    if masks.is_empty() { Ok(model) } else { model.with_sparse_masks(&masks) }
}

/// Refuses to start a new run in a directory that already holds one.
pub fn check_new_run_dir(out: &Path) -> Result<()> {
    if out.join("checkpoint.safetensors").exists() || out.join("summary.json").exists() {
        return Err(Error::Config(format!("{} already holds a run; use --resume to continue it or another --out", out.display())));
    }
    Ok(())
}

/// A run directory's saved settings (`config.json`): the run spec and the number of classes.
pub fn read_run_config(dir: &Path) -> Result<(RunSpec, usize)> {
    let cfg_path = dir.join("config.json");
    let err = |e: &dyn std::fmt::Display| Error::Checkpoint(format!("{}: {e}", cfg_path.display()));
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| err(&e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(&e))?;
    let spec: RunSpec = serde_json::from_value(v["run"].clone()).map_err(|e| err(&e))?;
    let nc = v["dataset"]["classes"].as_u64().ok_or_else(|| err(&"no dataset.classes"))? as usize;
    Ok((spec, nc))
}

/// Rebuilds a finished run's model (backbone + saved trainables), merged, for evaluation.
pub fn load_run<B: Backend>(dir: &Path, device: &B::Device) -> Result<(RunSpec, VisionTransformer<B>, usize)> {
    let (spec, nc) = read_run_config(dir)?;
    let model_path = dir.join("model.safetensors");
    let (values, meta) = crate::checkpoint::read_model(&model_path)?;
    if let (Some(b), Some(w)) = (meta.get("mosa.backbone"), &spec.weights) {
        let id: BackboneId = serde_json::from_str(b).map_err(|e| Error::Checkpoint(format!("{}: {e}", model_path.display())))?;
        let now = file_sha256(w)?;
        if id.sha256.as_deref() != Some(now.as_str()) {
            return Err(Error::Checkpoint(format!("{}: trained on backbone {} with SHA-256 {}, but {} now has {now}", model_path.display(), id.model, id.sha256.unwrap_or_default(), w.display())));
        }
    }
    let model = build_model::<B>(&spec, nc, device)?;
    let model = restore(model, values).map_err(|e| Error::Checkpoint(format!("{}: {e}", model_path.display())))?;
    Ok((spec, model.merged(), nc))
}
