//! Transactions: `if every compare holds { success ops } else { failure
//! ops }`, applied at one revision (etcd-client's `Txn`, `Compare`,
//! `TxnOp`).
//!
//! ```
//! use etcd_core::client::{Compare, CompareOp, Txn, TxnOp};
//! // Create "config" only if it does not exist yet, else read it.
//! let txn = Txn::new()
//!     .when([Compare::create_revision("config", CompareOp::Equal, 0)])
//!     .and_then([TxnOp::put("config", "v1", None)])
//!     .or_else([TxnOp::get("config", None)]);
//! # let _ = txn;
//! ```

use super::kv::{DeleteOptions, GetOptions, KeyRange, PutOptions};
use crate::pb::etcdserverpb::{
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op, response_op, Compare as PbCompare, DeleteRangeResponse, PutResponse, RangeResponse,
    RequestOp, TxnRequest, TxnResponse,
};
use bytes::Bytes;

/// How a compare relates the key's field to the given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `>`
    Greater,
    /// `<`
    Less,
}

impl From<CompareOp> for CompareResult {
    fn from(op: CompareOp) -> CompareResult {
        match op {
            CompareOp::Equal => CompareResult::Equal,
            CompareOp::NotEqual => CompareResult::NotEqual,
            CompareOp::Greater => CompareResult::Greater,
            CompareOp::Less => CompareResult::Less,
        }
    }
}

/// One condition of a [`Txn`]. A key that does not exist has version,
/// create and mod revision 0, no lease, and compares false on its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Compare(PbCompare);

impl Compare {
    fn new(key: impl AsRef<[u8]>, op: CompareOp, target: CompareTarget, v: TargetUnion) -> Self {
        Compare(PbCompare {
            result: CompareResult::from(op) as i32,
            target: target as i32,
            key: Bytes::copy_from_slice(key.as_ref()),
            range_end: Bytes::new(),
            target_union: Some(v),
        })
    }
    /// The key's value.
    pub fn value(key: impl AsRef<[u8]>, op: CompareOp, value: impl AsRef<[u8]>) -> Self {
        let v = TargetUnion::Value(Bytes::copy_from_slice(value.as_ref()));
        Compare::new(key, op, CompareTarget::Value, v)
    }
    /// The key's version (number of writes since it was created).
    pub fn version(key: impl AsRef<[u8]>, op: CompareOp, version: i64) -> Self {
        Compare::new(
            key,
            op,
            CompareTarget::Version,
            TargetUnion::Version(version),
        )
    }
    /// The revision that created the key (0: it does not exist).
    pub fn create_revision(key: impl AsRef<[u8]>, op: CompareOp, revision: i64) -> Self {
        let v = TargetUnion::CreateRevision(revision);
        Compare::new(key, op, CompareTarget::Create, v)
    }
    /// The revision of the key's last write.
    pub fn mod_revision(key: impl AsRef<[u8]>, op: CompareOp, revision: i64) -> Self {
        let v = TargetUnion::ModRevision(revision);
        Compare::new(key, op, CompareTarget::Mod, v)
    }
    /// The key's lease (0: none).
    pub fn lease(key: impl AsRef<[u8]>, op: CompareOp, lease: i64) -> Self {
        Compare::new(key, op, CompareTarget::Lease, TargetUnion::Lease(lease))
    }
    /// Compares every key starting with the key (each must hold).
    pub fn with_prefix(mut self) -> Self {
        self.0.range_end = KeyRange::Prefix.range_end(&self.0.key);
        self
    }
    /// Compares every key in `[key, end)` (each must hold).
    pub fn with_range(mut self, end: impl AsRef<[u8]>) -> Self {
        self.0.range_end = Bytes::copy_from_slice(end.as_ref());
        self
    }
    /// The protobuf compare.
    pub fn into_pb(self) -> PbCompare {
        self.0
    }
}

/// One operation of a [`Txn`] branch.
#[derive(Clone, Debug, PartialEq)]
pub struct TxnOp(RequestOp);

impl TxnOp {
    fn new(r: request_op::Request) -> Self {
        TxnOp(RequestOp { request: Some(r) })
    }
    /// A range, as [`Client::get`](super::Client::get).
    pub fn get(key: impl AsRef<[u8]>, opts: Option<GetOptions>) -> Self {
        let req = opts.unwrap_or_default().request(key.as_ref());
        TxnOp::new(request_op::Request::RequestRange(req))
    }
    /// A put, as [`Client::put`](super::Client::put).
    pub fn put(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, opts: Option<PutOptions>) -> Self {
        let req = opts
            .unwrap_or_default()
            .request(key.as_ref(), value.as_ref());
        TxnOp::new(request_op::Request::RequestPut(req))
    }
    /// A delete, as [`Client::delete`](super::Client::delete).
    pub fn delete(key: impl AsRef<[u8]>, opts: Option<DeleteOptions>) -> Self {
        let req = opts.unwrap_or_default().request(key.as_ref());
        TxnOp::new(request_op::Request::RequestDeleteRange(req))
    }
    /// A nested transaction (it may not write a key its parent writes).
    pub fn txn(txn: Txn) -> Self {
        TxnOp::new(request_op::Request::RequestTxn(txn.into_pb()))
    }
    /// The protobuf operation.
    pub fn into_pb(self) -> RequestOp {
        self.0
    }
}

/// A transaction, built as `when(compares).and_then(ops).or_else(ops)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Txn(TxnRequest);

impl Txn {
    /// No compare (always succeeds), no operation.
    pub fn new() -> Txn {
        Txn::default()
    }
    /// Adds compares; the transaction succeeds if all hold.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.0.compare.extend(compares.into_iter().map(|c| c.0));
        self
    }
    /// Adds operations run when every compare holds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.0.success.extend(ops.into_iter().map(|o| o.0));
        self
    }
    /// Adds operations run when a compare fails.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.0.failure.extend(ops.into_iter().map(|o| o.0));
        self
    }
    /// The protobuf request.
    pub fn into_pb(self) -> TxnRequest {
        self.0
    }
}

/// The response of one operation of a transaction's branch, as
/// [`TxnResponses::op_responses`] returns them.
#[derive(Clone, Debug, PartialEq)]
pub enum TxnOpResponse {
    /// Of [`TxnOp::get`].
    Get(RangeResponse),
    /// Of [`TxnOp::put`].
    Put(PutResponse),
    /// Of [`TxnOp::delete`].
    Delete(DeleteRangeResponse),
    /// Of [`TxnOp::txn`].
    Txn(TxnResponse),
}

/// Typed access to a [`TxnResponse`]'s operation responses.
pub trait TxnResponses {
    /// The responses of the branch that ran, in order.
    fn op_responses(&self) -> Vec<TxnOpResponse>;
}

impl TxnResponses for TxnResponse {
    fn op_responses(&self) -> Vec<TxnOpResponse> {
        self.responses
            .iter()
            .filter_map(|r| {
                Some(match r.response.clone()? {
                    response_op::Response::ResponseRange(r) => TxnOpResponse::Get(r),
                    response_op::Response::ResponsePut(r) => TxnOpResponse::Put(r),
                    response_op::Response::ResponseDeleteRange(r) => TxnOpResponse::Delete(r),
                    response_op::Response::ResponseTxn(r) => TxnOpResponse::Txn(r),
                })
            })
            .collect()
    }
}
