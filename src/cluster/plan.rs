//! [`ClusterPlan`]: how plan nodes build themselves into a timely dataflow.
//!
//! The same plan nodes as for the local runtime, a second materialisation: sources
//! become timely source operators (one per share, on every worker), stateless operators
//! fuse into the [`Logic`] that follows them exactly as they do locally, and `partition`
//! / `shuffle` become a timely `Exchange` into one operator per worker that runs the
//! layer's logic (its reducer included) under the layer's window.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use timely::dataflow::{ProbeHandle, Scope, StreamVec};

use super::operators;
use super::window::LayerWindowSpec;
use crate::error::{FlowError, Result};
use crate::flow::nodes::{
    BatchNode, DepartitionNode, Exchange, JoinNode, Merge, ReduceNode, SourceNode, TakeSortNode,
    TryFlatMapNode, TryMapNode, UniqNode,
};
use crate::flow::{Emit, Emits, Identity, Logic, Plan, Route, Step};
use crate::source::Source;
use crate::window::LayerWindow;

/// The timestamps of a cluster dataflow: `(window, epoch)`, ordered lexicographically.
/// `window` is the encoded start of an event-time window (0 without windows), `epoch` a
/// source's count of batches read (see the [module docs](super#backpressure)).
pub type Time = (u64, u64);

/// A stream of a cluster dataflow.
#[doc(hidden)]
pub type ClusterStream<'s, T> = StreamVec<'s, Time, T>;

/// How the next exchange wants events timestamped: the encoded window of an event, for
/// a windowed layer; `None` for the global window.
#[doc(hidden)]
pub type Stamp<T> = Option<Arc<dyn Fn(&T) -> u64 + Send + Sync>>;

/// Events that cross a partition on the cluster: serde-serializable, as timely sends them
/// between processes.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot cross a partition on the cluster backend",
    note = "events that a `partition`, `shuffle` or the cluster's `collect` sends between \
            workers must implement serde's `Serialize` and `DeserializeOwned`"
)]
pub trait Wire: timely::ExchangeData {}
impl<T: timely::ExchangeData> Wire for T {}

/// The state of one worker's compilation: its scope, the progress probe its sources
/// check for backpressure, and where operators report failures.
#[doc(hidden)]
pub struct ClusterCompiler<'s> {
    pub(crate) scope: Scope<'s, Time>,
    pub(crate) probe: ProbeHandle<Time>,
    pub(crate) runtime: Rc<tokio::runtime::Runtime>,
    pub(crate) failure: Rc<RefCell<Option<FlowError>>>,
    pub(crate) epochs_ahead: u64,
    pub(crate) epoch_events: usize,
}

impl std::fmt::Debug for ClusterCompiler<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCompiler")
            .field("worker", &self.scope.index())
            .field("workers", &self.scope.peers())
            .finish()
    }
}

/// A plan the cluster backend can build. Implemented by every plan node: the ones the
/// cluster does not run return [`FlowError::Unsupported`] when the flow is built (see
/// the [module docs](super#operators) for the list).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be built onto the cluster backend",
    note = "every operator's node implements it (the unsupported ones fail at plan time): \
            check that the events crossing each `partition` are `Wire`"
)]
pub trait ClusterPlan: Plan {
    /// Builds the plan into `compiler`'s dataflow with `logic` after it in the same
    /// operator; its output timestamped per `stamp`.
    #[doc(hidden)]
    fn timely<'s, L>(
        self,
        compiler: &mut ClusterCompiler<'s>,
        logic: L,
        stamp: Stamp<L::Out>,
    ) -> Result<ClusterStream<'s, L::Out>>
    where
        L: Logic<In = Self::Item> + Clone + 'static;
}

pub(crate) fn unsupported<T>(operator: impl Into<String>) -> Result<T> {
    Err(FlowError::Unsupported {
        operator: operator.into(),
        backend: "timely",
    })
}

impl<S: Source> ClusterPlan for SourceNode<S> {
    fn timely<'s, L>(
        self,
        compiler: &mut ClusterCompiler<'s>,
        logic: L,
        stamp: Stamp<L::Out>,
    ) -> Result<ClusterStream<'s, L::Out>>
    where
        L: Logic<In = S::Item> + Clone + 'static,
    {
        let (worker, workers) = (compiler.scope.index(), compiler.scope.peers());
        let shares =
            self.source
                .into_worker_producers(worker, workers)
                .map_err(|error| match error {
                    FlowError::Unsupported { backend, .. } => FlowError::Unsupported {
                        operator: format!("{} (a source without worker shares)", self.label),
                        backend,
                    },
                    other => other,
                })?;
        if shares.is_empty() {
            return Err(crate::flow::plan::no_producers(self.label));
        }
        Ok(operators::sources(
            compiler, self.label, shares, logic, stamp,
        ))
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
        stamp: Stamp<L::Out>,
    ) -> Result<ClusterStream<'s, L::Out>>
    where
        L: Logic<In = P::Item> + Clone + 'static,
    {
        if let Some(error) = self.error {
            return Err(error);
        }
        let window = LayerWindowSpec::new(self.window.into_window(), self.label)?;
        let upstream = self
            .inner
            .timely(compiler, Identity::new(), window.stamp())?;
        Ok(operators::layer(
            compiler, self.label, upstream, self.route, window, logic, stamp,
        ))
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
        L: Logic<In = Self::Item> + Clone + 'static,
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

/// Plan nodes the cluster backend does not run: an error naming the operator.
macro_rules! unsupported {
    ($($node:ty => $label:literal, [$($params:tt)*];)*) => {
        $(
            impl<$($params)*> ClusterPlan for $node
            where
                Self: Plan,
            {
                fn timely<'s, L>(
                    self,
                    _compiler: &mut ClusterCompiler<'s>,
                    _logic: L,
                    _stamp: Stamp<L::Out>,
                ) -> Result<ClusterStream<'s, L::Out>>
                where
                    L: Logic<In = Self::Item> + Clone + 'static,
                {
                    unsupported($label)
                }
            }
        )*
    };
}

unsupported! {
    Merge<T> => "merge", [T];
    JoinNode<PL, PR, KA, KB, F, T> => "bounded_join / window_join", [PL, PR, KA, KB, F, T];
    BatchNode<P> => "batch", [P];
    DepartitionNode<P, I, M, D> => "departition", [P, I, M, D];
    TakeSortNode<P, C> => "take_sort", [P, C];
    UniqNode<P, F> => "uniq / uniq_by", [P, F];
    TryMapNode<P, F> => "try_map", [P: Plan, F];
    TryFlatMapNode<P, F> => "try_flat_map", [P: Plan, F];
}
