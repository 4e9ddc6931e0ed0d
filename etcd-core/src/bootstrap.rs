//! Opening a member's storage (etcd's `bootstrap.go`): restart from a data
//! directory, bootstrap a new cluster, or join an existing one.
//!
//! - **Import** (the data directory is etcd's: `member/snap/db` is a bbolt
//!   file): imported into this server's format first (`etcd_import`), with
//!   its ids, membership and raft state, then restarted as below.
//! - **Restart** (the data directory has a WAL): the `--initial-*` settings
//!   are ignored, as in etcd. The membership comes from the store (it is
//!   persisted with the consistent index, so it is the membership as of the
//!   applied index, which is what raft must start with); a data directory
//!   written before membership was persisted falls back to the WAL
//!   metadata.
//! - **New cluster** (`--initial-cluster-state new`): ids are derived from
//!   `--initial-cluster` and `--initial-cluster-token` exactly as etcd
//!   derives them. Every bootstrapping member starts from the same state:
//!   the store holds the initial members at consistent index 1 and the raft
//!   log starts after a snapshot at (index 1, term 1) whose configuration
//!   is those members. A member added later has an empty log, so the leader
//!   must send it a snapshot, which carries the membership.
//! - **Join** (`--initial-cluster-state existing`, empty data directory):
//!   the member asks the cluster's peers for their membership, finds itself
//!   by its peer URLs, and starts with an empty log waiting for the
//!   leader's snapshot.

use crate::cluster::RaftCluster;
use crate::config::{ClusterState, Config};
use crate::datadir::DataDir;
use crate::error::StartError;
use crate::membership::{self, Member, WalMetadata};
use crate::snapshot::SnapshotFiles;
use etcd_mvcc::{Store, StoreOptions};
use etcd_raft_node::eraftpb::ConfState;
use etcd_raft_node::WalStorage;

/// Snapshot images kept in `member/snap/` (the newest ones).
const RETAINED_IMAGES: usize = 2;
use prost::Message as _;

/// The raft index and term of the snapshot every new cluster starts from.
pub(crate) const BOOTSTRAP_INDEX: u64 = 1;
const BOOTSTRAP_TERM: u64 = 1;

/// A member's opened storage.
pub(crate) struct Booted {
    pub store: Store,
    /// Snapshot images received from leaders (`member/snap/`).
    pub files: SnapshotFiles,
    pub storage: WalStorage,
    pub member_id: u64,
    pub cluster_id: u64,
    pub cluster: RaftCluster,
}

