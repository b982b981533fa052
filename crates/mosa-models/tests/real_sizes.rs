//! The ViT's pieces at real sizes (224 px, 14-px patches, d 384), against independent
//! computations: burn's own conv2d for the patch embedding, and the host resampler for the
//! position grid. The parity fixtures are tiny, so these catch size-dependent errors.

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};
use mosa_models::VitConfig;
use mosa_models::posembed::{self, Resample};

type B = Flex;

#[test]
fn patch_embedding_equals_a_strided_convolution() {
    let dev = Default::default();
    let cfg = VitConfig::new().with_embed_dim(384).with_depth(1).with_num_heads(6).with_patch_size(14).with_img_size(224);
    let model = cfg.init::<B>(&dev);
    let x = Tensor::<B, 4>::random([2, 3, 224, 224], Distribution::Normal(0.0, 1.0), &dev);
    let (tokens, grid) = model.patch_embed.forward(x.clone());
    assert_eq!(grid, (16, 16));
    let conv = model.patch_embed.proj.forward(x); // [2, 384, 16, 16]
    let want = conv.reshape([2, 384, 256]).swap_dims(1, 2);
    let d = (tokens - want).abs().max().into_scalar();
    assert!(d < 1e-4, "patch embedding differs from conv2d by {d}");
}

#[test]
fn device_resampling_equals_host_resampling() {
    let dev = Default::default();
    let d = 384;
    let host: Vec<f32> = (0..37 * 37 * d).map(|i| ((i as f32) * 0.001).sin()).collect();
    for method in [Resample::Bicubic, Resample::BicubicAntialias] {
        let want = posembed::resample_host(&host, d, (37, 37), (16, 16), method);
        let t = Tensor::<B, 3>::from_data(TensorData::new(host.clone(), [1, 37 * 37, d]), &dev);
        let got = posembed::resample(t, (37, 37), (16, 16), method).into_data().to_vec::<f32>().unwrap();
        let diff = mosa_testkit::max_abs_diff(&got, &want);
        assert!(diff < 1e-4, "{method}: {diff}");
    }
}

#[test]
fn exact_gelu_is_accurate() {
    let dev = Default::default();
    let xs: Vec<f32> = (0..4001).map(|i| -10.0 + i as f32 * 0.005).collect();
    let t = Tensor::<B, 1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &dev);
    let got = burn::tensor::activation::gelu(t).into_data().to_vec::<f32>().unwrap();
    // Reference: x·Φ(x) with Φ from a high-precision erfc series (Abramowitz–Stegun 7.1.26 is
    // too coarse); use the relation with the tanh approximation, which is within 3e-4 of exact GELU.
    let mut worst = 0.0f32;
    for (x, g) in xs.iter().zip(&got) {
        let x64 = *x as f64;
        let approx = 0.5 * x64 * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3))).tanh());
        worst = mosa_testkit::max_nan(worst, (*g as f64 - approx).abs() as f32);
    }
    assert!(worst < 1e-3, "gelu differs from the tanh approximation by {worst}");
}

#[test]
fn layer_norm_matches_its_definition() {
    let dev = Default::default();
    let ln = mosa_core::layer_norm::LayerNormConfig::new(384).with_epsilon(1e-6).init::<B>(&dev);
    let x = Tensor::<B, 3>::random([2, 257, 384], Distribution::Normal(3.0, 5.0), &dev);
    let mean = x.clone().mean_dim(2);
    let var = (x.clone() - mean.clone()).powi_scalar(2).mean_dim(2);
    let want = (x.clone() - mean) / (var + 1e-6).sqrt();
    let d = (ln.forward(x) - want).abs().max().into_scalar();
    assert!(d < 1e-4, "layer norm differs by {d}");
}

/// A matmul whose right operand is an offset view (a slice past the class token), as the
/// position-embedding resampling does, must equal the same matmul on a contiguous copy.
#[test]
fn matmul_on_an_offset_view_equals_matmul_on_a_copy() {
    let dev = Default::default();
    for (t, k_rows, d) in [(26, 4, 48), (1370, 256, 384)] {
        let full = Tensor::<B, 3>::random([1, t, d], Distribution::Normal(0.0, 1.0), &dev);
        let view = full.clone().slice([0..1, 1..t, 0..d]);
        let copy = Tensor::<B, 3>::from_data(view.to_data(), &dev);
        let k = Tensor::<B, 3>::random([1, k_rows, t - 1], Distribution::Normal(0.0, 1.0), &dev);
        let diff = (k.clone().matmul(view) - k.matmul(copy)).abs().max().into_scalar();
        assert!(diff < 1e-3, "t {t}: matmul on an offset view differs by {diff}");
    }
}
