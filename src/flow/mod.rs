//! The flow layer: lazy, typed queries compiled onto stages when run.
//!
//! A [`Flow`] is built like an iterator — `from_iter(..).map(..).filter(..)` — and does
//! nothing until a terminal runs it (`collect`, `run`, iteration, `into_stream`,
//! `into_stages`). Then the plan is compiled onto the [stage layer](crate::stage):
//! consecutive stateless operators are fused into the stage before them, `partition`
//! starts a new layer of stages behind a hash dispatcher, and reducers keep per-stage state.
//!
//! ```
//! use flowstage::flow::{Flow, Partition};
//! use std::collections::HashMap;
//!
//! let text = ["the quick brown fox", "jumps over the lazy dog"];
//! let counts: HashMap<String, u64> = Flow::from_iter(text)
//!     .flat_map(|line: &str| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
//!     .partition(Partition::new().stages(2))
//!     .reduce(HashMap::new, |word, mut counts: HashMap<String, u64>| {
//!         *counts.entry(word).or_default() += 1;
//!         counts
//!     })
//!     .collect()?;
//! assert_eq!(counts["the"], 2);
//! # Ok::<(), flowstage::FlowError>(())
//! ```
//!
//! The type parameter of `Flow<P>` is the plan, as an iterator adaptor's type is its chain;
//! name a flow as `Flow<impl Plan<Item = T>>` — or `Flow<impl Plan<Item = T> + 'static>`
//! for one that borrows nothing, which the terminals that outlive the call (`into_iter`,
//! `into_stream`, `spawn`, `run_async`, `into_stages`) need. The blocking terminals
//! (`collect`, `sum`, `for_each`, `run`, ...) return when every stage has ended, so a flow
//! they run may borrow local data.
//!
//! ## Layers and reducers
//!
//! A layer — the stages a source, [`partition`](Flow::partition) or
//! [`shuffle`](Flow::shuffle) starts — holds at most one reducer (the reduce family, or
//! [`take_sort`](Flow::take_sort)'s per-partition part); operations after it apply to
//! what it emits. A second one does not build: the error names the operator and the fix
//! (`shuffle()` before it). [`map_init`](Flow::map_init) tells user code which stage of
//! its layer it runs in.
//!
//! ## Triggers: keep or reset
//!
//! A reduce keeps one accumulator per stage and [window](crate::window), and emits at
//! each of the window's triggers. [`on_trigger(f)`](Flow::on_trigger) decides what:
//! `f(acc, partition, trigger) -> (events, new_acc)`; returning `acc` **keeps** it (the
//! window's next trigger sees everything so far), returning a fresh one **resets**; on
//! `Done` the returned accumulator is dropped. The shorthands
//! [`emit_events`](Flow::emit_events) (the default), [`emit_state`](Flow::emit_state) and
//! [`emit_nothing`](Flow::emit_nothing) all keep, as Flow's `emit/2` does. Every window
//! ends with exactly one `Done`, whatever layer sits before the reduce.
//!
//! ```
//! use flowstage::flow::{Flow, Partition};
//! use flowstage::window::Window;
//! // The global window, a trigger every 10 events, over 1..=100 summed.
//! let every_ten = || {
//!     Flow::from_iter(1..=100u64)
//!         .partition(Partition::new().stages(1).window(Window::global().trigger_every(10)))
//!         .reduce(|| 0u64, |x, sum| sum + x)
//! };
//! let keep: Vec<u64> = every_ten().emit_state().collect()?;
//! assert_eq!(keep[..3], [55, 210, 465]);
//! assert_eq!(keep[9..], [5050, 5050]); // the 10th trigger, then `Done`
//! let reset: Vec<u64> = every_ten().on_trigger(|sum, _, _| (vec![sum], 0)).collect()?;
//! assert_eq!(reset[..3], [55, 155, 255]);
//! assert_eq!(reset[9..], [955, 0]);
//! # Ok::<(), flowstage::FlowError>(())
//! ```
//!
//! ## Differences from Elixir Flow
//!
//! flowstage follows Flow 1.2 and GenStage 1.3 (names, defaults, results) except where
//! this table says, on purpose:
//!
//! | where | Flow / GenStage | flowstage, and why |
//! |---|---|---|
//! | producer owing demand | a producer that returned fewer events than asked is not asked again until new demand (GenStage #80, #248) | the runtime keeps the debt and asks again: a flow cannot stall because a producer once had nothing |
//! | partition dispatcher | buffers without bound for a partition without demand (GenStage #282) | buffers up to a bound, then backpressure reaches upstream |
//! | concurrent consumers | may overshoot `max` across restarts (GenStage #190, #191) | never more than `max` in flight |
//! | a source finishing before subscribers | can end the flow early (Flow #88, #91, #114) | every subscription is wired before any source runs |
//! | partition hash | `:erlang.phash2` | ahash: the same keys group together, on other partition numbers |
//! | watermarks and window results | depend on batch sizes and demand | for one producer, exact at the event, whatever the batching |
//! | `map` (and the like) after a reduce | raises | allowed: applies to what the reduce emits |
//! | a second reducer in a layer | raises (`ArgumentError`) when the flow starts | does not build (a Rust build error naming the operator and the fix) |
//! | emit shorthands | `emit(:events \| :state \| :nothing)` keep the state | keep as well; a trigger before `Done` emits a clone, so they need `Acc: Clone` (`on_trigger` does not) |
//! | `departition`'s `done` | arity 1 or 2 (with the window) | always `done(acc, &window)` |
//! | custom triggers | see each batch as a list | see runs of a batch (cut where `every(n)` falls) as a slice; to replace or hand back events a trigger copies them (`Decision::ContinueWith`, `FireWith`) |
//! | sliding and session windows | recipes | native window kinds ([`Window::sliding`], [`Window::session`]) |
//! | empty fixed windows between data | fire | do not, unless [`Window::fire_empty`] asks (two events a day apart would fire millions) |
//! | late events beyond the allowed lateness | dropped silently | counted, and kept aside with [`LateEvents`](crate::window::LateEvents) |
//! | an idle producer | holds the watermark back forever (GenStage #105) | [`Window::idle_timeout`] releases it |
//! | `departition` on an unbounded flow | waits for the end (GenStage #93) | merges each window once every partition closed it (periodic windows work) |
//! | errors in user code | the stage crashes and the caller exits | the run returns a [`FlowError`](crate::FlowError) naming the stage ([`root_cause`](crate::FlowError::root_cause) reaches the typed cause); fallible operators can skip or dead-letter ([`ErrorPolicy`]) |
//! | a stage's index at start | `on_init`-style callbacks | [`map_init`](Flow::map_init) (rayon's name) |

mod async_step;
mod batch;
mod blocking;
mod combine;
mod compile;
mod dead_letter;
mod departition;
mod explain;
pub(crate) mod fallible;
mod fused;
mod gather;
mod iter;
pub mod join;
mod logic;
mod map_init;
mod par_iter;
mod partition;
pub(crate) mod plan;
mod reduce;
mod terminals;
mod uniq;

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

pub use async_step::{AsIs, Completion, Fallible, Flatten};
pub use batch::Batch;
pub use combine::{COMBINER_CAPACITY, Combined};
pub use compile::Plan;
pub use dead_letter::SideOutput;
pub use explain::Explain;
pub use fallible::{DeadLetter, ErrorPolicy, OperatorError, Rejected};
pub use iter::IterNode;
pub use join::{JoinMode, Side};
pub use logic::{Logic, PartitionInfo};
pub use par_iter::ParIterNode;
pub use partition::{ByHash, ByKey, HashEvent, NoRoute, Partition, Route, Shuffle};
pub use reduce::{
    Emit, EmitEvents, EmitNothing, EmitState, Emits, Fold, FoldEmit, FoldMut, OnTrigger, Step,
    Trigger, TriggerName, WindowInfo,
};

pub(crate) use compile::{Compiler, DispatchSpec, Output, SinkConsumer};
pub(crate) use logic::Identity;
// What the cluster backend builds its operators from.
#[cfg(feature = "timely")]
pub(crate) use compile::settled_blocking;
#[cfg(feature = "timely")]
pub(crate) use departition::Tagged;
#[cfg(feature = "timely")]
pub(crate) use logic::Map;

