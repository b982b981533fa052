//! Checkpoints and saved models: one safetensors file each, written atomically (temporary file +
//! rename), so a run directory holds either the previous complete file or the new one.
//!
//! A checkpoint holds the trainable parameters (`param/<path>`), the AdamW moments
//! (`adam.m/<path>`, `adam.v/<path>`) and, in the header metadata, the [`RunState`] (epochs done,
//! optimiser step, metrics so far, the RNG state). It never holds the frozen backbone.

use std::collections::HashMap;
use std::path::Path;

use mosa_core::host::{HostTensor, NamedTensors};
use serde::{Deserialize, Serialize};

use crate::metrics::EpochMetrics;
use crate::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunState {
    pub epochs_done: usize,
    pub optim_step: u64,
    pub metrics: Vec<EpochMetrics>,
    /// The host generator's state after the last completed epoch.
    pub rng: mosa_core::Rng,
    /// SHA-256 of the run's spec ([`crate::rundir::RunSpec::sha256`]): a resume must use the same settings.
    pub config_sha256: String,
    /// Layout version ([`crate::rundir::FORMAT`]); absent in format 1, whose parameter paths are
    /// converted on reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<u32>,
}

pub type Tensors = NamedTensors;

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Checkpoint(format!("{}: {e}", path.display()))
}

pub fn write_checkpoint(path: &Path, params: &Tensors, adam: Vec<(String, Vec<f32>, Vec<f32>)>, state: &RunState) -> Result<()> {
    let moments: Vec<(String, HostTensor)> = adam
        .into_iter()
        .flat_map(|(p, m, v)| [(format!("adam.m/{p}"), HostTensor::new(vec![m.len()], m)), (format!("adam.v/{p}"), HostTensor::new(vec![v.len()], v))])
        .collect();
    let mut t: Vec<(String, &HostTensor)> = params.iter().map(|(p, h)| (format!("param/{p}"), h)).collect();
    t.extend(moments.iter().map(|(n, h)| (n.clone(), h)));
    let meta = HashMap::from([("mosa.run_state".to_string(), serde_json::to_string(state).map_err(|e| io(path, e))?)]);
    write_tensors(path, &t, meta)
}

/// Serialises and writes atomically.
fn write_tensors(path: &Path, t: &[(String, &HostTensor)], meta: HashMap<String, String>) -> Result<()> {
    let bytes = mosa_models::load::safetensors::serialize(t, Some(meta)).map_err(|e| io(path, e))?;
    mosa_core::fsio::write_atomic(path, &bytes).map_err(Error::Checkpoint)
}

pub struct Checkpoint {
    pub params: HashMap<String, HostTensor>,
    pub adam: Vec<(String, Vec<f32>, Vec<f32>)>,
    pub state: RunState,
}

fn f32s(path: &Path, name: &str, v: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>> {
    if v.dtype() != safetensors::Dtype::F32 {
        return Err(io(path, format!("tensor {name} is {:?}, expected F32", v.dtype())));
    }
    Ok(v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

pub fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    let (tensors, meta) = read_model(path)?;
    let state: RunState = meta
        .get("mosa.run_state")
        .ok_or_else(|| io(path, "no mosa.run_state metadata: not a mosa checkpoint"))
        .and_then(|s| serde_json::from_str(s).map_err(|e| io(path, e)))?;
    // format 1 stored `<layer>_branch` paths; they are renamed to today's on reading
    let path = |p: &str| if state.format.is_none() { crate::rundir::legacy::path(p) } else { p.to_string() };
    let mut params = HashMap::new();
    let mut m: HashMap<String, Vec<f32>> = HashMap::new();
    let mut v: HashMap<String, Vec<f32>> = HashMap::new();
    for (name, t) in tensors {
        if let Some(p) = name.strip_prefix("param/") {
            params.insert(path(p), t);
        } else if let Some(p) = name.strip_prefix("adam.m/") {
            m.insert(path(p), t.data);
        } else if let Some(p) = name.strip_prefix("adam.v/") {
            v.insert(path(p), t.data);
        }
    }
    let mut adam: Vec<_> = m
        .into_iter()
        .map(|(k, mm)| {
            let vv = v.remove(&k).unwrap_or_else(|| vec![0.0; mm.len()]);
            (k, mm, vv)
        })
        .collect();
    adam.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Checkpoint { params, adam, state })
}

/// The backbone a run was trained on: a saved run refers to it instead of copying it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackboneId {
    pub model: String,
    /// The weights file used (None: random initialisation, e.g. tests).
    pub weights: Option<String>,
    pub sha256: Option<String>,
}

/// Saves the method's trainable parameters (not the frozen backbone) with the backbone's identity.
pub fn write_model(path: &Path, params: &Tensors, backbone: &BackboneId, extra: &[(&str, String)]) -> Result<()> {
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

/// SHA-256 of a file, hex ([`mosa_models::weights::file_sha256`], the one streamed hash).
pub fn file_sha256(path: &Path) -> Result<String> {
    mosa_models::weights::file_sha256(path).map_err(|e| Error::Checkpoint(e.to_string()))
}

/// Writes text atomically.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    mosa_core::fsio::write_atomic(path, text.as_bytes()).map_err(Error::Checkpoint)
}
