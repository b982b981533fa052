//! What a served task is, read from files on the host: an expert file (`mosa expert export`:
//! sparse, LoRA or full, with its head), or a merged file (`mosa merge`: every task's head,
//! sharing one merged backbone). Everything the HTTP side needs to know about a task is in
//! [`TaskMeta`]; what the worker installs is [`TaskSpec`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mosa_core::expert::{Delta, Expert, Head};
use mosa_core::host::HostTensor;
use mosa_data::source::{DatasetSpec, Style};
use mosa_models::load::by_path::ParamLayout;
use serde::Serialize;

use crate::error::{Error, Result};

/// How a task's weights differ from the base.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Sparse,
    Lora,
    Full,
    /// One head of a merged file (its backbone is the merged one).
    Merged,
    /// A head on the base backbone itself (the heads of a merged file given as `--base`).
    Base,
}

/// A task as the API describes it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskMeta {
    pub name: String,
    pub classes: Vec<String>,
    /// The input side H = W the task was trained at.
    pub resolution: usize,
    #[serde(skip)]
    pub style: Style,
    pub kind: TaskKind,
    /// The file it came from.
    pub source: PathBuf,
    /// Bytes of that file.
    pub bytes: u64,
    /// Stored entries of its weight change (0 for a head on the base).
    pub entries: usize,
}

/// One parameter's change, in the model's layout (see [`ParamLayout`]): what the worker turns
/// into device tensors.
#[derive(Debug, Clone)]
pub enum Change {
    /// Add `values` at flat `indices` of the model's layout.
    Sparse { indices: Vec<u32>, values: Vec<f32> },
    /// Add `a_t · b_t` (`[rows, r]` · `[r, cols]` of the model's 2-D layout; the scale folded in).
    LowRank { a_t: HostTensor, b_t: HostTensor },
    /// Add a dense tensor.
    Dense(Vec<f32>),
    /// Replace the tensor (a merged backbone's tensors: exactly the merged file's bits).
    Replace(Vec<f32>),
}

/// A weight change shared by the tasks that use it (a merged file's heads share one).
#[derive(Debug)]
pub struct WeightChange {
    /// Unique in the process: the worker compares ids to know whether a change is in place.
    pub id: u64,
    pub tensors: Vec<(String, Change)>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl WeightChange {
    fn new(tensors: Vec<(String, Change)>) -> Arc<Self> {
        Arc::new(Self { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), tensors })
    }
}

/// What the worker installs for a task.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub meta: TaskMeta,
    /// None: the base backbone as it is.
    pub change: Option<Arc<WeightChange>>,
    pub head: Head,
}

/// What a task file is checked against: the base backbone.
pub struct Base {
    /// The base weights file and its SHA-256.
    pub path: PathBuf,
    pub sha256: String,
    /// Every backbone parameter's layout, by timm name.
    pub layout: BTreeMap<String, ParamLayout>,
    /// The base's tensors (timm layout) where a merged file must be compared with them.
    pub tensors: Option<Arc<mosa_models::StateDict>>,
    /// The input side the model is built for; every task must have it.
    pub resolution: usize,
    /// The width of the features the heads read.
    pub features: usize,
}

/// The files under `path`: itself, or every `.safetensors` file below a folder that holds an
/// expert or a merged model (others — checkpoints, run files — are passed over), sorted.
pub fn discover(path: &Path) -> Result<Vec<PathBuf>> {
    let md = std::fs::metadata(path).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    if !md.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::Input(format!("{}: {e}", dir.display())))?;
        for e in entries {
            let p = e.map_err(|e| Error::Input(format!("{}: {e}", dir.display())))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "safetensors")
                && let Ok(meta) = mosa_models::load::safetensors::read_metadata(&p)
                && (meta.contains_key("mosa.expert") || meta.contains_key("mosa.merged"))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn style_of(dataset: &str) -> Style {
    dataset.parse::<DatasetSpec>().map(|d| d.style()).unwrap_or(Style::Vtab)
}

