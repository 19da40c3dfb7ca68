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

    fn read<L: Logic<In = Self::Item>>(
        &mut self,
        n: usize,
        logic: &mut L,
        out: &mut Vec<L::Out>,
    ) -> impl Future<Output = Result<Read, StageError>> + Send;
}

/// An iterator of the stage's own: read straight into the chain.
pub(crate) struct OwnIter<I>(pub(crate) I);

impl<I> SourceRead for OwnIter<I>
where
    I: Iterator + Send,
    I::Item: Send + 'static,
{
    type Item = I::Item;

    async fn read<L: Logic<In = I::Item>>(
        &mut self,
        n: usize,
        logic: &mut L,
        out: &mut Vec<L::Out>,
    ) -> Result<Read, StageError> {
        let mut left = n;
        logic.feed(
            Upto {
                iter: &mut self.0,
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

/// The next `left` items of an iterator, folded with a plain loop (a `Take` of a
/// `&mut` iterator folds through `try_fold`, which moves a large accumulator through
/// every step).
struct Upto<'i, I> {
    iter: &'i mut I,
    /// How many more to take; what is left when the caller looks again.
    left: &'i mut usize,
}

impl<I: Iterator> Iterator for Upto<'_, I> {
    type Item = I::Item;

    #[inline]
    fn next(&mut self) -> Option<I::Item> {
        if *self.left == 0 {
            return None;
        }
        let item = self.iter.next()?;
        *self.left -= 1;
        Some(item)
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = *self.left;
        let (low, high) = self.iter.size_hint();
        (low.min(left), Some(high.map_or(left, |h| h.min(left))))
    }

    #[inline]
    fn fold<B, F: FnMut(B, I::Item) -> B>(self, init: B, mut f: F) -> B {
        let mut acc = init;
        let mut left = *self.left;
        while left > 0 {
            let Some(item) = self.iter.next() else { break };
            left -= 1;
            acc = f(acc, item);
        }
        *self.left = left;
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

impl<R, L> FusedSource<R, L> {
    pub(crate) fn new(reader: R, logic: L, shutdown: ShutdownHandle) -> Self {
        FusedSource {
            reader,
            logic,
            finished: false,
            expansion: Expansion::default(),
            shutdown,
        }
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
        loop {
            let ask = self.expansion.ask(demand);
            let before = out.len();
            let Read { read, ended } = self.reader.read(ask, &mut self.logic, &mut out).await?;
            out = settled(&mut self.logic, out).await?;
            self.expansion.record(read, out.len() - before, out.len());
            if ended {
                self.finished = true;
                self.logic.done(&mut out);
                out = settled(&mut self.logic, out).await?;
                return Ok(Produced::Finished(out));
            }
            // (A drain is seen by the stage, which then finishes the source, between two
            // productions: hand over what there is.)
            if !out.is_empty() || read == 0 || self.shutdown.is_draining() {
                return Ok(Produced::Events(out));
            }
            // All filtered out: yield before reading on, so that an endless source behind a
            // filter can neither hold a worker forever nor ignore the flow being stopped.
            // Through tokio's task budget: it yields once per 128 reads, not after each
            // (`yield_now` after each batch costs ~20 % on a cheap chain into a reducer).
            tokio::task::consume_budget().await;
        }
    }
}
