//! A rayon parallel iterator as a flow's source
//! ([`Flow::from_par_iter`](super::Flow::from_par_iter)): rayon's splits are the source
//! layer's producers.
//!
//! The iterator is driven by rayon as any of its own, with a consumer of the flow's: each
//! split folds its items straight through the source layer's stateless chain — and the
//! terminal's per-stage part, if the flow ends there — on rayon's threads, then sends
//! what the chain made, in batches, to the flow's next layer (or to the terminal, one
//! result per split). So the items are read and mapped once, on one pool: the flow's own
//! workers only take the chain's output (nothing, for `sum` or `count`). A bounded
//! channel between the two is the backpressure: a split whose batch does not fit waits.
//!
//! rayon starts on the first demand, from a thread of the flow's that waits for it to end
//! (and is joined when the run ends, so the iterator and the closures may borrow). A
//! panic in a split ends the run with `FlowError::StagePanicked` naming a source stage;
//! when the flow ends or is drained, the splits stop at their next item.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rayon::iter::ParallelIterator;
use rayon::iter::plumbing::{Consumer, Folder, Reducer, UnindexedConsumer};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::Flow;
use super::compile::{Compiler, DispatchSpec, Output, Plan, settled_blocking};
use super::fused::{Read, SourceRead};
use super::logic::{Identity, Logic, PartitionInfo};
use super::plan::SourceShape;
use crate::error::{FlowError, IoOperation, Result, StageError};
use crate::stage::ShutdownHandle;

/// Events per batch sent from a split.
const BATCH: usize = 4096;

/// A rayon parallel iterator as a flow's source; see
/// [`Flow::from_par_iter`](super::Flow::from_par_iter).
#[derive(Debug)]
pub struct ParIterNode<I> {
    pub(crate) iter: I,
    pub(crate) stages: Option<usize>,
}

/// What the splits send to the source stages.
enum Message<T> {
    Batch(Vec<T>),
    /// A fallible operator of the chain failed the run.
    Failed(StageError),
    /// A split panicked.
    Panicked(Box<dyn std::any::Any + Send>),
    /// The iterator was read to its end.
    End,
}

impl<I> Plan for ParIterNode<I>
where
    I: ParallelIterator,
    I::Item: 'static,
{
    type Item = I::Item;

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
        let stages = match self.stages {
            Some(0) => {
                return Err(FlowError::Config(
                    "from_par_iter: a source's layer needs at least 1 stage".into(),
                ));
            }
            Some(stages) => stages,
            None => crate::runtime::default_parallelism(),
        };
        let (tx, rx) = mpsc::channel::<Message<L::Out>>(stages * 2);
        let (go, started) = oneshot::channel::<()>();
        // Set when the flow is gone (a send failed): the splits stop.
        let gone = Arc::new(AtomicBool::new(false));
        let consumer = FlowConsumer {
            logic,
            tx: tx.clone(),
            gone: gone.clone(),
            shutdown: compiler.pipeline.inner().shutdown_handle(),
            splits: Arc::new(AtomicUsize::new(0)),
        };
        let iter = self.iter;
        compiler
            .pipeline
            .spawn_lender("flowstage-par-iter", move || {
                // Nothing runs before the flow does: a flow compiled and dropped unrun
                // drops `go`.
                if started.blocking_recv().is_err() {
                    return;
                }
                let drive = std::panic::AssertUnwindSafe(|| iter.drive_unindexed(consumer));
                let last = match std::panic::catch_unwind(drive) {
                    Ok(()) => Message::End,
                    Err(panic) => Message::Panicked(panic),
                };
                let _ = tx.blocking_send(last);
            })
            .map_err(|source| FlowError::Io {
                operation: IoOperation::Spawn,
                path: None,
                offset: None,
                source,
            })?;
        let shared = Arc::new(Shared {
            rx: Mutex::new(rx),
            go: std::sync::Mutex::new(Some(go)),
            ended: AtomicBool::new(false),
        });
        let shape = SourceShape {
            readers: stages,
            stages,
            shared: false,
        };
        let readers = (0..stages).map(|_| shared.clone()).collect();
        Ok(shape.build(compiler, "from_par_iter", readers, |shared| {
            (Splits { shared }, Identity::new(), dispatch, None)
        }))
    }
}

