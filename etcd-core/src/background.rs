//! A background thread with a stop signal (the member's publisher and
//! lease ticker), stopped and joined by [`Background::stop`].

use crossbeam_channel::{Receiver, Sender};
use std::thread::JoinHandle;

/// Waits `d` on a background thread's stop receiver: true when the time
/// passed, false when the thread must stop (a message or disconnection).
pub(crate) fn pause(stop: &Receiver<()>, d: std::time::Duration) -> bool {
    matches!(
        stop.recv_timeout(d),
        Err(crossbeam_channel::RecvTimeoutError::Timeout)
    )
}

/// A running background thread.
pub(crate) struct Background {
    /// Dropped or sent to by [`Background::stop`]: the thread's receiver
    /// then returns at once, whatever it waits for.
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Background {
    /// Runs `body` on a thread named `name`; `body` returns once its
    /// receiver yields anything (a message or disconnection).
    pub(crate) fn spawn(
        name: &str,
        body: impl FnOnce(Receiver<()>) + Send + 'static,
    ) -> std::io::Result<Background> {
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(stopped))?;
        Ok(Background { stop, thread })
    }

    /// Signals the thread and waits for it.
    pub(crate) fn stop(self) {
        let _ = self.stop.try_send(());
        drop(self.stop);
        if self.thread.join().is_err() {
            tracing::error!("a background thread panicked");
        }
    }
}
