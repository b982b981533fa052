//! The merged-model file: one safetensors file holding the merged backbone in timm's names and
//! layout (so it is a `--weights` file for every command, and timm's `load_state_dict` reads it)
//! plus every merged task's head as `heads.<task>.weight` / `heads.<task>.bias`, with the merge,
//! the backbone identity and each task's classes and resolution in the `mosa.merged` metadata.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use mosa_core::expert::{BackboneIdentity, Expert, Head};
use mosa_core::host::HostTensor;
use mosa_core::merge::{self, MergeConfig, MergeReport};
use serde::{Deserialize, Serialize};

use crate::rundir::file_sha256;
use crate::{Error, Result};

pub const MERGED_FORMAT: u32 = 1;

/// One merged task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub task: String,
    pub dataset: String,
    pub classes: Vec<String>,
    pub resolution: Option<usize>,
    /// The expert file it came from, and that file's SHA-256.
    pub expert: String,
    pub expert_sha256: String,
}

/// `mosa.merged` metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedMeta {
    pub format: u32,
    pub merge: MergeConfig,
    pub kind: mosa_core::expert::ExpertKind,
    pub backbone: BackboneIdentity,
    /// The base weights file merged onto.
    pub base: String,
    pub tasks: Vec<TaskInfo>,
    pub report: MergeReport,
}

/// A merged file, read back.
pub struct Merged {
    pub meta: MergedMeta,
    /// The backbone in timm's layout (without the task heads).
    pub backbone: mosa_models::StateDict,
    pub heads: BTreeMap<String, Head>,
}

impl Merged {
    pub fn task(&self, name: &str) -> Result<(&TaskInfo, &Head)> {
        let names = || self.meta.tasks.iter().map(|t| t.task.as_str()).collect::<Vec<_>>().join(", ");
        let info = self
            .meta
            .tasks
            .iter()
            .find(|t| t.task == name)
            .ok_or_else(|| Error::Config(format!("no task `{name}` in the merged model (tasks: {})", names())))?;
        let head = self.heads.get(name).ok_or_else(|| Error::Config(format!("the merged model has no head for task `{name}`")))?;
        Ok((info, head))
    }

    /// The backbone with task `name`'s head as `head.*` (timm's layout): a state dict to load
    /// with the head, and the task.
    pub fn task_state(&self, name: &str) -> Result<(&TaskInfo, mosa_models::StateDict)> {
        let (info, head) = self.task(name)?;
        let key = self.backbone_config()?.head_key();
        let mut sd = self.backbone.clone();
        sd.insert(format!("{key}.weight"), head.weight.clone());
        if let Some(b) = &head.bias {
            sd.insert(format!("{key}.bias"), b.clone());
        }
        Ok((info, sd))
    }

    /// Task `name`'s model: the merged backbone with its head, at the resolution it was trained
    /// at (`mosa eval --task`); with the task and that resolution.
    pub fn task_model<B: mosa_kernels::Kernels>(&self, name: &str, device: &B::Device) -> Result<(mosa_models::Backbone<B>, TaskInfo, usize)> {
        let (info, sd) = self.task_state(name)?;
        let info = info.clone();
        let resolution = info.resolution.ok_or_else(|| Error::Config(format!("task `{name}`: its resolution is not recorded")))?;
        let classes = sd.head_classes().unwrap_or(0);
        let model = self
            .backbone_config()?
            .with_num_classes(classes)
            .with_img_size(resolution)
            .load_state::<B>(sd, mosa_models::HeadPolicy::Load, device)
            .map_err(|e| Error::Model(e.to_string()))?;
        Ok((model, info, resolution))
    }

    /// The backbone's configuration as the experts recorded it.
    pub fn backbone_config(&self) -> Result<mosa_models::BackboneConfig> {
        serde_json::from_value(self.meta.backbone.config.clone())
            .map_err(|e| Error::Config(format!("{}: backbone config: {e}", self.backbone.source.display())))
    }
}

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Input(format!("{}: {e}", path.display()))
}

