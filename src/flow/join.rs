//! Joins: `bounded_join` and `window_join`, inner, left outer, right outer and full outer.
//!
//! Both inputs are tagged with their [`Side`] and partitioned by the hash of their key into
//! one layer of join stages, so every key meets all its events in one stage.
//!
//! A **bounded join** is a hash join: each stage reads its share of the left input to the
//! end first, building a table of the left events per key (the right input is subscribed
//! [`deferred`](crate::stage::SubscribeOptions::deferred), so its producers get no demand
//! until then), and then streams the right input through it: each right event is joined
//! at once with every left event of its key, or — right outer — emitted unmatched at once,
//! since no left event can come any more. Left events no right event matched are emitted at
//! `Done` (left outer).
//!
//! A **window join** cannot wait for either side to end: per window and key, a stage keeps
//! the events each side sent so far, and joins each new event at once with every event of
//! the other side already there. When the window fires `Done` the outer modes emit the
//! events whose key never met the other side, and the window's state is dropped.
//!
//! **Memory:** a bounded join stage holds its share of the *left* input (every left event,
//! plus one map entry per key) until `Done`, and never holds right events beyond the one
//! being joined: put the smaller input on the left. A window join holds every event of both
//! sides of the open windows, and releases each window's state when it fires `Done`.

use std::hash::Hash;
use std::sync::Arc;

use ahash::AHashMap;

use super::compile::{Compiler, DispatchSpec, Output, Plan};
use super::logic::{Identity, Logic, Map, PartitionInfo};
use super::partition::{Route, Shuffle};
use super::plan::layer_deferring;
use crate::error::{FlowError, Result};
use crate::stage::{ScopedDispatcher, partition_hash, partition_of};
use crate::window::{Slots, Trigger, Window, WindowSignal};

/// Which unmatched events a join emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JoinMode {
    /// Only matches.
    Inner,
    /// Matches, and left events whose key no right event had, as `f(Some(l), None)`.
    LeftOuter,
    /// Matches, and right events whose key no left event had, as `f(None, Some(r))`.
    RightOuter,
    /// Matches and the unmatched events of both sides.
    FullOuter,
}

impl JoinMode {
    fn keeps_left(self) -> bool {
        matches!(self, JoinMode::LeftOuter | JoinMode::FullOuter)
    }

    fn keeps_right(self) -> bool {
        matches!(self, JoinMode::RightOuter | JoinMode::FullOuter)
    }
}

/// An event of a join's input, tagged with the side it came from. A `window_join`'s
/// window sees these (its timestamp function matches on the side).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Side<A, B> {
    /// From the left flow.
    Left(A),
    /// From the right flow.
    Right(B),
}

/// One key's events of each side.
struct Entry<A, B> {
    lefts: Vec<A>,
    rights: Vec<B>,
}

impl<A, B> Entry<A, B> {
    /// Room for a few events per side from the start: most keys get more than one, and
    /// growing 1, 2, 4 costs more than the memory saved.
    fn new() -> Self {
        Entry {
            lefts: Vec::with_capacity(4),
            rights: Vec::with_capacity(4),
        }
    }
}

type Keys<K, A, B> = AHashMap<K, Entry<A, B>>;

/// A bounded join's build side: one stage's left events, grouped by key in one
/// allocation.
///
/// While the left side comes in, events are appended in arrival order with the slot of
/// their key; when the first right event arrives (or at the end) the table is *sealed*:
/// a counting sort moves each key's events next to each other, so a probe reads one
/// contiguous slice. One `Vec` per key instead would cost a few allocations per key —
/// with about ten events per key, more than the hashing.
struct Table<K, A> {
    /// Key → its slot.
    slots: AHashMap<K, usize>,
    /// Building: events per slot. Sealed: where each slot's events start in `events`,
    /// plus the total at the end.
    bounds: Vec<usize>,
    /// Building: (slot, event) in arrival order.
    pending: Vec<(usize, A)>,
    /// Sealed: the events, grouped by slot.
    events: Vec<A>,
    /// Sealed: whether a right event met the slot's events (for left outer).
    matched: Vec<bool>,
    sealed: bool,
}

impl<K, A> Table<K, A> {
    fn new() -> Self {
        Table {
            slots: AHashMap::new(),
            bounds: Vec::new(),
            pending: Vec::new(),
            events: Vec::new(),
            matched: Vec::new(),
            sealed: false,
        }
    }
}

