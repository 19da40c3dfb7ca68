//! [`ClusterPlan`]: how plan nodes build themselves into a timely dataflow.
//!
//! The same plan nodes as for the local runtime, a second materialisation: sources
//! become timely source operators (one per share, on every worker), stateless operators
//! fuse into the [`Logic`] that follows them exactly as they do locally, and every node
//! that makes a new layer locally (`partition`, `shuffle`, `merge`, joins, `batch`,
//! `departition`, `take_sort`) becomes a timely exchange into a [layer](super::layer)
//! operator that runs the layer's logic — the same [`Logic`] values as locally — under
//! the layer's window.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use super::layer::{self, Layer, Placement, Routing};
use super::report::WorkerReport;
use super::source;
use super::window::event_time;
use crate::error::{FlowError, Result};
use crate::flow::join::Join;
use crate::flow::nodes::{
    BatchNode, DepartitionNode, Exchange, JoinNode, Merge, ReduceNode, SourceNode, TakeSortNode,
    TryFlatMapNode, TryMapNode, UniqNode,
};
use crate::flow::{
    Emit, Emits, Identity, Logic, Map, NoRoute, Plan, Rejected, Route, Side, Step, Tagged,
};
use crate::source::Source;
use crate::window::LayerWindow;

/// The timestamps of a cluster dataflow: `(window, epoch)`, ordered lexicographically.
/// `window` is the encoded start of an event-time granule of the next layer's window (0
/// without event time), `epoch` a source's count of batches read (see the
/// [module docs](super#backpressure)).
pub type Time = (u64, u64);

/// A stream of a cluster dataflow, and how many instances of a chain's logic feed it (the
/// shares of a source, the workers of a layer, 1 for a single operator): a merging
/// operator after it waits for that many `Done`s per window.
#[doc(hidden)]
pub struct ClusterStream<'s, T> {
    pub(crate) stream: StreamVec<'s, Time, T>,
    pub(crate) instances: usize,
}

impl<T> std::fmt::Debug for ClusterStream<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterStream")
            .field("instances", &self.instances)
            .finish()
    }
}

/// The event time of the next layer's window, as its sources need it: the encoded start
/// of the granule an event belongs to (windows close on granule boundaries), and how long
/// a silent source may hold windows back (`idle_timeout`).
#[doc(hidden)]
pub struct EventTime<T> {
    pub(crate) granule: Arc<dyn Fn(&T) -> u64 + Send + Sync>,
    pub(crate) idle: Option<Duration>,
}

impl<T> std::fmt::Debug for EventTime<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventTime")
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl<T> Clone for EventTime<T> {
    fn clone(&self) -> Self {
        EventTime {
            granule: self.granule.clone(),
            idle: self.idle,
        }
    }
}

/// How the next exchange wants events timestamped: by event time for a layer with an
/// event-time window; `None` otherwise.
#[doc(hidden)]
pub type Stamp<T> = Option<EventTime<T>>;

/// Events that cross a partition on the cluster: serde-serializable, as timely sends them
/// between processes.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot cross a partition on the cluster backend",
    note = "events that a `partition`, `shuffle`, join, `merge`, `batch`, `departition`, \
            `take_sort` or the cluster's `collect` sends between workers must implement \
            serde's `Serialize` and `DeserializeOwned`"
)]
pub trait Wire: timely::ExchangeData {}
impl<T: timely::ExchangeData> Wire for T {}

/// The state of one worker's compilation: its scope, the progress probe its sources
/// check for backpressure, the probes they wait for before reading, where operators report
/// failures, and the run's counters.
#[doc(hidden)]
pub struct ClusterCompiler<'s> {
    pub(crate) scope: Scope<'s, Time>,
    /// What sources built now check for backpressure.
    pub(crate) probe: ProbeHandle<Time>,
    /// Sources built now read only once every one of these is done (a bounded join's
    /// right side waits for its left side).
    pub(crate) gates: Vec<ProbeHandle<Time>>,
    pub(crate) runtime: Rc<tokio::runtime::Runtime>,
    pub(crate) failure: Rc<RefCell<Option<FlowError>>>,
    pub(crate) epochs_ahead: u64,
    pub(crate) epoch_events: usize,
    pub(crate) report: Rc<RefCell<WorkerReport>>,
    /// The dead-letter consumers of the flow's error policies, with the stages that feed
    /// them: run on a thread of their own for the worker's run, as locally (see
    /// [`ErrorPolicy::dead_letter`](crate::flow::ErrorPolicy::dead_letter)).
    pub(crate) letters: Rc<RefCell<crate::stage::Pipeline>>,
}

impl std::fmt::Debug for ClusterCompiler<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCompiler")
            .field("worker", &self.scope.index())
            .field("workers", &self.scope.peers())
            .finish()
    }
}

