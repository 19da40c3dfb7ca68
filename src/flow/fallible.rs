//! Fallible operators and what happens to their errors.
//!
//! [`try_map`](super::Flow::try_map) and [`try_flat_map`](super::Flow::try_flat_map)
//! take a closure returning `Result`. What an `Err` does is the operator's
//! [`ErrorPolicy`] (set with [`on_error`](super::Flow::on_error)): fail the run (the
//! default), skip the event and count it, or hand the event and its error to a dead-letter
//! sink. Counts appear in the run's [`Report`](crate::stage::Report) and in the policy's
//! [`ErrorCounters`].
//!
//! The closures take the event by reference, so that a failed event is still whole for
//! the dead-letter sink without cloning every event that succeeds.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use super::compile::{Compiler, DispatchSpec, Output, Plan};
use super::logic::{Logic, PartitionInfo};
use crate::error::{Result, StageError};
use crate::stage::ErrorCounters;
use crate::window::WindowSignal;

/// An event a fallible operator could not handle, with why.
#[derive(Debug)]
pub struct DeadLetter<T> {
    /// The event, as it came into the operator.
    pub event: T,
    /// What the operator's closure returned.
    pub error: StageError,
    /// The operator (`try_map`, `try_flat_map`, or a parsing source's name).
    pub operator: &'static str,
}

type DeadLetterSink<T> =
    Arc<dyn Fn(Vec<DeadLetter<T>>) -> std::result::Result<(), StageError> + Send + Sync>;

enum Kind<T> {
    Fail,
    Skip,
    DeadLetter(DeadLetterSink<T>),
}

impl<T> Clone for Kind<T> {
    fn clone(&self) -> Self {
        match self {
            Kind::Fail => Kind::Fail,
            Kind::Skip => Kind::Skip,
            Kind::DeadLetter(sink) => Kind::DeadLetter(sink.clone()),
        }
    }
}

/// What a fallible operator does with an `Err`: fail the run (the default), skip the event,
/// or send it to a dead-letter sink.
///
/// ```
/// use flowstage::flow::{ErrorPolicy, Flow};
/// use std::sync::{Arc, Mutex};
///
/// let input = ["1", "two", "3", "4x"];
/// // Fail (the default): the run ends with the first error, naming the operator.
/// let error = Flow::from_iter(input).try_map(|s: &&str| s.parse::<u32>()).collect::<Vec<_>>();
/// assert!(error.unwrap_err().to_string().contains("try_map: invalid digit"));
///
/// // Dead letter: bad events and their errors go to the sink, in batches.
/// let letters = Arc::new(Mutex::new(Vec::new()));
/// let into = letters.clone();
/// let policy = ErrorPolicy::dead_letter(move |batch: Vec<flowstage::flow::DeadLetter<&str>>| {
///     into.lock().unwrap().extend(batch.into_iter().map(|l| (l.event, l.error.to_string())));
///     Ok(())
/// });
/// let report = Flow::from_iter(input).try_map(|s: &&str| s.parse::<u32>()).on_error(policy).run()?;
/// assert_eq!(report.errors[0].dead_lettered, 2);
/// assert_eq!(letters.lock().unwrap()[0], ("two", "invalid digit found in string".into()));
/// # Ok::<(), flowstage::FlowError>(())
/// ```
pub struct ErrorPolicy<T> {
    kind: Kind<T>,
    counters: Arc<ErrorCounters>,
}

impl<T> fmt::Debug for ErrorPolicy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Fail => "ErrorPolicy::Fail",
            Kind::Skip => "ErrorPolicy::Skip",
            Kind::DeadLetter(_) => "ErrorPolicy::DeadLetter",
        })
    }
}

impl<T> Default for ErrorPolicy<T> {
    fn default() -> Self {
        Self::fail()
    }
}

impl<T> ErrorPolicy<T> {
    /// The first error ends the run with [`FlowError::StageFailed`](crate::FlowError),
    /// naming the stage and the operator. The default.
    ///
    /// ```
    /// use flowstage::flow::{ErrorPolicy, Flow};
    /// let result = Flow::from_iter(["1", "x"])
    ///     .try_map(|s: &&str| s.parse::<u32>())
    ///     .on_error(ErrorPolicy::fail())
    ///     .collect::<Vec<_>>();
    /// assert!(result.is_err());
    /// ```
    pub fn fail() -> Self {
        Self::with(Kind::Fail)
    }

