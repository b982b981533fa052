//! The typed run directory, shared by the engine, `mosa eval`, xtask and the coming merge:
//! every file name, the `config.json` and `summary.json` types, and the reading of directories
//! written before this layout (formats 1–3, [`legacy`]); the backbone's identity ([`BackboneId`]),
//! the saved model's tensors and masks, and the rebuilding of a finished run ([`load_run`]).
//!
//! | file | what |
//! |---|---|
//! | `config.json` | [`RunConfig`]: format, the [`RunSpec`], backbone identity, dataset sizes |
//! | `checkpoint.safetensors` | trainables, sparse masks, AdamW moments, [`crate::checkpoint::RunState`] |
//! | `model.safetensors` | what trains (+ `sparse_mask/…`), with the backbone identity |
//! | `metrics.jsonl`, `metrics.csv` | one line per epoch |
//! | `expert.safetensors` | the task expert of a `sparse`, `lora` or `full` run (`mosa_core::expert`) |
//! | `summary.json` | [`Summary`], written when the run finishes |

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mosa_core::host::{HostTensor, NamedTensors};
use mosa_core::{inject, params};
use mosa_kernels::Kernels;
use mosa_models::Backbone;
use serde::{Deserialize, Serialize};

use crate::config::RunSpec;
use crate::metrics::{EpochMetrics, Summary};
use crate::{Error, Result};

pub mod legacy;

/// The layout version this build writes. Formats 1 (no `format` key), 2 and 3 are read and
/// converted ([`legacy`]): 3 records the adapters' LayerNorm epsilon (`norm_eps`), which 1 and 2
/// left at PyTorch's 1e-5; 4 records the adapters' activation and a sequential adapter's
/// position, which 1–3 fixed per method (GELU but ReLU for Pfeiffer and SiLU for Houlsby; on the
/// sublayer's output before the residual), the pruned adapter's construction and LoRA's default
/// targets.
pub const FORMAT: u32 = 4;

/// The dataset a run was trained on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub name: String,
    pub classes: usize,
    pub style: serde_json::Value,
    pub train: usize,
    pub val: Option<usize>,
    pub test: Option<usize>,
    /// [`mosa_data::Dataset::fingerprint`] of the lists (absent in runs before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunConfig {
    pub format: u32,
    pub run: RunSpec,
    pub backbone: BackboneId,
    pub dataset: DatasetInfo,
    pub trainable_params: usize,
    pub backend: String,
}