/// A plan the cluster backend can build. Implemented by every plan node (see the
/// [module docs](super#operators) for what differs from the local runtime).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be built onto the cluster backend",
    note = "every operator's node implements it: check that the events crossing each \
            `partition`, `shuffle`, join, `merge`, `batch`, `departition` or `take_sort` \
            are `Wire`"
)]
pub trait ClusterPlan: Plan {
    /// Builds the plan into `compiler`'s dataflow with `logic` after it in the same
    /// operator. `stamp` is the event time of the window the output goes to: a source
    /// moves its capability to the watermark it gives (a layer's output needs nothing,
    /// as it goes out at the layer's frontier).
    #[doc(hidden)]
    fn timely<'s, L>(
        self,
        compiler: &mut ClusterCompiler<'s>,
        logic: L,
        stamp: Stamp<L::Out>,
    ) -> Result<ClusterStream<'s, L::Out>>
    where
        L: Logic<In = Self::Item> + 'static + Clone + 'static;
}

impl<S: Source> ClusterPlan for SourceNode<S> {
    fn timely<'s, L>(
        self,
        compiler: &mut ClusterCompiler<'s>,
        logic: L,
        stamp: Stamp<L::Out>,
    ) -> Result<ClusterStream<'s, L::Out>>
    where
        L: Logic<In = S::Item> + 'static + Clone + 'static,
    {
        let (worker, workers) = (compiler.scope.index(), compiler.scope.peers());
        if let Some((operator, counters)) = self.source.error_counters() {
            compiler
                .report
                .borrow_mut()
                .error_counters(operator, counters);
        }
        // A parsing source's dead-letter consumer, if its policy has one.
        self.source
            .add_error_stages(&mut compiler.letters.borrow_mut())?;
        let shares = self.source.into_worker_producers(worker, workers)?;
        if shares.is_empty() {
            return Err(crate::flow::plan::no_producers(self.label));
        }
        Ok(source::sources(compiler, self.label, shares, logic, stamp))
    }
}

impl<P, R, W> ClusterPlan for Exchange<P, R, W>
where
    P: ClusterPlan,
    P::Item: Wire,
    R: Route<P::Item> + 'static,
    W: LayerWindow<P::Item>,
{
    fn timely<'s, L>(
        self,
        compiler: &mut ClusterCompiler<'s>,
        logic: L,
        _stamp: Stamp<L::Out>,
    ) -> Result<ClusterStream<'s, L::Out>>
    where
        L: Logic<In = P::Item> + 'static + Clone + 'static,
    {
        if let Some(error) = self.error {
            return Err(error);
        }
        let window = self.window.into_window();
        if let Some(window) = &window {
            window.validate()?;
        }
        let upstream = self
            .inner
            .timely(compiler, Identity::new(), event_time(window.as_ref()))?;
        let routing = match self.route {
            Some(route) => Routing::Key(route),
            None => Routing::RoundRobin,
        };
        let layer = Layer {
            label: self.label,
            routing,
            window,
            placement: Placement::Everywhere,
        };
        Ok(layer::unary(compiler, layer, upstream, logic))
    }
}

impl<P, Acc, I, S, E> ClusterPlan for ReduceNode<P, Acc, I, S, E>
where
    P: ClusterPlan,
    Acc: Send + 'static,
    I: Fn() -> Acc + Send + Sync + 'static,
    E: Emits<Acc> + Emit<Acc, <E as Emits<Acc>>::Item> + 'static,
    S: Step<P::Item, Acc, <E as Emits<Acc>>::Item> + 'static,
{
    fn timely<'s, L>(
        self,
        compiler: &mut ClusterCompiler<'s>,
        logic: L,
        stamp: Stamp<L::Out>,
    ) -> Result<ClusterStream<'s, L::Out>>
    where
        L: Logic<In = Self::Item> + 'static + Clone + 'static,
    {
        if logic.has_reducer() {
            return Err(FlowError::Config(
                "a reduce after another reduce in the same layer: add a partition or \
                 shuffle between them"
                    .into(),
            ));
        }
        let (inner, reduce) = self.into_logic(logic);
        inner.timely(compiler, reduce, stamp)
    }
}

