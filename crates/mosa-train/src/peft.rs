//! Experts to and from HF PEFT adapter folders, with their base: the conversion itself is
//! [`mosa_core::peft`]; here the base is resolved (timm name, weights file, SHA-256, head
//! module), full experts become a plain timm state dict, and imported adapters become expert
//! files that `mosa merge`, `mosa eval --task` and `mosa serve` read.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use mosa_core::expert::{BackboneIdentity, EXPERT_FORMAT, Expert, ExpertKind, ExpertMeta, Head, ValueDtype};
use mosa_core::peft::{self, PeftAdapter};
use mosa_models::BackboneConfig;
use mosa_models::presets;

use crate::{Error, Result};

/// The first line of every README an export writes: a folder with it (and nothing but an
/// export's files) is one a later export may replace.
const README_MARK: &str = "<!-- written by `mosa expert export --format peft`; a later export may replace this folder -->";

/// The backbone config an expert records.
fn config_of(meta: &ExpertMeta) -> Result<BackboneConfig> {
    presets::config_from_json(&meta.backbone.config).map_err(|e| Error::Model(format!("the expert's backbone config: {e}")))
}

/// What a PEFT config names as the base: timm's model name for a preset, else the weights file.
fn base_name(meta: &ExpertMeta) -> String {
    presets::timm_name(&meta.backbone.model).map(String::from).or_else(|| meta.backbone.weights.clone()).unwrap_or_else(|| meta.backbone.model.clone())
}

/// Whether `dir` may be replaced by an export: it holds only an export's files, and its README
/// starts with our mark (a user's model folder with a `model.safetensors` is never replaced).
fn replaceable(dir: &Path) -> bool {
    let only_ours = std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().all(|e| {
            let n = e.file_name();
            e.file_type().is_ok_and(|t| t.is_file()) && [peft::CONFIG_FILE, peft::WEIGHTS_FILE, "README.md", "model.safetensors"].iter().any(|f| n == *f)
        })
    });
    only_ours && std::fs::read_to_string(dir.join("README.md")).is_ok_and(|t| t.lines().next() == Some(README_MARK))
}

fn readme(e: &Expert, what: &str, load: &str) -> String {
    let m = &e.meta;
    let b = &m.backbone;
    format!(
        "{README_MARK}\n# `{task}`: a mosa {kind:?} expert as {what}\n\nTask `{task}` ({n} classes: {classes}); data `{dataset}`; input side {res} px.\n\n\
         Base: `{model}` (timm `{timm}`), weights `{weights}`, SHA-256 `{sha}`.\nBackbone config (mosa): `{config}`\n\n\
         ```python\nimport timm, torch\nfrom safetensors.torch import load_file\n\n\
         model = timm.create_model(\"{timm}\", num_classes={n})  # the base's architecture (for a custom config: its constructor arguments)\n\
         model.load_state_dict(load_file(\"<the base weights>\"), strict=False)  # or pretrained=True for timm's own weights of that name\n{load}```\n",
        task = m.task,
        kind = m.kind,
        n = m.classes.len(),
        classes = if m.classes.len() <= 10 { m.classes.join(", ") } else { format!("{}, …", m.classes[..10].join(", ")) },
        dataset = m.dataset,
        res = m.resolution.map(|r| r.to_string()).unwrap_or("?".into()),
        model = b.model,
        timm = presets::timm_name(&b.model).unwrap_or("<timm architecture of the config>"),
        weights = b.weights.as_deref().unwrap_or("none"),
        sha = b.sha256.as_deref().unwrap_or("none"),
        config = b.config,
    )
}

/// What an export wrote.
pub struct Exported {
    /// `adapter_config.json` + `adapter_model.safetensors` (LoRA / SHiRA), or `model.safetensors`.
    pub files: Vec<PathBuf>,
    /// PEFT type written (`LORA`, `SHIRA`), or `state dict`.
    pub what: String,
    /// SHiRA: the rank and the zero-valued padding entries added over all modules.
    pub shira: Option<(usize, usize)>,
}

