//! `mosa train` and `mosa eval`: fine-tuning runs with the MoSA recipe, and evaluation of a saved run.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use mosa_data::{Dataset, LoadOptions, LoadedSplit, Transform};
use mosa_models::{presets, weights};
use mosa_train::optim::ScheduleKind;
use mosa_train::progress::Console;
use mosa_train::step::PassLayout;
use mosa_train::{Control, HeadInit, Outcome, RunSpec, TrainConfig};

use crate::backend::{self, Backend, TrainBackend};
use crate::method_args::MethodArgs;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Backbone: a preset (`mosa info` lists them) or a model config JSON, as `mosa forward`.
    #[arg(long, default_value = "dinov2-vits14")]
    model: String,
    /// Backbone weights: a file (.safetensors/.npz/.onnx) or a known name (fetched if missing).
    /// Default: the preset's known weights; `none` trains from random initialisation.
    #[arg(long)]
    weights: Option<String>,
    /// `vtab:<root>/<task>`, `fgvc:<root>/<name>`, `folder:<path>` or `list:<file>`.
    #[arg(long)]
    dataset: Option<String>,
    /// Run directory (config, checkpoint, metrics, summary, trained weights).
    #[arg(long)]
    out: PathBuf,
    /// Continue the interrupted run in --out with its saved settings.
    #[arg(long)]
    resume: bool,
    /// Recipe file (TOML, keys as the flags below with `_`); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    method: MethodArgs,
    /// The run's one seed: masks, expert draws, order, augmentation, init [default 3407].
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    epochs: Option<usize>,
    /// Linear warm-up epochs [default: 10% of --epochs, the reference's 10 of 100].
    #[arg(long)]
    warmup_epochs: Option<usize>,
    /// Base learning rate (reference: 0.005 on VTAB-1k).
    #[arg(long)]
    lr: Option<f64>,
    /// The head's own learning rate (default: --lr), on the same schedule.
    #[arg(long)]
    head_lr: Option<f64>,
    /// per-epoch (reference) or per-step.
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    eval_batch_size: Option<usize>,
    /// Input side in pixels (reference: 224).
    #[arg(long)]
    resolution: Option<usize>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    eps: Option<f64>,
    /// Weight of the symmetric KL between MoSA's two passes (0 = one pass).
    #[arg(long)]
    kl_weight: Option<f64>,
    /// DEEPREG on blocks 0..5 (reference: Stanford Cars).
    #[arg(long)]
    deepreg: bool,
    /// zero (default) or reference (kaiming-normal, bias −ln 99).
    #[arg(long, value_enum)]
    head_init: Option<HeadInit>,
    /// The backbone's dropout in training, the reference's pattern: after the position embedding
    /// and in the MLP at this rate, attention 0 (the reference: 0.1 on ViT-B/16) [default: none].
    #[arg(long)]
    backbone_dropout: Option<f64>,
    /// Train on this list instead of the dataset's training split (VTAB-1k: `train800`, the
    /// tuning protocol's search split; default `train800val200`).
    #[arg(long)]
    train_split: Option<String>,
    #[arg(long)]
    max_train_images: Option<usize>,
    #[arg(long)]
    max_eval_images: Option<usize>,
    /// Evaluate after every K-th epoch and after the last [default: every epoch].
    #[arg(long)]
    eval_every: Option<usize>,
    #[arg(long)]
    sync_every: Option<usize>,
    /// Skip unreadable images (with a warning and a count) instead of failing.
    #[arg(long)]
    skip_unreadable: bool,
    /// Stop after this many epochs as if interrupted (tests of --resume).
    #[arg(long, hide = true)]
    stop_after: Option<usize>,
    /// The linear probe: recompute the frozen backbone's features every epoch instead of once
    /// (the same numbers, slower; to check that they are the same).
    #[arg(long)]
    recompute_probe_features: bool,
    /// MoSA / MoSA-LoRA: `stacked` runs the two passes as one forward over [x; x], `separate`
    /// as two forwards (the same step up to float rounding and the dropout masks' order; slower
    /// where a batch leaves the cores short of work) [default: stacked].
    #[arg(long, value_enum)]
    passes: Option<PassLayout>,
}

