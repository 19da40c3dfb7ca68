//! The per-stage work of a flow: a fused chain of operators, instantiated once per stage.
//!
//! A [`Logic`] takes a stage's input one event at a time and pushes what it makes into the
//! stage's output batch. Operators are *prepended* while the plan is compiled: `map(f)`
//! wraps whatever comes after it, so a chain `map → filter → reduce` becomes
//! `Map { f, rest: Filter { p, rest: Reduce { .. } } }` — one concrete type, every closure
//! monomorphised and inlined, one pass per batch, no dynamic dispatch inside.

use std::marker::PhantomData;
use std::sync::Arc;

use crate::window::WindowSignal;

/// Which stage of its layer a logic instance runs in (Flow's `{index, count}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionInfo {
    /// This stage's index in its layer, `0..count`.
    pub index: usize,
    /// The number of stages in the layer.
    pub count: usize,
}

/// The work a flow does inside one stage. Implemented by the operators; users meet it only
/// as a bound.
pub trait Logic: Send {
    /// Events in.
    type In: Send + 'static;
    /// Events out.
    type Out: Send + 'static;

    /// Called once, before any event, with the stage's place in its layer.
    fn start(&mut self, partition: PartitionInfo);

    /// Handles one event, pushing any output into `out`.
    fn push(&mut self, event: Self::In, out: &mut Vec<Self::Out>);

    /// Handles a whole batch, taking the events out of `events` and leaving it empty, so
    /// that its allocation can serve a later batch (the default drains it into
    /// [`feed`](Logic::feed)).
    fn batch(&mut self, events: &mut Vec<Self::In>, out: &mut Vec<Self::Out>)
    where
        Self: Sized,
    {
        if !self.has_reducer() {
            // Most chains emit about one event per input: one allocation instead of
            // regrowth. (A reducer emits at its triggers: nothing to reserve for.)
            out.reserve(events.len());
        }
        self.feed(events.drain(..), out);
    }

    /// Handles the events of an iterator. Operators override it to adapt the iterator and
    /// pass it on (`map` feeds `events.map(f)` to the rest), and the end of the chain
    /// consumes it: one fused loop per batch with internal iteration, and per-stage state
    /// (a reducer's accumulator) taken once per batch instead of once per event. The
    /// default pushes each event.
    #[inline]
    fn feed<I>(&mut self, events: I, out: &mut Vec<Self::Out>)
    where
        Self: Sized,
        I: Iterator<Item = Self::In>,
    {
        events.for_each(|event| self.push(event, out));
    }

    /// All input has arrived: fire the `Done` trigger, emit what is left.
    fn done(&mut self, out: &mut Vec<Self::Out>);

    /// A signal of the stage's window ([`WindowSignal`]): operators with per-window state
    /// (the reduce family, `uniq`) act on it; the others pass it on.
    fn window(&mut self, signal: WindowSignal<'_>, out: &mut Vec<Self::Out>);

    /// The operators in this chain, in order, for `explain()`.
    fn describe(&self, names: &mut Vec<String>);

    /// Whether the chain already holds a reducer (a layer holds at most one).
    fn has_reducer(&self) -> bool {
        false
    }

    /// Whether the chain hands each batch on as it is (the empty chain): a source stage
    /// then gives the batch itself downstream and allocates no output of its own.
    fn passes_batches(&self) -> bool {
        false
    }

    /// Whether the chain does enough per event to be worth spreading over more stages
    /// than its source has readers: not the empty chain, nor one that only gathers its
    /// events into a terminal's state (`collect`, `sum`, `count`), whose per-event cost
    /// is below the cost of handing events to another stage.
    fn worth_spreading(&self) -> bool {
        !self.passes_batches()
    }

    /// An error an operator of the chain hit (a fallible operator whose policy is to
    /// fail the run); the stage checks it after each batch and ends the run with it.
    /// Operators with a `rest` forward the question to it. Required, not defaulted: an
    /// operator that forgot to forward would make a failing `try_map` after it drop
    /// events silently.
    fn failure(&mut self) -> Option<crate::error::StageError>;

    /// Letters an operator of the chain could not hand to its dead-letter consumer at once
    /// (see [`ErrorPolicy::dead_letter`](super::ErrorPolicy::dead_letter)): the stage
    /// awaits each after a batch, before it takes more input, so a slow consumer slows the
    /// stage. Operators with a `rest` forward the question to it. Required, as
    /// [`failure`](Logic::failure) is: an operator that forgot to forward would let a
    /// dead-letter step after it run ahead of its consumer without bound.
    fn side_output(&mut self) -> Option<super::SideOutput>;

    /// The partition queues of a chain that ends in routing (a source's chain before a
    /// `partition`, see [`Routed`](super::partition::Routed)); the first call makes the
    /// chain route into them instead of its output. A source stage hands them to its
    /// partition dispatcher after each production, so the iterator, the chain, the route
    /// hash and the push into a partition's queue run in one loop. Operators with a `rest`
    /// forward to it; one that does not leaves its chain unbound, which routes in the
    /// dispatcher as before (slower, never wrong).
    #[doc(hidden)]
    fn routed(&mut self) -> Option<&mut Vec<Vec<Self::Out>>> {
        None
    }
}

/// The end of every chain: passes events through.
#[derive(Debug)]
pub(crate) struct Identity<T>(PhantomData<fn(T) -> T>);

impl<T> Identity<T> {
    pub(crate) fn new() -> Self {
        Identity(PhantomData)
    }
}

impl<T> Clone for Identity<T> {
    fn clone(&self) -> Self {
        Identity(PhantomData)
    }
}

impl<T: Send + 'static> Logic for Identity<T> {
    type In = T;
    type Out = T;

