//! The cluster's membership as the state machine knows it (etcd's
//! `membership.RaftCluster`).
//!
//! Members change only by applying committed raft entries, so every member
//! holds the same membership at the same applied index:
//!
//! - adding a voter or a learner, promoting a learner and removing a member
//!   are raft configuration changes (`ConfChange` entries whose context is a
//!   [`ConfChangeContext`]); applying one updates raft's configuration
//!   (through the raft thread) and this membership;
//! - a member's peer URLs (`MemberUpdate`) and its name and client URLs
//!   (published by the member itself once it runs, like etcd's `publish`)
//!   are normal entries.
//!
//! A change is validated again when it is applied (a concurrent change may
//! have made it invalid since it was proposed); an invalid one changes
//! nothing, not even raft's configuration, and its waiter gets the error.
//!
//! Persisted in the store's `members` bucket, in the same write as the
//! consistent index of the entry that changed it:
//!
//! ```text
//! "m" | id: u64 BE     ->  Member (protobuf, membership.rs)
//! "r" | id: u64 BE     ->  empty: the id was removed and may never come back
//! "x" | index: u64 BE  ->  empty: the configuration change entry at this
//!                          raft index was refused (see `record_refused`)
//! ```
//!
//! Worked example: a 3-member cluster {a, b, c}; an operator removes c and
//! adds d as a learner. After the two entries apply, every member holds
//! `m|a, m|b, m|d(learner), r|c`; raft's configuration is voters {a, b},
//! learners {d}; messages from c are dropped; c's id cannot be added again.

use crate::membership::Member;
use crate::wait::Waiter;
use crate::{Error, Result};
use etcd_mvcc::{Bucket, Store, TxnWrite};
use etcd_raft_node::eraftpb::{ConfChange, ConfChangeType, ConfState};
use prost::Message as _;
use protobuf::Message as _;
use std::collections::{BTreeMap, BTreeSet};

pub(crate) const MEMBER_PREFIX: u8 = b'm';
pub(crate) const REMOVED_PREFIX: u8 = b'r';
const REFUSED_PREFIX: u8 = b'x';

/// Most learners a cluster may have (etcd's default `--max-learners`).
pub(crate) const MAX_LEARNERS: usize = 1;

/// The context of a configuration change entry (protobuf).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ConfChangeContext {
    /// Id of the waiting request; 0 when nobody waits.
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    /// The process that waits for it (see `wait.rs`).
    #[prost(fixed64, tag = "4")]
    pub origin: u64,
    /// The member added or promoted (for a removal: its id only).
    #[prost(message, optional, tag = "2")]
    pub member: Option<Member>,
    /// Whether an AddNode promotes an existing learner.
    #[prost(bool, tag = "3")]
    pub promote: bool,
}

/// A membership change, before or after it went through raft.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// A new voter or learner.
    Add(Member),
    /// A learner becomes a voter.
    Promote(u64),
    /// A member leaves for good.
    Remove(u64),
    /// New peer URLs of a member (a normal entry).
    UpdatePeerUrls(u64, Vec<String>),
    /// A member's own name and client URLs (a normal entry).
    Publish {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
}

impl Change {
    /// The raft configuration change for a change that is one.
    pub(crate) fn to_conf_change(&self, waiter: Waiter) -> Option<ConfChange> {
        let (kind, id, ctx) = match self {
            Change::Add(m) => (
                if m.is_learner {
                    ConfChangeType::AddLearnerNode
                } else {
                    ConfChangeType::AddNode
                },
                m.id,
                ConfChangeContext {
                    request_id: waiter.id,
                    origin: waiter.origin,
                    member: Some(m.clone()),
                    promote: false,
                },
            ),
            Change::Promote(id) => (
                ConfChangeType::AddNode,
                *id,
                ConfChangeContext {
                    request_id: waiter.id,
                    origin: waiter.origin,
                    member: None,
                    promote: true,
                },
            ),
            Change::Remove(id) => (
                ConfChangeType::RemoveNode,
                *id,
                ConfChangeContext {
                    request_id: waiter.id,
                    origin: waiter.origin,
                    member: None,
                    promote: false,
                },
            ),
            Change::UpdatePeerUrls(..) | Change::Publish { .. } => return None,
        };
        let mut cc = ConfChange::default();
        cc.set_change_type(kind);
        cc.node_id = id;
        cc.context = ctx.encode_to_vec().into();
        Some(cc)
    }
}

