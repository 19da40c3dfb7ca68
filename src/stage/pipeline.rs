//! Building a pipeline of stages, starting it, and watching it run.
//!
//! Every subscription is wired before any stage runs, so a producer that finishes at once
//! is an ordinary completion, never a race with its consumers subscribing.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::task::JoinSet;

use super::buffer::{BufferKeep, DEFAULT_BUFFER_SIZE};
use super::demand::{Cancel, SubscribeOptions};
use super::dispatcher::{Dispatcher, ScopedDispatcher};
use super::link::{Control, Msg, OutletSpec, Spares};
use super::metrics::{ErrorCounters, ErrorSnapshot, StageMetrics, StageSnapshot};
use super::run::{self, InflowSpec, ProducerSettings};
use super::shutdown::ShutdownHandle;
use super::{Consumer, Producer, ProducerConsumer};
use crate::error::{FlowError, Result, StageInfo, StageKind};

/// A stage's task. `'a`: what it borrows (`'static` but for the flow layer's scoped runs).
pub(super) type StageFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// What a stage needs at start, after all subscriptions are known.
pub(super) struct Prepared<'a> {
    pub(super) body: StageFuture<'a>,
    /// Sends `Failed` to each consumer, should the stage fail.
    notify_failure: Vec<Box<dyn FnOnce() + Send>>,
    /// Producers to tell that this stage is gone, when it ends.
    upstream: Vec<(Arc<dyn Control>, usize)>,
    /// Every subscription to this stage is temporary: its failure does not end the run.
    tolerated: bool,
}

/// Builds a stage's task once every subscription is known.
pub(super) type Prepare<'a> =
    Box<dyn FnOnce(StageInfo, Arc<StageMetrics>) -> Result<Prepared<'a>> + Send + 'a>;

struct StageEntry {
    info: StageInfo,
    metrics: Arc<StageMetrics>,
    prepare: Prepare<'static>,
}

static NEXT_PIPELINE: AtomicU64 = AtomicU64::new(0);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The wiring locks never run user code, so a poisoned lock still holds sound data.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A graph of stages being built; nothing runs until [`run`](Pipeline::run),
/// [`run_async`](Pipeline::run_async) or [`spawn`](Pipeline::spawn).
///
/// ```
/// use flowstage::stage::{Pipeline, SubscribeOptions, consumer_fn, from_iter};
/// let mut pipeline = Pipeline::new();
/// let letters = pipeline.producer(from_iter(['a', 'b', 'c']));
/// let printer = pipeline.consumer(consumer_fn(|batch: Vec<char>| println!("{batch:?}")));
/// pipeline.subscribe(&printer, &letters, SubscribeOptions::new())?;
/// let report = pipeline.run()?;
/// assert_eq!(report.stages[1].events_in, 3);
/// # Ok::<(), flowstage::FlowError>(())
/// ```
#[must_use = "a pipeline does nothing until it is run"]
pub struct Pipeline {
    id: u64,
    stages: Vec<StageEntry>,
    errors: Vec<FlowError>,
    error_counters: Vec<(String, Arc<ErrorCounters>)>,
    /// Shared by every producer: asks them all to finish (see [`Running::shutdown_handle`]).
    shutdown: ShutdownHandle,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field(
                "stages",
                &self.stages.iter().map(|s| &s.info).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new()
    }
}

/// A handle to a producing stage (producer or producer-consumer) of a [`Pipeline`], for
/// subscribing consumers to it.
pub struct ProducerRef<T> {
    pipeline: u64,
    index: usize,
    outlets: Arc<Mutex<Vec<OutletSpec<T>>>>,
    control: Arc<dyn Control>,
}

/// A handle to a consuming stage (consumer or producer-consumer) of a [`Pipeline`], for
/// subscribing it to producers.
pub struct ConsumerRef<T> {
    pipeline: u64,
    index: usize,
    tx: UnboundedSender<Msg<T>>,
    inflows: Arc<Mutex<Vec<InflowSpec>>>,
    spares: Arc<Spares<T>>,
}

impl<T> std::fmt::Debug for ProducerRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProducerRef(stage {})", self.index)
    }
}

impl<T> std::fmt::Debug for ConsumerRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConsumerRef(stage {})", self.index)
    }
}

