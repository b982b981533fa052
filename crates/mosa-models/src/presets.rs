//! Named model presets, each with its preprocessing, and model specifications:
//! `--model <preset | config.json>`.
//!
//! A config JSON may be
//! - a [`BackboneConfig`] (`{"family": "vit", …}`, as run directories store it),
//! - our own [`VitConfig`] (as written by `VitConfig::save`),
//! - a fixture-style file whose `kwargs` are timm's `VisionTransformer`, `SwinTransformer` or
//!   `ConvNeXt` constructor arguments (the family from `source`, or from the arguments),
//! - a file whose `config` block is a transformers `Dinov2Config` (hidden_size, num_hidden_layers, …).

use std::path::Path;

use serde_json::Value;

use crate::backbone::{BackboneConfig, IMAGENET, Preprocess};
use crate::convnext::ConvNextConfig;
use crate::error::{Error, Result};
use crate::family::FamilyConfig;
use crate::kwargs::{as_bool, as_f64, as_usize};
use crate::posembed::Resample;
use crate::swin::SwinConfig;
use crate::vit::VitConfig;

/// A named preset: name, one-line description, config, and the preprocessing of its weights.
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    /// timm's model name for the same architecture (and, with a `.tag`, the weights the preset
    /// is described with): what a PyTorch user passes to `timm.create_model`.
    pub timm: &'static str,
    pub config: fn() -> BackboneConfig,
    pub preprocess: Preprocess,
}

const IN224: Preprocess = Preprocess { mean: IMAGENET.0, std: IMAGENET.1, size: 224 };

fn vit(dim: usize, depth: usize, heads: usize, patch: usize) -> VitConfig {
    VitConfig::new().with_embed_dim(dim).with_depth(depth).with_num_heads(heads).with_patch_size(patch)
}

fn swin(dim: usize, depths: [usize; 4], heads: [usize; 4]) -> BackboneConfig {
    BackboneConfig::Swin(SwinConfig::new().with_embed_dim(dim).with_depths(depths.to_vec()).with_num_heads(heads.to_vec()))
}

fn convnext(depths: [usize; 4], dims: [usize; 4]) -> BackboneConfig {
    BackboneConfig::ConvNext(ConvNextConfig::new().with_depths(depths.to_vec()).with_dims(dims.to_vec()))
}

/// Every preset, in the order `mosa info` lists them.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "vit-ti16",
        timm: "vit_tiny_patch16_224",
        description: "ViT-Ti/16 (d 192, 12 blocks, 3 heads)",
        config: || BackboneConfig::Vit(vit(192, 12, 3, 16)),
        preprocess: IN224,
    },
    Preset {
        name: "vit-s16",
        timm: "vit_small_patch16_224",
        description: "ViT-S/16 (d 384, 12 blocks, 6 heads)",
        config: || BackboneConfig::Vit(vit(384, 12, 6, 16)),
        preprocess: IN224,
    },
    Preset {
        name: "vit-b16",
        timm: "vit_base_patch16_224.orig_in21k",
        description: "ViT-B/16 (d 768, 12 blocks, 12 heads); ImageNet-21k .npz of the MoSA paper",
        config: || BackboneConfig::Vit(vit(768, 12, 12, 16)),
        preprocess: IN224,
    },
    Preset {
        name: "vit-l16",
        timm: "vit_large_patch16_224",
        description: "ViT-L/16 (d 1024, 24 blocks, 16 heads)",
        config: || BackboneConfig::Vit(vit(1024, 24, 16, 16)),
        preprocess: IN224,
    },
    Preset {
        name: "vit-h14",
        timm: "vit_huge_patch14_224",
        description: "ViT-H/14 (d 1280, 32 blocks, 16 heads)",
        config: || BackboneConfig::Vit(vit(1280, 32, 16, 14)),
        preprocess: IN224,
    },
    Preset {
        name: "dinov2-vits14",
        timm: "vit_small_patch14_dinov2.lvd142m",
        description: "DINOv2 ViT-S/14 (d 384, 12 blocks, 6 heads, LayerScale, 37x37 grid); `mosa weights fetch`",
        config: || BackboneConfig::Vit(vit(384, 12, 6, 14).with_img_size(518).with_init_values(Some(1.0)).with_pos_resample(Resample::Bicubic)),
        preprocess: IN224,
    },
    Preset {
        name: "swin-t",
        timm: "swin_tiny_patch4_window7_224",
        description: "Swin-T (d 96, depths 2-2-6-2, window 7, 224)",
        config: || swin(96, [2, 2, 6, 2], [3, 6, 12, 24]),
        preprocess: IN224,
    },
    Preset {
        name: "swin-s",
        timm: "swin_small_patch4_window7_224",
        description: "Swin-S (d 96, depths 2-2-18-2, window 7, 224)",
        config: || swin(96, [2, 2, 18, 2], [3, 6, 12, 24]),
        preprocess: IN224,
    },
    Preset {
        name: "swin-b",
        timm: "swin_base_patch4_window7_224",
        description: "Swin-B (d 128, depths 2-2-18-2, window 7, 224)",
        config: || swin(128, [2, 2, 18, 2], [4, 8, 16, 32]),
        preprocess: IN224,
    },
    Preset {
        name: "swin-b-22k",
        timm: "swin_base_patch4_window7_224.ms_in22k",
        description: "Swin-B for ImageNet-22k weights (`swin_base_patch4_window7_224.ms_in22k`, the MoSA paper's Swin)",
        config: || swin(128, [2, 2, 18, 2], [4, 8, 16, 32]),
        preprocess: IN224,
    },
    Preset {
        name: "convnext-t",
        timm: "convnext_tiny",
        description: "ConvNeXt-T (dims 96-768, depths 3-3-9-3)",
        config: || convnext([3, 3, 9, 3], [96, 192, 384, 768]),
        preprocess: IN224,
    },
    Preset {
        name: "convnext-s",
        timm: "convnext_small",
        description: "ConvNeXt-S (dims 96-768, depths 3-3-27-3)",
        config: || convnext([3, 3, 27, 3], [96, 192, 384, 768]),
        preprocess: IN224,
    },
    Preset {
        name: "convnext-b",
        timm: "convnext_base",
        description: "ConvNeXt-B (dims 128-1024, depths 3-3-27-3)",
        config: || convnext([3, 3, 27, 3], [128, 256, 512, 1024]),
        preprocess: IN224,
    },
];

