//! `loadgen`: a load generator speaking etcd's v3 gRPC API, modelled on
//! etcd's `benchmark` tool, so the same command measures this server and
//! the real etcd.
//!
//! ```text
//! loadgen --endpoints http://127.0.0.1:2379 --conns 1 --clients 1 \
//!     --total 10000 --key-size 8 --val-size 256 put
//! loadgen --endpoints http://127.0.0.1:2379 --clients 16 --total 10000 range --consistency s
//! loadgen --endpoints http://127.0.0.1:2379 --conns 8 --clients 64 --total 10000 txn-put
//! loadgen --endpoints https://127.0.0.1:2379 --cacert ca.pem --cert c.pem --key c-key.pem \
//!     --user root:pw --clients 16 put
//! ```
//! Prints `name: value` lines: requests, errors, qps, latency percentiles
//! and the generator's own CPU time per request.
//!
//! `--client h2` (the default) sends each call straight over the `h2`
//! crate (`benches::h2_client`): the generator shares the machine's cores
//! with the server it measures, and tonic's client cost about as much CPU
//! per put as our server. `--client tonic` is the generated tonic client,
//! as the Rust `etcd-client` crate does it.

use benches::h2_client::GrpcConn;
use benches::{key, ClientResult};
use clap::{Parser, Subcommand};
use etcd_core::pb::etcdserverpb::{
    compare, request_op, response_op, AuthenticateRequest, AuthenticateResponse, Compare,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};
use etcd_server::rpc::etcdserverpb::auth_client::AuthClient;
use etcd_server::rpc::etcdserverpb::kv_client::KvClient;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(about = "Load generator for etcd's v3 gRPC API")]
struct Args {
    /// Client URL(s) of the server, comma-separated (connections are spread over them).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoints: String,
    /// Number of gRPC connections.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Number of concurrent clients (each issues one request at a time).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Total number of requests.
    #[arg(long, default_value_t = 10_000)]
    total: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 8)]
    key_size: usize,
    /// Value size in bytes (put).
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Keys are drawn from [0, key-space-size).
    #[arg(long, default_value_t = 100_000)]
    key_space_size: u64,
    /// Use keys 0,1,2,... in order instead of random ones.
    #[arg(long)]
    sequential_keys: bool,
    /// Seed of the key choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// CA certificate file for https:// endpoints (etcdctl's --cacert).
    #[arg(long)]
    cacert: Option<std::path::PathBuf>,
    /// Client certificate file (etcdctl's --cert).
    #[arg(long)]
    cert: Option<std::path::PathBuf>,
    /// Client key file (etcdctl's --key).
    #[arg(long)]
    key: Option<std::path::PathBuf>,
    /// `user:password`: authenticate once, then send the token with every
    /// request (etcdctl's --user).
    #[arg(long)]
    user: Option<String>,
    /// The gRPC client: `h2` (lean, straight on the h2 crate) or `tonic`.
    #[arg(long, value_enum, default_value_t = ClientKind::H2)]
    client: ClientKind,
    #[command(subcommand)]
    op: Op,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum ClientKind {
    H2,
    Tonic,
}

/// One connection, through either transport (clones share it).
#[derive(Clone)]
enum Client {
    H2(GrpcConn),
    /// The KV client and its channel (for Authenticate).
    Tonic(KvClient<Channel>, Channel),
}

/// `Client::$method`: the KV call `$method` through either transport.
macro_rules! kv_call {
    ($method:ident, $req:ty, $resp:ty, $path:literal) => {
        async fn $method(
            &mut self,
            r: $req,
            token: &Option<MetadataValue<Ascii>>,
        ) -> Result<$resp, String> {
            match self {
                Client::H2(c) => c
                    .unary($path, &r, h2_token(token))
                    .await
                    .map_err(|e| format!("{e:#}")),
                Client::Tonic(c, _) => c
                    .$method(with_token(r, token))
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|e| e.to_string()),
            }
        }
    };
}

impl Client {
    kv_call!(put, PutRequest, PutResponse, "/etcdserverpb.KV/Put");
    kv_call!(range, RangeRequest, RangeResponse, "/etcdserverpb.KV/Range");
    kv_call!(txn, TxnRequest, TxnResponse, "/etcdserverpb.KV/Txn");
}

/// The token as an h2 header value.
fn h2_token(token: &Option<MetadataValue<Ascii>>) -> Option<&str> {
    token.as_ref().and_then(|t| t.to_str().ok())
}