/// Options of a producer.
///
/// ```
/// use flowstage::stage::{BufferKeep, ProducerOptions};
/// use std::time::Duration;
/// let options = ProducerOptions::<u64>::new()
///     .name("queue poller")
///     .buffer_size(100)
///     .buffer_keep(BufferKeep::First)
///     .retry_interval(Duration::from_millis(5));
/// # let _ = options;
/// ```
#[derive(Debug)]
pub struct ProducerOptions<T> {
    name: Option<String>,
    dispatcher: Dispatcher<T>,
    buffer_size: usize,
    buffer_keep: BufferKeep,
    retry_interval: Duration,
}

impl<T: Send + 'static> Default for ProducerOptions<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + 'static> ProducerOptions<T> {
    /// Defaults: demand dispatcher, buffer of 10 000 keeping the last, retry after 10 ms.
    pub fn new() -> Self {
        ProducerOptions {
            name: None,
            dispatcher: Dispatcher::demand(),
            buffer_size: DEFAULT_BUFFER_SIZE,
            buffer_keep: BufferKeep::Last,
            retry_interval: Duration::from_millis(10),
        }
    }

    /// The stage's name in errors and metrics.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Who gets which event.
    pub fn dispatcher(mut self, dispatcher: Dispatcher<T>) -> Self {
        self.dispatcher = dispatcher;
        self
    }

    /// How many events made beyond demand are kept.
    pub fn buffer_size(mut self, buffer_size: usize) -> Self {
        self.buffer_size = buffer_size;
        self
    }

    /// Which events a full buffer keeps.
    pub fn buffer_keep(mut self, buffer_keep: BufferKeep) -> Self {
        self.buffer_keep = buffer_keep;
        self
    }

    /// How long to wait before asking again a producer that returned no events while
    /// demand was pending.
    pub fn retry_interval(mut self, retry_interval: Duration) -> Self {
        self.retry_interval = retry_interval;
        self
    }
}

/// Options of a producer-consumer.
#[derive(Debug)]
pub struct ProducerConsumerOptions<T> {
    name: Option<String>,
    dispatcher: Dispatcher<T>,
}

impl<T: Send + 'static> Default for ProducerConsumerOptions<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + 'static> ProducerConsumerOptions<T> {
    /// Defaults: demand dispatcher.
    ///
    /// ```
    /// use flowstage::stage::{Dispatcher, ProducerConsumerOptions};
    /// let options = ProducerConsumerOptions::<u64>::new()
    ///     .name("splitter")
    ///     .dispatcher(Dispatcher::partition_by_key(|n: &u64| *n));
    /// # let _ = options;
    /// ```
    pub fn new() -> Self {
        ProducerConsumerOptions {
            name: None,
            dispatcher: Dispatcher::demand(),
        }
    }

    /// The stage's name in errors and metrics.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Who gets which event.
    pub fn dispatcher(mut self, dispatcher: Dispatcher<T>) -> Self {
        self.dispatcher = dispatcher;
        self
    }
}

/// Options of a consumer.
///
/// ```
/// use flowstage::stage::ConsumerOptions;
/// let options = ConsumerOptions::new().name("database writer");
/// # let _ = options;
/// ```
#[derive(Debug, Default)]
pub struct ConsumerOptions {
    name: Option<String>,
}

impl ConsumerOptions {
    /// Defaults: no name (the stage is called `consumer#<index>`).
    pub fn new() -> Self {
        Self::default()
    }

    /// The stage's name in errors and metrics.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
}

/// Outlets of a stage, ready for its dispatcher, plus what its wrapper needs.
struct Wired<T> {
    outlets: Vec<super::link::Outlet<T>>,
    notify_failure: Vec<Box<dyn FnOnce() + Send>>,
    tolerated: bool,
}

