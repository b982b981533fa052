//! Parity of the ViT and its loaders with the reference outputs in `../shared/fixtures`
//! (timm 1.0.31 / transformers 5.23, fp32). Bound: max |Δ| ≤ 1e-4 on every listed output.

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::TensorData;
use mosa_models::load::{self, HostTensor, StateDict};
use mosa_models::presets::config_from_json_file;
use mosa_models::{Error, HeadPolicy, VitConfig, load_vit};
use mosa_testkit::fixtures;

type B = Flex;

fn io(name: &str) -> StateDict {
    load::safetensors::read(&fixtures().join(format!("{name}_io.safetensors"))).unwrap()
}

fn to_tensor<const D: usize>(t: &HostTensor) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), &Default::default())
}

fn max_abs_diff<const D: usize>(got: Tensor<B, D>, want: &HostTensor) -> f32 {
    assert_eq!(got.dims().to_vec(), want.shape, "shape");
    let got = got.into_data().to_vec::<f32>().unwrap();
    mosa_testkit::max_abs_diff(&got, &want.data)
}

fn check(name: &str, got: &mosa_models::BackboneOutput<B>, want: &StateDict, outputs: &[&str]) {
    for &o in outputs {
        let w = want.get(o).unwrap_or_else(|| panic!("{name}: no `{o}` in the reference"));
        let diff = match o {
            "tokens" | "last_hidden_state" => max_abs_diff(got.features.clone(), w),
            "pre_logits" => max_abs_diff(got.pre_logits.clone(), w),
            "logits" => max_abs_diff(got.logits.clone(), w),
            _ => unreachable!(),
        };
        assert!(diff <= 1e-4, "{name}: `{o}` differs from the reference by {diff}");
    }
}

fn fixture_config(name: &str) -> VitConfig {
    match config_from_json_file(&fixtures().join(format!("{name}.json"))).unwrap() {
        mosa_models::BackboneConfig::Vit(c) => c,
        other => panic!("{name} is a {}", other.family()),
    }
}

#[test]
fn timm_safetensors_matches_timm() {
    let cfg = fixture_config("vit");
    let model = load_vit::<B>(&cfg, &fixtures().join("vit.safetensors"), HeadPolicy::Load, &Default::default()).unwrap();
    let io = io("vit");
    let out = model.forward(to_tensor(io.get("input").unwrap()));
    check("vit", &out, &io, &["tokens", "pre_logits", "logits"]);
}

#[test]
fn original_npz_layout_matches_timm() {
    let cfg = fixture_config("vit");
    let model = load_vit::<B>(&cfg, &fixtures().join("vit_google.npz"), HeadPolicy::Load, &Default::default()).unwrap();
    let io = io("vit");
    let out = model.forward(to_tensor(io.get("input").unwrap()));
    check("vit_google.npz", &out, &io, &["tokens", "pre_logits", "logits"]);
}

#[test]
fn npz_and_safetensors_give_the_same_state() {
    let a = load::read_checkpoint(&fixtures().join("vit.safetensors")).unwrap();
    let b = load::read_checkpoint(&fixtures().join("vit_google.npz")).unwrap();
    assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>());
    for (k, t) in &a.tensors {
        let u = &b.tensors[k];
        assert_eq!(t.shape, u.shape, "{k}");
        let d = mosa_testkit::max_abs_diff(&t.data, &u.data);
        assert!(d <= 1e-6, "{k}: {d}");
    }
}

#[test]
fn layerscale_and_antialiased_resampling_match_timm() {
    let cfg = fixture_config("vit_layerscale_resized");
    assert_eq!(cfg.grid(), (4, 4));
    let model = load_vit::<B>(&cfg, &fixtures().join("vit_layerscale_resized.safetensors"), HeadPolicy::Load, &Default::default()).unwrap();
    let io = io("vit_layerscale_resized");
    let input: Tensor<B, 4> = to_tensor(io.get("input").unwrap());
    assert_eq!(input.dims()[2], 42);
    let out = model.forward(input.clone());
    check("vit_layerscale_resized (per forward)", &out, &io, &["tokens", "pre_logits", "logits"]);

    // Re-gridding once for the training resolution gives the same result.
    let model = model.set_img_size(42);
    assert_eq!(model.grid, [3, 3]);
    check("vit_layerscale_resized (set_img_size)", &model.forward(input.clone()), &io, &["tokens", "pre_logits", "logits"]);

    // So does resampling while loading into a model configured for 42 px.
    let cfg42 = fixture_config("vit_layerscale_resized").with_img_size(42);
    let model = load_vit::<B>(&cfg42, &fixtures().join("vit_layerscale_resized.safetensors"), HeadPolicy::Load, &Default::default()).unwrap();
    check("vit_layerscale_resized (at load)", &model.forward(input), &io, &["tokens", "pre_logits", "logits"]);
}

#[test]
fn dinov2_from_onnx_matches_transformers() {
    let cfg = fixture_config("dinov2");
    assert_eq!((cfg.grid(), cfg.num_classes, cfg.pos_resample), ((5, 5), 0, mosa_models::Resample::Bicubic));
    let model = load_vit::<B>(&cfg, &fixtures().join("dinov2.onnx"), HeadPolicy::Load, &Default::default()).unwrap();
    let io = io("dinov2");
    let out = model.forward(to_tensor(io.get("input").unwrap()));
    check("dinov2.onnx", &out, &io, &["last_hidden_state"]);
    // No head: logits are the pooled class token.
    assert_eq!(out.logits.into_data(), out.pre_logits.into_data());
}