pub fn preset(name: &str) -> Option<BackboneConfig> {
    PRESETS.iter().find(|p| p.name == name).map(|p| (p.config)())
}

/// timm's model name of a preset.
pub fn timm_name(name: &str) -> Option<&'static str> {
    PRESETS.iter().find(|p| p.name == name).map(|p| p.timm)
}

/// The preset whose timm name is `timm` (with or without a `.tag`).
pub fn from_timm_name(timm: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.timm == timm).or_else(|| PRESETS.iter().find(|p| p.timm.split('.').next() == Some(timm.split('.').next().unwrap_or(timm))))
}

pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

/// Resolves `--model`: a preset name, or a path to a config JSON.
pub fn resolve_model(spec: &str) -> Result<BackboneConfig> {
    if let Some(cfg) = preset(spec) {
        return Ok(cfg);
    }
    let path = Path::new(spec);
    if !path.exists() {
        return Err(Error::Config(format!("unknown model `{spec}`: not a preset ({}) and no such config file", preset_names().join(", "))));
    }
    config_from_json_file(path)
}

pub fn config_from_json_file(path: &Path) -> Result<BackboneConfig> {
    let text = mosa_core::fsio::read_text(path, mosa_core::fsio::caps::CONFIG).map_err(|e| Error::read(path, e))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))?;
    config_from_json(&value).map_err(|e| Error::format(path, e.to_string()))
}

/// Interprets one of the accepted JSON shapes (see the module docs).
pub fn config_from_json(value: &Value) -> crate::Result<BackboneConfig> {
    if value.get("family").is_some() {
        let cfg: BackboneConfig = serde_json::from_value(value.clone()).map_err(|e| crate::Error::Config(format!("not a mosa backbone config: {e}")))?;
        cfg.validate()?;
        return Ok(cfg);
    }
    let cfg = if let Some(kwargs) = value.get("kwargs") {
        let source = value.get("source").and_then(Value::as_str).unwrap_or("");
        let input_hw = value.get("input_hw").and_then(|v| v.get(0)).map(|hw| as_usize("input_hw", hw)).transpose()?;
        // a description that names no class and has no family's own argument is timm's ViT
        let cfg =
            BackboneConfig::from_timm(source, kwargs, input_hw).unwrap_or_else(|| VitConfig::from_timm_kwargs(kwargs, input_hw).map(BackboneConfig::Vit))?;
        cfg.validate()?;
        return Ok(cfg);
    } else if let Some(hf) = value.get("config") {
        from_hf_dinov2(hf)?
    } else {
        serde_json::from_value::<VitConfig>(value.clone()).map_err(|e| crate::Error::Config(format!("not a mosa ViT config: {e}")))?
    };
    cfg.validate()?;
    Ok(BackboneConfig::Vit(cfg))
}