/// `merge`: every flow into one new layer, dealt round robin over the workers.
impl<P> ClusterPlan for Merge<P>
where
    P: ClusterPlan,
    P::Item: Wire,
{
    fn timely<'s, L>(
        self,
        compiler: &mut ClusterCompiler<'s>,
        logic: L,
        _stamp: Stamp<L::Out>,
    ) -> Result<ClusterStream<'s, L::Out>>
    where
        L: Logic<In = P::Item> + Clone + 'static,
    {
        let (inputs, error) = self.into_parts();
        if let Some(error) = error {
            return Err(error);
        }
        if inputs.is_empty() {
            return Err(FlowError::Config("merge needs at least one flow".into()));
        }
        let mut streams = Vec::with_capacity(inputs.len());
        for input in inputs {
            streams.push(input.timely(compiler, Identity::new(), None)?);
        }
        let upstream = layer::concatenate(compiler, streams);
        let layer = Layer {
            label: "merge",
            routing: Routing::<NoRoute>::RoundRobin,
            window: None,
            placement: Placement::Everywhere,
        };
        Ok(layer::unary(compiler, layer, upstream, logic))
    }
}

macro_rules! fallible {
    ($node:ident, [$($extra:ident),*], where { $($bounds:tt)* }) => {
        /// Fused like the stateless operators; its error policy's counts go to the run's
        /// report, and its dead-letter consumer runs in the worker's process, fed by the
        /// worker's letters.
        impl<P, F, R, $($extra),*> ClusterPlan for $node<P, F>
        where
            P: ClusterPlan,
            R: Into<Rejected<P::Item>> + 'static,
            $($bounds)*
        {
            fn timely<'s, L>(
                self,
                compiler: &mut ClusterCompiler<'s>,
                logic: L,
                stamp: Stamp<L::Out>,
            ) -> Result<ClusterStream<'s, L::Out>>
            where
                L: Logic<In = Self::Item> + 'static + Clone + 'static,
            {
                let (inner, label, policy, fallible) = self.into_logic(logic);
                compiler.report.borrow_mut().error_counters(label, policy.counters());
                policy.install(&mut compiler.letters.borrow_mut(), label)?;
                drop(policy);
                inner.timely(compiler, fallible, stamp)
            }
        }
    };
}

fallible!(TryMapNode, [U], where {
    U: Send + 'static,
    F: Fn(P::Item) -> std::result::Result<U, R> + Send + Sync + 'static,
});
fallible!(TryFlatMapNode, [I], where {
    I: IntoIterator,
    I::Item: Send + 'static,
    F: Fn(P::Item) -> std::result::Result<I, R> + Send + Sync + 'static,
});

/// `uniq`: fused, per worker (partition) and window, as locally per stage.
impl<P, K, F> ClusterPlan for UniqNode<P, F>
where
    P: ClusterPlan,
    K: std::hash::Hash + Eq + Send + 'static,
    F: Fn(&P::Item) -> K + Send + Sync + 'static,
{
    fn timely<'s, L>(
        self,
        compiler: &mut ClusterCompiler<'s>,
        logic: L,
        stamp: Stamp<L::Out>,
    ) -> Result<ClusterStream<'s, L::Out>>
    where
        L: Logic<In = Self::Item> + Clone + 'static,
    {
        let (inner, uniq) = self.into_logic(logic);
        inner.timely(compiler, uniq, stamp)
    }
}

/// `batch`: one batching operator, on worker 0, as locally one stage.
impl<P> ClusterPlan for BatchNode<P>
where
    P: ClusterPlan,
    P::Item: Wire,
{
    fn timely<'s, L>(
        self,
        compiler: &mut ClusterCompiler<'s>,
        logic: L,
        _stamp: Stamp<L::Out>,
    ) -> Result<ClusterStream<'s, L::Out>>
    where
        L: Logic<In = Self::Item> + Clone + 'static,
    {
        if self.size == 0 {
            return Err(FlowError::Config("batch: size must be at least 1".into()));
        }
        let upstream = self.inner.timely(compiler, Identity::new(), None)?;
        Ok(super::batch::batch(
            compiler,
            upstream,
            self.size,
            self.timeout,
            logic,
        ))
    }
}

/// `departition`: the partitions' chains end in a tag; one merging operator on worker 0
/// waits for every instance's `Done` per window, as locally one stage.
impl<P, Acc, U, I, M, D> ClusterPlan for DepartitionNode<P, I, M, D>
where
    P: ClusterPlan,
    P::Item: Wire,
    Acc: Send + 'static,
    U: Send + 'static,
    I: Fn() -> Acc + Send + Sync + 'static,
    M: Fn(P::Item, Acc) -> Acc + Send + Sync + 'static,
    D: Fn(Acc, &crate::window::WindowInfo) -> U + Send + Sync + 'static,
{
    fn timely<'s, L>(
        self,
        compiler: &mut ClusterCompiler<'s>,
        logic: L,
        _stamp: Stamp<L::Out>,
    ) -> Result<ClusterStream<'s, L::Out>>
    where
        L: Logic<In = U> + Clone + 'static,
    {
        let (inner, tag, merge) = self.into_parts(logic);
        let upstream = inner.timely(compiler, tag, None)?;
        let merge = merge.expecting(upstream.instances);
        Ok(merging(compiler, "departition", upstream, merge))
    }
}

