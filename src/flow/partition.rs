//! Options of `partition`, `shuffle` and `merge`: how many stages, which key, what demand.

use std::hash::Hash;
use std::sync::Arc;

use super::SideOutput;
use super::logic::{Identity, Logic, PartitionInfo};
use crate::error::{FlowError, StageError};
use crate::stage::demand::validate_demand;
use crate::stage::{DEFAULT_MAX_DEMAND, partition_hash, partition_of, queue_routed};
use crate::window::{NoWindow, Window, WindowSignal};

/// How an event picks its partition. Implemented for the crate's routing options.
pub trait Route<T>: Send + Sync {
    /// The partition of `event` among `partitions`, or `None` to drop it.
    fn route(&self, event: &T, partitions: usize) -> Option<usize>;

    /// Whether routing matters even with one partition (it may drop events or fail):
    /// then a one-stage layer keeps the partition dispatcher instead of the demand one.
    fn needed_with_one_partition(&self) -> bool {
        false
    }
}

/// Routes by the hash of the whole event (the default key).
#[derive(Debug, Clone, Copy, Default)]
pub struct HashEvent;

impl<T: Hash> Route<T> for HashEvent {
    #[inline]
    fn route(&self, event: &T, partitions: usize) -> Option<usize> {
        Some(partition_of(partition_hash(event), partitions))
    }
}

/// Routes by the hash of a key function's result.
#[derive(Debug, Clone, Copy)]
pub struct ByKey<F>(F);

impl<T, K: Hash, F: Fn(&T) -> K + Send + Sync> Route<T> for ByKey<F> {
    #[inline]
    fn route(&self, event: &T, partitions: usize) -> Option<usize> {
        Some(partition_of(partition_hash(&(self.0)(event)), partitions))
    }
}

/// Routes by a user function returning the partition, or `None` to drop the event.
#[derive(Debug, Clone, Copy)]
pub struct ByHash<F>(F);

impl<T, F: Fn(&T, usize) -> Option<usize> + Send + Sync> Route<T> for ByHash<F> {
    #[inline]
    fn route(&self, event: &T, partitions: usize) -> Option<usize> {
        (self.0)(event, partitions)
    }

    fn needed_with_one_partition(&self) -> bool {
        true
    }
}

/// No routing: the demand dispatcher (`shuffle`, `merge`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRoute;

impl<T> Route<T> for NoRoute {
    fn route(&self, _event: &T, _partitions: usize) -> Option<usize> {
        None
    }
}

/// Options of a new layer: stages, routing, demand.
///
/// ```
/// use flowstage::flow::{Flow, Partition};
/// let pairs = vec![("a", 1), ("b", 2), ("a", 3)];
/// let mut sums: Vec<(&str, i32)> = Flow::from_iter(pairs)
///     .partition(Partition::by_key(|(key, _): &(&str, i32)| *key).stages(2).max_demand(100))
///     .reduce(std::collections::HashMap::new, |(key, value), mut sums| {
///         *sums.entry(key).or_insert(0) += value;
///         sums
///     })
///     .collect()?;
/// sums.sort();
/// assert_eq!(sums, [("a", 4), ("b", 2)]);
/// # Ok::<(), flowstage::FlowError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Partition<R = HashEvent, W = NoWindow> {
    pub(crate) route: R,
    pub(crate) stages: usize,
    pub(crate) max_demand: usize,
    pub(crate) min_demand: Option<usize>,
    pub(crate) window: W,
}

impl Default for Partition<HashEvent> {
    fn default() -> Self {
        Self::new()
    }
}

impl Partition<HashEvent> {
    /// Partitions by the hash of the whole event, over as many stages as cores.
    pub fn new() -> Self {
        Partition {
            route: HashEvent,
            stages: crate::runtime::default_parallelism(),
            max_demand: DEFAULT_MAX_DEMAND,
            min_demand: None,
            window: NoWindow,
        }
    }

