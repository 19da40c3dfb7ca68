//! The reduce family: per-stage, per-window state, emitted when a trigger fires.
//!
//! `reduce`, `emit_and_reduce`, `group_by` and `on_trigger` are one logic, [`Reduce`]: a
//! step folding each event into the accumulator (possibly emitting events right away) and
//! an emitter deciding what a trigger sends downstream. Windows other than the global one
//! come with the windows module; for now the only trigger is `Done`.

use std::marker::PhantomData;
use std::sync::Arc;

use super::compile::{Compiler, DispatchSpec, Output, Plan};
use super::logic::{Logic, PartitionInfo};
use crate::error::{FlowError, Result};

/// The window a trigger fired for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowInfo {
    /// The window kind (`"global"`, ...).
    pub kind: &'static str,
    /// The window's id (0 for the global window).
    pub id: i64,
}

/// Why a trigger fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerName {
    /// The window ended (for the global window: all input has arrived).
    Done,
}

/// What an `on_trigger` callback learns about the trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    /// The window the trigger fired for.
    pub window: WindowInfo,
    /// Which trigger.
    pub name: TriggerName,
}

impl Trigger {
    pub(crate) fn done_global() -> Self {
        Trigger {
            window: WindowInfo {
                kind: "global",
                id: 0,
            },
            name: TriggerName::Done,
        }
    }
}

/// Folds one event into the accumulator, possibly emitting events at once.
pub trait Step<T, Acc, U>: Send + Sync + 'static {
    /// Folds `event` into `acc`; pushes immediate output to `emit`.
    fn step(&self, event: T, acc: Acc, emit: &mut dyn FnMut(U)) -> Acc;
}

/// `reduce`'s step: `f(event, acc) -> acc`.
#[derive(Debug)]
pub struct Fold<F>(pub(crate) F);

impl<T, Acc, U, F: Fn(T, Acc) -> Acc + Send + Sync + 'static> Step<T, Acc, U> for Fold<F> {
    #[inline]
    fn step(&self, event: T, acc: Acc, _emit: &mut dyn FnMut(U)) -> Acc {
        (self.0)(event, acc)
    }
}

/// `emit_and_reduce`'s step: `f(event, acc) -> (events, acc)`.
#[derive(Debug)]
pub struct FoldEmit<F>(pub(crate) F);

impl<T, Acc, U, I, F> Step<T, Acc, U> for FoldEmit<F>
where
    I: IntoIterator<Item = U>,
    F: Fn(T, Acc) -> (I, Acc) + Send + Sync + 'static,
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
pub trait Emit<Acc, U>: Send + Sync + 'static {
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

/// Emit the accumulator's items (a map's `(k, v)` pairs): the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmitEvents;

impl<Acc, U> Emit<Acc, U> for EmitEvents
where
    Acc: IntoIterator<Item = U>,
{
    fn emit(
        &self,
        acc: Acc,
        _p: PartitionInfo,
        _t: &Trigger,
        out: &mut dyn FnMut(U),
    ) -> Option<Acc> {
        for item in acc {
            out(item);
        }
        None
    }

    fn label(&self) -> &'static str {
        "events"
    }
}

/// Emit the accumulator itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmitState;

impl<Acc> Emit<Acc, Acc> for EmitState {
    fn emit(
        &self,
        acc: Acc,
        _p: PartitionInfo,
        _t: &Trigger,
        out: &mut dyn FnMut(Acc),
    ) -> Option<Acc> {
        out(acc);
        None
    }

    fn label(&self) -> &'static str {
        "state"
    }
}

/// Emit nothing.
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
    F: Fn(Acc, PartitionInfo, &Trigger) -> (I, Acc) + Send + Sync + 'static,
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
    /// Runs on the accumulator before every emission (`group_by` puts newest first).
    finish: fn(&mut Acc),
    acc: Option<Acc>,
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
            // Each stage starts its own accumulator.
            acc: None,
            partition: self.partition,
            rest: self.rest.clone(),
            label: self.label,
            _in: PhantomData,
        }
    }
}

