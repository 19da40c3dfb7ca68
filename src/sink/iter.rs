//! Blocking iteration over a running flow.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::error::{FlowError, Result};
use crate::flow::Output;
use crate::lingering::Watch;
use crate::stage::ShutdownHandle;
use crate::stage::scoped::ScopedPipeline;

/// Batches in flight between the flow and the iterator: the consumer waits when the
/// iterator is this far behind, and backpressure does the rest.
const IN_FLIGHT: usize = 4;

/// The bytes (of events' inline size) a batch of the iterator aims at; see
/// [`FlowIter::batch_size`].
const BATCH_BYTES: usize = 256 << 10;

/// The most events in a batch of the iterator.
const MAX_BATCH: usize = 32 << 10;

/// How long a dropped iterator waits for its run to stop. Aborted stages stop at their next
/// await, well within this; only a stage blocked in user code (a sleep, a lock) takes longer,
/// and the run is then left to end in the background rather than block the caller.
const STOP_GRACE: Duration = Duration::from_millis(200);

/// A blocking iterator over a running flow's events; see `Flow::into_iter`.
///
/// The flow runs on a runtime of its own in a background thread. Dropping the iterator
/// stops the flow and waits for that thread to end — at most 200 ms: a stage blocked in
/// user code (a closure that sleeps or waits on a lock) cannot be interrupted, so the
/// thread is then left to end in the background as soon as that code returns, and counts
/// in [`lingering`](crate::lingering) until it does.
#[derive(Debug)]
pub struct FlowIter<T> {
    batches: Option<mpsc::Receiver<Vec<T>>>,
    current: std::vec::IntoIter<T>,
    stop: Option<oneshot::Sender<()>>,
    runner: Option<JoinHandle<Result<()>>>,
    /// Whether the runner is still running, for a drop that may not wait for it.
    running: Option<Arc<Watch>>,
    failed: Option<FlowError>,
    shutdown: Option<ShutdownHandle>,
}

impl<T> FlowIter<T> {
    /// The most events the iterator's sink asks of each of the flow's outputs at a time:
    /// the size of the batches the iterator takes. A blocking reader is a thread handed
    /// batches by another, paying a wake-up per batch, so they are larger than the
    /// stages' default demand (1000): about 256 KiB of events, between 1000 and 32 768
    /// of them. What the flow runs ahead of the reader is bounded by the batches in
    /// flight (4, and one being handed over) and the outputs' demand, both counted in
    /// this size.
    ///
    /// ```
    /// use flowstage::sink::FlowIter;
    /// assert_eq!(FlowIter::<u64>::batch_size(), 32_768);
    /// assert_eq!(FlowIter::<[u8; 1024]>::batch_size(), 1_000);
    /// ```
    pub fn batch_size() -> usize {
        (BATCH_BYTES / std::mem::size_of::<T>().max(1))
            .clamp(crate::stage::DEFAULT_MAX_DEMAND, MAX_BATCH)
    }

    /// Batches handed over but not yet taken by the reader, at most.
    pub const IN_FLIGHT: usize = IN_FLIGHT;

    pub(crate) fn failed(error: FlowError) -> Self {
        FlowIter {
            batches: None,
            current: Vec::new().into_iter(),
            stop: None,
            runner: None,
            running: None,
            failed: Some(error),
            shutdown: None,
        }
    }
}

pub(crate) fn iter<T: Send + 'static>(
    pipeline: ScopedPipeline<'static>,
    outputs: Vec<Output<T>>,
) -> FlowIter<T> {
    let (pipeline, rx) =
        match super::channel(pipeline, outputs, IN_FLIGHT, FlowIter::<T>::batch_size()) {
            Ok(wired) => wired,
            Err(error) => return FlowIter::failed(error),
        };
    let shutdown = pipeline.shutdown_handle();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = Arc::new(Watch::new(true));
    let watch = running.clone();
    let runner = std::thread::Builder::new()
        .name("flowstage-iter".into())
        .spawn(move || {
            let run = || {
                let runtime = crate::runtime::build()?;
                runtime.block_on(async move {
                    let running = pipeline.spawn()?;
                    tokio::select! {
                        result = running.join() => result.map(|_| ()),
                        // Dropping `running` here aborts every stage.
                        _ = stopped => Ok(()),
                    }
                })
                // Dropping the runtime waits for stages blocked in user code.
            };
            let result = run();
            watch.leave();
            result
        });
    match runner {
        Ok(runner) => FlowIter {
            batches: Some(rx),
            current: Vec::new().into_iter(),
            stop: Some(stop),
            runner: Some(runner),
            running: Some(running),
            failed: None,
            shutdown: Some(shutdown),
        },
        Err(error) => FlowIter::failed(FlowError::Runtime(error)),
    }
}

impl<T> FlowIter<T> {
    /// Asks the flow to drain: its sources stop taking new input, and the iterator
    /// yields everything already produced, then ends. Dropping the iterator instead
    /// cancels the flow and loses what is in flight. Does nothing on a flow that failed
    /// to start (the iterator yields its error).
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// use flowstage::stage::Produced;
    /// use std::time::Duration;
    /// let mut next = 0u64;
    /// let mut events = Flow::from_poll(
    ///     move |demand| {
    ///         let batch: Vec<u64> = (next..next + demand as u64).collect();
    ///         next += demand as u64;
    ///         Produced::Events(batch)
    ///     },
    ///     Duration::from_millis(1),
    /// )
    /// .into_iter();
    /// let first: Vec<u64> = events.by_ref().take(10).collect::<Result<_, _>>()?;
    /// events.drain();
    /// let rest: Vec<u64> = events.collect::<Result<_, _>>()?;
    /// // Nothing lost, nothing twice: the source's events in order, then the end.
    /// assert!(first.iter().chain(&rest).copied().eq(0..(first.len() + rest.len()) as u64));
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn drain(&self) {
        if let Some(shutdown) = &self.shutdown {
            shutdown.drain();
        }
    }
}

impl<T> Iterator for FlowIter<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        loop {
            if let Some(event) = self.current.next() {
                return Some(Ok(event));
            }
            if let Some(error) = self.failed.take() {
                return Some(Err(error));
            }
            let batches = self.batches.as_mut()?;
            match batches.blocking_recv() {
                Some(batch) => self.current = batch.into_iter(),
                None => {
                    // The flow ended: report how. `stop` stays alive until the runner is
                    // joined: dropping it would end the run as if stopped, losing its error.
                    self.batches = None;
                    let outcome = match self.runner.take().map(JoinHandle::join) {
                        Some(Ok(result)) => result,
                        Some(Err(_)) => Err(FlowError::Cancelled),
                        None => Ok(()),
                    };
                    return outcome.err().map(Err);
                }
            }
        }
    }
}

impl<T> Drop for FlowIter<T> {
    fn drop(&mut self) {
        // Close our end first so a consumer blocked on sending wakes up, then stop the run.
        self.batches = None;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(runner) = self.runner.take() else {
            return;
        };
        let left_behind = self
            .running
            .as_ref()
            .is_some_and(|running| running.abandon(STOP_GRACE));
        if !left_behind {
            // The runner has finished its work: joining only waits for its thread to exit.
            let _ = runner.join();
        }
    }
}
