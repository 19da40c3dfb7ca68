//! Async steps under demand: `map_async`, `flat_map_async`, `try_map_async` (Broadway's
//! processors; `then` + `buffered` / `buffer_unordered` in futures).
//!
//! A fused operator is a synchronous [`Logic`]; a step that awaits (a call to a service
//! or a database per event) needs a stage of its own. The step gets one stage per
//! output of the layer before it, subscribed to that output. Each stage keeps up to
//! `concurrency` futures in flight (`FuturesOrdered`, results in input order; or
//! `FuturesUnordered`, as they complete) and runs the operators after the step, fused,
//! over the results. It takes a new event only when a future has room, and its input
//! only when its own consumers have demand: what is in flight is bounded by
//! `concurrency`, what waits in front of it by its subscription's `max_demand`, and a
//! slow service slows the sources.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::FutureExt;
use futures::stream::{FuturesOrdered, FuturesUnordered, StreamExt};

use super::SideOutput;
use super::compile::{Compiler, DispatchSpec, Output, Plan, settled};
use super::explain::Node;
use super::fallible::{ErrorHandler, ErrorPolicy, Rejected};
use super::logic::{Identity, Logic, PartitionInfo};
use super::plan::StageHead;
use crate::error::{FlowError, Result, StageError};
use crate::stage::{ConsumerContext, DEFAULT_MAX_DEMAND, ProducerConsumer, SubscribeOptions};

/// The plan node of the async steps: `K` says what becomes of each future's output
/// ([`AsIs`], [`Flatten`], [`Fallible`]).
pub struct AsyncNode<P, F, K> {
    pub(crate) inner: P,
    pub(crate) f: Arc<F>,
    pub(crate) concurrency: usize,
    pub(crate) ordered: bool,
    pub(crate) kind: K,
    pub(crate) label: &'static str,
}

impl<P, F, K> AsyncNode<P, F, K> {
    pub(crate) fn new(inner: P, f: F, concurrency: usize, kind: K, label: &'static str) -> Self {
        AsyncNode {
            inner,
            f: Arc::new(f),
            concurrency,
            ordered: true,
            kind,
            label,
        }
    }
}

impl<P, F, K> fmt::Debug for AsyncNode<P, F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}(concurrency {}, {})",
            self.label,
            self.concurrency,
            if self.ordered { "ordered" } else { "unordered" }
        )
    }
}

/// What becomes of an async step's results before the operators after it.
pub trait Completion<A, O>: Send + 'static {
    /// What the operators after the step take.
    type Item: Send + 'static;
    /// One stage's side of it.
    #[doc(hidden)]
    type Stage: Send + 'static;

    /// One stage's side of it (an error handler, for `try_map_async`).
    #[doc(hidden)]
    fn stage(&self, operator: &'static str) -> Self::Stage;

    /// Feeds `outputs` to `logic`.
    #[doc(hidden)]
    fn complete<L: Logic<In = Self::Item>>(
        stage: &mut Self::Stage,
        outputs: std::vec::Drain<'_, O>,
        logic: &mut L,
        out: &mut Vec<L::Out>,
    );

    /// An error that ends the run, and letters to wait for (see
    /// [`Logic::failure`], [`Logic::side_output`]).
    #[doc(hidden)]
    fn failure(stage: &mut Self::Stage) -> Option<StageError>;
    #[doc(hidden)]
    fn side_output(stage: &mut Self::Stage) -> Option<SideOutput>;

    /// Adds what the policy needs to the run (its counters, dead-letter stages).
    #[doc(hidden)]
    fn install(
        &self,
        _pipeline: &mut crate::stage::Pipeline,
        _operator: &'static str,
    ) -> Result<()> {
        Ok(())
    }
}

/// `map_async`: each result is one event.
#[derive(Debug, Clone, Copy)]
pub struct AsIs;

/// `flat_map_async`: each result is any number of events.
#[derive(Debug, Clone, Copy)]
pub struct Flatten;

/// `try_map_async`: an `Err` (which gives the event back) goes to the step's
/// [`ErrorPolicy`].
#[derive(Debug)]
pub struct Fallible<A> {
    pub(crate) policy: ErrorPolicy<A>,
}

impl<A: Send + 'static, U: Send + 'static> Completion<A, U> for AsIs {
    type Item = U;
    type Stage = ();

    fn stage(&self, _operator: &'static str) {}

    fn complete<L: Logic<In = U>>(
        _stage: &mut (),
        outputs: std::vec::Drain<'_, U>,
        logic: &mut L,
        out: &mut Vec<L::Out>,
    ) {
        logic.feed(outputs, out);
    }

    fn failure(_stage: &mut ()) -> Option<StageError> {
        None
    }

    fn side_output(_stage: &mut ()) -> Option<SideOutput> {
        None
    }
}

impl<A, I> Completion<A, I> for Flatten
where
    A: Send + 'static,
    I: IntoIterator + Send + 'static,
    I::Item: Send + 'static,
{
    type Item = I::Item;
    type Stage = ();

    fn stage(&self, _operator: &'static str) {}

    fn complete<L: Logic<In = I::Item>>(
        _stage: &mut (),
        outputs: std::vec::Drain<'_, I>,
        logic: &mut L,
        out: &mut Vec<L::Out>,
    ) {
        logic.feed(outputs.flatten(), out);
    }

    fn failure(_stage: &mut ()) -> Option<StageError> {
        None
    }

    fn side_output(_stage: &mut ()) -> Option<SideOutput> {
        None
    }
}

/// One stage's error handling for `try_map_async`.
#[doc(hidden)]
pub struct StageErrors<A>(ErrorHandler<A>);

impl<A> fmt::Debug for StageErrors<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StageErrors")
    }
}

