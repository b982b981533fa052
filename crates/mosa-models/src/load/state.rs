//! A host-side, framework-neutral view of a checkpoint: tensor name → shape + f32 values,
//! always in timm's layout (PyTorch shapes, `[out, in]` linear weights). Every foreign
//! layout is mapped onto this one, and only this one is mapped onto the burn module.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use mosa_core::host::HostTensor;

/// Tensors of one checkpoint by (timm-layout) name, with the file they came from.
#[derive(Debug, Clone, Default)]
pub struct StateDict {
    pub source: PathBuf,
    pub tensors: BTreeMap<String, HostTensor>,
}

impl StateDict {
    pub fn new(source: impl Into<PathBuf>) -> Self {
        Self { source: source.into(), tensors: BTreeMap::new() }
    }

    pub fn insert(&mut self, name: impl Into<String>, t: HostTensor) {
        self.tensors.insert(name.into(), t);
    }

    pub fn get(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }

    /// Remove and return a tensor, or a format error naming it.
    pub fn take(&mut self, name: &str) -> Result<HostTensor> {
        self.tensors.remove(name).ok_or_else(|| Error::format(&self.source, format!("tensor `{name}` is missing")))
    }

    pub fn path(&self) -> &Path {
        &self.source
    }

    /// Number of classes of the stored classifier head, if it has one.
    pub fn head_classes(&self) -> Option<usize> {
        self.get("head.weight").or_else(|| self.get("head.fc.weight")).map(|w| w.shape[0])
    }

    /// Depth implied by the `blocks.N.` prefixes.
    pub fn depth(&self) -> usize {
        self.tensors.keys().filter_map(|k| k.strip_prefix("blocks.")?.split('.').next()?.parse::<usize>().ok()).map(|i| i + 1).max().unwrap_or(0)
    }
}
