//! HF PEFT adapter folders (PEFT 0.21: `adapter_config.json` + `adapter_model.safetensors`), in
//! and out, as pure conversions between a folder's contents ([`PeftAdapter`]) and a task expert's
//! tensors ([`crate::expert`]).
//!
//! | mosa expert | PEFT adapter | tensors (under `base_model.model.`) |
//! |---|---|---|
//! | `lora` | `LORA` | `M.lora_A.weight` `[r, in]`, `M.lora_B.weight` `[out, r]`; `lora_alpha / r` (or `/ √r` with `use_rslora`) = our scale; ranks and alphas that differ per module in `rank_pattern` / `alpha_pattern` |
//! | `sparse` | `SHIRA` | `M.shira_weight` `[r·(in + out)]` values, `M.shira_indices` `[2, r·(in + out)]` (row, col) int32 |
//! | the head | `modules_to_save` | `H.weight`, `H.bias` |
//!
//! SHiRA fixes every module's entry count at `r·(in + out)` with one `r` for the whole adapter.
//! A sparse expert keeps other counts, so the export takes the smallest `r` that holds every
//! module's entries and pads each module with explicit zero-valued entries at positions the
//! expert does not use, after its own entries (PEFT adds the values into the weight, so a zero
//! changes nothing: the export is lossless). The padding count per module is recorded in the
//! header metadata (`mosa.peft`), which PEFT ignores and our import reads to drop exactly those
//! entries again; the expert's own metadata travels there too (`mosa.expert`). When no single `r`
//! fits (a module whose entries need an `r` with `r·(in + out)` above its `in·out` entries, which
//! PEFT refuses), the export is refused with the module and the numbers.
//!
//! The import takes what a mosa expert can represent and refuses the rest with the reason: other
//! PEFT types, DoRA, LoRA biases, layer replication, LoRA on parameters or embeddings, trainable
//! tokens, regular-expression rank / alpha patterns that match a module ambiguously, targets the
//! base does not have or that are not linear weights, and fully trained modules other than the
//! head.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::{Map, Value, json};

use crate::Error;
use crate::expert::{Delta, Expert, ExpertKind, ExpertMeta, ExpertTensor, Head};
use crate::host::HostTensor;

/// The adapter's configuration file.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's tensors.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix PEFT gives every saved key (`PeftModel` → `base_model` (the tuner) → `model`).
pub const PREFIX: &str = "base_model.model.";
/// Header metadata key of the SHiRA padding per module (export → import).
pub const PADDING_META: &str = "mosa.peft";

/// One tensor of an adapter file: float values, or integer indices.
#[derive(Debug, Clone, PartialEq)]
pub enum PeftTensor {
    F32(HostTensor),
    I32 { shape: Vec<usize>, data: Vec<i32> },
}

impl PeftTensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            PeftTensor::F32(t) => &t.shape,
            PeftTensor::I32 { shape, .. } => shape,
        }
    }
}

/// The contents of a PEFT adapter folder.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftAdapter {
    /// `adapter_config.json`.
    pub config: Map<String, Value>,
    /// `adapter_model.safetensors`, by stored key.
    pub tensors: BTreeMap<String, PeftTensor>,
    /// Its header metadata.
    pub metadata: HashMap<String, String>,
}

/// The two adapter types mosa reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeftType {
    Lora,
    Shira,
}

impl PeftType {
    pub fn name(self) -> &'static str {
        match self {
            PeftType::Lora => "LORA",
            PeftType::Shira => "SHIRA",
        }
    }

    /// The expert kind it maps to.
    pub fn expert_kind(self) -> ExpertKind {
        match self {
            PeftType::Lora => ExpertKind::Lora,
            PeftType::Shira => ExpertKind::Sparse,
        }
    }
}

fn err(msg: impl Into<String>) -> Error {
    Error::Expert(msg.into())
}

/// The module a weight belongs to (`blocks.0.attn.qkv.weight` → `blocks.0.attn.qkv`).
fn module_of(weight: &str) -> crate::Result<&str> {
    weight.strip_suffix(".weight").ok_or_else(|| err(format!("tensor `{weight}` is not a module's `weight`; PEFT adapts modules' weights")))
}

/// A module name as a PEFT pattern key that matches that module alone (`.` escaped).
fn exact_pattern(module: &str) -> String {
    module.replace('.', "\\.")
}

