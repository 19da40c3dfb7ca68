//! Per-stage counters a user can read during or after a run.
//!
//! Counters are updated once per batch, never per event. They are plain `Relaxed` atomics:
//! each is an independent statistic, nothing synchronises through them, so no ordering
//! beyond atomicity of each counter is needed.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::StageInfo;

#[derive(Debug, Default)]
pub(crate) struct StageMetrics {
    events_in: AtomicU64,
    batches_in: AtomicU64,
    events_out: AtomicU64,
    demand: AtomicU64,
    buffered: AtomicU64,
    dropped: AtomicU64,
    late: AtomicU64,
    /// Nanoseconds in the stage's own code, and waiting for demand with output made.
    busy: AtomicU64,
    waiting: AtomicU64,
    /// The same counts in the `metrics` facade, once the run starts.
    #[cfg(feature = "metrics")]
    exported: std::sync::OnceLock<crate::observe::Exported>,
}

/// Runs `$body` with the stage's `metrics` facade handles, when the feature is on and the
/// run has started.
macro_rules! exported {
    ($self:ident, |$exported:ident| $body:expr) => {
        #[cfg(feature = "metrics")]
        if let Some($exported) = $self.exported.get() {
            $body;
        }
    };
}

impl StageMetrics {
    /// Registers the stage's counters and gauges with the `metrics` facade's recorder
    /// (feature `metrics`), labelled with the stage's name; a no-op without it.
    pub(crate) fn export(&self, stage: &StageInfo) {
        #[cfg(feature = "metrics")]
        let _ = self.exported.set(crate::observe::Exported::new(stage));
        let _ = stage;
    }

    /// A batch of `n` events arrived.
    pub(crate) fn add_in(&self, n: usize) {
        self.events_in.fetch_add(n as u64, Relaxed);
        self.batches_in.fetch_add(1, Relaxed);
        exported!(self, |exported| exported.events_in.increment(n as u64));
    }

    pub(crate) fn add_out(&self, n: usize) {
        self.events_out.fetch_add(n as u64, Relaxed);
        exported!(self, |exported| exported.events_out.increment(n as u64));
    }

    pub(crate) fn set_demand(&self, n: usize) {
        self.demand.store(n as u64, Relaxed);
        exported!(self, |exported| exported.demand.set(n as f64));
    }

    pub(crate) fn set_buffered(&self, n: usize) {
        self.buffered.store(n as u64, Relaxed);
        exported!(self, |exported| exported.buffered.set(n as f64));
    }

    pub(crate) fn add_dropped(&self, n: usize) {
        if n > 0 {
            self.dropped.fetch_add(n as u64, Relaxed);
            exported!(self, |exported| exported.dropped.increment(n as u64));
        }
    }

    pub(crate) fn add_late(&self, n: u64) {
        if n > 0 {
            self.late.fetch_add(n, Relaxed);
            exported!(self, |exported| exported.late.increment(n));
        }
    }

    /// The stage's own code ran from `since` until now.
    pub(crate) fn add_busy(&self, since: Instant) {
        let nanos = nanos(since);
        self.busy.fetch_add(nanos, Relaxed);
        exported!(self, |exported| exported
            .busy_microseconds
            .increment(nanos / 1_000));
    }

    /// The stage waited for demand from `since` until now.
    pub(crate) fn add_waiting(&self, since: Instant) {
        self.waiting.fetch_add(nanos(since), Relaxed);
    }

    pub(crate) fn snapshot(&self, stage: &StageInfo) -> StageSnapshot {
        StageSnapshot {
            stage: stage.clone(),
            events_in: self.events_in.load(Relaxed),
            batches_in: self.batches_in.load(Relaxed),
            events_out: self.events_out.load(Relaxed),
            demand: self.demand.load(Relaxed),
            buffered: self.buffered.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            late: self.late.load(Relaxed),
            busy: Duration::from_nanos(self.busy.load(Relaxed)),
            waiting_for_demand: Duration::from_nanos(self.waiting.load(Relaxed)),
        }
    }
}

