//! In-process clusters of embedded members over the TCP peer transport on
//! loopback: static bootstrap, writes through any member, linearizable
//! reads everywhere, leader loss, leader transfer, membership changes, and
//! the auth state reaching every member (log, restart, snapshots).

use etcd_core::pb::authpb::{permission::Type as PermType, Permission};
use etcd_core::pb::etcdserverpb::{
    AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserGrantRoleRequest, AuthUserRevokeRoleRequest, AuthenticateRequest, MemberAddRequest,
    PutRequest, RangeRequest,
};
use etcd_core::RequestContext;
use etcd_core::{integration, Config, Error, Etcd, StartOptions};
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

/// `etcd_core::integration::Cluster` with this file's settings, and
/// helpers that panic instead of returning errors.
struct Cluster(integration::Cluster);

impl std::ops::Deref for Cluster {
    type Target = integration::Cluster;
    fn deref(&self) -> &integration::Cluster {
        &self.0
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut integration::Cluster {
        &mut self.0
    }
}

/// This file's settings on top of the integration cluster's.
fn settings(cfg: &mut Config) {
    // Compact the raft log often, so that members that fall behind (or
    // join) are sent snapshots.
    cfg.snapshot_count = 50;
    cfg.snapshot_catch_up_entries = 10;
    // Cheap password hashes: these tests are not about bcrypt.
    cfg.bcrypt_cost = 4;
}

/// The config of a member added to a running cluster (same settings).
fn config(name: &str, dir: &Path, initial: &str, url: &str) -> Config {
    let mut cfg = Config {
        name: name.into(),
        data_dir: dir.into(),
        initial_cluster: initial.into(),
        initial_cluster_token: "integration".into(),
        initial_advertise_peer_urls: vec![url.into()],
        listen_peer_urls: vec![url.into()],
        advertise_client_urls: vec![format!("http://{name}.invalid:2379")],
        heartbeat_interval: Duration::from_millis(25),
        election_timeout: Duration::from_millis(250),
        ..Config::default()
    };
    settings(&mut cfg);
    cfg
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        Self::start_tweaked(n, |_| {})
    }

    /// A cluster whose members' configs are changed by `tweak`.
    fn start_tweaked(n: usize, tweak: fn(&mut Config)) -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        Cluster(
            integration::Cluster::start_with(n, |cfg| {
                settings(cfg);
                tweak(cfg);
            })
            .unwrap(),
        )
    }

    /// Index of the member all running members agree leads.
    async fn wait_leader(&self) -> usize {
        self.0
            .wait_leader(Duration::from_secs(20))
            .await
            .expect("no agreed leader")
    }

    /// Member `i`'s peer URL.
    fn url(&self, i: usize) -> String {
        self.config(i).listen_peer_urls[0].clone()
    }

    /// Waits until member `i` sees every member published (started).
    async fn wait_published(&self, i: usize) {
        self.wait_list(i, "members did not publish", |ms| {
            ms.iter().all(|m| !m.name.is_empty())
        })
        .await;
    }

    /// Waits until member `i` has applied the addition of member `id`.
    async fn wait_lists(&self, i: usize, id: u64) {
        self.wait_list(i, "member not listed", |ms| ms.iter().any(|m| m.id == id))
            .await;
    }

    /// Waits until member `i`'s local member list satisfies `done`.
    async fn wait_list(
        &self,
        i: usize,
        what: &str,
        done: impl Fn(&[etcd_core::pb::etcdserverpb::Member]) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let list = self
                .member(i)
                .member_list(&RequestContext::LOCAL, false)
                .await
                .unwrap();
            if done(&list.members) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn restart(&mut self, i: usize) {
        self.0.restart(i).unwrap();
    }
}

