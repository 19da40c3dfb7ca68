//! The per-stage part of the terminals that reduce a flow to one value (`sum`, `count`,
//! `min`, `collect`, `any`, ...), and of `fold`.
//!
//! A terminal runs where the flow's last operators run: a [`Gather`] at the end of each
//! last-layer stage's chain folds that stage's events into one state, batch by batch,
//! and emits it when the stage's input ends. The caller then combines one state per
//! stage — a handful of events cross to it, not the flow's output. A [`Gatherer`] says
//! what the state is and how a batch folds into it.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::logic::{Logic, PartitionInfo};
use crate::stage::ShutdownHandle;
use crate::window::WindowSignal;

/// What a terminal keeps per stage and how events fold into it.
pub(crate) trait Gatherer<T>: Send + Sync {
    /// The stage's state.
    type State: Send;
    /// What a stage emits at its end.
    type Out: Send + 'static;

    /// The terminal's name, for `explain()`.
    const NAME: &'static str;

    /// Whether feeding an event costs next to nothing (no user code runs): a chain
    /// made of this gatherer alone is then not worth spreading over more stages.
    const CHEAP: bool = false;

    fn init(&self) -> Self::State;

    /// Folds a run of events into the state.
    fn feed<I: Iterator<Item = T>>(&self, state: &mut Self::State, events: I);

    /// The stage's result, if it has one to emit.
    fn finish(&self, state: Self::State) -> Option<Self::Out>;
}

/// A [`Gatherer`] as the last operator of a stage's chain.
pub(crate) struct Gather<T, G: Gatherer<T>, L> {
    gatherer: Arc<G>,
    state: Option<G::State>,
    rest: L,
    _in: PhantomData<fn(T)>,
}

impl<T, G: Gatherer<T>, L> Gather<T, G, L> {
    pub(crate) fn new(gatherer: G, rest: L) -> Self {
        Gather {
            gatherer: Arc::new(gatherer),
            state: None,
            rest,
            _in: PhantomData,
        }
    }
}

impl<T, G: Gatherer<T>, L: Clone> Clone for Gather<T, G, L> {
    fn clone(&self) -> Self {
        // (Cloned before a stage starts: the state is made at `start`.)
        Gather {
            gatherer: self.gatherer.clone(),
            state: None,
            rest: self.rest.clone(),
            _in: PhantomData,
        }
    }
}