fn wire_outlets<T: Send + 'static>(
    specs: Vec<OutletSpec<T>>,
    dispatcher_kind: &str,
    stage: &StageInfo,
    metrics: &Arc<StageMetrics>,
) -> Result<Wired<T>> {
    let tolerated = !specs.is_empty() && specs.iter().all(|s| s.cancel == Cancel::Temporary);
    let notify_failure = specs
        .iter()
        .map(|spec| {
            let tx = spec.tx.clone();
            let from = spec.from;
            Box::new(move || {
                let _ = tx.send(Msg::Failed { from });
            }) as Box<dyn FnOnce() + Send>
        })
        .collect();
    let count = specs.len();
    let mut outlets: Vec<_> = specs
        .into_iter()
        .enumerate()
        .map(|(sub, spec)| spec.into_outlet(sub, metrics.clone()))
        .collect();
    if dispatcher_kind == "partition" {
        let mut seen = vec![false; count];
        for (sub, outlet) in outlets.iter_mut().enumerate() {
            let partition = *outlet.partition.get_or_insert(sub);
            match seen.get_mut(partition) {
                Some(taken) if !*taken => *taken = true,
                _ => {
                    return Err(FlowError::Config(format!(
                        "{stage}: partition {partition} is out of range or taken twice \
                         ({count} subscribers make partitions 0..{count})"
                    )));
                }
            }
        }
    }
    Ok(Wired {
        outlets,
        notify_failure,
        tolerated,
    })
}

impl Pipeline {
    /// An empty pipeline.
    pub fn new() -> Self {
        Pipeline {
            id: NEXT_PIPELINE.fetch_add(1, Ordering::Relaxed),
            stages: Vec::new(),
            errors: Vec::new(),
            error_counters: Vec::new(),
            shutdown: ShutdownHandle::new(),
        }
    }

    fn info(&self, name: Option<String>, kind: StageKind) -> StageInfo {
        let index = self.stages.len();
        StageInfo {
            name: name.unwrap_or_else(|| format!("{kind}#{index}")),
            kind,
            index,
        }
    }

