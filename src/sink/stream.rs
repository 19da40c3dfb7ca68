//! A running flow as an async stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{FutureExt, Stream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::{FlowError, Result};
use crate::flow::Output;
use crate::stage::Pipeline;

/// An async stream over a running flow's events; see `Flow::into_stream`. Dropping it
/// stops the flow.
#[derive(Debug)]
pub struct FlowStream<T> {
    batches: mpsc::Receiver<Vec<T>>,
    current: std::vec::IntoIter<T>,
    run: Option<JoinHandle<Result<()>>>,
}

pub(crate) fn stream<T: Send + 'static>(
    pipeline: Pipeline,
    outputs: Vec<Output<T>>,
) -> Result<FlowStream<T>> {
    let (pipeline, rx) = super::channel(pipeline, outputs, 2)?;
    let running = pipeline.spawn()?;
    let run = tokio::spawn(async move { running.join().await.map(|_| ()) });
    Ok(FlowStream {
        batches: rx,
        current: Vec::new().into_iter(),
        run: Some(run),
    })
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
