//! `departition` and `take_sort`: one merging stage after a partitioned layer, per window.
//!
//! The partitioned layer's chain ends in [`Tag`], which labels everything the layer emits
//! with its window and sends a [`Tagged::Closed`] mark when a window fires `Done`. The
//! merging stage keeps one state per window and finishes a window once every partition
//! has closed it — so it works on unbounded flows too (periodic windows).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use itertools::Itertools;

use super::compile::{Compiler, DispatchSpec, Output, Plan};
use super::logic::{Logic, PartitionInfo};
use super::plan::layer;
use crate::error::Result;
use crate::stage::DEFAULT_MAX_DEMAND;
use crate::window::{Ends, Slots, Trigger, TriggerName, WindowInfo, WindowSignal};

/// What a partitioned layer sends to a merging stage.
#[derive(Debug)]
pub(crate) enum Tagged<T> {
    /// An event emitted in window `id`.
    Event(i64, T),
    /// A partition fired `Done` for this window.
    Closed(WindowInfo),
}

/// The end of a partitioned layer's chain before a merging stage: tags events with their
/// window.
pub(crate) struct Tag<T> {
    window: WindowInfo,
    ends: Ends,
    _in: PhantomData<fn(T)>,
}

impl<T> Tag<T> {
    pub(crate) fn new() -> Self {
        Tag {
            window: WindowInfo::global(),
            ends: Ends::default(),
            _in: PhantomData,
        }
    }
}

impl<T> Clone for Tag<T> {
    fn clone(&self) -> Self {
        Tag::new()
    }
}

impl<T: Send + 'static> Logic for Tag<T> {
    type In = T;
    type Out = Tagged<T>;

    fn start(&mut self, _partition: PartitionInfo) {}

    #[inline]
    fn push(&mut self, event: T, out: &mut Vec<Tagged<T>>) {
        out.push(Tagged::Event(self.window.id, event));
    }

    #[inline]
    fn feed<I: Iterator<Item = T>>(&mut self, events: I, out: &mut Vec<Tagged<T>>) {
        let id = self.window.id;
        out.extend(events.map(|event| Tagged::Event(id, event)));
    }

    fn done(&mut self, out: &mut Vec<Tagged<T>>) {
        // A layer without a reduce fires no trigger: its one (global) window ends here.
        for end in self.ends.leftover(Vec::new()) {
            out.push(Tagged::Closed(end.window));
        }
    }

    fn window(&mut self, signal: WindowSignal<'_>, out: &mut Vec<Tagged<T>>) {
        self.ends.observe(&signal);
        match signal {
            WindowSignal::Enter(window) => self.window = window.clone(),
            WindowSignal::Fire(trigger) if trigger.is_done() => {
                out.push(Tagged::Closed(trigger.window.clone()));
            }
            WindowSignal::Start | WindowSignal::Fire(_) => {}
        }
    }

    fn describe(&self, _names: &mut Vec<String>) {}

    fn failure(&mut self) -> Option<crate::error::StageError> {
        None
    }

    fn side_output(&mut self) -> Option<super::SideOutput> {
        None
    }
}

/// The bookkeeping of a merging stage: which partitions closed which window.
#[derive(Debug)]
struct Closing {
    partitions: usize,
    closed: BTreeMap<i64, (WindowInfo, usize)>,
    ends: Ends,
}

impl Closing {
    fn new(partitions: usize) -> Self {
        Closing {
            partitions,
            closed: BTreeMap::new(),
            ends: Ends::default(),
        }
    }

    /// A partition closed `window`; says whether every partition has.
    fn close(&mut self, window: &WindowInfo) -> bool {
        let id = window.id;
        let entry = self.closed.entry(id).or_insert((window.clone(), 0));
        entry.1 += 1;
        if entry.1 >= self.partitions {
            self.closed.remove(&id);
            self.ends.observe_trigger(&Trigger {
                window: window.clone(),
                name: TriggerName::Done,
            });
            true
        } else {
            false
        }
    }

    /// The windows still unfinished at the end of input, oldest first: those some
    /// partitions closed and those with state (`ids`); the global window if nothing was
    /// ever finished.
    fn leftover(&mut self, ids: Vec<i64>) -> Vec<WindowInfo> {
        let closed = std::mem::take(&mut self.closed);
        let mut ids: Vec<i64> = closed.keys().copied().chain(ids).collect();
        ids.sort_unstable();
        ids.dedup();
        self.ends
            .leftover(ids)
            .into_iter()
            .map(|end| match closed.get(&end.window.id) {
                Some((window, _)) => window.clone(),
                None => end.window,
            })
            .collect()
    }
}

