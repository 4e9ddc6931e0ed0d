//! Starting a member (etcd's `NewServer` and `EtcdServer.Start`): bind the
//! peer port, boot or restart from the data directory, start raft, the
//! apply thread, the peer transport and the background threads.

use super::etcd::{Etcd, Inner};
use super::{peer_client, peer_serve, publish};
use crate::applier::Applier;
use crate::apply_loop::ApplySteps;
use crate::config::Config;
use crate::error::StartError;
use crate::lessor::{min_lease_ttl, Clock, Lessor, MonotonicClock};
use crate::membership;
use crate::snapshot::StoreSnapshots;
use crate::wait::Wait;
use crate::watchable_store::WatchableStore;
use etcd_raft_node::{
    MemberStatus, NodeConfig, RaftNode, TcpTransport, TcpTransportConfig, TransportHooks,
};
use parking_lot::{Mutex, RwLock};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use tokio::sync::watch;

/// How a member is started, beyond its [`Config`].
pub struct StartOptions {
    /// The monotonic clock lease deadlines are measured on.
    pub clock: Arc<dyn Clock>,
    /// An already bound listener for peer traffic (tests bind port 0);
    /// without one, the first of `listen_peer_urls` is bound.
    pub peer_listener: Option<std::net::TcpListener>,
    /// TLS for all peer traffic (etcd's `--peer-*` flags); None: plain
    /// TCP, and `https://` peer URLs are refused.
    pub peer_tls: Option<etcd_raft_node::PeerTlsHandle>,
    /// The wall clock JWT expiry is measured on (JWTs carry absolute
    /// times).
    pub unix_clock: crate::auth::UnixClock,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            clock: Arc::new(MonotonicClock::new()),
            peer_listener: None,
            peer_tls: None,
            unix_clock: crate::auth::system_unix_clock(),
        }
    }
}

impl Etcd {
    /// Starts a member: bootstraps a new cluster from the `initial_*`
    /// settings in an empty data directory, joins an existing one
    /// (`initial_cluster_state = Existing`), or restarts from what the data
    /// directory holds (ignoring the `initial_*` settings, as etcd does).
    ///
    /// Threads are started here; the async API needs a tokio runtime with
    /// the time driver.
    pub fn start(cfg: Config) -> Result<Etcd, StartError> {
        Self::start_with(cfg, StartOptions::default())
    }

    /// Like [`Etcd::start`], with the monotonic clock lease deadlines are
    /// measured on.
    pub fn start_with_clock(cfg: Config, clock: Arc<dyn Clock>) -> Result<Etcd, StartError> {
        Self::start_with(
            cfg,
            StartOptions {
                clock,
                ..StartOptions::default()
            },
        )
    }

