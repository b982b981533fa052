//! mosa-train: fine-tuning runs, generic over the backend.
//!
//! - [`config`]: the recipe ([`TrainConfig`]); [`engine`]: the run (build, epochs, checkpoints,
//!   resume, summary); [`epoch`]: one epoch; [`step`]: one step, shaped by the method;
//!   [`evaluate`]: accuracy of a merged model; [`model`]: a run's model from its spec;
//!   [`rundir`]: the saved run (typed directory, backbone identity, saved model, `load_run`);
//! - [`loss`]: CE, symmetric KL with stop-gradient, DEEPREG; [`checkpoint`]: the resumable state;
//! - [`metrics`]: per-epoch metrics and the summary; [`progress`]: terminal bar or plain lines;
//! - [`optim`]: the reference AdamW and warm-up cosine;
//! - [`expert`]: a run as a task expert; [`peft`]: experts to and from HF PEFT adapter folders.

pub mod checkpoint;
pub mod config;
pub mod engine;
pub mod epoch;
pub mod evaluate;
pub mod expert;
pub mod loss;
pub mod memory;
pub mod merged;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod output;
pub mod peft;
pub mod progress;
pub mod rundir;
pub mod step;

pub use config::RunSpec;
pub use config::{HeadInit, TrainConfig};
pub use engine::{Control, Outcome, run};
pub use metrics::{EpochMetrics, Summary};
pub use rundir::{RunConfig, RunDir};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] mosa_data::DataError),
    #[error("model: {0}")]
    Model(String),
    #[error("config: {0}")]
    Config(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A bad input or output named by the message itself (a file, a flag), about neither a
    /// checkpoint nor a recipe.
    #[error("{0}")]
    Input(String),
    #[error("non-finite loss ({value}) at epoch {epoch}, step {step}: training stopped; {kept}")]
    NonFinite { epoch: usize, step: usize, value: f32, kept: String },
}

pub type Result<T> = std::result::Result<T, Error>;