#[test]
fn dinov2_onnx_converts_to_a_timm_safetensors_that_loads_the_same() {
    let sd = load::read_checkpoint(&fixtures().join("dinov2.onnx")).unwrap();
    assert!(sd.get("blocks.1.attn.qkv.weight").is_some() && sd.get("blocks.0.ls2.gamma").is_some());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dinov2.safetensors");
    load::safetensors::write(&sd, &path, None).unwrap();
    let cfg = fixture_config("dinov2");
    let model = load_vit::<B>(&cfg, &path, HeadPolicy::Load, &Default::default()).unwrap();
    let io = io("dinov2");
    check("dinov2 converted", &model.forward(to_tensor(io.get("input").unwrap())), &io, &["last_hidden_state"]);
}

#[test]
fn hidden_states_are_the_block_outputs() {
    let cfg = fixture_config("vit");
    let model = load_vit::<B>(&cfg, &fixtures().join("vit.safetensors"), HeadPolicy::Load, &Default::default()).unwrap();
    let io = io("vit");
    let out = model.forward_with(to_tensor(io.get("input").unwrap()), true);
    assert_eq!(out.hidden.len(), cfg.depth);
    let normed = model.norm.forward(out.hidden.last().unwrap().clone());
    let d = normed.sub(out.features).abs().max().into_scalar();
    assert!(d == 0.0, "final norm of the last hidden state differs from tokens by {d}");
    // Block 0's output feeds block 1.
    let again = model.blocks[1].forward(out.hidden[0].clone(), &mut mosa_core::Draws::whole(mosa_core::Rng::new(0)));
    assert!(again.sub(out.hidden[1].clone()).abs().max().into_scalar() == 0.0);
}

#[test]
fn a_checkpoint_that_does_not_fit_names_every_bad_tensor() {
    let mut sd = load::read_checkpoint(&fixtures().join("vit.safetensors")).unwrap();
    sd.tensors.get_mut("blocks.0.attn.qkv.weight").unwrap().shape = vec![48, 144];
    sd.tensors.remove("norm.bias");
    sd.insert("blocks.0.extra", HostTensor::new(vec![1], vec![0.0]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    load::safetensors::write(&sd, &path, None).unwrap();
    let err = load_vit::<B>(&fixture_config("vit"), &path, HeadPolicy::Load, &Default::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Mismatch { .. }), "{msg}");
    for needle in ["bad.safetensors", "`blocks.0.attn.qkv.weight` has shape [48, 144]", "missing tensor `norm.bias`", "unexpected tensor `blocks.0.extra`"] {
        assert!(msg.contains(needle), "`{needle}` not in: {msg}");
    }
}

#[test]
fn wrong_depth_and_wrong_files_are_clear_errors() {
    let cfg = fixture_config("vit").with_depth(3);
    let err = load_vit::<B>(&cfg, &fixtures().join("vit.safetensors"), HeadPolicy::Load, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("2 blocks, the model 3"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a checkpoint").unwrap();
    let err = load::read_checkpoint(&junk).unwrap_err().to_string();
    assert!(err.contains("junk.safetensors") && err.contains("not a valid safetensors"), "{err}");
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"\x08\x07garbage").unwrap();
    assert!(load::read_checkpoint(&junk).unwrap_err().to_string().contains("junk.onnx"));
    let err = load::read_checkpoint(&dir.path().join("missing.npz")).unwrap_err().to_string();
    assert!(err.contains("missing.npz"), "{err}");
    // A DINOv2 ONNX is not a timm ViT with a head: loading it with a 5-class head asks for `head.weight`.
    let cfg = fixture_config("dinov2").with_num_classes(5);
    let err = load_vit::<B>(&cfg, &fixtures().join("dinov2.onnx"), HeadPolicy::Load, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("missing tensor `head.weight`"), "{err}");
    // ... and a fresh head for fine-tuning is fine.
    load_vit::<B>(&cfg, &fixtures().join("dinov2.onnx"), HeadPolicy::Skip, &Default::default()).unwrap();
}

#[test]
fn position_grid_matrices_are_computed_once_per_resolution() {
    use mosa_models::posembed::cached_grid_matrix;
    let a = cached_grid_matrix((4, 4), (3, 3), mosa_models::Resample::BicubicAntialias);
    let b = cached_grid_matrix((4, 4), (3, 3), mosa_models::Resample::BicubicAntialias);
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    let c = cached_grid_matrix((4, 4), (3, 3), mosa_models::Resample::Bicubic);
    assert!(!std::sync::Arc::ptr_eq(&a, &c));
}

#[test]
fn closed_form_parameter_count_matches_the_module() {
    use burn::module::Module;
    for cfg in [
        fixture_config("vit"),
        fixture_config("vit_layerscale_resized"),
        fixture_config("dinov2"),
        VitConfig::new().with_embed_dim(32).with_depth(3).with_num_heads(2).with_img_size(32).with_qkv_bias(false).with_num_classes(7),
    ] {
        let model = cfg.init::<B>(&Default::default());
        assert_eq!(model.num_params(), cfg.num_params());
    }
    // ViT-B/16 with a 1000-class head has 86,567,656 parameters (timm's vit_base_patch16_224).
    let b16 = mosa_models::preset("vit-b16").unwrap().with_num_classes(1000);
    assert_eq!(b16.num_params(), 86_567_656);
}
