//! `map_init(init, f)`: a map with per-stage state made knowing the stage's place in its
//! layer — Flow's `on_init` role, with rayon's name.
//!
//! `init(partition)` runs once in each stage, before its first event, with the stage's
//! [`PartitionInfo`] (index and count of its layer); `f(&mut state, event)` maps each event
//! with that state. A stage's number, a per-stage connection or random generator, a
//! per-stage output file: what user code needs to know which stage it runs in, without a
//! reduce.

use std::marker::PhantomData;
use std::sync::Arc;

use super::Flow;
use super::compile::{Compiler, DispatchSpec, Output, Plan};
use super::logic::{Logic, PartitionInfo};
use crate::error::Result;
use crate::window::WindowSignal;

/// The logic of `map_init`: the stage's state, made at `start`, in front of `rest`.
struct MapInit<A, S, I, F, L> {
    init: Arc<I>,
    f: Arc<F>,
    /// Made by `start`, which every stage calls before its first event.
    state: Option<S>,
    partition: PartitionInfo,
    rest: L,
    _in: PhantomData<fn(A)>,
}

impl<A, S, I, F, L: Clone> Clone for MapInit<A, S, I, F, L> {
    fn clone(&self) -> Self {
        // Each stage makes its own state.
        MapInit {
            init: self.init.clone(),
            f: self.f.clone(),
            state: None,
            partition: self.partition,
            rest: self.rest.clone(),
            _in: PhantomData,
        }
    }
}

impl<A, S, U, I, F, L> Logic for MapInit<A, S, I, F, L>
where
    A: Send + 'static,
    S: Send + 'static,
    I: Fn(PartitionInfo) -> S + Send + Sync + 'static,
    F: Fn(&mut S, A) -> U + Send + Sync + 'static,
    L: Logic<In = U>,
{
    type In = A;
    type Out = L::Out;

    fn start(&mut self, partition: PartitionInfo) {
        self.partition = partition;
        self.state = Some((self.init)(partition));
        self.rest.start(partition);
    }

    #[inline]
    fn push(&mut self, event: A, out: &mut Vec<L::Out>) {
        self.feed(std::iter::once(event), out);
    }

    #[inline]
    fn feed<It: Iterator<Item = A>>(&mut self, events: It, out: &mut Vec<L::Out>) {
        let (init, partition) = (&*self.init, self.partition);
        // Made by `start` already (every stage calls it before its first event).
        let state = self.state.get_or_insert_with(|| init(partition));
        let (f, rest) = (&*self.f, &mut self.rest);
        rest.feed(events.map(|event| f(state, event)), out);
    }

    fn done(&mut self, out: &mut Vec<L::Out>) {
        self.rest.done(out);
    }

    fn window(&mut self, signal: WindowSignal<'_>, out: &mut Vec<L::Out>) {
        self.rest.window(signal, out);
    }

    fn describe(&self, names: &mut Vec<String>) {
        names.push("map_init".to_string());
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

/// The plan node of [`map_init`](Flow::map_init).
pub struct MapInitNode<P, I, F> {
    inner: P,
    init: Arc<I>,
    f: Arc<F>,
}

impl<P, I, F> std::fmt::Debug for MapInitNode<P, I, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MapInitNode")
    }
}

impl<P, S, U, I, F> MapInitNode<P, I, F>
where
    P: Plan,
    S: Send + 'static,
    U: Send + 'static,
    I: Fn(PartitionInfo) -> S + Send + Sync + 'static,
    F: Fn(&mut S, P::Item) -> U + Send + Sync + 'static,
{
    /// The node's input plan, and its logic in front of `rest` (for any backend).
    fn into_logic<L: Logic<In = U>>(self, rest: L) -> (P, MapInit<P::Item, S, I, F, L>) {
        let logic = MapInit {
            init: self.init,
            f: self.f,
            state: None,
            partition: PartitionInfo { index: 0, count: 1 },
            rest,
            _in: PhantomData,
        };
        (self.inner, logic)
    }
}

impl<P, S, U, I, F> Plan for MapInitNode<P, I, F>
where
    P: Plan,
    S: Send + 'static,
    U: Send + 'static,
    I: Fn(PartitionInfo) -> S + Send + Sync + 'static,
    F: Fn(&mut S, P::Item) -> U + Send + Sync + 'static,
{
    type Item = U;
    const REDUCES: bool = P::REDUCES;

    fn compile<'a, L>(
        self,
        compiler: &mut Compiler<'a>,
        logic: L,
        dispatch: &DispatchSpec<'a, L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        Self: 'a,
        L: Logic<In = U> + Clone + 'a,
    {
        let (inner, logic) = self.into_logic(logic);
        inner.compile(compiler, logic, dispatch)
    }
}

#[cfg(feature = "timely")]
impl<P, S, U, I, F> crate::cluster::ClusterPlan for MapInitNode<P, I, F>
where
    P: crate::cluster::ClusterPlan,
    S: Send + 'static,
    U: Send + 'static,
    I: Fn(PartitionInfo) -> S + Send + Sync + 'static,
    F: Fn(&mut S, P::Item) -> U + Send + Sync + 'static,
{
    fn timely<'s, L>(
        self,
        compiler: &mut crate::cluster::ClusterCompiler<'s>,
        logic: L,
        stamp: crate::cluster::Stamp<L::Out>,
    ) -> Result<crate::cluster::ClusterStream<'s, L::Out>>
    where
        L: Logic<In = U> + Clone + 'static,
    {
        let (inner, logic) = self.into_logic(logic);
        inner.timely(compiler, logic, stamp)
    }
}

impl<P: Plan> Flow<P> {
    /// Maps each event with per-stage state: `init(partition)` makes the state once in
    /// each stage, before its first event, knowing the stage's place in its layer
    /// ([`PartitionInfo`]: `index` of `count`); `f(&mut state, event)` maps each event
    /// (fused). The role of Flow's `on_init`, named after rayon's `map_init`: what a
    /// stage needs to know which stage it is, without a reduce.
    ///
    /// ```
    /// use flowstage::flow::{Flow, Partition};
    /// // Which of the 3 stages of the layer handled each event: the one its hash named.
    /// let placed: Vec<(usize, usize, u32)> = Flow::from_iter(0..30u32)
    ///     .partition(Partition::by_hash(|x: &u32, n| Some(*x as usize % n)).stages(3))
    ///     .map_init(|partition| partition, |p, x| (p.index, p.count, x))
    ///     .collect()?;
    /// assert!(placed.iter().all(|&(index, count, x)| count == 3 && index == x as usize % 3));
    ///
    /// // Per-stage state: each stage numbers its own events.
    /// let numbered: Vec<(usize, u64)> = Flow::from_iters([0..5u32, 0..5])
    ///     .map_init(|p| (p.index, 0u64), |(index, seen), _| { *seen += 1; (*index, *seen) })
    ///     .collect()?;
    /// assert_eq!(numbered.iter().filter(|(index, _)| *index == 1).count(), 5);
    /// assert_eq!(numbered.iter().map(|(_, n)| n).max(), Some(&5));
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn map_init<S, U, I, F>(self, init: I, f: F) -> Flow<MapInitNode<P, I, F>>
    where
        S: Send + 'static,
        U: Send + 'static,
        I: Fn(PartitionInfo) -> S + Send + Sync + 'static,
        F: Fn(&mut S, P::Item) -> U + Send + Sync + 'static,
    {
        Flow {
            plan: MapInitNode {
                inner: self.plan,
                init: Arc::new(init),
                f: Arc::new(f),
            },
        }
    }
}
