//! What a cancelled run could not stop: threads blocked in user code.
//!
//! Cancelling a run (dropping its iterator or stream, or a failure elsewhere in it) aborts
//! every stage at its next await, and the library's own readers (files, pipes, sockets,
//! standard input) see it within 50 ms. Code that blocks a thread without
//! awaiting cannot be interrupted safely: a user closure that sleeps or waits on a lock
//! inside a stage, or a user's `Read` blocked in a `ReaderSource`. Such a thread is left
//! to finish in the background: it ends as soon as the user code returns, and nothing it
//! produces afterwards is used. [`lingering`] counts those threads so a program can see them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

// Plain counters, each read on its own: nothing synchronises through them.
static NOW: AtomicUsize = AtomicUsize::new(0);
static TOTAL: AtomicU64 = AtomicU64::new(0);

/// Threads that cancelled runs left blocked in user code; see [`lingering`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lingering {
    threads: usize,
    total: u64,
}

impl Lingering {
    /// Threads still blocked in user code that their (cancelled) run had to leave behind.
    /// Each ends as soon as that code returns.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Threads ever left behind this way in this process.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Threads that cancelled runs had to leave blocked in user code: a dropped
/// [`FlowIter`](crate::sink::FlowIter) whose flow was inside a blocking closure, or a
/// [`ReaderSource`](crate::source::ReaderSource) over a `Read` that cannot be polled,
/// cancelled inside a `read`. Everything else a cancelled run started ends with it.
///
/// ```
/// use flowstage::flow::Flow;
/// let before = flowstage::lingering();
/// let first: Vec<u64> = Flow::from_iter(0..1_000_000u64)
///     .into_iter()
///     .take(3)
///     .collect::<Result<_, _>>()?;
/// assert_eq!(first, [0, 1, 2]);
/// // Nothing in this flow blocks: dropping the iterator left nothing behind.
/// assert_eq!(flowstage::lingering().total(), before.total());
/// # Ok::<(), flowstage::FlowError>(())
/// ```
pub fn lingering() -> Lingering {
    Lingering {
        threads: NOW.load(Relaxed),
        total: TOTAL.load(Relaxed),
    }
}

/// A thread's passage through user code that may block, watched by the run that may have
/// to abandon it.
#[derive(Debug)]
pub(crate) struct Watch {
    state: Mutex<State>,
    left: Condvar,
}

#[derive(Debug)]
struct State {
    /// The thread is inside user code.
    busy: bool,
    /// The run gave the thread up: it must stop when it gets back.
    abandoned: bool,
    /// The thread was abandoned while busy: it counts in [`lingering`] until it leaves.
    counted: bool,
}

impl Watch {
    /// A watch over a thread that starts `busy` or not.
    pub(crate) fn new(busy: bool) -> Self {
        Watch {
            state: Mutex::new(State {
                busy,
                abandoned: false,
                counted: false,
            }),
            left: Condvar::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The thread enters user code; `false` (and it must not) if it was abandoned.
    pub(crate) fn enter(&self) -> bool {
        let mut state = self.state();
        state.busy = !state.abandoned;
        state.busy
    }

    /// The thread is back from user code; `false` if it was abandoned meanwhile.
    pub(crate) fn leave(&self) -> bool {
        let mut state = self.state();
        state.busy = false;
        if std::mem::take(&mut state.counted) {
            NOW.fetch_sub(1, Relaxed);
        }
        self.left.notify_all();
        !state.abandoned
    }

    /// The run gives the thread up, after waiting up to `grace` for it to leave user code.
    /// Returns whether it was still inside (and now counts in [`lingering`]).
    pub(crate) fn abandon(&self, grace: Duration) -> bool {
        let state = self.state();
        let (mut state, _) = self
            .left
            .wait_timeout_while(state, grace, |state| state.busy)
            .unwrap_or_else(PoisonError::into_inner);
        state.abandoned = true;
        if state.busy && !state.counted {
            state.counted = true;
            NOW.fetch_add(1, Relaxed);
            TOTAL.fetch_add(1, Relaxed);
        }
        state.counted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the counters are process-wide.
    #[test]
    fn a_thread_counts_only_while_abandoned_inside_user_code() {
        let idle = Watch::new(false);
        assert!(!idle.abandon(Duration::ZERO), "idle: nothing left behind");
        assert!(
            !idle.enter(),
            "an abandoned thread must not enter user code"
        );

        let before = lingering();
        let busy = Watch::new(false);
        assert!(busy.enter());
        assert!(busy.abandon(Duration::ZERO), "abandoned while busy");
        assert!(busy.abandon(Duration::ZERO), "still the same one");
        assert_eq!(lingering().threads(), before.threads() + 1);
        assert_eq!(lingering().total(), before.total() + 1);
        assert!(!busy.leave(), "it learns that it was abandoned");
        assert_eq!(lingering().threads(), before.threads());
        assert_eq!(lingering().total(), before.total() + 1);

        // A thread that leaves within the grace is waited for and not counted.
        let watch = std::sync::Arc::new(Watch::new(true));
        let thread = {
            let watch = watch.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                watch.leave()
            })
        };
        assert!(!watch.abandon(Duration::from_secs(60)));
        assert!(
            thread.join().expect("the thread"),
            "it left before being abandoned"
        );
        assert_eq!(lingering().total(), before.total() + 1);
    }
}
