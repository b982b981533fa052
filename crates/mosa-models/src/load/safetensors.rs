//! safetensors files: read any float tensors into a [`StateDict`]; write one atomically.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::{HostTensor, StateDict};
use crate::error::{Error, Result};

/// Converts one stored tensor to f32 (f32, f16, bf16 and f64 are accepted).
pub fn to_f32(path: &Path, name: &str, view: &TensorView<'_>) -> Result<HostTensor> {
    let b = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => return Err(Error::format(path, format!("tensor `{name}` has dtype {other:?}; a float type is needed"))),
    };
    Ok(HostTensor::new(view.shape().to_vec(), data))
}

/// Reads every tensor of a safetensors file.
pub fn read(path: &Path) -> Result<StateDict> {
    let bytes = mosa_core::fsio::read_bounded(path, mosa_core::fsio::caps::TENSORS).map_err(|e| Error::read(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let mut sd = StateDict::new(path);
    for (name, view) in st.tensors() {
        let t = to_f32(path, &name, &view)?;
        sd.insert(name, t);
    }
    Ok(sd)
}

/// Reads the `__metadata__` block of a safetensors file (only its header is read).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    use std::io::Read;
    let bad = |msg: String| Error::format(path, format!("not a valid safetensors file: {msg}"));
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return Err(bad(format!("header of {n} bytes")));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    let meta = v.get("__metadata__").and_then(|m| m.as_object());
    Ok(meta.map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()).unwrap_or_default())
}

/// Serialises named f32 host tensors with metadata.
pub fn serialize(tensors: &[(String, &HostTensor)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, t)| {
            let bytes: &[u8] = bytemuck::cast_slice(&t.data);
            TensorView::new(Dtype::F32, t.shape.clone(), bytes).map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Config(format!("cannot serialise tensors: {e}")))?;
    safetensors::serialize(views, metadata).map_err(|e| Error::Config(format!("cannot serialise tensors: {e}")))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
/// A crash leaves either the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(mosa_core::fsio::write_atomic(path, bytes)?)
}

/// Writes a state dict as safetensors, atomically.
pub fn write(sd: &StateDict, path: &Path, metadata: Option<HashMap<String, String>>) -> Result<()> {
    let tensors: Vec<(String, &HostTensor)> = sd.tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    write_atomic(path, &serialize(&tensors, metadata)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_and_bf16_tensors_read_as_known_values() {
        // 1, -2, 1/3 rounded, the smallest subnormal, +inf
        let bits: [u16; 5] = [0x3c00, 0xc000, 0x3555, 0x0001, 0x7c00];
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F16, vec![5], &bytes).unwrap();
        let t = to_f32(Path::new("x.safetensors"), "w", &view).unwrap();
        assert_eq!(t.data[..4], [1.0, -2.0, 0.333_251_95, 5.960_464_5e-8]);
        assert!(t.data[4].is_infinite() && t.data[4] > 0.0);
        // bf16 is the high half of an f32: 1.5 = 0x3fc0, -0.0078125 = 0xbc00
        let bytes: Vec<u8> = [0x3fc0u16, 0xbc00].iter().flat_map(|b| b.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::BF16, vec![2], &bytes).unwrap();
        assert_eq!(to_f32(Path::new("x.safetensors"), "w", &view).unwrap().data, [1.5, -0.0078125]);
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.safetensors");
        let mut sd = StateDict::new(&path);
        sd.insert("x", HostTensor::new(vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]));
        let meta = HashMap::from([("k".to_string(), "v".to_string())]);
        write(&sd, &path, Some(meta.clone())).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.tensors, sd.tensors);
        assert_eq!(read_metadata(&path).unwrap(), meta);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left behind");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        }
        // a truncated file is an error naming it, for data and for metadata alike
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &std::fs::read(&path).unwrap()[..20]).unwrap();
        assert!(read(&cut).unwrap_err().to_string().contains("cut.safetensors"));
        assert!(read_metadata(&cut).unwrap_err().to_string().contains("cut.safetensors"));
    }
}
