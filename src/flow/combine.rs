//! `reduce_by_key` and `count_by_key`: keyed aggregation with a combiner.
//!
//! With an associative `combine`, values of one key can be combined anywhere, in any
//! grouping. So the planner combines inside each upstream stage first (a per-stage map,
//! flushed when it reaches [`COMBINER_CAPACITY`] keys and at the end), and only the
//! combined `(key, value)` pairs cross the partition exchange: for word count, one pair
//! per distinct word per stage instead of one event per word.

use std::collections::hash_map::Entry;
use std::hash::Hash;

use std::sync::Arc;

use ahash::AHashMap;

use super::Flow;
use super::compile::{Compiler, DispatchSpec, Output, Plan};
use super::logic::{Logic, PartitionInfo};
use super::nodes::MapNode;
use super::partition::Partition;
use crate::error::Result;
use crate::stage::{partition_hash, partition_of};
use crate::window::WindowSignal;

/// Keys a combiner holds before it flushes its pairs downstream: bounds its memory.
/// Large enough that a natural-language vocabulary (~300k words) is combined in one
/// round: at 64k keys, word count over 500 MB of prose spent ~25% more time flushing
/// and re-combining partial counts downstream.
pub const COMBINER_CAPACITY: usize = 1 << 20;

/// A map combining the values of equal keys with `combine`.
#[derive(Debug)]
pub struct Combined<K, V, F> {
    map: AHashMap<K, Option<V>>,
    combine: Arc<F>,
}

impl<K: Hash + Eq, V, F: Fn(V, V) -> V> Combined<K, V, F> {
    fn new(combine: Arc<F>) -> Self {
        Combined {
            map: AHashMap::new(),
            combine,
        }
    }

