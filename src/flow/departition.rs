//! `departition` and `take_sort`: one merging stage after a partitioned layer.

use std::cmp::Ordering;
use std::marker::PhantomData;
use std::sync::Arc;

use super::compile::{Compiler, DispatchSpec, Output, Plan};
use super::logic::{Identity, Logic, PartitionInfo};
use super::plan::layer;
use crate::error::Result;
use crate::stage::DEFAULT_MAX_DEMAND;

/// Merges everything the partitions emit into one accumulator; at `Done` emits
/// `done(acc)`.
pub(crate) struct Departition<T, Acc, I, M, D, L> {
    init: Arc<I>,
    merge: Arc<M>,
    done: Arc<D>,
    acc: Option<Acc>,
    rest: L,
    _in: PhantomData<fn(T)>,
}

impl<T, Acc, I, M, D, L: Clone> Clone for Departition<T, Acc, I, M, D, L> {
    fn clone(&self) -> Self {
        Departition {
            init: self.init.clone(),
            merge: self.merge.clone(),
            done: self.done.clone(),
            acc: None,
            rest: self.rest.clone(),
            _in: PhantomData,
        }
    }
}

impl<T, Acc, U, I, M, D, L> Logic for Departition<T, Acc, I, M, D, L>
where
    T: Send + 'static,
    Acc: Send + 'static,
    I: Fn() -> Acc + Send + Sync + 'static,
    M: Fn(T, Acc) -> Acc + Send + Sync + 'static,
    D: Fn(Acc) -> U + Send + Sync + 'static,
    L: Logic<In = U>,
{
    type In = T;
    type Out = L::Out;

    fn start(&mut self, partition: PartitionInfo) {
        self.acc = Some((self.init)());
        self.rest.start(partition);
    }

    #[inline]
    fn push(&mut self, event: T, _out: &mut Vec<L::Out>) {
        let acc = self.acc.take().unwrap_or_else(|| (self.init)());
        self.acc = Some((self.merge)(event, acc));
    }

    #[inline]
    fn feed<It: Iterator<Item = T>>(&mut self, events: It, _out: &mut Vec<L::Out>) {
        let acc = self.acc.take().unwrap_or_else(|| (self.init)());
        let merge = &*self.merge;
        self.acc = Some(events.fold(acc, |acc, event| merge(event, acc)));
    }

    fn done(&mut self, out: &mut Vec<L::Out>) {
        let acc = self.acc.take().unwrap_or_else(|| (self.init)());
        self.rest.push((self.done)(acc), out);
        self.rest.done(out);
    }

    fn describe(&self, names: &mut Vec<String>) {
        names.push("departition".to_string());
        self.rest.describe(names);
    }

    fn failure(&mut self) -> Option<crate::error::StageError> {
        self.rest.failure()
    }

    fn has_reducer(&self) -> bool {
        true
    }
}

/// The plan node of `departition`.
pub struct DepartitionNode<P, I, M, D> {
    pub(crate) inner: P,
    pub(crate) init: Arc<I>,
    pub(crate) merge: Arc<M>,
    pub(crate) done: Arc<D>,
}

impl<P, I, M, D> std::fmt::Debug for DepartitionNode<P, I, M, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DepartitionNode")
    }
}

