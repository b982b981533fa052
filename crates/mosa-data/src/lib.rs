//! mosa-data: the benchmark datasets and their preprocessing, backend-agnostic up to
//! [`batcher`].
//!
//! ```
//! use mosa_data::{Dataset, DatasetSpec, LoadOptions, LoadedSplit, Transform};
//!
//! // an image folder: `<folder>/{train,test}/<class>/*.png`, labels by sorted class name
//! let spec: DatasetSpec = format!("folder:{}/../../examples/data/shapes", env!("CARGO_MANIFEST_DIR")).parse()?;
//! let ds = Dataset::open(&spec)?;
//! assert_eq!(ds.class_names.as_deref(), Some(&["circle", "cross", "ring", "square", "triangle"].map(String::from)[..]));
//! // decoded and resized once (VTAB's preprocessing at 32 px), batched from memory
//! let (test, report) = LoadedSplit::load(ds.test.as_ref().unwrap(), ds.num_classes, Transform::new(ds.style, 32, false), &LoadOptions::default())?;
//! assert_eq!((test.len(), report.images), (20, 20));
//! # Ok::<(), mosa_data::DataError>(())
//! ```
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
