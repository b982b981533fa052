//! mosa-data: the benchmark datasets and their preprocessing, backend-agnostic up to
//! [`batcher`].
//!
//! - [`registry`]: the VTAB-1k, mini-VTAB and FGVC task tables;
//! - [`source`]: dataset specs (`vtab:`, `fgvc:`, `folder:`, `list:`) and opened datasets;
//! - [`list`]: list files and FGVC JSON splits; [`image`]: decoding; [`resize`]: PIL-style bilinear;
//! - [`transform`]: the spec's preprocessing; [`loader`]: parallel decode + cache + batches;
//! - [`check`]: `mosa data check`; [`synth`]: our seeded shapes generator; [`manifest`]: mini-VTAB's MANIFEST.

pub mod batcher;
pub mod check;
pub mod error;
pub mod image;
pub mod list;
pub mod loader;
pub mod manifest;
pub mod registry;
pub mod resize;
pub mod source;
pub mod synth;
pub mod transform;

pub use error::{DataError, Result};
pub use loader::{LoadOptions, LoadReport, LoadedSplit};
pub use registry::{Group, TaskInfo};
pub use source::{Dataset, DatasetSpec, Style};
pub use transform::{Prepared, Transform, VtabResize};