/// Emits `event` for `window` down `rest`, as the window's `Done`.
fn emit_done<L: Logic>(rest: &mut L, window: WindowInfo, event: L::In, out: &mut Vec<L::Out>) {
    let trigger = Trigger {
        window,
        name: TriggerName::Done,
    };
    rest.window(WindowSignal::Enter(&trigger.window), out);
    rest.push(event, out);
    rest.window(WindowSignal::Fire(&trigger), out);
}

/// Merges everything the partitions emit for a window into one accumulator; once all of
/// them closed the window, emits `done(acc)`.
pub(crate) struct Departition<T, Acc, I, M, D, L> {
    init: Arc<I>,
    merge: Arc<M>,
    done: Arc<D>,
    accs: Slots<Acc>,
    closing: Closing,
    rest: L,
    _in: PhantomData<fn(T)>,
}

impl<T, Acc, I, M, D, L: Clone> Clone for Departition<T, Acc, I, M, D, L> {
    fn clone(&self) -> Self {
        Departition {
            init: self.init.clone(),
            merge: self.merge.clone(),
            done: self.done.clone(),
            accs: Slots::default(),
            closing: Closing::new(self.closing.partitions),
            rest: self.rest.clone(),
            _in: PhantomData,
        }
    }
}

impl<T, Acc, I, M, D, L> Departition<T, Acc, I, M, D, L> {
    /// The same merging logic, waiting for `partitions` closes per window.
    pub(crate) fn expecting(mut self, partitions: usize) -> Self {
        self.closing = Closing::new(partitions);
        self
    }
}

impl<T, Acc, U, I, M, D, L> Departition<T, Acc, I, M, D, L>
where
    I: Fn() -> Acc,
    D: Fn(Acc, &WindowInfo) -> U,
    L: Logic<In = U>,
{
    fn finish(&mut self, window: WindowInfo, out: &mut Vec<L::Out>) {
        let acc = self.accs.take(window.id).unwrap_or_else(|| (self.init)());
        let done = (self.done)(acc, &window);
        emit_done(&mut self.rest, window, done, out);
    }
}

impl<T, Acc, U, I, M, D, L> Logic for Departition<T, Acc, I, M, D, L>
where
    T: Send + 'static,
    Acc: Send,
    I: Fn() -> Acc + Send + Sync,
    M: Fn(T, Acc) -> Acc + Send + Sync,
    D: Fn(Acc, &WindowInfo) -> U + Send + Sync,
    L: Logic<In = U>,
{
    type In = Tagged<T>;
    type Out = L::Out;

    fn start(&mut self, partition: PartitionInfo) {
        self.rest.start(partition);
    }

    #[inline]
    fn push(&mut self, event: Tagged<T>, out: &mut Vec<L::Out>) {
        match event {
            Tagged::Event(id, event) => {
                self.accs.enter(id);
                let acc = self.accs.take_current().unwrap_or_else(|| (self.init)());
                self.accs.put_current((self.merge)(event, acc));
            }
            Tagged::Closed(window) => {
                if self.closing.close(&window) {
                    self.finish(window, out);
                }
            }
        }
    }

    fn done(&mut self, out: &mut Vec<L::Out>) {
        for window in self.closing.leftover(self.accs.ids()) {
            self.finish(window, out);
        }
        self.rest.done(out);
    }

    fn window(&mut self, signal: WindowSignal<'_>, out: &mut Vec<L::Out>) {
        self.rest.window(signal, out);
    }

    fn describe(&self, names: &mut Vec<String>) {
        names.push("departition".to_string());
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

impl<P, Acc, I, M, D> DepartitionNode<P, I, M, D>
where
    P: Plan,
    I: Fn() -> Acc,
{
    /// The node's parts, for either backend: its input, the end of the partitions'
    /// chains (a [`Tag`]), and the merging logic before `rest` (to be told how many
    /// partitions feed it, [`Departition::expecting`]).
    #[allow(clippy::type_complexity)]
    pub(crate) fn into_parts<L>(
        self,
        rest: L,
    ) -> (P, Tag<P::Item>, Departition<P::Item, Acc, I, M, D, L>) {
        let merge = Departition {
            init: self.init,
            merge: self.merge,
            done: self.done,
            accs: Slots::default(),
            closing: Closing::new(0),
            rest,
            _in: PhantomData,
        };
        (self.inner, Tag::new(), merge)
    }
}

impl<P, Acc, U, I, M, D> Plan for DepartitionNode<P, I, M, D>
where
    P: Plan,
    Acc: Send + 'static,
    U: Send + 'static,
    I: Fn() -> Acc + Send + Sync,
    M: Fn(P::Item, Acc) -> Acc + Send + Sync,
    D: Fn(Acc, &WindowInfo) -> U + Send + Sync,
{
    type Item = U;

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
        let (inner, tag, merge) = self.into_parts(logic);
        let upstream = inner.compile(compiler, tag, &DispatchSpec::demand())?;
        let merge = merge.expecting(upstream.len());
        one_stage(compiler, "departition", upstream, merge, dispatch)
    }
}

fn one_stage<'a, T, L>(
    compiler: &mut Compiler<'a>,
    label: &str,
    upstream: Vec<Output<T>>,
    logic: L,
    dispatch: &DispatchSpec<'a, L::Out>,
) -> Result<Vec<Output<L::Out>>>
where
    T: Send + 'static,
    L: Logic<In = T> + Clone + 'a,
{
    layer(
        compiler,
        label,
        upstream,
        1,
        DEFAULT_MAX_DEMAND,
        DEFAULT_MAX_DEMAND / 2,
        None,
        logic,
        dispatch,
    )
}

