//! Pipelines whose stages borrow: the one module of the crate with `unsafe` code.
//!
//! A flow's blocking terminals (`collect`, `run`, `sum`, `for_each`, ...) return only after
//! every stage of the run has ended, as `std::thread::scope` returns only after every
//! thread it spawned was joined. So, as there, the closures and sources of such a flow may
//! borrow data of the caller (`.map(|id| prices[&id])` over a local map). tokio's tasks,
//! though, must be `'static`: a stage's task that borrows for `'a` is spawned as a
//! `'static` one, with `'a` erased.
//!
//! # The invariant
//!
//! **A [`ScopedPipeline<'a>`] never lets a task it spawned outlive `'a`.** It holds:
//! - Stages are added only through a `ScopedPipeline<'a>`, whose methods take code that
//!   lives for `'a`; it erases `'a` from the stage's task as it adds it.
//! - A `ScopedPipeline<'a>` is only run by [`ScopedPipeline::run`], which returns after every
//!   task it spawned has completed or was cancelled — and a tokio task's future is dropped
//!   before its join handle reports either — so nothing borrowed is touched once it
//!   returns. It cannot be spawned, turned into a [`Pipeline`] or a running handle, or
//!   left running: only a `ScopedPipeline<'static>`, which borrows nothing, becomes a
//!   `Pipeline` ([`into_pipeline`](ScopedPipeline::into_pipeline)).
//! - Should the wait in [`ScopedPipeline::run`] ever unwind (it does not panic: stage
//!   panics are caught inside the tasks), the process aborts rather than let the borrows
//!   end under running tasks, as rayon does in the same place.
//!
//! - A lender thread ([`ScopedPipeline::spawn_lender`], rayon's driver for
//!   `from_par_iter`) may borrow for `'a` too: it is joined before the pipeline is gone,
//!   after the stages (which hold what makes it end).
//!
//! Dropping a `ScopedPipeline` that never ran drops its stages' code unrun, within `'a`.
//! The tests in `tests/scoped.rs` run borrowing flows to completion and to failure, and
//! check that nothing runs after the terminal returned; `.ci/run` runs them under
//! valgrind, which reports a use of freed memory. Not under Miri: it needs a nightly
//! component these machines cannot fetch; nor loom (there are no atomics here).

#![allow(unsafe_code)]

use std::marker::PhantomData;

use super::dispatcher::ScopedDispatcher;
use super::pipeline::{Pipeline, Prepare, ProducerOptions, Report};
use super::{
    ConsumerOptions, ConsumerRef, Producer, ProducerConsumer, ProducerRef, SubscribeOptions,
};
use crate::error::{Result, StageInfo};
use crate::stage::Consumer;

/// A [`Pipeline`] whose stages may borrow for `'a`; see the [module docs](self).
pub(crate) struct ScopedPipeline<'a> {
    /// (An `Option` only so that `Drop` can take it before joining the lenders.)
    pipeline: Option<Pipeline>,
    /// Threads that lend its stages what they read (a rayon producer's parts), joined
    /// once the stages are gone.
    lenders: Vec<std::thread::JoinHandle<()>>,
    /// Invariant in `'a`: a pipeline borrowing for a short time is not one for a long time.
    _borrows: PhantomData<fn(&'a ()) -> &'a ()>,
}

impl std::fmt::Debug for ScopedPipeline<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.pipeline.fmt(f)
    }
}

impl Drop for ScopedPipeline<'_> {
    fn drop(&mut self) {
        // The stages first: a lender waits for them (for the first demand, or for room in
        // their channel) and ends once they are gone.
        drop(self.pipeline.take());
        for lender in self.lenders.drain(..) {
            let _ = lender.join();
        }
    }
}

/// Erases `'a` from a stage's code.
///
/// # Safety
///
/// The stage must not run, nor be dropped, after `'a` ends: it is pushed into a
/// [`ScopedPipeline<'a>`], which upholds that (see the module docs).
unsafe fn erase<'a>(prepare: Prepare<'a>) -> Prepare<'static> {
    // SAFETY: the two types differ only in a lifetime, which has no say in layout; the
    // caller guarantees that neither the closure nor the task it makes (whose type is
    // erased with it) runs or is dropped after `'a`.
    unsafe { std::mem::transmute::<Prepare<'a>, Prepare<'static>>(prepare) }
}

