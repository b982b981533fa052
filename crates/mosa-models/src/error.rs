//! Errors of model construction and checkpoint loading. Every variant names the file and,
//! where one is involved, the tensor.

use std::path::PathBuf;

/// Errors raised while building a model or loading weights into it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file could be read but is not what its extension promises.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// The checkpoint does not fit the model: every missing, unexpected or mis-shaped tensor is listed.
    #[error("{path}: checkpoint does not fit the model: {}", problems.join("; "))]
    Mismatch { path: PathBuf, problems: Vec<String> },
    /// A model configuration is invalid or unknown.
    #[error("{0}")]
    Config(String),
    /// A size beyond what mosa supports (side, width, tokens, parameters, memory).
    #[error("{0}")]
    Limit(String),
    /// mosa-core refused (a method that does not fit, a write that failed): its message as is.
    #[error(transparent)]
    Core(#[from] mosa_core::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
    /// A refused bounded read ([`mosa_core::fsio::read_bounded`]).
    pub(crate) fn read(path: impl Into<PathBuf>, e: mosa_core::fsio::ReadError) -> Self {
        match e {
            mosa_core::fsio::ReadError::Io(source) => Self::Io { path: path.into(), source },
            other => Self::Format { path: path.into(), msg: other.to_string() },
        }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::Format { path: path.into(), msg: msg.into() }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
