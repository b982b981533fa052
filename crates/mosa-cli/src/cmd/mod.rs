//! One module per `mosa` command.

pub mod bench;
#[cfg(feature = "flex")]
pub mod bench_gemm;
pub mod bench_merge;
pub mod bench_peak;
pub mod bench_switch;
pub mod data;
pub mod expert;
pub mod forward;
pub mod info;
pub mod inspect;
pub mod merge;
pub mod serve;
pub mod train;
pub mod weights;
