//! mosa-core: the building blocks of parameter-efficient tuning that know no concrete backbone:
//! masks, the expert scheduler, PEFT modules and merging.

pub mod mask;
pub mod rng;

pub use rng::Rng;
