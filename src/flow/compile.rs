//! The planner: turns a flow's plan into stages of a [`Pipeline`].
//!
//! This is the only module that knows both the flow layer and the stage layer. A plan node
//! compiles itself given the logic that follows it ([`Plan::compile`]); stage-making nodes
//! (sources, `partition`, `shuffle`, `merge`, `departition`, `take_sort`) create stages
//! whose work is that logic, and record what they built in the [`Graph`] that
//! [`explain`](super::Flow::explain) prints.

use std::sync::Arc;

use super::explain::{Graph, Node};
use super::logic::{Logic, PartitionInfo};
use crate::error::{Result, StageError};
use crate::source::BoxedProducer;
use crate::stage::{
    Consumer, ConsumerContext, Dispatcher, Pipeline, Produced, Producer, ProducerConsumer,
    ProducerConsumerOptions, ProducerOptions, ProducerRef,
};
use crate::window::Windower;

/// A node of a flow's plan. Implemented by the crate's operators; users meet it as the
/// type parameter of [`Flow`](super::Flow).
pub trait Plan: Send + 'static {
    /// The events this plan emits.
    type Item: Send + 'static;

    /// Builds the plan into `compiler`'s pipeline with `logic` running after it in the
    /// same stage, and the outputs dispatched by `dispatch`. Returns the outputs.
    #[doc(hidden)]
    fn compile<L>(
        self,
        compiler: &mut Compiler,
        logic: L,
        dispatch: &DispatchSpec<L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        L: Logic<In = Self::Item> + Clone;
}

/// One output of a compiled layer: a stage to subscribe to, and its graph node.
#[doc(hidden)]
#[derive(Debug)]
pub struct Output<T> {
    pub(crate) producer: ProducerRef<T>,
    pub(crate) node: usize,
}

/// How a layer's outputs dispatch to the next layer: a fresh dispatcher per stage.
#[doc(hidden)]
pub struct DispatchSpec<T> {
    make: Arc<dyn Fn() -> Dispatcher<T> + Send + Sync>,
    pub(crate) label: String,
}

impl<T> std::fmt::Debug for DispatchSpec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

impl<T: Send + 'static> DispatchSpec<T> {
    pub(crate) fn demand() -> Self {
        DispatchSpec {
            make: Arc::new(Dispatcher::demand),
            label: "demand".into(),
        }
    }

    pub(crate) fn new(
        label: impl Into<String>,
        make: impl Fn() -> Dispatcher<T> + Send + Sync + 'static,
    ) -> Self {
        DispatchSpec {
            make: Arc::new(make),
            label: label.into(),
        }
    }

    pub(crate) fn make(&self) -> Dispatcher<T> {
        (self.make)()
    }
}

/// The state of one compilation: the pipeline being built and the graph to explain it.
#[doc(hidden)]
#[derive(Debug)]
pub struct Compiler {
    pub(crate) pipeline: Pipeline,
    pub(crate) graph: Graph,
}

impl Compiler {
    pub(crate) fn new(pipeline: Pipeline) -> Self {
        Compiler {
            pipeline,
            graph: Graph::default(),
        }
    }

    /// Adds one source producer with `logic` fused into it. `retry_interval`: how long
    /// the runtime waits before asking a producer that had nothing again (the default
    /// of [`ProducerOptions`] when `None`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn source<T, L>(
        &mut self,
        label: &str,
        producer: BoxedProducer<T>,
        mut logic: L,
        partition: PartitionInfo,
        dispatch: &DispatchSpec<L::Out>,
        retry_interval: Option<std::time::Duration>,
    ) -> Output<L::Out>
    where
        T: Send + 'static,
        L: Logic<In = T>,
    {
        logic.start(partition);
        let node = self.graph.add(Node::new(
            format!("{label}[{}]", partition.index),
            "producer",
            &logic,
            &dispatch.label,
        ));
        let name = self.graph.nodes[node].name.clone();
        let mut options = ProducerOptions::new();
        if let Some(retry_interval) = retry_interval {
            options = options.retry_interval(retry_interval);
        }
        let producer = self.pipeline.producer_with(
            FusedProducer {
                producer,
                logic,
                finished: false,
                expansion: Expansion::default(),
            },
            options
                .name(name)
                .dispatcher(dispatch.make())
                // Fused operators may make more events than asked (flat_map); they wait here
                // and nothing more is asked until they are gone, so the buffer is bounded by
                // one batch's expansion — and a flow never drops events.
                .buffer_size(usize::MAX),
        );
        Output { producer, node }
    }

    /// Adds one stage of a layer, running `logic`, windowed by `windower` if any.
    pub(crate) fn stage<L: Logic>(
        &mut self,
        label: &str,
        mut logic: L,
        windower: Option<Windower<L::In>>,
        partition: PartitionInfo,
        dispatch: &DispatchSpec<L::Out>,
    ) -> (crate::stage::ConsumerRef<L::In>, Output<L::Out>) {
        logic.start(partition);
        let node = self.graph.add(Node::new(
            format!("{label}[{}]", partition.index),
            "producer-consumer",
            &logic,
            &dispatch.label,
        ));
        let name = self.graph.nodes[node].name.clone();
        let options = ProducerConsumerOptions::new()
            .name(name)
            .dispatcher(dispatch.make());
        let (input, producer) = match windower {
            None => self
                .pipeline
                .producer_consumer_with(LogicStage { logic, out_hint: 0 }, options),
            Some(windower) => self
                .pipeline
                .producer_consumer_with(WindowedStage { logic, windower }, options),
        };
        (input, Output { producer, node })
    }
}