    /// The handle that will drain this pipeline's run; the same as the running handle's
    /// [`Running::shutdown_handle`], available before the run starts.
    pub(crate) fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Adds a producer with default options.
    pub fn producer<P: Producer + 'static>(&mut self, producer: P) -> ProducerRef<P::Item> {
        self.producer_with(producer, ProducerOptions::new())
    }

    /// Adds a producer.
    pub fn producer_with<P: Producer + 'static>(
        &mut self,
        producer: P,
        mut options: ProducerOptions<P::Item>,
    ) -> ProducerRef<P::Item> {
        let dispatcher = std::mem::take(&mut options.dispatcher).scoped;
        let (info, prepare, producer) = self.producer_parts(producer, options, dispatcher);
        self.push(info, prepare);
        producer
    }

    /// What adding a producer takes, for any lifetime `'a` its code borrows for; the
    /// caller pushes the stage (`'static`) or erases `'a` first (`stage::scoped`).
    pub(super) fn producer_parts<'a, P: Producer + 'a>(
        &mut self,
        producer: P,
        options: ProducerOptions<P::Item>,
        dispatcher: ScopedDispatcher<'a, P::Item>,
    ) -> (StageInfo, Prepare<'a>, ProducerRef<P::Item>) {
        let info = self.info(options.name.clone(), StageKind::Producer);
        let (tx, inbox) = unbounded_channel::<Msg<Infallible>>();
        let outlets = Arc::new(Mutex::new(Vec::new()));
        let wiring = outlets.clone();
        let ProducerOptions {
            buffer_size,
            buffer_keep,
            retry_interval,
            ..
        } = options;
        let shutdown = self.shutdown.listener();
        let prepare: Prepare<'a> = Box::new(move |stage, metrics| {
            let specs = std::mem::take(&mut *lock(&wiring));
            let wired = wire_outlets(specs, dispatcher.kind, &stage, &metrics)?;
            let dispatch = (dispatcher.build)(wired.outlets);
            let settings = ProducerSettings {
                buffer_size,
                buffer_keep,
                retry_interval,
                shutdown,
            };
            Ok(Prepared {
                body: Box::pin(run::run_producer(
                    stage, producer, inbox, dispatch, settings, metrics,
                )),
                notify_failure: wired.notify_failure,
                upstream: Vec::new(),
                tolerated: wired.tolerated,
            })
        });
        let producer = ProducerRef {
            pipeline: self.id,
            index: self.stages.len(),
            outlets,
            control: Arc::new(tx),
        };
        (info, prepare, producer)
    }

    /// Adds a producer-consumer with default options.
    pub fn producer_consumer<S: ProducerConsumer + 'static>(
        &mut self,
        stage: S,
    ) -> (ConsumerRef<S::In>, ProducerRef<S::Out>) {
        self.producer_consumer_with(stage, ProducerConsumerOptions::new())
    }

    /// Adds a producer-consumer.
    pub fn producer_consumer_with<S: ProducerConsumer + 'static>(
        &mut self,
        inner: S,
        options: ProducerConsumerOptions<S::Out>,
    ) -> (ConsumerRef<S::In>, ProducerRef<S::Out>) {
        let (info, prepare, refs) =
            self.producer_consumer_parts(inner, options.name, options.dispatcher.scoped);
        self.push(info, prepare);
        refs
    }

    /// What adding a producer-consumer takes (see [`producer_parts`](Self::producer_parts)).
    #[allow(clippy::type_complexity)]
    pub(super) fn producer_consumer_parts<'a, S: ProducerConsumer + 'a>(
        &mut self,
        inner: S,
        name: Option<String>,
        dispatcher: ScopedDispatcher<'a, S::Out>,
    ) -> (
        StageInfo,
        Prepare<'a>,
        (ConsumerRef<S::In>, ProducerRef<S::Out>),
    ) {
        let info = self.info(name, StageKind::ProducerConsumer);
        let (tx, inbox) = unbounded_channel::<Msg<S::In>>();
        let spares = Spares::new();
        let stage_spares = spares.clone();
        let outlets = Arc::new(Mutex::new(Vec::new()));
        let inflows = Arc::new(Mutex::new(Vec::new()));
        let (out_wiring, in_wiring) = (outlets.clone(), inflows.clone());
        let prepare: Prepare<'a> = Box::new(move |stage, metrics| {
            let specs = std::mem::take(&mut *lock(&out_wiring));
            let wired = wire_outlets(specs, dispatcher.kind, &stage, &metrics)?;
            let dispatch = (dispatcher.build)(wired.outlets);
            let inflows: Vec<InflowSpec> = std::mem::take(&mut *lock(&in_wiring));
            let upstream = inflows.iter().map(|i| (i.control.clone(), i.sub)).collect();
            Ok(Prepared {
                body: Box::pin(run::run_producer_consumer(
                    stage,
                    inner,
                    inbox,
                    inflows,
                    stage_spares,
                    dispatch,
                    metrics,
                )),
                notify_failure: wired.notify_failure,
                upstream,
                tolerated: wired.tolerated,
            })
        });
        let index = self.stages.len();
        let refs = (
            ConsumerRef {
                pipeline: self.id,
                index,
                tx: tx.clone(),
                inflows,
                spares,
            },
            ProducerRef {
                pipeline: self.id,
                index,
                outlets,
                control: Arc::new(tx),
            },
        );
        (info, prepare, refs)
    }

    /// Adds a consumer with default options.
    pub fn consumer<C: Consumer + 'static>(&mut self, consumer: C) -> ConsumerRef<C::Item> {
        self.consumer_with(consumer, ConsumerOptions::new())
    }

    /// Lists an error policy's counters in this pipeline's [`Report`] under `operator`
    /// (fallible flow operators and parsing sources do this when compiled).
    pub(crate) fn error_counters(&mut self, operator: &str, counters: Arc<ErrorCounters>) {
        self.error_counters.push((operator.to_string(), counters));
    }

    /// Adds a consumer.
    pub fn consumer_with<C: Consumer + 'static>(
        &mut self,
        consumer: C,
        options: ConsumerOptions,
    ) -> ConsumerRef<C::Item> {
        let (info, prepare, consumer) = self.consumer_parts(consumer, options);
        self.push(info, prepare);
        consumer
    }

    /// What adding a consumer takes (see [`producer_parts`](Self::producer_parts)).
    pub(super) fn consumer_parts<'a, C: Consumer + 'a>(
        &mut self,
        consumer: C,
        options: ConsumerOptions,
    ) -> (StageInfo, Prepare<'a>, ConsumerRef<C::Item>) {
        let info = self.info(options.name, StageKind::Consumer);
        let (tx, inbox) = unbounded_channel::<Msg<C::Item>>();
        let inflows = Arc::new(Mutex::new(Vec::new()));
        let in_wiring = inflows.clone();
        let prepare: Prepare<'a> = Box::new(move |stage, metrics| {
            let inflows: Vec<InflowSpec> = std::mem::take(&mut *lock(&in_wiring));
            let upstream = inflows.iter().map(|i| (i.control.clone(), i.sub)).collect();
            Ok(Prepared {
                body: Box::pin(run::run_consumer(stage, consumer, inbox, inflows, metrics)),
                notify_failure: Vec::new(),
                upstream,
                tolerated: false,
            })
        });
        let consumer = ConsumerRef {
            pipeline: self.id,
            index: self.stages.len(),
            tx,
            inflows,
            // A consumer hands its batches to user code: none come back.
            spares: Spares::new(),
        };
        (info, prepare, consumer)
    }

    /// Adds a stage; its index is the number of stages before it.
    pub(super) fn push(&mut self, info: StageInfo, prepare: Prepare<'static>) {
        self.stages.push(StageEntry {
            info,
            metrics: Arc::new(StageMetrics::default()),
            prepare,
        });
    }

    /// Subscribes `consumer` to `producer`.
    ///
    /// Fails with [`FlowError::Config`] for invalid demand settings or handles from
    /// another pipeline.
    pub fn subscribe<T>(
        &mut self,
        consumer: &ConsumerRef<T>,
        producer: &ProducerRef<T>,
        options: SubscribeOptions<T>,
    ) -> Result<()> {
        options.validate()?;
        if consumer.pipeline != self.id || producer.pipeline != self.id {
            return Err(FlowError::Config(
                "subscribe: both stages must belong to this pipeline".into(),
            ));
        }
        let mut outlets = lock(&producer.outlets);
        let mut inflows = lock(&consumer.inflows);
        let from = inflows.len();
        let sub = outlets.len();
        let min_demand = options.min();
        inflows.push(InflowSpec {
            control: producer.control.clone(),
            sub,
            max_demand: options.max_demand,
            min_demand,
            mode: options.mode,
            cancel: options.cancel,
            deferred: options.deferred,
        });
        outlets.push(OutletSpec {
            tx: consumer.tx.clone(),
            from,
            max_demand: options.max_demand,
            cancel: options.cancel,
            partition: options.partition,
            selector: options.selector,
            spares: consumer.spares.clone(),
        });
        consumer.spares.allow(options.max_demand);
        Ok(())
    }

    /// Whether no stage has been added yet.
    #[cfg(feature = "timely")]
    pub(crate) fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Runs the pipeline to completion, blocking the calling thread, on flowstage's shared
    /// runtime (one per process, started on first use). Called from inside a tokio
    /// runtime — possibly from a stage of another flow, whose worker must not wait on the
    /// pool it occupies — it runs on a runtime of its own, on a thread of its own.
    pub fn run(self) -> Result<Report> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return std::thread::scope(|scope| {
                scope
                    .spawn(move || {
                        let runtime = crate::runtime::build()?;
                        runtime.block_on(async move { self.spawn()?.join().await })
                    })
                    .join()
                    .unwrap_or_else(|_| Err(FlowError::Cancelled))
            });
        }
        let runtime = crate::runtime::shared()?;
        runtime.block_on(async move { self.spawn()?.join().await })
    }

    /// Runs the pipeline to completion on the caller's tokio runtime.
    pub async fn run_async(self) -> Result<Report> {
        self.spawn()?.join().await
    }

    /// Starts every stage on the current tokio runtime and returns a handle to the run.
    ///
    /// Fails with [`FlowError::Config`] outside a tokio runtime, or when a setting is
    /// invalid (nothing is started then).
    pub fn spawn(self) -> Result<Running> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            FlowError::Config("Pipeline::spawn needs a tokio runtime; use run() instead".into())
        })?;
        if let Some(error) = self.errors.into_iter().next() {
            return Err(error);
        }
        let mut infos = Vec::with_capacity(self.stages.len());
        let mut metrics = Vec::with_capacity(self.stages.len());
        let mut prepared = Vec::with_capacity(self.stages.len());
        for entry in self.stages {
            entry.metrics.export(&entry.info);
            prepared.push((entry.prepare)(entry.info.clone(), entry.metrics.clone())?);
            infos.push(entry.info);
            metrics.push(entry.metrics);
        }
        let mut tasks = JoinSet::new();
        let mut tolerated = Vec::with_capacity(prepared.len());
        for (index, stage) in prepared.into_iter().enumerate() {
            tolerated.push(stage.tolerated);
            tasks.spawn_on(supervise(index, infos[index].clone(), stage), &handle);
        }
        Ok(Running {
            tasks,
            infos,
            metrics,
            tolerated,
            error_counters: self.error_counters,
            shutdown: self.shutdown,
        })
    }
}