/// The plan node types behind `Flow<P>`, one per operator, as `std::iter::Map` is behind
/// `Iterator::map`. Users meet them only in type names.
pub mod nodes {
    pub use super::async_step::{AsyncNode, StageErrors};
    pub use super::batch::BatchNode;
    pub use super::blocking::MapBlockingNode;
    pub use super::combine::{CombineNode, CountByKeyNode, ReduceByKeyNode};
    pub use super::departition::{DepartitionNode, TakeSortNode};
    pub use super::fallible::{TryFlatMapNode, TryMapNode};
    pub use super::join::JoinNode;
    pub use super::map_init::MapInitNode;
    pub use super::plan::{
        Exchange, FilterMapNode, FilterNode, FlatMapNode, InspectNode, MapBatchNode, MapNode,
        Merge, RejectNode, SourceNode, StageHead,
    };
    pub use super::reduce::ReduceNode;
    pub use super::terminals::FoldNode;
    pub use super::uniq::UniqNode;
}

use nodes::*;

use crate::error::Result;
use crate::sink::{self, FlowIter, FlowStream};
use crate::source::{Source, StagesSource, StreamSource};
use crate::stage::{Pipeline, ProducerRef, Report, Running};
use crate::window::{LayerWindow, Window};

/// Fails the build where `$plan`'s last layer already holds a reducer (a layer holds at
/// most one), naming the operator and the fix. Checked when rustc instantiates the
/// operator for a concrete plan (`cargo build`, `cargo test`; not `cargo check`).
macro_rules! one_reducer_per_layer {
    ($plan:ident, $operator:literal) => {
        const {
            assert!(
                !$plan::REDUCES,
                concat!(
                    $operator,
                    " after another reduce in the same layer (a layer holds one reducer): \
                     call `shuffle()` or `partition()` before ",
                    $operator
                )
            )
        }
    };
}

/// A lazy, typed query. Build it with sources and operators; run it with a terminal.
#[must_use = "flows are lazy and do nothing unless run"]
#[derive(Debug)]
pub struct Flow<P> {
    plan: P,
}

