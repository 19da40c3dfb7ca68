//! Graceful shutdown: stop taking new input, deliver what is in flight.
//!
//! Cancelling a run ([`Running::cancel`](super::Running::cancel), dropping it) aborts every
//! stage wherever it is: events in flight are lost. A [`ShutdownHandle`] asks for the
//! other ending. Every producer of the pipeline (the flow's sources) stops asking its user
//! code for events and finishes as if its input had ended: it sends what it already made
//! (its buffer) as demand allows, then `Done`. The rest of the pipeline drains as on any
//! normal completion — reducers fire their `Done` triggers, sinks acknowledge — and the run
//! ends with `Ok`.

use std::sync::Arc;

use tokio::sync::watch;

/// A cloneable handle that asks a running pipeline to stop taking new input and drain;
/// see [`Running::shutdown_handle`](super::Running::shutdown_handle).
///
/// A producer that is inside its `handle_demand` when the drain is asked finishes that
/// call first, so no event it is making is lost: a source that waits for data (an empty
/// channel, Redis' `BLOCK`) holds the drain until its call returns. A producer waiting
/// only for its retry interval stops at once.
///
/// ```
/// use flowstage::flow::Flow;
/// use flowstage::stage::{Pipeline, Produced, SubscribeOptions, consumer_fn};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// # tokio::runtime::Runtime::new()?.block_on(async {
/// // A source that would count up forever.
/// let mut next = 0u64;
/// let endless = Flow::from_poll(
///     move |demand| {
///         let events: Vec<u64> = (next..next + demand as u64).collect();
///         next += demand as u64;
///         Produced::Events(events)
///     },
///     Duration::from_millis(1),
/// );
/// let received = Arc::new(AtomicU64::new(0));
/// let seen = received.clone();
/// let mut pipeline = Pipeline::new();
/// let outputs = endless.into_stages(&mut pipeline)?;
/// let sink = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
///     seen.fetch_add(batch.len() as u64, Ordering::Relaxed);
/// }));
/// for output in &outputs {
///     pipeline.subscribe(&sink, output, SubscribeOptions::new())?;
/// }
/// let running = pipeline.spawn()?;
/// let shutdown = running.shutdown_handle();
/// while received.load(Ordering::Relaxed) < 10_000 {
///     tokio::task::yield_now().await;
/// }
/// shutdown.drain();
/// let report = running.join().await?; // ends `Ok`: nothing was cut off
/// // Every event the source made reached the sink.
/// assert_eq!(report.stages[0].events_out, received.load(Ordering::Relaxed));
/// # Ok::<(), flowstage::FlowError>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    requested: Arc<watch::Sender<bool>>,
}

impl ShutdownHandle {
    pub(crate) fn new() -> Self {
        ShutdownHandle {
            requested: Arc::new(watch::channel(false).0),
        }
    }

    /// Asks every producer to stop taking new input and finish; the pipeline drains and
    /// the run ends normally. Idempotent; returns at once (await the run's
    /// [`join`](super::Running::join) to see it end).
    pub fn drain(&self) {
        self.requested.send_replace(true);
    }

    /// Whether [`drain`](Self::drain) was called.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new()?.block_on(async {
    /// use flowstage::stage::{Pipeline, consumer_fn, from_iter, SubscribeOptions};
    /// let mut pipeline = Pipeline::new();
    /// let numbers = pipeline.producer(from_iter(0..10u32));
    /// let sink = pipeline.consumer(consumer_fn(|_batch: Vec<u32>| {}));
    /// pipeline.subscribe(&sink, &numbers, SubscribeOptions::new())?;
    /// let running = pipeline.spawn()?;
    /// let shutdown = running.shutdown_handle();
    /// assert!(!shutdown.is_draining());
    /// shutdown.drain();
    /// assert!(shutdown.is_draining());
    /// running.join().await?;
    /// # Ok::<(), flowstage::FlowError>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_draining(&self) -> bool {
        *self.requested.borrow()
    }

    pub(crate) fn listener(&self) -> ShutdownListener {
        ShutdownListener {
            requested: self.requested.subscribe(),
        }
    }
}

/// A producer's side of the [`ShutdownHandle`].
pub(crate) struct ShutdownListener {
    requested: watch::Receiver<bool>,
}

impl ShutdownListener {
    pub(crate) fn is_requested(&self) -> bool {
        *self.requested.borrow()
    }

    /// Resolves once a drain is asked; never, if the handle is gone without asking.
    /// Cancel-safe: it only waits.
    pub(crate) async fn requested(&mut self) {
        if self.requested.wait_for(|asked| *asked).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