impl<A, U, R> Completion<A, std::result::Result<U, R>> for Fallible<A>
where
    A: Send + 'static,
    U: Send + 'static,
    R: Into<Rejected<A>> + Send + 'static,
{
    type Item = U;
    type Stage = StageErrors<A>;

    fn stage(&self, operator: &'static str) -> StageErrors<A> {
        StageErrors(self.policy.handler(operator))
    }

    fn complete<L: Logic<In = U>>(
        StageErrors(errors): &mut StageErrors<A>,
        outputs: std::vec::Drain<'_, std::result::Result<U, R>>,
        logic: &mut L,
        out: &mut Vec<L::Out>,
    ) {
        if errors.has_failed() {
            return;
        }
        if errors.fails() {
            // The run ends at the first error: nothing after it goes on.
            let ok = outputs.map_while(|result| match result {
                Ok(value) => Some(value),
                Err(rejected) => {
                    errors.rejected(rejected);
                    None
                }
            });
            logic.feed(ok, out);
        } else {
            let ok = outputs.filter_map(|result| match result {
                Ok(value) => Some(value),
                Err(rejected) => {
                    errors.rejected(rejected);
                    None
                }
            });
            logic.feed(ok, out);
        }
        errors.settle();
    }

    fn failure(StageErrors(errors): &mut StageErrors<A>) -> Option<StageError> {
        errors.take_failure()
    }

    fn side_output(StageErrors(errors): &mut StageErrors<A>) -> Option<SideOutput> {
        errors.side_output()
    }

    fn install(&self, pipeline: &mut crate::stage::Pipeline, operator: &'static str) -> Result<()> {
        self.policy.install(pipeline, operator)
    }
}

impl<P, F, K> StageHead for AsyncNode<P, F, K> where AsyncNode<P, F, K>: Plan {}

impl<P, F, Fut, K> Plan for AsyncNode<P, F, K>
where
    P: Plan,
    F: Fn(P::Item) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
    K: Completion<P::Item, Fut::Output>,
{
    type Item = K::Item;

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
        if self.concurrency == 0 {
            return Err(FlowError::Config(format!(
                "{}: concurrency must be at least 1",
                self.label
            )));
        }
        self.kind.install(compiler.pipeline.inner(), self.label)?;
        let description = format!("{self:?}");
        let upstream = self
            .inner
            .compile(compiler, Identity::new(), &DispatchSpec::demand())?;
        // What waits in front of the futures: twice what can be in flight, so the next
        // events are there when a future completes, and no more than a layer's default.
        let max_demand = (2 * self.concurrency).clamp(2, DEFAULT_MAX_DEMAND);
        let (f, concurrency, ordered) = (self.f, self.concurrency, self.ordered);
        let kind = self.kind;
        let label = self.label;
        stage_per_output(
            compiler,
            label,
            description,
            upstream,
            logic,
            dispatch,
            max_demand,
            |logic| AsyncStage {
                f: f.clone(),
                in_flight: if ordered {
                    InFlight::Ordered(FuturesOrdered::new())
                } else {
                    InFlight::Unordered(FuturesUnordered::new())
                },
                concurrency,
                outputs: Vec::new(),
                completion: kind.stage(label),
                logic,
                _kind: PhantomData::<fn() -> K>,
            },
        )
    }
}

/// Places a stage of its own (made by `make` around the logic that follows) behind each
/// output of the layer before it, as the async and blocking steps do.
#[allow(clippy::too_many_arguments)]
pub(crate) fn stage_per_output<'a, T, L, S>(
    compiler: &mut Compiler<'a>,
    label: &str,
    description: String,
    upstream: Vec<Output<T>>,
    logic: L,
    dispatch: &DispatchSpec<'a, L::Out>,
    max_demand: usize,
    mut make: impl FnMut(L) -> S,
) -> Result<Vec<Output<L::Out>>>
where
    T: Send + 'static,
    L: Logic + Clone,
    S: ProducerConsumer<In = T, Out = L::Out> + 'a,
{
    let count = upstream.len();
    let mut outputs = Vec::with_capacity(count);
    for (index, source) in upstream.into_iter().enumerate() {
        let mut logic = logic.clone();
        logic.start(PartitionInfo { index, count });
        let mut node = Node::new(
            format!("{label}[{index}]"),
            "producer-consumer",
            &logic,
            &dispatch.label,
        );
        node.ops.insert(0, description.clone());
        let node = compiler.graph.add(node);
        let name = compiler.graph.nodes[node].name.clone();
        let (input, producer) =
            compiler
                .pipeline
                .producer_consumer(make(logic), name, dispatch.make());
        compiler.pipeline.subscribe(
            &input,
            &source.producer,
            SubscribeOptions::new().max_demand(max_demand),
        )?;
        compiler.graph.connect(source.node, node);
        outputs.push(Output { producer, node });
    }
    Ok(outputs)
}