impl Flow<()> {
    /// A flow over any [`Source`]: the general constructor.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// use flowstage::source::Source;
    /// # use flowstage::source::BoxedProducer;
    /// # struct Numbers;
    /// # impl Source for Numbers {
    /// #     type Item = u32;
    /// #     fn into_producers(self) -> flowstage::Result<Vec<BoxedProducer<u32>>> {
    /// #         Ok(vec![BoxedProducer::new(flowstage::stage::from_iter(0..3u32))])
    /// #     }
    /// # }
    /// let items: Vec<u32> = Flow::from_source(Numbers).collect()?;
    /// assert_eq!(items, [0, 1, 2]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn from_source<S: Source>(source: S) -> Flow<SourceNode<S>> {
        Flow {
            plan: SourceNode {
                source,
                label: "source",
                stages: None,
            },
        }
    }

    /// A flow over one iterator. The stateless chain after it runs on the source's layer
    /// of [`stages`](Flow::stages) stages (one per core by default), which share the
    /// iterator, taking a batch at a time — as Flow's `from_enumerable` feeds its mapper
    /// stages. Output order across stages is not defined; one stage keeps the iterator's.
    /// The iterator (and the closures) may borrow when the flow ends in a blocking
    /// terminal; the events themselves are owned (`'static`) values, as they cross
    /// stages.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let mut doubled: Vec<u32> = Flow::from_iter(1..=3u32).map(|x| x * 2).collect()?;
    /// doubled.sort();
    /// assert_eq!(doubled, [2, 4, 6]);
    /// // Borrowed: the words and the map live on the caller's stack.
    /// let words = vec!["a", "rose", "is", "a", "rose"];
    /// let lengths: std::collections::HashMap<&str, usize> =
    ///     words.iter().map(|w| (*w, w.len())).collect();
    /// let total: usize = Flow::from_iter(words.iter().copied()).map(|w| lengths[w]).sum()?;
    /// assert_eq!(total, 12);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    #[allow(clippy::should_implement_trait)]
    pub fn from_iter<I>(iter: I) -> Flow<IterNode<I::IntoIter>>
    where
        I: IntoIterator,
        I::IntoIter: Send,
        I::Item: Send + 'static,
    {
        Flow {
            plan: IterNode {
                iters: vec![iter.into_iter()],
                label: "from_iter",
                stages: None,
            },
        }
    }

    /// A flow over several iterators, one stage each (the way to read in parallel), or,
    /// with fewer iterators than [`stages`](Flow::stages), shared by the stages. An
    /// empty list is an error when the flow runs.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let mut all: Vec<u32> = Flow::from_iters(vec![1..4u32, 4..7u32])
    ///     .filter(|x| x % 2 == 0)
    ///     .collect()?;
    /// all.sort();
    /// assert_eq!(all, [2, 4, 6]);
    /// assert!(Flow::from_iters(Vec::<std::ops::Range<u32>>::new()).collect::<Vec<_>>().is_err());
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn from_iters<I>(iters: impl IntoIterator<Item = I>) -> Flow<IterNode<I::IntoIter>>
    where
        I: IntoIterator,
        I::IntoIter: Send,
        I::Item: Send + 'static,
    {
        Flow {
            plan: IterNode {
                iters: iters.into_iter().map(IntoIterator::into_iter).collect(),
                label: "from_iters",
                stages: None,
            },
        }
    }

    /// A flow over a rayon parallel iterator: rayon's splits are the source layer's
    /// producers. Each split runs the stateless chain after the source (and the
    /// terminal's per-stage part: for `sum`, its partial sum) on rayon's threads and sends
    /// what it made to the flow's next layer in batches, under backpressure; the items
    /// are read and mapped once, on one pool. The iterator (and the closures) may borrow
    /// when the flow ends in a blocking terminal. A panic in a split ends the run with
    /// `FlowError::StagePanicked`; when the flow ends early, the splits stop.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// use rayon::prelude::*;
    /// let total: u64 = Flow::from_par_iter((1..=100u64).into_par_iter()).sum()?;
    /// assert_eq!(total, 5050);
    /// let words = vec!["flow", "stage", "rayon"];
    /// let letters: usize = Flow::from_par_iter(words.par_iter().map(|w| w.len())).sum()?;
    /// assert_eq!(letters, 14);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn from_par_iter<I>(iter: I) -> Flow<ParIterNode<I::Iter>>
    where
        I: rayon::iter::IntoParallelIterator,
        I::Item: 'static,
    {
        Flow {
            plan: ParIterNode {
                iter: iter.into_par_iter(),
                stages: None,
            },
        }
    }

    /// A flow over any `futures::Stream`, read by one producer. The stream need not be
    /// `Unpin` (one made by `futures::stream::unfold` over an `async` block, say): it is
    /// pinned on the heap once, inside.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let items: Vec<u32> = Flow::from_stream(futures::stream::iter(vec![1u32, 2, 3])).collect()?;
    /// assert_eq!(items, [1, 2, 3]);
    ///
    /// // Not `Unpin`: each item awaits a future.
    /// let doubled = futures::stream::unfold(0u32, |n| async move {
    ///     (n < 3).then(|| (n * 2, n + 1))
    /// });
    /// let items: Vec<u32> = Flow::from_stream(doubled).collect()?;
    /// assert_eq!(items, [0, 2, 4]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn from_stream<S>(stream: S) -> Flow<SourceNode<StreamSource<S>>>
    where
        S: futures::Stream + Send + 'static,
        S::Item: Send + 'static,
    {
        Flow {
            plan: SourceNode {
                source: StreamSource(stream),
                label: "from_stream",
                stages: None,
            },
        }
    }

    /// A flow over the receiving end of a bounded tokio channel; it ends when every
    /// sender is dropped. A slow flow fills the channel, and senders wait.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let (tx, rx) = tokio::sync::mpsc::channel(16);
    /// let feeder = std::thread::spawn(move || {
    ///     for i in 0..100u32 {
    ///         tx.blocking_send(i).unwrap(); // waits while the flow is behind
    ///     }
    /// });
    /// let mut items: Vec<u32> = Flow::from_channel(rx).map(|x| x * 2).collect()?;
    /// feeder.join().unwrap();
    /// items.sort(); // (mapped on one stage per core)
    /// assert_eq!(items, (0..100).map(|x| x * 2).collect::<Vec<_>>());
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn from_channel<T: Send + 'static>(
        rx: tokio::sync::mpsc::Receiver<T>,
    ) -> Flow<SourceNode<crate::source::ChannelSource<T>>> {
        Flow {
            plan: SourceNode {
                source: crate::source::ChannelSource(rx),
                label: "from_channel",
                stages: None,
            },
        }
    }

    /// A flow over an external system that is often empty: `poll(demand)` returns what
    /// is there (`Produced::Events`, possibly empty) or that the source has ended
    /// (`Produced::Finished`). When it had nothing, the runtime keeps the demand and
    /// polls again after `interval` — no busy loop, and no stall.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// use flowstage::stage::Produced;
    /// use std::time::Duration;
    /// let mut polls = 0;
    /// let items: Vec<u32> = Flow::from_poll(
    ///     move |_demand| {
    ///         polls += 1;
    ///         match polls {
    ///             1 | 2 => Produced::Events(vec![]), // nothing yet
    ///             3 => Produced::Events(vec![1, 2]),
    ///             _ => Produced::Finished(vec![3]),
    ///         }
    ///     },
    ///     Duration::from_millis(5),
    /// )
    /// .collect()?;
    /// assert_eq!(items, [1, 2, 3]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn from_poll<T, F>(
        poll: F,
        interval: std::time::Duration,
    ) -> Flow<SourceNode<crate::source::PollSource<F>>>
    where
        T: Send + 'static,
        F: FnMut(usize) -> crate::stage::Produced<T> + Send + 'static,
    {
        Flow {
            plan: SourceNode {
                source: crate::source::PollSource { poll, interval },
                label: "from_poll",
                stages: None,
            },
        }
    }

    /// A flow over user producers from the stage layer, one stage each.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// use flowstage::stage::from_iter;
    /// let mut items: Vec<u32> = Flow::from_stages(vec![from_iter(0..2u32), from_iter(2..4u32)]).collect()?;
    /// items.sort();
    /// assert_eq!(items, [0, 1, 2, 3]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn from_stages<P: crate::stage::Producer>(
        producers: Vec<P>,
    ) -> Flow<SourceNode<StagesSource<P>>> {
        Flow {
            plan: SourceNode {
                source: StagesSource(producers),
                label: "from_stages",
                stages: None,
            },
        }
    }

    /// Joins two bounded flows by key, over the whole input: each left event meets every
    /// right event with an equal key, as `join(Some(&left), Some(&right))`; the outer
    /// `mode`s add the events whose key the other side never had (`join(None,
    /// Some(&right))` as soon as that right event arrives, `join(Some(&left), None)` at
    /// the end). Both sides are partitioned by key over `options.stages` stages.
    ///
    /// It is a hash join: each stage reads its share of the left input to the end first
    /// and holds it, then streams the right input through it — a match is emitted as its
    /// right event arrives, and right events are never held. Put the smaller input on the
    /// left; the left must end. For two unbounded streams, use
    /// [`window_join`](Flow::window_join). See [`join`] for the memory held.
    ///
    /// ```
    /// use flowstage::flow::{Flow, JoinMode, Shuffle};
    /// let left = Flow::from_iter(0..=3u32);
    /// let right = Flow::from_iter(4..=8u32);
    /// let mut pairs: Vec<(Option<u32>, Option<u32>)> = Flow::bounded_join(
    ///     JoinMode::LeftOuter,
    ///     left,
    ///     right,
    ///     |l: &u32| *l,
    ///     |r: &u32| r - 3,
    ///     |l: Option<&u32>, r: Option<&u32>| (l.copied(), r.copied()),
    ///     Shuffle::shuffle().stages(2),
    /// )
    /// .collect()?;
    /// pairs.sort();
    /// assert_eq!(pairs, [(Some(0), None), (Some(1), Some(4)), (Some(2), Some(5)), (Some(3), Some(6))]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn bounded_join<PL, PR, K, KA, KB, F, O>(
        mode: JoinMode,
        left: Flow<PL>,
        right: Flow<PR>,
        left_key: KA,
        right_key: KB,
        join: F,
        options: Shuffle,
    ) -> Flow<JoinNode<PL, PR, KA, KB, F, Side<PL::Item, PR::Item>>>
    where
        PL: Plan,
        PR: Plan,
        K: Hash + Eq + Send + 'static,
        KA: Fn(&PL::Item) -> K + Send + Sync,
        KB: Fn(&PR::Item) -> K + Send + Sync,
        F: Fn(Option<&PL::Item>, Option<&PR::Item>) -> O + Send + Sync,
        O: Send + 'static,
    {
        Flow {
            plan: JoinNode {
                mode,
                left: left.plan,
                right: right.plan,
                left_key: Arc::new(left_key),
                right_key: Arc::new(right_key),
                join: Arc::new(join),
                window: None,
                options,
            },
        }
    }

    /// Joins two flows by key within each window of `window` (which sees both sides'
    /// events as [`Side`]s): as [`bounded_join`](Flow::bounded_join), but events only meet
    /// inside one window, unmatched events are emitted when their window fires `Done`,
    /// and each window's state is dropped then.
    ///
    /// ```
    /// use flowstage::flow::{Flow, JoinMode, Shuffle, Side};
    /// use flowstage::window::Window;
    /// use std::time::Duration;
    /// // (key, timestamp in ms)
    /// let clicks = Flow::from_iter(vec![(1u32, 5i64), (2, 12)]);
    /// let views = Flow::from_iter(vec![(1u32, 7i64), (2, 8)]);
    /// let window = Window::fixed(Duration::from_millis(10), |e: &Side<(u32, i64), (u32, i64)>| match e {
    ///     Side::Left((_, ts)) | Side::Right((_, ts)) => *ts,
    /// });
    /// let pairs: Vec<u32> = Flow::window_join(
    ///     JoinMode::Inner, clicks, views, window,
    ///     |c: &(u32, i64)| c.0, |v: &(u32, i64)| v.0,
    ///     |c: Option<&(u32, i64)>, _v: Option<&(u32, i64)>| c.map_or(0, |c| c.0),
    ///     Shuffle::shuffle().stages(1),
    /// )
    /// .collect()?;
    /// assert_eq!(pairs, [1]); // key 2's events fall in different windows
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    pub fn window_join<PL, PR, K, KA, KB, F, O>(
        mode: JoinMode,
        left: Flow<PL>,
        right: Flow<PR>,
        window: Window<Side<PL::Item, PR::Item>>,
        left_key: KA,
        right_key: KB,
        join: F,
        options: Shuffle,
    ) -> Flow<JoinNode<PL, PR, KA, KB, F, Side<PL::Item, PR::Item>>>
    where
        PL: Plan,
        PR: Plan,
        K: Hash + Eq + Send + 'static,
        KA: Fn(&PL::Item) -> K + Send + Sync,
        KB: Fn(&PR::Item) -> K + Send + Sync,
        F: Fn(Option<&PL::Item>, Option<&PR::Item>) -> O + Send + Sync,
        O: Send + 'static,
    {
        let mut flow = Flow::bounded_join(mode, left, right, left_key, right_key, join, options);
        flow.plan.window = Some(window);
        flow
    }

    /// Several flows into one new layer of stages (options as for
    /// [`shuffle`](Flow::shuffle)).
    ///
    /// ```
    /// use flowstage::flow::{Flow, Shuffle};
    /// let evens = Flow::from_iter(vec![0u32, 2, 4]);
    /// let odds = Flow::from_iter(vec![1u32, 3, 5]);
    /// let mut all: Vec<u32> = Flow::merge(vec![evens, odds], Shuffle::shuffle().stages(2)).collect()?;
    /// all.sort();
    /// assert_eq!(all, [0, 1, 2, 3, 4, 5]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn merge<P: Plan>(flows: Vec<Flow<P>>, options: Shuffle) -> Flow<Merge<P>> {
        Flow {
            plan: Merge::new(flows.into_iter().map(|flow| flow.plan).collect(), &options),
        }
    }
}

impl<P: Plan> Flow<P> {
    /// Applies `f` to each event (fused into the current stage).
    pub fn map<U, F>(self, f: F) -> Flow<MapNode<P, F>>
    where
        U: Send + 'static,
        F: Fn(P::Item) -> U + Send + Sync,
    {
        Flow {
            plan: MapNode::new(self.plan, f),
        }
    }

    /// Maps each event to any number of events (fused).
    pub fn flat_map<I, F>(self, f: F) -> Flow<FlatMapNode<P, F>>
    where
        I: IntoIterator,
        I::Item: Send + 'static,
        F: Fn(P::Item) -> I + Send + Sync,
    {
        Flow {
            plan: FlatMapNode::new(self.plan, f),
        }
    }

