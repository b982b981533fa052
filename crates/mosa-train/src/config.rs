//! The training recipe: every value of spec §5 with its reference default. Read from TOML
//! (`--config`), then overridden by command-line flags. [`RunSpec`]: everything that defines a
//! run (model, weights, method, dataset, recipe).

use std::path::PathBuf;

use crate::optim::ScheduleKind;
use crate::step::PassLayout;
use mosa_core::Method;
use mosa_models::BackboneConfig;
use serde::{Deserialize, Serialize};

/// How the classifier head starts (spec §1, note on the head init).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum HeadInit {
    /// Weight and bias 0: the sensible default for backbones with large feature norms (DINOv2).
    #[default]
    Zero,
    /// The reference: kaiming-normal (fan_out) weight, bias −ln(99).
    Reference,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub warmup_epochs: usize,
    /// Base learning rate.
    pub lr: f64,
    /// The head's learning rate, when it should differ from the rest (e.g. sparse or full
    /// experts, whose backbone deltas want a far smaller lr than a freshly initialised head).
    pub head_lr: Option<f64>,
    pub schedule: ScheduleKind,
    pub batch_size: usize,
    /// Evaluation batch (default: the training batch).
    pub eval_batch_size: Option<usize>,
    /// Input side S (the backbone's position grid is resampled to it).
    pub resolution: usize,
    pub seed: u64,
    pub weight_decay: f64,
    pub eps: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Weight of the symmetric KL consistency term (MoSA; two passes when > 0).
    pub kl_weight: f64,
    /// DEEPREG: MSE between the two passes' hidden states of blocks 0..5.
    pub deepreg: bool,
    pub deepreg_weight: f64,
    pub head_init: HeadInit,
    /// Use only the first N (seeded, stratified by order) training images; for quick runs.
    pub max_train_images: Option<usize>,
    /// Evaluate on at most N images per split.
    pub max_eval_images: Option<usize>,
    /// Evaluate (validation and test) after every K-th epoch and after the last; the epochs in
    /// between have no accuracies, and "test at best val" picks among the evaluated epochs.
    /// `None`: after every epoch, as the reference does. Not serialised when `None`, so run
    /// directories without it keep their hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<usize>,
    /// Read losses back from the device every N steps (NaN check, progress).
    pub sync_every: usize,
    /// The backbone's dropout in training, as the MoSA reference trains ViT-B/16 (spec §1): this
    /// rate after the position embedding and in every MLP (after the activation and after fc2),
    /// attention probabilities and attention output 0. `None`: the model config's rates (0 in
    /// every preset). Not serialised when `None`, so run directories without it keep their hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backbone_dropout: Option<f64>,
    /// The list to train on instead of the dataset's training split, e.g. VTAB-1k's `train800`
    /// for the tuning protocol's search (`val200` stays the validation split, disjoint from it).
    /// `None`: the dataset's (VTAB: `train800val200`). Not serialised when `None`, so run
    /// directories without it keep their hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_split: Option<String>,
    /// How VTAB-style datasets are resized: TensorFlow's bilinear (the reference), or PIL's
    /// antialiased one that runs of formats 1–3 trained with (their configs are converted to it).
    pub vtab_resize: mosa_data::VtabResize,
    /// How a two-pass step (MoSA or MoSA-LoRA with a consistency term) runs its passes
    /// ([`PassLayout`]). `None` in a new run's recipe: stacked, recorded as such in its
    /// `config.json`; `None` in a saved run: a run directory from before the layout was recorded,
    /// which ran two forwards and resumes so. Not serialised when `None`, so run directories
    /// without it keep their hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passes: Option<PassLayout>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            warmup_epochs: 10,
            lr: 0.005,
            head_lr: None,
            schedule: ScheduleKind::PerEpoch,
            batch_size: 128,
            eval_batch_size: None,
            resolution: 224,
            seed: 3407,
            weight_decay: 0.01,
            eps: 1e-6,
            beta1: 0.9,
            beta2: 0.999,
            kl_weight: 1.0,
            deepreg: false,
            deepreg_weight: 1.0,
            head_init: HeadInit::Zero,
            max_train_images: None,
            max_eval_images: None,
            eval_every: None,
            sync_every: 10,
            backbone_dropout: None,
            train_split: None,
            vtab_resize: mosa_data::VtabResize::default(),
            passes: None,
        }
    }
}