    /// Like [`Etcd::start`], with [`StartOptions`].
    pub fn start_with(cfg: Config, opts: StartOptions) -> Result<Etcd, StartError> {
        cfg.validate()?;
        match cfg.quota_bytes() {
            u64::MAX => tracing::warn!("disabling backend quota (--quota-backend-bytes < 0)"),
            q if q > crate::config::MAX_QUOTA_BYTES => tracing::warn!(
                quota = q,
                max = crate::config::MAX_QUOTA_BYTES,
                "backend quota exceeds the maximum recommended quota"
            ),
            _ => {}
        }
        let https = cfg
            .listen_peer_urls
            .iter()
            .chain(&cfg.initial_advertise_peer_urls)
            .find(|u| u.starts_with("https://"));
        match (https, &opts.peer_tls) {
            (Some(u), None) => {
                return Err(StartError::Config(format!(
                    "peer URL {u}: https needs peer TLS (--peer-cert-file and --peer-key-file, or --peer-auto-tls)"
                )))
            }
            (None, Some(_)) if !cfg.listen_peer_urls.is_empty() => {
                return Err(StartError::Config(
                    "peer TLS is configured but the peer URLs are http://; use https://".into(),
                ))
            }
            _ => {}
        }
        let peer_tls = opts.peer_tls.clone();
        let peer_listener = match opts.peer_listener {
            Some(l) => Some(l),
            None => match cfg.listen_peer_urls.first() {
                Some(url) => {
                    let addr = crate::config::peer_addr(url).map_err(StartError::Config)?;
                    Some(std::net::TcpListener::bind(&addr).map_err(|e| {
                        StartError::Config(format!("cannot listen for peers on {url}: {e}"))
                    })?)
                }
                None => None,
            },
        };
        let booted = crate::bootstrap::boot(&cfg, |initial| {
            peer_client::fetch_cluster(&cfg, peer_tls.as_ref(), initial)
        })?;
        let member_id = booted.member_id;
        let cluster_id = booted.cluster_id;
        let voters = booted.cluster.conf_state().voters;
        if voters.len() > 1 && peer_listener.is_none() {
            return Err(StartError::Config(format!(
                "the cluster has {} voting members but no --listen-peer-urls to talk to them",
                voters.len()
            )));
        }
        let store = Arc::new(booted.store);
        let metrics = crate::metrics::Metrics::new(
            member_id,
            cfg.quota_bytes(),
            store.commit_duration(),
            store.hash_rev_duration(),
        );
        // Subscribed before the apply thread starts: it sees every revision.
        let watch = WatchableStore::start(store.clone())?;
        let applied = store.consistent_index();
        let auth = Arc::new(crate::auth::AuthStore::new(
            crate::auth::Tokens::new(
                &cfg.auth_token,
                cfg.auth_token_ttl,
                opts.clock.clone(),
                opts.unix_clock.clone(),
            )
            .map_err(StartError::Config)?,
        ));
        auth.load(&store)
            .map_err(|e| StartError::Config(format!("cannot load the auth state: {e}")))?;
        let alarms = Arc::new(crate::alarms::AlarmStore::default());
        alarms
            .load(&store)
            .map_err(|e| StartError::Config(format!("cannot load the alarms: {e}")))?;
        let lessor = Arc::new(Lessor::new(
            opts.clock,
            min_lease_ttl(cfg.election_timeout),
            cfg.lease_checkpoint_interval,
        ));
        crate::apply::lease::restore(&store, &lessor)
            .map_err(|e| StartError::Config(format!("cannot restore leases: {e}")))?;
        let cluster = Arc::new(RwLock::new(booted.cluster));
        // Messages that arrive before the node exists are dropped (raft
        // retransmits).
        let node_slot: Arc<OnceLock<Arc<RaftNode>>> = Arc::new(OnceLock::new());
        let snapshots = Arc::new(StoreSnapshots {
            files: booted.files,
            store: store.clone(),
        });
        let (removed_tx, removed_rx) = watch::channel(false);
        let removed_tx = Arc::new(removed_tx);
        let remotes = Arc::new(Remotes::default());
        #[cfg(feature = "integration")]
        let cuts = crate::peer_cuts::PeerCuts::default();
        let transport = match peer_listener {
            Some(listener) => {
                let members = cluster.clone();
                let told_removed = removed_tx.clone();
                let (deliver, reported, unreachable, adopter) = (
                    node_slot.clone(),
                    node_slot.clone(),
                    node_slot.clone(),
                    node_slot.clone(),
                );
                #[cfg(feature = "integration")]
                let incoming_cuts = cuts.clone();
                let t = TcpTransport::start_with(
                    TcpTransportConfig {
                        id: member_id,
                        cluster_id,
                        peers: peer_addresses(&cluster.read().members(), member_id),
                        tls: opts.peer_tls.clone(),
                        ..TcpTransportConfig::default()
                    },
                    listener,
                    Arc::new(move |msg| {
                        #[cfg(feature = "integration")]
                        if incoming_cuts.is_cut(msg.from) {
                            return;
                        }
                        if let Some(node) = deliver.get() {
                            node.step(msg);
                        }
                    }),
                    TransportHooks {
                        snapshots: Some(snapshots.clone()),
                        report_snapshot: Some(Arc::new(move |to, ok| {
                            if let Some(node) = reported.get() {
                                node.report_snapshot(to, ok);
                            }
                        })),
                        report_unreachable: Some(Arc::new(move |to| {
                            if let Some(node) = unreachable.get() {
                                node.report_unreachable(to);
                            }
                        })),
                        // Only members (as this member last applied the
                        // membership) may send raft traffic.
                        member_status: Some(Arc::new(move |id| {
                            let c = members.read();
                            if c.member(id).is_some() {
                                MemberStatus::Member
                            } else if c.is_removed(id) {
                                MemberStatus::Removed
                            } else {
                                MemberStatus::Unknown
                            }
                        })),
                        unknown_sender: Some({
                            let (members, remotes) = (cluster.clone(), remotes.clone());
                            Arc::new(move |from| {
                                remotes.look_up(from, &members, member_id, cluster_id)
                            })
                        }),
                        // etcd's peers answer a removed member `410 Gone`
                        // and it stops; the server exits on `removed`.
                        // Members still running etcd 3.4 (a rolling
                        // migration): their log entries are translated.
                        etcd_codec: Some(Arc::new(crate::etcd_entries::EtcdEntries {
                            cluster: cluster.clone(),
                            snapshots: snapshots.clone(),
                        })),
                        // The raft thread reads its peers' message
                        // streams itself (one wake-up per batch of
                        // messages); before it runs, they are closed and
                        // their senders dial again.
                        adopt: Some(Arc::new(move |stream| {
                            adopter.get().is_some_and(|node| node.adopt_stream(stream))
                        })),
                        report_removed: Some(Arc::new(move || {
                            if !*told_removed.borrow() {
                                tracing::error!(
                                    "a peer says this member was removed from the cluster"
                                );
                                told_removed.send_replace(true);
                            }
                        })),
                    },
                )?;
                tracing::info!(address = %t.local_addr(), "listening for peers");
                let _ = remotes.transport.set(Arc::downgrade(&t));
                Some(t)
            }
            None => None,
        };
        let tick = cfg.heartbeat_interval;
        let node_cfg = NodeConfig {
            id: member_id,
            voters,
            applied,
            tick_interval: tick,
            election_tick: (cfg.election_timeout.as_millis() / tick.as_millis()).max(2) as usize,
            heartbeat_tick: 1,
            ..NodeConfig::default()
        };
        let (apply_tx, apply_rx) = crossbeam_channel::unbounded();
        let raft_transport = transport
            .clone()
            .map(|t| t as Arc<dyn etcd_raft_node::Transport>);
        #[cfg(feature = "integration")]
        let raft_transport = raft_transport.map(|t| cuts.filter(t));
        let node = Arc::new(RaftNode::start(
            node_cfg,
            booted.storage,
            raft_transport,
            apply_tx,
        )?);
        let _ = node_slot.set(node.clone());
        let wait = Arc::new(Wait::new(crate::wait::new_origin()));
        let (applied_tx, applied_rx) = watch::channel(applied);
        let apply_thread = {
            let applier = Applier {
                store: store.clone(),
                lessor: lessor.clone(),
                wait: wait.clone(),
                cluster: cluster.clone(),
                member_id,
                auth: auth.clone(),
                bcrypt_cost: cfg.bcrypt_cost,
                alarms: alarms.clone(),
                quota: cfg.quota_bytes(),
            };
            let steps = ApplySteps::new(
                applier,
                snapshots,
                cfg.snapshot_count,
                cfg.snapshot_catch_up_entries,
            );
            let ctx = ApplyLoop {
                node: node.clone(),
                watch: watch.clone(),
                transport: transport.clone(),
                remotes: remotes.clone(),
                applied_tx,
                removed_tx,
            };
            std::thread::Builder::new()
                .name("apply".into())
                .spawn(move || ctx.run(apply_rx, steps))?
        };
        let start_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let lease_ticker = crate::lease_ticker::spawn(node.clone(), lessor.clone(), &cfg)?;
        let etcd = Etcd {
            inner: Arc::new(Inner {
                member_id,
                cluster_id,
                cluster,
                transport,
                store,
                node,
                wait,
                // etcd's idutil: member id's low 16 bits, then a time-based
                // counter. Not unique alone: entries carry `wait`'s origin too.
                next_id: AtomicU64::new(
                    ((member_id & 0xffff) << 48) | ((start_ms & 0xff_ffff_ffff) << 8),
                ),
                applied: applied_rx,
                removed: removed_rx,
                apply_thread: Mutex::new(Some(apply_thread)),
                watch,
                background: Mutex::new(vec![lease_ticker]),
                stopping: tokio::sync::watch::channel(false).0,
                #[cfg(feature = "integration")]
                cuts,
                lessor,
                auth,
                alarms,
                metrics,
                cfg,
            }),
        };
        peer_serve::install(&etcd);
        // Stopped before the lease ticker: it proposes through raft.
        let publisher = publish::spawn(etcd.clone())?;
        etcd.inner.background.lock().insert(0, publisher);
        if etcd.inner.transport.is_some() {
            let prober = super::prober::spawn(etcd.clone())?;
            etcd.inner.background.lock().insert(0, prober);
        }
        if !etcd.inner.cfg.corrupt_check_time.is_zero() {
            let monitor =
                super::corrupt::spawn_monitor(etcd.clone(), etcd.inner.cfg.corrupt_check_time)?;
            etcd.inner.background.lock().insert(0, monitor);
        }
        if etcd.inner.cfg.initial_corrupt_check && etcd.members().len() > 1 {
            if let Err(e) = super::corrupt::check_initial_hash_kv(&etcd) {
                etcd.stop();
                return Err(e);
            }
        }
        if let Some(mode) = etcd.inner.cfg.auto_compaction {
            let clock = Arc::new(crate::lessor::MonotonicClock::new());
            let compactor = super::auto_compaction::spawn(etcd.clone(), mode, clock)?;
            etcd.inner.background.lock().insert(0, compactor);
        }
        Ok(etcd)
    }
}

