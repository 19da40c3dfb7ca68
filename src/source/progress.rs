//! A progress bar for a file-driven flow (feature `progress`): `indicatif` draws it on
//! standard error (when that is a terminal) from the file source's byte counter, and it
//! finishes when the source's readers are done.

use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::FileCounters;

/// How often the bar is brought up to date.
const TICK: Duration = Duration::from_millis(100);

/// The bar `progress()` draws: bytes read of the file's length, the rate, the time left.
pub(crate) fn default_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    let template = "{bytes} / {total_bytes} {binary_bytes_per_sec} eta {eta} {wide_bar}";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Keeps the bar up to date on a thread of its own while the readers run; shared by the
/// readers, it finishes the bar when the last of them is dropped.
pub(crate) struct Ticker {
    bar: ProgressBar,
    counters: Arc<FileCounters>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    pub(crate) fn start(bar: ProgressBar, len: u64, counters: Arc<FileCounters>) -> Arc<Self> {
        bar.set_length(len);
        let (stop, stopped) = channel::<()>();
        let (ticking, read) = (bar.clone(), counters.clone());
        let thread = std::thread::Builder::new()
            .name("flowstage-progress".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                    ticking.set_position(read.bytes_read().min(len));
                }
            })
            .ok();
        Arc::new(Ticker {
            bar,
            counters,
            stop: Some(stop),
            thread,
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let len = self.bar.length().unwrap_or(0);
        self.bar.set_position(self.counters.bytes_read().min(len));
        self.bar.finish();
    }
}