impl<T, G, L> Logic for Gather<T, G, L>
where
    T: Send + 'static,
    G: Gatherer<T>,
    L: Logic<In = G::Out>,
{
    type In = T;
    type Out = L::Out;

    fn start(&mut self, partition: PartitionInfo) {
        self.state = Some(self.gatherer.init());
        self.rest.start(partition);
    }

    fn push(&mut self, event: T, _out: &mut Vec<L::Out>) {
        if let Some(state) = &mut self.state {
            self.gatherer.feed(state, std::iter::once(event));
        }
    }

    fn batch(&mut self, events: &mut Vec<T>, out: &mut Vec<L::Out>) {
        self.feed(events.drain(..), out);
    }

    #[inline]
    fn feed<I: Iterator<Item = T>>(&mut self, events: I, _out: &mut Vec<L::Out>) {
        if let Some(state) = &mut self.state {
            self.gatherer.feed(state, events);
        }
    }

    fn done(&mut self, out: &mut Vec<L::Out>) {
        if let Some(state) = self.state.take() {
            if let Some(result) = self.gatherer.finish(state) {
                self.rest.push(result, out);
            }
        }
        self.rest.done(out);
    }

    fn window(&mut self, _signal: WindowSignal<'_>, _out: &mut Vec<L::Out>) {
        // A terminal's state spans the stage's windows.
    }

    fn worth_spreading(&self) -> bool {
        !G::CHEAP
    }

    fn describe(&self, names: &mut Vec<String>) {
        names.push(G::NAME.to_string());
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
}

/// `fold(identity, op)`: per stage, `op` over the events from `identity()`.
pub(crate) struct Fold<ID, F> {
    pub(crate) identity: ID,
    pub(crate) op: F,
}

impl<T, Acc, ID, F> Gatherer<T> for Fold<ID, F>
where
    Acc: Send + 'static,
    ID: Fn() -> Acc + Send + Sync,
    F: Fn(Acc, T) -> Acc + Send + Sync,
{
    type State = Option<Acc>;
    type Out = Acc;
    const NAME: &'static str = "fold";

    fn init(&self) -> Option<Acc> {
        Some((self.identity)())
    }

    #[inline]
    fn feed<I: Iterator<Item = T>>(&self, state: &mut Option<Acc>, events: I) {
        if let Some(acc) = state.take() {
            *state = Some(events.fold(acc, &self.op));
        }
    }

    fn finish(&self, state: Option<Acc>) -> Option<Acc> {
        state
    }
}

/// `reduce_with(op)`: per stage, `op` over the events, if any.
pub(crate) struct ReduceWith<F>(pub(crate) F);

impl<T, F> Gatherer<T> for ReduceWith<F>
where
    T: Send + 'static,
    F: Fn(T, T) -> T + Send + Sync,
{
    type State = Option<T>;
    type Out = T;
    const NAME: &'static str = "reduce_with";

    fn init(&self) -> Option<T> {
        None
    }

    #[inline]
    fn feed<I: Iterator<Item = T>>(&self, state: &mut Option<T>, mut events: I) {
        let first = match state.take() {
            Some(acc) => Some(acc),
            None => events.next(),
        };
        *state = first.map(|acc| events.fold(acc, &self.0));
    }

    fn finish(&self, state: Option<T>) -> Option<T> {
        state
    }
}

/// `sum`: per batch through `std::iter::Sum`.
pub(crate) struct Sum<S>(pub(crate) PhantomData<fn() -> S>);

impl<T, S> Gatherer<T> for Sum<S>
where
    S: std::iter::Sum<T> + std::iter::Sum<S> + Send + 'static,
{
    type State = Option<S>;
    type Out = S;
    const NAME: &'static str = "sum";
    const CHEAP: bool = true;

    fn init(&self) -> Option<S> {
        None
    }

    #[inline]
    fn feed<I: Iterator<Item = T>>(&self, state: &mut Option<S>, events: I) {
        let part: S = events.sum();
        *state = Some(match state.take() {
            Some(acc) => [acc, part].into_iter().sum(),
            None => part,
        });
    }

    fn finish(&self, state: Option<S>) -> Option<S> {
        state
    }
}

/// `product`: per batch through `std::iter::Product`.
pub(crate) struct Product<S>(pub(crate) PhantomData<fn() -> S>);

impl<T, S> Gatherer<T> for Product<S>
where
    S: std::iter::Product<T> + std::iter::Product<S> + Send + 'static,
{
    type State = Option<S>;
    type Out = S;
    const NAME: &'static str = "product";
    const CHEAP: bool = true;

    fn init(&self) -> Option<S> {
        None
    }

    #[inline]
    fn feed<I: Iterator<Item = T>>(&self, state: &mut Option<S>, events: I) {
        let part: S = events.product();
        *state = Some(match state.take() {
            Some(acc) => [acc, part].into_iter().product(),
            None => part,
        });
    }

    fn finish(&self, state: Option<S>) -> Option<S> {
        state
    }
}

/// `count`.
pub(crate) struct Count;

impl<T> Gatherer<T> for Count {
    type State = usize;
    type Out = usize;
    const NAME: &'static str = "count";
    const CHEAP: bool = true;

    fn init(&self) -> usize {
        0
    }

    #[inline]
    fn feed<I: Iterator<Item = T>>(&self, state: &mut usize, events: I) {
        *state += events.count();
    }

    fn finish(&self, state: usize) -> Option<usize> {
        Some(state)
    }
}

/// `collect`, `unzip` and `partition_into`: per stage, the events into a `Vec` (or two).
pub(crate) struct Collect;

impl<T: Send + 'static> Gatherer<T> for Collect {
    type State = Vec<T>;
    type Out = Vec<T>;
    const NAME: &'static str = "collect";
    const CHEAP: bool = true;

    fn init(&self) -> Vec<T> {
        Vec::new()
    }

    #[inline]
    fn feed<I: Iterator<Item = T>>(&self, state: &mut Vec<T>, events: I) {
        state.extend(events);
    }

    fn finish(&self, state: Vec<T>) -> Option<Vec<T>> {
        Some(state)
    }
}

/// `partition_into(predicate)`: per stage, the events split in two.
pub(crate) struct Split<F>(pub(crate) F);

