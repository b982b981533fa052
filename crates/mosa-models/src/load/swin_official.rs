//! The original Swin release's checkpoints (`swin_*_patch4_window*.pth`, weights under `model`)
//! → timm's layout: recognised by [`looks_official`], mapped by [`official_to_timm`].

use super::StateDict;

/// The original Swin release's layout → timm's: patch merging moves from the end of stage `i`
/// to the start of stage `i + 1`, `head.` becomes `head.fc.`, and the buffers
/// (`relative_position_index`, `attn_mask`) are dropped (they are recomputed).
pub fn official_to_timm(mut sd: StateDict) -> StateDict {
    let keys: Vec<String> = sd.tensors.keys().cloned().collect();
    let mut out = StateDict::new(sd.source.clone());
    for k in keys {
        let t = sd.tensors.remove(&k).expect("listed key");
        if k.ends_with("relative_position_index") || k.ends_with("attn_mask") {
            continue;
        }
        let name = if let Some(rest) = k.strip_prefix("head.") {
            format!("head.fc.{rest}")
        } else if let Some((stage, rest)) = k.strip_prefix("layers.").and_then(|r| r.split_once('.')).filter(|(_, r)| r.starts_with("downsample.")) {
            match stage.parse::<usize>() {
                Ok(i) => format!("layers.{}.{rest}", i + 1),
                Err(_) => k.clone(),
            }
        } else {
            k.clone()
        };
        out.insert(name, t);
    }
    out
}

/// Whether a state dict is in the original release's layout (patch merging in stage 0, or a
/// bare `head.weight`).
pub fn looks_official(sd: &StateDict) -> bool {
    sd.tensors.keys().any(|k| k.starts_with("layers.0.downsample.") || k == "head.weight")
        && sd.tensors.keys().any(|k| k.contains("relative_position_bias_table"))
}