    /// Keeps the events for which `predicate` is true (fused).
    pub fn filter<F>(self, predicate: F) -> Flow<FilterNode<P, F>>
    where
        F: Fn(&P::Item) -> bool + Send + Sync,
    {
        Flow {
            plan: FilterNode::new(self.plan, predicate),
        }
    }

    /// Drops the events for which `predicate` is true (fused).
    pub fn reject<F>(self, predicate: F) -> Flow<RejectNode<P, F>>
    where
        F: Fn(&P::Item) -> bool + Send + Sync,
    {
        Flow {
            plan: RejectNode::new(self.plan, predicate),
        }
    }

    /// Maps and keeps the `Some`s (fused).
    pub fn filter_map<U, F>(self, f: F) -> Flow<FilterMapNode<P, F>>
    where
        U: Send + 'static,
        F: Fn(P::Item) -> Option<U> + Send + Sync,
    {
        Flow {
            plan: FilterMapNode::new(self.plan, f),
        }
    }

    /// Calls `f` on each event and passes it on (fused).
    pub fn inspect<F>(self, f: F) -> Flow<InspectNode<P, F>>
    where
        F: Fn(&P::Item) + Send + Sync,
    {
        Flow {
            plan: InspectNode::new(self.plan, f),
        }
    }

    /// Maps the value of `(key, value)` events (fused).
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let pairs: Vec<(char, u32)> = Flow::from_iter(vec![('a', 1), ('b', 2)]).map_values(|v| v * 10).collect()?;
    /// assert_eq!(pairs, [('a', 10), ('b', 20)]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn map_values<K, V, W, F>(
        self,
        f: F,
    ) -> Flow<MapNode<P, impl Fn((K, V)) -> (K, W) + Send + Sync>>
    where
        P: Plan<Item = (K, V)>,
        K: Send + 'static,
        W: Send + 'static,
        F: Fn(V) -> W + Send + Sync,
    {
        self.map(move |(key, value)| (key, f(value)))
    }

    /// Keeps the first event of each key, per stage.
    pub fn uniq_by<K, F>(self, key: F) -> Flow<UniqNode<P, F>>
    where
        K: Hash + Eq + Send + 'static,
        F: Fn(&P::Item) -> K + Send + Sync,
    {
        Flow {
            plan: UniqNode {
                inner: self.plan,
                key: Arc::new(key),
            },
        }
    }

    /// Keeps the first of equal events, per stage.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let items: Vec<u32> = Flow::from_iter(vec![1u32, 2, 1, 3, 2]).uniq().collect()?;
    /// assert_eq!(items, [1, 2, 3]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn uniq(self) -> Flow<UniqNode<P, impl Fn(&P::Item) -> P::Item + Send + Sync>>
    where
        P::Item: Hash + Eq + Clone,
    {
        self.uniq_by(P::Item::clone)
    }

    /// A new layer of stages; each event goes to the stage its key hashes to. The
    /// options' [`window`](Partition::window) splits each stage's events in time for the
    /// reduce family.
    pub fn partition<R, W>(self, options: Partition<R, W>) -> Flow<Exchange<P, R, W>>
    where
        R: Route<P::Item>,
        W: LayerWindow<P::Item>,
    {
        Flow {
            plan: Exchange {
                inner: self.plan,
                error: options.validate(),
                min_demand: options.min(),
                route: Some(Arc::new(options.route)),
                stages: options.stages,
                max_demand: options.max_demand,
                window: options.window,
                label: "partition",
            },
        }
    }

    /// [`partition`](Flow::partition) by the hash of `key(event)`: the same as
    /// `partition(Partition::by_key(key)..)`, with the key given here, where the event type
    /// is known — a closure needs no annotation.
    ///
    /// ```
    /// use flowstage::flow::{Flow, Partition};
    /// let pairs = vec![("a", 1), ("b", 2), ("a", 3)];
    /// let mut sums: Vec<(&str, i32)> = Flow::from_iter(pairs)
    ///     .partition_by_key(|pair| pair.0, Partition::new().stages(2))
    ///     .reduce_mut(std::collections::HashMap::new, |(key, value), sums| {
    ///         *sums.entry(key).or_insert(0) += value;
    ///     })
    ///     .collect()?;
    /// sums.sort();
    /// assert_eq!(sums, [("a", 4), ("b", 2)]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn partition_by_key<K, F, W>(
        self,
        key: F,
        options: Partition<HashEvent, W>,
    ) -> Flow<Exchange<P, ByKey<F>, W>>
    where
        K: Hash,
        F: Fn(&P::Item) -> K + Send + Sync + 'static,
        W: LayerWindow<P::Item>,
    {
        self.partition(options.keyed(key))
    }

    /// A new layer of stages behind the demand dispatcher (no keys), optionally windowed.
    pub fn shuffle<W>(self, options: Shuffle<W>) -> Flow<Exchange<P, NoRoute, W>>
    where
        W: LayerWindow<P::Item>,
    {
        let options = options.0;
        Flow {
            plan: Exchange {
                inner: self.plan,
                error: options.validate(),
                min_demand: options.min(),
                route: None,
                stages: options.stages,
                max_demand: options.max_demand,
                window: options.window,
                label: "shuffle",
            },
        }
    }

    /// Folds the events of each stage (and window) into an accumulator started by `init`;
    /// emits at each trigger — by default the accumulator's items (for a map: its pairs),
    /// keeping the accumulator for the window's next trigger. Change what is emitted with
    /// [`emit_state`](Flow::emit_state), [`emit_nothing`](Flow::emit_nothing) or
    /// [`on_trigger`](Flow::on_trigger) (which also decides keep or reset). The keeping
    /// shorthands, the default included, need `Acc: Clone` (a trigger before `Done` emits
    /// a copy); an accumulator that cannot be cloned is emitted with `on_trigger`.
    ///
    /// ```
    /// use flowstage::flow::{Flow, Partition};
    /// let sums: Vec<u64> = Flow::from_iter(1..=10u64)
    ///     .partition(Partition::new().stages(1))
    ///     .reduce(|| 0u64, |x, sum| sum + x)
    ///     .emit_state()
    ///     .collect()?;
    /// assert_eq!(sums, [55]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    ///
    /// A layer holds one reducer (of the reduce family, or `take_sort`'s per-partition
    /// part); operations after it apply to what it emits. A second one in the same layer
    /// does not build — “reduce after another reduce in the same layer ... call
    /// `shuffle()` or `partition()` before reduce” — checked when rustc instantiates the
    /// flow (`cargo build`/`test`, not `cargo check`):
    ///
    /// ```compile_fail
    /// use flowstage::flow::{Flow, Partition};
    /// let sums: Vec<u64> = Flow::from_iter(1..=10u64)
    ///     .partition(Partition::new().stages(2))
    ///     .reduce(|| 0u64, |x, sum| sum + x)
    ///     .emit_state()
    ///     .map(|sum| sum * 2)
    ///     .reduce(|| 0u64, |x, sum| sum + x) // needs `.partition(..)` or `.shuffle(..)` before
    ///     .emit_state()
    ///     .collect()?;
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn reduce<Acc, I, F>(
        self,
        init: I,
        f: F,
    ) -> Flow<ReduceNode<P, Acc, I, Fold<F>, EmitEvents>>
    where
        Acc: Send,
        I: Fn() -> Acc + Send + Sync,
        F: Fn(P::Item, Acc) -> Acc + Send + Sync,
    {
        one_reducer_per_layer!(P, "reduce");
        Flow {
            plan: ReduceNode {
                inner: self.plan,
                init: Arc::new(init),
                step: Arc::new(Fold(f)),
                emit: Arc::new(EmitEvents),
                finish: |_| {},
                label: "reduce",
            },
        }
    }

    /// [`reduce`](Flow::reduce) with the accumulator updated in place: `f(event, &mut
    /// acc)` (as `Iterator::for_each` over a `&mut` accumulator, rather than `fold`). The same results and triggers as `reduce`; use it
    /// when the accumulator is large (a map, a `Vec`): `reduce` moves it through `f` on
    /// every event, which a cheap step pays for — a keyed sum into a hash map spends
    /// about a fifth of its time moving the map.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use flowstage::flow::{Flow, Partition};
    /// let mut counts: Vec<(char, u64)> = Flow::from_iter("hello world".chars())
    ///     .partition(Partition::by_key(|c: &char| *c).stages(2))
    ///     .reduce_mut(HashMap::new, |c, counts: &mut HashMap<char, u64>| {
    ///         *counts.entry(c).or_default() += 1;
    ///     })
    ///     .collect()?;
    /// counts.sort();
    /// assert_eq!(counts[..3], [(' ', 1), ('d', 1), ('e', 1)]);
    /// assert_eq!(counts.iter().find(|(c, _)| *c == 'l'), Some(&('l', 3)));
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn reduce_mut<Acc, I, F>(
        self,
        init: I,
        f: F,
    ) -> Flow<ReduceNode<P, Acc, I, FoldMut<F>, EmitEvents>>
    where
        Acc: Send,
        I: Fn() -> Acc + Send + Sync,
        F: Fn(P::Item, &mut Acc) + Send + Sync,
    {
        one_reducer_per_layer!(P, "reduce_mut");
        Flow {
            plan: ReduceNode {
                inner: self.plan,
                init: Arc::new(init),
                step: Arc::new(FoldMut(f)),
                emit: Arc::new(EmitEvents),
                finish: |_| {},
                label: "reduce_mut",
            },
        }
    }

    /// Like [`reduce`](Flow::reduce), and `f` also emits events as it goes:
    /// `f(event, acc) -> (events, acc)`. At triggers nothing more is emitted unless
    /// [`on_trigger`](Flow::on_trigger) says so.
    ///
    /// ```
    /// use flowstage::flow::{Flow, Partition};
    /// let running: Vec<u64> = Flow::from_iter(1..=4u64)
    ///     .partition(Partition::new().stages(1))
    ///     .emit_and_reduce(|| 0u64, |x, sum| (vec![sum + x], sum + x))
    ///     .collect()?;
    /// assert_eq!(running, [1, 3, 6, 10]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn emit_and_reduce<Acc, U, E, I, F>(
        self,
        init: I,
        f: F,
    ) -> Flow<ReduceNode<P, Acc, I, FoldEmit<F>, EmitNothing<U>>>
    where
        Acc: Send,
        U: Send + 'static,
        E: IntoIterator<Item = U>,
        I: Fn() -> Acc + Send + Sync,
        F: Fn(P::Item, Acc) -> (E, Acc) + Send + Sync,
    {
        one_reducer_per_layer!(P, "emit_and_reduce");
        Flow {
            plan: ReduceNode {
                inner: self.plan,
                init: Arc::new(init),
                step: Arc::new(FoldEmit(f)),
                emit: Arc::new(EmitNothing(PhantomData)),
                finish: |_| {},
                label: "emit_and_reduce",
            },
        }
    }

    /// Groups values by key, per stage: `key → values`, newest first.
    ///
    /// ```
    /// use flowstage::flow::{Flow, Partition};
    /// let words = vec!["apple", "avocado", "banana"];
    /// let mut groups: Vec<(char, Vec<&str>)> = Flow::from_iter(words)
    ///     .partition(Partition::new().stages(1))
    ///     .group_by(|w: &&str| w.chars().next().unwrap_or(' '), |w| w)
    ///     .collect()?;
    /// groups.sort();
    /// assert_eq!(groups, [('a', vec!["avocado", "apple"]), ('b', vec!["banana"])]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn group_by<K, V, KF, VF>(
        self,
        key: KF,
        value: VF,
    ) -> Flow<
        ReduceNode<
            P,
            HashMap<K, Vec<V>>,
            fn() -> HashMap<K, Vec<V>>,
            FoldMut<impl Fn(P::Item, &mut HashMap<K, Vec<V>>) + Send + Sync>,
            EmitEvents,
        >,
    >
    where
        K: Hash + Eq + Send + 'static,
        V: Send + 'static,
        KF: Fn(&P::Item) -> K + Send + Sync,
        VF: Fn(P::Item) -> V + Send + Sync,
    {
        one_reducer_per_layer!(P, "group_by");
        let fold = move |event: P::Item, groups: &mut HashMap<K, Vec<V>>| {
            let key = key(&event);
            groups.entry(key).or_default().push(value(event));
        };
        Flow {
            plan: ReduceNode {
                inner: self.plan,
                init: Arc::new(HashMap::new as fn() -> HashMap<K, Vec<V>>),
                step: Arc::new(FoldMut(fold)),
                emit: Arc::new(EmitEvents),
                finish: reduce::newest_first,
                label: "group_by",
            },
        }
    }

    /// Groups `(key, value)` events by key: [`group_by`](Flow::group_by) on pairs.
    ///
    /// ```
    /// use flowstage::flow::{Flow, Partition};
    /// let events = vec![("foo", 1), ("foo", 2), ("bar", 3), ("foo", 4), ("bar", 5)];
    /// let state: Vec<_> = Flow::from_iter(events)
    ///     .partition(Partition::new().stages(1))
    ///     .group_by_key()
    ///     .emit_state()
    ///     .collect()?;
    /// assert_eq!(state[0]["foo"], [4, 2, 1]);
    /// assert_eq!(state[0]["bar"], [5, 3]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    #[allow(clippy::type_complexity)]
    pub fn group_by_key<K, V>(
        self,
    ) -> Flow<
        ReduceNode<
            P,
            HashMap<K, Vec<V>>,
            fn() -> HashMap<K, Vec<V>>,
            FoldMut<impl Fn((K, V), &mut HashMap<K, Vec<V>>) + Send + Sync>,
            EmitEvents,
        >,
    >
    where
        P: Plan<Item = (K, V)>,
        K: Hash + Eq + Send + 'static,
        V: Send + 'static,
    {
        one_reducer_per_layer!(P, "group_by_key");
        let fold = |(key, value): (K, V), groups: &mut HashMap<K, Vec<V>>| {
            groups.entry(key).or_default().push(value);
        };
        Flow {
            plan: ReduceNode {
                inner: self.plan,
                init: Arc::new(HashMap::new as fn() -> HashMap<K, Vec<V>>),
                step: Arc::new(FoldMut(fold)),
                emit: Arc::new(EmitEvents),
                finish: reduce::newest_first,
                label: "group_by_key",
            },
        }
    }

    /// One stage merging what every partition emits, per window: `merge(event, acc)` into
    /// an accumulator started by `init`; when every partition has closed the window
    /// (fired its `Done`), emits `done(acc, window)` — the window it closes, as Flow's
    /// arity-2 `done` gets it — as that window's one event and `Done`.
    ///
    /// ```
    /// use flowstage::flow::{Flow, Partition};
    /// let sums: Vec<Vec<u64>> = Flow::from_iter(1..=10u64)
    ///     .partition(Partition::new().stages(4))
    ///     .reduce(|| 0u64, |x, sum| sum + x)
    ///     .emit_state()
    ///     .departition(Vec::new, |sum, mut sums: Vec<u64>| { sums.push(sum); sums }, |mut sums, _window| { sums.sort(); sums })
    ///     .collect()?;
    /// assert_eq!(sums.len(), 1);
    /// assert_eq!(sums[0].len(), 4);
    /// assert_eq!(sums[0].iter().sum::<u64>(), 55);
    ///
    /// // Per window: `done` learns which one it closes.
    /// use flowstage::window::Window;
    /// let mut per_window: Vec<(i64, u64)> = Flow::from_iter(1..=10u64)
    ///     .partition(Partition::new().stages(2).window(Window::fixed(
    ///         std::time::Duration::from_millis(5),
    ///         |x: &u64| *x as i64,
    ///     )))
    ///     .reduce(|| 0u64, |x, sum| sum + x)
    ///     .emit_state()
    ///     .departition(|| 0u64, |sum, total| total + sum, |total, window| (window.id, total))
    ///     .collect()?;
    /// per_window.sort();
    /// assert_eq!(per_window, [(0, 10), (5, 35), (10, 10)]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn departition<Acc, U, I, M, D>(
        self,
        init: I,
        merge: M,
        done: D,
    ) -> Flow<DepartitionNode<P, I, M, D>>
    where
        Acc: Send,
        U: Send + 'static,
        I: Fn() -> Acc + Send + Sync,
        M: Fn(P::Item, Acc) -> Acc + Send + Sync,
        D: Fn(Acc, &WindowInfo) -> U + Send + Sync,
    {
        Flow {
            plan: DepartitionNode {
                inner: self.plan,
                init: Arc::new(init),
                merge: Arc::new(merge),
                done: Arc::new(done),
            },
        }
    }

    /// The `n` smallest events by `cmp`, sorted, as one list: top `n` per partition, then
    /// one merging stage. Equal to sorting everything and taking `n`.
    ///
    /// ```
    /// use flowstage::flow::{Flow, Partition};
    /// let top: Vec<Vec<u32>> = Flow::from_iter(vec![5u32, 1, 9, 3, 7])
    ///     .partition(Partition::new().stages(2))
    ///     .take_sort(3, |a, b| b.cmp(a))
    ///     .collect()?;
    /// assert_eq!(top, [vec![9, 7, 5]]);
    ///
    /// // The top 2 of a reduce's output: a new layer first.
    /// use flowstage::flow::Shuffle;
    /// let sales = vec![("tea", 3), ("coffee", 5), ("tea", 4), ("juice", 1)];
    /// let top: Vec<Vec<(&str, i32)>> = Flow::from_iter(sales)
    ///     .reduce_by_key(|a, b| a + b, Partition::new().stages(2))
    ///     .shuffle(Shuffle::shuffle())
    ///     .take_sort(2, |a, b| b.1.cmp(&a.1))
    ///     .collect()?;
    /// assert_eq!(top, [vec![("tea", 7), ("coffee", 5)]]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    ///
    /// Its per-partition part runs in the layer before it, which can hold one reducer:
    /// right after a reduce, `take_sort` does not build (“take_sort after another reduce
    /// in the same layer ... call `shuffle()` or `partition()` before take_sort”):
    ///
    /// ```compile_fail
    /// use flowstage::flow::{Flow, Partition};
    /// let sales = vec![("tea", 3), ("coffee", 5), ("tea", 4), ("juice", 1)];
    /// let top: Vec<Vec<(&str, i32)>> = Flow::from_iter(sales)
    ///     .reduce_by_key(|a, b| a + b, Partition::new().stages(2))
    ///     .take_sort(2, |a, b| b.1.cmp(&a.1))
    ///     .collect()?;
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn take_sort<C>(self, n: usize, cmp: C) -> Flow<TakeSortNode<P, C>>
    where
        C: Fn(&P::Item, &P::Item) -> Ordering + Send + Sync,
    {
        one_reducer_per_layer!(P, "take_sort");
        Flow {
            plan: TakeSortNode {
                inner: self.plan,
                n,
                cmp: Arc::new(cmp),
            },
        }
    }

    fn compile<'a>(
        self,
        pipeline: Pipeline,
    ) -> Result<(Compiler<'a>, Vec<compile::Output<P::Item>>)>
    where
        P: 'a,
    {
        let mut compiler = Compiler::new(pipeline);
        let outputs = self
            .plan
            .compile(&mut compiler, Identity::new(), &DispatchSpec::demand())?;
        Ok((compiler, outputs))
    }

    /// The compiled stage graph: which operators fused into which stage, dispatchers,
    /// partitions. Compiles the flow without running it.
    pub fn explain(self) -> Result<Explain> {
        let (compiler, _) = self.compile(Pipeline::new())?;
        Ok(Explain {
            graph: compiler.graph,
        })
    }

    /// Compiles the flow into `pipeline` and returns its outputs, for user consumers to
    /// subscribe to.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// use flowstage::stage::{Pipeline, SubscribeOptions, consumer_fn};
    /// use std::sync::{Arc, Mutex};
    /// let seen = Arc::new(Mutex::new(0u32));
    /// let sum = seen.clone();
    /// let mut pipeline = Pipeline::new();
    /// let outputs = Flow::from_iter(1..=4u32).map(|x| x * x).into_stages(&mut pipeline)?;
    /// let sink = pipeline.consumer(consumer_fn(move |batch: Vec<u32>| *sum.lock().unwrap() += batch.iter().sum::<u32>()));
    /// for output in &outputs {
    ///     pipeline.subscribe(&sink, output, SubscribeOptions::new())?;
    /// }
    /// pipeline.run()?;
    /// assert_eq!(*seen.lock().unwrap(), 30);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn into_stages(self, pipeline: &mut Pipeline) -> Result<Vec<ProducerRef<P::Item>>>
    where
        P: 'static,
    {
        let taken = std::mem::take(pipeline);
        let (compiler, outputs) = self.compile(taken)?;
        *pipeline = compiler.pipeline.into_pipeline();
        Ok(outputs.into_iter().map(|output| output.producer).collect())
    }

    /// Runs the flow for its side effects, discarding its events; returns the run's
    /// per-stage counters. Blocks.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let report = Flow::from_iter(0..100u32).filter(|x| x % 2 == 0).run()?;
    /// // The filter ran on the source's stages (one per core).
    /// let kept: u64 = report
    ///     .stages
    ///     .iter()
    ///     .filter(|stage| stage.stage.name.starts_with("from_iter"))
    ///     .map(|stage| stage.events_out)
    ///     .sum();
    /// assert_eq!(kept, 50);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn run(self) -> Result<Report> {
        let (compiler, outputs) = self.compile(Pipeline::new())?;
        sink::discard(compiler.pipeline, outputs)?.run()
    }

    /// Runs the flow on the caller's tokio runtime, discarding its events.
    pub async fn run_async(self) -> Result<Report>
    where
        P: 'static,
    {
        let (compiler, outputs) = self.compile(Pipeline::new())?;
        sink::discard(compiler.pipeline, outputs)?
            .into_pipeline()
            .run_async()
            .await
    }

    /// Starts the flow on the caller's tokio runtime, discarding its events, and returns
    /// the running handle: read [`Running::metrics`] while it runs.
    pub fn spawn(self) -> Result<Running>
    where
        P: 'static,
    {
        let (compiler, outputs) = self.compile(Pipeline::new())?;
        sink::discard(compiler.pipeline, outputs)?
            .into_pipeline()
            .spawn()
    }

    /// Runs the flow as an async stream of its events on the caller's tokio runtime. A
    /// failed run ends the stream with one `Err`. Dropping the stream stops the flow.
    pub fn into_stream(self) -> Result<FlowStream<P::Item>>
    where
        P: 'static,
    {
        let (compiler, outputs) = self.compile(Pipeline::new())?;
        sink::stream(compiler.pipeline, outputs)
    }
}

