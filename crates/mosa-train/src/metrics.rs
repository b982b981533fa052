//! Per-epoch metrics, the run summary, and their files (`metrics.jsonl`, `metrics.csv`,
//! `summary.json`), each rewritten atomically after every epoch.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_acc: f64,
    pub val_acc: Option<f64>,
    pub test_acc: Option<f64>,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub train_images_per_second: f64,
    pub eval_images_per_second: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub dataset: String,
    pub method: String,
    pub model: String,
    pub epochs: usize,
    pub trainable_params: usize,
    /// Trainable parameters after merging (what inference costs), excluding nothing.
    pub merged_trainable_params: usize,
    /// Test accuracy at the epoch of best validation accuracy (first such epoch).
    pub test_at_best_val: Option<f64>,
    pub best_val_epoch: Option<usize>,
    pub best_val: Option<f64>,
    /// Best test accuracy over all epochs (the optimistic number some papers report).
    pub best_test: Option<f64>,
    pub best_test_epoch: Option<usize>,
    /// Test accuracy after the last epoch.
    pub last_test: Option<f64>,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub train_images_per_second: f64,
    pub eval_images_per_second: f64,
    pub head_init: String,
    pub backend: String,
}

/// The accuracies a run's summary reports, read from its per-epoch metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracies {
    pub best_val_epoch: Option<usize>,
    pub best_val: Option<f64>,
    /// Test accuracy at the epoch of the best validation accuracy.
    pub test_at_best_val: Option<f64>,
    pub best_test_epoch: Option<usize>,
    pub best_test: Option<f64>,
    /// Test accuracy of the last epoch that evaluated test.
    pub last_test: Option<f64>,
}

pub fn summarize(m: &[EpochMetrics]) -> Accuracies {
    let mut best_val: Option<(usize, f64)> = None;
    let mut best_test: Option<(usize, f64)> = None;
    for e in m {
        if let Some(v) = e.val_acc
            && best_val.is_none_or(|(_, b)| v > b)
        {
            best_val = Some((e.epoch, v));
        }
        if let Some(t) = e.test_acc
            && best_test.is_none_or(|(_, b)| t > b)
        {
            best_test = Some((e.epoch, t));
        }
    }
    let test_at_best = best_val.and_then(|(ep, _)| m.iter().find(|e| e.epoch == ep).and_then(|e| e.test_acc));
    Accuracies {
        best_val_epoch: best_val.map(|b| b.0),
        best_val: best_val.map(|b| b.1),
        test_at_best_val: test_at_best,
        best_test_epoch: best_test.map(|b| b.0),
        best_test: best_test.map(|b| b.1),
        last_test: m.last().and_then(|e| e.test_acc),
    }
}