async fn put(e: &Etcd, k: &str, v: &str) -> Result<i64, Error> {
    // Retried while leadership settles, as a client would.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = e
            .put(
                &RequestContext::LOCAL,
                PutRequest {
                    key: k.as_bytes().to_vec().into(),
                    value: v.as_bytes().to_vec().into(),
                    ..Default::default()
                },
            )
            .await;
        match r {
            Ok(r) => return Ok(r.header.unwrap().revision),
            Err(Error::NoLeader | Error::Timeout | Error::LeaderChanged)
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn get(e: &Etcd, k: &str, serializable: bool) -> Option<String> {
    let r = e
        .range(
            &RequestContext::LOCAL,
            RangeRequest {
                key: k.as_bytes().to_vec().into(),
                serializable,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    r.kvs
        .first()
        .map(|kv| String::from_utf8(kv.value.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_bootstrap_replicate_and_survive_leader_loss() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader().await;
    let follower = (leader + 1) % 3;
    // A write through a follower is forwarded to the leader.
    let rev = put(c.member(follower), "k", "v1").await.unwrap();
    for i in 0..3 {
        assert_eq!(get(c.member(i), "k", false).await.as_deref(), Some("v1"));
        assert_eq!(c.member(i).member_id(), c.member(i).member_id());
        assert_eq!(c.member(i).cluster_id(), c.member(0).cluster_id());
    }
    // Every member publishes its name; all members list the same three.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lists: Vec<Vec<String>> = {
            let mut v = Vec::new();
            for i in 0..3 {
                let l = c
                    .member(i)
                    .member_list(&RequestContext::LOCAL, true)
                    .await
                    .unwrap();
                v.push(l.members.iter().map(|m| m.name.clone()).collect());
            }
            v
        };
        if lists
            .iter()
            .all(|l| l == &["m0", "m1", "m2"] || sorted(l) == ["m0", "m1", "m2"])
        {
            break;
        }
        assert!(Instant::now() < deadline, "member lists: {lists:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The leader goes away: the others elect a new one and take writes.
    c.stop(leader);
    let started = Instant::now();
    let rev2 = put(c.member(follower), "k", "v2").await.unwrap();
    eprintln!("first write after leader loss: {:?}", started.elapsed());
    assert!(rev2 > rev);
    // The old leader comes back and catches up.
    c.restart(leader);
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(c.member(leader), "k", true).await.as_deref() != Some("v2") {
        assert!(
            Instant::now() < deadline,
            "restarted member did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hashes: Vec<u32> = (0..3)
        .map(|i| {
            c.member(i)
                .hash_kv(&RequestContext::LOCAL, rev2)
                .unwrap()
                .hash
        })
        .collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_on_request() {
    let c = Cluster::start(3);
    let leader = c.wait_leader().await;
    let target = (leader + 1) % 3;
    let target_id = c.member(target).member_id();
    // Only the leader moves leadership; only to a voter.
    assert_eq!(
        c.member(target)
            .move_leader(&RequestContext::LOCAL, target_id)
            .await
            .unwrap_err(),
        Error::NotLeader
    );
    assert_eq!(
        c.member(leader)
            .move_leader(&RequestContext::LOCAL, 12345)
            .await
            .unwrap_err(),
        Error::BadLeaderTransferee
    );
    c.member(leader)
        .move_leader(&RequestContext::LOCAL, target_id)
        .await
        .unwrap();
    assert_eq!(c.wait_leader().await, target);
    put(c.member(leader), "after", "move").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_apply_on_every_member() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader().await;
    put(c.member(leader), "k", "v").await.unwrap();
    // Strict reconfiguration checks count started (published) members.
    c.wait_published(leader).await;
    let m = c.member((leader + 1) % 3);
    // A learner that never starts: listed unstarted, cannot be promoted.
    let added = m
        .member_add(
            &RequestContext::LOCAL,
            MemberAddRequest {
                peer_ur_ls: vec!["http://127.0.0.1:1".into()],
                is_learner: true,
            },
        )
        .await
        .unwrap();
    let learner = added.member.unwrap();
    assert!(learner.is_learner && learner.name.is_empty());
    assert_eq!(added.members.len(), 4);
    // The add returned once `m` applied it; the leader judges readiness from
    // its raft progress, which lists the learner only once the leader has
    // applied the change too (as etcd's isLearnerReady).
    c.wait_lists(leader, learner.id).await;
    assert_eq!(
        c.member(leader)
            .member_promote(&RequestContext::LOCAL, learner.id)
            .await
            .unwrap_err(),
        Error::LearnerNotReady
    );
    // Errors etcd gives.
    let dup = m
        .member_add(
            &RequestContext::LOCAL,
            MemberAddRequest {
                peer_ur_ls: vec!["http://127.0.0.1:1".into()],
                is_learner: false,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(dup, Error::PeerUrlExists);
    assert_eq!(
        m.member_remove(&RequestContext::LOCAL, 42)
            .await
            .unwrap_err(),
        Error::MemberNotFound
    );
    assert_eq!(
        c.member(leader)
            .member_promote(&RequestContext::LOCAL, c.member(leader).member_id())
            .await
            .unwrap_err(),
        Error::MemberNotLearner
    );
    // MemberUpdate: new peer URLs, checked like additions.
    let updated = m
        .member_update(
            &RequestContext::LOCAL,
            etcd_core::pb::etcdserverpb::MemberUpdateRequest {
                id: learner.id,
                peer_ur_ls: vec!["http://127.0.0.1:2".into()],
            },
        )
        .await
        .unwrap();
    let l = updated.members.iter().find(|x| x.id == learner.id).unwrap();
    assert_eq!(l.peer_ur_ls, ["http://127.0.0.1:2"]);
    let taken = c.url(leader);
    assert_eq!(
        m.member_update(
            &RequestContext::LOCAL,
            etcd_core::pb::etcdserverpb::MemberUpdateRequest {
                id: learner.id,
                peer_ur_ls: vec![taken],
            }
        )
        .await
        .unwrap_err(),
        Error::PeerUrlExists
    );
    assert_eq!(
        m.member_update(
            &RequestContext::LOCAL,
            etcd_core::pb::etcdserverpb::MemberUpdateRequest {
                id: 99,
                peer_ur_ls: vec!["http://127.0.0.1:3".into()],
            }
        )
        .await
        .unwrap_err(),
        Error::MemberNotFound
    );
    for i in 0..3 {
        let list = c
            .member(i)
            .member_list(&RequestContext::LOCAL, true)
            .await
            .unwrap();
        let l = list.members.iter().find(|x| x.id == learner.id).unwrap();
        assert_eq!(l.peer_ur_ls, ["http://127.0.0.1:2"], "member {i}");
    }
    m.member_remove(&RequestContext::LOCAL, learner.id)
        .await
        .unwrap();
    // Remove a follower: it learns it was removed and stops; the rest go on.
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let victim_id = c.member(victim).member_id();
    let mut removed = c.member(victim).removed();
    let after = c
        .member(leader)
        .member_remove(&RequestContext::LOCAL, victim_id)
        .await
        .unwrap();
    assert_eq!(after.members.len(), 2);
    // The removed member stops once it applies its own removal; it may not
    // learn of it when the leader stops replicating to it first (etcd's
    // peers then answer it "removed"; not built here yet), so this only
    // reports.
    let noticed = tokio::time::timeout(Duration::from_secs(5), removed.wait_for(|r| *r)).await;
    eprintln!("removed member noticed its removal: {}", noticed.is_ok());
    c.stop(victim);
    let other = (0..3).find(|i| *i != leader && *i != victim).unwrap();
    put(c.member(other), "k", "v2").await.unwrap();
    for i in [leader, other] {
        let list = c
            .member(i)
            .member_list(&RequestContext::LOCAL, true)
            .await
            .unwrap();
        assert!(list.members.iter().all(|m| m.id != victim_id));
        assert_eq!(get(c.member(i), "k", false).await.as_deref(), Some("v2"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_forward_lease_keepalives_and_promotes_to_the_leader() {
    use etcd_core::pb::etcdserverpb::{LeaseGrantRequest, LeaseTimeToLiveRequest};
    let c = Cluster::start(3);
    let leader = c.wait_leader().await;
    let f = c.member((leader + 1) % 3);
    let granted = f
        .lease_grant(&RequestContext::LOCAL, LeaseGrantRequest { ttl: 30, id: 0 })
        .await
        .unwrap();
    assert_eq!(
        f.lease_renew(&RequestContext::LOCAL, granted.id)
            .await
            .unwrap(),
        30
    );
    let ttl = f
        .lease_time_to_live(
            &RequestContext::LOCAL,
            LeaseTimeToLiveRequest {
                id: granted.id,
                keys: false,
            },
        )
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl, 30);
    assert!(ttl.ttl > 0 && ttl.ttl <= 30, "{ttl:?}");
    assert_eq!(
        f.lease_renew(&RequestContext::LOCAL, 777)
            .await
            .unwrap_err(),
        Error::LeaseNotFound
    );
    // MemberPromote on a follower is answered by the leader.
    c.wait_published(leader).await;
    // etcd's leader checks "ready" (match index within 90% of its own)
    // before "is a learner", so a voter lagging for a moment on a busy
    // machine gets LearnerNotReady first, as with etcd: retry then.
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match f
            .member_promote(&RequestContext::LOCAL, f.member_id())
            .await
        {
            Err(Error::LearnerNotReady) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => break r.unwrap_err(),
        }
    };
    assert_eq!(err, Error::MemberNotLearner);
    assert_eq!(
        f.member_promote(&RequestContext::LOCAL, 4242)
            .await
            .unwrap_err(),
        Error::MemberNotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_and_new_members_catch_up_through_snapshots() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader().await;
    let lagging = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    c.stop(lagging);
    // Far more entries than the log keeps.
    for i in 0..300 {
        put(c.member(other), &format!("k{i:03}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    c.restart(lagging);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(c.member(lagging), "k299", true).await.as_deref() != Some("v299") {
        assert!(Instant::now() < deadline, "lagging member did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A brand-new member: added, then started with state existing on an
    // empty data directory; the leader's snapshot brings everything.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let added = c
        .member(other)
        .member_add(
            &RequestContext::LOCAL,
            MemberAddRequest {
                peer_ur_ls: vec![url.clone()],
                is_learner: false,
            },
        )
        .await
        .unwrap()
        .member
        .unwrap();
    let initial = format!("{},m3={url}", c.config(0).initial_cluster);
    let mut cfg = config("m3", &c.dir().join("m3"), &initial, &url);
    cfg.initial_cluster_state = etcd_core::ClusterState::Existing;
    let joined = Etcd::start_with(
        cfg,
        StartOptions {
            peer_listener: Some(listener),
            ..StartOptions::default()
        },
    )
    .unwrap();
    assert_eq!(joined.member_id(), added.id);
    assert_eq!(joined.cluster_id(), c.member(0).cluster_id());
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(&joined, "k299", true).await.as_deref() != Some("v299") {
        assert!(Instant::now() < deadline, "new member did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rev = put(&joined, "from-new", "x").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut hashes = vec![joined.hash_kv(&RequestContext::LOCAL, rev).map(|h| h.hash)];
        for i in 0..3 {
            hashes.push(
                c.member(i)
                    .hash_kv(&RequestContext::LOCAL, rev)
                    .map(|h| h.hash),
            );
        }
        if hashes.iter().all(|h| h.is_ok() && *h == hashes[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "hashes differ: {hashes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let names: Vec<String> = joined
        .member_list(&RequestContext::LOCAL, true)
        .await
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(sorted(&names), ["m0", "m1", "m2", "m3"]);
    std::thread::spawn(move || joined.stop()).join().unwrap();
}

/// A caller presenting `token`.
fn with_token(token: &str) -> RequestContext {
    RequestContext {
        token: Some(token.into()),
        ..RequestContext::default()
    }
}

async fn login(e: &Etcd, user: &str, password: &str) -> RequestContext {
    let r = AuthenticateRequest {
        name: user.into(),
        password: password.into(),
    };
    with_token(
        &e.authenticate(&RequestContext::default(), r)
            .await
            .unwrap()
            .token,
    )
}

async fn put_as(e: &Etcd, ctx: &RequestContext, k: &str) -> Result<(), Error> {
    let p = PutRequest {
        key: k.as_bytes().to_vec().into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    };
    e.put(ctx, p).await.map(|_| ())
}

/// A linearizable get: it sees every change committed before it.
async fn get_as(e: &Etcd, ctx: &RequestContext, k: &str) -> Result<(), Error> {
    let r = RangeRequest {
        key: k.as_bytes().to_vec().into(),
        ..Default::default()
    };
    e.range(ctx, r).await.map(|_| ())
}

/// Users, roles and permissions are raft state: a token made on one member
/// works on the others (each waits until it applied the Authenticate
/// entry), a revoked role stops the user everywhere, and a member that was
/// down while it happened learns it from a snapshot and keeps it across a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_state_reaches_every_member() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader().await;
    let (a, b) = (leader, (leader + 1) % 3);
    let lagging = (leader + 2) % 3;
    let admin = &RequestContext::LOCAL;
    let m = c.member(a);
    for (user, pw) in [("root", "rootpw"), ("alice", "alicepw")] {
        let r = AuthUserAddRequest {
            name: user.into(),
            password: pw.into(),
            ..Default::default()
        };
        m.user_add(admin, r).await.unwrap();
    }
    for (user, role) in [("root", "root"), ("alice", "reader")] {
        if role != "root" {
            let r = AuthRoleAddRequest { name: role.into() };
            m.role_add(admin, r).await.unwrap();
        }
        let r = AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        m.user_grant_role(admin, r).await.unwrap();
    }
    let grant = AuthRoleGrantPermissionRequest {
        name: "reader".into(),
        perm: Some(Permission {
            perm_type: PermType::Read as i32,
            key: b"a".to_vec().into(),
            range_end: b"c".to_vec().into(),
        }),
    };
    m.role_grant_permission(admin, grant).await.unwrap();
    m.auth_enable(admin).await.unwrap();

    // Tokens made on `a`, used on `b` right away.
    let root = login(m, "root", "rootpw").await;
    let alice = login(m, "alice", "alicepw").await;
    put_as(c.member(b), &root, "b1").await.unwrap();
    get_as(c.member(b), &alice, "b1").await.unwrap();
    assert_eq!(
        put_as(c.member(b), &alice, "b1").await,
        Err(Error::PermissionDenied)
    );
    assert_eq!(
        put_as(c.member(b), &RequestContext::default(), "b1").await,
        Err(Error::UserEmpty)
    );
    assert_eq!(
        get_as(c.member(b), &with_token("bogus.1"), "b1").await,
        Err(Error::InvalidAuthToken)
    );
    let wrong = AuthenticateRequest {
        name: "alice".into(),
        password: "nope".into(),
    };
    assert_eq!(
        m.authenticate(&RequestContext::default(), wrong)
            .await
            .map(|_| ()),
        Err(Error::AuthFailed)
    );

    // While `lagging` is down: alice loses her role, and enough writes
    // follow that `lagging` can only catch up from a snapshot.
    c.stop(lagging);
    let revoke = AuthUserRevokeRoleRequest {
        name: "alice".into(),
        role: "reader".into(),
    };
    c.member(a).user_revoke_role(&root, revoke).await.unwrap();
    assert_eq!(
        get_as(c.member(b), &alice, "b1").await,
        Err(Error::PermissionDenied)
    );
    for i in 0..120 {
        put(c.member(a), &format!("fill{i}"), "x").await.unwrap();
    }
    c.restart(lagging);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get(c.member(lagging), "fill119", true).await.is_none() {
        assert!(Instant::now() < deadline, "lagging member did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alice = login(c.member(lagging), "alice", "alicepw").await;
    assert_eq!(
        get_as(c.member(lagging), &alice, "b1").await,
        Err(Error::PermissionDenied)
    );
    let root = login(c.member(lagging), "root", "rootpw").await;
    get_as(c.member(lagging), &root, "b1").await.unwrap();
    // And across a restart of every member.
    for i in 0..3 {
        c.stop(i);
    }
    for i in 0..3 {
        c.restart(i);
    }
    let leader = c.wait_leader().await;
    let m = c.member(leader);
    assert_eq!(
        put_as(m, &RequestContext::default(), "x").await,
        Err(Error::UserEmpty)
    );
    let root = login(m, "root", "rootpw").await;
    put_as(m, &root, "x").await.unwrap();
}

/// Gives member `m` one revision nobody else has, behind raft's back (what
/// a corrupted store looks like to its peers).
fn corrupt(m: &Etcd) {
    let store = m.store();
    let mut w = store.write();
    w.put(b"evil", b"x", 0).unwrap();
    w.end(store.consistent_index()).unwrap();
}

/// Waits until member `i` serves `k` = `v` locally.
async fn wait_value(c: &Cluster, i: usize, k: &str, v: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(c.member(i), k, true).await.as_deref() != Some(v) {
        assert!(Instant::now() < deadline, "member {i}: {k} != {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_check_raises_corrupt_and_stops_writes() {
    let c = Cluster::start_tweaked(3, |cfg| {
        cfg.corrupt_check_time = Duration::from_millis(100);
    });
    let leader = c.wait_leader().await;
    put(c.member(leader), "k", "v").await.unwrap();
    let f = (leader + 1) % 3;
    wait_value(&c, f, "k", "v").await;
    corrupt(c.member(f));
    // The leader's next pass finds the follower ahead of it: CORRUPT,
    // applied by every member.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(0..3).all(|i| {
        c.member(i)
            .active_alarms()
            .iter()
            .any(|a| a.alarm == etcd_core::pb::etcdserverpb::AlarmType::Corrupt as i32)
    }) {
        assert!(
            Instant::now() < deadline,
            "no CORRUPT alarm on every member"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        c.member(leader).active_alarms()[0].member_id,
        0,
        "etcd 3.4 raises it as member 0"
    );
    let err = put(c.member(leader), "k", "w").await.unwrap_err();
    assert_eq!(err, Error::Corrupt);
    assert_eq!(err.code(), etcd_core::Code::DataLoss);
    assert_eq!(err.to_string(), "etcdserver: corrupt cluster");
    // Reads go on.
    assert_eq!(
        get(c.member(leader), "k", false).await.as_deref(),
        Some("v")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_corrupt_check_refuses_a_diverged_cluster() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader().await;
    put(c.member(leader), "k", "v").await.unwrap();
    let f = (leader + 1) % 3;
    wait_value(&c, f, "k", "v").await;
    // The follower's next revision differs from everyone else's.
    corrupt(c.member(f));
    put(c.member(leader), "k2", "v2").await.unwrap();
    wait_value(&c, f, "k2", "v2").await;
    let h = (leader + 2) % 3;
    wait_value(&c, h, "k2", "v2").await;
    c.stop(h);
    let err =
        c.0.restart_with(h, |cfg| cfg.initial_corrupt_check = true)
            .expect_err("the check refuses to start");
    assert!(
        err.to_string()
            .contains("found data inconsistency with peers"),
        "{err}"
    );
    // Without the check the member starts (etcd's default).
    c.restart(h);
}

/// `etcd_core::integration::Cluster` grows and shrinks: a learner added,
/// caught up and promoted, a voter added, an original member removed; the
/// data written before is on every new member and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_cluster_adds_and_removes_members() {
    let mut c = integration::Cluster::start(3).unwrap();
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    put(c.member(leader), "before", "1").await.unwrap();

    let learner = c.add_member(true).await.unwrap();
    assert_eq!(learner, 3);
    let id = c.member(learner).member_id();
    let listed = c
        .member(leader)
        .member_list(&RequestContext::LOCAL, false)
        .await
        .unwrap();
    assert!(listed.members.iter().any(|m| m.id == id && m.is_learner));
    // Promotion waits until the learner is in sync with the leader.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap();
        match c
            .member(leader)
            .member_promote(&RequestContext::LOCAL, id)
            .await
        {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(
                    matches!(
                        e,
                        Error::LearnerNotReady | Error::NoLeader | Error::LeaderChanged
                    ),
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("promote: {e}"),
        }
    }
    let voter = c.add_member(false).await.unwrap();
    c.remove_member(0).await.unwrap();
    assert!(c.try_member(0).is_none());
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    put(c.member(leader), "after", "2").await.unwrap();
    for i in [learner, voter] {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while get(c.member(i), "after", true).await.is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "m{i} did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(get(c.member(i), "before", true).await.as_deref(), Some("1"));
        assert!(!c.member(i).is_learner());
    }
    let members = c
        .member(leader)
        .member_list(&RequestContext::LOCAL, true)
        .await
        .unwrap();
    assert_eq!(members.members.len(), 4);
}

/// `integration::Cluster::isolate`/`heal`: the isolated leader loses its
/// quorum, the majority elects another and takes writes, the isolated
/// member cannot commit; healed, it follows and has the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integration_cluster_partitions_a_member() {
    let mut c = integration::Cluster::start(3).unwrap();
    let old = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    put(c.member(old), "k", "before").await.unwrap();
    c.isolate(old);
    let rest: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let new = c
        .wait_leader_of(&rest, Duration::from_secs(10))
        .await
        .unwrap();
    assert_ne!(new, old);
    put(c.member(new), "k", "during").await.unwrap();
    // The isolated member cannot commit: its write fails (no leader or
    // timeout), and its serializable read still shows the old value.
    let ctx = RequestContext {
        timeout: Some(Duration::from_millis(500)),
        ..RequestContext::LOCAL
    };
    let req = PutRequest {
        key: "k".into(),
        value: "isolated".into(),
        ..Default::default()
    };
    let e = c.member(old).put(&ctx, req).await.unwrap_err();
    assert_eq!(e.code(), etcd_core::Code::Unavailable, "{e}");
    assert_eq!(
        get(c.member(old), "k", true).await.as_deref(),
        Some("before")
    );

    // A cut survives a restart of the isolated member.
    c.stop(old);
    c.restart(old).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        get(c.member(old), "k", true).await.as_deref(),
        Some("before")
    );

    c.heal();
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    assert!(rest.contains(&leader) || leader == old);
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(c.member(old), "k", true).await.as_deref() != Some("during") {
        assert!(
            Instant::now() < deadline,
            "the healed member did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