/// What a source stage's chain made of what it read so far, to size its next read.
#[derive(Debug, Default)]
struct Expansion {
    read: u64,
    made: u64,
    /// The size of the last output, to allocate the next one at once.
    out_hint: usize,
}

impl Expansion {
    /// How many events to read for `demand` events out: as many when nothing came out
    /// yet (or the chain filters), fewer when the chain expands (`flat_map`), so that the
    /// output stays near the demand instead of waiting in dispatcher queues.
    fn ask(&self, demand: usize) -> usize {
        if demand == 0 || self.made <= self.read {
            return demand;
        }
        let scaled = (demand as u128 * self.read as u128).div_ceil(self.made as u128);
        (scaled as usize).clamp(1, demand)
    }

    /// The capacity of the next output: what the last one held, and at least the demand
    /// unless the chain ends in a reducer (which emits at its triggers).
    fn capacity<L: Logic>(&self, demand: usize, logic: &L) -> usize {
        if logic.has_reducer() {
            self.out_hint
        } else {
            self.out_hint.max(demand)
        }
    }

    fn record(&mut self, read: usize, made: usize, out_len: usize) {
        self.read += read as u64;
        self.made += made as u64;
        self.out_hint = out_len;
    }
}

/// A source producer with the layer's logic fused into it.
struct FusedProducer<T, L> {
    producer: BoxedProducer<T>,
    logic: L,
    finished: bool,
    expansion: Expansion,
}

impl<T, L> Producer for FusedProducer<T, L>
where
    T: Send + 'static,
    L: Logic<In = T>,
{
    type Item = L::Out;

    async fn handle_demand(
        &mut self,
        demand: usize,
    ) -> std::result::Result<Produced<L::Out>, StageError> {
        if self.finished {
            return Ok(Produced::Finished(Vec::new()));
        }
        // (An empty chain hands the read batch itself on: nothing to allocate.)
        let mut out = if self.logic.passes_batches() {
            Vec::new()
        } else {
            Vec::with_capacity(self.expansion.capacity(demand, &self.logic))
        };
        // Keep reading while the chain filters everything out, so a selective filter
        // does not look like an idle source (which would wait for the retry interval).
        loop {
            let ask = self.expansion.ask(demand);
            let (mut events, last) = match self.producer.handle_demand(ask).await? {
                Produced::Events(events) => (events, false),
                Produced::Finished(events) => (events, true),
            };
            let read = events.len();
            let before = out.len();
            self.logic.batch(&mut events, &mut out);
            out = settled(&mut self.logic, out).await?;
            self.expansion.record(read, out.len() - before, out.len());
            if last {
                self.finished = true;
                self.logic.done(&mut out);
                out = settled(&mut self.logic, out).await?;
                return Ok(Produced::Finished(out));
            }
            if !out.is_empty() || read == 0 {
                return Ok(Produced::Events(out));
            }
            // All filtered out: yield before reading on, so that an endless source behind a
            // filter can neither hold a worker forever nor ignore the flow being stopped.
            // Through tokio's task budget: it yields once per 128 reads, not after each
            // (`yield_now` after each batch costs ~20 % on a cheap chain into a reducer).
            tokio::task::consume_budget().await;
        }
    }
}

