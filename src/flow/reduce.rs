//! The reduce family: per-stage, per-window state, emitted when a trigger fires.
//!
//! `reduce`, `emit_and_reduce`, `group_by` and `on_trigger` are one logic, [`Reduce`]: a
//! step folding each event into the accumulator (possibly emitting events right away) and
//! an emitter deciding what a trigger sends downstream. State is kept per window (see
//! [`window`](crate::window)); the stage's windowing tells the reduce which window events
//! belong to and when triggers fire.

use std::marker::PhantomData;
use std::sync::Arc;

use super::compile::{Compiler, DispatchSpec, Output, Plan};
use super::logic::{Logic, PartitionInfo};
use crate::error::{FlowError, Result};
use crate::window::{Ends, Slots, WindowSignal};
pub use crate::window::{Trigger, TriggerName, WindowInfo};

/// Folds one event into the accumulator, possibly emitting events at once.
pub trait Step<T, Acc, U>: Send + Sync {
    /// Folds `event` into `acc`; pushes immediate output to `emit`.
    fn step(&self, event: T, acc: Acc, emit: &mut dyn FnMut(U)) -> Acc;

    /// Folds a run of events (one window's part of a batch) into `acc`. The default
    /// threads `acc` through [`step`](Step::step); a step that updates its accumulator
    /// in place overrides it, so a large accumulator is not moved once per event.
    #[inline]
    fn fold<It>(&self, events: It, acc: Acc, emit: &mut dyn FnMut(U)) -> Acc
    where
        Self: Sized,
        It: Iterator<Item = T>,
    {
        events.fold(acc, |acc, event| self.step(event, acc, emit))
    }
}

/// `reduce`'s step: `f(event, acc) -> acc`.
#[derive(Debug)]
pub struct Fold<F>(pub(crate) F);

impl<T, Acc, U, F: Fn(T, Acc) -> Acc + Send + Sync> Step<T, Acc, U> for Fold<F> {
    #[inline]
    fn step(&self, event: T, acc: Acc, _emit: &mut dyn FnMut(U)) -> Acc {
        (self.0)(event, acc)
    }
}

/// `reduce_mut`'s step: `f(event, &mut acc)`, the accumulator updated in place.
#[derive(Debug)]
pub struct FoldMut<F>(pub(crate) F);

impl<T, Acc, U, F: Fn(T, &mut Acc) + Send + Sync> Step<T, Acc, U> for FoldMut<F> {
    #[inline]
    fn step(&self, event: T, mut acc: Acc, _emit: &mut dyn FnMut(U)) -> Acc {
        (self.0)(event, &mut acc);
        acc
    }

    #[inline]
    fn fold<It>(&self, events: It, mut acc: Acc, _emit: &mut dyn FnMut(U)) -> Acc
    where
        It: Iterator<Item = T>,
    {
        events.for_each(|event| (self.0)(event, &mut acc));
        acc
    }
}

/// `emit_and_reduce`'s step: `f(event, acc) -> (events, acc)`.
#[derive(Debug)]
pub struct FoldEmit<F>(pub(crate) F);

impl<T, Acc, U, I, F> Step<T, Acc, U> for FoldEmit<F>
where
    I: IntoIterator<Item = U>,
    F: Fn(T, Acc) -> (I, Acc) + Send + Sync,
{
    #[inline]
    fn step(&self, event: T, acc: Acc, emit: &mut dyn FnMut(U)) -> Acc {
        let (events, acc) = (self.0)(event, acc);
        for event in events {
            emit(event);
        }
        acc
    }
}

/// What a trigger emits from the accumulator.
pub trait Emit<Acc, U>: Send + Sync {
    /// Emits from `acc` for `trigger`; returns the accumulator to keep, or `None` to start
    /// afresh from `init` (ignored on `Done`, after which the window is gone).
    fn emit(
        &self,
        acc: Acc,
        partition: PartitionInfo,
        trigger: &Trigger,
        out: &mut dyn FnMut(U),
    ) -> Option<Acc>;
    /// For `explain()`.
    fn label(&self) -> &'static str;
}

/// Emits `acc`'s contents through `emit` and keeps `acc`, as Flow's `emit/2` does; on
/// `Done` (the window is gone) the accumulator itself is emitted, without a copy.
fn emit_keeping<Acc: Clone>(acc: Acc, trigger: &Trigger, emit: impl FnOnce(Acc)) -> Option<Acc> {
    if trigger.is_done() {
        emit(acc);
        None
    } else {
        emit(acc.clone());
        Some(acc)
    }
}