fn head_tensors(head: &Head, head_module: &str, out: &mut BTreeMap<String, PeftTensor>) {
    out.insert(format!("{PREFIX}{head_module}.weight"), PeftTensor::F32(head.weight.clone()));
    if let Some(b) = &head.bias {
        out.insert(format!("{PREFIX}{head_module}.bias"), PeftTensor::F32(b.clone()));
    }
}

/// The value occurring most often (the smallest among ties), for `r` / `lora_alpha`.
fn most_common(values: &[f64]) -> f64 {
    let mut best = (0usize, f64::INFINITY);
    for &v in values {
        let n = values.iter().filter(|&&w| w == v).count();
        if n > best.0 || (n == best.0 && v < best.1) {
            best = (n, v);
        }
    }
    best.1
}

/// A number as JSON: an integer where it is one (PEFT's `r`, `lora_alpha` are ints by default).
fn num(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 1e15 { json!(v as i64) } else { json!(v) }
}

/// The smallest SHiRA rank holding every tensor's entries, or why none fits.
pub fn shira_rank(tensors: &[ExpertTensor]) -> crate::Result<usize> {
    let mut r = 1;
    for t in tensors {
        let (out, inp) = (t.shape[0], t.shape[1]);
        r = r.max(t.delta.nnz(t.numel()).div_ceil(inp + out));
    }
    for t in tensors {
        let (out, inp) = (t.shape[0], t.shape[1]);
        if r * (inp + out) > out * inp {
            let worst = tensors.iter().max_by_key(|t| t.delta.nnz(t.numel()).div_ceil(t.shape[0] + t.shape[1])).map(|t| t.name.as_str()).unwrap_or("?");
            return Err(err(format!(
                "SHiRA holds r·(in + out) entries per module with one r for the whole adapter: `{worst}` needs r = {r}, which gives `{}` {} entries, more than its {} ({out}×{inp}), and PEFT refuses that; export a sparse expert with a lower keep ratio",
                t.name,
                r * (inp + out),
                out * inp
            )));
        }
    }
    Ok(r)
}

