//! Errors of the bbolt reader and writer.

/// What went wrong reading or writing a bbolt file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read or written.
    #[error("bbolt file I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Neither meta page is valid (wrong magic, version or checksum): not a
    /// bbolt file, or both metas are damaged.
    #[error("not a valid bbolt file: {0}")]
    InvalidMeta(String),
    /// A page or element is inconsistent (out of the file, wrong type,
    /// reached twice, keys out of order...): the file is corrupt.
    #[error("corrupt bbolt file: {0}")]
    Corrupt(String),
    /// The writer was used against its contract (keys or bucket names not
    /// ascending, a key too large).
    #[error("bbolt writer: {0}")]
    Usage(String),
}

/// Result of this crate's operations.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn corrupt(msg: impl Into<String>) -> Error {
    Error::Corrupt(msg.into())
}
