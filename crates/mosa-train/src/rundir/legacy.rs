//! Run directories of format 1 (before backbone families and per-method configs): the flat
//! method config and bare ViT config of `config.json`, and the `<layer>_branch` parameter paths
//! of checkpoints and saved models, are converted on reading.

use mosa_core::adapter::AdapterOptions;
use mosa_core::lora::{LoraOptions, MosaLoraOptions};
use mosa_core::mosa::MosaOptions;
use mosa_core::prompt::PromptOptions;
use mosa_core::pruned::{PruneStyle, PrunedOptions};
use mosa_core::sparse::SparseConfig;
use mosa_core::{Method, MethodKind};
use serde_json::Value;

use super::{FORMAT, RunConfig};

/// An old run directory's config that cannot be converted (a field missing or mistyped).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LegacyError(pub String);

/// A parameter path of format 1 in today's layout (`attn.qkv_branch.` → `attn.qkv.branch.`).
pub fn path(p: &str) -> String {
    let mut s = p.to_string();
    for l in ["qkv", "proj", "fc1", "fc2"] {
        s = s.replace(&format!(".{l}_branch."), &format!(".{l}.branch."));
    }
    s
}

fn get<T: serde::de::DeserializeOwned>(m: &Value, k: &str) -> Result<T, LegacyError> {
    serde_json::from_value(m.get(k).cloned().ok_or_else(|| LegacyError(format!("format-1 method config has no `{k}`")))?)
        .map_err(|e| LegacyError(format!("`{k}`: {e}")))
}

/// The flat format-1 method config as a [`Method`].
pub fn method(m: &Value) -> Result<Method, LegacyError> {
    let kind: MethodKind = get(m, "method")?;
    let adapter = || -> Result<AdapterOptions, LegacyError> {
        Ok(AdapterOptions::new()
            .with_r(get(m, "r")?)
            .with_scale(get(m, "scale")?)
            .with_dropout(get(m, "adapter_dropout")?)
            .with_norm(get(m, "adapter_norm")?)
            .with_norm_eps(LEGACY_ADAPTER_NORM_EPS)
            .with_activation(Method::legacy_activation(kind)))
    };
    let mosa = || -> Result<MosaOptions, LegacyError> {
        Ok(MosaOptions::new().with_adapter(adapter()?).with_experts(get(m, "experts")?).with_share(get(m, "share")?))
    };
    let lora = || -> Result<LoraOptions, LegacyError> {
        Ok(LoraOptions::new()
            .with_r(get(m, "lora_r")?)
            .with_alpha(get(m, "lora_alpha")?)
            .with_dropout(get(m, "lora_dropout")?)
            .with_targets(get(m, "targets")?))
    };
    let prompt =
        || -> Result<PromptOptions, LegacyError> { Ok(PromptOptions::new().with_tokens(get(m, "prompt_tokens")?).with_dropout(get(m, "prompt_dropout")?)) };
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
        MethodKind::MosaLora => Method::MosaLora(MosaLoraOptions::new().with_lora(lora()?).with_experts(get(m, "experts")?).with_split(get(m, "lora_split")?)),
        MethodKind::Sparse => {
            let mut s = m.get("sparse").cloned().unwrap_or(Value::Null);
            if let Some(o) = s.as_object_mut() {
                o.remove("seed");
                o.insert("targets".into(), m.get("targets").cloned().unwrap_or(Value::Array(vec![])));
                // format 1 decayed ΔW and selected masks on the recipe's schedule
                o.insert("weight_decay".into(), Value::Bool(true));
                o.insert("selection_lr".into(), Value::String("schedule".into()));
            }
            Method::Sparse(serde_json::from_value::<SparseConfig>(s).map_err(|e| LegacyError(format!("`sparse`: {e}")))?)
        }
    })
}

/// The adapters' LayerNorm epsilon of formats 1 and 2 (PyTorch's default; not recorded).
pub const LEGACY_ADAPTER_NORM_EPS: f64 = 1e-5;

type Object = serde_json::Map<String, Value>;

/// The adapter options of a format-2/3 method config (the method's kind, the options), if
/// it has adapters: at the method's top level (adapter, pfeiffer, houlsby) or under
/// `adapter` (mosa, pruned-adapter).
fn adapter_options(v: &mut Value) -> Result<Option<(MethodKind, &mut Object)>, LegacyError> {
    let m = v.get_mut("run").and_then(|r| r.get_mut("method")).ok_or_else(|| LegacyError("no `run.method`".into()))?;
    let kind: MethodKind = get(m, "method")?;
    let target = match kind {
        MethodKind::Adapter | MethodKind::Pfeiffer | MethodKind::Houlsby => Some(&mut *m),
        MethodKind::Mosa | MethodKind::PrunedAdapter => m.get_mut("adapter"),
        MethodKind::Linear
        | MethodKind::Full
        | MethodKind::Bitfit
        | MethodKind::Lora
        | MethodKind::VptShallow
        | MethodKind::VptDeep
        | MethodKind::MosaLora
        | MethodKind::Sparse => None,
    };
    Ok(target.and_then(Value::as_object_mut).map(|o| (kind, o)))
}

/// A format-2 `config.json` as today's: every adapter's options get the epsilon it ran with,
/// then as format 3.
pub fn config2(mut v: Value) -> Result<RunConfig, LegacyError> {
    if let Some((_, o)) = adapter_options(&mut v)? {
        o.entry("norm_eps").or_insert(LEGACY_ADAPTER_NORM_EPS.into());
    }
    config3(v)
}

/// A format-3 `config.json` as today's: every adapter's options get the activation and
/// position it ran with.
pub fn config3(mut v: Value) -> Result<RunConfig, LegacyError> {
    if let Some((kind, o)) = adapter_options(&mut v)? {
        let act = serde_json::to_value(Method::legacy_activation(kind)).map_err(|e| LegacyError(e.to_string()))?;
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
fn finish(mut v: Value, from: u32) -> Result<RunConfig, LegacyError> {
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
    serde_json::from_value(v).map_err(|e| LegacyError(format!("format-{from} config: {e}")))
}

/// A format-1 `config.json` as today's [`RunConfig`].
pub fn config(mut v: Value) -> Result<RunConfig, LegacyError> {
    let run = v.get_mut("run").ok_or_else(|| LegacyError("no `run`".into()))?;
    let m = run.get("method").cloned().ok_or_else(|| LegacyError("no `run.method`".into()))?;
    // the one seed: format 1 set the recipe's seed from the method's
    if let (Some(seed), Some(t)) = (m.get("seed").cloned(), run.get_mut("train")) {
        t["seed"] = seed;
    }
    run["method"] = serde_json::to_value(method(&m)?).map_err(|e| LegacyError(e.to_string()))?;
    finish(v, 1)
}