/// Reads the tasks of one file (an expert: one task; a merged file: one per head), checked
/// against `base`: the same backbone (SHA-256), tensors it has with their shapes, heads on
/// its features, the serving resolution.
pub fn read(path: &Path, base: &Base) -> Result<Vec<TaskSpec>> {
    let here = |msg: String| Error::Input(format!("{}: {msg}", path.display()));
    let bytes = std::fs::metadata(path).map_err(|e| here(e.to_string()))?.len();
    let meta = mosa_models::load::safetensors::read_metadata(path).map_err(|e| Error::Input(e.to_string()))?;
    let specs = if meta.contains_key("mosa.expert") {
        let e = Expert::read(path).map_err(|e| Error::Input(e.to_string()))?;
        vec![from_expert(e, path, bytes, base).map_err(here)?]
    } else if meta.contains_key("mosa.merged") {
        let m = mosa_train::merged::read_merged(path).map_err(|e| Error::Input(e.to_string()))?;
        from_merged(m, path, bytes, base).map_err(here)?
    } else {
        return Err(here("neither a task expert (`mosa expert export`) nor a merged model (`mosa merge`)".into()));
    };
    Ok(specs)
}

fn check_identity(sha: Option<&str>, model: &str, base: &Base) -> std::result::Result<(), String> {
    if sha != Some(base.sha256.as_str()) {
        return Err(format!(
            "made on backbone {model} with SHA-256 {}, but the served base {} has {}",
            sha.unwrap_or("none (random weights)"),
            base.path.display(),
            base.sha256
        ));
    }
    Ok(())
}

fn check_head(head: &Head, classes: usize, base: &Base) -> std::result::Result<(), String> {
    if head.weight.shape[1] != base.features {
        return Err(format!("its head reads {} features, the base backbone gives {}", head.weight.shape[1], base.features));
    }
    if classes != 0 && classes != head.weight.shape[0] {
        return Err(format!("its head has {} classes but {classes} class names", head.weight.shape[0]));
    }
    Ok(())
}

fn check_resolution(resolution: Option<usize>, base: &Base) -> std::result::Result<usize, String> {
    match resolution {
        None => Err("it does not record the resolution it was trained at".into()),
        Some(r) if r != base.resolution => Err(format!(
            "it was trained at {r} px and this server's model is built for {} px (serve tasks of one resolution per server, or pass --resolution {r})",
            base.resolution
        )),
        Some(r) => Ok(r),
    }
}

fn class_names(classes: &[String], n: usize) -> Vec<String> {
    if classes.len() == n { classes.to_vec() } else { (0..n).map(|i| i.to_string()).collect() }
}

/// A dense tensor of timm's layout in the model's (a linear weight transposed).
fn dense_in_model_layout(t: HostTensor, l: &ParamLayout) -> Vec<f32> {
    if l.transposed && t.shape.len() == 2 { t.t().data } else { t.data }
}

/// One changed tensor in the model's layout.
fn to_model_layout(shape: &[usize], delta: Delta, l: &ParamLayout) -> Change {
    let transposed = l.transposed && shape.len() == 2;
    match delta {
        Delta::Sparse { indices, values } => {
            if !transposed {
                return Change::Sparse { indices, values };
            }
            let (rows, cols) = (shape[0] as u32, shape[1] as u32);
            // timm [out, in] flat o·in + k  →  here [in, out] flat k·out + o, sorted again so
            // that putting the change in place walks memory in order
            let mut pairs: Vec<(u32, f32)> = indices.into_iter().map(|i| (i % cols) * rows + i / cols).zip(values).collect();
            pairs.sort_unstable_by_key(|p| p.0);
            let (indices, values) = pairs.into_iter().unzip();
            Change::Sparse { indices, values }
        }
        Delta::LowRank { a, b, scale } => {
            // timm ΔW = scale · B[out, r] · A[r, in]; here [in, out] = Aᵀ · (scale · Bᵀ)
            let scaled_b = HostTensor::new(b.shape.clone(), b.data.iter().map(|v| v * scale).collect());
            if transposed {
                Change::LowRank { a_t: a.t(), b_t: scaled_b.t() }
            } else {
                // stored as timm stores it: [out, in] = (scale · B) · A
                Change::LowRank { a_t: scaled_b, b_t: a }
            }
        }
        Delta::Dense(d) => Change::Dense(dense_in_model_layout(HostTensor::new(shape.to_vec(), d), l)),
    }
}