impl<P> Flow<P> {
    /// The flow's plan, for a backend to build (the cluster's).
    #[cfg(feature = "timely")]
    pub(crate) fn into_plan(self) -> P {
        self.plan
    }
}

impl<P: StageHead> Flow<P> {
    /// Maps each whole batch (a `Vec` of events) to events; only as the first operation
    /// of a stage (directly after a source, `partition`, `shuffle` or `merge`).
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let sizes: Vec<usize> = Flow::from_iter(0..10u32).map_batch(|batch| vec![batch.len()]).collect()?;
    /// assert_eq!(sizes.iter().sum::<usize>(), 10);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn map_batch<I, F>(self, f: F) -> Flow<MapBatchNode<P, F>>
    where
        I: IntoIterator,
        I::Item: Send + 'static,
        F: Fn(Vec<P::Item>) -> I + Send + Sync,
    {
        Flow {
            plan: MapBatchNode::new(self.plan, f),
        }
    }
}

impl<P, Acc, I, S, E> Flow<ReduceNode<P, Acc, I, S, E>> {
    /// At each trigger, emit the accumulator itself, and **keep** it: the next trigger of
    /// the window emits everything so far (Flow's `emit(:state)`). A trigger other than
    /// `Done` emits a clone; `Done` hands the accumulator over. To start afresh at each
    /// trigger instead, use [`on_trigger`](Flow::on_trigger).
    ///
    /// ```
    /// use flowstage::flow::{Flow, Partition};
    /// use flowstage::window::Window;
    /// let running: Vec<u64> = Flow::from_iter(1..=6u64)
    ///     .partition(Partition::new().stages(1).window(Window::global().trigger_every(2)))
    ///     .reduce(|| 0u64, |x, sum| sum + x)
    ///     .emit_state()
    ///     .collect()?;
    /// assert_eq!(running, [3, 10, 21, 21]); // after 2, 4, 6 events, then `Done`
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn emit_state(self) -> Flow<ReduceNode<P, Acc, I, S, EmitState>>
    where
        Acc: Clone,
    {
        Flow {
            plan: self.plan.with_emit(EmitState),
        }
    }

