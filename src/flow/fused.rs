//! Source stages: a source's reading with the layer's stateless chain fused into it.
//!
//! A source stage reads through a [`Read`]: its own iterator (fed straight into the
//! chain, one pass, no batch in between), an iterator it shares with the other stages of
//! its layer (a batch taken under a lock, then the chain over it), or a stage-layer
//! producer (its batch, then the chain) — owned, or shared the same way. Sharing is how
//! a source with fewer readers than stages still runs its chain on every stage, as Flow's
//! `from_enumerable` feeds `stages` mapper stages.

use std::sync::{Arc, Mutex};

use super::compile::settled;
use super::logic::Logic;
use crate::error::StageError;
use crate::source::BoxedProducer;
use crate::stage::{Produced, Producer, ShutdownHandle};

/// What one read brought.
pub(crate) struct Read {
    /// Events taken from the source.
    pub(crate) read: usize,
    /// The source has ended.
    pub(crate) ended: bool,
}

/// How a source stage reads: `n` events at most, through `logic` into `out`.
pub(crate) trait SourceRead: Send {
    type Item: Send + 'static;

    /// Whether a read never waits (an iterator: it runs to the end of its batch at once).
    /// Such a stage routes straight into its dispatcher's queues, lent for the read; one
    /// whose read may wait (an async producer) routes into queues of its own, so what its
    /// dispatcher holds can still go out meanwhile.
    const NEVER_WAITS: bool = false;

    fn read<L: Logic<In = Self::Item>>(
        &mut self,
        n: usize,
        logic: &mut L,
        out: &mut Vec<L::Out>,
    ) -> impl Future<Output = Result<Read, StageError>> + Send;
}

/// An iterator of the stage's own: read straight into the chain. The iterator is held
/// in an `Option` so that a read can move it into a local for its loop: behind a
/// reference its state goes back to memory at every item (the chain's calls may, for
/// all the compiler knows, read it); as a local it stays in registers.
pub(crate) struct OwnIter<I>(Option<I>);

impl<I> OwnIter<I> {
    pub(crate) fn new(iter: I) -> Self {
        OwnIter(Some(iter))
    }
}

impl<I> SourceRead for OwnIter<I>
where
    I: Iterator + Send,
    I::Item: Send + 'static,
{
    type Item = I::Item;

    const NEVER_WAITS: bool = true;

    async fn read<L: Logic<In = I::Item>>(
        &mut self,
        n: usize,
        logic: &mut L,
        out: &mut Vec<L::Out>,
    ) -> Result<Read, StageError> {
        // Gone only when a panic in the chain unwound through an earlier read, which
        // ends the stage: never read again, but not taken for the end either.
        let Some(iter) = self.0.take() else {
            return Err("the source's iterator was lost to a panic in an earlier read".into());
        };
        let mut left = n;
        logic.feed(
            Upto {
                iter: Some(iter),
                home: &mut self.0,
                left: &mut left,
            },
            out,
        );
        // Fewer than asked: the iterator ended (or a failed chain stopped early, which
        // the stage checks next).
        Ok(Read {
            read: n - left,
            ended: left > 0,
        })
    }
}

/// The next `left` items of an iterator, folded with a plain loop over the iterator
/// moved into a local (a `Take` of a `&mut` iterator folds through `try_fold`, which
/// moves a large accumulator through every step); the iterator goes back `home` after.
struct Upto<'i, I> {
    iter: Option<I>,
    home: &'i mut Option<I>,
    /// How many more to take; what is left when the caller looks again.
    left: &'i mut usize,
}

impl<I> Drop for Upto<'_, I> {
    fn drop(&mut self) {
        if let Some(iter) = self.iter.take() {
            *self.home = Some(iter);
        }
    }
}

impl<I: Iterator> Iterator for Upto<'_, I> {
    type Item = I::Item;

    #[inline]
    fn next(&mut self) -> Option<I::Item> {
        if *self.left == 0 {
            return None;
        }
        let item = self.iter.as_mut()?.next()?;
        *self.left -= 1;
        Some(item)
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = *self.left;
        let (low, high) = self.iter.as_ref().map_or((0, Some(0)), Iterator::size_hint);
        (low.min(left), Some(high.map_or(left, |h| h.min(left))))
    }

    #[inline]
    fn fold<B, F: FnMut(B, I::Item) -> B>(mut self, init: B, mut f: F) -> B {
        let mut acc = init;
        let Some(mut iter) = self.iter.take() else {
            return acc;
        };
        let mut left = *self.left;
        while left > 0 {
            let Some(item) = iter.next() else { break };
            left -= 1;
            acc = f(acc, item);
        }
        *self.left = left;
        *self.home = Some(iter);
        acc
    }
}

