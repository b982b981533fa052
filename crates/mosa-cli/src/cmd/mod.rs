//! One module per `mosa` command.

pub mod bench;
pub mod data;
pub mod forward;
pub mod info;
pub mod inspect;
pub mod train;
pub mod weights;