/// Peers' addresses (first peer URL of each member but `me`).
pub(crate) fn peer_addresses(
    members: &[crate::membership::Member],
    me: u64,
) -> std::collections::HashMap<u64, String> {
    members
        .iter()
        .filter(|m| m.id != me)
        .filter_map(|m| {
            let url = m.peer_urls.first()?;
            match crate::config::peer_addr(url) {
                Ok(a) => Some((m.id, a)),
                Err(e) => {
                    tracing::warn!(member = %membership::format_id(m.id), "unusable peer URL: {e}");
                    None
                }
            }
        })
        .collect()
}

/// The apply thread: applies committed entries in order until raft stops
/// (the steps are `apply_loop::ApplySteps`, shared with the simulation),
/// and does what only a running member does with the outcome: tell the
/// peer transport of membership changes, resync watchers after a snapshot,
/// stop once removed.
struct ApplyLoop {
    node: Arc<RaftNode>,
    watch: Arc<WatchableStore>,
    transport: Option<Arc<TcpTransport>>,
    /// Senders this member did not know yet, addressed so it can answer.
    remotes: Arc<Remotes>,
    applied_tx: watch::Sender<u64>,
    removed_tx: Arc<watch::Sender<bool>>,
}

impl ApplyLoop {
    fn run(self, rx: crossbeam_channel::Receiver<etcd_raft_node::ToApply>, mut steps: ApplySteps) {
        let mut peers = self
            .transport
            .as_ref()
            .map(|_| {
                peer_addresses(
                    &steps.applier.cluster.read().members(),
                    steps.applier.member_id,
                )
            })
            .unwrap_or_default();
        let mut raft = &*self.node;
        while let Ok(batch) = rx.recv() {
            let out = match steps.apply(batch, &mut raft, &mut ()) {
                Ok(out) => out,
                // The store may now be incomplete; a restart re-installs the
                // retained image (bootstrap.rs). Going on would apply entries
                // to a store that is not there.
                Err(e) => panic!("{e}"),
            };
            if out.snapshot_without_members {
                tracing::error!("the snapshot image holds no members");
            }
            if out.snapshot {
                self.watch.on_restore();
            }
            if out.members_changed {
                self.update_peers(&steps.applier, &mut peers);
            }
            if out.over_quota {
                self.raise_nospace(steps.applier.member_id);
            }
            self.applied_tx.send_replace(steps.applied());
            if out.removed {
                tracing::error!(
                    "this member has been permanently removed from the cluster; stopping"
                );
                self.removed_tx.send_replace(true);
                self.node.stop();
                return;
            }
        }
    }