/// Decodes a committed configuration change entry into the raft change,
/// the waiting request id and the membership change.
pub(crate) fn decode_conf_change(data: &[u8]) -> Result<(ConfChange, Waiter, Change), String> {
    let cc = ConfChange::parse_from_bytes(data).map_err(|e| e.to_string())?;
    let ctx = ConfChangeContext::decode(&cc.context[..]).map_err(|e| e.to_string())?;
    let change = match cc.get_change_type() {
        ConfChangeType::AddNode if ctx.promote => Change::Promote(cc.node_id),
        ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
            let mut m = ctx.member.ok_or("a member addition without the member")?;
            m.id = cc.node_id;
            m.is_learner = cc.get_change_type() == ConfChangeType::AddLearnerNode;
            Change::Add(m)
        }
        ConfChangeType::RemoveNode => Change::Remove(cc.node_id),
    };
    let waiter = Waiter {
        origin: ctx.origin,
        id: ctx.request_id,
    };
    Ok((cc, waiter, change))
}

/// Records, in the same write as its consistent index, that the
/// configuration change entry at `index` was refused. A member that
/// installed a snapshot image newer than the snapshot's raft index replays
/// the entries in between without touching the store, but raft must still
/// hear of the configuration changes among them — only of those that were
/// accepted, which the image alone cannot tell (its membership is the one
/// after them).
pub(crate) fn record_refused(w: &mut TxnWrite<'_>, index: u64) {
    w.put_aux(Bucket::Members, &key(REFUSED_PREFIX, index), b"");
}

/// Whether the configuration change entry at `index` was refused (see
/// [`record_refused`]).
pub(crate) fn was_refused(store: &Store, index: u64) -> Result<bool> {
    Ok(store
        .aux_get(Bucket::Members, &key(REFUSED_PREFIX, index))?
        .is_some())
}

/// The members of the cluster and the ids removed from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RaftCluster {
    members: BTreeMap<u64, Member>,
    removed: BTreeSet<u64>,
}

impl RaftCluster {
    /// A cluster of the given members (bootstrap).
    pub(crate) fn new(members: Vec<Member>) -> RaftCluster {
        RaftCluster {
            members: members.into_iter().map(|m| (m.id, m)).collect(),
            removed: BTreeSet::new(),
        }
    }

    /// The membership the store holds, if it holds any.
    pub(crate) fn load(store: &Store) -> Result<Option<RaftCluster>> {
        let mut c = RaftCluster::default();
        for (k, v) in store.aux_scan(Bucket::Members)? {
            let Some((&prefix, id)) = k.split_first() else {
                continue;
            };
            let Ok(id) = <[u8; 8]>::try_from(id).map(u64::from_be_bytes) else {
                return Err(Error::Internal(format!("bad members key {k:?}")));
            };
            match prefix {
                MEMBER_PREFIX => {
                    let m = Member::decode(&v[..])
                        .map_err(|e| Error::Internal(format!("bad member record: {e}")))?;
                    c.members.insert(id, m);
                }
                REMOVED_PREFIX => {
                    c.removed.insert(id);
                }
                REFUSED_PREFIX => {}
                _ => return Err(Error::Internal(format!("bad members key {k:?}"))),
            }
        }
        Ok((!c.members.is_empty()).then_some(c))
    }

    /// Writes the whole membership (bootstrap).
    pub(crate) fn save_all(&self, w: &mut TxnWrite<'_>) {
        for m in self.members.values() {
            put_member(w, m);
        }
        for id in &self.removed {
            w.put_aux(Bucket::Members, &key(REMOVED_PREFIX, *id), b"");
        }
    }

    /// Raft's configuration for this membership.
    pub(crate) fn conf_state(&self) -> ConfState {
        let mut cs = ConfState::default();
        for m in self.members.values() {
            if m.is_learner {
                cs.learners.push(m.id);
            } else {
                cs.voters.push(m.id);
            }
        }
        cs
    }

    /// Members by id.
    pub(crate) fn members(&self) -> Vec<Member> {
        self.members.values().cloned().collect()
    }

