//! Test support shared by the workspace's tests, and only by them (a dev-dependency): where the
//! reference fixtures are, every parameter's values by path, JSON files read for assertions.
//!
//! ```
//! // the reference fixtures are found beside the clone (or at MOSA_FIXTURES)
//! let vit = mosa_testkit::read_json(&mosa_testkit::fixtures().join("vit.json"));
//! assert_eq!(vit["kwargs"]["embed_dim"], 48);
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::prelude::*;
use mosa_core::params::{VisitParam, visit};

/// The reference fixtures (tiny timm / transformers models with reference outputs): `MOSA_FIXTURES`,
/// or `shared/fixtures` beside the clone. Panics with how to point at them when they are missing.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("MOSA_FIXTURES").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures"));
    assert!(dir.join("README.md").exists(), "reference fixtures not found at {} (set MOSA_FIXTURES)", dir.display());
    dir
}

/// Every float parameter's values by its path (`mosa_core::params` paths: the backbone-family
/// enum is transparent, so a ViT's paths are the same inside `Backbone::Vit` or not).
pub fn param_values<B: Backend, M: Module<B>>(m: &M) -> BTreeMap<String, Vec<f32>> {
    struct Values(BTreeMap<String, Vec<f32>>);
    impl<B: Backend> VisitParam<B> for Values {
        fn param<const D: usize>(&mut self, path: &str, _: (&str, &str), p: &Param<Tensor<B, D>>) {
            self.0.insert(path.to_string(), p.val().into_data().convert::<f32>().to_vec::<f32>().unwrap());
        }
    }
    visit(m, Values(BTreeMap::new())).0
}

/// A JSON file, panicking with its path when it cannot be read or parsed.
pub fn read_json(p: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A tensor's values as `f32`s.
pub fn host<B: Backend, const D: usize>(t: burn::tensor::Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// `v` as a tensor of `shape` on the default device.
pub fn on<B: Backend, const D: usize>(v: &[f32], shape: [usize; D]) -> burn::tensor::Tensor<B, D> {
    burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(v.to_vec(), shape), &Default::default())
}

/// The largest element-wise difference, relative to `1 + |reference|`.
pub fn worst(a: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(a.len(), reference.len());
    a.iter().zip(reference).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0, f32::max)
}

/// The largest difference relative to the reference's largest magnitude (gradients cancel, so
/// an element's own size is no scale for its rounding).
pub fn scaled_worst(a: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(a.len(), reference.len());
    let scale = reference.iter().fold(1f32, |m, y| m.max(y.abs()));
    a.iter().zip(reference).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max) / scale
}

/// `n` standard-normal values from backend `B` seeded with `seed`, times `spread`, every 97th
/// (offset by the seed) eight times larger: an outlier in most rows.
pub fn spread_values<B: Backend>(n: usize, seed: u64, spread: f32) -> Vec<f32> {
    B::seed(&Default::default(), seed);
    let v = host(burn::tensor::Tensor::<B, 1>::random([n], burn::tensor::Distribution::Normal(0.0, 1.0), &Default::default()));
    v.iter().enumerate().map(|(i, x)| x * spread * if (i as u64 + seed).is_multiple_of(97) { 8.0 } else { 1.0 }).collect()
}
