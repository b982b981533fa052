//! The memory a run or an evaluation will take, estimated from its sizes and refused before
//! anything is allocated when the machine does not have it (issue #29 item 5): `--resolution
//! 4096` was accepted and asked for a 12.9 GB batch.
//!
//! The estimate: every decoded image at the input side (3 bytes a pixel, as the loader keeps
//! them), one batch's activations (the batch's input floats × a measured factor,
//! [`mosa_models::limits::TRAIN_ACTIVATIONS_PER_INPUT`]) and, for training, the parameters with
//! their gradients and AdamW's two moments (16 bytes each). It errs high for small models.

use mosa_models::limits::{EVAL_ACTIVATIONS_PER_INPUT, TRAIN_ACTIVATIONS_PER_INPUT, fits_memory};

use crate::{Error, Result};

/// What a run or evaluation holds at its largest.
pub struct Footprint {
    /// Images decoded into memory (every split it reads).
    pub images: usize,
    /// Input side in pixels.
    pub resolution: usize,
    pub batch: usize,
    /// The model's parameters (estimated from its config).
    pub params: f64,
    pub training: bool,
}

impl Footprint {
    /// Refuses the footprint when it exceeds the available memory, naming its parts and what to lower.
    pub fn check(&self, what: &str) -> Result<()> {
        let pixels = 3.0 * (self.resolution as f64).powi(2);
        let (act, per_param, lower) = if self.training {
            (TRAIN_ACTIVATIONS_PER_INPUT, 16.0, "--resolution, --batch-size or --max-train-images / --max-eval-images")
        } else {
            (EVAL_ACTIVATIONS_PER_INPUT, 4.0, "--resolution (the model's), --batch-size or --max-images")
        };
        let parts = [
            ("decoded images", self.images as f64 * pixels),
            ("one batch's activations", self.batch as f64 * pixels * 4.0 * act),
            (if self.training { "parameters, gradients and optimiser state" } else { "parameters" }, self.params * per_param),
        ];
        fits_memory(what, &parts, lower).map_err(|e| Error::Config(e.to_string()))
    }
}
