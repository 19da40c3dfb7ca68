//! Plan nodes: one per operator, each compiling itself onto stages.
//!
//! Stateless operators prepend their logic to what follows and compile their input with it
//! (fusion). Stage-making nodes (`SourceNode`, `Exchange`, `Merge`) create stages running
//! the logic they were given.

use std::sync::{Arc, OnceLock};

use super::compile::{Compiler, DispatchSpec, Output, Plan};
use super::logic::{self, Identity, Logic, PartitionInfo};
use super::partition::{Route, Shuffle};
use crate::error::{FlowError, Result};
use crate::source::Source;
use crate::stage::{Dispatcher, SubscribeOptions};
use crate::window::{LayerWindow, NoWindow, Window, Windower};

/// A flow's sources; see [`Flow::from_source`](super::Flow::from_source).
#[derive(Debug)]
pub struct SourceNode<S> {
    pub(crate) source: S,
    pub(crate) label: &'static str,
}

impl<S: Source> Plan for SourceNode<S> {
    type Item = S::Item;

    fn compile<L>(
        self,
        compiler: &mut Compiler,
        logic: L,
        dispatch: &DispatchSpec<L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        L: Logic<In = S::Item> + Clone,
    {
        if let Some((operator, counters)) = self.source.error_counters() {
            compiler.pipeline.error_counters(operator, counters);
        }
        let retry_interval = self.source.retry_interval();
        let producers = self.source.into_producers()?;
        if producers.is_empty() {
            return Err(no_producers(self.label));
        }
        let count = producers.len();
        Ok(producers
            .into_iter()
            .enumerate()
            .map(|(index, producer)| {
                compiler.source(
                    self.label,
                    producer,
                    logic.clone(),
                    PartitionInfo { index, count },
                    dispatch,
                    retry_interval,
                )
            })
            .collect())
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

            fn compile<L>(
                self,
                compiler: &mut Compiler,
                logic: L,
                dispatch: &DispatchSpec<L::Out>,
            ) -> Result<Vec<Output<L::Out>>>
            where
                L: Logic<In = Self::Item> + Clone,
            {
                self.inner.compile(compiler, logic::$logic::new(self.f, logic), dispatch)
            }
        }

        #[cfg(feature = "timely")]
        impl<P, F, $($extra),*> crate::cluster::ClusterPlan for $node<P, F>
        where
            P: crate::cluster::ClusterPlan,
            $($bounds)*
        {
            fn timely<'s, L>(
                self,
                compiler: &mut crate::cluster::ClusterCompiler<'s>,
                logic: L,
                stamp: crate::cluster::Stamp<L::Out>,
            ) -> Result<crate::cluster::ClusterStream<'s, L::Out>>
            where
                L: Logic<In = Self::Item> + Clone,
            {
                self.inner.timely(compiler, logic::$logic::new(self.f, logic), stamp)
            }
        }
    };
}

op_node! {
    /// `map`.
    MapNode => Map, [U], Item = U,
    where { U: Send + 'static, F: Fn(P::Item) -> U + Send + Sync + 'static, }
}
op_node! {
    /// `filter`.
    FilterNode => Filter, [], Item = P::Item,
    where { F: Fn(&P::Item) -> bool + Send + Sync + 'static, }
}
op_node! {
    /// `reject`.
    RejectNode => Reject, [], Item = P::Item,
    where { F: Fn(&P::Item) -> bool + Send + Sync + 'static, }
}
op_node! {
    /// `filter_map`.
    FilterMapNode => FilterMap, [U], Item = U,
    where { U: Send + 'static, F: Fn(P::Item) -> Option<U> + Send + Sync + 'static, }
}
op_node! {
    /// `inspect`.
    InspectNode => Inspect, [], Item = P::Item,
    where { F: Fn(&P::Item) + Send + Sync + 'static, }
}
op_node! {
    /// `flat_map`.
    FlatMapNode => FlatMap, [I], Item = I::Item,
    where {
        I: IntoIterator,
        I::Item: Send + 'static,
        F: Fn(P::Item) -> I + Send + Sync + 'static,
    }
}
op_node! {
    /// `map_batch`: only directly on a stage head (a source or a new layer).
    MapBatchNode => MapBatch, [I], Item = I::Item,
    where {
        I: IntoIterator,
        I::Item: Send + 'static,
        F: Fn(Vec<P::Item>) -> I + Send + Sync + 'static,
    }
}

/// Marks plans whose logic starts a stage, the only places `map_batch` may go.
pub trait StageHead: Plan {}
impl<S: Source> StageHead for SourceNode<S> {}
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

    fn compile<L>(
        self,
        compiler: &mut Compiler,
        logic: L,
        dispatch: &DispatchSpec<L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        L: Logic<In = Self::Item> + Clone,
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
        let upstream_dispatch = match (&self.route, stages) {
            (Some(route), n) if n >= 2 || route.needed_with_one_partition() => {
                let route = route.clone();
                DispatchSpec::new(format!("partition({stages})"), move || {
                    let route = route.clone();
                    Dispatcher::partition_with(move |event, partitions| {
                        route.route(event, partitions)
                    })
                })
            }
            _ => DispatchSpec::demand(),
        };
        let upstream = self
            .inner
            .compile(compiler, Identity::new(), &upstream_dispatch)?;
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
pub(crate) fn layer<T, L>(
    compiler: &mut Compiler,
    label: &str,
    upstream: Vec<Output<T>>,
    stages: usize,
    max_demand: usize,
    min_demand: usize,
    window: Option<Window<T>>,
    logic: L,
    dispatch: &DispatchSpec<L::Out>,
) -> Result<Vec<Output<L::Out>>>
where
    T: Send + 'static,
    L: Logic<In = T> + Clone,
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
pub(crate) fn layer_deferring<T, L>(
    compiler: &mut Compiler,
    label: &str,
    upstream: Vec<Output<T>>,
    deferred: usize,
    stages: usize,
    max_demand: usize,
    min_demand: usize,
    window: Option<Window<T>>,
    logic: L,
    dispatch: &DispatchSpec<L::Out>,
) -> Result<Vec<Output<L::Out>>>
where
    T: Send + 'static,
    L: Logic<In = T> + Clone,
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

    fn compile<L>(
        self,
        compiler: &mut Compiler,
        logic: L,
        dispatch: &DispatchSpec<L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        L: Logic<In = P::Item> + Clone,
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
