//! Test support shared by the test files (`mod common;`): the watchdog that turns a hung
//! flow into a failed test instead of a hung suite.

#![allow(dead_code)] // each test file uses the part it needs

#[cfg(feature = "timely")]
pub mod processes;

use std::any::Any;
use std::panic::resume_unwind;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

/// How long any one flow may take before its test fails as hung.
pub const WATCHDOG: Duration = Duration::from_secs(30);

/// How a watched body ended, when it did not return.
pub enum Stopped {
    /// It panicked, with this payload.
    Panicked(Box<dyn Any + Send>),
    /// It ran past the watchdog.
    Hung,
}

/// Runs `body` on a thread of its own, waiting at most [`WATCHDOG`].
pub fn watch<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> Result<T, Stopped> {
    let (tx, rx) = channel();
    let worker = std::thread::spawn(move || {
        let _ = tx.send(body());
    });
    match rx.recv_timeout(WATCHDOG) {
        Ok(value) => {
            let _ = worker.join();
            Ok(value)
        }
        Err(RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => Err(Stopped::Panicked(panic)),
            Ok(()) => unreachable!("the worker neither sent nor panicked"),
        },
        Err(RecvTimeoutError::Timeout) => Err(Stopped::Hung),
    }
}

/// [`watch`], failing the test on a hang and re-raising a panic as it was.
pub fn guarded<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    match watch(body) {
        Ok(value) => value,
        Err(Stopped::Panicked(panic)) => resume_unwind(panic),
        Err(Stopped::Hung) => panic!("watchdog: the flow hung for {WATCHDOG:?}"),
    }
}

/// [`watch`] for property tests: a hang or panic as a message for the failing case.
pub fn try_guarded<T: Send + 'static>(
    body: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    watch(body).map_err(|stopped| match stopped {
        Stopped::Panicked(panic) => format!(
            "the case panicked: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        ),
        Stopped::Hung => format!("watchdog: the flow hung for {WATCHDOG:?}"),
    })
}

/// How many cases a property test runs: the environment variable `var` (to run a long
/// campaign, as CI does), else `default`. A value that is not a number fails the test
/// rather than quietly running the default.
pub fn cases_from_env(var: &str, default: u32) -> u32 {
    match std::env::var(var) {
        Ok(cases) => cases
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={cases:?} is not a number of cases")),
        Err(_) => default,
    }
}

/// Reports a figure that `tests/README.md` quotes, as `figure KEY = VALUE` on standard
/// error (shown with `--nocapture`): `tests/figures` runs the tests that measure them and
/// writes each value into the README, between `<!--KEY-->` and `<!--/-->`.
pub fn figure(key: &str, value: impl std::fmt::Display) {
    eprintln!("figure {key} = {value}");
}

/// `bytes` in kB (1 000 bytes), rounded, as the README quotes memory.
pub fn kilobytes(bytes: impl Into<u64>) -> String {
    format!("{} KB", (bytes.into() + 500) / 1000)
}

/// `bytes` in MB (1 000 000 bytes), to one decimal (none for a whole number), as the
/// README quotes memory.
pub fn megabytes(bytes: impl Into<u64>) -> String {
    let text = format!("{:.1}", bytes.into() as f64 / 1e6);
    format!("{} MB", text.strip_suffix(".0").unwrap_or(&text))
}

/// The settings of one new layer in a property test's random pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer {
    pub stages: usize,
    pub max_demand: usize,
    pub min_demand: usize,
}

impl Layer {
    /// As `partition` options.
    pub fn options(self) -> flowstage::flow::Partition {
        flowstage::flow::Partition::new()
            .stages(self.stages)
            .max_demand(self.max_demand)
            .min_demand(self.min_demand)
    }

    /// As `shuffle` / join options.
    pub fn shuffle(self) -> flowstage::flow::Shuffle {
        flowstage::flow::Shuffle::shuffle()
            .stages(self.stages)
            .max_demand(self.max_demand)
            .min_demand(self.min_demand)
    }
}

/// Four in-order streams of `len` events `(timestamp ms, key 0..7, value 0..100)`, the
/// timestamps 0 to 2 ms apart; with `gaps`, 300 ms apart now and then (for sessions).
pub fn event_streams(len: usize, gaps: bool) -> Vec<Vec<(i64, u32, u64)>> {
    (0..4u64)
        .map(|stream| {
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (stream + 1);
            let mut ts = 0i64;
            (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    ts += (state % 3) as i64;
                    if gaps && state % 97 == 0 {
                        ts += 300;
                    }
                    (ts, (state >> 8) as u32 % 7, state % 100)
                })
                .collect()
        })
        .collect()
}