/// The `n` smallest events by `cmp`, kept with amortised trimming.
struct Smallest<T, C> {
    n: usize,
    cmp: Arc<C>,
    _t: PhantomData<fn(T)>,
}

impl<T, C> Clone for Smallest<T, C> {
    fn clone(&self) -> Self {
        Smallest {
            n: self.n,
            cmp: self.cmp.clone(),
            _t: PhantomData,
        }
    }
}

impl<T, C: Fn(&T, &T) -> Ordering> Smallest<T, C> {
    fn push(&self, kept: &mut Vec<T>, event: T) {
        kept.push(event);
        if kept.len() >= 2 * self.n.max(512) {
            self.trim(kept);
        }
    }

    /// Cuts `kept` to the `n` smallest.
    fn trim(&self, kept: &mut Vec<T>) {
        if self.n == 0 {
            kept.clear();
        } else if kept.len() > self.n {
            let cmp = &*self.cmp;
            kept.select_nth_unstable_by(self.n - 1, |a, b| cmp(a, b));
            kept.truncate(self.n);
        }
    }

    /// The `n` smallest, sorted; a stable sort keeps equal events in arrival order.
    fn finish(&self, mut kept: Vec<T>) -> Vec<T> {
        self.trim(&mut kept);
        let cmp = &*self.cmp;
        kept.sort_by(|a, b| cmp(a, b));
        kept
    }
}

/// Per partition (and window): keeps the `n` smallest events; at `Done` emits them
/// sorted, as one `Vec`.
pub(crate) struct TopN<T, C, L> {
    smallest: Smallest<T, C>,
    kept: Slots<Vec<T>>,
    ends: Ends,
    rest: L,
}

impl<T, C, L: Clone> Clone for TopN<T, C, L> {
    fn clone(&self) -> Self {
        TopN {
            smallest: self.smallest.clone(),
            kept: Slots::default(),
            ends: Ends::default(),
            rest: self.rest.clone(),
        }
    }
}

impl<T, C, L> TopN<T, C, L>
where
    C: Fn(&T, &T) -> Ordering,
    L: Logic<In = Vec<T>>,
{
    fn fire_done(&mut self, window: WindowInfo, out: &mut Vec<L::Out>) {
        let kept = self.kept.take(window.id).unwrap_or_default();
        let top = self.smallest.finish(kept);
        emit_done(&mut self.rest, window, top, out);
    }
}

