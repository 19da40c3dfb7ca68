//! A running flow as an async stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{FutureExt, Stream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{FlowError, Result};
use crate::flow::Output;
use crate::stage::ShutdownHandle;
use crate::stage::scoped::ScopedPipeline;

/// An async stream over a running flow's events; see `Flow::into_stream`. Dropping it
/// stops the flow without waiting: its stages are aborted at their next await. A stage
/// blocked in user code (a closure that sleeps or waits on a lock) cannot be interrupted:
/// it keeps its worker of the caller's runtime, and counts in that runtime's
/// `RuntimeMetrics::num_alive_tasks`, until the code returns.
#[derive(Debug)]
pub struct FlowStream<T> {
    batches: mpsc::Receiver<Vec<T>>,
    current: std::vec::IntoIter<T>,
    run: Option<JoinHandle<Result<()>>>,
    shutdown: ShutdownHandle,
}

pub(crate) fn stream<T: Send + 'static>(
    pipeline: ScopedPipeline<'static>,
    outputs: Vec<Output<T>>,
) -> Result<FlowStream<T>> {
    let (pipeline, rx) = super::channel(pipeline, outputs, 2, crate::stage::DEFAULT_MAX_DEMAND)?;
    let running = pipeline.spawn()?;
    let shutdown = running.shutdown_handle();
    let run = tokio::spawn(async move { running.join().await.map(|_| ()) });
    Ok(FlowStream {
        batches: rx,
        current: Vec::new().into_iter(),
        run: Some(run),
        shutdown,
    })
}

impl<T> FlowStream<T> {
    /// A handle that drains the flow: its sources stop taking new input, and the stream
    /// yields everything already produced, then ends (with `None`, or the run's error).
    /// Dropping the stream instead cancels the flow and loses what is in flight.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new()?.block_on(async {
    /// use flowstage::flow::Flow;
    /// use flowstage::stage::Produced;
    /// use futures::StreamExt;
    /// use std::time::Duration;
    /// let mut next = 0u64;
    /// let mut stream = Flow::from_poll(
    ///     move |demand| {
    ///         let events: Vec<u64> = (next..next + demand as u64).collect();
    ///         next += demand as u64;
    ///         Produced::Events(events)
    ///     },
    ///     Duration::from_millis(1),
    /// )
    /// .into_stream()?;
    /// let mut seen = Vec::new();
    /// while let Some(event) = stream.next().await {
    ///     seen.push(event?);
    ///     if seen.len() == 100 {
    ///         stream.shutdown_handle().drain();
    ///     }
    /// }
    /// // The stream ended by itself, with every event the source made, in order.
    /// assert!(seen.len() >= 100);
    /// assert!(seen.iter().copied().eq(0..seen.len() as u64));
    /// # Ok::<(), flowstage::FlowError>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }
}

impl<T> Stream for FlowStream<T> {
    type Item = Result<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        loop {
            if let Some(event) = self.current.next() {
                return Poll::Ready(Some(Ok(event)));
            }
            match self.batches.poll_recv(cx) {
                Poll::Ready(Some(batch)) => self.current = batch.into_iter(),
                Poll::Ready(None) => {
                    let Some(run) = self.run.as_mut() else {
                        return Poll::Ready(None);
                    };
                    let outcome = match run.poll_unpin(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(result)) => result,
                        Poll::Ready(Err(_)) => Err(FlowError::Cancelled),
                    };
                    self.run = None;
                    return Poll::Ready(outcome.err().map(Err));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<T> Unpin for FlowStream<T> {}

impl<T> Drop for FlowStream<T> {
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            // Aborting the task drops the running pipeline, which aborts every stage.
            run.abort();
        }
    }
}
