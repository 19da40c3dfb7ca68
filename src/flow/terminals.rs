//! Terminals that reduce a flow to a value, as rayon's and `Iterator`'s: `sum`, `count`,
//! `min`/`max` (and `_by`, `_by_key`), `reduce_with`, `fold`, `for_each`, `any`, `all`,
//! `find_any`, `unzip`, `partition_into`; `collect` is one of them.
//!
//! Each runs its per-stage part in the stages of the flow's last layer (see
//! [`gather`](super::gather)) and combines one result per stage when the run has ended.
//! All block until then, so the flow's closures and iterators may borrow the caller's
//! data. Order across stages is not defined: `min`/`max` among equals, `find_any` and
//! `reduce_with` (for an operation that is not commutative) may differ between runs.

use std::cmp::Ordering;
use std::marker::PhantomData;
use std::sync::Arc;

use super::compile::{Compiler, DispatchSpec, Plan};
use super::gather::{
    Collect, Count, Extreme, FindAny, Fold, ForEach, Found, Gather, Gatherer, Product, ReduceWith,
    Split, Sum,
};
use super::logic::{Identity, Logic};
use super::{Flow, Output};
use crate::error::Result;
use crate::sink;
use crate::stage::Pipeline;

/// `fold(identity, op)`: per stage, `op` over its events from `identity()`; see
/// [`Flow::fold`].
#[derive(Debug)]
pub struct FoldNode<P, ID, F> {
    inner: P,
    identity: ID,
    op: F,
}

impl<P, Acc, ID, F> Plan for FoldNode<P, ID, F>
where
    P: Plan,
    Acc: Send + 'static,
    ID: Fn() -> Acc + Send + Sync,
    F: Fn(Acc, P::Item) -> Acc + Send + Sync,
{
    type Item = Acc;

    fn compile<'a, L>(
        self,
        compiler: &mut Compiler<'a>,
        logic: L,
        dispatch: &DispatchSpec<'a, L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        Self: 'a,
        L: Logic<In = Acc> + Clone + 'a,
    {
        let fold = Fold {
            identity: self.identity,
            op: self.op,
        };
        self.inner
            .compile(compiler, Gather::new(fold, logic), dispatch)
    }
}

/// The events of `parts` in one `Vec`, moving as few as possible: the others are
/// appended to the largest (reallocated in place when it can be), and a `Vec` collected
/// from the result's `IntoIter` takes its buffer as it is (std's in-place collect), so
/// `collect::<Vec<_>>()` copies only the smaller parts.
fn concat<T>(mut parts: Vec<Vec<T>>) -> Vec<T> {
    let Some(largest) = (0..parts.len()).max_by_key(|&i| parts[i].len()) else {
        return Vec::new();
    };
    let mut all = parts.swap_remove(largest);
    all.reserve_exact(parts.iter().map(Vec::len).sum());
    for mut part in parts {
        all.append(&mut part);
    }
    all
}

impl<P: Plan> Flow<P> {
    /// Runs the flow with `gatherer` at the end of every last-layer stage; returns what
    /// the stages gathered, one result each (or none).
    fn gather<G: Gatherer<P::Item>>(self, gatherer: G) -> Result<Vec<G::Out>> {
        self.gather_in(Pipeline::new(), gatherer)
    }

    fn gather_in<G: Gatherer<P::Item>>(
        self,
        pipeline: Pipeline,
        gatherer: G,
    ) -> Result<Vec<G::Out>> {
        let mut compiler = Compiler::new(pipeline);
        let logic = Gather::new(gatherer, Identity::new());
        let outputs = self
            .plan
            .compile(&mut compiler, logic, &DispatchSpec::demand())?;
        sink::collect(compiler.pipeline, outputs)
    }

