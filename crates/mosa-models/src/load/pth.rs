//! PyTorch checkpoints (`.pth` / `.pt`, zip or legacy pickle), read with burn-store's pickle
//! reader into a [`StateDict`]. The weights may sit at the top level or under `model` /
//! `state_dict` (the original Swin release keeps them under `model`). Float tensors only; every
//! value becomes f32.

use std::path::Path;

use burn_store::pytorch::PytorchReader;

use super::{HostTensor, StateDict};
use crate::error::{Error, Result};

/// Reads every floating-point tensor of a PyTorch checkpoint (integer buffers such as Swin's
/// `relative_position_index` are skipped).
pub fn read(path: &Path) -> Result<StateDict> {
    // burn-store's reader allocates what the file claims: claims are checked against the bytes first
    super::pickle_scan::check_checkpoint(path).map_err(|e| Error::format(path, format!("not a readable PyTorch checkpoint: {e}")))?;
    let file_len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let reader = ["model", "state_dict"]
        .iter()
        .find_map(|k| PytorchReader::with_top_level_key(path, k).ok().filter(|r| !r.is_empty()))
        .map(Ok)
        .unwrap_or_else(|| PytorchReader::new(path))
        .map_err(|e| Error::format(path, format!("not a readable PyTorch checkpoint: {e}")))?;
    let mut sd = StateDict::new(path);
    for (name, snap) in reader.into_tensors() {
        if !snap.dtype.is_float() {
            continue;
        }
        let shape = snap.shape.to_vec();
        // a tensor cannot hold more data than the file has (its storage is stored uncompressed)
        let bytes = shape.iter().try_fold(snap.dtype.size() as u64, |a, &d| a.checked_mul(d as u64));
        if bytes.is_none_or(|b| b > file_len) {
            return Err(Error::format(
                path,
                format!(
                    "tensor `{name}` claims shape {shape:?} ({} bytes), more than the file's {file_len} bytes",
                    bytes.map_or("over 2^64".to_string(), |b| b.to_string())
                ),
            ));
        }
        let data = snap.to_data().map_err(|e| Error::format(path, format!("tensor `{name}`: {e}")))?;
        let values = data.convert::<f32>().to_vec::<f32>().map_err(|e| Error::format(path, format!("tensor `{name}`: {e:?}")))?;
        sd.insert(name, HostTensor::new(shape, values));
    }
    if sd.tensors.is_empty() {
        return Err(Error::format(path, "no floating-point tensors in the checkpoint"));
    }
    Ok(sd)
}