/// The exclusive lock on a run directory ([`RunDir::lock`]), released when dropped.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
    pub fn config(&self) -> PathBuf {
        self.path.join("config.json")
    }
    pub fn checkpoint(&self) -> PathBuf {
        self.path.join("checkpoint.safetensors")
    }
    pub fn model(&self) -> PathBuf {
        self.path.join("model.safetensors")
    }
    /// The task expert of a `sparse`, `lora` or `full` run (`mosa_core::expert`).
    pub fn expert(&self) -> PathBuf {
        self.path.join("expert.safetensors")
    }
    pub fn summary_path(&self) -> PathBuf {
        self.path.join("summary.json")
    }
    pub fn metrics_jsonl(&self) -> PathBuf {
        self.path.join("metrics.jsonl")
    }
    pub fn metrics_csv(&self) -> PathBuf {
        self.path.join("metrics.csv")
    }

    /// Every file the run directory owns by name (what other commands may not write there).
    pub fn own_files(&self) -> [PathBuf; 8] {
        [self.config(), self.checkpoint(), self.model(), self.expert(), self.summary_path(), self.metrics_jsonl(), self.metrics_csv(), self.lock_file()]
    }

    /// Whether the run finished (its summary exists).
    pub fn finished(&self) -> bool {
        self.summary_path().exists()
    }

    /// Whether the run has a checkpoint to resume from.
    pub fn resumable(&self) -> bool {
        self.checkpoint().exists()
    }

    /// The directory's lock file (`.lock`; kept, holds the last holder's pid).
    pub fn lock_file(&self) -> PathBuf {
        self.path.join(".lock")
    }

    /// Takes the directory's exclusive lock for as long as the returned guard lives; the OS
    /// releases it when the process ends, also when it is killed. A second run on the directory is
    /// refused with the holder's pid.
    pub fn lock(&self) -> Result<RunLock> {
        use std::io::{Read, Seek, Write};
        let p = self.lock_file();
        let err = |e: &dyn std::fmt::Display| Error::Checkpoint(format!("{}: {e}", p.display()));
        let mut f = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&p).map_err(|e| err(&e))?;
        match f.try_lock() {
            Ok(()) => {
                f.set_len(0).and_then(|_| f.rewind()).and_then(|_| writeln!(f, "{}", std::process::id())).map_err(|e| err(&e))?;
                Ok(RunLock { _file: f })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = f.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() { "another process".to_string() } else { format!("process {holder}") };
                Err(Error::Config(format!("{} is in use by another mosa run ({who}); wait for it to end or use another --out", self.path.display())))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(err(&e)),
        }
    }

    /// Refuses to start a new run in a directory that holds anything: a run (started, interrupted
    /// or finished: only `--resume` touches it) or files that are not a run (never touched). Only
    /// the lock file and a killed writer's temporary files may be there.
    pub fn check_new(&self) -> Result<()> {
        let p = self.path.display();
        if self.path.exists() && !self.path.is_dir() {
            return Err(Error::Config(format!("--out {p} is a file, not a directory")));
        }
        if self.resumable() || self.finished() || self.read_config().is_ok() {
            return Err(Error::Config(format!("{p} already holds a mosa run; use --resume to continue it, or another --out")));
        }
        let Ok(rd) = std::fs::read_dir(&self.path) else { return Ok(()) };
        let mut other: Vec<String> =
            rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n != ".lock" && !n.ends_with(mosa_core::fsio::TMP_SUFFIX)).collect();
        if !other.is_empty() {
            other.sort();
            let more = if other.len() > 3 { format!(" and {} more", other.len() - 3) } else { String::new() };
            return Err(Error::Config(format!(
                "--out {p} is not empty and not a mosa run (it holds {}{more}); mosa writes a run only into a new or empty directory",
                other.iter().take(3).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    }

    /// On resume: refuses if the backbone weights or the dataset lists are not what the run
    /// started with, saying what changed (issue #11 case 2).
    pub fn check_resume(&self, saved: &RunConfig, backbone_sha256: Option<&str>, dataset: &mosa_data::Dataset) -> Result<()> {
        let p = self.path.display();
        if saved.backbone.sha256.as_deref() != backbone_sha256 {
            let short = |s: Option<&str>| s.map(|s| format!("{}…", &s[..s.len().min(12)])).unwrap_or_else(|| "none".into());
            return Err(Error::Config(format!(
                "{p}: the backbone weights {} changed since the run started (SHA-256 {} then, {} now); resume needs the same file",
                saved.backbone.weights.as_deref().unwrap_or("(random init)"),
                short(saved.backbone.sha256.as_deref()),
                short(backbone_sha256)
            )));
        }
        let Some(fp) = &saved.dataset.fingerprint else { return Ok(()) };
        if *fp != dataset.fingerprint() {
            let was = &saved.dataset;
            let counts = [
                ("train", Some(was.train), Some(dataset.train.len())),
                ("val", was.val, dataset.val.as_ref().map(|s| s.len())),
                ("test", was.test, dataset.test.as_ref().map(|s| s.len())),
            ];
            let n = |v: Option<usize>| v.map(|v| v.to_string()).unwrap_or_else(|| "none".into());
            let changed: Vec<String> = counts.iter().filter(|(_, a, b)| a != b).map(|(s, a, b)| format!("{s} {} → {} images", n(*a), n(*b))).collect();
            let what = if changed.is_empty() { "the same counts, but other paths or labels".to_string() } else { changed.join(", ") };
            return Err(Error::Config(format!("{p}: the dataset {} changed since the run started ({what}); resume needs the same lists", saved.run.dataset)));
        }
        Ok(())
    }

    /// Reads `config.json` (format 4, or formats 1–3 converted).
    pub fn read_config(&self) -> Result<RunConfig> {
        let p = self.config();
        let err = |e: &dyn std::fmt::Display| Error::Checkpoint(format!("{}: {e}", p.display()));
        let text = mosa_core::fsio::read_text(&p, mosa_core::fsio::caps::CONFIG).map_err(|e| err(&e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(&e))?;
        match v.get("format").and_then(|f| f.as_u64()) {
            // format 1 wrote no `format`; one that says 1 is read the same way
            None | Some(1) => legacy::config(v).map_err(|e| err(&e)),
            Some(2) => legacy::config2(v).map_err(|e| err(&e)),
            Some(3) => legacy::config3(v).map_err(|e| err(&e)),
            Some(4) => serde_json::from_value(v).map_err(|e| err(&e)),
            Some(f) if f > FORMAT as u64 => Err(err(&format!("run directory format {f} is newer than this mosa reads ({FORMAT}); use a newer mosa"))),
            Some(f) => Err(err(&format!("`format` {f} is no run directory format (1 to {FORMAT}); the file is damaged"))),
        }
    }

    pub fn write_config(&self, c: &RunConfig) -> Result<()> {
        write_text(&self.config(), &(serde_json::to_string_pretty(c).map_err(|e| Error::Config(e.to_string()))? + "\n"))
    }

    /// Reads `summary.json`.
    pub fn summary(&self) -> Result<Summary> {
        let p = self.summary_path();
        let text = mosa_core::fsio::read_text(&p, mosa_core::fsio::caps::CONFIG).map_err(|e| Error::Checkpoint(format!("{}: {e}", p.display())))?;
        serde_json::from_str(&text).map_err(|e| Error::Checkpoint(format!("{}: {e}", p.display())))
    }

    /// Reads `metrics.jsonl` (no file yet: no epochs).
    pub fn metrics(&self) -> Result<Vec<EpochMetrics>> {
        let p = self.metrics_jsonl();
        if !p.exists() {
            return Ok(Vec::new());
        }
        let text = mosa_core::fsio::read_text(&p, mosa_core::fsio::caps::CONFIG).map_err(|e| Error::Checkpoint(format!("{}: {e}", p.display())))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::Checkpoint(format!("{}:{}: {e}", p.display(), i + 1))))
            .collect()
    }

    pub fn write_summary(&self, s: &Summary) -> Result<()> {
        write_text(&self.summary_path(), &(serde_json::to_string_pretty(s).map_err(|e| Error::Config(e.to_string()))? + "\n"))
    }

    /// Writes `metrics.jsonl` and `metrics.csv` (one line per epoch).
    pub fn write_metrics(&self, m: &[EpochMetrics]) -> Result<()> {
        let jsonl: String = m.iter().map(|e| serde_json::to_string(e).unwrap_or_default() + "\n").collect();
        write_text(&self.metrics_jsonl(), &jsonl)?;
        let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
        let mut csv =
            String::from("epoch,lr,train_loss,train_acc,val_acc,test_acc,train_seconds,eval_seconds,train_images_per_second,eval_images_per_second\n");
        for e in m {
            csv += &format!(
                "{},{:.8},{:.6},{:.6},{},{},{:.3},{:.3},{:.2},{:.2}\n",
                e.epoch,
                e.lr,
                e.train_loss,
                e.train_acc,
                opt(e.val_acc),
                opt(e.test_acc),
                e.train_seconds,
                e.eval_seconds,
                e.train_images_per_second,
                e.eval_images_per_second
            );
        }
        write_text(&self.metrics_csv(), &csv)
    }
}

/// The backbone a run was trained on: a saved run refers to it instead of copying it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackboneId {
    pub model: String,
    /// The weights file used (None: random initialisation, e.g. tests).
    pub weights: Option<String>,
    pub sha256: Option<String>,
}