    fn start(&mut self, _partition: PartitionInfo) {}

    #[inline]
    fn push(&mut self, event: T, out: &mut Vec<T>) {
        out.push(event);
    }

    fn batch(&mut self, events: &mut Vec<T>, out: &mut Vec<T>) {
        if out.is_empty() {
            // Nothing else in this output yet: hand the whole Vec over without copying
            // (`events` keeps the output's empty allocation).
            std::mem::swap(out, events);
        } else {
            out.append(events);
        }
    }

    #[inline]
    fn feed<I: Iterator<Item = T>>(&mut self, events: I, out: &mut Vec<T>) {
        out.extend(events);
    }

    fn done(&mut self, _out: &mut Vec<T>) {}

    fn window(&mut self, _signal: WindowSignal<'_>, _out: &mut Vec<T>) {}

    fn describe(&self, _names: &mut Vec<String>) {}

    fn passes_batches(&self) -> bool {
        true
    }

    fn failure(&mut self) -> Option<crate::error::StageError> {
        None
    }

    fn side_output(&mut self) -> Option<super::SideOutput> {
        None
    }
}

/// Declares a stateless operator: a struct holding its closure and the rest of the chain,
/// and the `Logic` impl that forwards `start`/`done`/`describe` to the rest.
macro_rules! stateless {
    (
        $(#[$doc:meta])*
        $name:ident<$in:ident>, $label:literal,
        where F: $bound:path $(, L: Logic<In = $lin:ty>)?,
        |$self:ident, $event:ident, $out:ident| $body:block,
        feed |$fself:ident, $events:ident, $fout:ident| $feed:block
    ) => {
        $(#[$doc])*
        pub(crate) struct $name<$in, F, L> {
            pub(crate) f: Arc<F>,
            pub(crate) rest: L,
            pub(crate) _in: PhantomData<fn($in)>,
        }

        impl<$in, F, L> $name<$in, F, L> {
            pub(crate) fn new(f: Arc<F>, rest: L) -> Self {
                $name { f, rest, _in: PhantomData }
            }
        }

        impl<$in, F, L: Clone> Clone for $name<$in, F, L> {
            fn clone(&self) -> Self {
                $name { f: self.f.clone(), rest: self.rest.clone(), _in: PhantomData }
            }
        }

        impl<$in, F, L> std::fmt::Debug for $name<$in, F, L> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($label)
            }
        }

        impl<$in, F, L> Logic for $name<$in, F, L>
        where
            $in: Send + 'static,
            F: $bound + Send + Sync,
            L: Logic $(<In = $lin>)?,
        {
            type In = $in;
            type Out = L::Out;

            fn start(&mut self, partition: PartitionInfo) {
                self.rest.start(partition);
            }

            #[inline]
            fn push(&mut $self, $event: $in, $out: &mut Vec<L::Out>) $body

            #[inline]
            fn feed<It: Iterator<Item = $in>>(&mut $fself, $events: It, $fout: &mut Vec<L::Out>) $feed

            fn done(&mut self, out: &mut Vec<L::Out>) {
                self.rest.done(out);
            }

            fn window(&mut self, signal: WindowSignal<'_>, out: &mut Vec<L::Out>) {
                self.rest.window(signal, out);
            }

            fn describe(&self, names: &mut Vec<String>) {
                names.push($label.to_string());
                self.rest.describe(names);
            }

            fn failure(&mut self) -> Option<crate::error::StageError> {
                self.rest.failure()
            }

            fn side_output(&mut self) -> Option<super::SideOutput> {
                self.rest.side_output()
            }

            fn has_reducer(&self) -> bool {
                self.rest.has_reducer()
            }

            fn routed(&mut self) -> Option<&mut Vec<Vec<L::Out>>> {
                self.rest.routed()
            }
        }
    };
}

stateless! {
    /// `map(f)`.
    Map<A>, "map", where F: Fn(A) -> L::In,
    |self, event, out| { self.rest.push((self.f)(event), out) },
    feed |self, events, out| { self.rest.feed(events.map(&*self.f), out) }
}

stateless! {
    /// `filter(p)`.
    Filter<A>, "filter", where F: Fn(&A) -> bool, L: Logic<In = A>,
    |self, event, out| {
        if (self.f)(&event) {
            self.rest.push(event, out);
        }
    },
    feed |self, events, out| { self.rest.feed(events.filter(&*self.f), out) }
}

stateless! {
    /// `reject(p)`.
    Reject<A>, "reject", where F: Fn(&A) -> bool, L: Logic<In = A>,
    |self, event, out| {
        if !(self.f)(&event) {
            self.rest.push(event, out);
        }
    },
    feed |self, events, out| {
        let f = &*self.f;
        self.rest.feed(events.filter(|event| !f(event)), out)
    }
}

stateless! {
    /// `filter_map(f)`.
    FilterMap<A>, "filter_map", where F: Fn(A) -> Option<L::In>,
    |self, event, out| {
        if let Some(mapped) = (self.f)(event) {
            self.rest.push(mapped, out);
        }
    },
    feed |self, events, out| { self.rest.feed(events.filter_map(&*self.f), out) }
}

stateless! {
    /// `inspect(f)`.
    Inspect<A>, "inspect", where F: Fn(&A), L: Logic<In = A>,
    |self, event, out| {
        (self.f)(&event);
        self.rest.push(event, out);
    },
    feed |self, events, out| { self.rest.feed(events.inspect(&*self.f), out) }
}

/// `flat_map(f)`.
pub(crate) struct FlatMap<A, F, L> {
    pub(crate) f: Arc<F>,
    pub(crate) rest: L,
    pub(crate) _in: PhantomData<fn(A)>,
}

impl<A, F, L> FlatMap<A, F, L> {
    pub(crate) fn new(f: Arc<F>, rest: L) -> Self {
        FlatMap {
            f,
            rest,
            _in: PhantomData,
        }
    }
}

impl<A, F, L: Clone> Clone for FlatMap<A, F, L> {
    fn clone(&self) -> Self {
        FlatMap {
            f: self.f.clone(),
            rest: self.rest.clone(),
            _in: PhantomData,
        }
    }
}

impl<A, F, L> std::fmt::Debug for FlatMap<A, F, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("flat_map")
    }
}