/// A mosa LoRA or sparse expert as a PEFT LoRA or SHiRA adapter. `base_model`: what the config
/// names as the base (a timm model name, or the weights file); `head_module`: the backbone's head
/// module (timm's name: `head`, `head.fc`), saved in `modules_to_save`.
pub fn export(e: &Expert, base_model: &str, head_module: &str) -> crate::Result<PeftAdapter> {
    e.validate()?;
    let mut tensors = BTreeMap::new();
    let mut config = Map::new();
    let mut targets = Vec::new();
    for t in &e.tensors {
        let module = module_of(&t.name)?;
        if t.shape.len() != 2 {
            return Err(err(format!("tensor `{}` has shape {:?}; PEFT LoRA / SHiRA adapt linear weights [out, in]", t.name, t.shape)));
        }
        targets.push(module.to_string());
    }
    let mut metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    match e.meta.kind {
        ExpertKind::Lora => {
            let mut ranks = Vec::new();
            for t in &e.tensors {
                let Delta::LowRank { a, b, scale } = &t.delta else { unreachable!("validated: a LoRA expert holds low-rank deltas") };
                let module = module_of(&t.name)?;
                tensors.insert(format!("{PREFIX}{module}.lora_A.weight"), PeftTensor::F32(a.clone()));
                tensors.insert(format!("{PREFIX}{module}.lora_B.weight"), PeftTensor::F32(b.clone()));
                let r = a.shape[0] as f64;
                ranks.push((module, r, *scale as f64 * r));
            }
            let rs: Vec<f64> = ranks.iter().map(|x| x.1).collect();
            let alphas: Vec<f64> = ranks.iter().map(|x| x.2).collect();
            let (r, alpha) = (most_common(&rs), most_common(&alphas));
            let rank_pattern: Map<String, Value> = ranks.iter().filter(|x| x.1 != r).map(|x| (exact_pattern(x.0), num(x.1))).collect();
            let alpha_pattern: Map<String, Value> = ranks.iter().filter(|x| x.2 != alpha).map(|x| (exact_pattern(x.0), num(x.2))).collect();
            config.insert("peft_type".into(), json!("LORA"));
            config.insert("r".into(), num(r));
            config.insert("lora_alpha".into(), num(alpha));
            config.insert("rank_pattern".into(), Value::Object(rank_pattern));
            config.insert("alpha_pattern".into(), Value::Object(alpha_pattern));
            config.insert("lora_dropout".into(), json!(0.0));
            config.insert("bias".into(), json!("none"));
            config.insert("use_rslora".into(), json!(false));
            config.insert("use_dora".into(), json!(false));
            config.insert("lora_bias".into(), json!(false));
            config.insert("fan_in_fan_out".into(), json!(false));
            config.insert("init_lora_weights".into(), json!(true));
        }
        ExpertKind::Sparse => {
            let r = shira_rank(&e.tensors)?;
            let mut padding = BTreeMap::new();
            for t in &e.tensors {
                let Delta::Sparse { indices, values } = &t.delta else { unreachable!("validated: a sparse expert holds sparse deltas") };
                let module = module_of(&t.name)?;
                let (out, inp) = (t.shape[0], t.shape[1]);
                let want = r * (inp + out);
                let pad = want - indices.len();
                let mut flat: Vec<u32> = indices.clone();
                let mut vals = values.clone();
                // the first positions the expert does not use (indices are sorted)
                let mut used = indices.iter().peekable();
                let mut i = 0u32;
                while flat.len() < want {
                    while used.peek().is_some_and(|&&u| u < i) {
                        used.next();
                    }
                    if used.peek() != Some(&&i) {
                        flat.push(i);
                        vals.push(0.0);
                    }
                    i += 1;
                }
                let mut rc = vec![0i32; 2 * want];
                for (k, &f) in flat.iter().enumerate() {
                    rc[k] = (f as usize / inp) as i32;
                    rc[want + k] = (f as usize % inp) as i32;
                }
                tensors.insert(format!("{PREFIX}{module}.shira_weight"), PeftTensor::F32(HostTensor::new(vec![want], vals)));
                tensors.insert(format!("{PREFIX}{module}.shira_indices"), PeftTensor::I32 { shape: vec![2, want], data: rc });
                padding.insert(module.to_string(), pad);
            }
            config.insert("peft_type".into(), json!("SHIRA"));
            config.insert("r".into(), json!(r));
            config.insert("mask_type".into(), json!("random"));
            config.insert("random_seed".into(), Value::Null);
            config.insert("fan_in_fan_out".into(), json!(false));
            config.insert("init_weights".into(), json!(true));
            metadata.insert(PADDING_META.into(), json!({ "padding": padding }).to_string());
        }
        ExpertKind::Full => {
            return Err(err("a full expert changes every weight: it is written as a plain state dict (`model.safetensors`), not as a PEFT adapter"));
        }
    }
    config.insert("target_modules".into(), json!(targets));
    let to_save = e.head.as_ref().map(|h| {
        head_tensors(h, head_module, &mut tensors);
        json!([head_module])
    });
    config.insert("modules_to_save".into(), to_save.unwrap_or(Value::Null));
    config.insert("base_model_name_or_path".into(), json!(base_model));
    config.insert("inference_mode".into(), json!(true));
    config.insert("task_type".into(), Value::Null);
    config.insert("revision".into(), Value::Null);
    metadata.insert("mosa.expert".into(), serde_json::to_string(&e.meta).map_err(|x| err(x.to_string()))?);
    Ok(PeftAdapter { config, tensors, metadata })
}

/// What the import needs to know of the base: every weight's shape (timm's names and layout) and
/// the head module's name.
pub struct Base<'a> {
    pub shapes: &'a BTreeMap<String, Vec<usize>>,
    pub head_module: &'a str,
}

/// A PEFT adapter read as an expert's parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub peft_type: PeftType,
    pub tensors: Vec<ExpertTensor>,
    /// The head from `modules_to_save`, if the adapter saved one.
    pub head: Option<Head>,
}

fn cfg_bool(c: &Map<String, Value>, key: &str) -> bool {
    c.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn cfg_num(c: &Map<String, Value>, key: &str) -> crate::Result<Option<f64>> {
    match c.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| err(format!("`{key}` is {v}, not a number"))),
    }
}

/// PEFT's pattern lookup (`peft.utils.other.get_pattern_key`): a key matches a module when the
/// module's name is `(.*\.)?(key)$`. PEFT takes the first matching key in the file's order; a
/// module that two keys with different values match is refused (that order is not kept here).
fn pattern_value(pattern: &Map<String, Value>, what: &str, module: &str) -> crate::Result<Option<f64>> {
    let mut found: Option<(String, f64)> = None;
    for (key, v) in pattern {
        let re =
            regex::Regex::new(&format!(r"^(.*\.)?({key})$")).map_err(|e| err(format!("`{what}` key `{key}` is not a regular expression mosa reads: {e}")))?;
        if !re.is_match(module) {
            continue;
        }
        let v = v.as_f64().ok_or_else(|| err(format!("`{what}` of `{key}` is {v}, not a number")))?;
        match &found {
            Some((k0, v0)) if *v0 != v => {
                return Err(err(format!(
                    "`{what}` keys `{k0}` ({v0}) and `{key}` ({v}) both match module `{module}`; PEFT takes the first in the file's order, which mosa does not keep: make the patterns disjoint"
                )));
            }
            Some(_) => {}
            None => found = Some((key.clone(), v)),
        }
    }
    Ok(found.map(|f| f.1))
}