    /// One member.
    pub(crate) fn member(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    /// Whether `id` was removed.
    pub(crate) fn is_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
    }

    /// Whether `urls` contain a peer URL another member uses.
    fn peer_urls_taken(&self, urls: &[String], except: u64) -> bool {
        self.members
            .values()
            .filter(|m| m.id != except)
            .any(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
    }

    /// Checks a change against the current membership (etcd's
    /// `ValidateConfigurationChange`, with etcd's errors).
    pub(crate) fn validate(&self, change: &Change) -> Result<()> {
        match change {
            Change::Add(m) => {
                if self.removed.contains(&m.id) {
                    return Err(Error::MemberNotFound);
                }
                if self.members.contains_key(&m.id) {
                    return Err(Error::MemberExists);
                }
                if self.peer_urls_taken(&m.peer_urls, 0) {
                    return Err(Error::PeerUrlExists);
                }
                if m.is_learner
                    && self.members.values().filter(|m| m.is_learner).count() >= MAX_LEARNERS
                {
                    return Err(Error::TooManyLearners);
                }
            }
            Change::Promote(id) => match self.members.get(id) {
                None => return Err(Error::MemberNotFound),
                Some(m) if !m.is_learner => return Err(Error::MemberNotLearner),
                Some(_) => {}
            },
            Change::Remove(id) | Change::Publish { id, .. } => {
                if !self.members.contains_key(id) {
                    return Err(Error::MemberNotFound);
                }
            }
            Change::UpdatePeerUrls(id, urls) => {
                if !self.members.contains_key(id) {
                    return Err(Error::MemberNotFound);
                }
                if self.peer_urls_taken(urls, *id) {
                    return Err(Error::PeerUrlExists);
                }
            }
        }
        Ok(())
    }

    /// Applies a validated change, recording it in `w`.
    pub(crate) fn apply(&mut self, change: &Change, w: &mut TxnWrite<'_>) {
        match change {
            Change::Add(m) => {
                let mut m = m.clone();
                // A member added at runtime has not started yet.
                m.name.clear();
                m.client_urls.clear();
                put_member(w, &m);
                self.members.insert(m.id, m);
            }
            Change::Promote(id) => {
                let m = self.members.get_mut(id).expect("validated");
                m.is_learner = false;
                put_member(w, m);
            }
            Change::Remove(id) => {
                self.members.remove(id);
                self.removed.insert(*id);
                w.delete_aux(Bucket::Members, &key(MEMBER_PREFIX, *id));
                w.put_aux(Bucket::Members, &key(REMOVED_PREFIX, *id), b"");
            }
            Change::UpdatePeerUrls(id, urls) => {
                let m = self.members.get_mut(id).expect("validated");
                m.peer_urls = urls.clone();
                put_member(w, m);
            }
            Change::Publish {
                id,
                name,
                client_urls,
            } => {
                let m = self.members.get_mut(id).expect("validated");
                m.name = name.clone();
                m.client_urls = client_urls.clone();
                put_member(w, m);
            }
        }
    }

    /// Voting members that have started (published a name).
    fn started_voters(&self, except: u64) -> (usize, usize) {
        let voters = self
            .members
            .values()
            .filter(|m| !m.is_learner && m.id != except);
        let (mut n, mut started) = (0, 0);
        for m in voters {
            n += 1;
            if !m.name.is_empty() {
                started += 1;
            }
        }
        (n, started)
    }

    /// etcd's `IsReadyToAddVotingMember`: after adding one more voter, the
    /// started voters still form a quorum.
    pub(crate) fn ready_to_add_voter(&self) -> bool {
        let (n, started) = self.started_voters(0);
        let n = n + 1;
        // A single started member may always add a second one.
        (started == 1 && n == 2) || started > n / 2
    }

    /// etcd's `IsReadyToRemoveVotingMember`.
    pub(crate) fn ready_to_remove_voter(&self, id: u64) -> bool {
        let (n, started) = self.started_voters(id);
        started > n / 2
    }

    /// etcd's `IsReadyToPromoteMember`: the started voters plus the
    /// promoted learner form a quorum of the new voter set.
    pub(crate) fn ready_to_promote(&self) -> bool {
        let (n, started) = self.started_voters(0);
        let (n, started) = (n + 1, started + 1);
        (started == 2 && n == 2) || started > n / 2
    }
}

/// The `members` column family key of a member id under `prefix`.
pub(crate) fn key(prefix: u8, id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

fn put_member(w: &mut TxnWrite<'_>, m: &Member) {
    w.put_aux(
        Bucket::Members,
        &key(MEMBER_PREFIX, m.id),
        &m.encode_to_vec(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_mvcc::StoreOptions;

    fn member(id: u64, url: &str, learner: bool) -> Member {
        Member {
            id,
            name: format!("m{id}"),
            peer_urls: vec![url.into()],
            client_urls: vec![],
            is_learner: learner,
        }
    }

    #[test]
    fn changes_persist_and_reload() {
        let store = Store::open_in_memory(StoreOptions::default()).unwrap();
        let mut c = RaftCluster::new(vec![
            member(1, "http://a:1", false),
            member(2, "http://b:1", false),
        ]);
        let mut w = store.write();
        c.save_all(&mut w);
        w.end(1).unwrap();
        for (i, ch) in [
            Change::Add(member(3, "http://c:1", true)),
            Change::Promote(3),
            Change::Remove(2),
            Change::Publish {
                id: 3,
                name: "c".into(),
                client_urls: vec!["http://c:2".into()],
            },
        ]
        .into_iter()
        .enumerate()
        {
            c.validate(&ch).unwrap();
            let mut w = store.write();
            c.apply(&ch, &mut w);
            w.end(2 + i as u64).unwrap();
        }
        let loaded = RaftCluster::load(&store).unwrap().unwrap();
        assert_eq!(loaded, c);
        assert_eq!(c.conf_state().voters, vec![1, 3]);
        assert!(c.is_removed(2));
        assert_eq!(c.member(3).unwrap().name, "c");
    }

    #[test]
    fn invalid_changes_get_etcds_errors() {
        let mut c = RaftCluster::new(vec![member(1, "http://a:1", false)]);
        c.removed.insert(9);
        let v = |c: &RaftCluster, ch| c.validate(&ch).unwrap_err();
        assert_eq!(
            v(&c, Change::Add(member(1, "http://z:1", false))),
            Error::MemberExists
        );
        assert_eq!(
            v(&c, Change::Add(member(2, "http://a:1", false))),
            Error::PeerUrlExists
        );
        assert_eq!(
            v(&c, Change::Add(member(9, "http://n:1", false))),
            Error::MemberNotFound
        );
        assert_eq!(v(&c, Change::Promote(1)), Error::MemberNotLearner);
        assert_eq!(v(&c, Change::Promote(5)), Error::MemberNotFound);
        assert_eq!(v(&c, Change::Remove(5)), Error::MemberNotFound);
        c.members.insert(4, member(4, "http://d:1", true));
        assert_eq!(
            v(&c, Change::Add(member(5, "http://e:1", true))),
            Error::TooManyLearners
        );
    }

    #[test]
    fn conf_change_entries_round_trip() {
        for ch in [
            Change::Add(member(7, "http://x:1", true)),
            Change::Add(member(8, "http://y:1", false)),
            Change::Promote(7),
            Change::Remove(8),
        ] {
            let waiter = Waiter {
                origin: 0xfeed_f00d_dead_beef,
                id: 42,
            };
            let cc = ch.to_conf_change(waiter).unwrap();
            let (cc2, back_waiter, back) =
                decode_conf_change(&cc.write_to_bytes().unwrap()).unwrap();
            assert_eq!(cc2, cc);
            assert_eq!(back_waiter, waiter);
            assert_eq!(back, ch);
        }
    }

    #[test]
    fn quorum_of_started_members() {
        let mut c = RaftCluster::new(vec![member(1, "http://a:1", false)]);
        assert!(c.ready_to_add_voter(), "one started member may add another");
        let mut unstarted = member(2, "http://b:1", false);
        unstarted.name.clear();
        c.members.insert(2, unstarted);
        // {1 started, 2 not}: adding a third voter leaves 1 of 3 started.
        assert!(!c.ready_to_add_voter());
        // Removing the unstarted one leaves {1}: fine. Removing 1 leaves
        // {2}, which never started.
        assert!(c.ready_to_remove_voter(2));
        assert!(!c.ready_to_remove_voter(1));
    }
}
