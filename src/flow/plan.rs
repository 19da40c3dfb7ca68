//! Plan nodes: one per operator, each compiling itself onto stages.
//!
//! Stateless operators prepend their logic to what follows and compile their input with it
//! (fusion). Stage-making nodes (`SourceNode`, `Exchange`, `Merge`) create stages running
//! the logic they were given.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::compile::{Compiler, DispatchSpec, Output, Plan};
use super::fused::{OwnProducer, SharedProducer, SourceRead};
use super::logic::{self, Identity, Logic, PartitionInfo};
use super::partition::{Route, Routed, Shuffle};
use crate::error::{FlowError, Result};
use crate::source::Source;
use crate::stage::{ScopedDispatcher, SubscribeOptions};
use crate::window::{LayerWindow, NoWindow, Window, Windower};

/// A flow's sources; see [`Flow::from_source`](super::Flow::from_source).
#[derive(Debug)]
pub struct SourceNode<S> {
    pub(crate) source: S,
    pub(crate) label: &'static str,
    /// The stages of the source's layer (`None`: one per core).
    pub(crate) stages: Option<usize>,
}

impl<S: Source> Plan for SourceNode<S> {
    type Item = S::Item;

    fn compile<'a, L>(
        self,
        compiler: &mut Compiler<'a>,
        logic: L,
        dispatch: &DispatchSpec<'a, L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        Self: 'a,
        L: Logic<In = S::Item> + Clone + 'a,
    {
        self.source.add_error_stages(compiler.pipeline.inner())?;
        let retry_interval = self.source.retry_interval();
        let producers = self.source.into_producers()?;
        if producers.is_empty() {
            return Err(no_producers(self.label));
        }
        let shape = SourceShape::new(producers.len(), self.stages, &logic)?;
        if !shape.shared {
            return Ok(shape.build(compiler, self.label, producers, |producer| {
                (
                    OwnProducer(producer),
                    logic.clone(),
                    dispatch,
                    retry_interval,
                )
            }));
        }
        let shared: Vec<_> = producers
            .into_iter()
            .map(|producer| Arc::new(tokio::sync::Mutex::new((producer, false))))
            .collect();
        Ok(
            shape.build_shared(compiler, self.label, "producer", &shared, |shared| {
                (
                    SharedProducer {
                        shared: shared.clone(),
                    },
                    logic.clone(),
                    dispatch,
                    retry_interval,
                )
            }),
        )
    }
}

/// How a source layer runs: one stage per reader (the chain fused into each), or, when
/// the source has fewer readers than the layer has stages and there is a chain to run,
/// `stages` stages sharing the readers (stage `k` reads reader `k % readers`), as Flow's
/// `from_enumerable` feeds `stages` mapper stages.
pub(crate) struct SourceShape {
    pub(crate) readers: usize,
    pub(crate) stages: usize,
    pub(crate) shared: bool,
}

impl SourceShape {
    /// The shape for `readers` readers and a `stages` setting, with `logic` fused in.
    pub(crate) fn new<L: Logic>(readers: usize, stages: Option<usize>, logic: &L) -> Result<Self> {
        if stages == Some(0) {
            return Err(FlowError::Config(
                "a source's layer needs at least 1 stage".into(),
            ));
        }
        let stages = stages.unwrap_or_else(crate::runtime::default_parallelism);
        // A chain that does nothing per event has nothing to run in parallel: more stages
        // would only split the source's order and pay for the hand-over.
        let shared = readers < stages && logic.worth_spreading();
        Ok(SourceShape {
            readers,
            stages: if shared { stages } else { readers },
            shared,
        })
    }

