//! The one error type of the crate.
//!
//! Every variant says what the caller must do about it:
//! - [`Error::Io`]: an operating-system error outside the write path (open,
//!   purge, snapshot files). Retrying may help; the WAL is not poisoned.
//! - [`Error::Corruption`]: the on-disk log is damaged before its tail (or,
//!   under [`RecoveryMode::AbsoluteConsistency`](crate::RecoveryMode), at its
//!   tail). Never repaired automatically: restore the member from a peer.
//! - [`Error::Poisoned`]: an earlier write or fdatasync failed. The kernel may
//!   have dropped dirty pages, so nothing written since the last good sync
//!   can be trusted; the process must reopen the WAL (restart).
//! - [`Error::Closed`]: the writer thread is gone (the WAL was closed).
//! - [`Error::AlreadyExists`] / [`Error::NotFound`]: call `open` instead of
//!   `create`, or the other way round.
//! - [`Error::InvalidOptions`] / [`Error::InvalidBatch`]: a caller bug.
//! - [`Error::Locked`]: another handle (in this or another process) has the
//!   directory open.

use std::path::PathBuf;

/// Errors returned by the WAL and the [`Snapshotter`](crate::Snapshotter).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error. For the batch whose write or fdatasync failed, this is
    /// the original error; every later call then returns [`Error::Poisoned`].
    #[error("wal i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The file is damaged at `offset`; the WAL refuses to open.
    #[error("wal corruption in {}: offset {offset}: {reason}", file.display())]
    Corruption {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the first bad record in `file`.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A write or fdatasync failed earlier: the WAL accepts no more calls.
    /// Restart the process and reopen the WAL (it repairs the tail).
    #[error("wal is poisoned by an earlier write or fsync failure: reopen it")]
    Poisoned,
    /// The WAL was closed (or its writer thread stopped).
    #[error("wal is closed")]
    Closed,
    /// `create` found a WAL in the directory: use `open`.
    #[error("a wal already exists in {}", .0.display())]
    AlreadyExists(PathBuf),
    /// `open` (or a snapshot load) found nothing: use `create`.
    #[error("not found: {}", .0.display())]
    NotFound(PathBuf),
    /// The options are unusable (a caller bug).
    #[error("invalid wal options: {0}")]
    InvalidOptions(String),
    /// The batch would make the log unreplayable (e.g. an index gap) or is
    /// too large. Nothing was queued; the WAL is not poisoned.
    #[error("invalid write batch: {0}")]
    InvalidBatch(String),
    /// Another handle holds the directory lock.
    #[error("wal directory {} is locked by another handle", .0.display())]
    Locked(PathBuf),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn corruption(
        file: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Error {
        Error::Corruption {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// A copy of this error for a second waiter (io errors are not `Clone`).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), e.to_string())),
            Error::Corruption {
                file,
                offset,
                reason,
            } => Error::Corruption {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            Error::Poisoned => Error::Poisoned,
            Error::Closed => Error::Closed,
            Error::AlreadyExists(p) => Error::AlreadyExists(p.clone()),
            Error::NotFound(p) => Error::NotFound(p.clone()),
            Error::InvalidOptions(s) => Error::InvalidOptions(s.clone()),
            Error::InvalidBatch(s) => Error::InvalidBatch(s.clone()),
            Error::Locked(p) => Error::Locked(p.clone()),
        }
    }
}