    #[inline]
    fn insert(&mut self, key: K, value: V) {
        // One hash per pair, whether the key is new or not.
        match self.map.entry(key) {
            Entry::Occupied(mut slot) => {
                let slot = slot.get_mut();
                // The slot is only empty for the instant of this combine.
                if let Some(old) = slot.take() {
                    *slot = Some((self.combine)(old, value));
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(Some(value));
            }
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

impl<K, V, F> IntoIterator for Combined<K, V, F> {
    type Item = (K, V);
    type IntoIter = std::iter::FilterMap<
        std::collections::hash_map::IntoIter<K, Option<V>>,
        fn((K, Option<V>)) -> Option<(K, V)>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.map
            .into_iter()
            .filter_map(|(key, value)| value.map(|value| (key, value)))
    }
}

/// The combiner logic: a per-stage map in front of what follows.
struct Combine<K, V, F, L> {
    combined: Combined<K, V, F>,
    rest: L,
}

impl<K, V, F, L: Clone> Clone for Combine<K, V, F, L> {
    fn clone(&self) -> Self {
        Combine {
            combined: Combined {
                map: AHashMap::new(),
                combine: self.combined.combine.clone(),
            },
            rest: self.rest.clone(),
        }
    }
}

impl<K, V, F, L> Combine<K, V, F, L>
where
    K: Hash + Eq + Send + 'static,
    V: Send + 'static,
    F: Fn(V, V) -> V + Send + Sync,
    L: Logic<In = (K, V)>,
{
    fn flush(&mut self, out: &mut Vec<L::Out>) {
        // Drain in place: the map keeps its capacity for the next round.
        for (key, value) in self.combined.map.drain() {
            if let Some(value) = value {
                self.rest.push((key, value), out);
            }
        }
    }
}

impl<K, V, F, L> Logic for Combine<K, V, F, L>
where
    K: Hash + Eq + Send + 'static,
    V: Send + 'static,
    F: Fn(V, V) -> V + Send + Sync,
    L: Logic<In = (K, V)>,
{
    type In = (K, V);
    type Out = L::Out;

    fn start(&mut self, partition: PartitionInfo) {
        self.rest.start(partition);
    }

    #[inline]
    fn push(&mut self, (key, value): (K, V), out: &mut Vec<L::Out>) {
        self.combined.insert(key, value);
        if self.combined.len() >= COMBINER_CAPACITY {
            self.flush(out);
        }
    }

    fn batch(&mut self, events: &mut Vec<(K, V)>, out: &mut Vec<L::Out>) {
        for event in events.drain(..) {
            self.push(event, out);
        }
    }

    fn done(&mut self, out: &mut Vec<L::Out>) {
        self.flush(out);
        self.rest.done(out);
    }

    fn window(&mut self, signal: WindowSignal<'_>, out: &mut Vec<L::Out>) {
        self.rest.window(signal, out);
    }

    fn describe(&self, names: &mut Vec<String>) {
        names.push("combine".to_string());
        self.rest.describe(names);
    }

    fn failure(&mut self) -> Option<crate::error::StageError> {
        self.rest.failure()
    }

    fn side_output(&mut self) -> Option<super::SideOutput> {
        self.rest.side_output()
    }

    fn routed(&mut self) -> Option<&mut Vec<Vec<Self::Out>>> {
        self.rest.routed()
    }

    fn has_reducer(&self) -> bool {
        self.rest.has_reducer()
    }
}

/// The plan node of the combiner.
pub struct CombineNode<P, F> {
    inner: P,
    combine: Arc<F>,
}

impl<P, F> std::fmt::Debug for CombineNode<P, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CombineNode")
    }
}

impl<P, K, V, F> Plan for CombineNode<P, F>
where
    P: Plan<Item = (K, V)>,
    K: Hash + Eq + Send + 'static,
    V: Send + 'static,
    F: Fn(V, V) -> V + Send + Sync,
{
    type Item = (K, V);
    const REDUCES: bool = P::REDUCES;

    fn compile<'a, L>(
        self,
        compiler: &mut Compiler<'a>,
        logic: L,
        dispatch: &DispatchSpec<'a, L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        Self: 'a,
        L: Logic<In = (K, V)> + Clone + 'a,
    {
        let combine = Combine {
            combined: Combined::new(self.combine),
            rest: logic,
        };
        self.inner.compile(compiler, combine, dispatch)
    }
}

impl<P, K, V> Flow<P>
where
    P: Plan<Item = (K, V)>,
    K: Hash + Eq + Send + 'static,
    V: Send + 'static,
{
    /// Combines the values of each key with an associative `combine`, across the whole
    /// flow: values are combined in each upstream stage first, then partitioned by key
    /// (`options` gives the stages and demand) and combined per partition. Emits one
    /// `(key, value)` pair per key.
    ///
    /// ```
    /// use flowstage::flow::{Flow, Partition};
    /// let sales = vec![("tea", 3), ("coffee", 5), ("tea", 4)];
    /// let mut totals: Vec<(&str, i32)> = Flow::from_iter(sales)
    ///     .reduce_by_key(|a, b| a + b, Partition::new().stages(2))
    ///     .collect()?;
    /// totals.sort();
    /// assert_eq!(totals, [("coffee", 5), ("tea", 7)]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn reduce_by_key<F>(self, combine: F, options: Partition) -> Flow<ReduceByKeyNode<P, F>>
    where
        F: Fn(V, V) -> V + Send + Sync,
    {
        Flow {
            plan: ReduceByKeyNode {
                inner: self.plan,
                combine: Arc::new(combine),
                options,
            },
        }
    }
}

/// The plan node of [`reduce_by_key`](Flow::reduce_by_key): a named type (not an opaque
/// one) so that each backend can build it — the combiner, a partition by key, and the
/// per-partition reduce, made by `reduce_by_key_plan!` for whichever backend asks.
pub struct ReduceByKeyNode<P, F> {
    inner: P,
    combine: Arc<F>,
    options: Partition,
}

impl<P, F> std::fmt::Debug for ReduceByKeyNode<P, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReduceByKeyNode")
            .field("stages", &self.options.stages)
            .finish()
    }
}

/// The plan a [`ReduceByKeyNode`] stands for, in the scope of an impl naming `K`, `V`, `F`.
/// A macro rather than a function: the plan's type holds closures, so it cannot be named
/// as a return type without hiding which backends it supports.
macro_rules! reduce_by_key_plan {
    ($node:expr) => {{
        let ReduceByKeyNode {
            inner,
            combine,
            options,
        } = $node;
        let combined = Flow {
            plan: CombineNode {
                inner,
                combine: combine.clone(),
            },
        };
        let options = Partition::by_hash(|(key, _): &(K, V), partitions| {
            Some(partition_of(partition_hash(key), partitions))
        })
        .stages(options.stages)
        .max_demand(options.max_demand)
        .min_demand(options.min());
        combined
            .partition(options)
            .reduce(
                move || Combined::new(combine.clone()),
                |(key, value), mut combined: Combined<K, V, F>| {
                    combined.insert(key, value);
                    combined
                },
            )
            // The layer is not windowed: its one trigger, `Done`, hands the map over (the
            // keeping shorthands would need `Combined: Clone`).
            .on_trigger(|combined: Combined<K, V, F>, _, _| {
                let fresh = Combined::new(combined.combine.clone());
                (combined, fresh)
            })
            .plan
    }};
}

