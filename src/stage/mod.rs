//! The stage layer: GenStage for Rust.
//!
//! A pipeline is made of **stages**. A [`Producer`] emits events when asked, a [`Consumer`]
//! takes them, and a [`ProducerConsumer`] does both. A consumer *subscribes* to a producer
//! and sends it *demand*; the producer never sends more events than it was asked for.
//! Events travel in batches; demand is counted in events.
//!
//! ```
//! use flowstage::stage::{Pipeline, SubscribeOptions, consumer_fn, from_iter, producer_consumer_fn};
//! use std::sync::{Arc, Mutex};
//!
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let sink = seen.clone();
//!
//! let mut pipeline = Pipeline::new();
//! let numbers = pipeline.producer(from_iter(1..=1000u64));
//! let (doubler_in, doubler_out) =
//!     pipeline.producer_consumer(producer_consumer_fn(|batch: Vec<u64>| {
//!         batch.into_iter().map(|n| n * 2).collect()
//!     }));
//! let printer = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
//!     sink.lock().unwrap().extend(batch);
//! }));
//! pipeline.subscribe(&doubler_in, &numbers, SubscribeOptions::new().max_demand(100))?;
//! pipeline.subscribe(&printer, &doubler_out, SubscribeOptions::new())?;
//! pipeline.run()?;
//!
//! assert_eq!(seen.lock().unwrap().iter().sum::<u64>(), 1000 * 1001);
//! # Ok::<(), flowstage::FlowError>(())
//! ```
//!
//! - Demand: [`SubscribeOptions`] (`max_demand`, `min_demand`, automatic or manual
//!   [`DemandMode`], [`Cancel`] mode).
//! - Producers' buffers and the no-stall retry: [`ProducerOptions`].
//! - Who gets which event: [`Dispatcher`].
//! - Concurrent workers with restarts: [`Supervisor`].
//! - Running and observing: [`Pipeline`], [`Running`], [`Report`].
//! - Ending a run that would go on forever, without losing what is in flight:
//!   [`ShutdownHandle`].

// `unsafe` is forbidden in every module here but `scoped` (stages that borrow).
#[forbid(unsafe_code)]
mod adapters;
#[forbid(unsafe_code)]
mod buffer;
#[forbid(unsafe_code)]
pub(crate) mod demand;
#[forbid(unsafe_code)]
mod dispatcher;
#[forbid(unsafe_code)]
mod link;
#[forbid(unsafe_code)]
mod metrics;
#[forbid(unsafe_code)]
mod pipeline;
#[forbid(unsafe_code)]
mod run;
pub(crate) mod scoped;
#[forbid(unsafe_code)]
mod shutdown;
#[forbid(unsafe_code)]
mod supervisor;

use std::future::Future;

pub use adapters::{
    ConsumerFn, IterProducer, PollFn, ProducerConsumerFn, consumer_fn, from_iter, poll_fn,
    producer_consumer_fn,
};
pub use buffer::{BufferKeep, DEFAULT_BUFFER_SIZE};
pub use demand::{Cancel, DEFAULT_MAX_DEMAND, DemandMode, SubscribeOptions};
pub use dispatcher::{Dispatcher, partition_hash, partition_of};
pub(crate) use dispatcher::{ScopedDispatcher, queue_routed};
pub use metrics::{ErrorCounters, ErrorSnapshot, StageSnapshot};
pub use pipeline::{
    ConsumerOptions, ConsumerRef, Pipeline, ProducerConsumerOptions, ProducerOptions, ProducerRef,
    Report, Running,
};
pub use shutdown::ShutdownHandle;
pub use supervisor::{Restart, Supervisor, SupervisorCounters, SupervisorOptions};

use crate::error::StageError;

/// What a producer returns from [`Producer::handle_demand`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Produced<T> {
    /// Events; more may follow. Fewer than asked, or none, is fine: the runtime keeps the
    /// rest of the demand and asks again.
    Events(Vec<T>),
    /// The last events; the producer is finished.
    Finished(Vec<T>),
}

