//! Publishing this member's attributes (etcd's `publishV3` in `server.go`).

use super::etcd::Etcd;
use crate::background::Background;
use crate::raft_request::{MemberAttributes, Op};
use crossbeam_channel::Receiver;
use std::time::Duration;

/// Publishes this member's name and client URLs through raft until they
/// are applied (etcd's `publish`), so that other members list it as
/// started.
pub(super) fn spawn(etcd: Etcd) -> std::io::Result<Background> {
    Background::spawn("publish", move |stopped| publish(&etcd, &stopped))
}

impl Etcd {
    /// Whether the cluster lists this member with its name and client URLs
    /// (etcd's `ReadyNotify`: the member has joined and can serve).
    pub fn is_published(&self) -> bool {
        let cfg = &self.inner.cfg;
        self.inner
            .cluster
            .read()
            .member(self.inner.member_id)
            .is_some_and(|m| m.name == cfg.name && m.client_urls == cfg.advertise_client_urls)
    }

    /// Waits until the member can serve (etcd's `ReadyNotify`): it knows a
    /// leader and its attributes are published ([`Etcd::is_published`]).
    /// Requests made before may fail with `NoLeader`. `Stopped` if the
    /// member stops first.
    pub async fn ready(&self) -> crate::Result<()> {
        let mut applied = self.applied_index();
        let mut stopping = std::pin::pin!(self.stopping());
        loop {
            applied.borrow_and_update();
            if self.is_published() && self.raft_status().leader_id != 0 {
                return Ok(());
            }
            tokio::select! {
                r = applied.changed() => r.map_err(|_| crate::Error::Stopped)?,
                // A leader can be found with nothing new to apply (a member
                // restarting into a cluster whose log it has): look again.
                () = tokio::time::sleep(READY_POLL) => {}
                () = &mut stopping => return Err(crate::Error::Stopped),
            }
        }
    }
}

/// How often [`Etcd::ready`] looks for a leader between applies.
const READY_POLL: Duration = Duration::from_millis(5);

fn publish(etcd: &Etcd, stopped: &Receiver<()>) {
    let cfg = &etcd.inner.cfg;
    let me = etcd.inner.member_id;
    let retry = cfg.election_timeout * 2;
    loop {
        if etcd.is_published() {
            tracing::info!(
                name = %cfg.name,
                client_urls = ?cfg.advertise_client_urls,
                "published local member to the cluster"
            );
            return;
        }
        if etcd.raft_status().leader_id != 0 && etcd.inner.cluster.read().member(me).is_some() {
            etcd.propose_detached(Op::MemberAttributes(MemberAttributes {
                id: me,
                name: cfg.name.clone(),
                client_urls: cfg.advertise_client_urls.clone(),
            }));
        }
        if !crate::background::pause(stopped, Duration::from_millis(50).max(retry / 10)) {
            return;
        }
        // Give the proposal time to apply before proposing again.
        for _ in 0..9 {
            if etcd
                .inner
                .cluster
                .read()
                .member(me)
                .is_some_and(|m| m.name == cfg.name)
            {
                break;
            }
            if !crate::background::pause(stopped, retry / 10) {
                return;
            }
        }
    }
}
