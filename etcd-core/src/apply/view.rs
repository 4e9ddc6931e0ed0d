//! The transaction a request is applied or read in ([`View`]: a read or
//! a write transaction of the store, the compaction revision it started at,
//! the lessor puts are checked against), and what applying a raft entry
//! produced for its waiter ([`Applied`]).

use crate::lessor::Lessor;
use crate::pb::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, LeaseGrantResponse, LeaseRevokeResponse, PutResponse,
    TxnResponse,
};
use crate::pb::mvccpb::KeyValue;
use crate::Result;
use etcd_mvcc::{
    CompactWait, KeyRevisions, RangeHeader, RangeOptions, RangeResult, Store, TxnRead, TxnWrite,
};
use std::ops::ControlFlow;

/// What applying one raft entry produced for its waiter.
pub(crate) enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse, CompactWait),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    /// Nobody waits for a checkpoint.
    LeaseCheckpoint,
    /// An auth change (its response has only a header).
    Auth,
    /// Authenticate: the token.
    AuthToken(String),
    /// An Alarm request's response.
    Alarm(crate::pb::etcdserverpb::AlarmResponse),
    /// A membership change: the member added (MemberAdd) and the members
    /// after the change.
    Members(
        Option<crate::membership::Member>,
        Vec<crate::membership::Member>,
    ),
}

/// A read or write transaction over the store.
pub(crate) struct View<'a> {
    txn: Txn<'a>,
    /// The store's compaction revision when the view was opened.
    pub(super) compact_rev: i64,
    /// The leases puts are checked against (none: every lease is unknown).
    pub(super) lessor: Option<&'a Lessor>,
}

enum Txn<'a> {
    Read(TxnRead<'a>),
    Write(TxnWrite<'a>),
}

impl<'a> View<'a> {
    /// A read-only view at the current revision.
    pub(crate) fn read(store: &'a Store) -> View<'a> {
        View {
            compact_rev: store.compact_revision(),
            txn: Txn::Read(store.read()),
            lessor: None,
        }
    }

    /// A write transaction (the only one at a time).
    pub(crate) fn write(store: &'a Store) -> View<'a> {
        View {
            compact_rev: store.compact_revision(),
            txn: Txn::Write(store.write()),
            lessor: None,
        }
    }

    /// The same view, checking leases against `lessor`.
    pub(crate) fn with_lessor(mut self, lessor: &'a Lessor) -> View<'a> {
        self.lessor = Some(lessor);
        self
    }

    pub(super) fn range(&self, key: &[u8], end: &[u8], opts: RangeOptions) -> Result<RangeResult> {
        Ok(match &self.txn {
            Txn::Read(t) => t.range(key, end, opts)?,
            Txn::Write(t) => t.range(key, end, opts)?,
        })
    }

    /// The key index's state of the live keys in a range (no values read).
    pub(super) fn key_revisions(&self, key: &[u8], end: &[u8]) -> Result<Vec<KeyRevisions>> {
        Ok(match &self.txn {
            Txn::Read(t) => t.key_revisions(key, end)?,
            Txn::Write(t) => t.key_revisions(key, end)?,
        })
    }

    /// The store's chunked range (see `range`).
    pub(super) fn range_chunks<F>(
        &self,
        key: &[u8],
        end: &[u8],
        opts: RangeOptions,
        f: F,
    ) -> Result<RangeHeader>
    where
        F: FnMut(Vec<KeyValue>) -> ControlFlow<()>,
    {
        Ok(match &self.txn {
            Txn::Read(t) => t.range_chunks(key, end, opts, f)?,
            Txn::Write(t) => t.range_chunks(key, end, opts, f)?,
        })
    }

    /// The revision reads see (the pending one once a write txn changed something).
    pub(crate) fn rev(&self) -> i64 {
        match &self.txn {
            Txn::Read(t) => t.rev(),
            Txn::Write(t) => t.rev(),
        }
    }

    pub(crate) fn write_txn(&mut self) -> &mut TxnWrite<'a> {
        match &mut self.txn {
            Txn::Write(t) => t,
            Txn::Read(_) => unreachable!("write op in a read-only txn"),
        }
    }

    /// Commits a write view at raft index `index`; returns its events.
    pub(super) fn end(self, index: u64) -> Result<Vec<etcd_mvcc::Event>> {
        match self.txn {
            Txn::Write(t) => Ok(t.end(index)?),
            Txn::Read(_) => unreachable!("only write views are committed"),
        }
    }
}