/// Emit the accumulator's items (a map's `(k, v)` pairs), keeping the accumulator: the
/// default.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmitEvents;

impl<Acc, U> Emit<Acc, U> for EmitEvents
where
    Acc: Clone + IntoIterator<Item = U>,
{
    fn emit(
        &self,
        acc: Acc,
        _p: PartitionInfo,
        trigger: &Trigger,
        out: &mut dyn FnMut(U),
    ) -> Option<Acc> {
        emit_keeping(acc, trigger, |acc| acc.into_iter().for_each(out))
    }

    fn label(&self) -> &'static str {
        "events"
    }
}

/// Emit the accumulator itself, keeping it.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmitState;

impl<Acc: Clone> Emit<Acc, Acc> for EmitState {
    fn emit(
        &self,
        acc: Acc,
        _p: PartitionInfo,
        trigger: &Trigger,
        out: &mut dyn FnMut(Acc),
    ) -> Option<Acc> {
        emit_keeping(acc, trigger, out)
    }

    fn label(&self) -> &'static str {
        "state"
    }
}

/// Emit nothing, keeping the accumulator.
#[derive(Debug, Clone, Copy)]
pub struct EmitNothing<U>(pub(crate) PhantomData<fn() -> U>);

impl<Acc, U: 'static> Emit<Acc, U> for EmitNothing<U> {
    fn emit(
        &self,
        acc: Acc,
        _p: PartitionInfo,
        _t: &Trigger,
        _out: &mut dyn FnMut(U),
    ) -> Option<Acc> {
        Some(acc)
    }

    fn label(&self) -> &'static str {
        "nothing"
    }
}

/// `on_trigger(f)`: `f(acc, partition, trigger) -> (events, new_acc)`.
#[derive(Debug)]
pub struct OnTrigger<F>(pub(crate) F);

impl<Acc, U, I, F> Emit<Acc, U> for OnTrigger<F>
where
    I: IntoIterator<Item = U>,
    F: Fn(Acc, PartitionInfo, &Trigger) -> (I, Acc) + Send + Sync,
{
    fn emit(&self, acc: Acc, p: PartitionInfo, t: &Trigger, out: &mut dyn FnMut(U)) -> Option<Acc> {
        let (events, acc) = (self.0)(acc, p, t);
        for event in events {
            out(event);
        }
        Some(acc)
    }

    fn label(&self) -> &'static str {
        "on_trigger"
    }
}

/// The reducing logic of a stage.
pub(crate) struct Reduce<T, Acc, I, S, E, L> {
    init: Arc<I>,
    step: Arc<S>,
    emit: Arc<E>,
    /// Turns the accumulator into the view users see before every emission (`group_by`
    /// puts newest first), and what they keep back: it is its own inverse.
    finish: fn(&mut Acc),
    /// One accumulator per window (only window 0 when the stage is not windowed).
    accs: Slots<Acc>,
    current: i64,
    ends: Ends,
    partition: PartitionInfo,
    rest: L,
    label: &'static str,
    _in: PhantomData<fn(T)>,
}

impl<T, Acc, I, S, E, L: Clone> Clone for Reduce<T, Acc, I, S, E, L> {
    fn clone(&self) -> Self {
        Reduce {
            init: self.init.clone(),
            step: self.step.clone(),
            emit: self.emit.clone(),
            finish: self.finish,
            // Each stage starts its own accumulators.
            accs: Slots::default(),
            current: 0,
            ends: Ends::default(),
            partition: self.partition,
            rest: self.rest.clone(),
            label: self.label,
            _in: PhantomData,
        }
    }
}