impl<K: Hash + Eq, A> Table<K, A> {
    /// Adds a left event (before the table is sealed).
    #[inline]
    fn insert(&mut self, key: K, event: A) {
        let next = self.bounds.len();
        let slot = *self.slots.entry(key).or_insert(next);
        if slot == next {
            self.bounds.push(0);
        }
        self.bounds[slot] += 1;
        self.pending.push((slot, event));
    }

    /// Groups the events by key, once: counts become offsets, each event moves to its
    /// slot's next place, and the arrival-order list is dropped.
    #[inline]
    fn seal(&mut self) {
        if !self.sealed {
            self.seal_now();
        }
    }

    fn seal_now(&mut self) {
        self.sealed = true;
        let slots = self.bounds.len();
        let mut total = 0;
        for count in &mut self.bounds {
            let start = total;
            total += *count;
            *count = start;
        }
        self.bounds.push(total);
        let mut next = self.bounds[..slots].to_vec();
        let mut placed: Vec<Option<A>> = std::iter::repeat_with(|| None).take(total).collect();
        for (slot, event) in std::mem::take(&mut self.pending) {
            placed[next[slot]] = Some(event);
            next[slot] += 1;
        }
        self.events = placed.into_iter().flatten().collect();
        self.matched = vec![false; slots];
    }

    /// The left events of `key`, marked as met (after [`seal`](Self::seal)).
    #[inline]
    fn probe(&mut self, key: &K) -> Option<&[A]> {
        let slot = *self.slots.get(key)?;
        self.matched[slot] = true;
        self.events.get(self.bounds[slot]..self.bounds[slot + 1])
    }

    /// The left events no right event met, and the table emptied.
    fn unmatched(&mut self) -> impl Iterator<Item = A> {
        self.seal();
        let table = std::mem::replace(self, Table::new());
        let bounds = table.bounds;
        let matched = table.matched;
        let mut slot = 0;
        table
            .events
            .into_iter()
            .enumerate()
            .filter_map(move |(i, event)| {
                while bounds[slot + 1] <= i {
                    slot += 1;
                }
                (!matched[slot]).then_some(event)
            })
    }
}

/// The join logic of one stage.
pub(crate) struct Join<A, B, K, KA, KB, F, L> {
    mode: JoinMode,
    left_key: Arc<KA>,
    right_key: Arc<KB>,
    join: Arc<F>,
    /// Window join: per window, both sides' events per key.
    state: Slots<Keys<K, A, B>>,
    windowed: bool,
    /// Bounded join: the left side per key, complete before the first right event.
    table: Table<K, A>,
    rest: L,
}

impl<A, B, K, KA, KB, F, L: Clone> Clone for Join<A, B, K, KA, KB, F, L> {
    fn clone(&self) -> Self {
        Join {
            mode: self.mode,
            left_key: self.left_key.clone(),
            right_key: self.right_key.clone(),
            join: self.join.clone(),
            state: Slots::default(),
            windowed: false,
            table: Table::new(),
            rest: self.rest.clone(),
        }
    }
}

impl<A, B, K, KA, KB, F, L> Join<A, B, K, KA, KB, F, L> {
    /// The join logic of one stage (one cluster worker), before `rest`.
    pub(crate) fn new(
        mode: JoinMode,
        left_key: Arc<KA>,
        right_key: Arc<KB>,
        join: Arc<F>,
        rest: L,
    ) -> Self {
        Join {
            mode,
            left_key,
            right_key,
            join,
            state: Slots::default(),
            windowed: false,
            table: Table::new(),
            rest,
        }
    }
}

impl<A, B, K, KA, KB, F, O, L> Join<A, B, K, KA, KB, F, L>
where
    K: Hash + Eq,
    F: Fn(Option<&A>, Option<&B>) -> O,
    L: Logic<In = O>,
{
    /// The bounded join's end: emits the left events no right event met (left outer) and
    /// drops the table.
    fn finish_bounded(&mut self, out: &mut Vec<L::Out>) {
        if !self.mode.keeps_left() {
            self.table = Table::new();
            return;
        }
        self.rest
            .window(WindowSignal::Enter(&Trigger::done_global().window), out);
        let join = &*self.join;
        let unmatched = self.table.unmatched();
        self.rest
            .feed(unmatched.map(|left| join(Some(&left), None)), out);
    }

    /// Window `window` ended: emits its unmatched events per the mode, drops its state.
    fn finish(&mut self, trigger: &Trigger, out: &mut Vec<L::Out>) {
        let Some(keys) = self.state.take(trigger.window.id) else {
            return;
        };
        self.rest.window(WindowSignal::Enter(&trigger.window), out);
        let (join, mode) = (&*self.join, self.mode);
        for entry in keys.into_values() {
            if entry.rights.is_empty() && mode.keeps_left() {
                for left in &entry.lefts {
                    self.rest.push(join(Some(left), None), out);
                }
            }
            if entry.lefts.is_empty() && mode.keeps_right() {
                for right in &entry.rights {
                    self.rest.push(join(None, Some(right)), out);
                }
            }
        }
    }
}

