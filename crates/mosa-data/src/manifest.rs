//! The mini-VTAB's `MANIFEST` (JSON): where every task came from and how it was split.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceFile {
    /// Path inside the package (or the package file itself).
    pub path: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    /// `npm`, `debian`, `pypi` or `generated`.
    pub registry: String,
    pub package: String,
    pub version: String,
    pub license: String,
    /// The command that fetches it by name.
    pub fetch: String,
    pub files: Vec<SourceFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskManifest {
    pub name: String,
    pub group: String,
    pub num_classes: usize,
    pub classes: Vec<String>,
    pub source: Source,
    /// Native image size and colour of the stored PNGs.
    pub images: String,
    /// Entries per list: train800, val200, train800val200, test.
    pub counts: BTreeMap<String, usize>,
    /// How the split was drawn.
    pub split: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub built_by: String,
    pub seed: u64,
    pub tasks: Vec<TaskManifest>,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest> {
        let text = crate::list::read_text(path)?;
        serde_json::from_str(&text).map_err(|e| DataError::line(path, e.line(), e.to_string()))
    }
}
