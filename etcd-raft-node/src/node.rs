//! The raft thread: owns a [`Peer`], feeds it commands, peer messages and
//! ticks, and hands committed entries to the application.
//!
//! The thread sleeps in a `mio` poll of its own, on three sources: its
//! mailbox (a crossbeam channel of [`Command`]s, with a waker), the peer
//! sockets the transport handed over ([`RaftNode::adopt_stream`]: it reads
//! their frames itself, see `tcp_inbound`), and the next tick's deadline
//! (the poll's timeout). A sender pays for a wake-up (an eventfd write)
//! only while the thread sleeps or is about to (`Mailbox::parked`):
//!
//! ```text
//! sender:      push command; fence; if parked { wake }
//! raft thread: parked = true; fence; if mailbox empty { poll } ; parked = false
//! ```
//!
//! With both fences, either the sender sees `parked` and wakes the poll,
//! or the raft thread sees the command and does not sleep.

use crate::config::NodeConfig;
use crate::peer::{Peer, Progress, ProposeCallback, ReadCallback};
use crate::storage::WalStorage;
use crate::tcp_inbound::{InboundStream, ReadOutcome};
use crate::transport::{NoopTransport, Transport};
use crate::types::{NodeStatus, ToApply};
use crate::{Error, Result};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use parking_lot::RwLock;
use raft::eraftpb::{ConfChange, ConfState, Message};
use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

enum Command {
    Propose(Vec<u8>, Option<ProposeCallback>),
    /// [`Peer::propose_as_leader`]: data and the term it was decided in.
    ProposeAsLeader(Vec<u8>, u64),
    ProposeConfChange(ConfChange, Option<ProposeCallback>),
    ApplyConfChange(ConfChange, Sender<Result<ConfState>>),
    TransferLeader(u64),
    Progress(Sender<Vec<Progress>>),
    Read(ReadCallback),
    Step(Box<Message>),
    CompactLog(u64),
    ReportSnapshot(u64, bool),
    ReportUnreachable(u64),
    /// A peer's message stream for the raft thread to read.
    Adopt(Box<InboundStream>),
    Stop,
}

/// The poll token of the mailbox's waker; peer streams take 1, 2, ...
const WAKER: mio::Token = mio::Token(0);

/// Where commands for the raft thread go (module doc).
struct Mailbox {
    tx: Sender<Command>,
    waker: mio::Waker,
    /// Set while the raft thread sleeps in its poll or is about to: only
    /// then must a sender wake it.
    parked: Arc<AtomicBool>,
}

impl Mailbox {
    /// Queues `cmd`, waking the raft thread if it sleeps; gives `cmd`
    /// back when the thread has stopped.
    fn send(&self, cmd: Command) -> std::result::Result<(), Command> {
        self.tx.send(cmd).map_err(|e| e.0)?;
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) {
            let _ = self.waker.wake();
        }
        Ok(())
    }
}

/// Handle to a running raft member. Cheap to share behind an `Arc`.
pub struct RaftNode {
    mailbox: Mailbox,
    /// The WAL's metrics, read by `/metrics` while the raft thread owns it.
    wal_metrics: etcd_wal::WalMetricsReader,
    status: Arc<RwLock<NodeStatus>>,
    applied: Arc<AtomicU64>,
    thread: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

impl RaftNode {
    /// Starts the raft thread over an opened storage. Committed entries are
    /// sent to `apply_tx`; `transport` defaults to [`NoopTransport`].
    pub fn start(
        cfg: NodeConfig,
        storage: WalStorage,
        transport: Option<Arc<dyn Transport>>,
        apply_tx: Sender<ToApply>,
    ) -> Result<RaftNode> {
        cfg.validate()?;
        let wal_metrics = storage.wal().metrics_reader();
        let mut peer = Peer::new(&cfg, storage)?;
        if cfg.voters == [cfg.id] {
            peer.campaign()?;
        }
        let transport = transport.unwrap_or_else(|| Arc::new(NoopTransport));
        let (tx, rx) = crossbeam_channel::unbounded();
        let io_err = |what: &str, e: std::io::Error| Error::Config(format!("{what}: {e}"));
        let poll = mio::Poll::new().map_err(|e| io_err("cannot create the raft poll", e))?;
        let waker = mio::Waker::new(poll.registry(), WAKER)
            .map_err(|e| io_err("cannot create the raft waker", e))?;
        let parked = Arc::new(AtomicBool::new(false));
        let status = Arc::new(RwLock::new(NodeStatus {
            leader_id: 0,
            ..peer.status()
        }));
        publish_status(&status, &peer);
        let applied = Arc::new(AtomicU64::new(cfg.applied));
        let thread = {
            let wait = Wait {
                rx,
                poll,
                parked: parked.clone(),
                tick: cfg.tick_interval,
                streams: Streams::default(),
            };
            let status = status.clone();
            let applied = applied.clone();
            std::thread::Builder::new()
                .name(format!("raft-{:x}", cfg.id))
                .spawn(move || run(peer, wait, transport, apply_tx, status, applied))
                .map_err(|e| Error::Config(format!("cannot start raft thread: {e}")))?
        };
        Ok(RaftNode {
            mailbox: Mailbox { tx, waker, parked },
            wal_metrics,
            status,
            applied,
            thread: parking_lot::Mutex::new(Some(thread)),
        })
    }