/// SHA-256 of a file, hex ([`mosa_models::weights::file_sha256`], the one streamed hash).
pub fn file_sha256(path: &Path) -> Result<String> {
    mosa_models::weights::file_sha256(path).map_err(|e| Error::Checkpoint(e.to_string()))
}

/// Writes text atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    mosa_core::fsio::write_atomic(path, text.as_bytes()).map_err(|e| Error::Checkpoint(e.to_string()))
}
pub(crate) fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Checkpoint(format!("{}: {e}", path.display()))
}

/// Serialises and writes atomically.
pub(crate) fn write_tensors(path: &Path, t: &[(String, &HostTensor)], meta: HashMap<String, String>) -> Result<()> {
    let bytes = mosa_models::load::safetensors::serialize(t, Some(meta)).map_err(|e| io(path, e))?;
    mosa_core::fsio::write_atomic(path, &bytes).map_err(|e| Error::Checkpoint(e.to_string()))
}

fn f32s(path: &Path, name: &str, v: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>> {
    if v.dtype() != safetensors::Dtype::F32 {
        return Err(io(path, format!("tensor {name} is {:?}, expected F32", v.dtype())));
    }
    Ok(v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// Saves the method's trainable parameters (not the frozen backbone) with the backbone's identity.
pub fn write_model(path: &Path, params: &NamedTensors, backbone: &BackboneId, extra: &[(&str, String)]) -> Result<()> {
    let t: Vec<(String, &HostTensor)> = params.iter().map(|(p, h)| (p.clone(), h)).collect();
    let mut meta = HashMap::from([("mosa.backbone".to_string(), serde_json::to_string(backbone).map_err(|e| io(path, e))?)]);
    for (k, v) in extra {
        meta.insert(format!("mosa.{k}"), v.clone());
    }
    write_tensors(path, &t, meta)
}

/// Reads a saved model (or any mosa safetensors file): tensors by name and the metadata.
pub fn read_model(path: &Path) -> Result<(HashMap<String, HostTensor>, HashMap<String, String>)> {
    let bytes = mosa_core::fsio::read_bounded(path, mosa_core::fsio::caps::TENSORS).map_err(|e| io(path, e))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| io(path, format!("not a safetensors file: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| io(path, e))?;
    let mut params = HashMap::new();
    for (name, view) in st.tensors() {
        params.insert(name.clone(), HostTensor::new(view.shape().to_vec(), f32s(path, &name, &view)?));
    }
    Ok((params, meta))
}

const MASK_PREFIX: &str = "sparse_mask/";

/// Trainable parameters plus the sparse masks (`sparse_mask/<delta path>`), for saving.
pub(crate) fn with_masks<B: Kernels>(mut t: NamedTensors, model: &mut Backbone<B>) -> NamedTensors {
    for (path, mask) in inject::sparse_masks(model) {
        t.push((format!("{MASK_PREFIX}{path}"), HostTensor::from_tensor(mask)));
    }
    t
}

/// Loads saved parameters and sparse masks into a freshly built model.
pub(crate) fn restore<B: Kernels>(model: Backbone<B>, mut values: HashMap<String, HostTensor>) -> mosa_core::Result<Backbone<B>> {
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
    let (values, meta) = read_model(&model_path)?;
    // a damaged model is refused, not scored (a run's own training stops at a non-finite loss)
    if let Some((name, t)) = values.iter().find(|(_, t)| t.data.iter().any(|v| !v.is_finite())) {
        return Err(Error::Checkpoint(format!(
            "{}: tensor `{name}` holds {} non-finite value(s); a model with inf or NaN weights is not evaluated",
            model_path.display(),
            t.data.iter().filter(|v| !v.is_finite()).count()
        )));
    }
    let values = if meta.contains_key("mosa.format") { values } else { values.into_iter().map(|(k, v)| (legacy::path(&k), v)).collect() };
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
    let model = crate::model::build_model::<B>(&spec, nc, device)?;
    let model = restore(model, values).map_err(|e| Error::Checkpoint(format!("{}: {e}", model_path.display())))?;
    Ok((spec, model, nc))
}