/// Settings of a LoRA config that a mosa LoRA expert cannot represent, with why.
fn refuse_lora_options(c: &Map<String, Value>) -> crate::Result<()> {
    if cfg_bool(c, "use_dora") {
        return Err(err("`use_dora` is true: DoRA rescales each weight's columns by a learned magnitude, which is not a low-rank ΔW; mosa reads plain LoRA"));
    }
    if cfg_bool(c, "lora_bias") {
        return Err(err("`lora_bias` is true: the adapter trains biases of lora_B, which a LoRA expert does not hold"));
    }
    match c.get("bias").and_then(Value::as_str).unwrap_or("none") {
        "none" => {}
        b => return Err(err(format!("`bias` is \"{b}\": the adapter trains biases, which a LoRA expert does not hold; only \"none\" is read"))),
    }
    let set = |k: &str| c.get(k).is_some_and(|v| !v.is_null() && v != &json!([]) && v != &json!({}) && v != &json!(false));
    for (key, why) in [
        ("layer_replication", "it duplicates layers of the base, which an expert on the base cannot"),
        ("target_parameters", "LoRA on bare parameters (not modules) is not read"),
        ("trainable_token_indices", "trainable token embeddings have no counterpart in a vision backbone's expert"),
        ("use_qalora", "QA-LoRA pools the input groupwise, which is not a plain low-rank ΔW"),
        ("use_bdlora", "block-diagonal LoRA variants are not read"),
    ] {
        if set(key) {
            return Err(err(format!("`{key}` is set: {why}")));
        }
    }
    Ok(())
}

fn shape2(t: &PeftTensor, key: &str) -> crate::Result<HostTensor> {
    match t {
        PeftTensor::F32(h) if h.shape.len() == 2 => Ok(h.clone()),
        PeftTensor::F32(h) => Err(err(format!(
            "tensor `{key}` has shape {:?}: LoRA on a convolution or another non-linear module is not read (mosa's LoRA experts change linear weights)",
            h.shape
        ))),
        PeftTensor::I32 { .. } => Err(err(format!("tensor `{key}` holds integers; float factors are expected"))),
    }
}