/// A stage of a layer running the layer's logic over its input.
struct LogicStage<L> {
    logic: L,
    /// The size of the last output: a chain that expands (a join, `flat_map`) gets its
    /// output allocated once instead of regrown.
    out_hint: usize,
}

impl<L: Logic> ProducerConsumer for LogicStage<L> {
    type In = L::In;
    type Out = L::Out;

    async fn handle_events(
        &mut self,
        mut events: Vec<L::In>,
        context: &mut ConsumerContext,
    ) -> std::result::Result<Vec<L::Out>, StageError> {
        self.handle_events_in_place(&mut events, context).await
    }

    async fn handle_events_in_place(
        &mut self,
        events: &mut Vec<L::In>,
        _context: &mut ConsumerContext,
    ) -> std::result::Result<Vec<L::Out>, StageError> {
        let mut out = if self.logic.has_reducer() {
            Vec::new()
        } else {
            Vec::with_capacity(self.out_hint)
        };
        self.logic.batch(events, &mut out);
        self.out_hint = out.len();
        settled(&mut self.logic, out).await
    }

    async fn handle_done(&mut self) -> std::result::Result<Vec<L::Out>, StageError> {
        let mut out = Vec::new();
        self.logic.done(&mut out);
        settled(&mut self.logic, out).await
    }
}

/// A stage of a windowed layer: its windowing cuts the input into runs per window and
/// fires the triggers; the logic does the rest.
struct WindowedStage<L: Logic> {
    logic: L,
    windower: Windower<L::In>,
}

impl<L: Logic> ProducerConsumer for WindowedStage<L> {
    type In = L::In;
    type Out = L::Out;

    async fn handle_events(
        &mut self,
        mut events: Vec<L::In>,
        context: &mut ConsumerContext,
    ) -> std::result::Result<Vec<L::Out>, StageError> {
        self.handle_events_in_place(&mut events, context).await
    }

    async fn handle_events_in_place(
        &mut self,
        events: &mut Vec<L::In>,
        context: &mut ConsumerContext,
    ) -> std::result::Result<Vec<L::Out>, StageError> {
        let mut out = Vec::new();
        self.windower
            .batch(context.from(), events, &mut self.logic, &mut out);
        context.count_late(self.windower.take_late());
        settled(&mut self.logic, out).await
    }

    async fn handle_upstream_done(
        &mut self,
        from: usize,
    ) -> std::result::Result<Vec<L::Out>, StageError> {
        let mut out = Vec::new();
        self.windower.upstream_done(from, &mut self.logic, &mut out);
        settled(&mut self.logic, out).await
    }

    async fn wakeup(&mut self) {
        self.windower.wait().await;
    }

    async fn handle_wakeup(&mut self) -> std::result::Result<Vec<L::Out>, StageError> {
        let mut out = Vec::new();
        self.windower.wake(&mut self.logic, &mut out);
        settled(&mut self.logic, out).await
    }

    async fn handle_done(&mut self) -> std::result::Result<Vec<L::Out>, StageError> {
        let mut out = Vec::new();
        self.windower.done(&mut self.logic, &mut out);
        settled(&mut self.logic, out).await
    }
}

/// A stage's output, unless a fallible operator of its chain failed the run meanwhile;
/// once the chain's dead letters are on their way (see [`Logic::side_output`]).
pub(crate) async fn settled<L: Logic>(
    logic: &mut L,
    out: Vec<L::Out>,
) -> std::result::Result<Vec<L::Out>, StageError> {
    if let Some(error) = logic.failure() {
        return Err(error);
    }
    while let Some(wait) = logic.side_output() {
        wait.await?;
    }
    Ok(out)
}

/// A consumer that hands each batch to a closure and calls another at the end.
pub(crate) struct SinkConsumer<T, F> {
    pub(crate) handle: F,
    pub(crate) _events: std::marker::PhantomData<fn(T)>,
}

impl<T, F> SinkConsumer<T, F> {
    pub(crate) fn new(handle: F) -> Self {
        SinkConsumer {
            handle,
            _events: std::marker::PhantomData,
        }
    }
}

impl<T, F> Consumer for SinkConsumer<T, F>
where
    T: Send + 'static,
    F: FnMut(Vec<T>) -> std::result::Result<(), StageError> + Send + 'static,
{
    type Item = T;

    async fn handle_events(
        &mut self,
        events: Vec<T>,
        _context: &mut ConsumerContext,
    ) -> std::result::Result<(), StageError> {
        (self.handle)(events)
    }
}