/// The source stages' side: the channel from the splits, read by one stage at a time.
struct Shared<T> {
    rx: Mutex<mpsc::Receiver<Message<T>>>,
    /// Starts rayon, on the first read.
    go: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    /// `End` (or the failure that ends the run) came: a closed channel is then no error.
    ended: AtomicBool,
}

/// A source stage's reader of what the splits sent.
struct Splits<T> {
    shared: Arc<Shared<T>>,
}

impl<T: Send + 'static> SourceRead for Splits<T> {
    type Item = T;

    async fn read<L: Logic<In = T>>(
        &mut self,
        _n: usize,
        logic: &mut L,
        out: &mut Vec<L::Out>,
    ) -> std::result::Result<Read, StageError> {
        let go = self
            .shared
            .go
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(go) = go {
            let _ = go.send(());
        }
        let message = {
            let mut rx = self.shared.rx.lock().await;
            let message = rx.recv().await;
            if matches!(
                message,
                Some(Message::End | Message::Failed(_) | Message::Panicked(_))
            ) {
                // (Set under the lock: a stage that reads after sees it with the close.)
                // After a failure the other stages end as at the end: the run's error is
                // the one this stage is about to return, not a closed channel.
                self.shared.ended.store(true, Ordering::Release);
            }
            message
        };
        match message {
            // A batch may exceed the demand by less than one batch; the surplus waits in
            // the stage's buffer.
            Some(Message::Batch(mut events)) => {
                let read = events.len();
                logic.batch(&mut events, out);
                Ok(Read { read, ended: false })
            }
            Some(Message::End) => Ok(Read {
                read: 0,
                ended: true,
            }),
            Some(Message::Failed(error)) => Err(error),
            // The user's closure panicked in a split: panic here, in this stage, so that
            // the run ends naming it.
            Some(Message::Panicked(payload)) => std::panic::resume_unwind(payload),
            None if self.shared.ended.load(Ordering::Acquire) => Ok(Read {
                read: 0,
                ended: true,
            }),
            None => Err("the parallel iterator's thread ended before the iterator did".into()),
        }
    }
}

/// The flow's consumer of a parallel iterator: each split gets a clone of the source
/// layer's chain.
struct FlowConsumer<L: Logic> {
    logic: L,
    tx: mpsc::Sender<Message<L::Out>>,
    gone: Arc<AtomicBool>,
    shutdown: ShutdownHandle,
    /// Splits so far: a split's index for its chain's `start`.
    splits: Arc<AtomicUsize>,
}

impl<L: Logic + Clone> FlowConsumer<L> {
    fn split(&self) -> Self {
        FlowConsumer {
            logic: self.logic.clone(),
            tx: self.tx.clone(),
            gone: self.gone.clone(),
            shutdown: self.shutdown.clone(),
            splits: self.splits.clone(),
        }
    }

    fn stopped(&self) -> bool {
        // Either flag is only ever set; a stale read costs a few more items.
        self.gone.load(Ordering::Relaxed) || self.shutdown.is_draining()
    }
}

impl<L> Consumer<L::In> for FlowConsumer<L>
where
    L: Logic + Clone,
{
    type Folder = SplitFolder<L>;
    type Reducer = NoReduce;
    type Result = ();

    fn split_at(self, _index: usize) -> (Self, Self, NoReduce) {
        (self.split(), self, NoReduce)
    }

    fn into_folder(mut self) -> SplitFolder<L> {
        let index = self.splits.fetch_add(1, Ordering::Relaxed);
        self.logic.start(PartitionInfo {
            index,
            count: rayon::current_num_threads(),
        });
        SplitFolder {
            consumer: self,
            batch: Vec::new(),
            out: Vec::new(),
        }
    }

    fn full(&self) -> bool {
        self.stopped()
    }
}

impl<L> UnindexedConsumer<L::In> for FlowConsumer<L>
where
    L: Logic + Clone,
{
    fn split_off_left(&self) -> Self {
        self.split()
    }

    fn to_reducer(&self) -> NoReduce {
        NoReduce
    }
}

