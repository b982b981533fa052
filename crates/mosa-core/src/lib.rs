//! mosa-core: the building blocks of parameter-efficient tuning that know no concrete backbone.
//!
//! ```
//! use mosa_core::expert::Delta;
//! use mosa_core::merge::{MergeConfig, MergeMethod, merge_tensor};
//!
//! // two sparse task experts of one 2×3 weight, as indices + values
//! let a = Delta::Sparse { indices: vec![0, 2], values: vec![0.5, 1.0] };
//! let b = Delta::Sparse { indices: vec![2, 5], values: vec![3.0, -1.0] };
//! // overlap-mean in index space: an entry kept by both experts gets the mean of their values
//! let mut w = vec![1.0_f32; 6];
//! merge_tensor(&mut w, &[(0, &a), (1, &b)], &MergeConfig::new(MergeMethod::OverlapMean), 2.0, 0);
//! assert_eq!(w, [1.5, 1.0, 3.0, 1.0, 1.0, 0.0]);
//! ```
//!
//! - [`site`]: the typed hook points a backbone declares ([`PeftHost`], [`site::TunableLinear`]);
//! - [`method`]: the tagged [`Method`] enum with each method's options; [`inject`]: apply a
//!   method to any host, merge, mask gradients, sparse masks, parameter groups;
//! - [`places`]: where each method puts what it trains, the one classification of methods;
//! - [`slot`]: what a site holds (adapter slots, linear branches);
//! - [`adapter`], [`mosa`], [`pruned`], [`lora`], [`prompt`], [`sparse`]: one file per method family;
//! - [`layer_norm`]: the LayerNorm module every backbone and adapter uses (through mosa-kernels'
//!   backend-extension trait [`Kernels`], re-exported here with [`AutodiffKernels`]);
//! - [`mask`]: partitions and exact top-k; [`rng`]: the seeded generator behind every draw;
//! - [`params`]: parameters by path (one path stack), values in and out;
//! - [`expert`]: the task-expert file (sparse / LoRA / full); [`merge`]: merging experts in
//!   index space, and hot-swap; [`peft`]: experts as HF PEFT LoRA / SHiRA adapter folders, and back;
//! - [`host`]: the one host tensor type; [`fsio`]: the one atomic-write helper;
//! - [`error`]: the typed [`Error`] every fallible function here returns.

pub mod adapter;
pub mod draws;
pub mod error;
pub mod expert;
pub mod fsio;
pub mod host;
pub mod inject;
pub mod layer_norm;
pub mod lora;
pub mod mask;
pub mod merge;
pub mod method;
pub mod mosa;
pub mod params;
pub mod peft;
pub mod places;
pub mod prompt;
pub mod pruned;
pub mod rng;
pub mod site;
pub mod slot;
pub mod sparse;

pub use draws::Draws;
pub use error::{Error, Result};
pub use host::HostTensor;
pub use method::{Method, MethodKind, Passes};
pub use mosa_kernels::{AutodiffKernels, Kernels};
pub use places::Places;
pub use rng::Rng;
pub use site::PeftHost;
