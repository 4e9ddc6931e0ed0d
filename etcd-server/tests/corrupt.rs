//! A CORRUPT alarm (raised here through `Maintenance.Alarm` ACTIVATE, as
//! a corruption check would), on this server and the real etcd 3.4 side by
//! side: writes, compaction and lease grants are refused with etcd's
//! "corrupt cluster", reads and `alarm list` work, `/health` says so, and
//! `alarm disarm` brings writes back. (The checks that raise it are tested
//! in etcd-core's `tests/cluster.rs`, where a member's store can be
//! corrupted behind raft's back.)

mod common;

use common::cluster::error_line;
use common::{Kind, Server};
use etcd_server::rpc::etcdserverpb::alarm_request::AlarmAction;
use etcd_server::rpc::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_server::rpc::etcdserverpb::{AlarmRequest, AlarmType};

fn session(kind: Kind) -> Vec<(String, String)> {
    let s = Server::start(kind);
    let mut log = Vec::new();
    let run = |args: &[&str]| {
        let o = s.etcdctl(args);
        if o.status.success() {
            String::from_utf8_lossy(&o.stdout).into_owned()
        } else {
            error_line(&o)
        }
    };
    let step = |log: &mut Vec<(String, String)>, name: &str, args: &[&str]| {
        log.push((name.to_string(), run(args)));
    };
    step(&mut log, "put before", &["put", "k", "v"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut m = MaintenanceClient::new(s.channel().await);
        m.alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: 0,
            alarm: AlarmType::Corrupt as i32,
        })
        .await
        .unwrap();
    });
    step(&mut log, "put", &["put", "k", "w"]);
    step(&mut log, "del", &["del", "k"]);
    step(&mut log, "compact", &["compact", "1"]);
    step(&mut log, "lease grant", &["lease", "grant", "10"]);
    step(&mut log, "get", &["get", "k", "--print-value-only"]);
    step(&mut log, "alarm list", &["alarm", "list"]);
    let url = format!("{}/health", s.client_url);
    let o = std::process::Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let code = text.rsplit('\n').next().unwrap_or_default().to_string();
    log.push(("health status".into(), code));
    step(&mut log, "disarm", &["alarm", "disarm"]);
    step(&mut log, "put after", &["put", "k", "x"]);
    step(&mut log, "get after", &["get", "k", "--print-value-only"]);
    log
}

#[test]
fn corrupt_alarm_matches_etcd() {
    let ours = session(Kind::Ours);
    let real = session(Kind::Real);
    assert_eq!(ours, real);
    assert!(ours
        .iter()
        .any(|(n, o)| n == "put" && o == "Error: etcdserver: corrupt cluster"));
}
