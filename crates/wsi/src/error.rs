use std::path::PathBuf;

/// What can go wrong opening or reading a slide. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum WsiError {
    /// The cause is in the message, not the source chain (as for `Chunk`), so that a chain
    /// printed whole says it once.
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: not a readable TIFF: {reason}")]
    NotTiff { path: PathBuf, reason: String },
    #[error("{path}: unsupported: {what}")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    /// The fault is in the message and in `fault`, not in the error's source chain, so that a
    /// chain printed whole (anyhow's `{:#}`) says it once.
    #[error("{path}: damaged: level {level}, chunk {index}: {fault}")]
    Chunk {
        path: PathBuf,
        level: usize,
        index: u64,
        fault: DecodeError,
    },
    #[error("{path}: {reason}")]
    BadRequest { path: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, WsiError>;

/// Why a tile or strip's bytes do not decode (the decoder's own error in the message).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("deflate: {0}")]
    Deflate(std::io::Error),
    #[error("lzw: {0}")]
    Lzw(std::io::Error),
    #[error("zstd: {0}")]
    Zstd(std::io::Error),
    #[error("jpeg: {0}")]
    Jpeg(zune_jpeg::errors::DecodeErrors),
    #[error("jpeg 2000: {0}")]
    Jpeg2000(hayro_jpeg2000::DecodeError),
    #[error("jpeg 2000: colour space {0} (grey or RGB are read)")]
    Jpeg2000Colour(String),
    #[error("jpeg 2000: {0} components (1 to 4 are read)")]
    Jpeg2000Components(u16),
    #[error("jpeg 2000: neither a codestream nor a JP2 file holding one")]
    NotJpeg2000,
    /// The decoder panicked (caught: a decoder bug must not take the process down).
    #[error("{codec}: the decoder failed on this tile")]
    Panicked { codec: &'static str },
    #[error(
        "decompressed to {found} bytes, {width}x{rows} pixels of {samples} samples need {expected}"
    )]
    Short {
        found: usize,
        expected: usize,
        width: usize,
        rows: usize,
        samples: usize,
    },
    #[error("the tile decodes to {found_width}x{found_height}, the directory says {width}x{rows}")]
    Size {
        found_width: usize,
        found_height: usize,
        width: usize,
        rows: usize,
    },
}