/// A new run's recipe: the file's (or the defaults), then the flags. Unless the warm-up is given
/// (flag or file), it follows the run's length: 10% of the epochs, the reference's 10 of 100.
fn recipe(a: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let (mut t, warmup_in_file) = match &a.config {
        Some(p) => (recipe_file(p)?, recipe_keys(p)?.iter().any(|k| k == "warmup_epochs")),
        None => (TrainConfig::default(), false),
    };
    if a.warmup_epochs.is_none() && !warmup_in_file {
        t.warmup_epochs = a.epochs.unwrap_or(t.epochs) / 10;
    }
    recipe_on(t, a)
}

/// The keys a recipe file sets.
fn recipe_keys(p: &Path) -> anyhow::Result<Vec<String>> {
    let text = mosa_core::fsio::read_text(p, mosa_core::fsio::caps::CONFIG).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    let v: toml::Table = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e.to_string().replace('\n', " ")))?;
    Ok(v.keys().cloned().collect())
}

fn recipe_file(p: &Path) -> anyhow::Result<TrainConfig> {
    let text = mosa_core::fsio::read_text(p, mosa_core::fsio::caps::CONFIG).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    toml::from_str::<TrainConfig>(&text).map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e.to_string().replace('\n', " ")))
}

/// The flags given, applied on top of a recipe.
fn recipe_on(mut t: TrainConfig, a: &TrainArgs) -> anyhow::Result<TrainConfig> {
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { t.$f = v; } )* };
    }
    set!(epochs, warmup_epochs, lr, schedule, batch_size, resolution, weight_decay, eps, kl_weight, head_init, sync_every, seed);
    if a.head_lr.is_some() {
        t.head_lr = a.head_lr;
    }
    if a.passes.is_some() {
        t.passes = a.passes;
    }
    if a.eval_batch_size.is_some() {
        t.eval_batch_size = a.eval_batch_size;
    }
    if a.train_split.is_some() {
        t.train_split = a.train_split.clone();
    }
    if a.max_train_images.is_some() {
        t.max_train_images = a.max_train_images;
    }
    if a.max_eval_images.is_some() {
        t.max_eval_images = a.max_eval_images;
    }
    if a.eval_every.is_some() {
        t.eval_every = a.eval_every;
    }
    if a.deepreg {
        t.deepreg = true;
    }
    if a.backbone_dropout.is_some() {
        t.backbone_dropout = a.backbone_dropout;
    }
    t.validate().map_err(anyhow::Error::msg)?;
    Ok(t)
}

fn resolve_weights(model: &str, w: Option<&str>) -> anyhow::Result<Option<PathBuf>> {
    let name = match w {
        Some("none") => return Ok(None),
        Some(w) if Path::new(w).exists() => return Ok(Some(PathBuf::from(w))),
        Some(w) => w.to_string(),
        None if weights::known(model).is_ok() => model.to_string(),
        None => bail!("no --weights for `{model}`: give a file, a known name, or `none` for random initialisation"),
    };
    let f = weights::fetch(&name, None, &mut |l| eprintln!("{l}")).with_context(|| format!("weights `{name}` (not a file, so taken as a known name)"))?;
    Ok(Some(f.path().to_path_buf()))
}

/// The flags `--resume` accepts whatever their value: they do not define the run.
const RESUME_FREE: [&str; 4] = ["out", "resume", "stop_after", "recompute_probe_features"];

/// The flags given with `--resume` that would change the saved run (issue #11 case 3): every
/// flag that defines the run must be absent or equal to the saved value. None may change it: the
/// schedule, the masks and the expert draws of the epochs already trained depend on all of them
/// (extending `--epochs` too: the cosine schedule of the finished epochs depends on the total).
fn resume_conflicts(a: &TrainArgs, given: &[String], saved: &RunSpec) -> anyhow::Result<Vec<String>> {
    let flag = |id: &str| format!("--{}", id.replace('_', "-"));
    let base = match &a.config {
        Some(p) => recipe_file(p)?,
        None => saved.train.clone(),
    };
    let (now, was) = (serde_json::to_value(recipe_on(base, a)?)?, serde_json::to_value(&saved.train)?);
    let all_method_ids = MethodArgs::ids();
    let method_ids: Vec<&String> = given.iter().filter(|id| all_method_ids.contains(id)).collect();
    let mut bad = Vec::new();
    for id in given.iter().filter(|id| !RESUME_FREE.contains(&id.as_str()) && !method_ids.contains(id)) {
        let differs = match id.as_str() {
            "model" => a.model != saved.model_name,
            "dataset" => a.dataset.as_deref() != Some(saved.dataset.as_str()),
            "skip_unreadable" => a.skip_unreadable != saved.skip_unreadable,
            "weights" => {
                let w = resolve_weights(&a.model, a.weights.as_deref())?;
                let canon = |p: &Option<PathBuf>| p.as_ref().map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()));
                canon(&w) != canon(&saved.weights)
            }
            "config" => now != was,
            id => now.get(id) != was.get(id),
        };
        if differs {
            let show = |v: Option<&serde_json::Value>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            bad.push(match (now.get(id.as_str()), was.get(id.as_str())) {
                (n @ Some(_), w @ Some(_)) => format!("{} {} (saved: {})", flag(id), show(n), show(w)),
                _ => flag(id),
            });
        }
    }
    if !method_ids.is_empty() && serde_json::to_value(a.method.method()?)? != serde_json::to_value(&saved.method)? {
        bad.push(format!("{} (the saved method: {})", method_ids.iter().map(|id| flag(id)).collect::<Vec<_>>().join(" "), saved.method.name()));
    }
    Ok(bad)
}