/// An iterator shared by several stages: each takes a batch under the lock, then runs
/// its chain over it unlocked.
pub(crate) struct SharedIter<I: Iterator> {
    pub(crate) iter: Arc<Mutex<std::iter::Fuse<I>>>,
    /// The batch taken (kept for its allocation).
    pub(crate) batch: Vec<I::Item>,
}

impl<I> SharedIter<I>
where
    I: Iterator,
{
    pub(crate) fn new(iter: Arc<Mutex<std::iter::Fuse<I>>>) -> Self {
        SharedIter {
            iter,
            batch: Vec::new(),
        }
    }
}

impl<I> SourceRead for SharedIter<I>
where
    I: Iterator + Send,
    I::Item: Send + 'static,
{
    type Item = I::Item;

    const NEVER_WAITS: bool = true;

    async fn read<L: Logic<In = I::Item>>(
        &mut self,
        n: usize,
        logic: &mut L,
        out: &mut Vec<L::Out>,
    ) -> Result<Read, StageError> {
        self.batch.clear();
        self.batch.reserve(n);
        {
            // A poisoned lock means another stage's read panicked in the user's
            // iterator: that stage fails the run, and the iterator, left mid-`next`, is
            // read no more (this stage ends; the run's error is the panic).
            let Ok(mut iter) = self.iter.lock() else {
                return Ok(Read {
                    read: 0,
                    ended: true,
                });
            };
            self.batch.extend(iter.by_ref().take(n));
        }
        let read = self.batch.len();
        logic.batch(&mut self.batch, out);
        Ok(Read {
            read,
            ended: read < n,
        })
    }
}

/// A stage-layer producer: its batches through the chain.
pub(crate) struct OwnProducer<P>(pub(crate) P);

impl<P: Producer> SourceRead for OwnProducer<P> {
    type Item = P::Item;

    async fn read<L: Logic<In = P::Item>>(
        &mut self,
        n: usize,
        logic: &mut L,
        out: &mut Vec<L::Out>,
    ) -> Result<Read, StageError> {
        let (mut events, ended) = match self.0.handle_demand(n).await? {
            Produced::Events(events) => (events, false),
            Produced::Finished(events) => (events, true),
        };
        let read = events.len();
        logic.batch(&mut events, out);
        Ok(Read { read, ended })
    }
}

/// A stage-layer producer shared by several stages: one asks it at a time.
pub(crate) struct SharedProducer<T> {
    pub(crate) shared: Arc<tokio::sync::Mutex<(BoxedProducer<T>, bool)>>,
}

impl<T: Send + 'static> SourceRead for SharedProducer<T> {
    type Item = T;

    async fn read<L: Logic<In = T>>(
        &mut self,
        n: usize,
        logic: &mut L,
        out: &mut Vec<L::Out>,
    ) -> Result<Read, StageError> {
        let (mut events, ended) = {
            let mut shared = self.shared.lock().await;
            let (producer, finished) = &mut *shared;
            if *finished {
                (Vec::new(), true)
            } else {
                // Finished until it answers with events: a producer that failed or
                // panicked is asked no more, and the stage that met the fault is the one
                // whose error ends the run (the others end as at the producer's end).
                *finished = true;
                match producer.handle_demand(n).await? {
                    Produced::Events(events) => {
                        *finished = false;
                        (events, false)
                    }
                    Produced::Finished(events) => (events, true),
                }
            }
        };
        let read = events.len();
        logic.batch(&mut events, out);
        Ok(Read { read, ended })
    }
}

/// What a source stage's chain made of what it read so far, to size its next read.
#[derive(Debug, Default)]
struct Expansion {
    read: u64,
    made: u64,
    /// The size of the last output, to allocate the next one at once.
    out_hint: usize,
}

impl Expansion {
    /// How many events to read for `demand` events out: as many when nothing came out
    /// yet (or the chain filters), fewer when the chain expands (`flat_map`), so that the
    /// output stays near the demand instead of waiting in dispatcher queues.
    fn ask(&self, demand: usize) -> usize {
        if demand == 0 || self.made <= self.read {
            return demand;
        }
        let scaled = (demand as u128 * self.read as u128).div_ceil(self.made as u128);
        (scaled as usize).clamp(1, demand)
    }

    /// The capacity of the next output: what the last one held, and at least the demand
    /// unless the chain ends in a reducer (which emits at its triggers).
    fn capacity<L: Logic>(&self, demand: usize, logic: &L) -> usize {
        if logic.has_reducer() {
            self.out_hint
        } else {
            self.out_hint.max(demand)
        }
    }

    fn record(&mut self, read: usize, made: usize, out_len: usize) {
        self.read += read as u64;
        self.made += made as u64;
        self.out_hint = out_len;
    }
}