    /// One stage per reader; `parts` makes each stage's reader, logic, dispatch and retry
    /// interval.
    pub(crate) fn build<'a, 'd, T, R, L>(
        &self,
        compiler: &mut Compiler<'a>,
        label: &str,
        readers: Vec<T>,
        mut parts: impl FnMut(T) -> (R, L, &'d DispatchSpec<'a, L::Out>, Option<Duration>),
    ) -> Vec<Output<L::Out>>
    where
        'a: 'd,
        R: SourceRead + 'a,
        L: Logic<In = R::Item> + 'a,
    {
        let count = readers.len();
        readers
            .into_iter()
            .enumerate()
            .map(|(index, reader)| {
                let (reader, logic, dispatch, retry) = parts(reader);
                compiler.source(
                    label,
                    reader,
                    logic,
                    PartitionInfo { index, count },
                    dispatch,
                    retry,
                )
            })
            .collect()
    }

    /// `stages` stages sharing `shared` (one per reader); `parts` makes each stage's
    /// reader of its shared one.
    pub(crate) fn build_shared<'a, 'd, T, R, L>(
        &self,
        compiler: &mut Compiler<'a>,
        label: &str,
        what: &str,
        shared: &[T],
        mut parts: impl FnMut(&T) -> (R, L, &'d DispatchSpec<'a, L::Out>, Option<Duration>),
    ) -> Vec<Output<L::Out>>
    where
        'a: 'd,
        R: SourceRead + 'a,
        L: Logic<In = R::Item> + 'a,
    {
        (0..self.stages)
            .map(|index| {
                let which = index % shared.len();
                let (reader, logic, dispatch, retry) = parts(&shared[which]);
                let output = compiler.source(
                    label,
                    reader,
                    logic,
                    PartitionInfo {
                        index,
                        count: self.stages,
                    },
                    dispatch,
                    retry,
                );
                let sharing = (self.stages - which).div_ceil(shared.len());
                compiler.graph.nodes[output.node].note = Some(format!(
                    "reads {what} {which} of {}, shared by {sharing} stages",
                    self.readers
                ));
                output
            })
            .collect()
    }
}

/// The error of a source that made no producers (on any backend).
pub(crate) fn no_producers(label: &str) -> FlowError {
    FlowError::Config(format!("{label}: a source must have at least one producer"))
}

/// Declares the plan node of a stateless operator: it prepends its logic node.
macro_rules! op_node {
    (
        $(#[$doc:meta])*
        $node:ident => $logic:ident, [$($extra:ident),*], Item = $item:ty,
        where { $($bounds:tt)* }
    ) => {
        $(#[$doc])*
        pub struct $node<P, F> {
            pub(crate) inner: P,
            pub(crate) f: Arc<F>,
        }

        impl<P, F> $node<P, F> {
            pub(crate) fn new(inner: P, f: F) -> Self {
                $node { inner, f: Arc::new(f) }
            }
        }

        impl<P, F> std::fmt::Debug for $node<P, F> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($node))
            }
        }

        impl<P, F, $($extra),*> Plan for $node<P, F>
        where
            P: Plan,
            $($bounds)*
        {
            type Item = $item;
            const REDUCES: bool = P::REDUCES;

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
                self.inner.compile(compiler, logic::$logic::new(self.f, logic), dispatch)
            }
        }

        #[cfg(feature = "timely")]
        impl<P, F, $($extra),*> crate::cluster::ClusterPlan for $node<P, F>
        where
            P: crate::cluster::ClusterPlan,
            F: 'static,
            $($bounds)*
        {
            fn timely<'s, L>(
                self,
                compiler: &mut crate::cluster::ClusterCompiler<'s>,
                logic: L,
                stamp: crate::cluster::Stamp<L::Out>,
            ) -> Result<crate::cluster::ClusterStream<'s, L::Out>>
            where
                L: Logic<In = Self::Item> + Clone + 'static,
            {
                self.inner.timely(compiler, logic::$logic::new(self.f, logic), stamp)
            }
        }
    };
}