impl<'a> ScopedPipeline<'a> {
    /// A pipeline that borrows nothing yet.
    pub(crate) fn new(pipeline: Pipeline) -> Self {
        ScopedPipeline {
            pipeline: Some(pipeline),
            lenders: Vec::new(),
            _borrows: PhantomData,
        }
    }

    fn push(&mut self, info: StageInfo, prepare: Prepare<'a>) {
        // SAFETY: this pipeline runs only through `run`, which joins every task before it
        // returns (module docs); `'a` outlives `self`.
        let prepare = unsafe { erase(prepare) };
        self.inner().push(info, prepare);
    }

    /// Starts a thread that lends the stages what they read and may borrow for `'a`; it
    /// is joined once the stages are gone (when the pipeline has run, or is dropped).
    pub(crate) fn spawn_lender(
        &mut self,
        name: &str,
        lend: impl FnOnce() + Send + 'a,
    ) -> std::io::Result<()> {
        let builder = std::thread::Builder::new().name(name.into());
        // SAFETY: the thread is joined before `self` is gone (in `run` and in `Drop`),
        // and `'a` outlives `self`: it ends before what it borrows does.
        let lender = unsafe { builder.spawn_unchecked(lend) }?;
        self.lenders.push(lender);
        Ok(())
    }

    /// Adds a producer; `dispatcher` replaces the options' one.
    pub(crate) fn producer<P: Producer + 'a>(
        &mut self,
        producer: P,
        options: ProducerOptions<P::Item>,
        dispatcher: ScopedDispatcher<'a, P::Item>,
    ) -> ProducerRef<P::Item> {
        let (info, prepare, producer) = self.inner().producer_parts(producer, options, dispatcher);
        self.push(info, prepare);
        producer
    }

    /// Adds a producer-consumer named `name`.
    pub(crate) fn producer_consumer<S: ProducerConsumer + 'a>(
        &mut self,
        stage: S,
        name: String,
        dispatcher: ScopedDispatcher<'a, S::Out>,
    ) -> (ConsumerRef<S::In>, ProducerRef<S::Out>) {
        let (info, prepare, refs) =
            self.inner()
                .producer_consumer_parts(stage, Some(name), dispatcher);
        self.push(info, prepare);
        refs
    }

    /// Adds a consumer.
    pub(crate) fn consumer<C: Consumer + 'a>(
        &mut self,
        consumer: C,
        options: ConsumerOptions,
    ) -> ConsumerRef<C::Item> {
        let (info, prepare, consumer) = self.inner().consumer_parts(consumer, options);
        self.push(info, prepare);
        consumer
    }

    /// [`Pipeline::subscribe`].
    pub(crate) fn subscribe<T>(
        &mut self,
        consumer: &ConsumerRef<T>,
        producer: &ProducerRef<T>,
        options: SubscribeOptions<T>,
    ) -> Result<()> {
        self.inner().subscribe(consumer, producer, options)
    }

    /// The pipeline, for what does not add stages (error counters, the shutdown handle).
    pub(crate) fn inner(&mut self) -> &mut Pipeline {
        self.pipeline.get_or_insert_with(Pipeline::new)
    }

    /// Runs the pipeline to its end, blocking, as [`Pipeline::run`]; returns only once
    /// every stage's task has ended.
    pub(crate) fn run(mut self) -> Result<Report> {
        let abort = AbortOnUnwind;
        // `Pipeline::run` blocks until `Running::join` has seen every task end (on failure
        // it aborts the others and waits for each), on the shared runtime or on a runtime
        // of its own that it drops before returning. Dropping `self` then joins the
        // lenders.
        let report = self.inner_take().run();
        drop(self);
        std::mem::forget(abort);
        report
    }

    fn inner_take(&mut self) -> Pipeline {
        self.pipeline.take().unwrap_or_default()
    }
}

impl ScopedPipeline<'static> {
    /// The pipeline itself: one that borrows nothing may be spawned or handed out.
    pub(crate) fn into_pipeline(mut self) -> Pipeline {
        // The lenders borrow nothing: they end on their own once the stages are gone.
        for lender in self.lenders.drain(..) {
            drop(lender);
        }
        self.inner_take()
    }
}

/// Aborts the process if dropped while unwinding: the tasks of a scoped run may still be
/// running, and returning would end what they borrow under them.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("flowstage: a scoped run unwound while its stages may run; aborting");
            std::process::abort();
        }
    }
}
