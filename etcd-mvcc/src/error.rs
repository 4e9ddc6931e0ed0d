//! Errors of the MVCC store.
//!
//! One enum; every variant says what the caller must do:
//! - [`Error::Compacted`] / [`Error::FutureRevision`]: the request is invalid
//!   for the current state; report it to the client (etcd's exact messages).
//! - [`Error::Corruption`]: on-disk data violates an invariant; stop the member.
//! - [`Error::Storage`]: the backend failed (I/O); the state machine cannot
//!   continue safely, stop applying.
//! - [`Error::UnsupportedFormat`]: the data was written by a newer version.

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors returned by the MVCC store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The requested revision is older than the compaction revision.
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is newer than the current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision,
    /// Stored data is inconsistent (undecodable value, bad key length, ...).
    #[error("mvcc: data corruption: {0}")]
    Corruption(String),
    /// The storage backend failed (RocksDB I/O error; an injected crash of
    /// the in-memory backend).
    #[error("mvcc: storage error: {0}")]
    Storage(String),
    /// The database was written by a newer, unknown on-disk format.
    #[error(
        "mvcc: unsupported on-disk format version {found} (this build supports up to {supported}); \
         refusing to open a database written by a newer version"
    )]
    UnsupportedFormat {
        /// Version found in the `meta` column family.
        found: u64,
        /// Highest version this build understands.
        supported: u64,
    },
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Storage(e.to_string())
    }
}