/// `given`: the ids of the flags given on the command line.
pub fn train(a: TrainArgs, given: &[String]) -> anyhow::Result<()> {
    let spec = if a.resume {
        let spec = mosa_train::RunDir::new(&a.out).read_config().with_context(|| format!("--resume: no run in {}", a.out.display()))?.run;
        let bad = resume_conflicts(&a, given, &spec)?;
        if !bad.is_empty() {
            bail!(
                "--resume continues the run in {} with its saved settings (config.json), and {} would change it; leave {} out (flags equal to the saved values are accepted), or start a new run with another --out",
                a.out.display(),
                bad.join(", "),
                if bad.len() == 1 { "it" } else { "them" }
            );
        }
        spec
    } else {
        let dataset = a.dataset.clone().context("--dataset is required (vtab:<root>/<task>, fgvc:<root>/<name>, folder:<path>)")?;
        RunSpec {
            model_name: a.model.clone(),
            model: presets::resolve_model(&a.model)?,
            weights: resolve_weights(&a.model, a.weights.as_deref())?,
            method: a.method.method()?,
            dataset,
            train: recipe(&a)?,
            skip_unreadable: a.skip_unreadable,
        }
    };
    if !a.resume {
        // before the header line, so that the refusal is the only thing printed
        mosa_train::RunDir::new(&a.out).check_new()?;
    }
    let t = &spec.train;
    let header = format!(
        "mosa train: {} on {}{} with {} | {} epochs (warm-up {}), lr {} {:?}, batch {}, {} px, seed {}, head init {:?}, backend {}",
        spec.model_name,
        spec.dataset,
        t.train_split.as_ref().map(|s| format!(" (trained on {s})")).unwrap_or_default(),
        spec.method.name(),
        t.epochs,
        t.warmup_epochs,
        t.lr,
        t.schedule,
        t.batch_size,
        t.resolution,
        t.seed,
        t.head_init,
        backend::NAME
    );
    let device = backend::device();
    let mut rep = Console::new("").with_header(header);
    match mosa_train::run::<TrainBackend>(
        &spec,
        &a.out,
        a.resume,
        Control { stop_after_epochs: a.stop_after, recompute_probe_features: a.recompute_probe_features },
        &device,
        &mut rep,
    )? {
        Outcome::Interrupted { epochs_done } => eprintln!("stopped after epoch {epochs_done}; continue with `mosa train --resume --out {}`", a.out.display()),
        Outcome::Finished(s) => {
            let pct = |v: Option<f64>| v.map(|x| format!("{:.2}", 100.0 * x)).unwrap_or_else(|| "-".into());
            println!("| dataset | method | trainable (M) | test @ best val (epoch) | best test (epoch) | last test | train img/s | eval img/s |");
            println!("|---|---|---:|---:|---:|---:|---:|---:|");
            println!(
                "| {} | {} | {:.4} | {} ({}) | {} ({}) | {} | {:.1} | {:.1} |",
                s.dataset,
                s.method,
                s.merged_trainable_params as f64 / 1e6,
                pct(s.test_at_best_val),
                s.best_val_epoch.map(|e| e.to_string()).unwrap_or("-".into()),
                pct(s.best_test),
                s.best_test_epoch.map(|e| e.to_string()).unwrap_or("-".into()),
                pct(s.last_test),
                s.train_images_per_second,
                s.eval_images_per_second
            );
            println!(
                "accuracies in %: `test @ best val` = test accuracy at the epoch of best val200 accuracy (val200 is inside the VTAB training set); `best test` = best over epochs (optimistic); `last test` = after the final epoch. Run files: {}",
                a.out.display()
            );
        }
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A finished `mosa train` run directory.
    #[arg(long, conflicts_with_all = ["weights", "task"])]
    run: Option<PathBuf>,
    /// A merged model (`mosa merge --out`); with --task.
    #[arg(long, requires = "task")]
    weights: Option<PathBuf>,
    /// The task(s) of the merged model to evaluate, comma-separated: each with its own head on
    /// the merged backbone (the file is read once).
    #[arg(long, requires = "weights", value_delimiter = ',')]
    task: Vec<String>,
    /// Dataset to evaluate on (default: the run's, or the task's; one task only).
    #[arg(long)]
    dataset: Option<String>,
    /// Split: test, val or train.
    #[arg(long, default_value = "test")]
    split: String,
    /// Score only the split's first N images (the subset `mosa train --max-eval-images N` scores).
    #[arg(long)]
    max_images: Option<usize>,
    /// Print one JSON object per evaluated model instead of the table.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

/// One model to evaluate: the model, its default dataset and resolution, its classes, and what it is.
struct EvalModel {
    model: mosa_models::Backbone<Backend>,
    dataset: String,
    resolution: usize,
    /// The run's VTAB resize (merged models: today's default).
    vtab_resize: mosa_data::VtabResize,
    classes: usize,
    what: String,
    task: Option<String>,
}

/// The models `mosa eval` scores: the run's, or one per task of the merged model.
fn eval_models(a: &EvalArgs, device: &burn::tensor::Device<Backend>) -> anyhow::Result<Vec<EvalModel>> {
    if let Some(run) = &a.run {
        let (spec, model, classes) = mosa_train::rundir::load_run::<Backend>(run, device)?;
        return Ok(vec![EvalModel {
            model,
            dataset: spec.dataset.clone(),
            resolution: spec.train.resolution,
            vtab_resize: spec.train.vtab_resize,
            classes,
            what: run.display().to_string(),
            task: None,
        }]);
    }
    let Some(w) = &a.weights else { bail!("give --run <dir>, or --weights <merged model> --task <name>") };
    if a.task.len() > 1 && a.dataset.is_some() {
        bail!("--dataset applies to one --task, not {}", a.task.len());
    }
    let merged = mosa_train::merged::read_merged(w)?;
    a.task
        .iter()
        .map(|task| {
            let (model, info, resolution) = merged.task_model::<Backend>(task, device)?;
            Ok(EvalModel {
                classes: model.num_classes(),
                model,
                dataset: info.dataset,
                resolution,
                vtab_resize: Default::default(),
                what: format!("{} task {task}", w.display()),
                task: Some(task.clone()),
            })
        })
        .collect()
}

pub fn eval(a: EvalArgs) -> anyhow::Result<()> {
    if a.max_images == Some(0) {
        bail!("--max-images must be at least 1");
    }
    let device = backend::device();
    let models = eval_models(&a, &device)?;
    if !a.json {
        println!("| run | dataset | split | images | accuracy % | images/s |");
        println!("|---|---|---|---:|---:|---:|");
    }
    for m in models {
        let ds = Dataset::open(&a.dataset.clone().unwrap_or(m.dataset).parse()?)?;
        let split = mosa_train::evaluate::split_for(&ds, &a.split, m.classes)?;
        // only the scored images are decoded
        let mut split = split.clone();
        if let Some(n) = a.max_images {
            split.entries.truncate(n);
        }
        mosa_train::memory::Footprint { images: split.entries.len(), resolution: m.resolution, batch: a.batch_size, params: 0.0, training: false }
            .check(&format!("evaluating {} at {} px", m.what, m.resolution))?;
        let (loaded, _) =
            LoadedSplit::load(&split, m.classes, Transform::new(ds.style, m.resolution, false).with_vtab_resize(m.vtab_resize), &LoadOptions::default())?;
        let t0 = std::time::Instant::now();
        let (acc, n) = mosa_train::evaluate::evaluate(&m.model, &loaded, a.batch_size, None, &device);
        let secs = t0.elapsed().as_secs_f64();
        if a.json {
            println!(
                "{}",
                serde_json::json!({ "model": m.what, "task": m.task, "dataset": ds.spec.to_string(), "split": a.split, "images": n, "accuracy": acc, "images_per_second": n as f64 / secs })
            );
        } else {
            println!("| {} | {} | {} | {n} | {:.2} | {:.1} |", m.what, ds.spec, a.split, 100.0 * acc, n as f64 / secs);
        }
    }
    Ok(())
}