/// Writes an expert as a PEFT adapter folder at `out` (LoRA → LORA, sparse → SHIRA), or a full
/// expert as a plain timm state dict of the fine-tuned model (`model.safetensors`, the base
/// weights plus the expert's change, with its head). `base` overrides the weights file the
/// expert names (a full expert needs it; its SHA-256 must be the expert's).
pub fn export(e: &Expert, out: &Path, base: Option<&Path>) -> Result<Exported> {
    let cfg = config_of(&e.meta)?;
    let head = cfg.head_key();
    match e.meta.kind {
        ExpertKind::Lora | ExpertKind::Sparse => {
            let a = peft::export(e, &base_name(&e.meta), head).map_err(|x| Error::Model(x.to_string()))?;
            let shira = match e.meta.kind {
                ExpertKind::Sparse => Some((
                    a.config["r"].as_u64().unwrap_or(0) as usize,
                    e.tensors
                        .iter()
                        .map(|t| a.tensors[&format!("{}{}.shira_weight", peft::PREFIX, t.name.trim_end_matches(".weight"))].shape()[0] - t.delta.nnz(t.numel()))
                        .sum(),
                )),
                ExpertKind::Lora | ExpertKind::Full => None,
            };
            let load = "from peft import PeftModel\nmodel = PeftModel.from_pretrained(model, \"<this folder>\").eval()\n";
            let [(cn, cb), (wn, wb)] = a.files().map_err(|x| Error::Model(x.to_string()))?;
            let text = readme(e, "a PEFT adapter", load);
            write_folder(out, || mosa_core::fsio::write_folder_atomic(out, &[(cn, &cb), (wn, &wb), ("README.md", text.as_bytes())], replaceable))?;
            let what = a.config["peft_type"].as_str().unwrap_or("?").to_string();
            Ok(Exported { files: vec![out.join(peft::CONFIG_FILE), out.join(peft::WEIGHTS_FILE)], what, shira })
        }
        ExpertKind::Full => {
            let path = base.map(Path::to_path_buf).or_else(|| e.meta.backbone.weights.as_ref().map(PathBuf::from)).ok_or_else(|| {
                Error::Input("a full expert is written as the fine-tuned model's state dict, which needs the base weights: give --base".into())
            })?;
            let sha = crate::rundir::file_sha256(&path)?;
            if let Some(want) = &e.meta.backbone.sha256
                && *want != sha
            {
                return Err(Error::Input(format!("--base {}: SHA-256 {sha}, but the expert was trained on weights with SHA-256 {want}", path.display())));
            }
            let mut sd = mosa_models::read_checkpoint(&path).map_err(|x| Error::Model(x.to_string()))?;
            for t in &e.tensors {
                let w = sd
                    .tensors
                    .get_mut(&t.name)
                    .ok_or_else(|| Error::Model(format!("the expert's tensor `{}` is not a weight of the base {}", t.name, path.display())))?;
                if w.shape != t.shape {
                    return Err(Error::Model(format!("the expert's tensor `{}` is {:?}, the base's {:?}", t.name, t.shape, w.shape)));
                }
                for (x, d) in w.data.iter_mut().zip(t.delta.to_dense(t.numel())) {
                    *x += d;
                }
            }
            if let Some(h) = &e.head {
                sd.tensors.insert(format!("{head}.weight"), h.weight.clone());
                match &h.bias {
                    Some(b) => sd.tensors.insert(format!("{head}.bias"), b.clone()),
                    None => sd.tensors.remove(&format!("{head}.bias")),
                };
            }
            let tensors: Vec<(String, &mosa_core::HostTensor)> = sd.tensors.iter().map(|(k, v)| (k.clone(), v)).collect();
            let meta =
                HashMap::from([("format".to_string(), "pt".to_string()), ("mosa.expert".to_string(), serde_json::to_string(&e.meta).unwrap_or_default())]);
            let bytes = mosa_models::load::safetensors::serialize(&tensors, Some(meta)).map_err(|x| Error::Model(x.to_string()))?;
            let load = "model.load_state_dict(load_file(\"<this folder>/model.safetensors\"))  # the fine-tuned model, head included\n";
            let text = readme(e, "a plain state dict", load);
            write_folder(out, || mosa_core::fsio::write_folder_atomic(out, &[("model.safetensors", &bytes), ("README.md", text.as_bytes())], replaceable))?;
            Ok(Exported { files: vec![out.join("model.safetensors")], what: "state dict".into(), shira: None })
        }
    }
}

/// Runs a folder write, refusing first a folder this export may not replace (naming it).
fn write_folder(out: &Path, write: impl FnOnce() -> mosa_core::Result<()>) -> Result<()> {
    if out.is_dir() && !replaceable(out) {
        return Err(Error::Input(format!(
            "--out {}: a folder is there that an earlier `mosa expert export --format peft` did not write; only such a folder is ever replaced: write elsewhere",
            out.display()
        )));
    }
    write().map_err(|x| Error::Input(format!("--out {}: {x}", out.display())))
}