impl<T, C, L> Logic for TopN<T, C, L>
where
    T: Send + 'static,
    C: Fn(&T, &T) -> Ordering + Send + Sync,
    L: Logic<In = Vec<T>>,
{
    type In = T;
    type Out = L::Out;

    fn start(&mut self, partition: PartitionInfo) {
        self.rest.start(partition);
    }

    #[inline]
    fn push(&mut self, event: T, _out: &mut Vec<L::Out>) {
        let kept = self.kept.current(Vec::new);
        self.smallest.push(kept, event);
    }

    fn done(&mut self, out: &mut Vec<L::Out>) {
        for end in self.ends.leftover(self.kept.ids()) {
            self.fire_done(end.window, out);
        }
        self.rest.done(out);
    }

    fn window(&mut self, signal: WindowSignal<'_>, out: &mut Vec<L::Out>) {
        self.ends.observe(&signal);
        match signal {
            WindowSignal::Start => self.rest.window(signal, out),
            WindowSignal::Enter(window) => {
                self.kept.enter(window.id);
                self.rest.window(signal, out);
            }
            // `take_sort` emits once per window, at its end.
            WindowSignal::Fire(trigger) if trigger.is_done() => {
                self.fire_done(trigger.window.clone(), out)
            }
            WindowSignal::Fire(_) => {}
        }
    }

    fn describe(&self, names: &mut Vec<String>) {
        names.push(format!("take_sort({})", self.smallest.n));
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

impl<P: Plan, C> TakeSortNode<P, C> {
    /// The node's parts, for either backend: its input, each partition's top `n` (ending
    /// in a [`Tag`]), and the merging logic before `rest` — which takes each partition's
    /// sorted list and keeps the top `n` of all (to be told how many partitions feed it,
    /// [`MergeTopN::expecting`]).
    #[allow(clippy::type_complexity)]
    pub(crate) fn into_parts<L>(
        self,
        rest: L,
    ) -> (
        P,
        TopN<P::Item, C, Tag<Vec<P::Item>>>,
        MergeTopN<P::Item, C, L>,
    ) {
        let smallest = Smallest {
            n: self.n,
            cmp: self.cmp,
            _t: PhantomData,
        };
        let per_partition = TopN {
            smallest: smallest.clone(),
            kept: Slots::default(),
            ends: Ends::default(),
            rest: Tag::new(),
        };
        let merge = MergeTopN {
            smallest,
            kept: Slots::default(),
            closing: Closing::new(0),
            rest,
        };
        (self.inner, per_partition, merge)
    }
}

impl<P, C> Plan for TakeSortNode<P, C>
where
    P: Plan,
    C: Fn(&P::Item, &P::Item) -> Ordering + Send + Sync,
{
    type Item = Vec<P::Item>;

    fn compile<'a, L>(
        self,
        compiler: &mut Compiler<'a>,
        logic: L,
        dispatch: &DispatchSpec<'a, L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        Self: 'a,
        L: Logic<In = Vec<P::Item>> + Clone + 'a,
    {
        let (inner, per_partition, merge) = self.into_parts(logic);
        let upstream = inner.compile(compiler, per_partition, &DispatchSpec::demand())?;
        let merge = merge.expecting(upstream.len());
        one_stage(compiler, "take_sort", upstream, merge, dispatch)
    }
}

/// The merging stage of `take_sort`: per window, the top `n` of every partition's list.
/// Each list arrives sorted; they are kept as runs and merged k-way at the end
/// (`Itertools::kmerge_by`), taking only the first `n`: no sort of all of them.
pub(crate) struct MergeTopN<T, C, L> {
    smallest: Smallest<T, C>,
    kept: Slots<Vec<Vec<T>>>,
    closing: Closing,
    rest: L,
}

impl<T, C, L: Clone> Clone for MergeTopN<T, C, L> {
    fn clone(&self) -> Self {
        MergeTopN {
            smallest: self.smallest.clone(),
            kept: Slots::default(),
            closing: Closing::new(self.closing.partitions),
            rest: self.rest.clone(),
        }
    }
}

impl<T, C, L> MergeTopN<T, C, L> {
    /// The same merging logic, waiting for `partitions` closes per window.
    pub(crate) fn expecting(mut self, partitions: usize) -> Self {
        self.closing = Closing::new(partitions);
        self
    }
}

impl<T, C, L> MergeTopN<T, C, L>
where
    C: Fn(&T, &T) -> Ordering,
    L: Logic<In = Vec<T>>,
{
    fn finish(&mut self, window: WindowInfo, out: &mut Vec<L::Out>) {
        let runs = self.kept.take(window.id).unwrap_or_default();
        let cmp = &*self.smallest.cmp;
        let top = runs
            .into_iter()
            .kmerge_by(|a, b| cmp(a, b) == Ordering::Less)
            .take(self.smallest.n)
            .collect();
        emit_done(&mut self.rest, window, top, out);
    }
}

impl<T, C, L> Logic for MergeTopN<T, C, L>
where
    T: Send + 'static,
    C: Fn(&T, &T) -> Ordering + Send + Sync,
    L: Logic<In = Vec<T>>,
{
    type In = Tagged<Vec<T>>;
    type Out = L::Out;

    fn start(&mut self, partition: PartitionInfo) {
        self.rest.start(partition);
    }

    fn push(&mut self, event: Tagged<Vec<T>>, out: &mut Vec<L::Out>) {
        match event {
            Tagged::Event(id, events) => {
                self.kept.enter(id);
                self.kept.current(Vec::new).push(events);
            }
            Tagged::Closed(window) => {
                if self.closing.close(&window) {
                    self.finish(window, out);
                }
            }
        }
    }

    fn done(&mut self, out: &mut Vec<L::Out>) {
        for window in self.closing.leftover(self.kept.ids()) {
            self.finish(window, out);
        }
        self.rest.done(out);
    }

    fn window(&mut self, signal: WindowSignal<'_>, out: &mut Vec<L::Out>) {
        self.rest.window(signal, out);
    }

    fn describe(&self, names: &mut Vec<String>) {
        names.push(format!("take_sort({})", self.smallest.n));
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
        true
    }
}