/// Opens (restart) or creates (new cluster, join) the member's storage.
/// `join` asks existing peers for the cluster's membership (the join path).
pub(crate) fn boot(
    cfg: &Config,
    join: impl FnOnce(&[Member]) -> Result<(u64, Vec<Member>), StartError>,
) -> Result<Booted, StartError> {
    let dir = DataDir::with_wal_dir(&cfg.data_dir, cfg.wal_dir.clone());
    let wal_opts = etcd_wal::WalOptions::default();
    if crate::etcd_import::needs_import(&dir) {
        if let Some(w) = &cfg.wal_dir {
            return Err(StartError::Config(format!(
                "{} was written by etcd; import it once without --wal-dir={} \
                 (the WAL then stays in the data directory)",
                dir.root.display(),
                w.display()
            )));
        }
        // A data directory a stopped etcd left: imported once, then a restart.
        crate::etcd_import::import(&dir)?;
    }
    if etcd_wal::Wal::exists(&dir.wal()) {
        return restart(cfg, &dir, wal_opts);
    }
    let initial =
        membership::parse_initial_cluster(&cfg.initial_cluster, &cfg.initial_cluster_token)
            .map_err(StartError::Config)?;
    let me = find_self(cfg, &initial)?;
    let (member_id, cluster_id, cluster, conf_state, at) = match cfg.initial_cluster_state {
        ClusterState::New => {
            let cluster_id =
                membership::cluster_id(&initial.iter().map(|m| m.id).collect::<Vec<_>>());
            let cluster = RaftCluster::new(initial.clone());
            let cs = cluster.conf_state();
            (me.id, cluster_id, cluster, cs, Some(BOOTSTRAP_INDEX))
        }
        ClusterState::Existing => {
            let (cluster_id, members) = join(&initial)?;
            let mine = sorted(&me.peer_urls);
            let Some(found) = members.iter().find(|m| sorted(&m.peer_urls) == mine) else {
                return Err(StartError::Config(format!(
                    "member with peer URLs {} is not a member of the cluster it joins \
                     (members: {}); add it first with `etcdctl member add {} --peer-urls={}`",
                    me.peer_urls.join(","),
                    members
                        .iter()
                        .map(|m| format!(
                            "{}={}",
                            membership::format_id(m.id),
                            m.peer_urls.join(",")
                        ))
                        .collect::<Vec<_>>()
                        .join(" "),
                    cfg.name,
                    me.peer_urls.join(",")
                )));
            };
            // The membership and everything else arrives with the leader's
            // snapshot; until then raft knows no members.
            (
                found.id,
                cluster_id,
                RaftCluster::new(members.clone()),
                ConfState::default(),
                None,
            )
        }
    };
    dir.create()?;
    let files = SnapshotFiles::for_data_dir(&dir, RETAINED_IMAGES)?;
    let store = Store::open(&dir.db(), StoreOptions::default())?;
    // A store that applied entries beyond the bootstrap (a crashed
    // bootstrap leaves at most the bootstrap's; a restore, none) has its
    // WAL somewhere else: started before with another --wal-dir.
    // Bootstrapping again would throw its log away.
    if store.consistent_index() > BOOTSTRAP_INDEX {
        return Err(StartError::data_dir(
            &dir.root,
            format!(
                "its store applied raft entries up to index {} but there is no WAL in {}: \
                 start the member with the --wal-dir it ran with",
                store.consistent_index(),
                dir.wal().display()
            ),
        ));
    }
    if let Some(index) = at {
        init_store(&store, &cluster, index)?;
    }
    // The WAL is created last: its existence marks a complete bootstrap.
    let meta = WalMetadata {
        member_id,
        cluster_id,
        members: cluster.members(),
    }
    .encode_to_vec();
    let storage = match at {
        Some(index) => WalStorage::create_at(
            &dir.wal(),
            wal_opts,
            &meta,
            conf_state,
            index,
            BOOTSTRAP_TERM,
        )?,
        None => WalStorage::create(&dir.wal(), wal_opts, &meta, conf_state)?,
    };
    tracing::info!(
        member = %membership::format_id(member_id),
        cluster = %membership::format_id(cluster_id),
        members = cluster.members().len(),
        state = ?cfg.initial_cluster_state,
        "bootstrapped member in {}",
        cfg.data_dir.display()
    );
    Ok(Booted {
        store,
        files,
        storage,
        member_id,
        cluster_id,
        cluster,
    })
}

/// Writes the initial membership at consistent index `index` into a new
/// member's store and makes it durable. The flush matters: the WAL created
/// next starts after a snapshot marker at `index`, and a store that lost
/// the bootstrap write in a crash (the MVCC store writes without a log of
/// its own) would be refused on restart as older than that marker.
pub(crate) fn init_store(
    store: &Store,
    cluster: &RaftCluster,
    index: u64,
) -> Result<(), etcd_mvcc::Error> {
    if store.consistent_index() < index {
        let mut w = store.write();
        cluster.save_all(&mut w);
        w.end(index)?;
    }
    store.flush()
}

/// Reopens a member's WAL over its opened store (the restart path, shared
/// with the cluster simulation): re-installs the retained snapshot image
/// when the WAL recorded a snapshot the store does not hold yet (a crash
/// between the WAL's marker and the install), and derives the membership
/// and raft's configuration as of the store's consistent index. Returns the
/// raft storage, the WAL's metadata and the membership.
pub(crate) fn reopen_wal(
    wal_dir: &std::path::Path,
    wal_opts: etcd_wal::WalOptions,
    store: &Store,
    files: &SnapshotFiles,
    incomplete: bool,
) -> Result<(WalStorage, WalMetadata, RaftCluster), StartError> {
    let mut meta = None;
    let mut cluster = None;
    let opened = WalStorage::open_with(wal_dir, wal_opts, |rec| {
        let m = WalMetadata::decode(rec.metadata.clone()).map_err(|e| {
            etcd_raft_node::Error::Config(format!("WAL metadata is not readable: {e}"))
        })?;
        // A snapshot raft installed whose image the store does not hold yet
        // (a crash between the WAL's marker and the install): install the
        // retained image now.
        let behind = rec
            .snapshot
            .filter(|marker| incomplete || store.consistent_index() < marker.index);
        if let Some(marker) = behind {
            let image = files
                .find(marker.index)
                .map_err(|e| etcd_raft_node::Error::Snapshot(e.to_string()))?
                .ok_or_else(|| {
                    etcd_raft_node::Error::Snapshot(format!(
                        "the raft log starts after a snapshot at index {} (term {}) whose \
                         image is missing from {}: restore the member from a snapshot or \
                         remove it and add it again",
                        marker.index,
                        marker.term,
                        files.dir().display()
                    ))
                })?;
            tracing::info!(
                index = marker.index,
                term = marker.term,
                "re-installing a received snapshot image"
            );
            files
                .install(store, &image.token())
                .map_err(|e| etcd_raft_node::Error::Snapshot(e.to_string()))?;
        } else if incomplete {
            return Err(etcd_raft_node::Error::Snapshot(
                "the store's restore from a snapshot image was interrupted and the raft log \
                 names no snapshot to restore it from"
                    .into(),
            ));
        }
        let applied = store.consistent_index();
        let stored = RaftCluster::load(store).map_err(|e| {
            etcd_raft_node::Error::Config(format!("cannot read the membership: {e}"))
        })?;
        // Without membership in the store: a member that joined and has not
        // installed the leader's snapshot yet (nothing applied) starts with
        // no voters, knowing its peers from the metadata; a data directory
        // written before membership was persisted uses the metadata.
        let (c, cs) = match stored {
            Some(c) => {
                let cs = c.conf_state();
                (c, cs)
            }
            None => {
                let c = RaftCluster::new(m.members.clone());
                let cs = if applied == 0 {
                    ConfState::default()
                } else {
                    c.conf_state()
                };
                (c, cs)
            }
        };
        meta = Some(m);
        cluster = Some(c);
        Ok((applied, cs))
    })?;
    let meta = meta.expect("metadata decoded before the log is loaded");
    Ok((
        opened.storage,
        meta,
        cluster.expect("set with the metadata"),
    ))
}