impl<T, F> Gatherer<T> for Split<F>
where
    T: Send + 'static,
    F: Fn(&T) -> bool + Send + Sync,
{
    type State = (Vec<T>, Vec<T>);
    type Out = (Vec<T>, Vec<T>);
    const NAME: &'static str = "partition_into";

    fn init(&self) -> (Vec<T>, Vec<T>) {
        (Vec::new(), Vec::new())
    }

    #[inline]
    fn feed<I: Iterator<Item = T>>(&self, (yes, no): &mut (Vec<T>, Vec<T>), events: I) {
        for event in events {
            if (self.0)(&event) {
                yes.push(event);
            } else {
                no.push(event);
            }
        }
    }

    fn finish(&self, state: (Vec<T>, Vec<T>)) -> Option<(Vec<T>, Vec<T>)> {
        Some(state)
    }
}

/// `for_each(op)`: `op` on every event, in the stages.
pub(crate) struct ForEach<F>(pub(crate) F);

impl<T, F> Gatherer<T> for ForEach<F>
where
    F: Fn(T) + Send + Sync,
{
    type State = ();
    type Out = ();
    const NAME: &'static str = "for_each";

    fn init(&self) {}

    #[inline]
    fn feed<I: Iterator<Item = T>>(&self, _state: &mut (), events: I) {
        events.for_each(&self.0);
    }

    fn finish(&self, _state: ()) -> Option<()> {
        None
    }
}

/// `find_any(predicate)` (and `any`, `all`): the first match anywhere goes into a slot
/// the caller reads after the run, and asks the sources to finish (a drain), so the run
/// ends without reading the rest of its input; the other stages skip what is in flight.
/// (Not a per-stage state: a drained source stage ends without its chain's `done`.)
pub(crate) struct FindAny<T, F> {
    pub(crate) predicate: F,
    pub(crate) found: Arc<Found<T>>,
    pub(crate) shutdown: ShutdownHandle,
}

/// Where [`FindAny`] puts its match.
pub(crate) struct Found<T> {
    /// Set with the slot; read on every batch, the slot only once.
    any: AtomicBool,
    slot: std::sync::Mutex<Option<T>>,
}

impl<T> Found<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Found {
            any: AtomicBool::new(false),
            slot: std::sync::Mutex::new(None),
        })
    }

    /// The match, if one was found.
    pub(crate) fn take(&self) -> Option<T> {
        self.slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

impl<T, F> Gatherer<T> for FindAny<T, F>
where
    T: Send + 'static,
    F: Fn(&T) -> bool + Send + Sync,
{
    type State = ();
    type Out = T;
    const NAME: &'static str = "find_any";

    fn init(&self) {}

    #[inline]
    fn feed<I: Iterator<Item = T>>(&self, _state: &mut (), mut events: I) {
        // A stale `false` costs a batch's search at most; the slot has its own lock.
        if self.found.any.load(Ordering::Relaxed) {
            return;
        }
        if let Some(hit) = events.find(|event| (self.predicate)(event)) {
            let mut slot = self
                .found
                .slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some(hit);
            }
            self.found.any.store(true, Ordering::Relaxed);
            self.shutdown.drain();
        }
    }

    fn finish(&self, _state: ()) -> Option<T> {
        None
    }
}

/// `min_by` / `max_by` (and `min`, `max`, `*_by_key`): the least (or greatest) by `cmp`;
/// among equals, the first (for min) or the last (for max) a stage saw, as `Iterator`'s.
pub(crate) struct Extreme<C, const MAX: bool>(pub(crate) C);

impl<T, C, const MAX: bool> Gatherer<T> for Extreme<C, MAX>
where
    T: Send + 'static,
    C: Fn(&T, &T) -> std::cmp::Ordering + Send + Sync,
{
    type State = Option<T>;
    type Out = T;
    const NAME: &'static str = if MAX { "max" } else { "min" };

    fn init(&self) -> Option<T> {
        None
    }

    #[inline]
    fn feed<I: Iterator<Item = T>>(&self, state: &mut Option<T>, events: I) {
        let cmp = &self.0;
        let best = if MAX {
            state
                .take()
                .into_iter()
                .chain(events)
                .max_by(|a, b| cmp(a, b))
        } else {
            state
                .take()
                .into_iter()
                .chain(events)
                .min_by(|a, b| cmp(a, b))
        };
        *state = best;
    }

    fn finish(&self, state: Option<T>) -> Option<T> {
        state
    }
}