/// The splits' results are what they sent: nothing to reduce.
struct NoReduce;

impl Reducer<()> for NoReduce {
    fn reduce(self, _left: (), _right: ()) {}
}

/// One split: its items through the chain, its output sent in batches.
struct SplitFolder<L: Logic> {
    consumer: FlowConsumer<L>,
    /// The items read for the chain (kept for its allocation).
    batch: Vec<L::In>,
    out: Vec<L::Out>,
}

impl<L: Logic> SplitFolder<L> {
    /// Sends the output so far, or what failed; stops the splits if the flow is gone.
    fn send(&mut self) {
        if !self.settle() {
            return;
        }
        if self.out.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.out);
        if self
            .consumer
            .tx
            .blocking_send(Message::Batch(batch))
            .is_err()
        {
            self.consumer.gone.store(true, Ordering::Relaxed);
        }
    }
}

impl<L: Logic> SplitFolder<L> {
    /// Whether the chain may go on: fails the run with its error if it has one, and
    /// otherwise waits (on this rayon thread) until its dead letters are on their way, as
    /// a stage does between batches.
    fn settle(&mut self) -> bool {
        match settled_blocking(&mut self.consumer.logic) {
            Ok(()) => true,
            Err(error) => {
                self.fail(error);
                false
            }
        }
    }

    /// Ends the run with the chain's error (`failure` hands it over once) and stops the
    /// splits.
    fn fail(&mut self, error: StageError) {
        let _ = self.consumer.tx.blocking_send(Message::Failed(error));
        self.consumer.gone.store(true, Ordering::Relaxed);
    }
}

impl<L> Folder<L::In> for SplitFolder<L>
where
    L: Logic + Clone,
{
    type Result = ();

    fn consume(mut self, item: L::In) -> Self {
        self.consumer.logic.push(item, &mut self.out);
        if self.out.len() >= BATCH {
            self.send();
        }
        self
    }

    fn consume_iter<It: IntoIterator<Item = L::In>>(mut self, iter: It) -> Self {
        let mut iter = iter.into_iter();
        // A batch of items at a time through the chain, so that what it makes goes out
        // in bounded batches and a stopped flow is seen between them.
        while !self.consumer.stopped() {
            // Read a batch, then run the chain over it: the read is a plain copy loop
            // (`extend` of a `Take` of the split's iterator) and the chain's a loop over a
            // slice, each as tight as rayon's own; feeding the chain from the split's
            // iterator directly (`take(..).inspect(..)`, or a counted fold) interleaves
            // both and took 4.5x (then 1.46x) rayon's time on map/filter/sum.
            self.batch.clear();
            self.batch.extend(iter.by_ref().take(BATCH));
            let left = BATCH - self.batch.len();
            self.consumer.logic.batch(&mut self.batch, &mut self.out);
            if !self.settle() {
                break;
            }
            if self.out.len() >= BATCH {
                self.send();
            }
            if left > 0 {
                break;
            }
        }
        self
    }

    fn complete(mut self) {
        if !self.consumer.stopped() {
            self.consumer.logic.done(&mut self.out);
        }
        self.send();
    }

    fn full(&self) -> bool {
        self.consumer.stopped()
    }
}

impl<I> Flow<ParIterNode<I>> {
    /// The number of source stages taking what rayon's splits made (default: one per
    /// core).
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// use rayon::prelude::*;
    /// let total: u64 = Flow::from_par_iter((1..=1000u64).into_par_iter()).stages(3).sum()?;
    /// assert_eq!(total, 500_500);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn stages(mut self, stages: usize) -> Self {
        self.plan.stages = Some(stages);
        self
    }
}

#[cfg(feature = "timely")]
mod cluster {
    //! On the cluster, a parallel iterator is one source read by worker 0: rayon's pool
    //! of that process drives it, in batches, into the worker's source operator, and the
    //! flow's next exchange spreads what it made over every worker.

    use rayon::iter::ParallelIterator;
    use tokio::sync::mpsc;

