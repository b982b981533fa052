//! transformers `Dinov2Model` names → timm names. Separate `query`/`key`/`value` projections
//! are fused into `attn.qkv`; `layer_scale{1,2}.lambda1` become `ls{1,2}.gamma`. Used for
//! transformers safetensors and, after the anonymous tensors are named, for ONNX exports.

use super::{HostTensor, StateDict};
use crate::error::{Error, Result};

/// The prefix in front of `embeddings.cls_token` (e.g. `backbone.`), if this is a DINOv2 state dict.
pub fn prefix(sd: &StateDict) -> Option<String> {
    sd.tensors.keys().find_map(|k| k.strip_suffix("embeddings.cls_token").map(str::to_string))
}

pub fn looks_like(sd: &StateDict) -> bool {
    prefix(sd).is_some() && sd.tensors.keys().any(|k| k.contains("embeddings.patch_embeddings.projection"))
}

/// Maps a transformers DINOv2 state dict to timm's layout. With `only_prefix`, tensors outside the
/// backbone prefix (a task head, a decoder) are left out; otherwise they are an error.
pub fn to_timm_with(mut sd: StateDict, only_prefix: bool) -> Result<StateDict> {
    let path = sd.source.clone();
    let pre = prefix(&sd).ok_or_else(|| Error::format(&path, "no `embeddings.cls_token`: not a DINOv2 backbone"))?;
    if only_prefix {
        sd.tensors.retain(|k, _| k.starts_with(&pre));
    }
    let mut out = StateDict::new(&path);
    let mut take = |name: &str| sd.take(&format!("{pre}{name}"));

    out.insert("cls_token", take("embeddings.cls_token")?);
    out.insert("pos_embed", take("embeddings.position_embeddings")?);
    out.insert("patch_embed.proj.weight", take("embeddings.patch_embeddings.projection.weight")?);
    out.insert("patch_embed.proj.bias", take("embeddings.patch_embeddings.projection.bias")?);
    out.insert("norm.weight", take("layernorm.weight")?);
    out.insert("norm.bias", take("layernorm.bias")?);
    sd.tensors.remove(&format!("{pre}embeddings.mask_token")); // only used for masked pre-training

    let layer_prefix = format!("{pre}encoder.layer.");
    let depth = sd.tensors.keys().filter_map(|k| k.strip_prefix(&layer_prefix)?.split('.').next()?.parse::<usize>().ok()).map(|i| i + 1).max().unwrap_or(0);
    for i in 0..depth {
        let l = format!("{layer_prefix}{i}.");
        let o = format!("blocks.{i}.");
        let mut take = |name: &str| sd.take(&format!("{l}{name}"));
        for (from, to) in [
            ("norm1.weight", "norm1.weight"),
            ("norm1.bias", "norm1.bias"),
            ("norm2.weight", "norm2.weight"),
            ("norm2.bias", "norm2.bias"),
            ("attention.output.dense.weight", "attn.proj.weight"),
            ("attention.output.dense.bias", "attn.proj.bias"),
            ("mlp.fc1.weight", "mlp.fc1.weight"),
            ("mlp.fc1.bias", "mlp.fc1.bias"),
            ("mlp.fc2.weight", "mlp.fc2.weight"),
            ("mlp.fc2.bias", "mlp.fc2.bias"),
            ("layer_scale1.lambda1", "ls1.gamma"),
            ("layer_scale2.lambda1", "ls2.gamma"),
        ] {
            out.insert(format!("{o}{to}"), take(from)?);
        }
        for kind in ["weight", "bias"] {
            let parts: Vec<HostTensor> = ["query", "key", "value"].iter().map(|p| take(&format!("attention.attention.{p}.{kind}"))).collect::<Result<_>>()?;
            let fused = HostTensor::cat0(&parts.iter().collect::<Vec<_>>())
                .ok_or_else(|| Error::format(&path, format!("{l}attention: query/key/value {kind} shapes differ")))?;
            out.insert(format!("{o}attn.qkv.{kind}"), fused);
        }
    }
    if let Some(extra) = sd.tensors.keys().next() {
        return Err(Error::format(&path, format!("unexpected tensor `{extra}` in a DINOv2 checkpoint ({} not mapped)", sd.tensors.len())));
    }
    Ok(out)
}

pub fn to_timm(sd: StateDict) -> Result<StateDict> {
    to_timm_with(sd, false)
}