impl<T, Acc, I, S, E, L> Reduce<T, Acc, I, S, E, L>
where
    T: Send + 'static,
    Acc: Send,
    I: Fn() -> Acc + Send + Sync,
    S: Step<T, Acc, L::In>,
    E: Emit<Acc, L::In>,
    L: Logic,
{
    /// Emits window `trigger.window`'s accumulator per the emitter; keeps what it returns
    /// unless the window is done. The rest of the chain sees the emission inside the
    /// window it belongs to.
    fn fire(&mut self, trigger: &Trigger, out: &mut Vec<L::Out>) {
        let id = trigger.window.id;
        let mut acc = self.accs.take(id).unwrap_or_else(|| (self.init)());
        (self.finish)(&mut acc);
        let other = id != self.current;
        self.rest.window(WindowSignal::Enter(&trigger.window), out);
        let rest = &mut self.rest;
        let kept = self
            .emit
            .emit(acc, self.partition, trigger, &mut |emitted| {
                rest.push(emitted, out)
            });
        self.rest.window(WindowSignal::Fire(trigger), out);
        if other {
            let current = crate::window::WindowInfo {
                kind: trigger.window.kind,
                id: self.current,
            };
            self.rest.window(WindowSignal::Enter(&current), out);
        }
        // `None` starts afresh from `init` (lazily); on `Done` the window is gone.
        if let (Some(mut acc), false) = (kept, trigger.is_done()) {
            // Back from the view emitted to the order events are folded in.
            (self.finish)(&mut acc);
            self.accs.put(id, acc);
        }
    }
}

impl<T, Acc, I, S, E, L> Logic for Reduce<T, Acc, I, S, E, L>
where
    T: Send + 'static,
    Acc: Send,
    I: Fn() -> Acc + Send + Sync,
    S: Step<T, Acc, L::In>,
    E: Emit<Acc, L::In>,
    L: Logic,
{
    type In = T;
    type Out = L::Out;

    fn start(&mut self, partition: PartitionInfo) {
        self.partition = partition;
        self.rest.start(partition);
    }

    #[inline]
    fn push(&mut self, event: T, out: &mut Vec<L::Out>) {
        let acc = match self.accs.take_current() {
            Some(acc) => acc,
            None => (self.init)(),
        };
        let rest = &mut self.rest;
        let acc = self
            .step
            .step(event, acc, &mut |emitted| rest.push(emitted, out));
        self.accs.put_current(acc);
    }

    #[inline]
    fn feed<It: Iterator<Item = T>>(&mut self, events: It, out: &mut Vec<L::Out>) {
        // The accumulator is taken once per batch and folded through it.
        let acc = match self.accs.take_current() {
            Some(acc) => acc,
            None => (self.init)(),
        };
        let (step, rest) = (&*self.step, &mut self.rest);
        let mut emit = |emitted| rest.push(emitted, out);
        self.accs.put_current(step.fold(events, acc, &mut emit));
    }

    fn done(&mut self, out: &mut Vec<L::Out>) {
        // Windows ended upstream (by the stage's windowing or a merging stage before this
        // one) are gone; the rest end here, each once.
        for trigger in self.ends.leftover(self.accs.ids()) {
            self.fire(&trigger, out);
        }
        self.rest.done(out);
    }

    fn window(&mut self, signal: WindowSignal<'_>, out: &mut Vec<L::Out>) {
        self.ends.observe(&signal);
        match signal {
            WindowSignal::Start => self.rest.window(signal, out),
            WindowSignal::Enter(window) => {
                self.current = window.id;
                self.accs.enter(window.id);
                // Events emitted while reducing belong to this window too.
                self.rest.window(signal, out);
            }
            WindowSignal::Fire(trigger) => self.fire(trigger, out),
        }
    }

    fn describe(&self, names: &mut Vec<String>) {
        names.push(format!("{}(emit {})", self.label, self.emit.label()));
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

/// The plan node of the reduce family.
pub struct ReduceNode<P, Acc, I, S, E> {
    pub(crate) inner: P,
    pub(crate) init: Arc<I>,
    pub(crate) step: Arc<S>,
    pub(crate) emit: Arc<E>,
    pub(crate) finish: fn(&mut Acc),
    pub(crate) label: &'static str,
}

impl<P, Acc, I, S, E> std::fmt::Debug for ReduceNode<P, Acc, I, S, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label)
    }
}

impl<P, Acc, I, S, E> ReduceNode<P, Acc, I, S, E> {
    pub(crate) fn with_emit<E2>(self, emit: E2) -> ReduceNode<P, Acc, I, S, E2> {
        ReduceNode {
            inner: self.inner,
            init: self.init,
            step: self.step,
            emit: Arc::new(emit),
            finish: self.finish,
            label: self.label,
        }
    }
}

