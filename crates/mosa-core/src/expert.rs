//! The task-expert file: one safetensors file per expert, readable from Python with
//! `safetensors` (sparse-experts spec §2).
//!
//! Tensors are named after the backbone weight they change, in timm's names and layout
//! (`blocks.3.attn.qkv.weight`, `[out, in]`):
//!
//! | kind | tensors per changed weight `W` | ΔW |
//! |---|---|---|
//! | `sparse` | `W.indices` (u32, sorted flat indices) or `W.bitmap` (u8, bit `i % 8` of byte `i / 8`, whichever is smaller), `W.values` (f32, or f16 when asked) | values at the kept positions |
//! | `lora` | `W.lora_a` `[r, in]`, `W.lora_b` `[out, r]` (PEFT's layout), scale in the metadata | `scale · B · A` |
//! | `full` | `W.delta` `[out, in]` | `W − W0` |
//!
//! The task head travels along as `head.weight` `[classes, d]` / `head.bias` and is never merged.
//! The header metadata `mosa.expert` holds [`ExpertMeta`] (format version, kind, backbone
//! identity, method, task, keep ratio, criterion, training summary, class names, each tensor's
//! dense shape and encoding).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::host::HostTensor;

/// The expert format this build writes and reads.
pub const EXPERT_FORMAT: u32 = 1;

/// What an expert stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ExpertKind {
    /// A masked subset of the base weights: indices + values.
    Sparse,
    /// Low-rank factors.
    Lora,
    /// Dense deltas of every trained tensor.
    Full,
}

/// Precision of stored sparse values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ValueDtype {
    #[default]
    F32,
    F16,
}

/// The backbone an expert was trained on; a merge requires every expert's to agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackboneIdentity {
    /// Preset name or config file.
    pub model: String,
    /// The backbone configuration (a `BackboneConfig` as JSON).
    pub config: serde_json::Value,
    pub weights: Option<String>,
    /// SHA-256 of the weights file (None: random initialisation).
    pub sha256: Option<String>,
}

/// How one changed tensor is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorMeta {
    /// Dense shape in timm's layout.
    pub shape: Vec<usize>,
    /// `indices`, `bitmap`, `lora` or `dense`.
    pub encoding: String,
    /// LoRA's scale (alpha / r).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f32>,
}

/// The header metadata of an expert file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpertMeta {
    pub format: u32,
    pub kind: ExpertKind,
    pub backbone: BackboneIdentity,
    /// The method and its options (a `Method` as JSON).
    pub method: serde_json::Value,
    /// Task name (the merge and `mosa eval --task` refer to it).
    pub task: String,
    /// Dataset spec it was trained on.
    pub dataset: String,
    pub keep_ratio: Option<f64>,
    pub criterion: Option<String>,
    /// The run's summary (accuracies, parameters, times), as JSON.
    pub summary: serde_json::Value,
    /// Class names, in label order.
    pub classes: Vec<String>,
    #[serde(default)]
    pub values: ValueDtype,
    /// Input side the expert was trained at (its head expects features at that resolution).
    #[serde(default)]
    pub resolution: Option<usize>,
    /// Every changed tensor, by name.
    #[serde(default)]
    pub tensors: BTreeMap<String, TensorMeta>,
}

/// The change an expert makes to one weight.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// Sorted, unique flat indices and their values.
    Sparse { indices: Vec<u32>, values: Vec<f32> },
    /// `scale · B · A` with `a` `[r, in]`, `b` `[out, r]`.
    LowRank { a: HostTensor, b: HostTensor, scale: f32 },
    /// Every entry.
    Dense(Vec<f32>),
}

impl Delta {
    /// Stored entries (a dense or low-rank delta touches every entry).
    pub fn nnz(&self, numel: usize) -> usize {
        match self {
            Delta::Sparse { indices, .. } => indices.len(),
            Delta::LowRank { .. } | Delta::Dense(_) => numel,
        }
    }

