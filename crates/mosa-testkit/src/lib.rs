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

/// The largest of `values`, or NaN if any is NaN: `f32::max` drops a NaN operand, so a
/// `fold(0.0, f32::max)` over differences would report a NaN output as no difference at all and
/// a `≤ tolerance` check would pass it.
pub fn max_or_nan(values: impl IntoIterator<Item = f32>) -> f32 {
    values.into_iter().fold(0.0, max_nan)
}

/// `m.max(d)`, but NaN if either is NaN: the step of [`max_or_nan`], for a test's own
/// `fold(0.0, max_nan)` over differences.
pub fn max_nan(m: f32, d: f32) -> f32 {
    if m.is_nan() || d.is_nan() { f32::NAN } else { m.max(d) }
}

/// The largest element-wise `|a − b|`, NaN where either side has a NaN (any `≤ tolerance` check
/// then fails).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    max_or_nan(a.iter().zip(b).map(|(x, y)| (x - y).abs()))
}

/// The largest element-wise difference, relative to `1 + |reference|` (NaN if there is one).
pub fn worst(a: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(a.len(), reference.len());
    max_or_nan(a.iter().zip(reference).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())))
}

/// The largest difference relative to the reference's largest magnitude (gradients cancel, so
/// an element's own size is no scale for its rounding); NaN if there is one.
pub fn scaled_worst(a: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(a.len(), reference.len());
    let scale = reference.iter().fold(1f32, |m, y| m.max(y.abs()));
    max_abs_diff(a, reference) / scale
}

/// `n` standard-normal values from backend `B` seeded with `seed`, times `spread`, every 97th
/// (offset by the seed) eight times larger: an outlier in most rows.
pub fn spread_values<B: Backend>(n: usize, seed: u64, spread: f32) -> Vec<f32> {
    B::seed(&Default::default(), seed);
    let v = host(burn::tensor::Tensor::<B, 1>::random([n], burn::tensor::Distribution::Normal(0.0, 1.0), &Default::default()));
    v.iter().enumerate().map(|(i, x)| x * spread * if (i as u64 + seed).is_multiple_of(97) { 8.0 } else { 1.0 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_is_the_largest_difference() {
        let (got, want) = ([1.0, f32::NAN, 3.0], [1.0, 2.0, 3.5]);
        assert!(max_abs_diff(&got, &want).is_nan());
        assert!(worst(&got, &want).is_nan() && scaled_worst(&got, &want).is_nan());
        assert!(max_abs_diff(&want, &got).is_nan(), "either side");
        // without a NaN, the plain maximum
        assert_eq!(max_abs_diff(&[1.0, 2.0, 3.0], &want), 0.5);
        assert!(max_or_nan([0.25, f32::NAN, 1.0]).is_nan() && max_nan(f32::NAN, 0.0).is_nan());
        assert_eq!(max_or_nan([0.25, 1.0]), 1.0);
    }
}
