//! `batch(size, timeout)`: events grouped into `Vec`s by count or by time, for bulk sinks
//! (Broadway's batchers).
//!
//! A batch closes when it holds `size` events, or `timeout` after its first event came,
//! whichever is first; the last one closes when the input ends. The timeout needs a timer
//! that fires when no event comes, which a fused operator (run only when events arrive)
//! cannot have, so `batch` is a stage of its own: the layer before it sends its events,
//! a chunk at a time, over a bounded channel (a full channel stops that layer asking
//! upstream: backpressure) to one batching producer that waits with a deadline.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::compile::{Compiler, DispatchSpec, Output, Plan};
use super::fused::OwnProducer;
use super::logic::{Identity, Logic, PartitionInfo};
use super::plan::StageHead;
use crate::error::{FlowError, Result, StageError};
use crate::stage::{Consumer, ConsumerContext, ConsumerOptions, Produced, Producer};

/// A batch of events made by [`Flow::batch`](super::Flow::batch): the flow's events
/// after `batch` are `Batch<T>`, so a sink of batches says so in its type
/// (`Consumer<Item = Batch<T>>`, or [`sink::blocking_batches`](crate::sink::blocking_batches),
/// whose closure gets each batch as a `Vec`). A `Vec<T>` underneath: it derefs to one,
/// iterates, and [`into_inner`](Batch::into_inner) gives it back.
///
/// ```
/// use flowstage::flow::{Batch, Flow};
/// use std::time::Duration;
/// let batches: Vec<Batch<u32>> = Flow::from_iter(0..5u32).batch(2, Duration::from_secs(1)).collect()?;
/// assert_eq!(batches, [vec![0, 1], vec![2, 3], vec![4]]);
/// assert_eq!(batches[0].len(), 2);
/// # Ok::<(), flowstage::FlowError>(())
/// ```
///
/// A sink of single events does not take batches; the compiler says which it expected
/// (here "expected `Batch<u32>`, found `u32`"):
///
/// ```compile_fail,E0271
/// use flowstage::{flow::Flow, sink};
/// use std::time::Duration;
/// let events_sink = sink::blocking((), |_: &mut (), events: Vec<u32>| Ok(()));
/// Flow::from_iter(0..5u32).batch(2, Duration::from_secs(1)).run_into(events_sink)?;
/// # Ok::<(), flowstage::FlowError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch<T>(Vec<T>);

impl<T> Batch<T> {
    /// The events, as a `Vec`.
    pub fn into_inner(self) -> Vec<T> {
        self.0
    }
}

/// With serde (features `csv`, `json`, `timely`): as its `Vec` of events, so that a batch
/// can cross a cluster's exchange or go to a serde sink as it is.
#[cfg(any(feature = "csv", feature = "json", feature = "timely"))]
impl<T: serde::Serialize> serde::Serialize for Batch<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

#[cfg(any(feature = "csv", feature = "json", feature = "timely"))]
impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Batch<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<T>::deserialize(deserializer).map(Batch)
    }
}

impl<T> From<Vec<T>> for Batch<T> {
    fn from(events: Vec<T>) -> Self {
        Batch(events)
    }
}

impl<T> From<Batch<T>> for Vec<T> {
    fn from(batch: Batch<T>) -> Self {
        batch.0
    }
}

impl<T> std::ops::Deref for Batch<T> {
    type Target = Vec<T>;

    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Batch<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.0
    }
}

impl<T: PartialEq> PartialEq<Vec<T>> for Batch<T> {
    fn eq(&self, other: &Vec<T>) -> bool {
        self.0 == *other
    }
}

impl<T> IntoIterator for Batch<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a Batch<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The plan node of [`Flow::batch`](super::Flow::batch).
#[derive(Debug)]
pub struct BatchNode<P> {
    pub(crate) inner: P,
    pub(crate) size: usize,
    pub(crate) timeout: Duration,
}

impl<P: Plan> StageHead for BatchNode<P> {}

impl<P: Plan> Plan for BatchNode<P> {
    type Item = Batch<P::Item>;