    /// The dense delta of `numel` entries (`[out, in]` row-major).
    pub fn to_dense(&self, numel: usize) -> Vec<f32> {
        match self {
            Delta::Sparse { indices, values } => {
                let mut d = vec![0.0; numel];
                for (&i, &v) in indices.iter().zip(values) {
                    d[i as usize] = v;
                }
                d
            }
            Delta::LowRank { a, b, scale } => {
                let (r, n_in, n_out) = (a.shape[0], a.shape[1], b.shape[0]);
                let mut d = vec![0.0f32; n_out * n_in];
                for o in 0..n_out {
                    let row = &mut d[o * n_in..(o + 1) * n_in];
                    for k in 0..r {
                        let bk = b.data[o * r + k] * scale;
                        for (x, &ak) in row.iter_mut().zip(&a.data[k * n_in..(k + 1) * n_in]) {
                            *x += bk * ak;
                        }
                    }
                }
                d
            }
            Delta::Dense(d) => d.clone(),
        }
    }
}

/// One changed weight.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertTensor {
    /// The backbone weight's name (timm).
    pub name: String,
    /// Its dense shape (timm's layout).
    pub shape: Vec<usize>,
    pub delta: Delta,
}

impl ExpertTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A task head: `[classes, d]` weight and `[classes]` bias (timm's layout).
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub weight: HostTensor,
    pub bias: Option<HostTensor>,
}