    /// A write took this member's store over its quota: raise NOSPACE
    /// for it (not waited for: this is the apply thread).
    fn raise_nospace(&self, member_id: u64) {
        tracing::warn!("a write took the store over --quota-backend-bytes; raising NOSPACE");
        let data = crate::raft_request::RaftRequest {
            id: 0,
            op: Some(crate::alarms::raise_nospace(member_id)),
            header: None,
            origin: 0,
        };
        self.node
            .propose(prost::Message::encode_to_vec(&data), None);
    }

    fn update_peers(&self, applier: &Applier, peers: &mut std::collections::HashMap<u64, String>) {
        let Some(t) = &self.transport else { return };
        let now = peer_addresses(&applier.cluster.read().members(), applier.member_id);
        for (id, addr) in &now {
            if peers.get(id) != Some(addr) {
                t.add_peer(*id, addr.clone());
            }
        }
        for id in peers.keys() {
            if !now.contains_key(id) {
                t.remove_peer(*id);
            }
        }
        self.remotes
            .settle(&now, |id| applier.cluster.read().is_removed(id));
        *peers = now;
    }
}

/// Members that sent raft messages before this member applied their
/// addition (it was behind: cut off while they were added, say), and
/// that it therefore has no address for (etcd's rafthttp "remotes", which
/// it learns from a pipeline request's `X-PeerURLs`). Without an address
/// this member could not answer them, and when such a member leads, never
/// catch up: the cluster's other members do not send to a follower. The
/// sender's address is asked of the members this one knows, and the
/// transport starts a stream to it; once the addition is applied the
/// sender is an ordinary peer, and if it is removed first its stream goes.
#[derive(Default)]
struct Remotes {
    /// The transport, once started (the hook exists before it). Weak: the
    /// transport holds the hook that holds this, and a cycle would keep
    /// the transport, and the store behind its snapshot hook, alive after
    /// the member stops.
    transport: OnceLock<std::sync::Weak<TcpTransport>>,
    /// Remotes looked up or being looked up.
    ids: Mutex<std::collections::HashSet<u64>>,
}