impl<A, B, K, KA, KB, F, O, L> Join<A, B, K, KA, KB, F, L>
where
    K: Hash + Eq,
    KA: Fn(&A) -> K,
    KB: Fn(&B) -> K,
    F: Fn(Option<&A>, Option<&B>) -> O,
    L: Logic<In = O>,
{
    /// A window join's event: joined with the other side's events of its key so far in
    /// the current window, then kept for the ones still to come.
    #[inline]
    fn push_windowed(&mut self, event: Side<A, B>, out: &mut Vec<L::Out>) {
        let keys = self.state.current(AHashMap::new);
        let join = &*self.join;
        match event {
            Side::Left(left) => {
                let entry = keys
                    .entry((self.left_key)(&left))
                    .or_insert_with(Entry::new);
                if !entry.rights.is_empty() {
                    let matches = entry
                        .rights
                        .iter()
                        .map(|right| join(Some(&left), Some(right)));
                    self.rest.feed(matches, out);
                }
                entry.lefts.push(left);
            }
            Side::Right(right) => {
                let entry = keys
                    .entry((self.right_key)(&right))
                    .or_insert_with(Entry::new);
                if !entry.lefts.is_empty() {
                    let matches = entry
                        .lefts
                        .iter()
                        .map(|left| join(Some(left), Some(&right)));
                    self.rest.feed(matches, out);
                }
                entry.rights.push(right);
            }
        }
    }
}

impl<A, B, K, KA, KB, F, O, L> Logic for Join<A, B, K, KA, KB, F, L>
where
    A: Send + 'static,
    B: Send + 'static,
    K: Hash + Eq + Send + 'static,
    KA: Fn(&A) -> K + Send + Sync,
    KB: Fn(&B) -> K + Send + Sync,
    F: Fn(Option<&A>, Option<&B>) -> O + Send + Sync,
    O: Send + 'static,
    L: Logic<In = O>,
{
    type In = Side<A, B>;
    type Out = L::Out;

    fn start(&mut self, partition: PartitionInfo) {
        self.rest.start(partition);
    }

    #[inline]
    fn push(&mut self, event: Side<A, B>, out: &mut Vec<L::Out>) {
        if self.windowed {
            self.push_windowed(event, out);
            return;
        }
        // Bounded: every left event is here before the first right event.
        match event {
            Side::Left(left) => self.table.insert((self.left_key)(&left), left),
            Side::Right(right) => {
                self.table.seal();
                let join = &*self.join;
                match self.table.probe(&(self.right_key)(&right)) {
                    Some(lefts) => {
                        // One fused pass over the matches (a reduce after the join folds
                        // them with its accumulator taken once).
                        let matches = lefts.iter().map(|left| join(Some(left), Some(&right)));
                        self.rest.feed(matches, out);
                    }
                    None if self.mode.keeps_right() => {
                        self.rest.push(join(None, Some(&right)), out);
                    }
                    None => {}
                }
            }
        }
    }

    fn done(&mut self, out: &mut Vec<L::Out>) {
        if !self.windowed {
            self.finish_bounded(out);
        }
        // A windowed stage's windows all fired `Done` before this.
        self.rest.done(out);
    }

    fn window(&mut self, signal: WindowSignal<'_>, out: &mut Vec<L::Out>) {
        match signal {
            WindowSignal::Start => self.windowed = true,
            WindowSignal::Enter(window) => self.state.enter(window.id),
            WindowSignal::Fire(trigger) if trigger.is_done() => self.finish(trigger, out),
            WindowSignal::Fire(_) => {}
        }
        self.rest.window(signal, out);
    }

    fn describe(&self, names: &mut Vec<String>) {
        names.push(format!("join({:?})", self.mode));
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

    /// A join is not a reduce: a `reduce` may follow it in the same stage, folding the
    /// pairs as they are made (per window), instead of sending them to another layer.
    fn has_reducer(&self) -> bool {
        self.rest.has_reducer()
    }
}

/// The plan node of `bounded_join` and `window_join`.
pub struct JoinNode<PL, PR, KA, KB, F, T> {
    pub(crate) mode: JoinMode,
    pub(crate) left: PL,
    pub(crate) right: PR,
    pub(crate) left_key: Arc<KA>,
    pub(crate) right_key: Arc<KB>,
    pub(crate) join: Arc<F>,
    pub(crate) window: Option<Window<T>>,
    pub(crate) options: Shuffle,
}

impl<PL, PR, KA, KB, F, T> JoinNode<PL, PR, KA, KB, F, T> {
    /// How both sides are partitioned, on either backend: by the hash of their key, so
    /// that equal keys meet.
    pub(crate) fn route(&self) -> SideKey<KA, KB> {
        SideKey(self.left_key.clone(), self.right_key.clone())
    }
}

/// A join's route: the hash of either side's key.
pub(crate) struct SideKey<KA, KB>(Arc<KA>, Arc<KB>);

impl<KA, KB> SideKey<KA, KB> {
    /// The partition of `event` (the local runtime's route, whose keys may borrow).
    fn partition<A, B, K>(&self, event: &Side<A, B>, partitions: usize) -> Option<usize>
    where
        K: Hash,
        KA: Fn(&A) -> K,
        KB: Fn(&B) -> K,
    {
        let hash = match event {
            Side::Left(left) => partition_hash(&(self.0)(left)),
            Side::Right(right) => partition_hash(&(self.1)(right)),
        };
        Some(partition_of(hash, partitions))
    }
}

impl<A, B, K, KA, KB> Route<Side<A, B>> for SideKey<KA, KB>
where
    K: Hash,
    KA: Fn(&A) -> K + Send + Sync + 'static,
    KB: Fn(&B) -> K + Send + Sync + 'static,
{
    fn route(&self, event: &Side<A, B>, partitions: usize) -> Option<usize> {
        self.partition(event, partitions)
    }
}

impl<PL, PR, KA, KB, F, T> std::fmt::Debug for JoinNode<PL, PR, KA, KB, F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinNode")
            .field("mode", &self.mode)
            .field("stages", &self.options.0.stages)
            .finish()
    }
}