    /// At each trigger, emit the accumulator's items (the default of `reduce`), and
    /// **keep** the accumulator, as [`emit_state`](Flow::emit_state) does (Flow's
    /// `emit(:events)`).
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use flowstage::flow::{Flow, Partition};
    /// use flowstage::window::Window;
    /// let counts: Vec<(bool, u32)> = Flow::from_iter(1..=4u32)
    ///     .partition(Partition::new().stages(1).window(Window::global().trigger_every(2)))
    ///     .reduce_mut(BTreeMap::new, |x, counts| *counts.entry(x % 2 == 0).or_insert(0) += 1)
    ///     .emit_events()
    ///     .collect()?;
    /// // After 2 events, after 4, then at `Done`: the counts so far each time.
    /// assert_eq!(counts, [(false, 1), (true, 1), (false, 2), (true, 2), (false, 2), (true, 2)]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn emit_events(self) -> Flow<ReduceNode<P, Acc, I, S, EmitEvents>>
    where
        Acc: Clone,
    {
        Flow {
            plan: self.plan.with_emit(EmitEvents),
        }
    }

    /// At each trigger, emit nothing, and **keep** the accumulator (Flow's
    /// `emit(:nothing)`): for a reduce whose effects are its own (it writes somewhere
    /// itself), or an [`emit_and_reduce`](Flow::emit_and_reduce)'s.
    ///
    /// ```
    /// use flowstage::flow::{Flow, Partition};
    /// let nothing: Vec<u64> = Flow::from_iter(1..=6u64)
    ///     .partition(Partition::new().stages(1))
    ///     .reduce(|| 0u64, |x, sum| sum + x)
    ///     .emit_nothing()
    ///     .collect()?;
    /// assert!(nothing.is_empty());
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn emit_nothing<U>(self) -> Flow<ReduceNode<P, Acc, I, S, EmitNothing<U>>> {
        Flow {
            plan: self.plan.with_emit(EmitNothing(PhantomData)),
        }
    }

