//! `mosa data check`: read every list entry and every image of a dataset, count per split and
//! per class, and collect problems with their file and line.

use rayon::prelude::*;

use crate::loader::decode_entry;
use crate::source::Dataset;

#[derive(Debug, Clone, serde::Serialize)]
pub struct SplitCounts {
    pub split: String,
    pub images: usize,
    pub per_class: Vec<usize>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    pub dataset: String,
    pub num_classes: usize,
    pub splits: Vec<SplitCounts>,
    /// `entry: problem`, in list order, split by split.
    pub problems: Vec<String>,
    /// Decoded images per second (all cores).
    pub images_per_second: f64,
}

/// Decodes every image of every split (stopping at the first problem unless `all`).
pub fn check(ds: &Dataset, all: bool) -> CheckReport {
    let start = std::time::Instant::now();
    let mut problems = Vec::new();
    let mut splits = Vec::new();
    let mut decoded = 0usize;
    for split in ds.splits() {
        splits.push(SplitCounts { split: split.name.clone(), images: split.len(), per_class: split.class_counts(ds.num_classes) });
        if !all && !problems.is_empty() {
            continue;
        }
        let errs: Vec<Option<String>> = split.entries.par_iter().map(|e| decode_entry(e).err().map(|err| err.to_string())).collect();
        decoded += split.len();
        problems.extend(errs.into_iter().flatten());
    }
    if !all {
        problems.truncate(1);
    }
    CheckReport {
        dataset: ds.spec.to_string(),
        num_classes: ds.num_classes,
        splits,
        problems,
        images_per_second: decoded as f64 / start.elapsed().as_secs_f64().max(1e-9),
    }
}