/// transformers `Dinov2Config` → [`VitConfig`] (backbone only: no head).
pub fn from_hf_dinov2(cfg: &Value) -> crate::Result<VitConfig> {
    let obj = cfg.as_object().ok_or_else(|| crate::Error::Config("`config` must be an object".into()))?;
    let mut c = VitConfig::new().with_init_values(Some(1.0)).with_pos_resample(Resample::Bicubic).with_num_classes(0);
    let mut intermediate = None;
    for (k, v) in obj {
        match k.as_str() {
            "hidden_size" => c.embed_dim = as_usize(k, v)?,
            "num_hidden_layers" => c.depth = as_usize(k, v)?,
            "num_attention_heads" => c.num_heads = as_usize(k, v)?,
            "intermediate_size" => intermediate = Some(as_usize(k, v)?),
            "mlp_ratio" => c.mlp_ratio = as_f64(k, v)?,
            "image_size" => c.img_size = as_usize(k, v)?,
            "patch_size" => c.patch_size = as_usize(k, v)?,
            "num_channels" => c.in_chans = as_usize(k, v)?,
            "layer_norm_eps" => c.norm_eps = as_f64(k, v)?,
            "layerscale_value" => c.init_values = Some(as_f64(k, v)?),
            "qkv_bias" => c.qkv_bias = as_bool(k, v)?,
            "drop_path_rate" => c.drop_path_rate = as_f64(k, v)?,
            "hidden_act" if v == "gelu" => {}
            "use_swiglu_ffn" if v == &Value::Bool(false) => {}
            "num_register_tokens" if v == &Value::from(0) => {}
            "hidden_dropout_prob" | "attention_probs_dropout_prob" | "initializer_range" | "model_type" => {}
            _ => return Err(crate::Error::Config(format!("Dinov2Config field `{k}` = {v} is not supported"))),
        }
    }
    if let Some(i) = intermediate {
        c.mlp_ratio = i as f64 / c.embed_dim as f64;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_named_as_documented() {
        assert_eq!(
            preset_names(),
            [
                "vit-ti16",
                "vit-s16",
                "vit-b16",
                "vit-l16",
                "vit-h14",
                "dinov2-vits14",
                "swin-t",
                "swin-s",
                "swin-b",
                "swin-b-22k",
                "convnext-t",
                "convnext-s",
                "convnext-b"
            ]
        );
        for p in PRESETS {
            (p.config)().validate().unwrap();
        }
        let vit = |n| match preset(n).unwrap() {
            BackboneConfig::Vit(c) => c,
            _ => panic!("{n} is a ViT"),
        };
        // published sizes: Swin-T 28.3 M, Swin-B 87.8 M, ConvNeXt-T 28.6 M, ConvNeXt-B 88.6 M
        // (ImageNet-1k heads; Liu et al. 2021 Table 1, Liu et al. 2022 Table 11)
        for (n, m) in [("swin-t", 28.29), ("swin-b", 87.77), ("convnext-t", 28.59), ("convnext-b", 88.59)] {
            let p = preset(n).unwrap().with_num_classes(1000).num_params() as f64 / 1e6;
            assert!((p - m).abs() < 0.05, "{n}: {p} M");
        }
        let d = vit("dinov2-vits14");
        assert_eq!((d.grid(), d.mlp_hidden(), d.pos_resample), ((37, 37), 1536, Resample::Bicubic));
        assert_eq!(vit("vit-b16").norm_eps, 1e-6);
    }

    #[test]
    fn timm_kwargs_map_and_unknown_ones_are_rejected() {
        let v: Value = serde_json::json!({"embed_dim": 48, "depth": 2, "num_heads": 3, "img_size": 32,
            "patch_size": 8, "num_classes": 5, "init_values": 1e-5, "dynamic_img_size": true});
        let c = VitConfig::from_timm_kwargs(&v, None).unwrap();
        assert_eq!((c.embed_dim, c.depth, c.num_heads, c.grid(), c.num_classes), (48, 2, 3, (4, 4), 5));
        assert_eq!(c.init_values, Some(1e-5));
        let err = VitConfig::from_timm_kwargs(&serde_json::json!({"global_pool": "avg"}), None).unwrap_err();
        assert!(matches!(err, crate::Error::Config(_)), "{err:?}");
        let err = err.to_string();
        assert!(err.contains("global_pool"), "{err}");
        let err = config_from_json(&serde_json::json!({"kwargs": {"embed_dim": 50, "num_heads": 3}})).unwrap_err().to_string();
        assert!(err.contains("divisible"), "{err}");
        let bad = serde_json::to_value(BackboneConfig::Vit(VitConfig::new().with_embed_dim(50).with_num_heads(3))).unwrap();
        let err = config_from_json(&bad).unwrap_err().to_string();
        assert!(err.contains("divisible"), "{err}");
    }

    #[test]
    fn own_config_round_trips() {
        let c = preset("dinov2-vits14").unwrap();
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["family"], "vit");
        let back = config_from_json(&v).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), v);
        // a bare ViT config (run directories before families) still reads as a ViT
        let mut bare = v.clone();
        bare.as_object_mut().unwrap().remove("family");
        let back: BackboneConfig = serde_json::from_value(bare).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), v);
    }
}