op_node! {
    /// `map`.
    MapNode => Map, [U], Item = U,
    where { U: Send + 'static, F: Fn(P::Item) -> U + Send + Sync, }
}
op_node! {
    /// `filter`.
    FilterNode => Filter, [], Item = P::Item,
    where { F: Fn(&P::Item) -> bool + Send + Sync, }
}
op_node! {
    /// `reject`.
    RejectNode => Reject, [], Item = P::Item,
    where { F: Fn(&P::Item) -> bool + Send + Sync, }
}
op_node! {
    /// `filter_map`.
    FilterMapNode => FilterMap, [U], Item = U,
    where { U: Send + 'static, F: Fn(P::Item) -> Option<U> + Send + Sync, }
}
op_node! {
    /// `inspect`.
    InspectNode => Inspect, [], Item = P::Item,
    where { F: Fn(&P::Item) + Send + Sync, }
}
op_node! {
    /// `flat_map`.
    FlatMapNode => FlatMap, [I], Item = I::Item,
    where {
        I: IntoIterator,
        I::Item: Send + 'static,
        F: Fn(P::Item) -> I + Send + Sync,
    }
}
op_node! {
    /// `map_batch`: only directly on a stage head (a source or a new layer).
    MapBatchNode => MapBatch, [I], Item = I::Item,
    where {
        I: IntoIterator,
        I::Item: Send + 'static,
        F: Fn(Vec<P::Item>) -> I + Send + Sync,
    }
}

/// Marks plans whose logic starts a stage, the only places `map_batch` may go.
pub trait StageHead: Plan {}
impl<S: Source> StageHead for SourceNode<S> {}
impl<I> StageHead for super::iter::IterNode<I>
where
    I: Iterator + Send,
    I::Item: Send + 'static,
{
}
impl<P: Plan, R: Route<P::Item>, W: LayerWindow<P::Item>> StageHead for Exchange<P, R, W> {}
impl<P: Plan> StageHead for Merge<P> {}

/// A new layer of stages behind a dispatcher: `partition` and `shuffle`, with the layer's
/// window `W`.
pub struct Exchange<P, R, W = NoWindow> {
    pub(crate) inner: P,
    pub(crate) route: Option<Arc<R>>,
    pub(crate) stages: usize,
    pub(crate) max_demand: usize,
    pub(crate) min_demand: usize,
    pub(crate) window: W,
    pub(crate) label: &'static str,
    pub(crate) error: Option<FlowError>,
}

impl<P, R, W> std::fmt::Debug for Exchange<P, R, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("label", &self.label)
            .field("stages", &self.stages)
            .finish()
    }
}

impl<P: Plan, R: Route<P::Item>, W: LayerWindow<P::Item>> Plan for Exchange<P, R, W> {
    type Item = P::Item;

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
        if let Some(error) = self.error {
            return Err(error);
        }
        let window = self.window.into_window();
        if let Some(window) = &window {
            window.validate()?;
        }
        let stages = self.stages;
        // With one stage there is nothing to route: the demand dispatcher does (unless
        // the user's `hash` may drop events).
        let upstream = match &self.route {
            Some(route) if stages >= 2 || route.needed_with_one_partition() => {
                let dispatch_route = route.clone();
                let dispatch = DispatchSpec::new(format!("partition({stages})"), move || {
                    let route = dispatch_route.clone();
                    ScopedDispatcher::partition_with(move |event, partitions| {
                        route.route(event, partitions)
                    })
                });
                // The chain before the partition ends in its routing: a source stage
                // routes in its own loop and its dispatcher only queues and sends (other
                // stages leave the tail unbound and their dispatcher routes).
                let tail = Routed::new(route.clone(), stages);
                self.inner.compile(compiler, tail, &dispatch)?
            }
            _ => self
                .inner
                .compile(compiler, Identity::new(), &DispatchSpec::demand())?,
        };
        layer(
            compiler,
            self.label,
            upstream,
            stages,
            self.max_demand,
            self.min_demand,
            window,
            logic,
            dispatch,
        )
    }
}

/// Adds a layer of `stages` stages running `logic`, each subscribed to every upstream
/// output (stage `i` takes partition `i`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer<'a, T, L>(
    compiler: &mut Compiler<'a>,
    label: &str,
    upstream: Vec<Output<T>>,
    stages: usize,
    max_demand: usize,
    min_demand: usize,
    window: Option<Window<T>>,
    logic: L,
    dispatch: &DispatchSpec<'a, L::Out>,
) -> Result<Vec<Output<L::Out>>>
where
    T: Send + 'static,
    L: Logic<In = T> + Clone + 'a,
{
    let first = upstream.len();
    layer_deferring(
        compiler, label, upstream, first, stages, max_demand, min_demand, window, logic, dispatch,
    )
}