    fn compile<'a, L>(
        self,
        compiler: &mut Compiler<'a>,
        logic: L,
        dispatch: &DispatchSpec<'a, L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        Self: 'a,
        L: Logic<In = Self::Item> + Clone + 'a,
    {
        if self.size == 0 {
            return Err(FlowError::Config("batch: size must be at least 1".into()));
        }
        let upstream = self
            .inner
            .compile(compiler, Identity::new(), &DispatchSpec::demand())?;
        // Two chunks in flight: the batcher works on one while the next is on its way.
        let (tx, rx) = mpsc::channel(2);
        let feeder = compiler.pipeline.consumer(
            Feeder { tx: Some(tx) },
            ConsumerOptions::new().name("batch-in"),
        );
        crate::sink::subscribe_all(&mut compiler.pipeline, &feeder, &upstream)?;
        let batcher = Batcher {
            rx,
            size: self.size,
            timeout: self.timeout,
            open: Vec::new(),
            opened_at: None,
            ready: VecDeque::new(),
            closed: false,
        };
        let output = compiler.source(
            "batch",
            OwnProducer(batcher),
            logic,
            PartitionInfo { index: 0, count: 1 },
            dispatch,
            None,
        );
        for source in &upstream {
            compiler.graph.connect(source.node, output.node);
        }
        Ok(vec![output])
    }
}

/// Sends the previous layer's events to the batcher.
struct Feeder<T> {
    tx: Option<mpsc::Sender<Vec<T>>>,
}

impl<T: Send + 'static> Consumer for Feeder<T> {
    type Item = T;

    async fn handle_events(
        &mut self,
        events: Vec<T>,
        _context: &mut ConsumerContext,
    ) -> std::result::Result<(), StageError> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        // A closed channel means the batcher has stopped: the run is ending.
        tx.send(events)
            .await
            .map_err(|_| StageError::from("batch: the batching stage has stopped"))
    }

    async fn handle_done(&mut self) -> std::result::Result<(), StageError> {
        // Closing the channel tells the batcher the input has ended.
        self.tx = None;
        Ok(())
    }
}

/// Groups what the feeder sends into batches.
struct Batcher<T> {
    rx: mpsc::Receiver<Vec<T>>,
    size: usize,
    timeout: Duration,
    /// The batch being filled, and when its first event came.
    open: Vec<T>,
    opened_at: Option<Instant>,
    /// Full batches not yet asked for.
    ready: VecDeque<Batch<T>>,
    closed: bool,
}

impl<T> Batcher<T> {
    fn take(&mut self, events: Vec<T>) {
        for event in events {
            if self.open.is_empty() {
                self.opened_at = Some(Instant::now());
                self.open.reserve(self.size.min(1 << 16));
            }
            self.open.push(event);
            if self.open.len() == self.size {
                self.close_open();
            }
        }
    }

    fn close_open(&mut self) {
        if !self.open.is_empty() {
            self.ready.push_back(Batch(std::mem::take(&mut self.open)));
        }
        self.opened_at = None;
    }
}

impl<T: Send + 'static> Producer for Batcher<T> {
    type Item = Batch<T>;

    async fn handle_demand(
        &mut self,
        demand: usize,
    ) -> std::result::Result<Produced<Batch<T>>, StageError> {
        let mut out = Vec::new();
        loop {
            while out.len() < demand {
                match self.ready.pop_front() {
                    Some(batch) => out.push(batch),
                    None => break,
                }
            }
            if out.len() >= demand {
                return Ok(Produced::Events(out));
            }
            if self.closed {
                self.close_open();
                out.extend(self.ready.drain(..));
                return Ok(Produced::Finished(out));
            }
            if !out.is_empty() {
                // Some batches are ready: add what has already arrived, without waiting.
                match self.rx.try_recv() {
                    Ok(events) => {
                        self.take(events);
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.closed = true;
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => return Ok(Produced::Events(out)),
                }
            }
            // No deadline without an open batch, or with a timeout too long to add
            // (`Duration::MAX`: batches close by count only).
            let deadline = self.opened_at.and_then(|at| at.checked_add(self.timeout));
            let received = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, self.rx.recv()).await,
                None => Ok(self.rx.recv().await),
            };
            match received {
                Ok(Some(events)) => self.take(events),
                Ok(None) => self.closed = true,
                // The open batch's time is up.
                Err(_elapsed) => self.close_open(),
            }
        }
    }
}