    /// At each trigger, `f(acc, partition, trigger) -> (events, new_acc)`: returning a
    /// fresh accumulator **resets**, returning `acc` **keeps** it. On `Done` the returned
    /// accumulator is dropped. Needs no `Acc: Clone`.
    ///
    /// ```
    /// use flowstage::flow::{Flow, Partition};
    /// use flowstage::window::Window;
    /// let every_two = || {
    ///     Flow::from_iter(1..=6u64)
    ///         .partition(Partition::new().stages(1).window(Window::global().trigger_every(2)))
    ///         .reduce(|| 0u64, |x, sum| sum + x)
    /// };
    /// // Reset: each trigger emits the sum since the previous one.
    /// let reset: Vec<u64> = every_two().on_trigger(|sum, _, _| (vec![sum], 0)).collect()?;
    /// assert_eq!(reset, [3, 7, 11, 0]);
    /// // Keep: each trigger emits the sum so far (what `emit_state` does).
    /// let keep: Vec<u64> = every_two().on_trigger(|sum, _, _| (vec![sum], sum)).collect()?;
    /// assert_eq!(keep, [3, 10, 21, 21]);
    /// // The partition the stage is, and which trigger fired:
    /// let tagged: Vec<(usize, bool)> = every_two()
    ///     .on_trigger(|_, partition, trigger| (vec![(partition.index, trigger.is_done())], 0))
    ///     .collect()?;
    /// assert_eq!(tagged, [(0, false), (0, false), (0, false), (0, true)]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn on_trigger<U, Es, F>(self, f: F) -> Flow<ReduceNode<P, Acc, I, S, OnTrigger<F>>>
    where
        Es: IntoIterator<Item = U>,
        F: Fn(Acc, PartitionInfo, &Trigger) -> (Es, Acc) + Send + Sync,
    {
        Flow {
            plan: self.plan.with_emit(OnTrigger(f)),
        }
    }
}

impl<P: Plan + 'static> IntoIterator for Flow<P> {
    type Item = Result<P::Item>;
    type IntoIter = FlowIter<P::Item>;

    /// Runs the flow in the background and iterates over its events as they come,
    /// blocking; a failed run ends the iteration with one `Err`. Dropping the iterator
    /// stops the flow.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let mut total = 0u64;
    /// for x in Flow::from_iter(1..=10u64).map(|x| x * x) {
    ///     total += x?;
    /// }
    /// assert_eq!(total, 385);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    fn into_iter(self) -> FlowIter<P::Item> {
        match self.compile(Pipeline::new()) {
            Ok((compiler, outputs)) => sink::iter(compiler.pipeline, outputs),
            Err(error) => FlowIter::failed(error),
        }
    }
}

// ETL operators: fallible operators with error policies, batching, consumer sinks.
impl<P: Plan> Flow<P> {
    /// Applies a fallible `f` to each event (fused). What an `Err` does is the operator's
    /// [`ErrorPolicy`], set with [`on_error`](Flow::on_error): by default it ends the run
    /// with the error, naming the stage and the operator. `f` takes the event by value, so
    /// a good event moves into its result without a clone, and gives it back in its `Err`
    /// (a [`Rejected`], or an `(event, error)` pair) for a dead-letter consumer.
    ///
    /// ```
    /// use flowstage::flow::{ErrorPolicy, Flow};
    /// let numbers: Vec<u32> = Flow::from_iter(["1", "2", "x"])
    ///     .try_map(|s: &str| s.parse::<u32>().map_err(|e| (s, e)))
    ///     .on_error(ErrorPolicy::skip())
    ///     .collect()?;
    /// assert_eq!(numbers, [1, 2]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn try_map<U, R, F>(self, f: F) -> Flow<TryMapNode<P, F>>
    where
        U: Send + 'static,
        R: Into<Rejected<P::Item>> + 'static,
        F: Fn(P::Item) -> std::result::Result<U, R> + Send + Sync,
    {
        Flow {
            plan: TryMapNode::new(self.plan, f),
        }
    }

    /// Maps each event to any number of events with a fallible `f` (fused); errors as for
    /// [`try_map`](Flow::try_map).
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let digits: Vec<u32> = Flow::from_iter(["12", "3"])
    ///     .try_flat_map(|s: &str| {
    ///         s.chars().map(|c| c.to_digit(10).ok_or("not a digit")).collect::<Result<Vec<_>, _>>().map_err(|e| (s, e))
    ///     })
    ///     .collect()?;
    /// assert_eq!(digits, [1, 2, 3]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn try_flat_map<I, R, F>(self, f: F) -> Flow<TryFlatMapNode<P, F>>
    where
        I: IntoIterator,
        I::Item: Send + 'static,
        R: Into<Rejected<P::Item>> + 'static,
        F: Fn(P::Item) -> std::result::Result<I, R> + Send + Sync,
    {
        Flow {
            plan: TryFlatMapNode::new(self.plan, f),
        }
    }
}

// Steps that await or block: stages of their own, under demand.
impl<P: Plan> Flow<P> {
    /// Maps each event with an async `f` — a call to a service or a database — keeping
    /// up to `concurrency` calls in flight per stage, and emitting the results in input
    /// order (as futures' `buffered`; [`unordered`](Flow::unordered) emits them as they
    /// complete, as `buffer_unordered`). The step runs in a stage of its own behind each
    /// output of the layer before it (so `concurrency` is per stage: a flow read by 4
    /// readers has up to `4 * concurrency` calls in flight), with the operators after it
    /// fused into that stage. It takes events only as its own consumers ask: a slow
    /// service slows the sources, and what is in flight stays bounded. `concurrency` 0
    /// is an error when the flow runs.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// use std::time::Duration;
    ///
    /// async fn price(sku: u32) -> u64 {
    ///     tokio::time::sleep(Duration::from_millis(1)).await; // the remote call
    ///     u64::from(sku) * 100
    /// }
    /// let prices: Vec<u64> = Flow::from_iter(1..=50u32).map_async(16, price).collect()?;
    /// assert_eq!(prices, (1..=50).map(|sku| sku * 100).collect::<Vec<u64>>());
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn map_async<U, Fut, F>(self, concurrency: usize, f: F) -> Flow<AsyncNode<P, F, AsIs>>
    where
        U: Send + 'static,
        Fut: std::future::Future<Output = U> + Send + 'static,
        F: Fn(P::Item) -> Fut + Send + Sync + 'static,
    {
        Flow {
            plan: AsyncNode::new(self.plan, f, concurrency, AsIs, "map_async"),
        }
    }

