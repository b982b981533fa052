//! Parity of Swin and ConvNeXt and their loaders with timm 1.0.31's outputs in
//! `../shared/fixtures` (fp32; bound max |Δ| ≤ 1e-4 on `features`, `pre_logits`, `logits`, in
//! the layouts the fixtures' JSON names: Swin NHWC, ConvNeXt NCHW), and their state dicts.

use std::path::Path;

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::TensorData;
use mosa_models::load::{self, HostTensor, StateDict};
use mosa_models::presets::config_from_json_file;
use mosa_models::{Backbone, BackboneConfig, BackboneOutput, HeadPolicy};
use mosa_testkit::fixtures;

type B = Flex;

fn io(name: &str) -> StateDict {
    load::safetensors::read(&fixtures().join(format!("{name}_io.safetensors"))).unwrap()
}

fn input(io: &StateDict) -> Tensor<B, 4> {
    let t = io.get("input").unwrap();
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), &Default::default())
}

fn diff(got: &HostTensor, want: &HostTensor) -> f32 {
    assert_eq!(got.shape, want.shape, "shape");
    mosa_testkit::max_abs_diff(&got.data, &want.data)
}

fn check(name: &str, out: &BackboneOutput<B>, want: &StateDict) {
    let got = [
        ("features", out.features_as_reference()),
        ("pre_logits", HostTensor::from_tensor(out.pre_logits.clone())),
        ("logits", HostTensor::from_tensor(out.logits.clone())),
    ];
    for (o, g) in &got {
        let d = diff(g, want.get(o).unwrap_or_else(|| panic!("{name}: no `{o}` in the reference")));
        assert!(d <= 1e-4, "{name}: `{o}` differs from timm by {d}");
    }
}

fn config(name: &str) -> BackboneConfig {
    config_from_json_file(&fixtures().join(format!("{name}.json"))).unwrap()
}

fn load(name: &str, weights: &Path) -> Backbone<B> {
    config(name).load::<B>(weights, HeadPolicy::Load, &Default::default()).unwrap()
}

#[test]
fn swin_matches_timm() {
    let cfg = config("swin");
    assert_eq!(cfg.family(), "swin");
    let io = io("swin");
    let model = load("swin", &fixtures().join("swin.safetensors"));
    let out = model.forward(input(&io));
    assert_eq!(out.features_as_reference().shape, io.get("features").unwrap().shape);
    check("swin", &out, &io);
    // the closed-form parameter count is the module's
    assert_eq!(cfg.num_params(), model.num_params());
}

#[test]
fn official_swin_release_layout_loads_to_the_same_model() {
    let io = io("swin");
    check("swin_official.safetensors", &load("swin", &fixtures().join("swin_official.safetensors")).forward(input(&io)), &io);
    // the release's .pth (weights under `model`, with the int64 index and mask buffers):
    // scripts/make_swin_pth.py
    let pth = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/swin_official.pth");
    check("swin_official.pth", &load("swin", &pth).forward(input(&io)), &io);
}

#[test]
fn convnext_matches_timm() {
    let cfg = config("convnext");
    assert_eq!(cfg.family(), "convnext");
    let io = io("convnext");
    let model = load("convnext", &fixtures().join("convnext.safetensors"));
    check("convnext", &model.forward(input(&io)), &io);
    assert_eq!(cfg.num_params(), model.num_params());
}

#[test]
fn state_dicts_are_the_checkpoints() {
    for name in ["swin", "convnext"] {
        let file = fixtures().join(format!("{name}.safetensors"));
        let want = load::safetensors::read(&file).unwrap();
        let got = load(name, &file).state_dict();
        assert_eq!(got.tensors.keys().collect::<Vec<_>>(), want.tensors.keys().collect::<Vec<_>>(), "{name}");
        for (k, t) in &want.tensors {
            assert_eq!(got.tensors[k].data, t.data, "{name}: {k}");
        }
    }
}

#[test]
fn a_damaged_checkpoint_names_the_tensor() {
    let mut sd = load::safetensors::read(&fixtures().join("convnext.safetensors")).unwrap();
    sd.tensors.remove("stages.2.blocks.0.gamma");
    let t = sd.tensors.get_mut("stages.1.blocks.0.mlp.fc1.weight").unwrap();
    t.shape = vec![16, 64];
    let err = config("convnext").load_state::<B>(sd, HeadPolicy::Load, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("stages.2.blocks.0.gamma") && err.contains("stages.1.blocks.0.mlp.fc1.weight"), "{err}");
    let mut sd = load::safetensors::read(&fixtures().join("swin.safetensors")).unwrap();
    sd.tensors.remove("layers.1.downsample.reduction.weight");
    let err = config("swin").load_state::<B>(sd, HeadPolicy::Load, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("layers.1.downsample.reduction.weight"), "{err}");
}

/// A Swin built for another input size has other windows: the checkpoint's bias tables are
/// resampled to them, and an input of that size runs. At 16 px the grids are 8 and 4: stage 0
/// keeps window 4 (shifted), stage 1's window covers its grid (4) and is not shifted.
#[test]
fn swin_at_another_resolution_resamples_its_tables() {
    let cfg = config("swin").with_img_size(16);
    let BackboneConfig::Swin(c) = &cfg else { unreachable!() };
    assert_eq!((c.window(0), c.window(1)), ((4, 2), (4, 0)));
    let small = cfg.load::<B>(&fixtures().join("swin.safetensors"), HeadPolicy::Load, &Default::default()).unwrap();
    let x = Tensor::<B, 4>::random([2, 3, 16, 16], burn::tensor::Distribution::Normal(0.0, 1.0), &Default::default());
    assert_eq!(small.forward(x).logits.dims(), [2, 5]);
    // at 8 px stage 1's grid (2) is below the window: a 3×3 table resampled from 7×7
    let cfg = config("swin").with_img_size(8);
    let m = cfg.load::<B>(&fixtures().join("swin.safetensors"), HeadPolicy::Load, &Default::default()).unwrap();
    let Backbone::Swin(s) = &m else { unreachable!() };
    assert_eq!(s.layers[1].blocks[0].attn.relative_position_bias_table.dims(), [9, 4]);
}

/// Grids that are not whole windows are padded (timm pads after the shift and masks the padded
/// grid's regions): the fixture's weights at 36 px (grids 18 and 9, padded to 20 and 12), against
/// timm's `SwinTransformer(img_size=36)` with the same weights (`scripts/make_swin_pad_io.py`).
#[test]
fn swin_pads_grids_that_are_not_whole_windows() {
    let io = load::safetensors::read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/swin_pad36_io.safetensors")).unwrap();
    let model = config("swin").with_img_size(36).load::<B>(&fixtures().join("swin.safetensors"), HeadPolicy::Load, &Default::default()).unwrap();
    check("swin at 36 px", &model.forward(input(&io)), &io);
}