    /// Partitions by the hash of `key(event)`. The event type is not known yet where the
    /// options are made, so a closure names its argument's type (`|pair: &(K, V)| ..`,
    /// or a pattern: `|&(key, _)| key`); [`Flow::partition_by_key`](super::Flow::partition_by_key)
    /// takes the key where the type is known.
    pub fn by_key<T, K: Hash, F>(key: F) -> Partition<ByKey<F>>
    where
        F: Fn(&T) -> K + Send + Sync,
    {
        Partition::new().with_route(ByKey(key))
    }

    /// Partitions by `hash(event, partitions)`: a partition index, or `None` to drop the
    /// event. An index out of range fails the run.
    pub fn by_hash<T, F>(hash: F) -> Partition<ByHash<F>>
    where
        F: Fn(&T, usize) -> Option<usize> + Send + Sync,
    {
        Partition::new().with_route(ByHash(hash))
    }
}

impl<W> Partition<HashEvent, W> {
    /// These options, routing by the hash of `key(event)`.
    pub(crate) fn keyed<F>(self, key: F) -> Partition<ByKey<F>, W> {
        self.with_route(ByKey(key))
    }
}

impl<R, W> Partition<R, W> {
    fn with_route<S>(self, route: S) -> Partition<S, W> {
        Partition {
            route,
            stages: self.stages,
            max_demand: self.max_demand,
            min_demand: self.min_demand,
            window: self.window,
        }
    }

    /// The number of stages of the new layer (default: available parallelism).
    pub fn stages(mut self, stages: usize) -> Self {
        self.stages = stages;
        self
    }

    /// `max_demand` of each subscription into the new layer.
    pub fn max_demand(mut self, max_demand: usize) -> Self {
        self.max_demand = max_demand;
        self
    }

    /// `min_demand` of each subscription into the new layer (default: half of max).
    pub fn min_demand(mut self, min_demand: usize) -> Self {
        self.min_demand = Some(min_demand);
        self
    }

    /// The window of the new layer's stages, for its reduce family (default: the global
    /// window without triggers). See [`Window`].
    pub fn window<T>(self, window: Window<T>) -> Partition<R, Window<T>> {
        Partition {
            route: self.route,
            stages: self.stages,
            max_demand: self.max_demand,
            min_demand: self.min_demand,
            window,
        }
    }

    pub(crate) fn min(&self) -> usize {
        self.min_demand.unwrap_or(self.max_demand / 2)
    }

    pub(crate) fn validate(&self) -> Option<FlowError> {
        if self.stages == 0 {
            return Some(FlowError::Config("a layer needs at least one stage".into()));
        }
        validate_demand(self.max_demand, self.min()).err()
    }
}

/// Options of `shuffle`, `merge` and the joins: a new layer behind the demand dispatcher
/// (no keys), with the builder methods of [`Partition`].
///
/// ```
/// use flowstage::flow::{Flow, Shuffle};
/// let total: u64 = Flow::from_iter(1..=10u64)
///     .shuffle(Shuffle::new().stages(3))
///     .collect::<Vec<_>>()?
///     .into_iter()
///     .sum();
/// assert_eq!(total, 55);
/// # Ok::<(), flowstage::FlowError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Shuffle<W = NoWindow>(pub(crate) Partition<NoRoute, W>);

impl Default for Shuffle {
    fn default() -> Self {
        Self::new()
    }
}

impl Shuffle {
    /// A new layer with no routing, over as many stages as cores.
    pub fn new() -> Self {
        Shuffle(Partition::new().with_route(NoRoute))
    }

    /// The same as [`new`](Shuffle::new) (the name this type had first).
    // Kept: `Shuffle::shuffle()` is how flows were written before `new` existed.
    #[allow(clippy::self_named_constructors)]
    pub fn shuffle() -> Self {
        Self::new()
    }
}

impl<W> Shuffle<W> {
    /// The number of stages of the new layer (default: available parallelism).
    pub fn stages(self, stages: usize) -> Self {
        Shuffle(self.0.stages(stages))
    }

    /// `max_demand` of each subscription into the new layer.
    pub fn max_demand(self, max_demand: usize) -> Self {
        Shuffle(self.0.max_demand(max_demand))
    }

