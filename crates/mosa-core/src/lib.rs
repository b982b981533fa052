//! mosa-core: the building blocks of parameter-efficient tuning that know no concrete backbone:
//! masks, the expert scheduler, PEFT modules and merging.
//!
//! - [`method`]: the method config, the [`method::PeftHost`] trait and [`method::apply`];
//! - [`slot`]: what a backbone's hook points hold (adapter slots, linear-layer branches);
//! - [`adapter`], [`mosa`], [`lora`], [`prompt`], [`sparse`]: one file per method family;
//! - [`mask`]: partitions and exact top-k; [`rng`]: the seeded generator behind every draw;
//! - [`params`]: parameters by name, trainable sets.

pub mod adapter;
pub mod lora;
pub mod mask;
pub mod method;
pub mod mosa;
pub mod optim;
pub mod params;
pub mod prompt;
pub mod rng;
pub mod slot;
pub mod sparse;

pub use method::{MethodConfig, MethodKind, PeftHost};
pub use rng::Rng;