/// The item type a reduce node emits, fixed by its emitter. Lets `Plan` know `Item`.
///
/// By default a `reduce` emits the items of its state, as Flow's does: a state that is
/// not a collection (a number) has none, and the compiler says what to write instead.
///
/// ```compile_fail
/// # use flowstage::flow::Flow;
/// // error: a `reduce` emits the items of its state, and `u64` has none
/// let sums: Vec<u64> = Flow::from_iter(0..10u64).reduce(|| 0, |x, sum| sum + x).collect()?;
/// # Ok::<(), flowstage::FlowError>(())
/// ```
///
/// ```
/// # use flowstage::flow::Flow;
/// let sums: Vec<u64> = Flow::from_iter(0..10u64).reduce(|| 0, |x, sum| sum + x).emit_state().collect()?;
/// assert_eq!(sums.iter().sum::<u64>(), 45);
/// assert_eq!(Flow::from_iter(0..10u64).sum::<u64>()?, 45);
/// # Ok::<(), flowstage::FlowError>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "a `reduce` emits the items of its state, and `{Acc}` has none",
    label = "`{Acc}` is not a collection to emit the items of",
    note = "to emit each stage's state itself, add `.emit_state()` after the `reduce`; to \
            reduce the whole flow to one value, end it with `.sum()`, `.fold(..)`, \
            `.reduce_with(..)` or `.count()` instead"
)]
pub trait Emits<Acc>: Send + Sync {
    /// The events emitted.
    type Item: Send + 'static;
}

// (Not recommended: the unmet bound is the state's `IntoIterator`, which the compiler
// would otherwise report as "`u64` is not an iterator" and nothing more.)
#[diagnostic::do_not_recommend]
impl<Acc: IntoIterator> Emits<Acc> for EmitEvents
where
    Acc::Item: Send + 'static,
{
    type Item = Acc::Item;
}

impl<Acc: Send + 'static> Emits<Acc> for EmitState {
    type Item = Acc;
}

impl<Acc, U: Send + 'static> Emits<Acc> for EmitNothing<U> {
    type Item = U;
}

impl<Acc, U, I, F> Emits<Acc> for OnTrigger<F>
where
    U: Send + 'static,
    I: IntoIterator<Item = U>,
    F: Fn(Acc, PartitionInfo, &Trigger) -> (I, Acc) + Send + Sync,
{
    type Item = U;
}

impl<P, Acc, I, S, E> Plan for ReduceNode<P, Acc, I, S, E>
where
    P: Plan,
    Acc: Send,
    I: Fn() -> Acc + Send + Sync,
    E: Emits<Acc> + Emit<Acc, <E as Emits<Acc>>::Item>,
    S: Step<P::Item, Acc, <E as Emits<Acc>>::Item>,
{
    type Item = <E as Emits<Acc>>::Item;
    const REDUCES: bool = true;

    fn compile<'a, L>(
        self,
        compiler: &mut Compiler<'a>,
        logic: L,
        dispatch: &DispatchSpec<'a, L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        Self: 'a,
        L: Logic<In = Self::Item> + Clone + 'a,
    {
        if logic.has_reducer() {
            return Err(FlowError::Config(format!(
                "{} after another reduce in the same layer: add a partition or shuffle \
                 between them",
                self.label
            )));
        }
        let (inner, reduce) = self.into_logic(logic);
        inner.compile(compiler, reduce, dispatch)
    }
}

impl<P, Acc, I, S, E> ReduceNode<P, Acc, I, S, E> {
    /// The node's input plan, and its reducing logic in front of `rest` (for a backend
    /// to run; the caller checks `rest` holds no reducer yet).
    pub(crate) fn into_logic<T, L>(self, rest: L) -> (P, Reduce<T, Acc, I, S, E, L>) {
        let reduce = Reduce {
            init: self.init,
            step: self.step,
            emit: self.emit,
            finish: self.finish,
            accs: Slots::default(),
            current: 0,
            ends: Ends::default(),
            partition: PartitionInfo { index: 0, count: 1 },
            rest,
            label: self.label,
            _in: PhantomData,
        };
        (self.inner, reduce)
    }
}

/// Reverses each group so values read newest first.
pub(crate) fn newest_first<K, V, H>(groups: &mut std::collections::HashMap<K, Vec<V>, H>) {
    for values in groups.values_mut() {
        values.reverse();
    }
}
