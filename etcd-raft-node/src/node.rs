//! The raft thread: owns a [`Peer`], feeds it commands and ticks, and hands
//! committed entries to the application.

use crate::config::NodeConfig;
use crate::peer::{Peer, Progress, ProposeCallback, ReadCallback};
use crate::storage::WalStorage;
use crate::transport::{NoopTransport, Transport};
use crate::types::{NodeStatus, ToApply};
use crate::{Error, Result};
use crossbeam_channel::{select, Receiver, Sender};
use parking_lot::RwLock;
use raft::eraftpb::{ConfChange, ConfState, Message};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

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
    Stop,
}

/// Handle to a running raft member. Cheap to share behind an `Arc`.
pub struct RaftNode {
    tx: Sender<Command>,
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
        let status = Arc::new(RwLock::new(NodeStatus {
            leader_id: 0,
            ..peer.status()
        }));
        publish_status(&status, &peer);
        let applied = Arc::new(AtomicU64::new(cfg.applied));
        let ticker = crossbeam_channel::tick(cfg.tick_interval);
        let thread = {
            let status = status.clone();
            let applied = applied.clone();
            std::thread::Builder::new()
                .name(format!("raft-{:x}", cfg.id))
                .spawn(move || run(peer, rx, ticker, transport, apply_tx, status, applied))
                .map_err(|e| Error::Config(format!("cannot start raft thread: {e}")))?
        };
        Ok(RaftNode {
            tx,
            wal_metrics,
            status,
            applied,
            thread: parking_lot::Mutex::new(Some(thread)),
        })
    }

    /// Proposes `data`; `ack` learns whether raft took it (not whether it
    /// committed: committed entries arrive on the apply channel).
    pub fn propose(&self, data: Vec<u8>, ack: Option<ProposeCallback>) {
        if let Err(crossbeam_channel::SendError(Command::Propose(_, Some(ack)))) =
            self.tx.send(Command::Propose(data, ack))
        {
            ack(Err(Error::Stopped));
        }
    }

    /// Proposes `data` only if, when the raft thread takes it, this member
    /// still leads in `term` (see [`Peer::propose_as_leader`]); otherwise
    /// it is dropped, never forwarded. Nobody learns the outcome.
    pub fn propose_as_leader(&self, data: Vec<u8>, term: u64) {
        let _ = self.tx.send(Command::ProposeAsLeader(data, term));
    }

    /// Proposes a membership change; see [`Peer::propose_conf_change`].
    pub fn propose_conf_change(&self, cc: ConfChange, ack: Option<ProposeCallback>) {
        if let Err(crossbeam_channel::SendError(Command::ProposeConfChange(_, Some(ack)))) =
            self.tx.send(Command::ProposeConfChange(cc, ack))
        {
            ack(Err(Error::Stopped));
        }
    }

    /// Applies a committed membership change (called by the application,
    /// in log order, when it applies the entry); returns the new
    /// configuration. Blocks until the raft thread has done it.
    pub fn apply_conf_change(&self, cc: ConfChange) -> Result<ConfState> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx
            .send(Command::ApplyConfChange(cc, tx))
            .map_err(|_| Error::Stopped)?;
        rx.recv().map_err(|_| Error::Stopped)?
    }

    /// Asks the leader to transfer leadership to `to`.
    pub fn transfer_leader(&self, to: u64) {
        let _ = self.tx.send(Command::TransferLeader(to));
    }

    /// Replication progress of every member (empty unless this member
    /// leads). Blocks until the raft thread answers.
    pub fn progress(&self) -> Result<Vec<Progress>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.tx
            .send(Command::Progress(tx))
            .map_err(|_| Error::Stopped)?;
        rx.recv().map_err(|_| Error::Stopped)
    }

    /// Asks for a linearizable read index; `done` gets the index to wait for.
    pub fn read_index(&self, done: ReadCallback) {
        if let Err(crossbeam_channel::SendError(Command::Read(done))) =
            self.tx.send(Command::Read(done))
        {
            done(Err(Error::Stopped));
        }
    }

    /// Hands a message from another member to raft.
    pub fn step(&self, msg: Message) {
        let _ = self.tx.send(Command::Step(Box::new(msg)));
    }

    /// Compacts the raft log up to `index`, which the state machine has
    /// durably applied (flushed), and purges old WAL segments.
    pub fn compact_log(&self, index: u64) {
        let _ = self.tx.send(Command::CompactLog(index));
    }

    /// Reports whether the snapshot sent to member `to` was installed (see
    /// [`Peer::report_snapshot`]); transports call it.
    pub fn report_snapshot(&self, to: u64, ok: bool) {
        let _ = self.tx.send(Command::ReportSnapshot(to, ok));
    }

    /// Reports that a message to member `to` could not be sent (see
    /// [`Peer::report_unreachable`]).
    pub fn report_unreachable(&self, to: u64) {
        let _ = self.tx.send(Command::ReportUnreachable(to));
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
        let _ = self.tx.send(Command::Stop);
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

fn run(
    mut peer: Peer,
    rx: Receiver<Command>,
    ticker: Receiver<std::time::Instant>,
    transport: Arc<dyn Transport>,
    apply_tx: Sender<ToApply>,
    status: Arc<RwLock<NodeStatus>>,
    applied: Arc<AtomicU64>,
) {
    let mut out = Vec::new();
    loop {
        let mut stop = false;
        select! {
            recv(rx) -> cmd => match cmd {
                Ok(cmd) => {
                    // Before stepping anything: raft must know what was
                    // applied (a leader holds a membership change while
                    // another is unapplied).
                    peer.advance_applied(applied.load(Ordering::Acquire));
                    stop = handle(&mut peer, cmd);
                }
                Err(_) => stop = true,
            },
            recv(ticker) -> _ => peer.tick(),
        }
        // Drain whatever else is queued so it shares this Ready.
        while !stop {
            match rx.try_recv() {
                Ok(cmd) => stop = handle(&mut peer, cmd),
                Err(_) => break,
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
        Command::Stop => return true,
    }
    false
}