    /// `min_demand` of each subscription into the new layer (default: half of max).
    pub fn min_demand(self, min_demand: usize) -> Self {
        Shuffle(self.0.min_demand(min_demand))
    }

    /// The window of the new layer's stages (see [`Partition::window`]).
    pub fn window<T>(self, window: Window<T>) -> Shuffle<Window<T>> {
        Shuffle(self.0.window(window))
    }
}

/// The end of the chain a source stage runs before a `partition`: routes each event
/// into its partition's queue in the loop that makes it, instead of into the stage's
/// output for its dispatcher to route in a second pass.
///
/// Unbound (as made, and in any stage that does not ask for its queues) it passes events
/// through as [`Identity`](super::logic::Identity) does and the partition dispatcher
/// routes them; a source stage binds it ([`Logic::routed`]) and hands the queues to its
/// dispatcher after each production. Both route with the same [`Route`], so where an
/// event goes does not depend on which of the two did it.
pub(crate) struct Routed<T, R> {
    route: Arc<R>,
    partitions: usize,
    /// Per partition, what this stage routed since its dispatcher last took the queues;
    /// empty until bound.
    queues: Vec<Vec<T>>,
    bound: bool,
    /// A user route's partition out of range: the stage fails with it after the batch.
    failure: Option<StageError>,
}

impl<T, R> Routed<T, R> {
    pub(crate) fn new(route: Arc<R>, partitions: usize) -> Self {
        Routed {
            route,
            partitions,
            queues: Vec::new(),
            bound: false,
            failure: None,
        }
    }
}

impl<T, R> Clone for Routed<T, R> {
    /// A fresh, unbound tail for another stage.
    fn clone(&self) -> Self {
        Routed::new(self.route.clone(), self.partitions)
    }
}

impl<T, R> std::fmt::Debug for Routed<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("partitions", &self.partitions)
            .field("bound", &self.bound)
            .finish()
    }
}

impl<T: Send + 'static, R: Route<T>> Routed<T, R> {
    /// Routes one event into its queue. A partition out of range is the stage's failure
    /// (the first one is kept): the stage ends the run with it after this batch, before
    /// anything routed is sent.
    #[inline(always)]
    fn route_one(&mut self, event: T) {
        let partition = self.route.route(&event, self.partitions);
        if let Err(error) = queue_routed(&mut self.queues, partition, event) {
            self.failure.get_or_insert(error);
        }
    }
}

impl<T: Send + 'static, R: Route<T>> Logic for Routed<T, R> {
    type In = T;
    type Out = T;

    fn start(&mut self, _partition: PartitionInfo) {}

    #[inline]
    fn push(&mut self, event: T, out: &mut Vec<T>) {
        if self.bound {
            self.route_one(event);
        } else {
            Identity::new().push(event, out);
        }
    }

    fn batch(&mut self, events: &mut Vec<T>, out: &mut Vec<T>) {
        if self.bound {
            self.feed(events.drain(..), out);
        } else {
            Identity::new().batch(events, out);
        }
    }

    #[inline]
    fn feed<I: Iterator<Item = T>>(&mut self, events: I, out: &mut Vec<T>) {
        if self.bound {
            // Internal iteration: the source's loop, the chain's adapters and the routing
            // fold into one loop.
            events.for_each(|event| self.route_one(event));
        } else {
            Identity::new().feed(events, out);
        }
    }

    fn done(&mut self, _out: &mut Vec<T>) {}

    fn window(&mut self, _signal: WindowSignal<'_>, _out: &mut Vec<T>) {}

    fn describe(&self, _names: &mut Vec<String>) {}

    fn passes_batches(&self) -> bool {
        true
    }

    fn failure(&mut self) -> Option<StageError> {
        self.failure.take()
    }

    fn side_output(&mut self) -> Option<SideOutput> {
        None
    }

    fn routed(&mut self) -> Option<&mut Vec<Vec<T>>> {
        if !self.bound {
            self.bound = true;
            self.queues = (0..self.partitions).map(|_| Vec::new()).collect();
        }
        Some(&mut self.queues)
    }
}
