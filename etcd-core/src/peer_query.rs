//! Questions a member asks other members over the peer port (etcd asks
//! them over HTTP: `/members`, `/members/promote`).

use crate::config::Config;
use crate::error::StartError;
use crate::membership::Member;
use crate::pb::etcdserverpb::MemberPromoteResponse;
use crate::server::Etcd;
use crate::{Error, Result};

/// Asks the members of `initial` (from --initial-cluster) for the
/// cluster's id and members.
pub(crate) fn fetch_cluster(
    _cfg: &Config,
    _initial: &[Member],
) -> Result<(u64, Vec<Member>), StartError> {
    Err(StartError::Config(
        "--initial-cluster-state=existing: joining is not wired yet".into(),
    ))
}

/// Forwards MemberPromote to the leader.
pub(crate) async fn forward_promote(_etcd: &Etcd, _id: u64) -> Result<MemberPromoteResponse> {
    Err(Error::NotLeader)
}
