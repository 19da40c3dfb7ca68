//! Joins: `bounded_join` and `window_join`, inner, left outer, right outer and full outer.
//!
//! Both inputs are tagged with their [`Side`] and partitioned by the hash of their key into
//! one layer of join stages, so every key meets all its events in one stage. A stage keeps,
//! per key (and window), the events each side sent so far: an event is joined at once
//! with every event of the other side already there, so a match is emitted as soon as both
//! sides have it. When the window ends (`Done`; for `bounded_join` the end of input) the
//! outer modes emit the events whose key never met the other side, and the window's state
//! is dropped.
//!
//! **Memory:** a join stage holds every event of both sides of the open windows — for a
//! `bounded_join`, all of its input until the end — plus one map entry per key. Window
//! joins release each window's state when it fires `Done`.

use std::hash::Hash;
use std::sync::Arc;

use ahash::AHashMap;

use super::compile::{Compiler, DispatchSpec, Output, Plan};
use super::logic::{Identity, Logic, Map, PartitionInfo};
use super::partition::Shuffle;
use super::plan::layer;
use crate::error::{FlowError, Result};
use crate::stage::{Dispatcher, partition_hash, partition_of};
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

/// The join logic of one stage.
pub(crate) struct Join<A, B, K, KA, KB, F, L> {
    mode: JoinMode,
    left_key: Arc<KA>,
    right_key: Arc<KB>,
    join: Arc<F>,
    state: Slots<Keys<K, A, B>>,
    windowed: bool,
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
            rest: self.rest.clone(),
        }
    }
}

impl<A, B, K, KA, KB, F, O, L> Join<A, B, K, KA, KB, F, L>
where
    K: Hash + Eq,
    F: Fn(Option<&A>, Option<&B>) -> O,
    L: Logic<In = O>,
{
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

impl<A, B, K, KA, KB, F, O, L> Logic for Join<A, B, K, KA, KB, F, L>
where
    A: Send + 'static,
    B: Send + 'static,
    K: Hash + Eq + Send + 'static,
    KA: Fn(&A) -> K + Send + Sync + 'static,
    KB: Fn(&B) -> K + Send + Sync + 'static,
    F: Fn(Option<&A>, Option<&B>) -> O + Send + Sync + 'static,
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
        let keys = self.state.current(AHashMap::new);
        let join = &*self.join;
        match event {
            Side::Left(left) => {
                let entry = keys
                    .entry((self.left_key)(&left))
                    .or_insert_with(Entry::new);
                // One fused pass over the matches (a reduce after the join folds them
                // with its accumulator taken once).
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

    fn done(&mut self, out: &mut Vec<L::Out>) {
        if !self.windowed {
            self.finish(&Trigger::done_global(), out);
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

impl<PL, PR, KA, KB, F, T> std::fmt::Debug for JoinNode<PL, PR, KA, KB, F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinNode")
            .field("mode", &self.mode)
            .field("stages", &self.options.stages)
            .finish()
    }
}

impl<PL, PR, K, KA, KB, F, O> Plan for JoinNode<PL, PR, KA, KB, F, Side<PL::Item, PR::Item>>
where
    PL: Plan,
    PR: Plan,
    K: Hash + Eq + Send + 'static,
    KA: Fn(&PL::Item) -> K + Send + Sync + 'static,
    KB: Fn(&PR::Item) -> K + Send + Sync + 'static,
    F: Fn(Option<&PL::Item>, Option<&PR::Item>) -> O + Send + Sync + 'static,
    O: Send + 'static,
{
    type Item = O;

    fn compile<L>(
        self,
        compiler: &mut Compiler,
        logic: L,
        dispatch: &DispatchSpec<L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        L: Logic<In = O> + Clone,
    {
        if let Some(error) = self.options.validate() {
            return Err(error);
        }
        if let Some(window) = &self.window {
            window.validate()?;
        }
        let stages = self.options.stages;
        // Both sides go to the stage their key hashes to: equal keys meet.
        let (left_key, right_key) = (self.left_key.clone(), self.right_key.clone());
        let route = move |event: &Side<PL::Item, PR::Item>, partitions: usize| {
            let hash = match event {
                Side::Left(left) => partition_hash(&left_key(left)),
                Side::Right(right) => partition_hash(&right_key(right)),
            };
            Some(partition_of(hash, partitions))
        };
        let route = Arc::new(route);
        let upstream_dispatch = if stages >= 2 {
            DispatchSpec::new(format!("partition({stages})"), move || {
                let route = route.clone();
                Dispatcher::partition_with(move |event, partitions| route(event, partitions))
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
        let join = Join {
            mode: self.mode,
            left_key: self.left_key,
            right_key: self.right_key,
            join: self.join,
            state: Slots::default(),
            windowed: false,
            rest: logic,
        };
        layer(
            compiler,
            "join",
            upstream,
            stages,
            self.options.max_demand,
            self.options.min(),
            self.window,
            join,
            dispatch,
        )
    }
}