/// A stage that emits events in answer to demand.
///
/// `handle_demand(n)` may return fewer than `n` events, or none: the runtime remembers the
/// debt and asks again — at once if some events came, after
/// [`ProducerOptions::retry_interval`] if none did. An async producer that waits for
/// data (a socket, a channel) simply awaits inside `handle_demand`. Events returned beyond
/// `n` wait in the producer's buffer ([`ProducerOptions::buffer_size`]).
///
/// ```
/// use flowstage::stage::{Produced, Producer};
/// use flowstage::StageError;
///
/// struct Counter(u64);
///
/// impl Producer for Counter {
///     type Item = u64;
///     async fn handle_demand(&mut self, demand: usize) -> Result<Produced<u64>, StageError> {
///         let events = (self.0..self.0 + demand as u64).collect();
///         self.0 += demand as u64;
///         Ok(Produced::Events(events))
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a producer stage",
    label = "not a `Producer`",
    note = "implement `flowstage::stage::Producer` for it (`handle_demand` returns at most \
            `demand` events), or wrap an iterator with `flowstage::stage::from_iter`"
)]
pub trait Producer: Send {
    /// The events this producer emits.
    type Item: Send + 'static;

    /// Returns up to `demand` events (more go to the buffer).
    fn handle_demand(
        &mut self,
        demand: usize,
    ) -> impl Future<Output = Result<Produced<Self::Item>, StageError>> + Send;

    /// Internal to the flow layer: per partition, the events this producer routed itself
    /// in its last production (a flow's source stage whose chain ends in a `partition`),
    /// which the runtime moves into the partition dispatcher's queues after each
    /// production, as if they had been returned. `None` (the default): everything made is
    /// in what `handle_demand` returned.
    #[doc(hidden)]
    fn routed(&mut self) -> Option<&mut Vec<Vec<Self::Item>>> {
        None
    }

    /// Internal to the flow layer: whether this producer, when it [routes](Producer::routed),
    /// makes its events without ever waiting (an iterator's loop). The runtime then lends
    /// it the dispatcher's own queues for the production, so routed events land where
    /// they wait to be sent, without a copy; a producer that may wait keeps queues of its
    /// own, so that what the dispatcher holds still goes out while it waits.
    #[doc(hidden)]
    fn routes_without_waiting(&self) -> bool {
        false
    }
}

/// What a consumer can do while it handles events: see where they came from and, in
/// [`DemandMode::Manual`], ask for more.
#[derive(Debug)]
pub struct ConsumerContext {
    from: usize,
    asks: Vec<(usize, usize)>,
    late: u64,
}

impl ConsumerContext {
    pub(crate) fn new(from: usize) -> Self {
        ConsumerContext {
            from,
            asks: Vec::new(),
            late: 0,
        }
    }

    /// Counts `n` events that came too late to be used, in the stage's metrics
    /// ([`StageSnapshot::late`]).
    pub fn count_late(&mut self, n: u64) {
        self.late += n;
    }

    pub(crate) fn take_late(&mut self) -> u64 {
        std::mem::take(&mut self.late)
    }

    /// The subscription the current events came from (its index among this stage's
    /// subscriptions, in the order they were made).
    pub fn from(&self) -> usize {
        self.from
    }

    /// Asks the current subscription for `n` more events (manual demand).
    pub fn ask(&mut self, n: usize) {
        self.asks.push((self.from, n));
    }

    /// Asks subscription `upstream` for `n` more events (manual demand).
    pub fn ask_upstream(&mut self, upstream: usize, n: usize) {
        self.asks.push((upstream, n));
    }

    pub(crate) fn take_asks(&mut self) -> Vec<(usize, usize)> {
        std::mem::take(&mut self.asks)
    }
}

/// A stage that takes events.
///
/// ```
/// use flowstage::stage::{Consumer, ConsumerContext};
/// use flowstage::StageError;
///
/// struct Sum(u64);
///
/// impl Consumer for Sum {
///     type Item = u64;
///     async fn handle_events(
///         &mut self,
///         events: Vec<u64>,
///         _context: &mut ConsumerContext,
///     ) -> Result<(), StageError> {
///         self.0 += events.iter().sum::<u64>();
///         Ok(())
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a consumer stage",
    label = "not a `Consumer`",
    note = "implement `flowstage::stage::Consumer` for it; to run a closure on each event \
            write `.for_each(..)`, to gather the events `.collect()`"
)]
pub trait Consumer: Send {
    /// The events this consumer takes.
    type Item: Send + 'static;

