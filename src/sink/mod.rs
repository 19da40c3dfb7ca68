//! Sinks: where a flow's events go — a collection, a blocking iterator, an async stream,
//! any [`Consumer`](crate::stage::Consumer) (`Flow::run_into`: CSV and JSON-lines files,
//! async writers, [`blocking`] work that owns its state), or nowhere. Each subscribes one consumer to every output of the flow's
//! last layer; a consumer that is slow asks for less, which slows the sources.

mod async_fn;
mod blocking;
#[cfg(feature = "csv")]
mod csv;
mod iter;
#[cfg(feature = "json")]
mod json;
#[cfg(feature = "redis")]
mod redis;
mod stream;

use std::sync::{Arc, Mutex};

pub use async_fn::{AsyncFn, async_fn};
pub use blocking::{Blocking, BlockingResult, blocking, blocking_batches};
#[cfg(feature = "csv")]
pub use csv::CsvSink;
pub use iter::FlowIter;
#[cfg(feature = "json")]
pub use json::JsonLinesSink;
#[cfg(feature = "redis")]
pub use redis::{Outgoing, RedisAck, RedisStreamSink};
pub use stream::FlowStream;

pub(crate) use blocking::off_workers;
pub(crate) use iter::iter;
pub(crate) use stream::stream;

use crate::error::{Result, StageError};
use crate::flow::Output;
use crate::stage::scoped::ScopedPipeline;
use crate::stage::{ConsumerRef, Pipeline, SubscribeOptions};

/// Subscribes `consumer` to every output.
pub(crate) fn subscribe_all<T>(
    pipeline: &mut ScopedPipeline<'_>,
    consumer: &ConsumerRef<T>,
    outputs: &[Output<T>],
) -> Result<()> {
    subscribe_all_with(pipeline, consumer, outputs, SubscribeOptions::new)
}

fn subscribe_all_with<T>(
    pipeline: &mut ScopedPipeline<'_>,
    consumer: &ConsumerRef<T>,
    outputs: &[Output<T>],
    options: impl Fn() -> SubscribeOptions<T>,
) -> Result<()> {
    for output in outputs {
        pipeline.subscribe(consumer, &output.producer, options())?;
    }
    Ok(())
}

fn sink<'a, T, F>(
    mut pipeline: ScopedPipeline<'a>,
    outputs: Vec<Output<T>>,
    handle: F,
) -> Result<ScopedPipeline<'a>>
where
    T: Send + 'static,
    F: FnMut(Vec<T>) -> std::result::Result<(), StageError> + Send + 'a,
{
    let consumer = pipeline.consumer(
        crate::flow::SinkConsumer {
            handle,
            _events: std::marker::PhantomData,
        },
        crate::stage::ConsumerOptions::new().name("sink"),
    );
    subscribe_all(&mut pipeline, &consumer, &outputs)?;
    Ok(pipeline)
}

/// Runs the pipeline, collecting every event.
pub(crate) fn collect<T, B>(pipeline: ScopedPipeline<'_>, outputs: Vec<Output<T>>) -> Result<B>
where
    T: Send + 'static,
    B: FromIterator<T>,
{
    let batches: Arc<Mutex<Vec<Vec<T>>>> = Arc::default();
    let into = batches.clone();
    let pipeline = sink(pipeline, outputs, move |batch: Vec<T>| {
        into.lock().unwrap_or_else(|p| p.into_inner()).push(batch);
        Ok(())
    })?;
    pipeline.run()?;
    let batches = std::mem::take(&mut *batches.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(batches.into_iter().flatten().collect())
}

/// A consumer sending each batch into a bounded channel: when the reader is behind, the
/// consumer waits, stops asking, and backpressure reaches the sources.
struct ChannelSink<T> {
    tx: tokio::sync::mpsc::Sender<Vec<T>>,
}

impl<T: Send + 'static> crate::stage::Consumer for ChannelSink<T> {
    type Item = T;

    async fn handle_events(
        &mut self,
        events: Vec<T>,
        _context: &mut crate::stage::ConsumerContext,
    ) -> std::result::Result<(), StageError> {
        // A closed channel means the reader was dropped; the run is being stopped.
        self.tx
            .send(events)
            .await
            .map_err(|_| StageError::from("the flow's reader was dropped"))
    }
}

/// A pipeline whose flow output goes into a bounded channel of `in_flight` batches, each
/// of at most `max_demand` events per output: what the reader holds is bounded by both.
pub(crate) fn channel<T: Send + 'static>(
    mut pipeline: ScopedPipeline<'static>,
    outputs: Vec<Output<T>>,
    in_flight: usize,
    max_demand: usize,
) -> Result<(Pipeline, tokio::sync::mpsc::Receiver<Vec<T>>)> {
    let (tx, rx) = tokio::sync::mpsc::channel(in_flight);
    let consumer = pipeline.consumer(
        ChannelSink { tx },
        crate::stage::ConsumerOptions::new().name("sink"),
    );
    subscribe_all_with(&mut pipeline, &consumer, &outputs, || {
        SubscribeOptions::new().max_demand(max_demand)
    })?;
    Ok((pipeline.into_pipeline(), rx))
}

/// A pipeline whose flow output goes to `consumer`.
pub(crate) fn consumer<'a, C: crate::stage::Consumer + 'a>(
    mut pipeline: ScopedPipeline<'a>,
    outputs: Vec<Output<C::Item>>,
    consumer: C,
) -> Result<ScopedPipeline<'a>> {
    let consumer = pipeline.consumer(consumer, crate::stage::ConsumerOptions::new().name("sink"));
    subscribe_all(&mut pipeline, &consumer, &outputs)?;
    Ok(pipeline)
}

/// A pipeline whose flow output is dropped.
pub(crate) fn discard<T: Send + 'static>(
    pipeline: ScopedPipeline<'_>,
    outputs: Vec<Output<T>>,
) -> Result<ScopedPipeline<'_>> {
    sink(pipeline, outputs, |_batch: Vec<T>| Ok(()))
}
