use std::path::PathBuf;

/// What can go wrong opening or reading a slide. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum WsiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a readable TIFF: {reason}")]
    NotTiff { path: PathBuf, reason: String },
    #[error("{path}: unsupported: {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadRequest { path: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, WsiError>;
