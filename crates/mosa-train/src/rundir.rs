//! The typed run directory, shared by the engine, `mosa eval`, xtask and the coming merge:
//! every file name, the `config.json` and `summary.json` types, and the reading of directories
//! written before this layout (format 1).
//!
//! | file | what |
//! |---|---|
//! | `config.json` | [`RunConfig`]: format, the [`RunSpec`], backbone identity, dataset sizes |
//! | `checkpoint.safetensors` | trainables, sparse masks, AdamW moments, [`crate::checkpoint::RunState`] |
//! | `model.safetensors` | what trains (+ `sparse_mask/…`), with the backbone identity |
//! | `metrics.jsonl`, `metrics.csv` | one line per epoch |
//! | `expert.safetensors` | the task expert of a `sparse`, `lora` or `full` run (`mosa_core::expert`) |
//! | `summary.json` | [`Summary`], written when the run finishes |

use std::path::PathBuf;

use mosa_core::Method;
use mosa_models::BackboneConfig;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{BackboneId, write_text};
use crate::config::TrainConfig;
use crate::metrics::{EpochMetrics, Summary};
use crate::{Error, Result};

/// The layout version this build writes. Formats 1 (no `format` key), 2 and 3 are read and
/// converted ([`legacy`]): 3 records the adapters' LayerNorm epsilon (`norm_eps`), which 1 and 2
/// left at PyTorch's 1e-5; 4 records the adapters' activation and a sequential adapter's
/// position, which 1–3 fixed per method (GELU but ReLU for Pfeiffer and SiLU for Houlsby; on the
/// sublayer's output before the residual), the pruned adapter's construction and LoRA's default
/// targets.
pub const FORMAT: u32 = 4;

/// Everything that defines a run; a resume must match it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    /// Preset name or config file the model came from (for display).
    pub model_name: String,
    pub model: BackboneConfig,
    /// Backbone weights (None: random initialisation).
    pub weights: Option<PathBuf>,
    pub method: Method,
    pub dataset: String,
    /// The recipe, including the one seed of the run (masks, draws, order, init).
    pub train: TrainConfig,
    pub skip_unreadable: bool,
}

impl RunSpec {
    /// SHA-256 of the spec's canonical JSON: the checkpoint records it, a resume compares it.
    pub fn sha256(&self) -> String {
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(json.as_bytes()))
    }
}

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
}

/// Run directories of format 1 (before backbone families and per-method configs): the flat
/// method config and bare ViT config of `config.json`, and the `<layer>_branch` parameter paths
/// of checkpoints and saved models, are converted on reading.
pub mod legacy {
    use mosa_core::adapter::AdapterOptions;
    use mosa_core::lora::{LoraOptions, MosaLoraOptions};
    use mosa_core::mosa::MosaOptions;
    use mosa_core::prompt::PromptOptions;
    use mosa_core::pruned::{PruneStyle, PrunedOptions};
    use mosa_core::sparse::SparseConfig;
    use mosa_core::{Method, MethodKind};
    use serde_json::Value;

    use super::{FORMAT, RunConfig};

    /// A parameter path of format 1 in today's layout (`attn.qkv_branch.` → `attn.qkv.branch.`).
    pub fn path(p: &str) -> String {
        let mut s = p.to_string();
        for l in ["qkv", "proj", "fc1", "fc2"] {
            s = s.replace(&format!(".{l}_branch."), &format!(".{l}.branch."));
        }
        s
    }

    fn get<T: serde::de::DeserializeOwned>(m: &Value, k: &str) -> Result<T, String> {
        serde_json::from_value(m.get(k).cloned().ok_or_else(|| format!("format-1 method config has no `{k}`"))?).map_err(|e| format!("`{k}`: {e}"))
    }

    /// The flat format-1 method config as a [`Method`].
    pub fn method(m: &Value) -> Result<Method, String> {
        let kind: MethodKind = get(m, "method")?;
        let adapter = || -> Result<AdapterOptions, String> {
            Ok(AdapterOptions::new()
                .with_r(get(m, "r")?)
                .with_scale(get(m, "scale")?)
                .with_dropout(get(m, "adapter_dropout")?)
                .with_norm(get(m, "adapter_norm")?)
                .with_norm_eps(LEGACY_ADAPTER_NORM_EPS)
                .with_activation(Method::legacy_activation(kind)))
        };
        let mosa =
            || -> Result<MosaOptions, String> { Ok(MosaOptions::new().with_adapter(adapter()?).with_experts(get(m, "experts")?).with_share(get(m, "share")?)) };
        let lora = || -> Result<LoraOptions, String> {
            Ok(LoraOptions::new()
                .with_r(get(m, "lora_r")?)
                .with_alpha(get(m, "lora_alpha")?)
                .with_dropout(get(m, "lora_dropout")?)
                .with_targets(get(m, "targets")?))
        };
        let prompt =
            || -> Result<PromptOptions, String> { Ok(PromptOptions::new().with_tokens(get(m, "prompt_tokens")?).with_dropout(get(m, "prompt_dropout")?)) };
        Ok(match kind {
            MethodKind::Linear => Method::Linear,
            MethodKind::Full => Method::Full,
            MethodKind::Bitfit => Method::Bitfit,
            MethodKind::Adapter => Method::Adapter(adapter()?),
            MethodKind::Pfeiffer => Method::Pfeiffer(adapter()?),
            MethodKind::Houlsby => Method::Houlsby(adapter()?),
            MethodKind::Lora => Method::Lora(lora()?),
            MethodKind::VptShallow => Method::VptShallow(prompt()?),
            MethodKind::VptDeep => Method::VptDeep(prompt()?),
            MethodKind::Mosa => Method::Mosa(mosa()?),
            MethodKind::PrunedAdapter => {
                Method::PrunedAdapter(PrunedOptions::new().with_adapter(adapter()?).with_experts(get(m, "experts")?).with_style(PruneStyle::Legacy))
            }
            MethodKind::MosaLora => {
                Method::MosaLora(MosaLoraOptions::new().with_lora(lora()?).with_experts(get(m, "experts")?).with_split(get(m, "lora_split")?))
            }
            MethodKind::Sparse => {
                let mut s = m.get("sparse").cloned().unwrap_or(Value::Null);
                if let Some(o) = s.as_object_mut() {
                    o.remove("seed");
                    o.insert("targets".into(), m.get("targets").cloned().unwrap_or(Value::Array(vec![])));
                    // format 1 decayed ΔW and selected masks on the recipe's schedule
                    o.insert("weight_decay".into(), Value::Bool(true));
                    o.insert("selection_lr".into(), Value::String("schedule".into()));
                }
                Method::Sparse(serde_json::from_value::<SparseConfig>(s).map_err(|e| format!("`sparse`: {e}"))?)
            }
        })
    }