fn from_expert(e: Expert, path: &Path, bytes: u64, base: &Base) -> std::result::Result<TaskSpec, String> {
    let task = e.meta.task.clone();
    let at = |m: String| format!("task `{task}`: {m}");
    check_identity(e.meta.backbone.sha256.as_deref(), &e.meta.backbone.model, base).map_err(at)?;
    let head = e.head.clone().ok_or_else(|| at("the expert has no task head (export it from a run that trained one)".into()))?;
    check_head(&head, e.meta.classes.len(), base).map_err(at)?;
    let resolution = check_resolution(e.meta.resolution, base).map_err(at)?;
    let kind = match e.meta.kind {
        mosa_core::expert::ExpertKind::Sparse => TaskKind::Sparse,
        mosa_core::expert::ExpertKind::Lora => TaskKind::Lora,
        mosa_core::expert::ExpertKind::Full => TaskKind::Full,
    };
    let entries = e.nnz();
    let mut tensors = Vec::with_capacity(e.tensors.len());
    for t in e.tensors {
        let l = base.layout.get(&t.name).ok_or_else(|| at(format!("tensor `{}` is not a weight of the base backbone", t.name)))?;
        if l.timm_shape() != t.shape {
            return Err(at(format!("tensor `{}` has shape {:?}, the base's is {:?}", t.name, t.shape, l.timm_shape())));
        }
        let change = to_model_layout(&t.shape, t.delta, l);
        tensors.push((t.name, change));
    }
    let classes = class_names(&e.meta.classes, head.weight.shape[0]);
    Ok(TaskSpec {
        meta: TaskMeta { name: task, classes, resolution, style: style_of(&e.meta.dataset), kind, source: path.to_path_buf(), bytes, entries },
        change: (!tensors.is_empty()).then(|| WeightChange::new(tensors)),
        head,
    })
}

fn from_merged(m: mosa_train::merged::Merged, path: &Path, bytes: u64, base: &Base) -> std::result::Result<Vec<TaskSpec>, String> {
    // the merged file *is* the base: its heads are tasks on the backbone as it is
    let is_base = base.path == path;
    if !is_base {
        check_identity(m.meta.backbone.sha256.as_deref(), &m.meta.backbone.model, base)?;
    }
    let change = if is_base {
        None
    } else {
        let base_sd = base.tensors.as_ref().ok_or("the base's tensors were not kept to compare a merged file with")?;
        let mut tensors = Vec::new();
        for (name, t) in &m.backbone.tensors {
            let l = base.layout.get(name).ok_or_else(|| format!("tensor `{name}` is not a weight of the base backbone"))?;
            let b = base_sd.tensors.get(name).ok_or_else(|| format!("tensor `{name}` is not in the base weights"))?;
            if b.shape != t.shape {
                return Err(format!("tensor `{name}` has shape {:?}, the base's is {:?}", t.shape, b.shape));
            }
            // only the tensors the merge changed (bit for bit) travel
            if b.data.iter().zip(&t.data).any(|(x, y)| x.to_bits() != y.to_bits()) {
                tensors.push((name.clone(), Change::Replace(dense_in_model_layout(t.clone(), l))));
            }
        }
        Some(WeightChange::new(tensors))
    };
    let entries = change.as_ref().map(|c| c.tensors.iter().map(|(_, ch)| change_len(ch)).sum()).unwrap_or(0);
    let mut out = Vec::new();
    for info in &m.meta.tasks {
        let at = |msg: String| format!("task `{}`: {msg}", info.task);
        let head = m.heads.get(&info.task).cloned().ok_or_else(|| at("the merged file has no head for it".into()))?;
        check_head(&head, info.classes.len(), base).map_err(at)?;
        let resolution = check_resolution(info.resolution, base).map_err(at)?;
        out.push(TaskSpec {
            meta: TaskMeta {
                name: info.task.clone(),
                classes: class_names(&info.classes, head.weight.shape[0]),
                resolution,
                style: style_of(&info.dataset),
                kind: if is_base { TaskKind::Base } else { TaskKind::Merged },
                source: path.to_path_buf(),
                bytes,
                entries,
            },
            change: change.clone(),
            head,
        });
    }
    Ok(out)
}

fn change_len(c: &Change) -> usize {
    match c {
        Change::Sparse { indices, .. } => indices.len(),
        Change::LowRank { a_t, b_t } => a_t.data.len() + b_t.data.len(),
        Change::Dense(v) | Change::Replace(v) => v.len(),
    }
}