fn nanos(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// A stage's counters at one moment.
///
/// ```
/// use flowstage::stage::{Pipeline, SubscribeOptions, consumer_fn, from_iter};
/// let mut pipeline = Pipeline::new();
/// let numbers = pipeline.producer(from_iter(0..10u32));
/// let sink = pipeline.consumer(consumer_fn(|_batch: Vec<u32>| {}));
/// pipeline.subscribe(&sink, &numbers, SubscribeOptions::new())?;
/// let report = pipeline.run()?;
/// assert_eq!(report.stages[0].events_out, 10);
/// assert_eq!(report.stages[1].events_in, 10);
/// assert!(report.stages[1].batches_in >= 1);
/// # Ok::<(), flowstage::FlowError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSnapshot {
    /// Which stage.
    pub stage: StageInfo,
    /// Events received from upstream.
    pub events_in: u64,
    /// Batches they came in: `events_in / batches_in` is the average batch, which says
    /// how well the demand settings amortise the per-batch costs (a channel message, a
    /// wake-up, a call of the stage).
    pub batches_in: u64,
    /// Events sent downstream.
    pub events_out: u64,
    /// Outstanding demand: for a producer, credit it holds from its consumers; for a
    /// consumer, events asked for and not yet handled.
    pub demand: u64,
    /// Events waiting inside the stage (producer buffer, partition queues, unprocessed input).
    pub buffered: u64,
    /// Events a full producer buffer dropped (see `buffer_keep`), or events routed to a
    /// partition whose consumer had already gone.
    pub dropped: u64,
    /// Events that arrived for a window already closed (see
    /// [`window`](crate::window)); with [`LateEvents`](crate::window::LateEvents) the user
    /// can read them.
    pub late: u64,
    /// Time in the stage's own code: a producer making events (for a source, reading
    /// included), a stage handling them, a consumer taking them.
    pub busy: Duration,
    /// Time the stage had events ready and no demand to send them: its consumers were
    /// the bottleneck.
    pub waiting_for_demand: Duration,
}

/// How many events a fallible operator's error policy skipped or sent to its dead-letter
/// sink, shared by every stage running the operator. Updated once per batch.
///
/// ```
/// use flowstage::flow::{ErrorPolicy, Flow};
/// let policy = ErrorPolicy::skip();
/// let counters = policy.counters();
/// let numbers: Vec<u32> = Flow::from_iter(["1", "x", "3"])
///     .try_map(|s: &str| s.parse::<u32>().map_err(|e| (s, e)))
///     .on_error(policy)
///     .collect()?;
/// assert_eq!(numbers, [1, 3]);
/// assert_eq!(counters.skipped(), 1);
/// # Ok::<(), flowstage::FlowError>(())
/// ```
#[derive(Debug, Default)]
pub struct ErrorCounters {
    skipped: AtomicU64,
    dead_lettered: AtomicU64,
}

impl ErrorCounters {
    /// Events dropped by a `Skip` policy.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Relaxed)
    }

    /// Events handed to a dead-letter sink.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Relaxed)
    }

    pub(crate) fn add_skipped(&self, n: u64) {
        if n > 0 {
            self.skipped.fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn add_dead_lettered(&self, n: u64) {
        if n > 0 {
            self.dead_lettered.fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn snapshot(&self, operator: &str) -> ErrorSnapshot {
        ErrorSnapshot {
            operator: operator.to_string(),
            skipped: self.skipped(),
            dead_lettered: self.dead_lettered(),
        }
    }
}

/// An error policy's counts at one moment, as a [`Report`](super::Report) lists them.
///
/// ```
/// use flowstage::flow::{ErrorPolicy, Flow};
/// let report = Flow::from_iter(["1", "x", "y"])
///     .try_map(|s: &str| s.parse::<u32>().map_err(|e| (s, e)))
///     .on_error(ErrorPolicy::skip())
///     .run()?;
/// assert_eq!(report.errors[0].operator, "try_map");
/// assert_eq!(report.errors[0].skipped, 2);
/// # Ok::<(), flowstage::FlowError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorSnapshot {
    /// The operator (`try_map`, `try_flat_map`, or a parsing source's name).
    pub operator: String,
    /// Events dropped by a `Skip` policy.
    pub skipped: u64,
    /// Events handed to a dead-letter sink.
    pub dead_lettered: u64,
}