/// A recipe ([`TrainConfig`]) with a value out of range: names the flag and the value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRecipe(pub String);

impl From<mosa_models::Error> for InvalidRecipe {
    fn from(e: mosa_models::Error) -> Self {
        Self(e.to_string())
    }
}

impl TrainConfig {
    /// How many of `available` training images a run uses (`max_train_images` caps them).
    pub fn train_images(&self, available: usize) -> usize {
        self.max_train_images.map_or(available, |m| m.min(available))
    }

    /// How many of a split's `available` images each evaluation scores (`max_eval_images` caps them).
    pub fn eval_images(&self, available: usize) -> usize {
        self.max_eval_images.map_or(available, |m| m.min(available))
    }

    /// Whether the model is evaluated after epoch `epoch` (1-based): every `eval_every`-th
    /// epoch and the last.
    pub fn evaluates_after(&self, epoch: usize) -> bool {
        epoch == self.epochs || epoch.is_multiple_of(self.eval_every.unwrap_or(1).max(1))
    }

    pub fn validate(&self) -> std::result::Result<(), InvalidRecipe> {
        if self.epochs == 0 || self.batch_size == 0 || self.resolution == 0 {
            return Err(InvalidRecipe("epochs, batch size and resolution must be > 0".into()));
        }
        // bounded before anything is sized by them (issue #11 case 6)
        mosa_models::limits::at_most("--resolution", self.resolution, mosa_models::limits::MAX_IMG_SIZE).map_err(InvalidRecipe::from)?;
        for (flag, v) in [("--batch-size", Some(self.batch_size)), ("--eval-batch-size", self.eval_batch_size)] {
            mosa_models::limits::at_most(flag, v.unwrap_or(1), 1 << 16).map_err(InvalidRecipe::from)?;
        }
        mosa_models::limits::at_most("--epochs", self.epochs, 1 << 20).map_err(InvalidRecipe::from)?;
        let finite_nonneg = |v: f64| v.is_finite() && v >= 0.0;
        for (flag, v) in [("--lr", self.lr), ("--weight-decay", self.weight_decay), ("--kl-weight", self.kl_weight), ("deepreg_weight", self.deepreg_weight)] {
            if !finite_nonneg(v) {
                return Err(InvalidRecipe(format!("{flag} must be finite and ≥ 0, got {v}")));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(InvalidRecipe(format!("--eps must be finite and > 0, got {}", self.eps)));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(InvalidRecipe(format!("AdamW {name} must be in [0, 1), got {b}")));
            }
        }
        for (flag, v) in [("--max-train-images", self.max_train_images), ("--max-eval-images", self.max_eval_images), ("--eval-every", self.eval_every)] {
            if v == Some(0) {
                return Err(InvalidRecipe(format!("{flag} must be at least 1 (leave it out for every image)")));
            }
        }
        if self.warmup_epochs > self.epochs {
            return Err(InvalidRecipe(format!("warm-up ({}) longer than training ({} epochs)", self.warmup_epochs, self.epochs)));
        }
        if let Some(h) = self.head_lr
            && !(h.is_finite() && h >= 0.0 && self.lr > 0.0)
        {
            return Err(InvalidRecipe(format!("--head-lr {h} needs to be finite and ≥ 0, with --lr > 0")));
        }
        if let Some(p) = self.backbone_dropout
            && !(0.0..1.0).contains(&p)
        {
            return Err(InvalidRecipe(format!("--backbone-dropout {p} must be in [0, 1)")));
        }
        Ok(())
    }
}

/// Everything that defines a run; a resume must match it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    /// Preset name or config file the model came from (for display).
    pub model_name: String,
    pub model: BackboneConfig,
    /// Backbone weights (None: random initialisation).
    pub weights: Option<PathBuf>,
    pub method: Method,
    pub dataset: String,
    /// The recipe, including the one seed of the run (masks, draws, order, init).
    pub train: TrainConfig,
    pub skip_unreadable: bool,
}

impl RunSpec {
    /// SHA-256 of the spec's canonical JSON: the checkpoint records it, a resume compares it.
    pub fn sha256(&self) -> String {
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(json.as_bytes()))
    }
}