    /// Proposes `data`; `ack` learns whether raft took it (not whether it
    /// committed: committed entries arrive on the apply channel).
    pub fn propose(&self, data: Vec<u8>, ack: Option<ProposeCallback>) {
        if let Err(Command::Propose(_, Some(ack))) = self.mailbox.send(Command::Propose(data, ack))
        {
            ack(Err(Error::Stopped));
        }
    }

    /// Proposes `data` only if, when the raft thread takes it, this member
    /// still leads in `term` (see [`Peer::propose_as_leader`]); otherwise
    /// it is dropped, never forwarded. Nobody learns the outcome.
    pub fn propose_as_leader(&self, data: Vec<u8>, term: u64) {
        let _ = self.mailbox.send(Command::ProposeAsLeader(data, term));
    }

    /// Proposes a membership change; see [`Peer::propose_conf_change`].
    pub fn propose_conf_change(&self, cc: ConfChange, ack: Option<ProposeCallback>) {
        if let Err(Command::ProposeConfChange(_, Some(ack))) =
            self.mailbox.send(Command::ProposeConfChange(cc, ack))
        {
            ack(Err(Error::Stopped));
        }
    }

    /// Applies a committed membership change (called by the application,
    /// in log order, when it applies the entry); returns the new
    /// configuration. Blocks until the raft thread has done it.
    pub fn apply_conf_change(&self, cc: ConfChange) -> Result<ConfState> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.mailbox
            .send(Command::ApplyConfChange(cc, tx))
            .map_err(|_| Error::Stopped)?;
        rx.recv().map_err(|_| Error::Stopped)?
    }

    /// Asks the leader to transfer leadership to `to`.
    pub fn transfer_leader(&self, to: u64) {
        let _ = self.mailbox.send(Command::TransferLeader(to));
    }