impl<P, K, V, F> Plan for ReduceByKeyNode<P, F>
where
    P: Plan<Item = (K, V)>,
    K: Hash + Eq + Send + 'static,
    V: Send + 'static,
    F: Fn(V, V) -> V + Send + Sync,
{
    type Item = (K, V);
    // Its partition layer ends in the per-key reduce.
    const REDUCES: bool = true;

    fn compile<'a, L>(
        self,
        compiler: &mut Compiler<'a>,
        logic: L,
        dispatch: &DispatchSpec<'a, L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        Self: 'a,
        L: Logic<In = (K, V)> + Clone + 'a,
    {
        reduce_by_key_plan!(self).compile(compiler, logic, dispatch)
    }
}

#[cfg(feature = "timely")]
mod cluster {
    use super::*;
    use crate::cluster::{ClusterCompiler, ClusterPlan, ClusterStream, Stamp, Wire};

    /// On the cluster the combiner runs fused into the sources' operators, as locally.
    impl<P, K, V, F> ClusterPlan for CombineNode<P, F>
    where
        P: ClusterPlan<Item = (K, V)>,
        K: Hash + Eq + Send + 'static,
        V: Send + 'static,
        F: Fn(V, V) -> V + Send + Sync + 'static,
    {
        fn timely<'s, L>(
            self,
            compiler: &mut ClusterCompiler<'s>,
            logic: L,
            stamp: Stamp<L::Out>,
        ) -> Result<ClusterStream<'s, L::Out>>
        where
            L: Logic<In = (K, V)> + Clone + 'static,
        {
            let combine = Combine {
                combined: Combined::new(self.combine),
                rest: logic,
            };
            self.inner.timely(compiler, combine, stamp)
        }
    }

    /// The same plan as locally; the combined pairs cross the exchange, so they must be
    /// [`Wire`].
    impl<P, K, V, F> ClusterPlan for ReduceByKeyNode<P, F>
    where
        P: ClusterPlan<Item = (K, V)>,
        K: Hash + Eq + Wire,
        V: Wire,
        F: Fn(V, V) -> V + Send + Sync + 'static,
    {
        fn timely<'s, L>(
            self,
            compiler: &mut ClusterCompiler<'s>,
            logic: L,
            stamp: Stamp<L::Out>,
        ) -> Result<ClusterStream<'s, L::Out>>
        where
            L: Logic<In = (K, V)> + Clone + 'static,
        {
            reduce_by_key_plan!(self).timely(compiler, logic, stamp)
        }
    }
}

/// `count_by_key`'s pairing of each event with a count of one.
fn counted<T>(event: T) -> (T, u64) {
    (event, 1)
}

/// `count_by_key`'s combine.
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// The plan of [`count_by_key`](Flow::count_by_key).
pub type CountByKeyNode<P> = ReduceByKeyNode<
    MapNode<P, fn(<P as Plan>::Item) -> (<P as Plan>::Item, u64)>,
    fn(u64, u64) -> u64,
>;

impl<P> Flow<P>
where
    P: Plan,
    P::Item: Hash + Eq,
{
    /// Counts the events of each distinct value: `reduce_by_key` on `(event, 1)`.
    ///
    /// ```
    /// use flowstage::flow::{Flow, Partition};
    /// let mut counts: Vec<(char, u64)> = Flow::from_iter("abracadabra".chars())
    ///     .count_by_key(Partition::new().stages(2))
    ///     .collect()?;
    /// counts.sort();
    /// assert_eq!(counts, [('a', 5), ('b', 2), ('c', 1), ('d', 1), ('r', 2)]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn count_by_key(self, options: Partition) -> Flow<CountByKeyNode<P>> {
        let counted: fn(P::Item) -> (P::Item, u64) = counted;
        let add: fn(u64, u64) -> u64 = add;
        self.map(counted).reduce_by_key(add, options)
    }
}