    /// Called once per subscription before any event, with that subscription as
    /// [`ConsumerContext::from`]; a manual-demand consumer asks here.
    fn handle_subscribe(&mut self, context: &mut ConsumerContext) {
        let _ = context;
    }

    /// Handles a chunk of at most `max_demand - min_demand` events.
    fn handle_events(
        &mut self,
        events: Vec<Self::Item>,
        context: &mut ConsumerContext,
    ) -> impl Future<Output = Result<(), StageError>> + Send;

    /// Called once, after every producer has finished and every event was handled.
    fn handle_done(&mut self) -> impl Future<Output = Result<(), StageError>> + Send {
        async { Ok(()) }
    }

    /// Resolves if the consumer fails on its own while it waits for events (work it
    /// started in the background failed for good); the run then ends with that error.
    /// The default never resolves.
    fn failed(&self) -> impl Future<Output = StageError> + Send {
        std::future::pending()
    }
}

/// A stage that takes events and emits new ones.
///
/// Input is handled only while its consumers have demand, so a slow consumer slows this
/// stage and, through it, its producers.
///
/// ```
/// use flowstage::stage::{ConsumerContext, ProducerConsumer};
/// use flowstage::StageError;
///
/// struct Words;
///
/// impl ProducerConsumer for Words {
///     type In = String;
///     type Out = String;
///     async fn handle_events(
///         &mut self,
///         lines: Vec<String>,
///         _context: &mut ConsumerContext,
///     ) -> Result<Vec<String>, StageError> {
///         Ok(lines.iter().flat_map(|l| l.split_whitespace().map(str::to_owned)).collect())
///     }
/// }
/// ```
pub trait ProducerConsumer: Send {
    /// The events this stage takes.
    type In: Send + 'static;
    /// The events this stage emits.
    type Out: Send + 'static;

    /// Called once per subscription before any event (see [`Consumer::handle_subscribe`]).
    fn handle_subscribe(&mut self, context: &mut ConsumerContext) {
        let _ = context;
    }

    /// Handles a chunk of input and returns the events to emit.
    fn handle_events(
        &mut self,
        events: Vec<Self::In>,
        context: &mut ConsumerContext,
    ) -> impl Future<Output = Result<Vec<Self::Out>, StageError>> + Send;

    /// Handles a chunk of input as [`handle_events`](ProducerConsumer::handle_events)
    /// does, taking the events out of `events` and leaving it empty: the runtime then
    /// hands its allocation back to the producers for a later batch, instead of freeing
    /// here what another thread allocated (which makes the system allocator return memory
    /// to the OS and fault it in again, batch after batch). Override it when the stage can
    /// use the events in place (`events.drain(..)`); the default takes the whole `Vec`.
    fn handle_events_in_place(
        &mut self,
        events: &mut Vec<Self::In>,
        context: &mut ConsumerContext,
    ) -> impl Future<Output = Result<Vec<Self::Out>, StageError>> + Send {
        self.handle_events(std::mem::take(events), context)
    }

    /// Called once after all input was handled; returns the last events to emit.
    fn handle_done(&mut self) -> impl Future<Output = Result<Vec<Self::Out>, StageError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Called when subscription `from` ended (its producer finished), after every event it
    /// sent was handled; returns events to emit. Windows use it: a finished producer no
    /// longer holds the watermark back.
    fn handle_upstream_done(
        &mut self,
        from: usize,
    ) -> impl Future<Output = Result<Vec<Self::Out>, StageError>> + Send {
        let _ = from;
        async { Ok(Vec::new()) }
    }

    /// Resolves when the stage wants [`handle_wakeup`](ProducerConsumer::handle_wakeup)
    /// called although no event came: a timer is due, a message arrived from outside
    /// (GenStage's `handle_info`). The runtime awaits it only while the stage is idle and
    /// no output waits for demand, and drops it when a message comes first, so it must be
    /// cancel-safe. A busy stage should also check its timers as it handles events. The
    /// default never resolves.
    fn wakeup(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Handles a [`wakeup`](ProducerConsumer::wakeup); returns events to emit.
    fn handle_wakeup(&mut self) -> impl Future<Output = Result<Vec<Self::Out>, StageError>> + Send {
        async { Ok(Vec::new()) }
    }
}