/// Reads a PEFT LoRA or SHiRA adapter as an expert's tensors and head, against the base's
/// weights (every target must be a 2-D weight of the base, of the adapter's shape).
pub fn import(a: &PeftAdapter, base: &Base<'_>) -> crate::Result<Imported> {
    let c = &a.config;
    let ty = c.get("peft_type").and_then(Value::as_str).ok_or_else(|| err(format!("{CONFIG_FILE} has no `peft_type`")))?;
    let peft_type = match ty {
        "LORA" => PeftType::Lora,
        "SHIRA" => PeftType::Shira,
        other => {
            return Err(err(format!(
                "`peft_type` is {other}: mosa reads LORA (as a LoRA expert) and SHIRA (as a sparse expert), whose ΔW it can merge; other PEFT types have no expert kind"
            )));
        }
    };
    if peft_type == PeftType::Lora {
        refuse_lora_options(c)?;
    }
    // group the stored tensors by module and suffix
    let mut modules: BTreeMap<&str, BTreeMap<&str, (&str, &PeftTensor)>> = BTreeMap::new();
    let mut head_w = None;
    let mut head_b = None;
    let suffixes: &[&str] = match peft_type {
        PeftType::Lora => &[".lora_A.weight", ".lora_B.weight"],
        PeftType::Shira => &[".shira_weight", ".shira_indices"],
    };
    for (key, t) in &a.tensors {
        let Some(rest) = key.strip_prefix(PREFIX) else {
            return Err(err(format!("tensor `{key}` does not start with `{PREFIX}` as PEFT saves a model's adapter")));
        };
        if let Some((m, s)) = suffixes.iter().find_map(|s| rest.strip_suffix(s).map(|m| (m, *s))) {
            modules.entry(m).or_default().insert(s, (key.as_str(), t));
            continue;
        }
        if rest == format!("{}.weight", base.head_module) {
            head_w = Some((key.as_str(), t));
            continue;
        }
        if rest == format!("{}.bias", base.head_module) {
            head_b = Some((key.as_str(), t));
            continue;
        }
        let why = if ["lora_embedding_", "lora_magnitude_vector", "lora_E", ".bias"].iter().any(|p| rest.contains(p)) {
            "a part of the adapter a mosa expert does not hold (embedding LoRA, DoRA magnitudes, trained biases)".to_string()
        } else {
            format!(
                "a fully trained module (`modules_to_save`) other than the head `{}`; an expert holds low-rank or sparse changes of the base and the head alone",
                base.head_module
            )
        };
        return Err(err(format!("tensor `{key}` is {why}")));
    }
    if modules.is_empty() {
        return Err(err(format!("{WEIGHTS_FILE} holds no {} tensors ({})", peft_type.name(), suffixes.join(", "))));
    }
    let mut tensors = Vec::new();
    let padding: BTreeMap<String, usize> = a
        .metadata
        .get(PADDING_META)
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
        .and_then(|v| serde_json::from_value(v["padding"].clone()).ok())
        .unwrap_or_default();
    for (module, parts) in &modules {
        let wname = format!("{module}.weight");
        let Some(shape) = base.shapes.get(&wname) else {
            return Err(err(format!("target `{module}`: the base has no weight `{wname}` (targets are timm module names of the base)")));
        };
        if shape.len() != 2 {
            return Err(err(format!("target `{module}`: the base's `{wname}` has shape {shape:?}, not a linear weight [out, in]")));
        }
        if *module == base.head_module {
            return Err(err(format!("target `{module}` is the head, which an expert carries whole, never as a change to merge")));
        }
        let (out, inp) = (shape[0], shape[1]);
        for s in suffixes {
            if !parts.contains_key(s) {
                return Err(err(format!("tensor `{PREFIX}{module}{s}` is missing")));
            }
        }
        let delta = match peft_type {
            PeftType::Lora => {
                let (ka, ta) = parts[".lora_A.weight"];
                let (kb, tb) = parts[".lora_B.weight"];
                let (la, lb) = (shape2(ta, ka)?, shape2(tb, kb)?);
                let r = la.shape[0];
                if la.shape[1] != inp || lb.shape != [out, r] {
                    return Err(err(format!(
                        "target `{module}`: lora_A {:?} and lora_B {:?} do not make the base's [{out}, {inp}] weight with one rank",
                        la.shape, lb.shape
                    )));
                }
                let empty = Map::new();
                let pattern = |k: &str| c.get(k).and_then(Value::as_object).unwrap_or(&empty);
                let r_cfg = pattern_value(pattern("rank_pattern"), "rank_pattern", module)?.or(cfg_num(c, "r")?);
                if let Some(rc) = r_cfg
                    && rc != r as f64
                {
                    return Err(err(format!("target `{module}`: the config gives rank {rc} but its factors have rank {r}")));
                }
                let alpha = pattern_value(pattern("alpha_pattern"), "alpha_pattern", module)?
                    .or(cfg_num(c, "lora_alpha")?)
                    .ok_or_else(|| err(format!("{CONFIG_FILE} has no `lora_alpha`")))?;
                let scale = if cfg_bool(c, "use_rslora") { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
                if la.data.iter().chain(&lb.data).any(|v| !v.is_finite()) || !scale.is_finite() {
                    return Err(err(format!("target `{module}`: a non-finite factor or scale")));
                }
                Delta::LowRank { a: la, b: lb, scale: scale as f32 }
            }
            PeftType::Shira => {
                let (kw, tw) = parts[".shira_weight"];
                let (ki, ti) = parts[".shira_indices"];
                let PeftTensor::F32(w) = tw else { return Err(err(format!("tensor `{kw}` holds integers; float values are expected"))) };
                let idx: Vec<i64> = match ti {
                    PeftTensor::I32 { data, .. } => data.iter().map(|&v| v as i64).collect(),
                    // PEFT saves the indices as float32 on Windows
                    PeftTensor::F32(h) => h.data.iter().map(|&v| v as i64).collect(),
                };
                let n = w.data.len();
                if w.shape.len() != 1 || ti.shape() != [2, n] {
                    return Err(err(format!(
                        "target `{module}`: shira_weight {:?} and shira_indices {:?} do not pair (2 × nnz indices for nnz values)",
                        w.shape,
                        ti.shape()
                    )));
                }
                let mut entries: Vec<(u32, f32)> = Vec::with_capacity(n);
                let pad = padding.get(*module).copied().unwrap_or(0);
                if pad > n {
                    return Err(err(format!("target `{module}`: the metadata says {pad} padding entries of {n}")));
                }
                for k in 0..n {
                    let (row, col) = (idx[k], idx[n + k]);
                    if row < 0 || col < 0 || row as usize >= out || col as usize >= inp {
                        return Err(err(format!("tensor `{ki}`: entry {k} at ({row}, {col}) is outside the base's [{out}, {inp}] weight")));
                    }
                    let v = w.data[k];
                    if !v.is_finite() {
                        return Err(err(format!("tensor `{kw}`: value {k} is not finite")));
                    }
                    if k >= n - pad {
                        if v != 0.0 {
                            return Err(err(format!("tensor `{kw}`: entry {k} is padding by the metadata but holds {v}")));
                        }
                        continue;
                    }
                    entries.push(((row as usize * inp + col as usize) as u32, v));
                }
                // PEFT sums repeated positions (a sparse COO tensor added into the weight): so do we
                entries.sort_by_key(|e| e.0);
                let (mut indices, mut values): (Vec<u32>, Vec<f32>) = (Vec::with_capacity(entries.len()), Vec::with_capacity(entries.len()));
                for (i, v) in entries {
                    if indices.last() == Some(&i) {
                        *values.last_mut().unwrap() += v;
                    } else {
                        indices.push(i);
                        values.push(v);
                    }
                }
                Delta::Sparse { indices, values }
            }
        };
        tensors.push(ExpertTensor { name: wname, shape: shape.clone(), delta });
    }
    let f32_of = |(k, t): (&str, &PeftTensor)| match t {
        PeftTensor::F32(h) => Ok(h.clone()),
        PeftTensor::I32 { .. } => Err(err(format!("tensor `{k}` holds integers; float values are expected"))),
    };
    let head = match (head_w, head_b) {
        (Some(w), b) => Some(Head { weight: f32_of(w)?, bias: b.map(f32_of).transpose()? }),
        (None, Some((k, _))) => return Err(err(format!("tensor `{k}` comes without the head's weight"))),
        (None, None) => None,
    };
    Ok(Imported { peft_type, tensors, head })
}

fn dtype_bytes(t: &PeftTensor) -> (Dtype, Vec<u8>) {
    match t {
        PeftTensor::F32(h) => (Dtype::F32, bytemuck::cast_slice(&h.data).to_vec()),
        PeftTensor::I32 { data, .. } => (Dtype::I32, bytemuck::cast_slice(data).to_vec()),
    }
}

impl PeftAdapter {
    /// The expert's own metadata, when mosa exported the adapter (PEFT's re-save drops it).
    pub fn exported(&self) -> Option<ExpertMeta> {
        self.metadata.get("mosa.expert").and_then(|m| serde_json::from_str(m).ok())
    }

    /// `adapter_config.json`'s text (sorted keys, as PEFT writes them, indented).
    pub fn config_text(&self) -> String {
        serde_json::to_string_pretty(&self.config).expect("a JSON map serialises") + "\n"
    }

    /// `adapter_model.safetensors`' bytes.
    pub fn weights_bytes(&self) -> crate::Result<Vec<u8>> {
        let blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(k, t)| {
                let (dt, b) = dtype_bytes(t);
                (k.clone(), dt, t.shape().to_vec(), b)
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = blobs
            .iter()
            .map(|(n, dt, s, b)| TensorView::new(*dt, s.clone(), b).map(|v| (n.clone(), v)))
            .collect::<Result<_, _>>()
            .map_err(|e| err(e.to_string()))?;
        safetensors::serialize(views, Some(self.metadata.clone())).map_err(|e| err(e.to_string()))
    }

    /// The folder's two files, by name.
    pub fn files(&self) -> crate::Result<[(&'static str, Vec<u8>); 2]> {
        Ok([(CONFIG_FILE, self.config_text().into_bytes()), (WEIGHTS_FILE, self.weights_bytes()?)])
    }

    /// Reads a PEFT adapter folder; errors name the file (and the JSON line or the tensor).
    pub fn read(dir: &Path) -> crate::Result<PeftAdapter> {
        if !dir.is_dir() {
            return Err(Error::in_file(dir, err("not a folder; a PEFT adapter is a folder with adapter_config.json and adapter_model.safetensors")));
        }
        let cpath = dir.join(CONFIG_FILE);
        let text = crate::fsio::read_text(&cpath, crate::fsio::caps::CONFIG).map_err(|e| Error::in_file(&cpath, e))?;
        let config: Map<String, Value> =
            serde_json::from_str(&text).map_err(|e| Error::in_file(&cpath, err(format!("line {}, column {}: {e}", e.line(), e.column()))))?;
        let wpath = dir.join(WEIGHTS_FILE);
        if !wpath.exists() && dir.join("adapter_model.bin").exists() {
            return Err(Error::in_file(
                dir.join("adapter_model.bin"),
                err("a pickled PyTorch adapter, which mosa does not unpickle; save it with `save_pretrained(..., safe_serialization=True)` (PEFT's default)"),
            ));
        }
        let bytes = crate::fsio::read_bounded(&wpath, crate::fsio::caps::TENSORS).map_err(|e| Error::in_file(&wpath, e))?;
        Self::from_parts(config, &bytes).map_err(|e| Error::in_file(&wpath, e))
    }

    /// An adapter from its config and its safetensors bytes.
    pub fn from_parts(config: Map<String, Value>, bytes: &[u8]) -> crate::Result<PeftAdapter> {
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| err(format!("not a safetensors file: {e}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(bytes).map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (name, v) in st.tensors() {
            let b = v.data();
            let shape = v.shape().to_vec();
            let t = match v.dtype() {
                Dtype::F32 => PeftTensor::F32(HostTensor::new(shape, crate::expert::f32s(b))),
                Dtype::F16 => PeftTensor::F32(HostTensor::new(shape, b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect())),
                Dtype::BF16 => PeftTensor::F32(HostTensor::new(shape, b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect())),
                Dtype::I32 => PeftTensor::I32 { shape, data: b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect() },
                Dtype::I64 => {
                    let wide: Vec<i64> = b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
                    let data = wide
                        .iter()
                        .map(|&v| i32::try_from(v))
                        .collect::<Result<Vec<i32>, _>>()
                        .map_err(|_| err(format!("tensor `{name}`: an index beyond 32 bits")))?;
                    PeftTensor::I32 { shape, data }
                }
                other => return Err(err(format!("tensor `{name}` is {other:?}; float (f32, f16, bf16) values and int32 / int64 indices are read"))),
            };
            tensors.insert(name, t);
        }
        Ok(PeftAdapter { config, tensors, metadata })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expert::{BackboneIdentity, EXPERT_FORMAT, ValueDtype};

    fn meta(kind: ExpertKind) -> ExpertMeta {
        ExpertMeta {
            format: EXPERT_FORMAT,
            kind,
            backbone: BackboneIdentity { model: "m".into(), config: json!({}), weights: None, sha256: None },
            method: json!({}),
            task: "t".into(),
            dataset: "d".into(),
            keep_ratio: None,
            criterion: None,
            summary: json!({}),
            classes: vec!["a".into(), "b".into()],
            values: ValueDtype::F32,
            resolution: Some(32),
            tensors: Default::default(),
        }
    }

    fn ramp(shape: &[usize], k: f32) -> HostTensor {
        let n = shape.iter().product();
        HostTensor::new(shape.to_vec(), (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) * k).collect())
    }

    fn shapes() -> BTreeMap<String, Vec<usize>> {
        [
            ("l.0.fc2.weight", vec![6, 4]),
            ("l.1.fc2.weight", vec![6, 4]),
            ("l.10.fc2.weight", vec![6, 4]),
            ("l.0.qkv.weight", vec![9, 4]),
            ("head.weight", vec![2, 4]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn lora(name: &str, out: usize, r: usize, scale: f32) -> ExpertTensor {
        ExpertTensor { name: name.into(), shape: vec![out, 4], delta: Delta::LowRank { a: ramp(&[r, 4], 0.1), b: ramp(&[out, r], 0.2), scale } }
    }

    #[test]
    fn lora_ranks_and_scales_that_differ_go_to_exact_patterns_and_back() {
        let e = Expert {
            meta: meta(ExpertKind::Lora),
            tensors: vec![
                lora("l.0.fc2.weight", 6, 2, 2.0),
                lora("l.1.fc2.weight", 6, 2, 2.0),
                lora("l.10.fc2.weight", 6, 1, 2.0),
                lora("l.0.qkv.weight", 9, 2, 0.5),
            ],
            head: Some(Head { weight: ramp(&[2, 4], 1.0), bias: None }),
        };
        let a = export(&e, "base", "head").unwrap();
        // r 2 and α 4 (scale 2) are the most common; the others named exactly (`l.1` must not
        // match `l.10`: the dots are escaped)
        assert_eq!((a.config["r"].clone(), a.config["lora_alpha"].clone()), (json!(2), json!(4)));
        assert_eq!(a.config["rank_pattern"], json!({ "l\\.10\\.fc2": 1 }));
        assert_eq!(a.config["alpha_pattern"], json!({ "l\\.10\\.fc2": 2, "l\\.0\\.qkv": 1 }));
        assert_eq!(a.tensors.len(), 9, "A and B of 4 modules and the head weight");
        let back = import(&a, &Base { shapes: &shapes(), head_module: "head" }).unwrap();
        let mut want = e.tensors.clone();
        want.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(back.tensors, want);
        assert_eq!(back.head, e.head);
        assert_eq!(a.exported().unwrap().classes, e.meta.classes);
    }

    #[test]
    fn patterns_match_as_peft_matches_them() {
        let p: Map<String, Value> = serde_json::from_value(json!({ "fc2": 3, "l\\.1\\.qkv": 5 })).unwrap();
        assert_eq!(pattern_value(&p, "rank_pattern", "l.0.fc2").unwrap(), Some(3.0));
        assert_eq!(pattern_value(&p, "rank_pattern", "fc2").unwrap(), Some(3.0));
        assert_eq!(pattern_value(&p, "rank_pattern", "l.0.fc22").unwrap(), None, "a key matches whole name parts");
        assert_eq!(pattern_value(&p, "rank_pattern", "l.0.xfc2").unwrap(), None);
        assert_eq!(pattern_value(&p, "rank_pattern", "l.1.qkv").unwrap(), Some(5.0));
        assert_eq!(pattern_value(&p, "rank_pattern", "l.11.qkv").unwrap(), None);
        // two keys with one value are fine, with two values refused
        let same: Map<String, Value> = serde_json::from_value(json!({ "fc2": 3, "l.*fc2": 3 })).unwrap();
        assert_eq!(pattern_value(&same, "rank_pattern", "l.0.fc2").unwrap(), Some(3.0));
        let two: Map<String, Value> = serde_json::from_value(json!({ "fc2": 3, "l.*fc2": 4 })).unwrap();
        assert!(pattern_value(&two, "rank_pattern", "l.0.fc2").unwrap_err().to_string().contains("both match"));
    }

    #[test]
    fn sparse_entries_are_padded_at_unused_positions_after_their_own() {
        let sparse = |name: &str, out: usize, idx: Vec<u32>| ExpertTensor {
            name: name.into(),
            shape: vec![out, 4],
            delta: Delta::Sparse { values: idx.iter().map(|&i| i as f32 + 0.5).collect(), indices: idx },
        };
        // qkv needs r = ceil(14 / 13) = 2 → 26 entries; fc2 holds 3 and gets 17 padding entries
        let e = Expert {
            meta: meta(ExpertKind::Sparse),
            tensors: vec![sparse("l.0.qkv.weight", 9, (0..14).map(|i| 2 * i).collect()), sparse("l.0.fc2.weight", 6, vec![0, 1, 5])],
            head: None,
        };
        assert_eq!(shira_rank(&e.tensors).unwrap(), 2);
        let a = export(&e, "base", "head").unwrap();
        assert_eq!(a.config["r"], json!(2));
        assert_eq!(a.config["modules_to_save"], Value::Null);
        let PeftTensor::I32 { shape, data } = &a.tensors["base_model.model.l.0.fc2.shira_indices"] else { panic!() };
        assert_eq!(shape, &[2, 20]);
        let flat: Vec<i32> = (0..20).map(|k| data[k] * 4 + data[20 + k]).collect();
        assert_eq!(&flat[..3], &[0, 1, 5], "the expert's own entries first");
        assert_eq!(&flat[3..8], &[2, 3, 4, 6, 7], "then the first unused positions");
        let mut all = flat.clone();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 20, "no position twice");
        let PeftTensor::F32(v) = &a.tensors["base_model.model.l.0.fc2.shira_weight"] else { panic!() };
        assert!(v.data[3..].iter().all(|&x| x == 0.0));
        let back = import(&a, &Base { shapes: &shapes(), head_module: "head" }).unwrap();
        let mut want = e.tensors.clone();
        want.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(back.tensors, want, "the padding is dropped again");
        // without our metadata (PEFT re-saved it) the padding stays, as zeros
        let mut bare = a.clone();
        bare.metadata.clear();
        let kept = import(&bare, &Base { shapes: &shapes(), head_module: "head" }).unwrap();
        assert_eq!(kept.tensors.iter().map(|t| t.delta.nnz(t.numel())).sum::<usize>(), 20 + 26);
        assert!(bare.exported().is_none());
    }
}
