//! The server's errors. Each says what was wrong in one line; over HTTP each has its status.

/// What went wrong, and so which HTTP status answers it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or option given at start or to the repository API (start: exit ≠ 0; HTTP 400).
    #[error("{0}")]
    Input(String),
    /// A malformed request: a tensor, an image, a parameter (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such task (404).
    #[error("{0}")]
    NotFound(String),
    /// The repository API without the right token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The queue is full (429).
    #[error("{0}")]
    Busy(String),
    /// The request waited longer than the per-request timeout (504).
    #[error("{0}")]
    Timeout(String),
    /// The server is shutting down or the worker failed (503).
    #[error("{0}")]
    Unavailable(String),
    /// A body over the size limit (413).
    #[error("{0}")]
    TooLarge(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The HTTP status that answers it.
    pub fn status(&self) -> u16 {
        match self {
            Error::Input(_) | Error::BadRequest(_) => 400,
            Error::Unauthorized(_) => 401,
            Error::NotFound(_) => 404,
            Error::TooLarge(_) => 413,
            Error::Busy(_) => 429,
            Error::Unavailable(_) => 503,
            Error::Timeout(_) => 504,
        }
    }
}
