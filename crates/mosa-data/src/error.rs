//! Errors of the data layer. Every variant names the file (and the line of a list file where
//! there is one), so that a user with 100k images can find the one that is wrong.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {msg}")]
    Line { path: PathBuf, line: usize, msg: String },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{}cannot decode image {path}: {msg}", at.as_ref().map(|(l, n)| format!("{}:{}: ", l.display(), n)).unwrap_or_default())]
    Image { path: PathBuf, at: Option<(PathBuf, usize)>, msg: String },
    #[error("unknown task `{name}`; known: {known}")]
    UnknownTask { name: String, known: String },
    #[error("{0}")]
    Spec(String),
}

impl DataError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
    pub fn line(path: impl Into<PathBuf>, line: usize, msg: impl Into<String>) -> Self {
        Self::Line { path: path.into(), line, msg: msg.into() }
    }
    pub fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::File { path: path.into(), msg: msg.into() }
    }
    /// A refused bounded read ([`mosa_core::fsio::read_bounded`]).
    pub fn read(path: impl Into<PathBuf>, e: mosa_core::fsio::ReadError) -> Self {
        match e {
            mosa_core::fsio::ReadError::Io(source) => Self::Io { path: path.into(), source },
            other => Self::File { path: path.into(), msg: other.to_string() },
        }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;
