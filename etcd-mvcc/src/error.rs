//! Errors of the MVCC store.
//!
//! One enum; every variant says what the caller must do:
//! - [`Error::Compacted`] / [`Error::FutureRevision`]: the request is invalid
//!   for the current state; report it to the client (etcd's exact messages).
//! - [`Error::Corruption`]: on-disk data violates an invariant; stop the member.
//! - [`Error::Storage`]: the backend failed (I/O); the state machine cannot
//!   continue safely, stop applying.
//! - [`Error::UnsupportedFormat`]: the data was written by a newer version.
//! - [`Error::InvalidImage`]: a snapshot image is truncated, corrupted or
//!   inconsistent; it was refused before anything was applied (fetch it again).
//! - [`Error::RestoreIncomplete`]: a restore from a snapshot image was
//!   interrupted (crash, I/O error); the store holds a partial state and
//!   refuses to open or serve: restore it again from the retained image
//!   (`Store::open_to_restore`, then `Store::restore`).

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
    /// A snapshot image was refused (truncated, corrupted, inconsistent);
    /// nothing of it was applied.
    #[error("mvcc: invalid snapshot image: {0}")]
    InvalidImage(String),
    /// A restore from a snapshot image did not finish: the store's contents
    /// are partial. Restore again from the image.
    #[error(
        "mvcc: an interrupted restore from a snapshot image left the store incomplete; \
         restore it again from the image"
    )]
    RestoreIncomplete,
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Storage(e.to_string())
    }
}
