//! Fallible operators and what happens to their errors.
//!
//! [`try_map`](super::Flow::try_map) and [`try_flat_map`](super::Flow::try_flat_map)
//! take a closure returning `Result`. What an `Err` does is the operator's
//! [`ErrorPolicy`] (set with [`on_error`](super::Flow::on_error)): fail the run (the
//! default), skip the event and count it, or hand the event and its error to a
//! dead-letter consumer. Counts appear in the run's [`Report`](crate::stage::Report) and
//! in the policy's [`ErrorCounters`].
//!
//! The closures take the event by value, so that a good event moves into what it
//! becomes (no clone), and give it back inside the error ([`Rejected`], or an
//! `(event, error)` pair) when it fails: the dead letter has it whole.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use super::SinkConsumer;
use super::compile::{Compiler, DispatchSpec, Output, Plan};
use super::dead_letter::{Letterbox, SideOutput};
use super::logic::{Logic, PartitionInfo};
use crate::error::{Result, StageError};
use crate::stage::{Consumer, ErrorCounters};
use crate::window::WindowSignal;

/// An event a fallible operator could not handle, with why.
#[derive(Debug)]
pub struct DeadLetter<T> {
    /// The event, as it came into the operator.
    pub event: T,
    /// What the operator's closure returned.
    pub error: StageError,
    /// The operator (`try_map`, `try_flat_map`, `try_map_async`, or a parsing source's
    /// name).
    pub operator: &'static str,
}

/// With serde (features `csv`, `json`): `{operator, error, event}`, the error as its
/// text, so that a [`JsonLinesSink`](crate::sink::JsonLinesSink) can be the dead-letter
/// consumer as it is.
#[cfg(any(feature = "csv", feature = "json", feature = "timely"))]
impl<T: serde::Serialize> serde::Serialize for DeadLetter<T> {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut letter = serializer.serialize_struct("DeadLetter", 3)?;
        letter.serialize_field("operator", self.operator)?;
        letter.serialize_field("error", &self.error.to_string())?;
        letter.serialize_field("event", &self.event)?;
        letter.end()
    }
}

/// What a fallible closure returns in its `Err`: the event it was given, back, and why it
/// failed. An `(event, error)` pair converts into it, so `map_err(|e| (event, e))` is
/// enough.
///
/// ```
/// use flowstage::flow::{ErrorPolicy, Flow, Rejected};
///
/// struct Row { id: u32, amount: String }
/// struct Sale { id: u32, cents: u64 }
///
/// // The good row moves into the sale (no clone); the bad one comes back in the error.
/// fn sale(row: Row) -> Result<Sale, Rejected<Row>> {
///     match row.amount.parse::<u64>() {
///         Ok(cents) => Ok(Sale { id: row.id, cents }),
///         Err(error) => Err(Rejected::new(row, error)),
///     }
/// }
/// let rows = vec![Row { id: 1, amount: "250".into() }, Row { id: 2, amount: "n/a".into() }];
/// let sales: Vec<Sale> = Flow::from_iter(rows).try_map(sale).on_error(ErrorPolicy::skip()).collect()?;
/// assert_eq!((sales.len(), sales[0].id, sales[0].cents), (1, 1, 250));
/// # Ok::<(), flowstage::FlowError>(())
/// ```
#[derive(Debug)]
pub struct Rejected<T> {
    /// The event the closure was given.
    pub event: T,
    /// Why it failed.
    pub error: StageError,
}

impl<T> Rejected<T> {
    /// `event` failed with `error`.
    pub fn new(event: T, error: impl Into<StageError>) -> Self {
        Rejected {
            event,
            error: error.into(),
        }
    }
}

impl<T, E: Into<StageError>> From<(T, E)> for Rejected<T> {
    fn from((event, error): (T, E)) -> Self {
        Rejected::new(event, error)
    }
}

enum Kind<T> {
    Fail,
    Skip,
    DeadLetter(Letterbox<T>),
}

impl<T> Clone for Kind<T> {
    fn clone(&self) -> Self {
        match self {
            Kind::Fail => Kind::Fail,
            Kind::Skip => Kind::Skip,
            Kind::DeadLetter(letterbox) => Kind::DeadLetter(letterbox.clone()),
        }
    }
}

