//! Failpoints: named points where a test makes the process crash or an
//! operation fail (the `fail` crate), to check that a restart loses no
//! acknowledged write and finds a consistent state.
//!
//! Compiled in only with the `failpoints` feature (the server binary the
//! integration tests run; never a product build), where [`from_env`]
//! reads `$FAILPOINTS` (`name=action;...`, e.g.
//! `wal::sync::before=20*off->panic`: the 21st WAL fsync panics, which
//! the server's fail-stop hook turns into an exit with status 1).
//!
//! | name                      | where                                                      |
//! |---------------------------|------------------------------------------------------------|
//! | `wal::sync::before`       | etcd-wal, before each fsync of a WAL segment; `return` fails the fsync (EIO) |
//! | `apply::entry::after_store` | after an entry's effects are committed to the store, before its waiter is answered |
//! | `snapshot::install::mid`  | etcd-mvcc, restoring a snapshot image: the marker written, part of the data in |
//! | `compact::mid`            | etcd-mvcc, a compaction after its first physical batch     |
//! | `defrag::mid`             | etcd-mvcc, a defragmentation between two column families   |

/// With the `failpoints` feature, configures the failpoints named in
/// `$FAILPOINTS` for the life of the process; without it, does nothing.
pub fn from_env() {
    #[cfg(feature = "failpoints")]
    {
        // The scenario lives as long as the process.
        std::mem::forget(fail::FailScenario::setup());
        if let Ok(fp) = std::env::var("FAILPOINTS") {
            tracing::warn!("failpoints configured: {fp}");
        }
    }
}