impl<T, Acc, I, S, E, L> Logic for Reduce<T, Acc, I, S, E, L>
where
    T: Send + 'static,
    Acc: Send + 'static,
    I: Fn() -> Acc + Send + Sync + 'static,
    S: Step<T, Acc, L::In>,
    E: Emit<Acc, L::In>,
    L: Logic,
{
    type In = T;
    type Out = L::Out;

    fn start(&mut self, partition: PartitionInfo) {
        self.partition = partition;
        self.acc = Some((self.init)());
        self.rest.start(partition);
    }

    #[inline]
    fn push(&mut self, event: T, out: &mut Vec<L::Out>) {
        let acc = match self.acc.take() {
            Some(acc) => acc,
            None => (self.init)(),
        };
        let rest = &mut self.rest;
        let acc = self
            .step
            .step(event, acc, &mut |emitted| rest.push(emitted, out));
        self.acc = Some(acc);
    }

    #[inline]
    fn feed<It: Iterator<Item = T>>(&mut self, events: It, out: &mut Vec<L::Out>) {
        // The accumulator is taken once per batch and folded through it.
        let acc = match self.acc.take() {
            Some(acc) => acc,
            None => (self.init)(),
        };
        let (step, rest) = (&*self.step, &mut self.rest);
        let mut emit = |emitted| rest.push(emitted, out);
        self.acc = Some(events.fold(acc, |acc, event| step.step(event, acc, &mut emit)));
    }

    fn done(&mut self, out: &mut Vec<L::Out>) {
        let mut acc = match self.acc.take() {
            Some(acc) => acc,
            None => (self.init)(),
        };
        (self.finish)(&mut acc);
        let rest = &mut self.rest;
        // On `Done` the returned accumulator is dropped.
        let _ = self.emit.emit(
            acc,
            self.partition,
            &Trigger::done_global(),
            &mut |emitted| rest.push(emitted, out),
        );
        self.rest.done(out);
    }

    fn describe(&self, names: &mut Vec<String>) {
        names.push(format!("{}(emit {})", self.label, self.emit.label()));
        self.rest.describe(names);
    }

    fn failure(&mut self) -> Option<crate::error::StageError> {
        self.rest.failure()
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
pub trait Emits<Acc>: Send + Sync + 'static {
    /// The events emitted.
    type Item: Send + 'static;
}

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
    F: Fn(Acc, PartitionInfo, &Trigger) -> (I, Acc) + Send + Sync + 'static,
{
    type Item = U;
}

impl<P, Acc, I, S, E> Plan for ReduceNode<P, Acc, I, S, E>
where
    P: Plan,
    Acc: Send + 'static,
    I: Fn() -> Acc + Send + Sync + 'static,
    E: Emits<Acc> + Emit<Acc, <E as Emits<Acc>>::Item>,
    S: Step<P::Item, Acc, <E as Emits<Acc>>::Item>,
{
    type Item = <E as Emits<Acc>>::Item;

    fn compile<L>(
        self,
        compiler: &mut Compiler,
        logic: L,
        dispatch: &DispatchSpec<L::Out>,
    ) -> Result<Vec<Output<L::Out>>>
    where
        L: Logic<In = Self::Item> + Clone,
    {
        if logic.has_reducer() {
            return Err(FlowError::Config(format!(
                "{} after another reduce in the same layer: add a partition or shuffle \
                 between them",
                self.label
            )));
        }
        let reduce = Reduce {
            init: self.init,
            step: self.step,
            emit: self.emit,
            finish: self.finish,
            acc: None,
            partition: PartitionInfo { index: 0, count: 1 },
            rest: logic,
            label: self.label,
            _in: PhantomData,
        };
        self.inner.compile(compiler, reduce, dispatch)
    }
}

/// Reverses each group so values read newest first.
pub(crate) fn newest_first<K, V, H>(groups: &mut std::collections::HashMap<K, Vec<V>, H>) {
    for values in groups.values_mut() {
        values.reverse();
    }
}