    /// Maps each event to any number of events with an async `f`; otherwise as
    /// [`map_async`](Flow::map_async).
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let pages: Vec<u32> = Flow::from_iter([2u32, 3])
    ///     .flat_map_async(4, |pages| async move { (1..=pages).collect::<Vec<u32>>() })
    ///     .collect()?;
    /// assert_eq!(pages, [1, 2, 1, 2, 3]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn flat_map_async<I, Fut, F>(
        self,
        concurrency: usize,
        f: F,
    ) -> Flow<AsyncNode<P, F, Flatten>>
    where
        I: IntoIterator + Send + 'static,
        I::Item: Send + 'static,
        Fut: std::future::Future<Output = I> + Send + 'static,
        F: Fn(P::Item) -> Fut + Send + Sync + 'static,
    {
        Flow {
            plan: AsyncNode::new(self.plan, f, concurrency, Flatten, "flat_map_async"),
        }
    }

    /// Maps each event with a fallible async `f`, as [`map_async`](Flow::map_async);
    /// an `Err` gives the event back (a [`Rejected`] or an `(event, error)` pair) and
    /// goes to the step's [`ErrorPolicy`] (set with `on_error`; by default the run ends).
    ///
    /// ```
    /// use flowstage::flow::{ErrorPolicy, Flow};
    /// async fn lookup(id: u32) -> Result<String, (u32, &'static str)> {
    ///     if id % 3 == 0 { Err((id, "not found")) } else { Ok(format!("user-{id}")) }
    /// }
    /// let policy = ErrorPolicy::skip();
    /// let skipped = policy.counters();
    /// let users: Vec<String> = Flow::from_iter(1..=6u32).try_map_async(8, lookup).on_error(policy).collect()?;
    /// assert_eq!(users, ["user-1", "user-2", "user-4", "user-5"]);
    /// assert_eq!(skipped.skipped(), 2);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn try_map_async<U, R, Fut, F>(
        self,
        concurrency: usize,
        f: F,
    ) -> Flow<AsyncNode<P, F, Fallible<P::Item>>>
    where
        U: Send + 'static,
        R: Into<Rejected<P::Item>> + Send + 'static,
        Fut: std::future::Future<Output = std::result::Result<U, R>> + Send + 'static,
        F: Fn(P::Item) -> Fut + Send + Sync + 'static,
    {
        let kind = Fallible {
            policy: ErrorPolicy::fail(),
        };
        Flow {
            plan: AsyncNode::new(self.plan, f, concurrency, kind, "try_map_async"),
        }
    }

    /// Maps each event with a blocking `f` (a synchronous client, a heavy computation) on
    /// tokio's blocking pool, so that the threads running the stages never block. One
    /// stage behind each output of the layer before it sends each chunk of input to the
    /// pool and runs the operators after it, fused, over the results.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// let lengths: Vec<u64> = Flow::from_iter(["Cargo.toml", "no-such-file"])
    ///     .map_blocking(|path: &str| std::fs::metadata(path).map_or(0, |m| m.len().min(1)))
    ///     .collect()?;
    /// assert_eq!(lengths, [1, 0]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn map_blocking<U, F>(self, f: F) -> Flow<MapBlockingNode<P, F>>
    where
        U: Send + 'static,
        F: Fn(P::Item) -> U + Send + Sync + 'static,
    {
        Flow {
            plan: MapBlockingNode {
                inner: self.plan,
                f: Arc::new(f),
            },
        }
    }
}

impl<P, F, K> Flow<AsyncNode<P, F, K>> {
    /// Emits the async step's results as they complete instead of in input order (as
    /// futures' `buffer_unordered`): a slow call no longer holds back the ones after it.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// use std::time::Duration;
    /// let mut done: Vec<u64> = Flow::from_iter([30u64, 1, 1])
    ///     .map_async(3, |ms| async move { tokio::time::sleep(Duration::from_millis(ms)).await; ms })
    ///     .unordered()
    ///     .collect()?;
    /// done.sort();
    /// assert_eq!(done, [1, 1, 30]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn unordered(mut self) -> Self {
        self.plan.ordered = false;
        self
    }
}

impl<P: Plan, F> Flow<AsyncNode<P, F, Fallible<P::Item>>> {
    /// What this `try_map_async` does with an `Err`; see [`ErrorPolicy`].
    pub fn on_error(mut self, policy: ErrorPolicy<P::Item>) -> Self {
        self.plan.kind = Fallible { policy };
        self
    }
}

impl<P: Plan> Flow<P> {
    /// Groups events into [`Batch`]es of `size`, or fewer when `timeout` has passed since
    /// a batch's first event (and at the end of the input): for bulk sinks, which take
    /// `Batch<T>` events ([`sink::blocking_batches`], a
    /// `Consumer<Item = Batch<T>>`). One batching stage; operators after it are fused
    /// into it. `size` 0 is an error when the flow runs.
    ///
    /// ```
    /// use flowstage::flow::{Batch, Flow};
    /// use std::time::Duration;
    /// let batches: Vec<Batch<u32>> = Flow::from_iter(0..10u32).batch(4, Duration::from_secs(1)).collect()?;
    /// assert_eq!(batches, [vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn batch(self, size: usize, timeout: std::time::Duration) -> Flow<BatchNode<P>> {
        Flow {
            plan: BatchNode {
                inner: self.plan,
                size,
                timeout,
            },
        }
    }
}

impl<P: Plan> Flow<P> {
    /// Runs the flow into `sink`, any [`Consumer`](crate::stage::Consumer) of the stage
    /// layer (a `CsvSink` with feature `csv`, a database writer, ...), subscribed to
    /// every output; returns the run's counters. Blocks. The sink's demand is the flow's:
    /// while it is busy (an `await` in `handle_events`) it asks for nothing, and the
    /// sources wait — events never pile up in front of a slow sink.
    ///
    /// ```
    /// use flowstage::flow::Flow;
    /// use flowstage::stage::{Consumer, ConsumerContext};
    /// use flowstage::StageError;
    ///
    /// struct SlowTotal(std::sync::Arc<std::sync::atomic::AtomicU64>);
    /// impl Consumer for SlowTotal {
    ///     type Item = u64;
    ///     async fn handle_events(&mut self, events: Vec<u64>, _: &mut ConsumerContext) -> Result<(), StageError> {
    ///         tokio::time::sleep(std::time::Duration::from_millis(1)).await; // a remote write
    ///         self.0.fetch_add(events.iter().sum(), std::sync::atomic::Ordering::Relaxed);
    ///         Ok(())
    ///     }
    /// }
    /// let total = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    /// Flow::from_iter(1..=100u64).run_into(SlowTotal(total.clone()))?;
    /// assert_eq!(total.load(std::sync::atomic::Ordering::Relaxed), 5050);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn run_into<C>(self, sink: C) -> Result<Report>
    where
        C: crate::stage::Consumer<Item = P::Item>,
    {
        let (compiler, outputs) = self.compile(Pipeline::new())?;
        sink::consumer(compiler.pipeline, outputs, sink)?.run()
    }

    /// [`run_into`](Flow::run_into) on the caller's tokio runtime.
    pub async fn run_into_async<C>(self, sink: C) -> Result<Report>
    where
        P: 'static,
        C: crate::stage::Consumer<Item = P::Item> + 'static,
    {
        let (compiler, outputs) = self.compile(Pipeline::new())?;
        sink::consumer(compiler.pipeline, outputs, sink)?
            .into_pipeline()
            .run_async()
            .await
    }
}

impl<P: Plan, F> Flow<TryMapNode<P, F>> {
    /// What this `try_map` does with an `Err`; see [`ErrorPolicy`].
    pub fn on_error(self, policy: ErrorPolicy<P::Item>) -> Self {
        Flow {
            plan: self.plan.with_policy(policy),
        }
    }
}

impl<P: Plan, F> Flow<TryFlatMapNode<P, F>> {
    /// What this `try_flat_map` does with an `Err`; see [`ErrorPolicy`].
    ///
    /// ```
    /// use flowstage::flow::{ErrorPolicy, Flow};
    /// let words: Vec<String> = Flow::from_iter(["a b", "", "c"])
    ///     .try_flat_map(|s: &str| if s.is_empty() { Err((s, "empty line")) } else { Ok(s.split(' ').map(str::to_owned).collect::<Vec<_>>()) })
    ///     .on_error(ErrorPolicy::skip())
    ///     .collect()?;
    /// assert_eq!(words, ["a", "b", "c"]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn on_error(self, policy: ErrorPolicy<P::Item>) -> Self {
        Flow {
            plan: self.plan.with_policy(policy),
        }
    }
}
