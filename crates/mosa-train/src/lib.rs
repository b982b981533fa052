//! mosa-train: fine-tuning runs, generic over the backend.
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use mosa_core::{Method, MethodKind};
//! use mosa_models::{BackboneConfig, VitConfig};
//! use mosa_train::{Control, Outcome, RunSpec, TrainConfig, progress::Silent};
//!
//! // LoRA on a tiny ViT (random initialisation) for one epoch on an image folder
//! let vit = VitConfig::new().with_embed_dim(48).with_depth(2).with_num_heads(3).with_patch_size(8).with_img_size(32);
//! let spec = RunSpec {
//!     model_name: "tiny".into(),
//!     model: BackboneConfig::Vit(vit),
//!     weights: None,
//!     method: Method::new(MethodKind::Lora),
//!     dataset: format!("folder:{}/../../examples/data/colors", env!("CARGO_MANIFEST_DIR")),
//!     train: TrainConfig { epochs: 1, warmup_epochs: 0, batch_size: 8, resolution: 32, ..Default::default() },
//!     skip_unreadable: false,
//! };
//! let out = tempfile::tempdir().unwrap();
//! let Outcome::Finished(summary) = mosa_train::run::<Autodiff<Flex>>(&spec, out.path(), false, Control::default(), &Default::default(), &mut Silent)? else { unreachable!() };
//! assert_eq!(summary.epochs, 1);
//! // the run folder: config, metrics, summary, the merged model, and (LoRA) its task expert
//! assert!(out.path().join("expert.safetensors").exists());
//! # Ok::<(), mosa_train::Error>(())
//! ```
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
pub mod probe;
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