impl<P, Acc, U, I, M, D> Plan for DepartitionNode<P, I, M, D>
where
    P: Plan,
    Acc: Send + 'static,
    U: Send + 'static,
    I: Fn() -> Acc + Send + Sync + 'static,
    M: Fn(P::Item, Acc) -> Acc + Send + Sync + 'static,
    D: Fn(Acc) -> U + Send + Sync + 'static,
{
    type Item = U;

    fn compile<L>(
        self,
        compiler: &mut Compiler,
        logic: L,
        dispatch: &DispatchSpec<L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        L: Logic<In = U> + Clone,
    {
        let upstream = self
            .inner
            .compile(compiler, Identity::new(), &DispatchSpec::demand())?;
        let merge = Departition {
            init: self.init,
            merge: self.merge,
            done: self.done,
            acc: None,
            rest: logic,
            _in: PhantomData,
        };
        one_stage(compiler, "departition", upstream, merge, dispatch)
    }
}

fn one_stage<T, L>(
    compiler: &mut Compiler,
    label: &str,
    upstream: Vec<Output<T>>,
    logic: L,
    dispatch: &DispatchSpec<L::Out>,
) -> Result<Vec<Output<L::Out>>>
where
    T: Send + 'static,
    L: Logic<In = T> + Clone,
{
    layer(
        compiler,
        label,
        upstream,
        1,
        DEFAULT_MAX_DEMAND,
        DEFAULT_MAX_DEMAND / 2,
        logic,
        dispatch,
    )
}

/// Keeps the `n` smallest events by `cmp`; at `Done` emits them sorted, as one `Vec`.
pub(crate) struct TopN<T, C, L> {
    n: usize,
    cmp: Arc<C>,
    kept: Vec<T>,
    rest: L,
}

impl<T, C, L: Clone> Clone for TopN<T, C, L> {
    fn clone(&self) -> Self {
        TopN {
            n: self.n,
            cmp: self.cmp.clone(),
            kept: Vec::new(),
            rest: self.rest.clone(),
        }
    }
}

impl<T, C, L> TopN<T, C, L>
where
    C: Fn(&T, &T) -> Ordering,
{
    /// Cuts `kept` to the `n` smallest, amortised: only once it has doubled.
    fn trim(&mut self) {
        if self.n == 0 {
            self.kept.clear();
        } else if self.kept.len() > self.n {
            let cmp = &*self.cmp;
            self.kept
                .select_nth_unstable_by(self.n - 1, |a, b| cmp(a, b));
            self.kept.truncate(self.n);
        }
    }
}

impl<T, C, L> Logic for TopN<T, C, L>
where
    T: Send + 'static,
    C: Fn(&T, &T) -> Ordering + Send + Sync + 'static,
    L: Logic<In = Vec<T>>,
{
    type In = T;
    type Out = L::Out;

    fn start(&mut self, partition: PartitionInfo) {
        self.rest.start(partition);
    }

    #[inline]
    fn push(&mut self, event: T, _out: &mut Vec<L::Out>) {
        self.kept.push(event);
        if self.kept.len() >= 2 * self.n.max(512) {
            self.trim();
        }
    }

    fn done(&mut self, out: &mut Vec<L::Out>) {
        self.trim();
        let cmp = &*self.cmp;
        // A stable sort keeps equal events in arrival order.
        self.kept.sort_by(|a, b| cmp(a, b));
        self.rest.push(std::mem::take(&mut self.kept), out);
        self.rest.done(out);
    }

    fn describe(&self, names: &mut Vec<String>) {
        names.push(format!("take_sort({})", self.n));
        self.rest.describe(names);
    }

    fn failure(&mut self) -> Option<crate::error::StageError> {
        self.rest.failure()
    }

    fn has_reducer(&self) -> bool {
        true
    }
}

/// The plan node of `take_sort`: top `n` per partition, then one merging stage.
pub struct TakeSortNode<P, C> {
    pub(crate) inner: P,
    pub(crate) n: usize,
    pub(crate) cmp: Arc<C>,
}

impl<P, C> std::fmt::Debug for TakeSortNode<P, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TakeSortNode").field("n", &self.n).finish()
    }
}

impl<P, C> Plan for TakeSortNode<P, C>
where
    P: Plan,
    C: Fn(&P::Item, &P::Item) -> Ordering + Send + Sync + 'static,
{
    type Item = Vec<P::Item>;

    fn compile<L>(
        self,
        compiler: &mut Compiler,
        logic: L,
        dispatch: &DispatchSpec<L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        L: Logic<In = Vec<P::Item>> + Clone,
    {
        let per_partition = TopN {
            n: self.n,
            cmp: self.cmp.clone(),
            kept: Vec::new(),
            rest: Identity::new(),
        };
        let upstream = self
            .inner
            .compile(compiler, per_partition, &DispatchSpec::demand())?;
        // The merging stage takes each partition's sorted list and keeps the top n of all.
        let merge = FlattenTopN(TopN {
            n: self.n,
            cmp: self.cmp,
            kept: Vec::new(),
            rest: logic,
        });
        one_stage(compiler, "take_sort", upstream, merge, dispatch)
    }
}

/// [`TopN`] fed with lists instead of single events.
pub(crate) struct FlattenTopN<T, C, L>(TopN<T, C, L>);

impl<T, C, L: Clone> Clone for FlattenTopN<T, C, L> {
    fn clone(&self) -> Self {
        FlattenTopN(self.0.clone())
    }
}

impl<T, C, L> Logic for FlattenTopN<T, C, L>
where
    T: Send + 'static,
    C: Fn(&T, &T) -> Ordering + Send + Sync + 'static,
    L: Logic<In = Vec<T>>,
{
    type In = Vec<T>;
    type Out = L::Out;

    fn start(&mut self, partition: PartitionInfo) {
        self.0.start(partition);
    }

    fn push(&mut self, events: Vec<T>, out: &mut Vec<L::Out>) {
        for event in events {
            self.0.push(event, out);
        }
    }

    fn done(&mut self, out: &mut Vec<L::Out>) {
        self.0.done(out);
    }

    fn describe(&self, names: &mut Vec<String>) {
        self.0.describe(names);
    }

    fn failure(&mut self) -> Option<crate::error::StageError> {
        self.0.failure()
    }

    fn has_reducer(&self) -> bool {
        true
    }
}