    /// The adapters' LayerNorm epsilon of formats 1 and 2 (PyTorch's default; not recorded).
    pub const LEGACY_ADAPTER_NORM_EPS: f64 = 1e-5;

    type Object = serde_json::Map<String, Value>;

    /// The adapter options of a format-2/3 method config (the method's kind, the options), if
    /// it has adapters: at the method's top level (adapter, pfeiffer, houlsby) or under
    /// `adapter` (mosa, pruned-adapter).
    fn adapter_options(v: &mut Value) -> Result<Option<(MethodKind, &mut Object)>, String> {
        let m = v.get_mut("run").and_then(|r| r.get_mut("method")).ok_or("no `run.method`")?;
        let kind: MethodKind = get(m, "method")?;
        let target = match kind {
            MethodKind::Adapter | MethodKind::Pfeiffer | MethodKind::Houlsby => Some(&mut *m),
            MethodKind::Mosa | MethodKind::PrunedAdapter => m.get_mut("adapter"),
            _ => None,
        };
        Ok(target.and_then(Value::as_object_mut).map(|o| (kind, o)))
    }

    /// A format-2 `config.json` as today's: every adapter's options get the epsilon it ran with,
    /// then as format 3.
    pub fn config2(mut v: Value) -> Result<RunConfig, String> {
        if let Some((_, o)) = adapter_options(&mut v)? {
            o.entry("norm_eps").or_insert(LEGACY_ADAPTER_NORM_EPS.into());
        }
        config3(v)
    }

    /// A format-3 `config.json` as today's: every adapter's options get the activation and
    /// position it ran with.
    pub fn config3(mut v: Value) -> Result<RunConfig, String> {
        if let Some((kind, o)) = adapter_options(&mut v)? {
            let act = serde_json::to_value(Method::legacy_activation(kind)).map_err(|e| e.to_string())?;
            o.entry("activation").or_insert(act);
            o.entry("position").or_insert("branch".into());
        }
        // the pruned adapter was a one-expert MoSA adapter (see `mosa_core::pruned`)
        if let Some(m) = v.get_mut("run").and_then(|r| r.get_mut("method")).and_then(Value::as_object_mut)
            && m.get("method").and_then(Value::as_str) == Some("pruned-adapter")
        {
            m.entry("style").or_insert("legacy".into());
            m.remove("share");
        }
        finish(v, 3)
    }

    /// What every older format shares: VTAB images were resized with PIL's filter, and LoRA
    /// without targets meant the whole `qkv` of a ViT or Swin (today's default is `q`, `v`).
    fn finish(mut v: Value, from: u32) -> Result<RunConfig, String> {
        if let Some(t) = v.get_mut("run").and_then(|r| r.get_mut("train")).and_then(Value::as_object_mut) {
            t.entry("vtab_resize").or_insert("pil".into());
        }
        let family = v.pointer("/run/model/family").and_then(Value::as_str).unwrap_or("vit").to_string();
        if let Some(m) = v.pointer_mut("/run/method").and_then(Value::as_object_mut) {
            let lora = m.get("method").and_then(Value::as_str) == Some("lora");
            let empty = m.get("targets").and_then(Value::as_array).is_none_or(|t| t.is_empty());
            if lora && empty && (family == "vit" || family == "swin") {
                m.insert("targets".into(), serde_json::json!(["qkv"]));
            }
        }
        v["format"] = FORMAT.into();
        serde_json::from_value(v).map_err(|e| format!("format-{from} config: {e}"))
    }

    /// A format-1 `config.json` as today's [`RunConfig`].
    pub fn config(mut v: Value) -> Result<RunConfig, String> {
        let run = v.get_mut("run").ok_or("no `run`")?;
        let m = run.get("method").cloned().ok_or("no `run.method`")?;
        // the one seed: format 1 set the recipe's seed from the method's
        if let (Some(seed), Some(t)) = (m.get("seed").cloned(), run.get_mut("train")) {
            t["seed"] = seed;
        }
        run["method"] = serde_json::to_value(method(&m)?).map_err(|e| e.to_string())?;
        finish(v, 1)
    }
}