impl Remotes {
    /// Looks up `from`'s address on a thread of its own (peer queries
    /// block), unless it was already.
    fn look_up(
        self: &Arc<Self>,
        from: u64,
        members: &Arc<RwLock<crate::cluster::RaftCluster>>,
        me: u64,
        cluster_id: u64,
    ) {
        if !self.ids.lock().insert(from) {
            return;
        }
        let (this, members) = (self.clone(), members.clone());
        let spawned = std::thread::Builder::new()
            .name("remote-lookup".into())
            .spawn(move || {
                let known = members.read().members();
                let found = known
                    .iter()
                    .filter(|m| m.id != me)
                    .find_map(|m| this.ask(m, from, cluster_id));
                match (found, this.transport.get().and_then(|t| t.upgrade())) {
                    (Some(addr), Some(t)) => {
                        tracing::info!(
                            member = %membership::format_id(from),
                            %addr,
                            "found the address of a member added after what this member applied"
                        );
                        t.add_peer(from, addr);
                    }
                    _ => {
                        tracing::warn!(
                            member = %membership::format_id(from),
                            "no peer knows the address of a member that sent raft messages"
                        );
                        this.ids.lock().remove(&from);
                    }
                }
            });
        if spawned.is_err() {
            self.ids.lock().remove(&from);
        }
    }

    /// Asks member `m` for the cluster's members; `id`'s peer address if
    /// it lists it.
    fn ask(&self, m: &crate::membership::Member, id: u64, cluster_id: u64) -> Option<String> {
        let tls = self
            .transport
            .get()
            .and_then(|t| t.upgrade())
            .and_then(|t| t.tls());
        let ask = super::peer_query::Ask::Cluster(true);
        let r = peer_client::ask_peer(tls.as_ref(), cluster_id, m, ask).ok()?;
        let sender = r.members.iter().find(|x| x.id == id)?;
        crate::config::peer_addr(sender.peer_urls.first()?).ok()
    }

    /// After a membership change: remotes that are now peers (`peers`)
    /// are ordinary peers; removed ones lose their stream.
    fn settle(
        &self,
        peers: &std::collections::HashMap<u64, String>,
        removed: impl Fn(u64) -> bool,
    ) {
        let Some(t) = self.transport.get().and_then(|t| t.upgrade()) else {
            return;
        };
        self.ids.lock().retain(|id| {
            if peers.contains_key(id) {
                false
            } else if removed(*id) {
                t.remove_peer(*id);
                false
            } else {
                true
            }
        });
    }
}