fn restart(
    cfg: &Config,
    dir: &DataDir,
    wal_opts: etcd_wal::WalOptions,
) -> Result<Booted, StartError> {
    dir.check_version()?;
    let files = SnapshotFiles::for_data_dir(dir, RETAINED_IMAGES)?;
    let (store, incomplete) = match Store::open(&dir.db(), StoreOptions::default()) {
        Ok(s) => (s, false),
        Err(etcd_mvcc::Error::RestoreIncomplete) => {
            tracing::warn!(
                "the store was being restored from a snapshot image when the member stopped"
            );
            (
                Store::open_to_restore(&dir.db(), StoreOptions::default())?,
                true,
            )
        }
        Err(e) => return Err(e.into()),
    };
    let (mut storage, meta, cluster) =
        reopen_wal(&dir.wal(), wal_opts, &store, &files, incomplete)?;
    if cfg.force_new_cluster {
        force_new_cluster(cfg, &mut storage, &cluster, meta.member_id, &store)?;
    } else if cluster.members().is_empty() && store.consistent_index() > 0 {
        // Raft would never elect anyone.
        return Err(StartError::data_dir(
            &dir.root,
            "it holds data but no cluster membership (a backup written by `etcdutl backup` or `etcdctl backup`): \
             start it once with --force-new-cluster",
        ));
    }
    tracing::info!(
        member = %membership::format_id(meta.member_id),
        cluster = %membership::format_id(meta.cluster_id),
        applied = store.consistent_index(),
        "restarting member from {}",
        cfg.data_dir.display()
    );
    Ok(Booted {
        store,
        files,
        storage,
        member_id: meta.member_id,
        cluster_id: meta.cluster_id,
        cluster,
    })
}