/// Runs one stage: catches its panics, and on its end tells its neighbours.
async fn supervise(index: usize, info: StageInfo, stage: Prepared<'static>) -> (usize, Result<()>) {
    let body = async {
        crate::observe::started(&info);
        AssertUnwindSafe(stage.body).catch_unwind().await
    };
    #[cfg(feature = "tracing")]
    let body = tracing::Instrument::instrument(body, crate::observe::span(&info));
    let result = match body.await {
        Ok(result) => result,
        Err(panic) => Err(FlowError::from_panic(&info, panic)),
    };
    if let Err(error) = &result {
        crate::observe::failed(&info, error);
    }
    if result.is_err() {
        for notify in stage.notify_failure {
            notify();
        }
    }
    for (control, sub) in stage.upstream {
        control.cancel(sub);
    }
    (index, result)
}

/// A running pipeline. Dropping it cancels every stage.
#[must_use = "dropping a Running cancels it"]
pub struct Running {
    tasks: JoinSet<(usize, Result<()>)>,
    infos: Vec<StageInfo>,
    metrics: Vec<Arc<StageMetrics>>,
    tolerated: Vec<bool>,
    error_counters: Vec<(String, Arc<ErrorCounters>)>,
    shutdown: ShutdownHandle,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("stages", &self.infos)
            .field("running", &self.tasks.len())
            .finish()
    }
}