    use super::{BATCH, ParIterNode};
    use crate::cluster::{ClusterCompiler, ClusterPlan, ClusterStream, Stamp};
    use crate::error::{Result, StageError};
    use crate::flow::plan::SourceNode;
    use crate::flow::{Logic, Plan};
    use crate::source::{BoxedProducer, Source};
    use crate::stage::{Produced, Producer};

    impl<I> ClusterPlan for ParIterNode<I>
    where
        I: ParallelIterator + 'static,
        I::Item: 'static,
    {
        fn timely<'s, L>(
            self,
            compiler: &mut ClusterCompiler<'s>,
            logic: L,
            stamp: Stamp<L::Out>,
        ) -> Result<ClusterStream<'s, L::Out>>
        where
            L: Logic<In = <Self as Plan>::Item> + Clone + 'static,
        {
            SourceNode {
                source: RayonSource(self.iter),
                label: "from_par_iter",
                stages: self.stages,
            }
            .timely(compiler, logic, stamp)
        }
    }

    /// A parallel iterator as a one-producer source (worker 0's, by the default share).
    struct RayonSource<I>(I);

    impl<I> Source for RayonSource<I>
    where
        I: ParallelIterator + 'static,
        I::Item: 'static,
    {
        type Item = I::Item;

        fn into_producers(self) -> Result<Vec<BoxedProducer<I::Item>>> {
            Ok(vec![BoxedProducer::new(RayonProducer {
                iter: Some(self.0),
                rx: None,
                ready: Vec::new(),
            })])
        }
    }

    /// What rayon's thread sends: batches, then the end, or the panic of a split.
    type Sent<T> = std::thread::Result<Vec<T>>;

    /// Starts rayon on the first demand (on a thread of its own, which ends when the
    /// iterator does, or when the producer is gone and a send fails).
    struct RayonProducer<I: ParallelIterator> {
        iter: Option<I>,
        rx: Option<mpsc::Receiver<Sent<I::Item>>>,
        /// Received and not yet asked for.
        ready: Vec<I::Item>,
    }

    impl<I> Producer for RayonProducer<I>
    where
        I: ParallelIterator + 'static,
        I::Item: 'static,
    {
        type Item = I::Item;

        async fn handle_demand(
            &mut self,
            demand: usize,
        ) -> std::result::Result<Produced<I::Item>, StageError> {
            if let Some(iter) = self.iter.take() {
                let (tx, rx) = mpsc::channel::<Sent<I::Item>>(4);
                self.rx = Some(rx);
                std::thread::Builder::new()
                    .name("flowstage-par-iter".into())
                    .spawn(move || {
                        let send = |batch: Vec<I::Item>| tx.blocking_send(Ok(batch)).map_err(drop);
                        let drive = std::panic::AssertUnwindSafe(|| {
                            iter.try_fold(Vec::new, |mut batch, item| {
                                batch.push(item);
                                if batch.len() >= BATCH {
                                    send(std::mem::take(&mut batch))?;
                                }
                                Ok(batch)
                            })
                            .try_for_each(|rest| match rest {
                                Ok(rest) if !rest.is_empty() => send(rest),
                                other => other.map(drop),
                            })
                        });
                        if let Err(panic) = std::panic::catch_unwind(drive) {
                            let _ = tx.blocking_send(Err(panic));
                        }
                    })
                    .map_err(|error| StageError::from(format!("from_par_iter: {error}")))?;
            }
            while self.ready.len() < demand {
                let Some(rx) = self.rx.as_mut() else { break };
                match rx.recv().await {
                    // (A batch moves whole when nothing waits before it.)
                    Some(Ok(batch)) if self.ready.is_empty() => self.ready = batch,
                    Some(Ok(batch)) => self.ready.extend(batch),
                    // A split panicked: the source operator reports it as this stage's.
                    Some(Err(panic)) => std::panic::resume_unwind(panic),
                    None => self.rx = None,
                }
            }
            let events = if self.ready.len() <= demand {
                std::mem::take(&mut self.ready)
            } else {
                let rest = self.ready.split_off(demand);
                std::mem::replace(&mut self.ready, rest)
            };
            Ok(if self.rx.is_none() && self.ready.is_empty() {
                Produced::Finished(events)
            } else {
                Produced::Events(events)
            })
        }
    }
}
