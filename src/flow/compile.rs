//! The planner: turns a flow's plan into stages of a [`Pipeline`].
//!
//! This is the only module that knows both the flow layer and the stage layer. A plan node
//! compiles itself given the logic that follows it ([`Plan::compile`]); stage-making nodes
//! (sources, `partition`, `shuffle`, `merge`, `departition`, `take_sort`) create stages
//! whose work is that logic, and record what they built in the [`Graph`] that
//! [`explain`](super::Flow::explain) prints.

use std::sync::Arc;

use super::explain::{Graph, Node};
use super::fused::{FusedSource, SourceRead};
use super::logic::{Logic, PartitionInfo};
use crate::error::{Result, StageError};
use crate::stage::scoped::ScopedPipeline;
use crate::stage::{
    Consumer, ConsumerContext, Pipeline, ProducerConsumer, ProducerOptions, ProducerRef,
    ScopedDispatcher,
};
use crate::window::Windower;

/// A node of a flow's plan. Implemented by the crate's operators; users meet it as the
/// type parameter of [`Flow`](super::Flow).
///
/// A plan may borrow (its closures and iterators): the blocking terminals run it to the
/// end before they return; the others (`into_iter`, `into_stream`, `spawn`, ...) need a
/// `'static` plan.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a flow plan",
    label = "not a plan",
    note = "a plan is made by `Flow`'s sources and operators (`Flow::from_iter(..).map(..)`); \
            a user's source is plugged in with `Flow::from_source`, a user's producer \
            stages with `Flow::from_stages`"
)]
pub trait Plan: Send {
    /// The events this plan emits.
    type Item: Send + 'static;

    /// Whether the plan's last layer already holds a reducer (a layer holds at most
    /// one): the reduce family and `take_sort` refuse, when rustc builds the flow, to
    /// follow such a plan. Stateless operators say what their input says.
    #[doc(hidden)]
    const REDUCES: bool = false;

    /// Builds the plan into `compiler`'s pipeline with `logic` running after it in the
    /// same stage, and the outputs dispatched by `dispatch`. Returns the outputs.
    #[doc(hidden)]
    fn compile<'a, L>(
        self,
        compiler: &mut Compiler<'a>,
        logic: L,
        dispatch: &DispatchSpec<'a, L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        Self: 'a,
        L: Logic<In = Self::Item> + Clone + 'a;
}

/// One output of a compiled layer: a stage to subscribe to, and its graph node.
#[doc(hidden)]
#[derive(Debug)]
pub struct Output<T> {
    pub(crate) producer: ProducerRef<T>,
    pub(crate) node: usize,
}

/// How a layer's outputs dispatch to the next layer: a fresh dispatcher per stage, whose
/// closures may borrow for `'a`.
#[doc(hidden)]
pub struct DispatchSpec<'a, T> {
    make: Arc<dyn Fn() -> ScopedDispatcher<'a, T> + Send + Sync + 'a>,
    pub(crate) label: String,
}

impl<T> std::fmt::Debug for DispatchSpec<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

impl<'a, T: Send + 'static> DispatchSpec<'a, T> {
    pub(crate) fn demand() -> Self {
        DispatchSpec {
            make: Arc::new(ScopedDispatcher::demand),
            label: "demand".into(),
        }
    }

    pub(crate) fn new(
        label: impl Into<String>,
        make: impl Fn() -> ScopedDispatcher<'a, T> + Send + Sync + 'a,
    ) -> Self {
        DispatchSpec {
            make: Arc::new(make),
            label: label.into(),
        }
    }

    pub(crate) fn make(&self) -> ScopedDispatcher<'a, T> {
        (self.make)()
    }
}

/// The state of one compilation: the pipeline being built, whose stages may borrow for
/// `'a` (see `stage::scoped`), and the graph to explain it.
#[doc(hidden)]
#[derive(Debug)]
pub struct Compiler<'a> {
    pub(crate) pipeline: ScopedPipeline<'a>,
    pub(crate) graph: Graph,
}

impl<'a> Compiler<'a> {
    pub(crate) fn new(pipeline: Pipeline) -> Self {
        Compiler {
            pipeline: ScopedPipeline::new(pipeline),
            graph: Graph::default(),
        }
    }

    /// Adds one source stage reading through `reader`, with `logic` fused into it.
    /// `retry_interval`: how long the runtime waits before asking a source that had
    /// nothing again (the default of [`ProducerOptions`] when `None`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn source<R, L>(
        &mut self,
        label: &str,
        reader: R,
        mut logic: L,
        partition: PartitionInfo,
        dispatch: &DispatchSpec<'a, L::Out>,
        retry_interval: Option<std::time::Duration>,
    ) -> Output<L::Out>
    where
        R: SourceRead + 'a,
        L: Logic<In = R::Item> + 'a,
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
        let shutdown = self.pipeline.inner().shutdown_handle();
        let producer = self.pipeline.producer(
            FusedSource::new(reader, logic, shutdown),
            options
                .name(name)
                // Fused operators may make more events than asked (flat_map); they wait here
                // and nothing more is asked until they are gone, so the buffer is bounded by
                // one batch's expansion — and a flow never drops events.
                .buffer_size(usize::MAX),
            dispatch.make(),
        );
        Output { producer, node }
    }

    /// Adds one stage of a layer, running `logic`, windowed by `windower` if any.
    pub(crate) fn stage<L: Logic + 'a>(
        &mut self,
        label: &str,
        mut logic: L,
        windower: Option<Windower<L::In>>,
        partition: PartitionInfo,
        dispatch: &DispatchSpec<'a, L::Out>,
    ) -> (crate::stage::ConsumerRef<L::In>, Output<L::Out>) {
        logic.start(partition);
        let node = self.graph.add(Node::new(
            format!("{label}[{}]", partition.index),
            "producer-consumer",
            &logic,
            &dispatch.label,
        ));
        let name = self.graph.nodes[node].name.clone();
        let (input, producer) = match windower {
            None => self.pipeline.producer_consumer(
                LogicStage { logic, out_hint: 0 },
                name,
                dispatch.make(),
            ),
            Some(windower) => self.pipeline.producer_consumer(
                WindowedStage { logic, windower },
                name,
                dispatch.make(),
            ),
        };
        (input, Output { producer, node })
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

/// [`settled`] for a chain run on a thread of its own (rayon's splits, a cluster worker):
/// the chain's failure, or `Ok` once its dead letters are on their way, blocking the
/// thread meanwhile. The dead-letter stages run elsewhere (the stages' runtime), so the
/// wait ends as they take the letters.
pub(crate) fn settled_blocking<L: Logic>(logic: &mut L) -> std::result::Result<(), StageError> {
    if let Some(error) = logic.failure() {
        return Err(error);
    }
    while let Some(wait) = logic.side_output() {
        futures::executor::block_on(wait)?;
    }
    Ok(())
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
    F: FnMut(Vec<T>) -> std::result::Result<(), StageError> + Send,
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
