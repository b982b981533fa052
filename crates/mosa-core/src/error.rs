//! mosa-core's errors, typed by what went wrong; each message names the file, tensor, option or
//! target at fault.

use std::path::PathBuf;

/// What a mosa-core operation refused or failed at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file (or its folder) could not be written, or read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A write would replace something that is not a regular file (a folder, a device, a FIFO).
    #[error("{}: a {kind} is there; only a regular file is ever replaced", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    /// A file that could not be read whole ([`crate::fsio::read_bounded`]) or is malformed: the
    /// file named, then what is wrong with it.
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
    /// A refused bounded read (not a regular file, too large, not text).
    #[error(transparent)]
    Read(#[from] crate::fsio::ReadError),
    /// A name that is not one of mosa's methods.
    #[error("unknown method `{name}`; methods: {known}")]
    UnknownMethod { name: String, known: String },
    /// A method's or a merge's option out of its range.
    #[error("{0}")]
    Option(String),
    /// A method that does not fit the backbone: an unknown or repeated target, a site or token
    /// sequence the family lacks, a layer that cannot be split into the parts asked for.
    #[error("{0}")]
    Target(String),
    /// A malformed expert (its format, a tensor, its head), the tensor named.
    #[error("{0}")]
    Expert(String),
    /// Experts that do not fit the base weights or each other (task, tensor, shape).
    #[error("{0}")]
    Mismatch(String),
    /// A sparse mask selection that cannot rank a tensor's entries (non-finite or all-zero
    /// scores), the tensor named.
    #[error("{0}")]
    Selection(String),
    /// Values (parameters by path, sparse masks) that do not fit the module: every one listed.
    #[error("{}", .0.join("; "))]
    Values(Vec<String>),
}

impl Error {
    /// `source` about the file at `path`.
    pub fn in_file(path: impl Into<PathBuf>, source: impl Into<Error>) -> Self {
        Self::File { path: path.into(), source: Box::new(source.into()) }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
