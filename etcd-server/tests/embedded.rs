//! etcd's gRPC API served by a program that embeds the engine
//! (`etcd_server::grpc`): on its own listener, to the real `etcdctl` and
//! the Rust `etcd-client` crate, and through the in-memory channel (no
//! socket) to our tonic clients and to `etcd-client`.

mod common;

use etcd_core::{Config, Etcd};
use etcd_server::grpc::{serve, InMemoryChannel};
use etcd_server::rpc::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, watch_request::RequestUnion, PutRequest,
    RangeRequest, WatchCreateRequest, WatchRequest,
};
use std::time::Duration;

async fn start(dir: &std::path::Path) -> Etcd {
    let mut cfg = Config::single("embedded", dir.join("data"));
    cfg.heartbeat_interval = Duration::from_millis(10);
    cfg.election_timeout = Duration::from_millis(100);
    let etcd = Etcd::start(cfg).unwrap();
    tokio::time::timeout(Duration::from_secs(10), etcd.ready())
        .await
        .expect("ready within 10 s")
        .unwrap();
    etcd
}

/// `etcdctl --endpoints endpoint args...` (off the runtime's threads).
async fn etcdctl(endpoint: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(common::etcdctl_path());
    cmd.env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint])
        .args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_on_a_listener_to_etcdctl_and_etcd_client() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = start(dir.path()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(etcd.clone(), listener, async {
        let _ = stopped.await;
    }));

    let out = etcdctl(&endpoint, &["put", "from/etcdctl", "1"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    for args in [
        &["endpoint", "health"][..],
        &["endpoint", "status"],
        &["endpoint", "hashkv"],
    ] {
        let out = etcdctl(&endpoint, args).await;
        assert!(out.status.success(), "{args:?}: {out:?}");
    }

    let mut client = etcd_client::Client::connect([&endpoint], None)
        .await
        .unwrap();
    client.put("from/client", "2", None).await.unwrap();
    let opts = etcd_client::GetOptions::new().with_prefix();
    let resp = client.get("from/", Some(opts)).await.unwrap();
    let kvs: Vec<(&str, &str)> = resp
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap(), kv.value_str().unwrap()))
        .collect();
    assert_eq!(kvs, [("from/client", "2"), ("from/etcdctl", "1")]);
    // The embedding program's own writes are seen by both.
    let c = etcd_core::client::Client::new(etcd.clone());
    c.put("from/program", "3", None).await.unwrap();
    let out = etcdctl(&endpoint, &["get", "from/program", "--print-value-only"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3\n");
    // etcd's errors, codes and messages, through the served API.
    let err = client.lease_revoke(12345).await.unwrap_err();
    match err {
        etcd_client::Error::GRpcStatus(s) => {
            assert_eq!(s.code(), tonic::Code::NotFound);
            assert_eq!(s.message(), "etcdserver: requested lease not found");
        }
        other => panic!("{other:?}"),
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    etcd.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_channel_serves_tonic_and_etcd_client() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = start(dir.path()).await;
    let channel = InMemoryChannel::new(&etcd);

    // Our generated tonic clients: a unary call and a watch stream.
    let mut kv = KvClient::new(channel.clone());
    let mut watch = WatchClient::new(channel.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: "w".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut events = watch
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let created = events.message().await.unwrap().unwrap();
    assert!(created.created);
    let put = PutRequest {
        key: "w".into(),
        value: "v".into(),
        ..Default::default()
    };
    let rev = kv
        .put(put)
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let got = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.events[0].kv.as_ref().unwrap().mod_revision, rev);
    let range = RangeRequest {
        key: "w".into(),
        ..Default::default()
    };
    let resp = kv.range(range).await.unwrap().into_inner();
    assert_eq!(&resp.kvs[0].value[..], b"v");
    drop(tx);

    // The etcd-client crate over the same channel (feature raw-channel).
    let custom = etcd_client::Channel::Custom(tower::util::BoxCloneSyncService::new(channel));
    let mut client = etcd_client::Client::from_channel(custom, None)
        .await
        .unwrap();
    client.put("c", "1", None).await.unwrap();
    let resp = client.get("c", None).await.unwrap();
    assert_eq!(resp.kvs()[0].value(), b"1");
    let mut stream = client.watch("c", None).await.unwrap();
    // The watch exists (and watches from the current revision) once its
    // creation is answered: only then may the put go (else it can land
    // before the watch and the event is never sent).
    let created = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(created.created());
    client.put("c", "2", None).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.events()[0].kv().unwrap().value(), b"2");
    let lease = client.lease_grant(5, None).await.unwrap().id();
    let lock = client
        .lock("l", Some(etcd_client::LockOptions::new().with_lease(lease)))
        .await
        .unwrap();
    assert!(lock.key().starts_with(b"l/"));
    let err = client
        .get(
            "c",
            Some(etcd_client::GetOptions::new().with_revision(1_000_000)),
        )
        .await
        .unwrap_err();
    match err {
        etcd_client::Error::GRpcStatus(s) => {
            assert_eq!(s.code(), tonic::Code::OutOfRange);
            assert_eq!(
                s.message(),
                "etcdserver: mvcc: required revision is a future revision"
            );
        }
        other => panic!("{other:?}"),
    }
    etcd.stop();
}