impl<A, I, F, L> Logic for FlatMap<A, F, L>
where
    A: Send + 'static,
    I: IntoIterator<Item = L::In>,
    F: Fn(A) -> I + Send + Sync,
    L: Logic,
{
    type In = A;
    type Out = L::Out;

    fn start(&mut self, partition: PartitionInfo) {
        self.rest.start(partition);
    }

    #[inline]
    fn push(&mut self, event: A, out: &mut Vec<L::Out>) {
        for item in (self.f)(event) {
            self.rest.push(item, out);
        }
    }

    #[inline]
    fn feed<It: Iterator<Item = A>>(&mut self, events: It, out: &mut Vec<L::Out>) {
        self.rest.feed(events.flat_map(&*self.f), out);
    }

    fn done(&mut self, out: &mut Vec<L::Out>) {
        self.rest.done(out);
    }

    fn window(&mut self, signal: WindowSignal<'_>, out: &mut Vec<L::Out>) {
        self.rest.window(signal, out);
    }

    fn describe(&self, names: &mut Vec<String>) {
        names.push("flat_map".to_string());
        self.rest.describe(names);
    }

    fn failure(&mut self) -> Option<crate::error::StageError> {
        self.rest.failure()
    }

    fn side_output(&mut self) -> Option<super::SideOutput> {
        self.rest.side_output()
    }

    fn has_reducer(&self) -> bool {
        self.rest.has_reducer()
    }

    fn routed(&mut self) -> Option<&mut Vec<Vec<L::Out>>> {
        self.rest.routed()
    }
}