/// What a fallible operator does with an `Err`: fail the run (the default), skip the event,
/// or send it to a dead-letter consumer.
///
/// ```
/// use flowstage::flow::{DeadLetter, ErrorPolicy, Flow};
/// use std::sync::{Arc, Mutex};
///
/// let input = ["1", "two", "3", "4x"];
/// let parse = |s: &'static str| s.parse::<u32>().map_err(|e| (s, e));
/// // Fail (the default): the run ends with the first error, naming the operator.
/// let error = Flow::from_iter(input).try_map(parse).collect::<Vec<_>>();
/// assert!(error.unwrap_err().to_string().contains("try_map: invalid digit"));
///
/// // Dead letter: bad events and their errors go to a consumer, in batches.
/// let letters = Arc::new(Mutex::new(Vec::new()));
/// let into = letters.clone();
/// let policy = ErrorPolicy::dead_letter_fn(move |batch: Vec<DeadLetter<&str>>| {
///     into.lock().unwrap().extend(batch.into_iter().map(|l| (l.event, l.error.to_string())));
///     Ok(())
/// });
/// let report = Flow::from_iter(input).try_map(parse).on_error(policy).run()?;
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
    ///     .try_map(|s: &str| s.parse::<u32>().map_err(|e| (s, e)))
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
    ///     .try_map(|s: &str| s.parse::<u32>().map_err(|e| (s, e)))
    ///     .on_error(ErrorPolicy::skip())
    ///     .collect()?;
    /// assert_eq!(n, [1]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn skip() -> Self {
        Self::with(Kind::Skip)
    }

    /// Failed events go, with their errors, to `consumer`: any
    /// [`Consumer`](crate::stage::Consumer) of [`DeadLetter`]s — a
    /// [`JsonLinesSink`](crate::sink::JsonLinesSink) after a `map`, a
    /// [`sink::blocking`](crate::sink::blocking) that owns a database connection, a
    /// Redis stream sink. It runs as a stage of its own, under its own demand: the
    /// stages that make letters wait when it is behind. Its `Err` ends the run; its
    /// `handle_done` runs before the run ends.
    ///
    /// ```
    /// use flowstage::flow::{DeadLetter, ErrorPolicy, Flow};
    /// use flowstage::sink;
    ///
    /// // The consumer owns its state (here a Vec; a file, a connection), on a blocking thread.
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let letters = sink::blocking(Vec::new(), |kept: &mut Vec<String>, batch: Vec<DeadLetter<&str>>| {
    ///     kept.extend(batch.into_iter().map(|l| format!("{}: {}", l.event, l.error)));
    ///     Ok(())
    /// })
    /// .on_done(move |kept| Ok(tx.send(kept)?));
    /// let sum: u32 = Flow::from_iter(["1", "x", "2"])
    ///     .try_map(|s: &str| s.parse::<u32>().map_err(|e| (s, e)))
    ///     .on_error(ErrorPolicy::dead_letter(letters))
    ///     .collect::<Vec<u32>>()?
    ///     .into_iter()
    ///     .sum();
    /// assert_eq!(sum, 3);
    /// assert_eq!(rx.recv().unwrap(), ["x: invalid digit found in string"]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn dead_letter<C>(consumer: C) -> Self
    where
        T: Send + 'static,
        C: Consumer<Item = DeadLetter<T>> + 'static,
    {
        Self::with(Kind::DeadLetter(Letterbox::new(consumer)))
    }

    /// [`dead_letter`](ErrorPolicy::dead_letter) into a closure called with each batch of
    /// letters, in a stage of its own. See the type's example.
    pub fn dead_letter_fn<F>(sink: F) -> Self
    where
        T: Send + 'static,
        F: FnMut(Vec<DeadLetter<T>>) -> std::result::Result<(), StageError> + Send + 'static,
    {
        Self::dead_letter(SinkConsumer::new(sink))
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

    /// Lists the counters in the run's report under `operator`, and adds the dead-letter
    /// stages, if any: what compiling an operator (or a source) with this policy does.
    pub(crate) fn install(
        &self,
        pipeline: &mut crate::stage::Pipeline,
        operator: &'static str,
    ) -> Result<()> {
        pipeline.error_counters(operator, self.counters());
        match &self.kind {
            Kind::DeadLetter(letterbox) => letterbox.install(pipeline, operator),
            _ => Ok(()),
        }
    }

    pub(crate) fn handler(&self, operator: &'static str) -> ErrorHandler<T> {
        ErrorHandler {
            kind: self.kind.clone(),
            counters: self.counters.clone(),
            operator,
            letters: Vec::new(),
            skipped: 0,
            failed: None,
            waits: Vec::new(),
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
/// settles them once per batch (counters, letters to the dead-letter consumer).
pub(crate) struct ErrorHandler<T> {
    kind: Kind<T>,
    counters: Arc<ErrorCounters>,
    operator: &'static str,
    letters: Vec<DeadLetter<T>>,
    skipped: u64,
    failed: Option<StageError>,
    /// Letters that found the channel full: the stage awaits these before more input.
    waits: Vec<SideOutput>,
}

impl<T: Send + 'static> ErrorHandler<T> {
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

    /// Handles a closure's `Err`.
    #[cold]
    pub(crate) fn rejected(&mut self, rejected: impl Into<Rejected<T>>) {
        let Rejected { event, error } = rejected.into();
        self.error(event, error);
    }

    /// Settles the batch: counts, and dead letters on their way to their consumer.
    pub(crate) fn settle(&mut self) {
        self.counters.add_skipped(std::mem::take(&mut self.skipped));
        if self.letters.is_empty() {
            return;
        }
        if let Kind::DeadLetter(letterbox) = &self.kind {
            let letters = std::mem::take(&mut self.letters);
            // Behind letters already waiting, these wait too: letters keep their order.
            let wait = letterbox.send(
                letters,
                self.operator,
                &self.counters,
                !self.waits.is_empty(),
            );
            self.waits.extend(wait);
        }
    }

    /// The next send the stage must wait for, if any.
    pub(crate) fn side_output(&mut self) -> Option<SideOutput> {
        (!self.waits.is_empty()).then(|| self.waits.remove(0))
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
            waits: Vec::new(),
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

        impl<A, U, R, F, L> Logic for $name<A, F, L>
        where
            A: Send + 'static,
            R: Into<Rejected<A>>,
            F: Fn(A) -> std::result::Result<U, R> + Send + Sync,
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
                    let $ok = events.map_while(|event| match f(event) {
                        Ok(value) => Some(value),
                        Err(rejected) => {
                            errors.rejected(rejected);
                            None
                        }
                    });
                    self.rest.feed($adapt, out);
                } else {
                    let $ok = events.filter_map(|event| match f(event) {
                        Ok(value) => Some(value),
                        Err(rejected) => {
                            errors.rejected(rejected);
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

            fn side_output(&mut self) -> Option<SideOutput> {
                self.errors.side_output().or_else(|| self.rest.side_output())
            }

            fn routed(&mut self) -> Option<&mut Vec<Vec<Self::Out>>> {
                self.rest.routed()
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

        impl<P, F, R, $($extra),*> Plan for $node<P, F>
        where
            P: Plan,
            R: Into<Rejected<P::Item>> + 'static,
            $($bounds)*
        {
            type Item = $item;
            const REDUCES: bool = P::REDUCES;

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
                let (inner, label, policy, logic) = self.into_logic(logic);
                policy.install(compiler.pipeline.inner(), label)?;
                inner.compile(compiler, logic, dispatch)
            }
        }

        impl<P: Plan, F> $node<P, F> {
            /// The node's input, its name and error policy, and its logic before `rest`,
            /// for either backend.
            #[allow(clippy::type_complexity)]
            pub(crate) fn into_logic<L>(
                self,
                rest: L,
            ) -> (P, &'static str, ErrorPolicy<P::Item>, $logic<P::Item, F, L>) {
                let policy = self.policy;
                let logic = $logic {
                    f: self.f,
                    errors: policy.handler($label),
                    rest,
                    _in: PhantomData,
                };
                (self.inner, $label, policy, logic)
            }
        }
    };
}

fallible_node! {
    /// `try_map`.
    TryMapNode => TryMap, "try_map", [U], Item = U,
    where { U: Send + 'static, F: Fn(P::Item) -> std::result::Result<U, R> + Send + Sync, }
}

fallible_node! {
    /// `try_flat_map`.
    TryFlatMapNode => TryFlatMap, "try_flat_map", [I], Item = I::Item,
    where {
        I: IntoIterator,
        I::Item: Send + 'static,
        F: Fn(P::Item) -> std::result::Result<I, R> + Send + Sync,
    }
}