/// What a finished run reports.
#[derive(Debug)]
pub struct Report {
    /// Every stage's counters at the end, in the order stages were added.
    pub stages: Vec<StageSnapshot>,
    /// Failures that did not end the run (stages whose subscriptions were all
    /// [`Cancel::Temporary`]).
    pub tolerated: Vec<FlowError>,
    /// What each fallible operator's error policy skipped or dead-lettered, in the order
    /// the operators were compiled (sources first).
    pub errors: Vec<ErrorSnapshot>,
}

/// A table, one line per stage — events in and out, time busy and time waiting for
/// demand — then each error policy's counts and the tolerated failures. Shown by
/// [`Running::report`] during the run too.
///
/// ```
/// use flowstage::flow::{ErrorPolicy, Flow};
/// let report = Flow::from_iter(["1", "x", "3"])
///     .try_map(|s: &str| s.parse::<u32>().map_err(|e| (s, e)))
///     .on_error(ErrorPolicy::skip())
///     .run()?;
/// let text = report.to_string();
/// assert!(text.lines().next().unwrap().starts_with("stage"));
/// assert!(text.contains("from_iter[0]"));
/// assert!(text.contains("try_map: 1 skipped, 0 dead letters"));
/// # Ok::<(), flowstage::FlowError>(())
/// ```
impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let width = self
            .stages
            .iter()
            .map(|s| s.stage.name.len())
            .max()
            .unwrap_or(0)
            .max("stage".len());
        writeln!(
            f,
            "{:<width$}  {:>12}  {:>12}  {:>10}  {:>10}",
            "stage", "events in", "events out", "busy", "waiting"
        )?;
        for stage in &self.stages {
            writeln!(
                f,
                "{:<width$}  {:>12}  {:>12}  {:>10}  {:>10}",
                stage.stage.name,
                stage.events_in,
                stage.events_out,
                format!("{:.1?}", stage.busy),
                format!("{:.1?}", stage.waiting_for_demand),
            )?;
        }
        for errors in &self.errors {
            writeln!(
                f,
                "{}: {} skipped, {} dead letters",
                errors.operator, errors.skipped, errors.dead_lettered
            )?;
        }
        for failure in &self.tolerated {
            writeln!(f, "tolerated: {failure}")?;
        }
        Ok(())
    }
}