    /// Replication progress of every member (empty unless this member
    /// leads). Blocks until the raft thread answers.
    pub fn progress(&self) -> Result<Vec<Progress>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.mailbox
            .send(Command::Progress(tx))
            .map_err(|_| Error::Stopped)?;
        rx.recv().map_err(|_| Error::Stopped)
    }

    /// Asks for a linearizable read index; `done` gets the index to wait for.
    pub fn read_index(&self, done: ReadCallback) {
        if let Err(Command::Read(done)) = self.mailbox.send(Command::Read(done)) {
            done(Err(Error::Stopped));
        }
    }

    /// Hands a message from another member to raft.
    pub fn step(&self, msg: Message) {
        let _ = self.mailbox.send(Command::Step(Box::new(msg)));
    }

    /// Hands a peer's message stream to the raft thread, which reads it
    /// from now on (see `tcp_inbound`); false (the stream closed) when the
    /// node has stopped.
    pub fn adopt_stream(&self, stream: InboundStream) -> bool {
        self.mailbox.send(Command::Adopt(Box::new(stream))).is_ok()
    }

    /// Compacts the raft log up to `index`, which the state machine has
    /// durably applied (flushed), and purges old WAL segments.
    pub fn compact_log(&self, index: u64) {
        let _ = self.mailbox.send(Command::CompactLog(index));
    }

    /// Reports whether the snapshot sent to member `to` was installed (see
    /// [`Peer::report_snapshot`]); transports call it.
    pub fn report_snapshot(&self, to: u64, ok: bool) {
        let _ = self.mailbox.send(Command::ReportSnapshot(to, ok));
    }

    /// Reports that a message to member `to` could not be sent (see
    /// [`Peer::report_unreachable`]).
    pub fn report_unreachable(&self, to: u64) {
        let _ = self.mailbox.send(Command::ReportUnreachable(to));
    }

    /// Reports that the state machine applied every entry up to `index`.
    pub fn set_applied(&self, index: u64) {
        self.applied.fetch_max(index, Ordering::AcqRel);
    }

    /// The metrics of the member's WAL (fsync latencies, bytes written).
    pub fn wal_metrics(&self) -> etcd_wal::WalMetrics {
        self.wal_metrics.read()
    }

    /// The member's raft status as of the last handled `Ready`.
    pub fn status(&self) -> NodeStatus {
        *self.status.read()
    }

    /// Stops the raft thread and waits for it. Idempotent.
    pub fn stop(&self) {
        let _ = self.mailbox.send(Command::Stop);
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for RaftNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the raft thread waits on (module doc).
struct Wait {
    rx: Receiver<Command>,
    poll: mio::Poll,
    parked: Arc<AtomicBool>,
    /// Between two ticks.
    tick: Duration,
    streams: Streams,
}

/// The peer streams the raft thread reads, by poll token.
#[derive(Default)]
struct Streams {
    by_token: HashMap<mio::Token, InboundStream>,
    /// Streams to read in this turn: readable, or left with bytes to read
    /// (their read budget ran out) or never read yet.
    due: Vec<mio::Token>,
    /// The last token handed out (the waker has 0).
    last: usize,
}

impl Streams {
    fn add(&mut self, registry: &mio::Registry, mut s: InboundStream) {
        self.last += 1;
        let token = mio::Token(self.last);
        if let Err(e) = registry.register(s.socket(), token, mio::Interest::READABLE) {
            tracing::warn!(
                peer = format!("{:x}", s.from()),
                "cannot poll a peer stream: {e}"
            );
            return;
        }
        // Read at once: bytes (or TLS plaintext) may already be waiting.
        self.due.push(token);
        self.by_token.insert(token, s);
    }

    /// Reads every due stream once; keeps those with more to read due.
    fn read_due(&mut self, registry: &mio::Registry) {
        let mut due = std::mem::take(&mut self.due);
        due.sort_unstable();
        due.dedup();
        for token in due {
            let Some(s) = self.by_token.get_mut(&token) else {
                continue; // closed earlier
            };
            match s.read_ready() {
                ReadOutcome::Drained => {}
                ReadOutcome::More => self.due.push(token),
                ReadOutcome::Closed(why) => {
                    let mut s = self.by_token.remove(&token).expect("just read");
                    let _ = registry.deregister(s.socket());
                    tracing::debug!(
                        peer = format!("{:x}", s.from()),
                        "peer stream closed: {why}"
                    );
                }
            }
        }
    }
}

fn run(
    mut peer: Peer,
    mut wait: Wait,
    transport: Arc<dyn Transport>,
    apply_tx: Sender<ToApply>,
    status: Arc<RwLock<NodeStatus>>,
    applied: Arc<AtomicU64>,
) {
    let mut out = Vec::new();
    let mut events = mio::Events::with_capacity(64);
    let mut next_tick = Instant::now() + wait.tick;
    loop {
        // No spin before sleeping: a spin-and-yield here (crossbeam's
        // `Backoff`, session 24) took the two cores from the apply thread
        // and the gRPC workers just as they answered, delaying watch events
        // at a paced 1,000 puts/s, for no gain back to back (benches/
        // RESULTS.md, "Session 25" in the single-member section).
        // Sleep until a command, a peer's bytes or the next tick, unless
        // something is waiting already (module doc).
        wait.parked.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let timeout = if !wait.rx.is_empty() || !wait.streams.due.is_empty() {
            Duration::ZERO
        } else {
            next_tick.saturating_duration_since(Instant::now())
        };
        let polled = wait.poll.poll(&mut events, Some(timeout));
        wait.parked.store(false, Ordering::Relaxed);
        if let Err(e) = polled {
            if e.kind() != std::io::ErrorKind::Interrupted {
                peer.fail_all(|| Error::Stopped);
                publish_status(&status, &peer);
                panic!("raft node failed: polling its mailbox and peers: {e}");
            }
        }
        let streams = &mut wait.streams;
        streams
            .due
            .extend(events.iter().map(|e| e.token()).filter(|&t| t != WAKER));
        // Messages read are queued as commands (the transport's deliver
        // calls `RaftNode::step`) and handled below with the others.
        streams.read_due(wait.poll.registry());
        let now = Instant::now();
        if now >= next_tick {
            peer.tick();
            next_tick += wait.tick;
            if next_tick <= now {
                next_tick = now + wait.tick; // ticks missed are dropped
            }
        }
        // Before stepping anything: raft must know what was applied (a
        // leader holds a membership change while another is unapplied).
        peer.advance_applied(applied.load(Ordering::Acquire));
        // Everything queued shares this Ready.
        let mut stop = false;
        while !stop {
            match wait.rx.try_recv() {
                Ok(Command::Adopt(s)) => wait.streams.add(wait.poll.registry(), *s),
                Ok(cmd) => stop = handle(&mut peer, cmd),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => stop = true,
            }
        }
        if stop {
            peer.fail_all(|| Error::Stopped);
            break;
        }
        peer.flush_reads();
        peer.advance_applied(applied.load(Ordering::Acquire));
        loop {
            match peer.handle_ready_applied(transport.as_ref(), &mut out) {
                Ok(true) => {}
                Ok(false) => break,
                // The WAL or the snapshot store failed (I/O error, full
                // disk): what raft handed over may not be durable, so
                // nothing may be sent, acknowledged or applied after it.
                // Fail-stop, as etcd (`raft.go`: "failed to save state
                // and entries" is fatal): the panic stops the process
                // where the program runs etcd-core's fail-stop hook.
                Err(e) => {
                    peer.fail_all(|| Error::Stopped);
                    publish_status(&status, &peer);
                    panic!("raft node failed: {e}");
                }
            }
            for a in out.drain(..) {
                if apply_tx.send(a).is_err() {
                    // The application went away.
                    peer.fail_all(|| Error::Stopped);
                    return;
                }
            }
        }
        publish_status(&status, &peer);
    }
}

/// Publishes `peer`'s status, counting leader changes as etcd does (a
/// known leader different from the one before).
fn publish_status(status: &RwLock<NodeStatus>, peer: &Peer) {
    let mut new = peer.status();
    let mut s = status.write();
    new.leader_changes =
        s.leader_changes + u64::from(new.leader_id != 0 && new.leader_id != s.leader_id);
    *s = new;
}

/// Returns true when the node must stop.
fn handle(peer: &mut Peer, cmd: Command) -> bool {
    match cmd {
        Command::Propose(data, ack) => peer.propose(data, ack),
        Command::ProposeAsLeader(data, term) => {
            if let Err(e) = peer.propose_as_leader(data, term) {
                tracing::debug!(error = %e, "dropping a proposal of an earlier leadership");
            }
        }
        Command::Read(cb) => peer.queue_read(cb),
        Command::ProposeConfChange(cc, ack) => peer.propose_conf_change(cc, ack),
        Command::ApplyConfChange(cc, reply) => {
            let _ = reply.send(peer.apply_conf_change(&cc));
        }
        Command::TransferLeader(to) => peer.transfer_leader(to),
        Command::Progress(reply) => {
            let _ = reply.send(peer.progress());
        }
        Command::Step(msg) => {
            if let Err(e) = peer.step(*msg) {
                tracing::warn!(error = %e, "dropping raft message");
            }
        }
        Command::CompactLog(index) => {
            if let Err(e) = peer.compact_log(index) {
                tracing::error!(index, error = %e, "compacting the raft log failed");
            }
        }
        Command::ReportSnapshot(to, ok) => peer.report_snapshot(to, ok),
        Command::ReportUnreachable(to) => peer.report_unreachable(to),
        Command::Adopt(_) => unreachable!("the raft loop takes streams itself"),
        Command::Stop => return true,
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eraftpb::ConfState;

    /// With ticks an hour apart nothing but the mailbox's waker wakes the
    /// raft thread: every proposal of two threads racing its sleep must
    /// commit (a lost wake-up would leave one waiting for the hour; the
    /// 30 s bound only turns that hang into a failure).
    #[test]
    fn no_wake_up_is_lost_without_ticks() {
        let dir = tempfile::tempdir().unwrap();
        let mut voters = ConfState::default();
        voters.voters = vec![1];
        let wal = etcd_wal::WalOptions {
            fsync: false,
            ..etcd_wal::WalOptions::default()
        };
        let storage = WalStorage::create(dir.path(), wal, b"", voters).unwrap();
        let (apply_tx, apply_rx) = crossbeam_channel::unbounded();
        let cfg = NodeConfig {
            id: 1,
            voters: vec![1],
            tick_interval: Duration::from_secs(3600),
            ..NodeConfig::default()
        };
        let node = Arc::new(RaftNode::start(cfg, storage, None, apply_tx).unwrap());
        const PER_THREAD: u32 = 1000;
        let proposers: Vec<_> = (0..2u32)
            .map(|t| {
                let node = node.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        let (tx, rx) = crossbeam_channel::bounded(1);
                        let data = (t * PER_THREAD + i).to_be_bytes().to_vec();
                        let ack = move |r: Result<()>| {
                            let _ = tx.send(r.is_ok());
                        };
                        node.propose(data, Some(Box::new(ack)));
                        let taken = rx.recv_timeout(Duration::from_secs(30));
                        assert_eq!(taken, Ok(true), "proposal {t}/{i} was not taken");
                    }
                })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        while seen.len() < 2 * PER_THREAD as usize {
            match apply_rx.recv_timeout(Duration::from_secs(30)) {
                Ok(ToApply::Entries(es)) => {
                    for e in &es {
                        if let Ok(b) = <[u8; 4]>::try_from(&e.data[..]) {
                            seen.insert(u32::from_be_bytes(b));
                        }
                    }
                    node.set_applied(es.last().unwrap().index);
                }
                Ok(_) => {}
                Err(_) => panic!("{} of {} entries committed", seen.len(), 2 * PER_THREAD),
            }
        }
        for p in proposers {
            p.join().unwrap();
        }
        node.stop();
    }
}