    /// Failed events are dropped and counted.
    ///
    /// ```
    /// use flowstage::flow::{ErrorPolicy, Flow};
    /// let n: Vec<u32> = Flow::from_iter(["1", "x"])
    ///     .try_map(|s: &&str| s.parse::<u32>())
    ///     .on_error(ErrorPolicy::skip())
    ///     .collect()?;
    /// assert_eq!(n, [1]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn skip() -> Self {
        Self::with(Kind::Skip)
    }

    /// Failed events go to `sink` with their errors, once per batch (per stage; the sink is
    /// shared by the operator's stages, so it must be `Sync`). An `Err` from the sink ends
    /// the run. See the type's example.
    pub fn dead_letter<F>(sink: F) -> Self
    where
        F: Fn(Vec<DeadLetter<T>>) -> std::result::Result<(), StageError> + Send + Sync + 'static,
    {
        Self::with(Kind::DeadLetter(Arc::new(sink)))
    }

    fn with(kind: Kind<T>) -> Self {
        ErrorPolicy {
            kind,
            counters: Arc::default(),
        }
    }

    /// The policy's counters, to read during or after the run (the run's report lists
    /// them too).
    pub fn counters(&self) -> Arc<ErrorCounters> {
        self.counters.clone()
    }

    pub(crate) fn handler(&self, operator: &'static str) -> ErrorHandler<T> {
        ErrorHandler {
            kind: self.kind.clone(),
            counters: self.counters.clone(),
            operator,
            letters: Vec::new(),
            skipped: 0,
            failed: None,
        }
    }
}

/// An operator's error and the operator's name: what a `Fail` policy ends the run with.
#[derive(Debug)]
pub struct OperatorError {
    /// The operator.
    pub operator: &'static str,
    /// The error its closure returned.
    pub source: StageError,
}

impl fmt::Display for OperatorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.operator, self.source)
    }
}

impl std::error::Error for OperatorError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// One stage's side of an [`ErrorPolicy`]: collects what a batch's errors need and
/// settles them once per batch (counters, the dead-letter sink).
pub(crate) struct ErrorHandler<T> {
    kind: Kind<T>,
    counters: Arc<ErrorCounters>,
    operator: &'static str,
    letters: Vec<DeadLetter<T>>,
    skipped: u64,
    failed: Option<StageError>,
}

impl<T> ErrorHandler<T> {
    /// Whether the first error ends the run (the batch stops at it).
    pub(crate) fn fails(&self) -> bool {
        matches!(self.kind, Kind::Fail)
    }

    /// Whether an error already ended this stage's work.
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Handles one error.
    #[cold]
    pub(crate) fn error(&mut self, event: T, error: StageError) {
        match self.kind {
            Kind::Fail => {
                if self.failed.is_none() {
                    self.failed = Some(Box::new(OperatorError {
                        operator: self.operator,
                        source: error,
                    }));
                }
            }
            Kind::Skip => self.skipped += 1,
            Kind::DeadLetter(_) => self.letters.push(DeadLetter {
                event,
                error,
                operator: self.operator,
            }),
        }
    }

    /// Settles the batch: counts, and dead letters to their sink.
    pub(crate) fn settle(&mut self) {
        self.counters.add_skipped(std::mem::take(&mut self.skipped));
        if self.letters.is_empty() {
            return;
        }
        if let Kind::DeadLetter(sink) = &self.kind {
            let letters = std::mem::take(&mut self.letters);
            let count = letters.len() as u64;
            match sink(letters) {
                Ok(()) => self.counters.add_dead_lettered(count),
                Err(error) => {
                    self.failed = Some(
                        format!("{}: the dead-letter sink failed: {error}", self.operator).into(),
                    )
                }
            }
        }
    }

    pub(crate) fn take_failure(&mut self) -> Option<StageError> {
        self.failed.take()
    }
}

impl<T> Clone for ErrorHandler<T> {
    fn clone(&self) -> Self {
        ErrorHandler {
            kind: self.kind.clone(),
            counters: self.counters.clone(),
            operator: self.operator,
            letters: Vec::new(),
            skipped: 0,
            failed: None,
        }
    }
}