/// A task expert.
#[derive(Debug, Clone, PartialEq)]
pub struct Expert {
    pub meta: ExpertMeta,
    pub tensors: Vec<ExpertTensor>,
    pub head: Option<Head>,
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub(crate) fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Flat indices of the set bits of a bitmap.
fn from_bitmap(bits: &[u8], numel: usize) -> Vec<u32> {
    (0..numel).filter(|&i| bits[i / 8] >> (i % 8) & 1 == 1).map(|i| i as u32).collect()
}

fn to_bitmap(indices: &[u32], numel: usize) -> Vec<u8> {
    let mut b = vec![0u8; numel.div_ceil(8)];
    for &i in indices {
        b[i as usize / 8] |= 1 << (i % 8);
    }
    b
}

impl Expert {
    /// Checks every tensor: sorted, unique, in-range indices, lengths and shapes that agree,
    /// finite values, and that the tensors fit the kind.
    pub fn validate(&self) -> crate::Result<()> {
        if self.meta.format != EXPERT_FORMAT {
            return Err(Error::Expert(format!("expert format {} (this mosa reads {EXPERT_FORMAT})", self.meta.format)));
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.tensors {
            let n = t.numel();
            let name = &t.name;
            if !seen.insert(name) {
                return Err(Error::Expert(format!("tensor `{name}` appears twice")));
            }
            let kind_ok = matches!(
                (self.meta.kind, &t.delta),
                (ExpertKind::Sparse, Delta::Sparse { .. }) | (ExpertKind::Lora, Delta::LowRank { .. }) | (ExpertKind::Full, Delta::Dense(_))
            );
            if !kind_ok {
                return Err(Error::Expert(format!("tensor `{name}` is not stored as a {:?} expert's tensors are", self.meta.kind)));
            }
            match &t.delta {
                Delta::Sparse { indices, values } => {
                    if indices.len() != values.len() {
                        return Err(Error::Expert(format!("tensor `{name}`: {} indices but {} values", indices.len(), values.len())));
                    }
                    if let Some(w) = indices.windows(2).position(|w| w[0] >= w[1]) {
                        let why = if indices[w] == indices[w + 1] { "duplicated" } else { "unsorted" };
                        return Err(Error::Expert(format!("tensor `{name}`: indices are {why} at position {}", w + 1)));
                    }
                    if let Some(&last) = indices.last()
                        && last as usize >= n
                    {
                        return Err(Error::Expert(format!("tensor `{name}`: index {last} out of range for shape {:?} ({n} entries)", t.shape)));
                    }
                    if let Some(k) = values.iter().position(|v| !v.is_finite()) {
                        return Err(Error::Expert(format!("tensor `{name}`: value {k} is not finite")));
                    }
                }
                Delta::LowRank { a, b, scale } => {
                    let ok = t.shape.len() == 2
                        && a.shape.len() == 2
                        && b.shape.len() == 2
                        && a.shape[1] == t.shape[1]
                        && b.shape[0] == t.shape[0]
                        && a.shape[0] == b.shape[1];
                    if !ok {
                        return Err(Error::Expert(format!("tensor `{name}`: LoRA factors {:?} and {:?} do not make {:?}", a.shape, b.shape, t.shape)));
                    }
                    if !scale.is_finite() || a.data.iter().chain(&b.data).any(|v| !v.is_finite()) {
                        return Err(Error::Expert(format!("tensor `{name}`: non-finite LoRA factor or scale")));
                    }
                }
                Delta::Dense(d) => {
                    if d.len() != n {
                        return Err(Error::Expert(format!("tensor `{name}`: {} values for shape {:?}", d.len(), t.shape)));
                    }
                    if d.iter().any(|v| !v.is_finite()) {
                        return Err(Error::Expert(format!("tensor `{name}`: non-finite value")));
                    }
                }
            }
        }
        if let Some(h) = &self.head {
            if h.weight.shape.len() != 2 || h.bias.as_ref().is_some_and(|b| b.shape != [h.weight.shape[0]]) {
                return Err(Error::Expert(format!("head: weight {:?} and bias {:?} do not fit", h.weight.shape, h.bias.as_ref().map(|b| &b.shape))));
            }
            if !self.meta.classes.is_empty() && self.meta.classes.len() != h.weight.shape[0] {
                return Err(Error::Expert(format!("head has {} classes but {} class names are given", h.weight.shape[0], self.meta.classes.len())));
            }
        }
        Ok(())
    }

    /// The file's bytes (safetensors).
    pub fn to_bytes(&self) -> crate::Result<Vec<u8>> {
        self.validate()?;
        let mut meta = self.meta.clone();
        meta.tensors.clear();
        let mut blobs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for t in &self.tensors {
            let n = t.numel();
            let (encoding, scale) = match &t.delta {
                Delta::Sparse { indices, values } => {
                    let bitmap = n.div_ceil(8) < 4 * indices.len();
                    if bitmap {
                        blobs.push((format!("{}.bitmap", t.name), Dtype::U8, vec![n.div_ceil(8)], to_bitmap(indices, n)));
                    } else {
                        blobs.push((format!("{}.indices", t.name), Dtype::U32, vec![indices.len()], indices.iter().flat_map(|i| i.to_le_bytes()).collect()));
                    }
                    let (dt, bytes) = match meta.values {
                        ValueDtype::F32 => (Dtype::F32, bytes_f32(values)),
                        ValueDtype::F16 => (Dtype::F16, values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect()),
                    };
                    blobs.push((format!("{}.values", t.name), dt, vec![values.len()], bytes));
                    (if bitmap { "bitmap" } else { "indices" }, None)
                }
                Delta::LowRank { a, b, scale } => {
                    blobs.push((format!("{}.lora_a", t.name), Dtype::F32, a.shape.clone(), bytes_f32(&a.data)));
                    blobs.push((format!("{}.lora_b", t.name), Dtype::F32, b.shape.clone(), bytes_f32(&b.data)));
                    ("lora", Some(*scale))
                }
                Delta::Dense(d) => {
                    blobs.push((format!("{}.delta", t.name), Dtype::F32, t.shape.clone(), bytes_f32(d)));
                    ("dense", None)
                }
            };
            meta.tensors.insert(t.name.clone(), TensorMeta { shape: t.shape.clone(), encoding: encoding.into(), scale });
        }
        if let Some(h) = &self.head {
            blobs.push(("head.weight".into(), Dtype::F32, h.weight.shape.clone(), bytes_f32(&h.weight.data)));
            if let Some(b) = &h.bias {
                blobs.push(("head.bias".into(), Dtype::F32, b.shape.clone(), bytes_f32(&b.data)));
            }
        }
        let views: Vec<(String, TensorView<'_>)> = blobs
            .iter()
            .map(|(n, dt, s, b)| TensorView::new(*dt, s.clone(), b).map(|v| (n.clone(), v)))
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Expert(e.to_string()))?;
        let header = HashMap::from([("mosa.expert".to_string(), serde_json::to_string(&meta).map_err(|e| Error::Expert(e.to_string()))?)]);
        safetensors::serialize(views, Some(header)).map_err(|e| Error::Expert(e.to_string()))
    }

    /// Writes the expert atomically; returns the file size.
    pub fn write(&self, path: &Path) -> crate::Result<u64> {
        let bytes = self.to_bytes().map_err(|e| Error::in_file(path, e))?;
        crate::fsio::write_atomic(path, &bytes)?;
        Ok(bytes.len() as u64)
    }

    /// Reads and validates an expert file; errors name the file and the tensor.
    pub fn read(path: &Path) -> crate::Result<Expert> {
        let bytes = crate::fsio::read_bounded(path, crate::fsio::caps::TENSORS).map_err(|e| Error::in_file(path, e))?;
        Self::from_bytes(&bytes).map_err(|e| Error::in_file(path, e))
    }

    pub fn from_bytes(bytes: &[u8]) -> crate::Result<Expert> {
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| Error::Expert(format!("not a safetensors file: {e}")))?;
        let text = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("mosa.expert"))
            .ok_or_else(|| Error::Expert("not a mosa expert (no `mosa.expert` metadata)".into()))?;
        let meta: ExpertMeta = serde_json::from_str(text).map_err(|e| Error::Expert(format!("`mosa.expert` metadata: {e}")))?;
        if meta.format != EXPERT_FORMAT {
            return Err(Error::Expert(format!("expert format {} (this mosa reads {EXPERT_FORMAT})", meta.format)));
        }
        let st = SafeTensors::deserialize(bytes).map_err(|e| Error::Expert(format!("not a valid safetensors file: {e}")))?;
        let get = |name: &str, dt: Dtype| -> crate::Result<TensorView<'_>> {
            let v = st.tensor(name).map_err(|_| Error::Expert(format!("tensor `{name}` is missing")))?;
            if v.dtype() != dt {
                return Err(Error::Expert(format!("tensor `{name}` is {:?}, expected {dt:?}", v.dtype())));
            }
            Ok(v)
        };
        let host = |name: &str| -> crate::Result<HostTensor> {
            let v = get(name, Dtype::F32)?;
            Ok(HostTensor::new(v.shape().to_vec(), f32s(v.data())))
        };
        let mut tensors = Vec::new();
        for (name, tm) in &meta.tensors {
            let n: usize = tm.shape.iter().product();
            let delta = match tm.encoding.as_str() {
                "indices" | "bitmap" => {
                    let indices = if tm.encoding == "bitmap" {
                        let b = get(&format!("{name}.bitmap"), Dtype::U8)?;
                        if b.data().len() != n.div_ceil(8) {
                            return Err(Error::Expert(format!("tensor `{name}.bitmap` has {} bytes for {n} entries", b.data().len())));
                        }
                        from_bitmap(b.data(), n)
                    } else {
                        u32s(get(&format!("{name}.indices"), Dtype::U32)?.data())
                    };
                    let vname = format!("{name}.values");
                    let v = st.tensor(&vname).map_err(|_| Error::Expert(format!("tensor `{vname}` is missing")))?;
                    let values = match v.dtype() {
                        Dtype::F32 => f32s(v.data()),
                        Dtype::F16 => v.data().chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
                        other => return Err(Error::Expert(format!("tensor `{vname}` is {other:?}, expected F32 or F16"))),
                    };
                    Delta::Sparse { indices, values }
                }
                "lora" => Delta::LowRank {
                    a: host(&format!("{name}.lora_a"))?,
                    b: host(&format!("{name}.lora_b"))?,
                    scale: tm.scale.ok_or_else(|| Error::Expert(format!("tensor `{name}`: LoRA without a scale")))?,
                },
                "dense" => {
                    let d = host(&format!("{name}.delta"))?;
                    if d.shape != tm.shape {
                        return Err(Error::Expert(format!("tensor `{name}.delta` has shape {:?}, the metadata says {:?}", d.shape, tm.shape)));
                    }
                    Delta::Dense(d.data)
                }
                other => return Err(Error::Expert(format!("tensor `{name}`: unknown encoding `{other}`"))),
            };
            tensors.push(ExpertTensor { name: name.clone(), shape: tm.shape.clone(), delta });
        }
        let head = match st.tensor("head.weight") {
            Ok(_) => Some(Head { weight: host("head.weight")?, bias: st.tensor("head.bias").ok().map(|_| host("head.bias")).transpose()? }),
            Err(_) => None,
        };
        let e = Expert { meta, tensors, head };
        e.validate()?;
        Ok(e)
    }

    /// Entries stored over all tensors.
    pub fn nnz(&self) -> usize {
        self.tensors.iter().map(|t| t.delta.nnz(t.numel())).sum()
    }

    /// Entries of the weights it changes.
    pub fn numel(&self) -> usize {
        self.tensors.iter().map(|t| t.numel()).sum()
    }
}