/// Merges expert files onto their base weights and writes the merged file atomically. The base
/// is `weights` or the file the experts record; its SHA-256 must be the one they were trained on.
pub fn merge_files(experts: &[PathBuf], weights: Option<&Path>, cfg: &MergeConfig, out: &Path) -> Result<MergedMeta> {
    // the output may replace neither an input (however spelled) nor a device, a link or a run's file
    let inputs: Vec<&Path> = experts.iter().map(PathBuf::as_path).chain(weights).collect();
    crate::output::check_output(out, &inputs, None)?;
    // each expert file is read once: parsed, and hashed for the record
    let (loaded, hashes): (Vec<Expert>, Vec<String>) = experts
        .iter()
        .map(|p| {
            let bytes = mosa_core::fsio::read_bounded(p, mosa_core::fsio::caps::TENSORS).map_err(|e| err(p, e))?;
            let e = Expert::from_bytes(&bytes).map_err(|e| err(p, e))?;
            Ok((e, hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let first = loaded.first().ok_or_else(|| Error::Input("no experts to merge".into()))?;
    // a merged model carries every task's head: an expert without one would only fail at evaluation
    if let Some((p, e)) = experts.iter().zip(&loaded).find(|(_, e)| e.head.is_none()) {
        return Err(err(
            p,
            format!("the expert of task `{}` has no task head, and a merged model needs each task's head (export it from a run that trained one)", e.meta.task),
        ));
    }
    let base_path = match weights {
        Some(w) => w.to_path_buf(),
        None => PathBuf::from(
            first
                .meta
                .backbone
                .weights
                .clone()
                .ok_or_else(|| Error::Input(format!("{}: trained from random weights; give the base with --base", experts[0].display())))?,
        ),
    };
    crate::output::check_output(out, &[base_path.as_path()], None)?;
    let sha = file_sha256(&base_path)?;
    for (p, e) in experts.iter().zip(&loaded) {
        if e.meta.backbone.sha256.as_deref() != Some(sha.as_str()) {
            return Err(Error::Input(format!(
                "{}: made on backbone {} with SHA-256 {}, but {} has {sha}",
                p.display(),
                e.meta.backbone.model,
                e.meta.backbone.sha256.as_deref().unwrap_or("none"),
                base_path.display()
            )));
        }
    }
    let mut sd = mosa_models::read_checkpoint(&base_path).map_err(|e| Error::Model(e.to_string()))?;
    // the base's own classifier is no task's (ConvNeXt's `head.norm` is backbone and stays)
    let head = serde_json::from_value::<mosa_models::BackboneConfig>(first.meta.backbone.config.clone()).map(|c| c.head_key()).unwrap_or("head");
    sd.tensors.retain(|k, _| k != &format!("{head}.weight") && k != &format!("{head}.bias") && !k.starts_with("heads."));
    let refs: Vec<&Expert> = loaded.iter().collect();
    let report = merge::merge(&mut sd.tensors, &refs, cfg).map_err(|e| Error::Input(format!("merge: {e}")))?;
    // an overflow (a large λ on large values) is refused, not written as inf for eval to score
    if let Some((name, t)) = sd.tensors.iter().find(|(_, t)| t.data.iter().any(|v| !v.is_finite())) {
        let bad = t.data.iter().filter(|v| !v.is_finite()).count();
        let from: Vec<String> =
            experts.iter().zip(&loaded).filter(|(_, e)| e.tensors.iter().any(|x| &x.name == name)).map(|(p, _)| p.display().to_string()).collect();
        return Err(Error::Input(format!(
            "merge: tensor `{name}` would hold {bad} non-finite value(s) after {:?} (λ {}) of {}; nothing was written (lower --lambda or --weights, or check the experts)",
            cfg.method,
            cfg.lambda(),
            if from.is_empty() { "the experts".to_string() } else { from.join(", ") }
        )));
    }
    let tasks: Vec<TaskInfo> = experts
        .iter()
        .zip(loaded.iter().zip(hashes))
        .map(|(p, (e, sha))| TaskInfo {
            task: e.meta.task.clone(),
            dataset: e.meta.dataset.clone(),
            classes: e.meta.classes.clone(),
            resolution: e.meta.resolution,
            expert: p.display().to_string(),
            expert_sha256: sha,
        })
        .collect();
    let meta = MergedMeta {
        format: MERGED_FORMAT,
        merge: cfg.clone(),
        kind: first.meta.kind,
        backbone: first.meta.backbone.clone(),
        base: base_path.display().to_string(),
        tasks,
        report,
    };
    let mut named: Vec<(String, &HostTensor)> = sd.tensors.iter().map(|(k, v)| (k.clone(), v)).collect();
    for e in &loaded {
        if let Some(h) = &e.head {
            named.push((format!("heads.{}.weight", e.meta.task), &h.weight));
            if let Some(b) = &h.bias {
                named.push((format!("heads.{}.bias", e.meta.task), b));
            }
        }
    }
    let header = HashMap::from([("mosa.merged".to_string(), serde_json::to_string(&meta).map_err(|e| Error::Config(e.to_string()))?)]);
    let bytes = mosa_models::load::safetensors::serialize(&named, Some(header)).map_err(|e| err(out, e))?;
    mosa_core::fsio::write_atomic(out, &bytes).map_err(|e| Error::Input(e.to_string()))?;
    Ok(meta)
}

/// Reads a merged file: its metadata, the backbone and the task heads.
pub fn read_merged(path: &Path) -> Result<Merged> {
    let meta = mosa_models::load::safetensors::read_metadata(path).map_err(|e| Error::Model(e.to_string()))?;
    let text = meta.get("mosa.merged").ok_or_else(|| err(path, "not a merged model (no `mosa.merged` metadata)"))?;
    let meta: MergedMeta = serde_json::from_str(text).map_err(|e| err(path, format!("`mosa.merged` metadata: {e}")))?;
    let mut sd = mosa_models::load::safetensors::read(path).map_err(|e| Error::Model(e.to_string()))?;
    let mut heads = BTreeMap::new();
    for t in &meta.tasks {
        let w = sd.tensors.remove(&format!("heads.{}.weight", t.task));
        let b = sd.tensors.remove(&format!("heads.{}.bias", t.task));
        if let Some(weight) = w {
            heads.insert(t.task.clone(), Head { weight, bias: b });
        }
    }
    sd.tensors.retain(|k, _| !k.starts_with("heads."));
    let heads_iter =
        heads.iter().flat_map(|(t, h)| [(format!("heads.{t}.weight"), &h.weight)].into_iter().chain(h.bias.as_ref().map(|b| (format!("heads.{t}.bias"), b))));
    let all: Vec<(String, &HostTensor)> = sd.tensors.iter().map(|(k, v)| (k.clone(), v)).chain(heads_iter).collect();
    if let Some((name, t)) = all.iter().find(|(_, t)| t.data.iter().any(|v| !v.is_finite())) {
        return Err(err(
            path,
            format!(
                "tensor `{name}` holds {} non-finite value(s); a model with inf or NaN weights is not evaluated",
                t.data.iter().filter(|v| !v.is_finite()).count()
            ),
        ));
    }
    Ok(Merged { meta, backbone: sd, heads })
}