/// Declares a fallible operator's logic: `$adapt` turns the iterator of successes into
/// what the rest of the chain takes (as is for `try_map`, flattened for `try_flat_map`).
macro_rules! fallible {
    ($(#[$doc:meta])* $name:ident, $label:literal, |$ok:ident| $adapt:expr, where $($bounds:tt)*) => {
        $(#[$doc])*
        pub(crate) struct $name<A, F, L> {
            f: Arc<F>,
            errors: ErrorHandler<A>,
            rest: L,
            _in: PhantomData<fn(A)>,
        }

        impl<A, F, L: Clone> Clone for $name<A, F, L> {
            fn clone(&self) -> Self {
                $name {
                    f: self.f.clone(),
                    errors: self.errors.clone(),
                    rest: self.rest.clone(),
                    _in: PhantomData,
                }
            }
        }

        impl<A, F, L> fmt::Debug for $name<A, F, L> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($label)
            }
        }

        impl<A, U, E, F, L> Logic for $name<A, F, L>
        where
            A: Send + 'static,
            E: Into<StageError>,
            F: Fn(&A) -> std::result::Result<U, E> + Send + Sync + 'static,
            L: Logic,
            $($bounds)*
        {
            type In = A;
            type Out = L::Out;

            fn start(&mut self, partition: PartitionInfo) {
                self.rest.start(partition);
            }

            fn push(&mut self, event: A, out: &mut Vec<L::Out>) {
                self.feed(std::iter::once(event), out);
            }

            #[inline]
            fn feed<It: Iterator<Item = A>>(&mut self, events: It, out: &mut Vec<L::Out>) {
                if self.errors.has_failed() {
                    return;
                }
                let (f, errors) = (&*self.f, &mut self.errors);
                if errors.fails() {
                    // The batch stops at the first error: the run is ending anyway.
                    let $ok = events.map_while(|event| match f(&event) {
                        Ok(value) => Some(value),
                        Err(error) => {
                            errors.error(event, error.into());
                            None
                        }
                    });
                    self.rest.feed($adapt, out);
                } else {
                    let $ok = events.filter_map(|event| match f(&event) {
                        Ok(value) => Some(value),
                        Err(error) => {
                            errors.error(event, error.into());
                            None
                        }
                    });
                    self.rest.feed($adapt, out);
                }
                self.errors.settle();
            }

            fn done(&mut self, out: &mut Vec<L::Out>) {
                self.rest.done(out);
            }

            fn describe(&self, names: &mut Vec<String>) {
                names.push($label.to_string());
                self.rest.describe(names);
            }

            fn failure(&mut self) -> Option<StageError> {
                self.errors.take_failure().or_else(|| self.rest.failure())
            }

            fn window(&mut self, signal: WindowSignal<'_>, out: &mut Vec<L::Out>) {
                self.rest.window(signal, out);
            }

            fn has_reducer(&self) -> bool {
                self.rest.has_reducer()
            }
        }
    };
}

fallible! {
    /// `try_map(f)`.
    TryMap, "try_map", |ok| ok, where L: Logic<In = U>,
}

fallible! {
    /// `try_flat_map(f)`.
    TryFlatMap, "try_flat_map", |ok| ok.flatten(), where U: IntoIterator<Item = L::In>,
}

/// Declares the plan node of a fallible operator.
macro_rules! fallible_node {
    ($(#[$doc:meta])* $node:ident => $logic:ident, $label:literal, [$($extra:ident),*], Item = $item:ty, where { $($bounds:tt)* }) => {
        $(#[$doc])*
        pub struct $node<P: Plan, F> {
            pub(crate) inner: P,
            pub(crate) f: Arc<F>,
            pub(crate) policy: ErrorPolicy<P::Item>,
        }

        impl<P: Plan, F> $node<P, F> {
            pub(crate) fn new(inner: P, f: F) -> Self {
                $node { inner, f: Arc::new(f), policy: ErrorPolicy::fail() }
            }

            pub(crate) fn with_policy(self, policy: ErrorPolicy<P::Item>) -> Self {
                $node { policy, ..self }
            }
        }

        impl<P: Plan, F> fmt::Debug for $node<P, F> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($node), self.policy)
            }
        }

        impl<P, F, E, $($extra),*> Plan for $node<P, F>
        where
            P: Plan,
            E: Into<StageError> + 'static,
            $($bounds)*
        {
            type Item = $item;

            fn compile<L>(
                self,
                compiler: &mut Compiler,
                logic: L,
                dispatch: &DispatchSpec<L::Out>,
            ) -> Result<Vec<Output<L::Out>>>
            where
                L: Logic<In = Self::Item> + Clone,
            {
                let (inner, label, counters, logic) = self.into_logic(logic);
                compiler.pipeline.error_counters(label, counters);
                inner.compile(compiler, logic, dispatch)
            }
        }

        impl<P: Plan, F> $node<P, F> {
            /// The node's input, its name and policy counters, and its logic before
            /// `rest`, for either backend.
            #[allow(clippy::type_complexity)]
            pub(crate) fn into_logic<L>(
                self,
                rest: L,
            ) -> (P, &'static str, Arc<ErrorCounters>, $logic<P::Item, F, L>) {
                let counters = self.policy.counters();
                let logic = $logic {
                    f: self.f,
                    errors: self.policy.handler($label),
                    rest,
                    _in: PhantomData,
                };
                (self.inner, $label, counters, logic)
            }
        }
    };
}

fallible_node! {
    /// `try_map`.
    TryMapNode => TryMap, "try_map", [U], Item = U,
    where { U: Send + 'static, F: Fn(&P::Item) -> std::result::Result<U, E> + Send + Sync + 'static, }
}

fallible_node! {
    /// `try_flat_map`.
    TryFlatMapNode => TryFlatMap, "try_flat_map", [I], Item = I::Item,
    where {
        I: IntoIterator,
        I::Item: Send + 'static,
        F: Fn(&P::Item) -> std::result::Result<I, E> + Send + Sync + 'static,
    }
}