/// `--force-new-cluster` (etcd's `restartAsStandaloneNode`): makes this
/// member the only one of its cluster, keeping its data, member id and
/// cluster id. The entries after the commit index are dropped (nobody
/// acknowledged them), and configuration changes are appended as
/// committed: a promotion of this member if it is a learner (an addition
/// if the membership lacks it, with its `--initial-advertise-peer-urls`),
/// then the removal of every other member, voter or learner. They apply
/// like any committed entry when the member starts, so the store's
/// membership, raft's configuration and every later restart agree; raft
/// does not campaign before they are applied. A member already alone gets
/// no entries, so the flag left on in a unit file is harmless.
///
/// etcd 3.4 removes only the voters of its last snapshot (a learner
/// would stay); here learners are removed too.
fn force_new_cluster(
    cfg: &Config,
    storage: &mut WalStorage,
    cluster: &RaftCluster,
    me: u64,
    store: &Store,
) -> Result<(), StartError> {
    use crate::cluster::{decode_conf_change, Change};
    use etcd_raft_node::eraftpb::{Entry, EntryType};
    use protobuf::Message as _;

    // The membership raft will have at the commit index: the store's (as
    // of its applied index) and the committed changes not applied yet.
    // Member id -> whether it is a learner.
    let mut ids: std::collections::BTreeMap<u64, bool> = cluster
        .members()
        .iter()
        .map(|m| (m.id, m.is_learner))
        .collect();
    let pending = storage
        .committed_entries_after(store.consistent_index())
        .map_err(StartError::from)?;
    for e in pending
        .iter()
        .filter(|e| e.get_entry_type() == EntryType::EntryConfChange)
    {
        let (_, _, change) = decode_conf_change(&e.data).map_err(|err| {
            StartError::Config(format!(
                "raft entry {} is not a configuration change: {err}",
                e.index
            ))
        })?;
        match change {
            Change::Add(m) => {
                ids.insert(m.id, m.is_learner);
            }
            Change::Promote(id) => {
                if let Some(learner) = ids.get_mut(&id) {
                    *learner = false;
                }
            }
            Change::Remove(id) => {
                ids.remove(&id);
            }
            Change::UpdatePeerUrls(..) | Change::Publish { .. } => {}
        }
    }
    let mut changes = Vec::new();
    match ids.get(&me) {
        None => changes.push(Change::Add(Member {
            id: me,
            name: String::new(),
            peer_urls: cfg.initial_advertise_peer_urls.clone(),
            client_urls: Vec::new(),
            is_learner: false,
        })),
        Some(true) => changes.push(Change::Promote(me)),
        Some(false) => {}
    }
    changes.extend(
        ids.keys()
            .filter(|&&id| id != me)
            .map(|&id| Change::Remove(id)),
    );
    if changes.is_empty() {
        tracing::info!("--force-new-cluster: this member is already the only one");
        return Ok(());
    }
    let hs = storage.hard_state();
    let dropped = storage.last_index().saturating_sub(hs.commit);
    let entries: Vec<Entry> = changes
        .iter()
        .zip(hs.commit + 1..)
        .map(|(change, index)| {
            let cc = change
                .to_conf_change(crate::wait::Waiter { origin: 0, id: 0 })
                .expect("additions, promotions and removals are configuration changes");
            let mut e = Entry::default();
            e.set_entry_type(EntryType::EntryConfChange);
            e.index = index;
            e.term = hs.term;
            e.data = cc
                .write_to_bytes()
                .expect("a configuration change encodes")
                .into();
            e
        })
        .collect();
    storage.force_commit(&entries).map_err(StartError::from)?;
    tracing::warn!(
        member = %membership::format_id(me),
        commit_index = hs.commit,
        discarded_uncommitted_entries = dropped,
        removed = ?ids.keys().filter(|&&id| id != me).map(|&id| membership::format_id(id)).collect::<Vec<_>>(),
        "--force-new-cluster: forcing a restart as the only member of the cluster"
    );
    Ok(())
}

/// `urls` sorted (members are matched by their set of peer URLs).
pub(crate) fn sorted(urls: &[String]) -> Vec<String> {
    let mut v = urls.to_vec();
    v.sort();
    v
}

/// This member in `--initial-cluster`, checked against
/// `--initial-advertise-peer-urls`.
fn find_self<'a>(cfg: &Config, members: &'a [Member]) -> Result<&'a Member, StartError> {
    let Some(me) = members.iter().find(|m| m.name == cfg.name) else {
        return Err(StartError::Config(format!(
            "couldn't find local name {:?} in the initial cluster configuration {:?}",
            cfg.name, cfg.initial_cluster
        )));
    };
    if sorted(&me.peer_urls) != sorted(&cfg.initial_advertise_peer_urls) {
        return Err(StartError::Config(format!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={} \
             (the peer URLs of this member must match)",
            me.name,
            me.peer_urls.join(","),
            cfg.initial_advertise_peer_urls.join(",")
        )));
    }
    Ok(me)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_mvcc::MemDisk;

    #[test]
    fn the_bootstrap_write_survives_a_crash() {
        let disk = MemDisk::new();
        let store = Store::open_with(Box::new(disk.backend()), StoreOptions::default()).unwrap();
        let members =
            membership::parse_initial_cluster("a=http://a:2380,b=http://b:2380", "t").unwrap();
        let cluster = RaftCluster::new(members);
        init_store(&store, &cluster, BOOTSTRAP_INDEX).unwrap();
        // Killed before the store flushed on its own.
        disk.crash();
        drop(store);
        let store = Store::open_with(Box::new(disk.backend()), StoreOptions::default()).unwrap();
        assert_eq!(store.consistent_index(), BOOTSTRAP_INDEX);
        assert_eq!(RaftCluster::load(&store).unwrap(), Some(cluster));
    }
}