/// `map_batch(f)`: sees each whole batch; only the first operation of a stage.
pub(crate) struct MapBatch<A, F, L> {
    pub(crate) f: Arc<F>,
    pub(crate) rest: L,
    pub(crate) _in: PhantomData<fn(A)>,
}

impl<A, F, L> MapBatch<A, F, L> {
    pub(crate) fn new(f: Arc<F>, rest: L) -> Self {
        MapBatch {
            f,
            rest,
            _in: PhantomData,
        }
    }
}

impl<A, F, L: Clone> Clone for MapBatch<A, F, L> {
    fn clone(&self) -> Self {
        MapBatch {
            f: self.f.clone(),
            rest: self.rest.clone(),
            _in: PhantomData,
        }
    }
}

impl<A, F, L> std::fmt::Debug for MapBatch<A, F, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("map_batch")
    }
}

impl<A, I, F, L> Logic for MapBatch<A, F, L>
where
    A: Send + 'static,
    I: IntoIterator<Item = L::In>,
    F: Fn(Vec<A>) -> I + Send + Sync,
    L: Logic,
{
    type In = A;
    type Out = L::Out;

    fn start(&mut self, partition: PartitionInfo) {
        self.rest.start(partition);
    }

    fn push(&mut self, event: A, out: &mut Vec<L::Out>) {
        self.batch(&mut vec![event], out);
    }

    fn batch(&mut self, events: &mut Vec<A>, out: &mut Vec<L::Out>) {
        // A source's last answer may be an empty `Finished`: that is no batch to map.
        if events.is_empty() {
            return;
        }
        // The user's function takes the batch itself.
        self.rest
            .feed((self.f)(std::mem::take(events)).into_iter(), out);
    }

    fn feed<It: Iterator<Item = A>>(&mut self, events: It, out: &mut Vec<L::Out>) {
        self.batch(&mut events.collect(), out);
    }

    fn done(&mut self, out: &mut Vec<L::Out>) {
        self.rest.done(out);
    }

    fn window(&mut self, signal: WindowSignal<'_>, out: &mut Vec<L::Out>) {
        self.rest.window(signal, out);
    }

    fn describe(&self, names: &mut Vec<String>) {
        names.push("map_batch".to_string());
        self.rest.describe(names);
    }

    fn failure(&mut self) -> Option<crate::error::StageError> {
        self.rest.failure()
    }

    fn side_output(&mut self) -> Option<super::SideOutput> {
        self.rest.side_output()
    }

    fn has_reducer(&self) -> bool {
        self.rest.has_reducer()
    }

    fn routed(&mut self) -> Option<&mut Vec<Vec<L::Out>>> {
        self.rest.routed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_runs_in_order_in_one_pass() {
        // filter(even) → +1 → ×2, built back to front as the compiler does.
        let times_two = Map::new(Arc::new(|x: u32| x * 2), Identity::new());
        let plus_one = Map::new(Arc::new(|x: u32| x + 1), times_two);
        let mut chain = Filter::new(Arc::new(|x: &u32| x % 2 == 0), plus_one);
        let mut out = Vec::new();
        chain.batch(&mut vec![1, 2, 3, 4, 5, 6], &mut out);
        assert_eq!(out, vec![6, 10, 14]);
        let mut names = Vec::new();
        chain.describe(&mut names);
        assert_eq!(names, ["filter", "map", "map"]);
    }
}
