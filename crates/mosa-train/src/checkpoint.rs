//! Checkpoints: one safetensors file, written atomically (temporary file + rename), so a run
//! directory holds either the previous complete checkpoint or the new one.
//!
//! A checkpoint holds the trainable parameters (`param/<path>`), the AdamW moments
//! (`adam.m/<path>`, `adam.v/<path>`) and, in the header metadata, the [`RunState`] (epochs done,
//! optimiser step, metrics so far, the RNG state). It never holds the frozen backbone.

use std::collections::HashMap;
use std::path::Path;

use mosa_core::host::{HostTensor, NamedTensors};
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::metrics::EpochMetrics;
use crate::rundir::{io, read_model, write_tensors};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunState {
    pub epochs_done: usize,
    pub optim_step: u64,
    pub metrics: Vec<EpochMetrics>,
    /// The host generator's state after the last completed epoch.
    pub rng: mosa_core::Rng,
    /// SHA-256 of the run's spec ([`crate::config::RunSpec::sha256`]): a resume must use the same settings.
    pub config_sha256: String,
    /// Layout version ([`crate::rundir::FORMAT`]); absent in format 1, whose parameter paths are
    /// converted on reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<u32>,
}

pub type Tensors = NamedTensors;

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

pub struct Checkpoint {
    pub params: HashMap<String, HostTensor>,
    pub adam: Vec<(String, Vec<f32>, Vec<f32>)>,
    pub state: RunState,
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