/// What an import reads besides the adapter folder.
pub struct ImportSpec<'a> {
    /// The base weights the adapter was trained on (timm names).
    pub base: &'a Path,
    /// A preset or config JSON; None: the exported expert's own, or the preset of the config's
    /// timm name (`base_model_name_or_path`).
    pub model: Option<&'a str>,
    pub task: &'a str,
    /// Class names in label order (None: the exported expert's, else `0`, `1`, …).
    pub classes: Option<Vec<String>>,
    /// Input side the adapter was trained at (None: the exported expert's, else unknown).
    pub resolution: Option<usize>,
}

/// Reads a PEFT LoRA or SHiRA adapter folder (trained on a timm ViT / Swin / ConvNeXt) as an
/// expert on `spec.base`. The head is the adapter's (`modules_to_save`), else the base's own.
pub fn import(dir: &Path, spec: &ImportSpec<'_>) -> Result<Expert> {
    let a = PeftAdapter::read(dir).map_err(|x| Error::Input(x.to_string()))?;
    let exported = a.exported();
    let (model, cfg) = match (spec.model, &exported) {
        (Some(m), _) => (m.to_string(), presets::resolve_model(m).map_err(|x| Error::Model(x.to_string()))?),
        (None, Some(meta)) => (meta.backbone.model.clone(), config_of(meta)?),
        (None, None) => {
            let named = a.config.get("base_model_name_or_path").and_then(|v| v.as_str()).unwrap_or("");
            let p = presets::from_timm_name(named).ok_or_else(|| {
                Error::Input(format!(
                    "{}: the base `{named}` is not the timm name of a mosa preset; give --model (a preset, or a config JSON such as timm constructor arguments)",
                    dir.join(peft::CONFIG_FILE).display()
                ))
            })?;
            (p.name.to_string(), (p.config)())
        }
    };
    let sha = crate::rundir::file_sha256(spec.base)?;
    if let Some(want) = exported.as_ref().and_then(|m| m.backbone.sha256.as_ref())
        && *want != sha
    {
        return Err(Error::Input(format!(
            "--base {}: SHA-256 {sha}, but {} was exported from an expert trained on weights with SHA-256 {want}",
            spec.base.display(),
            dir.display()
        )));
    }
    let sd = mosa_models::read_checkpoint(spec.base).map_err(|x| Error::Model(x.to_string()))?;
    let shapes: BTreeMap<String, Vec<usize>> = sd.tensors.iter().map(|(k, t)| (k.clone(), t.shape.clone())).collect();
    let head_module = cfg.head_key();
    let imp = peft::import(&a, &peft::Base { shapes: &shapes, head_module }).map_err(|x| Error::Input(format!("{}: {x}", dir.display())))?;
    let head = imp.head.or_else(|| {
        sd.tensors.get(&format!("{head_module}.weight")).map(|w| Head { weight: w.clone(), bias: sd.tensors.get(&format!("{head_module}.bias")).cloned() })
    });
    let n = head.as_ref().map(|h| h.weight.shape[0]).unwrap_or(0);
    let classes = match (&spec.classes, &exported) {
        (Some(c), _) => c.clone(),
        (None, Some(m)) if m.classes.len() == n => m.classes.clone(),
        _ => (0..n).map(|c| c.to_string()).collect(),
    };
    if head.is_some() && classes.len() != n {
        return Err(Error::Input(format!("{} class names given, but the head has {n} classes", classes.len())));
    }
    let ty = imp.peft_type.name().to_lowercase();
    let meta = ExpertMeta {
        format: EXPERT_FORMAT,
        kind: imp.peft_type.expert_kind(),
        backbone: BackboneIdentity {
            model,
            config: serde_json::to_value(&cfg).unwrap_or_default(),
            weights: Some(spec.base.display().to_string()),
            sha256: Some(sha),
        },
        method: serde_json::json!({ "method": format!("peft-{ty}"), "peft_config": a.config }),
        task: spec.task.to_string(),
        dataset: exported.as_ref().map(|m| m.dataset.clone()).unwrap_or_else(|| format!("peft:{}", dir.display())),
        keep_ratio: None,
        criterion: None,
        summary: exported.as_ref().map(|m| m.summary.clone()).unwrap_or_else(|| serde_json::json!({ "imported_from": dir.display().to_string() })),
        classes,
        values: ValueDtype::F32,
        resolution: spec.resolution.or(exported.as_ref().and_then(|m| m.resolution)),
        tensors: Default::default(),
    };
    let e = Expert { meta, tensors: imp.tensors, head };
    e.validate().map_err(|x| Error::Input(format!("{}: {x}", dir.display())))?;
    Ok(e)
}
