//! Options of the KV calls: what a range, a put and a delete take besides
//! their key (etcd-client's `GetOptions`, `PutOptions`, `DeleteOptions`).

use crate::pb::etcdserverpb::{range_request, DeleteRangeRequest, PutRequest, RangeRequest};
use bytes::Bytes;

/// The end of the range of every key starting with `prefix` (clientv3's
/// `GetPrefixRangeEnd`): the prefix with its last byte below 0xff
/// incremented and what follows dropped; `"\0"` (every key) when the
/// prefix is empty or all 0xff.
///
/// ```
/// use etcd_core::client::prefix_end;
/// assert_eq!(&prefix_end(b"app/")[..], b"app0");
/// assert_eq!(&prefix_end(b"a\xff")[..], b"b");
/// assert_eq!(&prefix_end(b"")[..], b"\0");
/// ```
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(b"\0")
}

/// Which keys a call covers besides its key (etcd's `range_end`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum KeyRange {
    /// The key alone.
    #[default]
    Key,
    /// Every key starting with the key.
    Prefix,
    /// Every key from the key on.
    FromKey,
    /// `[key, end)`.
    End(Bytes),
}

impl KeyRange {
    /// etcd's `range_end` for `key`.
    pub(crate) fn range_end(&self, key: &[u8]) -> Bytes {
        match self {
            KeyRange::Key => Bytes::new(),
            KeyRange::Prefix => prefix_end(key),
            // "\0" with a key: every key >= key (with an empty key too:
            // etcd reads "\0".."\0" as every key).
            KeyRange::FromKey => Bytes::from_static(b"\0"),
            KeyRange::End(end) => end.clone(),
        }
    }
}

/// `with_prefix`, `with_from_key` and `with_range` for an options type
/// whose `range` field is a [`KeyRange`].
macro_rules! key_range_options {
    () => {
        /// Every key starting with the key.
        pub fn with_prefix(mut self) -> Self {
            self.range = KeyRange::Prefix;
            self
        }
        /// Every key from the key on.
        pub fn with_from_key(mut self) -> Self {
            self.range = KeyRange::FromKey;
            self
        }
        /// The keys in `[key, end)`.
        pub fn with_range(mut self, end: impl AsRef<[u8]>) -> Self {
            self.range = KeyRange::End(Bytes::copy_from_slice(end.as_ref()));
            self
        }
    };
}
pub(crate) use key_range_options;

/// Options of [`Client::get`](super::Client::get).
///
/// ```
/// use etcd_core::client::{GetOptions, SortOrder, SortTarget};
/// let opts = GetOptions::new().with_prefix().with_limit(10).with_sort(SortTarget::Key, SortOrder::Descend);
/// # let _ = opts;
/// ```
#[derive(Clone, Debug, Default)]
pub struct GetOptions {
    range: KeyRange,
    req: RangeRequest,
}

/// The order of a sorted range.
pub type SortOrder = range_request::SortOrder;
/// What a sorted range sorts by.
pub type SortTarget = range_request::SortTarget;

impl GetOptions {
    /// The key alone, latest revision, linearizable.
    pub fn new() -> GetOptions {
        GetOptions::default()
    }
    key_range_options!();
    /// At most `limit` keys (`more` says whether there were others).
    pub fn with_limit(mut self, limit: i64) -> Self {
        self.req.limit = limit;
        self
    }
    /// As of `revision` (0: the latest); `Compacted`/`FutureRevision`
    /// outside the store's history.
    pub fn with_revision(mut self, revision: i64) -> Self {
        self.req.revision = revision;
        self
    }
    /// Sorted by `target`, in `order`.
    pub fn with_sort(mut self, target: SortTarget, order: SortOrder) -> Self {
        self.req.sort_target = target as i32;
        self.req.sort_order = order as i32;
        self
    }
    /// From this member's store without a ReadIndex round: faster, but may
    /// be stale on a follower.
    pub fn with_serializable(mut self) -> Self {
        self.req.serializable = true;
        self
    }
    /// Keys without their values.
    pub fn with_keys_only(mut self) -> Self {
        self.req.keys_only = true;
        self
    }
    /// Only the number of keys.
    pub fn with_count_only(mut self) -> Self {
        self.req.count_only = true;
        self
    }
    /// Keys modified at or after `revision`.
    pub fn with_min_mod_revision(mut self, revision: i64) -> Self {
        self.req.min_mod_revision = revision;
        self
    }
    /// Keys modified at or before `revision`.
    pub fn with_max_mod_revision(mut self, revision: i64) -> Self {
        self.req.max_mod_revision = revision;
        self
    }
    /// Keys created at or after `revision`.
    pub fn with_min_create_revision(mut self, revision: i64) -> Self {
        self.req.min_create_revision = revision;
        self
    }
    /// Keys created at or before `revision`.
    pub fn with_max_create_revision(mut self, revision: i64) -> Self {
        self.req.max_create_revision = revision;
        self
    }

    /// The protobuf request for `key`.
    pub fn request(&self, key: &[u8]) -> RangeRequest {
        RangeRequest {
            key: Bytes::copy_from_slice(key),
            range_end: self.range.range_end(key),
            ..self.req.clone()
        }
    }
}

/// Options of [`Client::put`](super::Client::put).
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    req: PutRequest,
}

impl PutOptions {
    /// A plain put.
    pub fn new() -> PutOptions {
        PutOptions::default()
    }
    /// Attaches the key to `lease`: it is deleted when the lease ends.
    pub fn with_lease(mut self, lease: i64) -> Self {
        self.req.lease = lease;
        self
    }
    /// Returns the key's previous version in `prev_kv`.
    pub fn with_prev_key(mut self) -> Self {
        self.req.prev_kv = true;
        self
    }
    /// Keeps the current value (the value given must be empty); the key
    /// must exist.
    pub fn with_ignore_value(mut self) -> Self {
        self.req.ignore_value = true;
        self
    }
    /// Keeps the current lease (no lease may be given); the key must exist.
    pub fn with_ignore_lease(mut self) -> Self {
        self.req.ignore_lease = true;
        self
    }

    /// The protobuf request for `key` = `value`.
    pub fn request(&self, key: &[u8], value: &[u8]) -> PutRequest {
        PutRequest {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
            ..self.req.clone()
        }
    }
}

/// Options of [`Client::delete`](super::Client::delete).
#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    range: KeyRange,
    prev_kv: bool,
}

impl DeleteOptions {
    /// The key alone.
    pub fn new() -> DeleteOptions {
        DeleteOptions::default()
    }
    key_range_options!();
    /// Returns the deleted keys in `prev_kvs`.
    pub fn with_prev_key(mut self) -> Self {
        self.prev_kv = true;
        self
    }

    /// The protobuf request for `key`.
    pub fn request(&self, key: &[u8]) -> DeleteRangeRequest {
        DeleteRangeRequest {
            key: Bytes::copy_from_slice(key),
            range_end: self.range.range_end(key),
            prev_kv: self.prev_kv,
        }
    }
}