impl Running {
    /// The run so far, as a [`Report`] (its `Display` is the same table as at the end).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new()?.block_on(async {
    /// use flowstage::flow::Flow;
    /// let running = Flow::from_iter(0..1000u32).spawn()?;
    /// let now = running.report(); // live: counters so far
    /// assert!(now.to_string().starts_with("stage"));
    /// let end = running.join().await?;
    /// assert_eq!(end.stages[0].events_out, 1000);
    /// # Ok::<(), flowstage::FlowError>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn report(&self) -> Report {
        Report {
            stages: self.metrics(),
            tolerated: Vec::new(),
            errors: self.error_counts(),
        }
    }

    /// Every stage's counters now.
    pub fn metrics(&self) -> Vec<StageSnapshot> {
        self.infos
            .iter()
            .zip(&self.metrics)
            .map(|(info, metrics)| metrics.snapshot(info))
            .collect()
    }

    /// Every error policy's counts now.
    pub fn error_counts(&self) -> Vec<ErrorSnapshot> {
        self.error_counters
            .iter()
            .map(|(operator, counters)| counters.snapshot(operator))
            .collect()
    }

    /// Waits for the run to end. The first failure cancels every other stage and is
    /// returned once they have all stopped.
    pub async fn join(mut self) -> Result<Report> {
        let mut tolerated = Vec::new();
        while let Some(joined) = self.tasks.join_next().await {
            let error = match joined {
                Ok((_, Ok(()))) => continue,
                Ok((index, Err(error))) if self.tolerated[index] => {
                    tolerated.push(error);
                    continue;
                }
                Ok((_, Err(error))) => error,
                Err(_) => FlowError::Cancelled,
            };
            crate::observe::cancelled(self.tasks.len(), Some(&error));
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
            return Err(error);
        }
        Ok(Report {
            stages: self.metrics(),
            tolerated,
            errors: self.error_counts(),
        })
    }

    /// A handle that asks the run to stop taking new input and drain: every producer
    /// finishes as if its input had ended, everything already produced is delivered, and
    /// [`join`](Running::join) returns `Ok` as on a normal end. Clone it freely; see
    /// [`ShutdownHandle`].
    ///
    /// ```
    /// # tokio::runtime::Runtime::new()?.block_on(async {
    /// use flowstage::flow::Flow;
    /// use flowstage::stage::Produced;
    /// use std::time::Duration;
    /// let endless = Flow::from_poll(|demand| Produced::Events(vec![1u8; demand]), Duration::from_millis(1));
    /// let running = endless.spawn()?;
    /// running.shutdown_handle().drain();
    /// let report = running.join().await?;
    /// assert_eq!(report.stages[0].events_out, report.stages[1].events_in);
    /// # Ok::<(), flowstage::FlowError>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Asks the run to drain ([`ShutdownHandle::drain`]) and waits for it to end.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new()?.block_on(async {
    /// use flowstage::flow::Flow;
    /// use flowstage::stage::Produced;
    /// use std::time::Duration;
    /// let mut next = 0u64;
    /// let endless = Flow::from_poll(
    ///     move |demand| {
    ///         next += demand as u64;
    ///         Produced::Events(vec![next; demand])
    ///     },
    ///     Duration::from_millis(1),
    /// );
    /// let report = endless.spawn()?.shutdown().await?;
    /// assert_eq!(report.stages[0].events_out, report.stages[1].events_in);
    /// # Ok::<(), flowstage::FlowError>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn shutdown(self) -> Result<Report> {
        self.shutdown.drain();
        self.join().await
    }

    /// Cancels every stage and waits until they have stopped.
    pub async fn cancel(mut self) {
        crate::observe::cancelled(self.tasks.len(), None);
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::stage::{
        ConsumerContext, Dispatcher, Produced, ProducerConsumer, consumer_fn, from_iter,
    };

    /// Passes its input on, draining it in place.
    struct Pass;

    impl ProducerConsumer for Pass {
        type In = u64;
        type Out = u64;

        async fn handle_events(
            &mut self,
            events: Vec<u64>,
            _context: &mut ConsumerContext,
        ) -> std::result::Result<Vec<u64>, crate::StageError> {
            Ok(events)
        }

        async fn handle_events_in_place(
            &mut self,
            events: &mut Vec<u64>,
            _context: &mut ConsumerContext,
        ) -> std::result::Result<Vec<u64>, crate::StageError> {
            // Copied out, so the input's allocation stays for the runtime to hand back.
            let mut out = Vec::with_capacity(events.len());
            out.append(events);
            Ok(out)
        }
    }

    #[test]
    fn stages_hand_their_batches_back_to_the_partitioning_producer() {
        let mut pipeline = Pipeline::new();
        let source = pipeline.producer_with(
            from_iter(0..200_000u64),
            ProducerOptions::new().dispatcher(Dispatcher::partition_by_key(|x: &u64| *x)),
        );
        let mut stages = Vec::new();
        for _ in 0..2 {
            let (input, output) = pipeline.producer_consumer(Pass);
            pipeline
                .subscribe(&input, &source, SubscribeOptions::new().max_demand(1000))
                .unwrap();
            let sink = pipeline.consumer(consumer_fn(|_batch: Vec<u64>| {}));
            pipeline
                .subscribe(&sink, &output, SubscribeOptions::new())
                .unwrap();
            stages.push(input);
        }
        let report = pipeline.run().unwrap();
        for stage in &stages {
            let batches = report.stages[stage.index].batches_in as usize;
            let reused = stage.spares.reused.load(Relaxed);
            // Every batch a stage handled went back; the source refilled most of them.
            assert!(
                batches > 20 && reused * 2 > batches,
                "{reused} of {batches} batches reused"
            );
        }
    }

    /// Routes its events into two partitions itself (by parity), as a flow's source
    /// stage does before a `partition`, and returns none.
    struct RoutesItself {
        next: u64,
        limit: u64,
        queues: Vec<Vec<u64>>,
    }

    impl Producer for RoutesItself {
        type Item = u64;

        async fn handle_demand(
            &mut self,
            demand: usize,
        ) -> std::result::Result<Produced<u64>, crate::StageError> {
            let end = (self.next + demand as u64).min(self.limit);
            for x in self.next..end {
                self.queues[(x % 2) as usize].push(x);
            }
            self.next = end;
            Ok(if end == self.limit {
                Produced::Finished(Vec::new())
            } else {
                Produced::Events(Vec::new())
            })
        }

        fn routed(&mut self) -> Option<&mut Vec<Vec<u64>>> {
            Some(&mut self.queues)
        }
    }

    #[test]
    fn what_a_producer_routed_itself_reaches_its_partitions_and_counts_as_made() {
        let mut pipeline = Pipeline::new();
        // An hour between asks of a producer that had nothing: a production whose events
        // were all routed must not look like one that had nothing, or this run would wait.
        let source = pipeline.producer_with(
            RoutesItself {
                next: 0,
                limit: 100_000,
                queues: vec![Vec::new(), Vec::new()],
            },
            ProducerOptions::new()
                .retry_interval(std::time::Duration::from_secs(3600))
                .dispatcher(Dispatcher::partition_with(|_: &u64, _| {
                    // Never consulted: the producer routed everything itself.
                    None
                })),
        );
        let seen: Vec<Arc<std::sync::Mutex<Vec<u64>>>> = (0..2).map(|_| Arc::default()).collect();
        for (partition, seen) in seen.iter().enumerate() {
            let seen = seen.clone();
            let sink = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
                if let Ok(mut seen) = seen.lock() {
                    seen.extend(batch);
                }
            }));
            pipeline
                .subscribe(
                    &sink,
                    &source,
                    SubscribeOptions::new().max_demand(100).partition(partition),
                )
                .unwrap();
        }
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(pipeline.run());
        });
        let report = wait
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the run ends without waiting out a retry interval");
        assert!(report.is_ok(), "{report:?}");
        for (partition, seen) in seen.iter().enumerate() {
            let seen = seen.lock().unwrap();
            let expected: Vec<u64> = (0..100_000).filter(|x| x % 2 == partition as u64).collect();
            assert_eq!(
                *seen, expected,
                "partition {partition}: all its events, in order"
            );
        }
    }
}
