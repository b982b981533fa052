//! Test support shared by the workspace's tests, and only by them (a dev-dependency): where the
//! reference fixtures are, every parameter's values by path, JSON files read for assertions.

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