impl<PL, PR, K, KA, KB, F, O> Plan for JoinNode<PL, PR, KA, KB, F, Side<PL::Item, PR::Item>>
where
    PL: Plan,
    PR: Plan,
    K: Hash + Eq + Send + 'static,
    KA: Fn(&PL::Item) -> K + Send + Sync,
    KB: Fn(&PR::Item) -> K + Send + Sync,
    F: Fn(Option<&PL::Item>, Option<&PR::Item>) -> O + Send + Sync,
    O: Send + 'static,
{
    type Item = O;

    fn compile<'a, L>(
        self,
        compiler: &mut Compiler<'a>,
        logic: L,
        dispatch: &DispatchSpec<'a, L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        Self: 'a,
        L: Logic<In = O> + Clone + 'a,
    {
        if let Some(error) = self.options.0.validate() {
            return Err(error);
        }
        if let Some(window) = &self.window {
            window.validate()?;
        }
        let stages = self.options.0.stages;
        let route = Arc::new(self.route());
        let upstream_dispatch = if stages >= 2 {
            DispatchSpec::new(format!("partition({stages})"), move || {
                let route = route.clone();
                ScopedDispatcher::partition_with(move |event, partitions| {
                    route.partition(event, partitions)
                })
            })
        } else {
            DispatchSpec::demand()
        };
        // Closures, not `Side::Left` as a fn pointer: they inline into the source's loop.
        let tag_left = |event| Side::<PL::Item, PR::Item>::Left(event);
        let tag_right = |event| Side::<PL::Item, PR::Item>::Right(event);
        let mut upstream = self.left.compile(
            compiler,
            Map::new(Arc::new(tag_left), Identity::new()),
            &upstream_dispatch,
        )?;
        // A bounded join reads the right side (its probe side) once the left is complete;
        // a window join reads both as they come.
        let deferred = if self.window.is_some() {
            usize::MAX
        } else {
            upstream.len()
        };
        upstream.extend(self.right.compile(
            compiler,
            Map::new(Arc::new(tag_right), Identity::new()),
            &upstream_dispatch,
        )?);
        if upstream.is_empty() {
            return Err(FlowError::Config(
                "a join needs producers on both sides".into(),
            ));
        }
        let join = Join::new(self.mode, self.left_key, self.right_key, self.join, logic);
        layer_deferring(
            compiler,
            "join",
            upstream,
            deferred,
            stages,
            self.options.0.max_demand,
            self.options.0.min(),
            self.window,
            join,
            dispatch,
        )
    }
}