    /// Runs the flow and collects every event into `B`, any `FromIterator`: a `Vec`, a
    /// `HashMap` of pairs, a `String` of chars, .... Each stage of the last layer gathers
    /// its events, and `B` is built from them at the end. Order across stages is not
    /// defined (one stage keeps its input's order). Blocks; works from plain `main`.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// use std::collections::HashMap;
    /// let squares: HashMap<u32, u32> = Flow::from_iter(1..=4u32).map(|x| (x, x * x)).collect()?;
    /// assert_eq!(squares[&3], 9);
    /// let mut all: Vec<u32> = Flow::from_iter(0..100u32).collect()?;
    /// all.sort();
    /// assert_eq!(all, (0..100).collect::<Vec<_>>());
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn collect<B: FromIterator<P::Item>>(self) -> Result<B> {
        let parts = self.gather(Collect)?;
        Ok(B::from_iter(concat(parts)))
    }

    /// Sums the events (as `Iterator::sum`: `S` is the sum's type).
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let total: u64 = Flow::from_iter(1..=100u64).map(|x| x * 2).sum()?;
    /// assert_eq!(total, 10_100);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn sum<S>(self) -> Result<S>
    where
        S: std::iter::Sum<P::Item> + std::iter::Sum<S> + Send + 'static,
    {
        Ok(self.gather(Sum::<S>(PhantomData))?.into_iter().sum())
    }

    /// Multiplies the events (as `Iterator::product`).
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let factorial: u64 = Flow::from_iter(1..=10u64).product()?;
    /// assert_eq!(factorial, 3_628_800);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn product<S>(self) -> Result<S>
    where
        S: std::iter::Product<P::Item> + std::iter::Product<S> + Send + 'static,
    {
        Ok(self
            .gather(Product::<S>(PhantomData))?
            .into_iter()
            .product())
    }

