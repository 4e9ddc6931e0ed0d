//! Fail-stop: which errors stop a member, and how the process ends.
//!
//! A member that cannot go on safely must not stay half alive: answering
//! serializable reads from a store that no longer advances, keeping its
//! leadership while applying nothing, or applying the entries after one it
//! skipped (and so diverging from the other members). etcd ends the
//! process on such errors (`lg.Fatal`, `lg.Panic`); so does this engine:
//!
//! | where                    | error                                        | why it is fatal                                      |
//! |--------------------------|----------------------------------------------|------------------------------------------------------|
//! | raft thread              | WAL append or fsync fails (I/O, full disk), a raft snapshot cannot be saved | what raft handed over may not be durable: nothing after it may be sent, acknowledged or applied |
//! | apply thread             | the store cannot commit an entry (I/O, full disk, corruption) | skipping the entry diverges from the other members   |
//! | apply thread             | a committed entry does not decode            | written by a newer version, or a corrupted log       |
//! | apply thread             | a snapshot image cannot be installed         | the store may be partial (a restart re-installs it)  |
//! | apply thread             | membership, auth or alarm state cannot be persisted | as for entries                                |
//! | any other thread or task | a panic (a broken invariant)                 | the state it guarded may be half updated             |
//!
//! Each of these panics, on the thread where it happens, with a message
//! saying what failed and at which raft index. [`exit_on_panic`] (the
//! server installs it before starting) turns every panic into a fatal
//! stop: one `fatal error` log line with the message and where it was
//! raised, then the process ends at once with status 1, as etcd's
//! `lg.Fatal`. Nothing runs after it (`_exit`): no destructor or exit
//! handler may touch a store that another thread was writing. Everything
//! acknowledged is durable in the WAL, so a restart (systemd's
//! `Restart=on-failure`) recovers: it replays the WAL and re-applies what
//! the store did not commit.
//!
//! Not fatal: errors a client or a peer causes (refused requests, bad
//! frames, a peer that disconnects), a store flush that fails before a
//! raft log compaction (the log is kept and the flush retried), and a
//! request that times out.
//!
//! An embedding program chooses: call [`exit_on_panic`] for etcd's
//! behaviour, or keep its own panic policy (a member whose raft or apply
//! thread panicked then fails every request with "server stopped" until
//! it is stopped and started again).

/// Makes every panic end the process (see the module doc): the default
/// panic message (and backtrace, if enabled) goes to stderr, then a
/// `fatal error` log line, then the process exits with status 1.
pub fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let thread = std::thread::current();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            location = %info.location().map(|l| l.to_string()).unwrap_or_default(),
            "fatal error, stopping the process: {message}"
        );
        exit_now(1);
    }));
}

/// Ends the process with `code` at once: no destructor, no exit handler
/// (RocksDB's static destructors would race threads still writing).
#[allow(unsafe_code)]
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes no pointer and never returns.
    unsafe { libc::_exit(code) }
}
