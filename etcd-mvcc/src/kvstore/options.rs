//! What a [`Store`](super::Store) is opened with, and the auxiliary buckets
//! upper layers keep beside the keys.

use std::time::Duration;

use crate::backend::Cf;

/// Default [`StoreOptions::range_chunk_size`]: key-values fetched and handed
/// over per chunk of a range.
pub const RANGE_CHUNK_SIZE: usize = 1000;

/// Options of [`Store::open`].
///
/// `Default` gives etcd's defaults: batches of 1000 revisions, 10 ms pause
/// between compaction batches; ranges read in chunks of
/// [`RANGE_CHUNK_SIZE`] keys.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Maximum number of revisions (or keys, for the in-memory index) handled
    /// per compaction batch. 0 is treated as 1.
    pub compaction_batch_limit: usize,
    /// Pause between two physical compaction batches, so that compaction
    /// never competes with writers for long.
    pub compaction_sleep_interval: Duration,
    /// Maximum number of key-values a range fetches and hands over at once
    /// (see [`TxnRead::range_chunks`]). 0 is treated as 1.
    pub range_chunk_size: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            compaction_batch_limit: 1000,
            compaction_sleep_interval: Duration::from_millis(10),
            range_chunk_size: RANGE_CHUNK_SIZE,
        }
    }
}

/// Auxiliary column families owned by upper layers; their changes are
/// written in the same backend batch as the key changes of a [`TxnWrite`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Leases (`lease` column family).
    Lease,
    /// Users, roles, auth settings (`auth` column family).
    Auth,
    /// Cluster members (`members` column family).
    Members,
    /// Alarms (`alarm` column family).
    Alarm,
}

impl Bucket {
    pub(super) fn cf(self) -> Cf {
        match self {
            Bucket::Lease => Cf::Lease,
            Bucket::Auth => Cf::Auth,
            Bucket::Members => Cf::Members,
            Bucket::Alarm => Cf::Alarm,
        }
    }
}