/// `take_sort`: top `n` per partition, then one merging operator on worker 0.
impl<P, C> ClusterPlan for TakeSortNode<P, C>
where
    P: ClusterPlan,
    P::Item: Wire,
    C: Fn(&P::Item, &P::Item) -> std::cmp::Ordering + Send + Sync + 'static,
{
    fn timely<'s, L>(
        self,
        compiler: &mut ClusterCompiler<'s>,
        logic: L,
        _stamp: Stamp<L::Out>,
    ) -> Result<ClusterStream<'s, L::Out>>
    where
        L: Logic<In = Self::Item> + Clone + 'static,
    {
        let (inner, per_partition, merge) = self.into_parts(logic);
        let upstream = inner.timely(compiler, per_partition, None)?;
        let merge = merge.expecting(upstream.instances);
        Ok(merging(compiler, "take_sort", upstream, merge))
    }
}

/// The one merging operator of `departition` and `take_sort`, on worker 0.
fn merging<'s, T, L>(
    compiler: &mut ClusterCompiler<'s>,
    label: &'static str,
    upstream: ClusterStream<'s, Tagged<T>>,
    merge: L,
) -> ClusterStream<'s, L::Out>
where
    T: Wire,
    L: Logic<In = Tagged<T>> + Clone + 'static,
{
    let layer = Layer {
        label,
        routing: Routing::<NoRoute>::Worker0,
        window: None,
        placement: Placement::Worker0,
    };
    layer::unary(compiler, layer, upstream, merge)
}

/// Joins: both sides exchanged by the hash of their key (as locally), into one join
/// operator per worker running the local [`Join`](crate::flow::join) logic. A bounded
/// join's right side starts reading once the left side is complete everywhere; a window
/// join reads both as they come, its windows closed by the frontier.
impl<PL, PR, K, KA, KB, F, O> ClusterPlan for JoinNode<PL, PR, KA, KB, F, Side<PL::Item, PR::Item>>
where
    PL: ClusterPlan,
    PR: ClusterPlan,
    PL::Item: Wire,
    PR::Item: Wire,
    K: std::hash::Hash + Eq + Send + 'static,
    KA: Fn(&PL::Item) -> K + Send + Sync + 'static,
    KB: Fn(&PR::Item) -> K + Send + Sync + 'static,
    F: Fn(Option<&PL::Item>, Option<&PR::Item>) -> O + Send + Sync + 'static,
    O: Send + 'static,
{
    fn timely<'s, L>(
        self,
        compiler: &mut ClusterCompiler<'s>,
        logic: L,
        _stamp: Stamp<L::Out>,
    ) -> Result<ClusterStream<'s, L::Out>>
    where
        L: Logic<In = O> + Clone + 'static,
    {
        if let Some(error) = self.options.0.validate() {
            return Err(error);
        }
        if let Some(window) = &self.window {
            window.validate()?;
        }
        let route = self.route();
        let join = Join::new(self.mode, self.left_key, self.right_key, self.join, logic);
        let time = event_time(self.window.as_ref());
        let tag_left = |event| Side::<PL::Item, PR::Item>::Left(event);
        let tag_right = |event| Side::<PL::Item, PR::Item>::Right(event);
        let layer = Layer {
            label: "join",
            routing: Routing::Key(Arc::new(route)),
            window: self.window,
            placement: Placement::Everywhere,
        };
        if layer.window.is_some() {
            let left = self.left.timely(
                compiler,
                Map::new(Arc::new(tag_left), Identity::new()),
                time.clone(),
            )?;
            let right = self.right.timely(
                compiler,
                Map::new(Arc::new(tag_right), Identity::new()),
                time,
            )?;
            let upstream = layer::concatenate(compiler, vec![left, right]);
            return Ok(layer::unary(compiler, layer, upstream, join));
        }
        // The left side's sources pace themselves on its own progress, and the right
        // side's wait until it is complete: nothing of the right side waits in memory.
        let left_probe = ProbeHandle::new();
        let run_probe = std::mem::replace(&mut compiler.probe, left_probe.clone());
        let left = self.left.timely(
            compiler,
            Map::new(Arc::new(tag_left), Identity::new()),
            None,
        );
        compiler.probe = run_probe;
        let left = left?;
        let left = layer::probed(left, &left_probe);
        compiler.gates.push(left_probe);
        let right = self.right.timely(
            compiler,
            Map::new(Arc::new(tag_right), Identity::new()),
            None,
        );
        compiler.gates.pop();
        Ok(layer::deferring(compiler, layer, left, right?, join))
    }
}