    /// Counts the events.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let evens = Flow::from_iter(0..1000u32).filter(|x| x % 2 == 0).count()?;
    /// assert_eq!(evens, 500);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn count(self) -> Result<usize> {
        Ok(self.gather(Count)?.into_iter().sum())
    }

    /// The least event, or `None` for no events.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// assert_eq!(Flow::from_iter([5u32, 1, 9]).min()?, Some(1));
    /// assert_eq!(Flow::from_iter(Vec::<u32>::new()).min()?, None);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn min(self) -> Result<Option<P::Item>>
    where
        P::Item: Ord,
    {
        self.min_by(Ord::cmp)
    }

    /// The greatest event, or `None` for no events.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// assert_eq!(Flow::from_iter([5u32, 1, 9]).max()?, Some(9));
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn max(self) -> Result<Option<P::Item>>
    where
        P::Item: Ord,
    {
        self.max_by(Ord::cmp)
    }

    /// The least event by `compare`.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let least = Flow::from_iter([2.5f64, -1.0, 7.0]).min_by(|a, b| a.total_cmp(b))?;
    /// assert_eq!(least, Some(-1.0));
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn min_by<C>(self, compare: C) -> Result<Option<P::Item>>
    where
        C: Fn(&P::Item, &P::Item) -> Ordering + Send + Sync,
    {
        let compare = Arc::new(compare);
        let each = compare.clone();
        let parts = self.gather(Extreme::<_, false>(move |a: &P::Item, b: &P::Item| {
            each(a, b)
        }))?;
        Ok(parts.into_iter().min_by(|a, b| compare(a, b)))
    }

    /// The greatest event by `compare`.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let longest = Flow::from_iter(["a", "abc", "ab"]).max_by(|a, b| a.len().cmp(&b.len()))?;
    /// assert_eq!(longest, Some("abc"));
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn max_by<C>(self, compare: C) -> Result<Option<P::Item>>
    where
        C: Fn(&P::Item, &P::Item) -> Ordering + Send + Sync,
    {
        let compare = Arc::new(compare);
        let each = compare.clone();
        let parts = self.gather(Extreme::<_, true>(move |a: &P::Item, b: &P::Item| {
            each(a, b)
        }))?;
        Ok(parts.into_iter().max_by(|a, b| compare(a, b)))
    }

    /// The event with the least key.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let closest = Flow::from_iter([-7i32, 3, -2, 10]).min_by_key(|x| x.abs())?;
    /// assert_eq!(closest, Some(-2));
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn min_by_key<K, F>(self, key: F) -> Result<Option<P::Item>>
    where
        K: Ord,
        F: Fn(&P::Item) -> K + Send + Sync,
    {
        self.min_by(move |a, b| key(a).cmp(&key(b)))
    }

    /// The event with the greatest key.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let farthest = Flow::from_iter([-7i32, 3, -2, 10]).max_by_key(|x| x.abs())?;
    /// assert_eq!(farthest, Some(10));
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn max_by_key<K, F>(self, key: F) -> Result<Option<P::Item>>
    where
        K: Ord,
        F: Fn(&P::Item) -> K + Send + Sync,
    {
        self.max_by(move |a, b| key(a).cmp(&key(b)))
    }

    /// Reduces the events to one with `op` (associative; applied in each stage, then over
    /// the stages' results), or `None` for no events. rayon's `reduce_with`; Flow's
    /// `reduce` is [`Flow::reduce`], the per-stage accumulator of a layer.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let longest = Flow::from_iter(["flow", "stage", "at"])
    ///     .map(str::to_owned)
    ///     .reduce_with(|a, b| if b.len() > a.len() { b } else { a })?;
    /// assert_eq!(longest.as_deref(), Some("stage"));
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn reduce_with<F>(self, op: F) -> Result<Option<P::Item>>
    where
        F: Fn(P::Item, P::Item) -> P::Item + Send + Sync,
    {
        let op = Arc::new(op);
        let each = op.clone();
        let parts = self.gather(ReduceWith(move |a, b| each(a, b)))?;
        Ok(parts.into_iter().reduce(|a, b| op(a, b)))
    }

    /// Folds each stage's events into an accumulator started by `identity()` (rayon's
    /// `fold`): a flow of one accumulator per stage of the last layer, emitted when the
    /// stage's input ends. Combine them with another terminal.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// // Per stage: the count and sum; then combined.
    /// let (n, total) = Flow::from_iter(1..=100u64)
    ///     .fold(|| (0u64, 0u64), |(n, sum), x| (n + 1, sum + x))
    ///     .reduce_with(|a, b| (a.0 + b.0, a.1 + b.1))?
    ///     .unwrap_or_default();
    /// assert_eq!((n, total), (100, 5050));
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn fold<Acc, ID, F>(self, identity: ID, op: F) -> Flow<FoldNode<P, ID, F>>
    where
        Acc: Send + 'static,
        ID: Fn() -> Acc + Send + Sync,
        F: Fn(Acc, P::Item) -> Acc + Send + Sync,
    {
        Flow {
            plan: FoldNode {
                inner: self.plan,
                identity,
                op,
            },
        }
    }

    /// Calls `op` on every event, in the stages (in parallel), for its side effects.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// let seen = AtomicU64::new(0);
    /// Flow::from_iter(1..=10u64).for_each(|x| {
    ///     seen.fetch_add(x, Ordering::Relaxed);
    /// })?;
    /// assert_eq!(seen.into_inner(), 55);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn for_each<F>(self, op: F) -> Result<()>
    where
        F: Fn(P::Item) + Send + Sync,
    {
        self.gather(ForEach(op)).map(drop)
    }

    /// Some event for which `predicate` is true, or `None`; the first found ends the
    /// search everywhere: the sources stop reading, what is in flight is skipped.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let square = Flow::from_iter(1..u64::MAX).find_any(|x| x * x > 1000)?;
    /// assert!(square.is_some_and(|x| x * x > 1000));
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn find_any<F>(self, predicate: F) -> Result<Option<P::Item>>
    where
        F: Fn(&P::Item) -> bool + Send + Sync,
    {
        let pipeline = Pipeline::new();
        let found = Found::new();
        let find = FindAny {
            predicate,
            found: found.clone(),
            shutdown: pipeline.shutdown_handle(),
        };
        self.gather_in(pipeline, find)?;
        Ok(found.take())
    }

    /// Whether `predicate` is true for some event; stops at the first (see
    /// [`find_any`](Flow::find_any)).
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// assert!(Flow::from_iter(0..1_000_000u64).any(|x| x == 999)?);
    /// assert!(!Flow::from_iter(0..100u64).any(|x| x > 100)?);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn any<F>(self, predicate: F) -> Result<bool>
    where
        F: Fn(P::Item) -> bool + Send + Sync,
    {
        Ok(self.map_any(predicate)?.is_some())
    }

    /// Whether `predicate` is true for every event; stops at the first for which it is
    /// not.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// assert!(Flow::from_iter(0..100u64).all(|x| x < 100)?);
    /// assert!(!Flow::from_iter(0..100u64).all(|x| x < 50)?);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn all<F>(self, predicate: F) -> Result<bool>
    where
        F: Fn(P::Item) -> bool + Send + Sync,
    {
        Ok(self.map_any(move |event| !predicate(event))?.is_none())
    }

    /// `any` by value: the predicate takes the event, as `Iterator::any`'s does.
    fn map_any<F>(self, predicate: F) -> Result<Option<bool>>
    where
        F: Fn(P::Item) -> bool + Send + Sync,
    {
        let pipeline = Pipeline::new();
        let found = Found::new();
        let find = FindAny {
            predicate: |hit: &bool| *hit,
            found: found.clone(),
            shutdown: pipeline.shutdown_handle(),
        };
        let mut compiler = Compiler::new(pipeline);
        let logic = super::logic::Map::new(Arc::new(predicate), Gather::new(find, Identity::new()));
        let outputs = self
            .plan
            .compile(&mut compiler, logic, &DispatchSpec::demand())?;
        let _: Vec<bool> = sink::collect(compiler.pipeline, outputs)?;
        Ok(found.take())
    }

    /// Splits `(a, b)` events into two collections (as `Iterator::unzip`).
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let (mut xs, mut squares): (Vec<u32>, Vec<u32>) =
    ///     Flow::from_iter(1..=3u32).map(|x| (x, x * x)).unzip()?;
    /// xs.sort();
    /// squares.sort();
    /// assert_eq!((xs, squares), (vec![1, 2, 3], vec![1, 4, 9]));
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn unzip<A, B, FromA, FromB>(self) -> Result<(FromA, FromB)>
    where
        P: Plan<Item = (A, B)>,
        A: Send + 'static,
        B: Send + 'static,
        FromA: Default + Extend<A>,
        FromB: Default + Extend<B>,
    {
        let parts = self.gather(Collect)?;
        let mut unzipped = (FromA::default(), FromB::default());
        unzipped.extend(concat(parts));
        Ok(unzipped)
    }

    /// Collects the events for which `predicate` is true into one collection, the others
    /// into another (rayon's and `Iterator`'s `partition`; in a flow, `partition` starts
    /// a layer).
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let (evens, odds): (Vec<u32>, Vec<u32>) =
    ///     Flow::from_iter(0..10u32).partition_into(|x| x % 2 == 0)?;
    /// assert_eq!((evens.len(), odds.len()), (5, 5));
    /// assert!(evens.iter().all(|x| x % 2 == 0));
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    #[doc(alias = "partition")]
    pub fn partition_into<B, F>(self, predicate: F) -> Result<(B, B)>
    where
        B: Default + Extend<P::Item>,
        F: Fn(&P::Item) -> bool + Send + Sync,
    {
        let parts = self.gather(Split(predicate))?;
        let (mut yes, mut no) = (B::default(), B::default());
        for (part_yes, part_no) in parts {
            yes.extend(part_yes);
            no.extend(part_no);
        }
        Ok((yes, no))
    }
}