/// [`layer`], with the upstream outputs from index `deferred` on subscribed
/// [`deferred`](crate::stage::SubscribeOptions::deferred): each stage reads them only
/// after all the others ended (a bounded join's probe side).
#[allow(clippy::too_many_arguments)]
pub(crate) fn layer_deferring<'a, T, L>(
    compiler: &mut Compiler<'a>,
    label: &str,
    upstream: Vec<Output<T>>,
    deferred: usize,
    stages: usize,
    max_demand: usize,
    min_demand: usize,
    window: Option<Window<T>>,
    logic: L,
    dispatch: &DispatchSpec<'a, L::Out>,
) -> Result<Vec<Output<L::Out>>>
where
    T: Send + 'static,
    L: Logic<In = T> + Clone + 'a,
{
    let mut outputs = Vec::with_capacity(stages);
    // The layer's stages share one processing-time origin, so periodic windows and
    // timers tick together across them.
    let window = window.map(|window| (Arc::new(window), Arc::new(OnceLock::new())));
    for index in 0..stages {
        let partition = PartitionInfo {
            index,
            count: stages,
        };
        let windower = window
            .as_ref()
            .map(|(window, epoch)| Windower::new(window.clone(), epoch.clone(), upstream.len()));
        let (input, output) = compiler.stage(label, logic.clone(), windower, partition, dispatch);
        for (position, source) in upstream.iter().enumerate() {
            let mut options = SubscribeOptions::new()
                .max_demand(max_demand)
                .min_demand(min_demand)
                .partition(index);
            if position >= deferred {
                options = options.deferred();
            }
            compiler
                .pipeline
                .subscribe(&input, &source.producer, options)?;
            compiler.graph.connect(source.node, output.node);
        }
        outputs.push(output);
    }
    Ok(outputs)
}

/// Several flows into one new layer; see [`Flow::merge`](super::Flow::merge).
pub struct Merge<P> {
    inputs: Vec<P>,
    stages: usize,
    max_demand: usize,
    min_demand: usize,
    error: Option<FlowError>,
}

impl<P> std::fmt::Debug for Merge<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Merge")
            .field("inputs", &self.inputs.len())
            .field("stages", &self.stages)
            .finish()
    }
}

impl<P: Plan> Merge<P> {
    pub(crate) fn new(inputs: Vec<P>, options: &Shuffle) -> Self {
        let options = &options.0;
        Merge {
            inputs,
            stages: options.stages,
            max_demand: options.max_demand,
            min_demand: options.min(),
            error: options.validate(),
        }
    }

    /// The flows merged, and an error in the options (for the cluster backend, which
    /// makes one partition per worker).
    #[cfg(feature = "timely")]
    pub(crate) fn into_parts(self) -> (Vec<P>, Option<FlowError>) {
        (self.inputs, self.error)
    }
}

impl<P: Plan> Plan for Merge<P> {
    type Item = P::Item;

    fn compile<'a, L>(
        self,
        compiler: &mut Compiler<'a>,
        logic: L,
        dispatch: &DispatchSpec<'a, L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        Self: 'a,
        L: Logic<In = P::Item> + Clone + 'a,
    {
        if let Some(error) = self.error {
            return Err(error);
        }
        if self.inputs.is_empty() {
            return Err(FlowError::Config("merge needs at least one flow".into()));
        }
        let mut upstream = Vec::new();
        for input in self.inputs {
            upstream.extend(input.compile(compiler, Identity::new(), &DispatchSpec::demand())?);
        }
        layer(
            compiler,
            "merge",
            upstream,
            self.stages,
            self.max_demand,
            self.min_demand,
            None,
            logic,
            dispatch,
        )
    }
}