/// A source stage: its reading, and the layer's chain fused into it.
pub(crate) struct FusedSource<R, L> {
    reader: R,
    logic: L,
    finished: bool,
    expansion: Expansion,
    /// The run's drain (`find_any` found, `take` has enough): a chain that keeps
    /// everything to itself (a filter, a terminal) must stop reading when it is asked.
    shutdown: ShutdownHandle,
}

impl<R, L: Logic> FusedSource<R, L> {
    pub(crate) fn new(reader: R, mut logic: L, shutdown: ShutdownHandle) -> Self {
        // A chain that ends in routing (a `partition` after the source) routes into its
        // queues from now on, which the runtime takes after each production: the reading,
        // the chain and the routing run in one loop (see `Logic::routed`).
        let _ = logic.routed();
        FusedSource {
            reader,
            logic,
            finished: false,
            expansion: Expansion::default(),
            shutdown,
        }
    }

    /// How many events the chain has made and not handed over yet: in `out`, or routed
    /// into its partition queues.
    fn made(&mut self, out: &[L::Out]) -> usize {
        let routed = self
            .logic
            .routed()
            .map_or(0, |queues| queues.iter().map(Vec::len).sum());
        out.len() + routed
    }
}

impl<R, L> Producer for FusedSource<R, L>
where
    R: SourceRead,
    L: Logic<In = R::Item>,
{
    type Item = L::Out;

    async fn handle_demand(
        &mut self,
        demand: usize,
    ) -> std::result::Result<Produced<L::Out>, StageError> {
        if self.finished {
            return Ok(Produced::Finished(Vec::new()));
        }
        // (An empty chain hands the read batch itself on: nothing to allocate.)
        let mut out = if self.logic.passes_batches() {
            Vec::new()
        } else {
            Vec::with_capacity(self.expansion.capacity(demand, &self.logic))
        };
        // Keep reading while the chain filters everything out, so a selective filter
        // does not look like an idle source (which would wait for the retry interval).
        // (Queues lent by the dispatcher may hold events already: count from here.)
        let start = self.made(&out);
        loop {
            let ask = self.expansion.ask(demand);
            let before = self.made(&out);
            let Read { read, ended } = self.reader.read(ask, &mut self.logic, &mut out).await?;
            out = settled(&mut self.logic, out).await?;
            let made = self.made(&out);
            self.expansion.record(read, made - before, out.len());
            if ended {
                self.finished = true;
                self.logic.done(&mut out);
                out = settled(&mut self.logic, out).await?;
                return Ok(Produced::Finished(out));
            }
            // (A drain is seen by the stage, which then finishes the source, between two
            // productions: hand over what there is.)
            if made > start || read == 0 || self.shutdown.is_draining() {
                return Ok(Produced::Events(out));
            }
            // All filtered out: yield before reading on, so that an endless source behind a
            // filter can neither hold a worker forever nor ignore the flow being stopped.
            // Through tokio's task budget: it yields once per 128 reads, not after each
            // (`yield_now` after each batch costs ~20 % on a cheap chain into a reducer).
            tokio::task::consume_budget().await;
        }
    }

    fn routed(&mut self) -> Option<&mut Vec<Vec<L::Out>>> {
        self.logic.routed()
    }

    fn routes_without_waiting(&self) -> bool {
        R::NEVER_WAITS
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    use super::*;
    use crate::flow::logic::{FlatMap, Identity, Map};
    use crate::flow::partition::{HashEvent, Route, Routed};

    /// A source stage over `iter` running `logic`.
    fn source<I, L>(iter: I, logic: L) -> FusedSource<OwnIter<I>, L>
    where
        I: Iterator + Send,
        I::Item: Send + 'static,
        L: Logic<In = I::Item>,
    {
        FusedSource::new(OwnIter::new(iter), logic, ShutdownHandle::new())
    }

    fn produce<P: Producer>(producer: &mut P, demand: usize) -> Vec<P::Item> {
        match futures::executor::block_on(producer.handle_demand(demand)) {
            Ok(Produced::Events(events) | Produced::Finished(events)) => events,
            Err(error) => panic!("the production failed: {error}"),
        }
    }

    /// Takes what a producer routed, as its dispatcher would.
    fn take_routed<P: Producer>(producer: &mut P) -> Vec<Vec<P::Item>> {
        let routed = producer.routed().expect("a chain ending in routing");
        routed.iter_mut().map(std::mem::take).collect()
    }

    #[test]
    fn a_chain_ending_in_routing_routes_in_the_source_loop() {
        let route = Arc::new(HashEvent);
        let tail = Routed::new(route.clone(), 3);
        let mut stage = source(0..1000u64, Map::new(Arc::new(|x: u64| x * 7), tail));
        // Everything is routed into the queues; nothing is returned for the dispatcher to
        // route again.
        assert!(produce(&mut stage, 400).is_empty());
        let queues = take_routed(&mut stage);
        assert_eq!(queues.iter().map(Vec::len).sum::<usize>(), 400);
        for (p, queue) in queues.iter().enumerate() {
            for x in queue {
                assert_eq!(route.route(x, 3), Some(p), "{x} in queue {p}");
            }
        }
        let mut seen: Vec<u64> = queues.into_iter().flatten().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..400).map(|x| x * 7).collect::<Vec<_>>());
        // The taken queues leave empty ones behind for the next production.
        assert!(produce(&mut stage, 100).is_empty());
        assert_eq!(
            take_routed(&mut stage).iter().map(Vec::len).sum::<usize>(),
            100
        );
    }

    #[test]
    fn a_chain_without_routing_returns_its_events() {
        let mut stage = source(0..10u64, Identity::new());
        assert!(stage.routed().is_none());
        assert_eq!(produce(&mut stage, 4), [0, 1, 2, 3]);
    }

    /// An iterator that counts what was taken from it.
    struct Counted<I> {
        iter: I,
        taken: Arc<AtomicUsize>,
    }

    impl<I: Iterator> Iterator for Counted<I> {
        type Item = I::Item;
        fn next(&mut self) -> Option<I::Item> {
            let item = self.iter.next()?;
            self.taken.fetch_add(1, Relaxed);
            Some(item)
        }
    }

    /// `0..1 000 000`, counting what is taken, and the count.
    fn counted() -> (Counted<std::ops::Range<u64>>, Arc<AtomicUsize>) {
        let taken = Arc::new(AtomicUsize::new(0));
        let iter = Counted {
            iter: 0..1_000_000u64,
            taken: taken.clone(),
        };
        (iter, taken)
    }

    #[test]
    fn an_expanding_chain_into_routing_reads_for_the_demand_not_beyond() {
        // Each input makes 100 events: after the first production the stage knows, and
        // reads about a hundredth of the demand — as it does when it returns its events.
        let (iter, taken) = counted();
        let tail = Routed::new(Arc::new(HashEvent), 2);
        let chain = FlatMap::new(Arc::new(|x: u64| (0..100).map(move |i| x * 100 + i)), tail);
        let mut stage = source(iter, chain);
        produce(&mut stage, 1000);
        take_routed(&mut stage);
        let first = taken.load(Relaxed);
        produce(&mut stage, 1000);
        let made: usize = take_routed(&mut stage).iter().map(Vec::len).sum();
        let read = taken.load(Relaxed) - first;
        assert!(read <= 10, "read {read} inputs for a demand of 1000");
        assert!(
            (900..=1100).contains(&made),
            "made {made} for a demand of 1000"
        );
    }

    #[test]
    fn a_routed_production_that_filters_returns_once_it_made_something() {
        // The stage reads on while its chain filters everything out, and stops as soon
        // as something was routed (not when its output, always empty here, fills).
        let (iter, taken) = counted();
        let tail = Routed::new(Arc::new(HashEvent), 2);
        let chain = crate::flow::logic::Filter::new(Arc::new(|x: &u64| x % 50 == 49), tail);
        let mut stage = source(iter, chain);
        produce(&mut stage, 10);
        assert_eq!(
            take_routed(&mut stage).iter().map(Vec::len).sum::<usize>(),
            1
        );
        assert_eq!(
            taken.load(Relaxed),
            50,
            "read on until the first event passed, no further"
        );
    }

    #[test]
    fn an_own_iterator_goes_on_where_the_last_read_stopped() {
        // Each read moves the iterator into its loop and back: the next read continues.
        let mut stage = source(0..10u64, Identity::new());
        assert_eq!(produce(&mut stage, 4), [0, 1, 2, 3]);
        assert_eq!(produce(&mut stage, 4), [4, 5, 6, 7]);
        assert_eq!(produce(&mut stage, 4), [8, 9]);
    }

    #[test]
    fn a_read_after_a_panic_in_the_chain_fails_instead_of_ending_the_source() {
        // Into a routing tail: the chain folds over the iterator moved into its loop.
        let chain = Map::new(
            Arc::new(|x: u64| if x == 3 { panic!("boom") } else { x }),
            Routed::new(Arc::new(HashEvent), 2),
        );
        let mut stage = source(0..10u64, chain);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            futures::executor::block_on(stage.handle_demand(8))
        }));
        assert!(panicked.is_err(), "the chain panicked");
        // The iterator unwound with the loop: the stage must not look finished (that
        // would end the flow with events silently missing).
        match futures::executor::block_on(stage.handle_demand(8)) {
            Err(error) => assert!(error.to_string().contains("lost to a panic"), "{error}"),
            Ok(_) => panic!("a read after the panic must fail"),
        }
    }
}