#[derive(Subcommand, Debug, Clone, Copy)]
enum Op {
    /// Put random or sequential keys.
    Put,
    /// Get single keys (run `put` first to fill the key space).
    Range {
        /// l: linearizable, s: serializable.
        #[arg(long, default_value = "l")]
        consistency: char,
    },
    /// Kubernetes' update: `Txn(If mod_revision(k) == last seen,
    /// Then put(k), Else get(k))`. Each client remembers the mod revision
    /// it last saw of each key (0 at first: a create); a failed compare
    /// (another client wrote the key) reads it, as the apiserver's retry
    /// does. Both outcomes count as a request.
    TxnPut,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = benches::TlsFiles {
        cacert: args.cacert.clone(),
        cert: args.cert.clone(),
        key: args.key.clone(),
    };
    // One connection per --conns, through the chosen transport.
    let clients: Vec<Client> = match args.client {
        ClientKind::H2 => {
            let mut conns = Vec::new();
            for url in benches::spread(&args.endpoints, args.conns) {
                conns.push(Client::H2(GrpcConn::connect(url, &tls).await?));
            }
            conns
        }
        ClientKind::Tonic => benches::connect_with(&args.endpoints, args.conns, &tls)
            .await?
            .into_iter()
            .map(|ch| {
                Client::Tonic(
                    KvClient::new(ch.clone()).max_decoding_message_size(usize::MAX),
                    ch,
                )
            })
            .collect(),
    };
    let token = match &args.user {
        Some(u) => {
            let (name, password) = u.split_once(':').unwrap_or((u, ""));
            let auth = AuthenticateRequest {
                name: name.into(),
                password: password.into(),
            };
            let r: AuthenticateResponse = match &clients[0] {
                Client::H2(c) => {
                    c.unary("/etcdserverpb.Auth/Authenticate", &auth, None)
                        .await?
                }
                Client::Tonic(_, ch) => AuthClient::new(ch.clone())
                    .authenticate(auth)
                    .await?
                    .into_inner(),
            };
            Some(r.token.parse::<MetadataValue<Ascii>>()?)
        }
        None => None,
    };
    let cpu_before = process_cpu_us();
    let next = Arc::new(AtomicU64::new(0));
    let value = vec![b'v'; args.val_size];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients.max(1) {
        let client = clients[c % clients.len()].clone();
        let (next, value, token) = (next.clone(), value.clone(), token.clone());
        let (total, key_size, space, seq, op) = (
            args.total,
            args.key_size,
            args.key_space_size.max(1),
            args.sequential_keys,
            args.op,
        );
        let seed = args.seed.wrapping_add(c as u64);
        tasks.push(tokio::spawn(async move {
            run_client(
                client, next, total, key_size, space, seq, seed, op, value, token,
            )
            .await
        }));
    }
    let summary = benches::join_clients(tasks, start).await?;
    print!("{}", summary.report());
    // The generator's own CPU: on a machine it shares with the server, what
    // it burns per request is taken from the server's budget.
    if let (Some(before), Some(after)) = (cpu_before, process_cpu_us()) {
        let n = (summary.ok + summary.errors).max(1);
        println!(
            "loadgen_cpu_us_per_request: {:.1}",
            (after - before) as f64 / n as f64
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_client(
    mut client: Client,
    next: Arc<AtomicU64>,
    total: u64,
    key_size: usize,
    space: u64,
    sequential: bool,
    seed: u64,
    op: Op,
    value: Vec<u8>,
    token: Option<MetadataValue<Ascii>>,
) -> ClientResult {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // TxnPut: the mod revision this client last saw of each key.
    let mut seen: HashMap<bytes::Bytes, i64> = HashMap::new();
    let mut hist = Histogram::<u64>::new(3)?;
    let (mut ok, mut errors) = (0u64, 0u64);
    let value = bytes::Bytes::from(value);
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= total {
            break;
        }
        let k = bytes::Bytes::from(key(
            if sequential {
                n % space
            } else {
                rng.gen_range(0..space)
            },
            key_size,
        ));
        let t = Instant::now();
        let r = match op {
            Op::Put => client
                .put(
                    PutRequest {
                        key: k,
                        value: value.clone(),
                        ..Default::default()
                    },
                    &token,
                )
                .await
                .map(|_| ()),
            Op::Range { consistency } => client
                .range(
                    RangeRequest {
                        key: k,
                        serializable: consistency == 's',
                        ..Default::default()
                    },
                    &token,
                )
                .await
                .map(|_| ()),
            Op::TxnPut => {
                let last = seen.get(&k).copied().unwrap_or(0);
                let txn = TxnRequest {
                    compare: vec![Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Mod as i32,
                        key: k.clone(),
                        target_union: Some(compare::TargetUnion::ModRevision(last)),
                        ..Default::default()
                    }],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: k.clone(),
                            value: value.clone(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![RequestOp {
                        request: Some(request_op::Request::RequestRange(RangeRequest {
                            key: k.clone(),
                            ..Default::default()
                        })),
                    }],
                };
                client.txn(txn, &token).await.map(|r| {
                    let rev = if r.succeeded {
                        r.header.map_or(0, |h| h.revision)
                    } else {
                        match r.responses.first().and_then(|o| o.response.as_ref()) {
                            Some(response_op::Response::ResponseRange(g)) => {
                                g.kvs.first().map_or(0, |kv| kv.mod_revision)
                            }
                            _ => 0,
                        }
                    };
                    seen.insert(k.clone(), rev);
                })
            }
        };
        match r {
            Ok(()) => {
                hist.record(t.elapsed().as_micros() as u64)?;
                ok += 1;
            }
            Err(e) => {
                if errors == 0 {
                    eprintln!("first error: {e}");
                }
                errors += 1;
            }
        }
    }
    Ok((hist, ok, errors))
}

/// `m` with the auth token, as clientv3 sends it (metadata `token`).
fn with_token<T>(m: T, token: &Option<MetadataValue<Ascii>>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    if let Some(t) = token {
        r.metadata_mut().insert("token", t.clone());
    }
    r
}

/// This process's CPU time so far (user + system, all threads), in
/// microseconds, from `/proc/self/stat` (fields 14 and 15, in USER_HZ
/// ticks, which Linux fixes at 100 per second); None off Linux.
fn process_cpu_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3: utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 10_000)
}
