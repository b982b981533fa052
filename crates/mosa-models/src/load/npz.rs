//! The original ViT release layout (`ViT-B_16.npz`, `imagenet21k_ViT-B_16.npz`, …), mapped to timm's.
//!
//! `embedding/kernel` is HWIO; attention kernels are `d × heads × head_dim` (query/key/value) and
//! `heads × head_dim × d` (out); dense kernels are stored `in × out`. `pre_logits/*` is not used.

use std::path::Path;

use super::{HostTensor, StateDict};
use crate::error::{Error, Result};

/// Reads every array of an `.npz` archive as f32 (f32 and f64 arrays are accepted).
fn read_arrays(path: &Path) -> Result<StateDict> {
    let mut npz = npyz::npz::NpzArchive::open(path).map_err(|e| Error::format(path, format!("not a readable .npz archive: {e}")))?;
    let names: Vec<String> = npz.array_names().map(str::to_string).collect();
    let mut sd = StateDict::new(path);
    for name in names {
        let bad = |e: std::io::Error| Error::format(path, format!("array `{name}`: {e}"));
        let arr = npz.by_name(&name).map_err(bad)?.ok_or_else(|| Error::format(path, format!("array `{name}` vanished")))?;
        let shape: Vec<usize> = arr.shape().iter().map(|&s| s as usize).collect();
        let fortran = arr.order() == npyz::Order::Fortran;
        let descr = arr.dtype().descr();
        let data: Vec<f32> = match descr.trim_matches('\'') {
            "<f4" => arr.into_vec::<f32>().map_err(bad)?,
            "<f8" => arr.into_vec::<f64>().map_err(bad)?.into_iter().map(|x| x as f32).collect(),
            other => return Err(Error::format(path, format!("array `{name}` has dtype {other}; a float type is needed"))),
        };
        let t = if fortran {
            // Column-major data is row-major data of the reversed shape; reverse the axes back.
            let rev: Vec<usize> = shape.iter().rev().copied().collect();
            let perm: Vec<usize> = (0..shape.len()).rev().collect();
            HostTensor::new(rev, data).permute(&perm)
        } else {
            HostTensor::new(shape, data)
        };
        sd.insert(name, t);
    }
    Ok(sd)
}

/// Reads an original-layout ViT `.npz` and maps it to timm's names and shapes.
pub fn read(path: &Path) -> Result<StateDict> {
    let mut src = read_arrays(path)?;
    let mut out = StateDict::new(path);
    let bad_shape = |name: &str, t: &HostTensor| Error::format(path, format!("array `{name}` has unexpected shape {:?}", t.shape));

    let k = src.take("embedding/kernel")?;
    if k.shape.len() != 4 {
        return Err(bad_shape("embedding/kernel", &k));
    }
    out.insert("patch_embed.proj.weight", k.permute(&[3, 2, 0, 1])); // HWIO → OIHW
    out.insert("patch_embed.proj.bias", src.take("embedding/bias")?);
    out.insert("cls_token", src.take("cls")?);
    out.insert("pos_embed", src.take("Transformer/posembed_input/pos_embedding")?);
    out.insert("norm.weight", src.take("Transformer/encoder_norm/scale")?);
    out.insert("norm.bias", src.take("Transformer/encoder_norm/bias")?);

    let depth = src
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("Transformer/encoderblock_")?.split('/').next()?.parse::<usize>().ok())
        .map(|i| i + 1)
        .max()
        .unwrap_or(0);
    for i in 0..depth {
        let b = format!("Transformer/encoderblock_{i}");
        let o = format!("blocks.{i}");
        out.insert(format!("{o}.norm1.weight"), src.take(&format!("{b}/LayerNorm_0/scale"))?);
        out.insert(format!("{o}.norm1.bias"), src.take(&format!("{b}/LayerNorm_0/bias"))?);
        out.insert(format!("{o}.norm2.weight"), src.take(&format!("{b}/LayerNorm_2/scale"))?);
        out.insert(format!("{o}.norm2.bias"), src.take(&format!("{b}/LayerNorm_2/bias"))?);
        let att = format!("{b}/MultiHeadDotProductAttention_1");
        let mut ws = Vec::new();
        let mut bs = Vec::new();
        for part in ["query", "key", "value"] {
            let name = format!("{att}/{part}/kernel");
            let w = src.take(&name)?;
            if w.shape.len() != 3 {
                return Err(bad_shape(&name, &w));
            }
            let d = w.shape[0];
            ws.push(w.reshape(vec![d, d]).ok_or_else(|| Error::format(path, format!("array `{name}` is not d × heads × head_dim")))?.t());
            let bname = format!("{att}/{part}/bias");
            let bias = src.take(&bname)?;
            let n = bias.numel();
            bs.push(bias.reshape(vec![n]).unwrap());
        }
        let cat = |v: &[HostTensor], what: &str| {
            HostTensor::cat0(&v.iter().collect::<Vec<_>>()).ok_or_else(|| Error::format(path, format!("{att}: query/key/value {what} shapes differ")))
        };
        out.insert(format!("{o}.attn.qkv.weight"), cat(&ws, "kernel")?);
        out.insert(format!("{o}.attn.qkv.bias"), cat(&bs, "bias")?);
        let name = format!("{att}/out/kernel");
        let w = src.take(&name)?;
        if w.shape.len() != 3 {
            return Err(bad_shape(&name, &w));
        }
        let d = w.shape[2];
        out.insert(
            format!("{o}.attn.proj.weight"),
            w.reshape(vec![d, d]).ok_or_else(|| Error::format(path, format!("array `{name}` is not heads × head_dim × d")))?.t(),
        );
        out.insert(format!("{o}.attn.proj.bias"), src.take(&format!("{att}/out/bias"))?);
        for (j, fc) in [(0, "fc1"), (1, "fc2")] {
            let name = format!("{b}/MlpBlock_3/Dense_{j}/kernel");
            let w = src.take(&name)?;
            if w.shape.len() != 2 {
                return Err(bad_shape(&name, &w));
            }
            out.insert(format!("{o}.mlp.{fc}.weight"), w.t());
            out.insert(format!("{o}.mlp.{fc}.bias"), src.take(&format!("{b}/MlpBlock_3/Dense_{j}/bias"))?);
        }
    }
    if let (Some(_), Some(_)) = (src.get("head/kernel"), src.get("head/bias")) {
        let w = src.take("head/kernel")?;
        if w.shape.len() != 2 {
            return Err(bad_shape("head/kernel", &w));
        }
        out.insert("head.weight", w.t());
        out.insert("head.bias", src.take("head/bias")?);
    }
    src.tensors.retain(|k, _| !k.starts_with("pre_logits/"));
    if let Some(extra) = src.tensors.keys().next() {
        return Err(Error::format(path, format!("unexpected array `{extra}` ({} not mapped)", src.tensors.len())));
    }
    Ok(out)
}