/// The futures in flight, in input order or as they complete.
enum InFlight<Fut: Future> {
    Ordered(FuturesOrdered<Fut>),
    Unordered(FuturesUnordered<Fut>),
}

impl<Fut: Future> InFlight<Fut> {
    fn len(&self) -> usize {
        match self {
            InFlight::Ordered(futures) => futures.len(),
            InFlight::Unordered(futures) => futures.len(),
        }
    }

    fn push(&mut self, future: Fut) {
        match self {
            InFlight::Ordered(futures) => futures.push_back(future),
            InFlight::Unordered(futures) => futures.push(future),
        }
    }

    /// The next result; `None` when nothing is in flight. Cancel-safe: a result is
    /// only taken out when this resolves.
    async fn next(&mut self) -> Option<Fut::Output> {
        match self {
            InFlight::Ordered(futures) => futures.next().await,
            InFlight::Unordered(futures) => futures.next().await,
        }
    }

    /// Moves every result that is ready now into `outputs` (polling the futures, which
    /// also starts the ones just pushed).
    fn ready(&mut self, outputs: &mut Vec<Fut::Output>) {
        while let Some(Some(output)) = self.next().now_or_never() {
            outputs.push(output);
        }
    }
}

/// One stage of an async step.
struct AsyncStage<A, F, Fut: Future, K: Completion<A, Fut::Output>, L> {
    f: Arc<F>,
    in_flight: InFlight<Fut>,
    concurrency: usize,
    /// Results taken out of `in_flight` and not yet fed to the logic.
    outputs: Vec<Fut::Output>,
    completion: K::Stage,
    logic: L,
    _kind: PhantomData<fn() -> K>,
}

impl<A, F, Fut, K, L> AsyncStage<A, F, Fut, K, L>
where
    A: Send + 'static,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
    K: Completion<A, Fut::Output>,
    L: Logic<In = K::Item>,
{
    /// Feeds the results taken so far to the logic.
    async fn emit(&mut self) -> std::result::Result<Vec<L::Out>, StageError> {
        let mut out = Vec::with_capacity(self.outputs.len());
        K::complete(
            &mut self.completion,
            self.outputs.drain(..),
            &mut self.logic,
            &mut out,
        );
        if let Some(error) = K::failure(&mut self.completion).or_else(|| self.logic.failure()) {
            return Err(error);
        }
        while let Some(wait) =
            K::side_output(&mut self.completion).or_else(|| self.logic.side_output())
        {
            wait.await?;
        }
        Ok(out)
    }
}

impl<A, F, Fut, K, L> ProducerConsumer for AsyncStage<A, F, Fut, K, L>
where
    A: Send + 'static,
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
    K: Completion<A, Fut::Output>,
    L: Logic<In = K::Item>,
{
    type In = A;
    type Out = L::Out;

    async fn handle_events(
        &mut self,
        mut events: Vec<A>,
        context: &mut ConsumerContext,
    ) -> std::result::Result<Vec<L::Out>, StageError> {
        self.handle_events_in_place(&mut events, context).await
    }

    async fn handle_events_in_place(
        &mut self,
        events: &mut Vec<A>,
        _context: &mut ConsumerContext,
    ) -> std::result::Result<Vec<L::Out>, StageError> {
        self.in_flight.ready(&mut self.outputs);
        for event in events.drain(..) {
            // Room for one more: wait for a result when `concurrency` are in flight.
            while self.in_flight.len() >= self.concurrency {
                match self.in_flight.next().await {
                    Some(output) => self.outputs.push(output),
                    None => break,
                }
            }
            let future = (self.f)(event);
            self.in_flight.push(future);
        }
        // Start what was just pushed, and take what is already done.
        self.in_flight.ready(&mut self.outputs);
        self.emit().await
    }

    /// While the stage is idle, the next result wakes it.
    async fn wakeup(&mut self) {
        match self.in_flight.next().await {
            Some(output) => self.outputs.push(output),
            None => std::future::pending().await,
        }
    }

    async fn handle_wakeup(&mut self) -> std::result::Result<Vec<L::Out>, StageError> {
        self.in_flight.ready(&mut self.outputs);
        self.emit().await
    }

    async fn handle_done(&mut self) -> std::result::Result<Vec<L::Out>, StageError> {
        while let Some(output) = self.in_flight.next().await {
            self.outputs.push(output);
        }
        let mut out = self.emit().await?;
        self.logic.done(&mut out);
        settled(&mut self.logic, out).await
    }
}
