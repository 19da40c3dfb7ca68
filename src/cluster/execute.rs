//! Starting a cluster run: connecting the processes (with a timeout), running one
//! dataflow per worker, watching the peers, and turning every failure into a
//! [`FlowError`].

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use timely::communication::Config as CommunicationConfig;
use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};
use timely::communication::initialize::Hooks;
use timely::communication::logging::{CommunicationEvent, CommunicationSetup};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::ProbeHandle;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Probe;
use timely::dataflow::operators::generic::{Operator, OutputBuilderSession, source};
use timely::logging_core::Logger;
use timely::worker::Worker;

use super::config::ClusterConfig;
use super::exchange::exchange;
use super::plan::{ClusterCompiler, ClusterPlan, ClusterStream, Time, Wire};
use super::report::{WireReport, WorkerReport, merge};
use crate::error::{FlowError, Result, panic_message};
use crate::flow::{Flow, Identity, PartitionInfo};
use crate::stage::Report;

/// Panics of timely's network threads (`timely:recv-N` / `timely:send-N`): the thread,
/// and the remote process `N`. Recorded by a panic hook, before the panic unwinds and poisons
/// the queues the workers read (which is how the workers learn of it), so a worker that
/// fails because a connection broke always finds here which peer it was.
static BROKEN: Mutex<Vec<(ThreadId, usize)>> = Mutex::new(Vec::new());

/// Installs (once, chained to the hook already there) the hook that fills [`BROKEN`].
fn watch_network_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let remote = thread.name().and_then(|name| {
                name.strip_prefix("timely:recv-")
                    .or_else(|| name.strip_prefix("timely:send-"))
                    .and_then(|remote| remote.parse::<usize>().ok())
            });
            if let Some(remote) = remote {
                let mut broken = BROKEN.lock().unwrap_or_else(|p| p.into_inner());
                broken.push((thread.id(), remote));
            }
            previous(info);
        }));
    });
}

/// What the processes of a run know about each other and about a failure.
#[derive(Debug)]
struct Shared {
    /// This run's network threads: panics of others' belong to other runs (an earlier
    /// run's threads may still be ending).
    threads: Mutex<Vec<ThreadId>>,
    /// Set once any worker of this process gives up; the others follow.
    aborted: AtomicBool,
    reason: Mutex<Option<String>>,
    /// Peers whose connection ended: `(process, cleanly, when)`.
    ended: Mutex<Vec<(usize, bool, Instant)>>,
}

impl Shared {
    fn new() -> Self {
        Shared {
            threads: Mutex::new(Vec::new()),
            aborted: AtomicBool::new(false),
            reason: Mutex::new(None),
            ended: Mutex::new(Vec::new()),
        }
    }

    fn abort(&self, reason: String) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(reason);
        // Release: a worker that sees the flag also sees the reason written before it.
        self.aborted.store(true, Ordering::Release);
    }

    fn aborted(&self) -> Option<String> {
        if !self.aborted.load(Ordering::Acquire) {
            return None;
        }
        let slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        Some(slot.clone().unwrap_or_else(|| "aborted".into()))
    }

    /// A peer that died, or else one that left cleanly more than `grace` ago, while this
    /// run is not done.
    fn lost_peer(&self, grace: Duration) -> Option<String> {
        let broken = BROKEN.lock().unwrap_or_else(|p| p.into_inner());
        let threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        let died = broken
            .iter()
            .find(|(thread, _)| threads.contains(thread))
            .map(|(_, process)| *process)
            .or_else(|| ended.iter().find(|(_, clean, _)| !clean).map(|(p, ..)| *p))
            .map(|process| {
                format!("lost the connection to process {process} (it died or the network failed)")
            });
        died.or_else(|| {
            ended
                .iter()
                .find(|(_, _, when)| when.elapsed() >= grace)
                .map(|(process, ..)| {
                    format!(
                        "process {process} closed its connection before the run finished (it \
                         failed or stopped)"
                    )
                })
        })
    }
}

/// Watches one receive thread of timely's networking: dropped when the thread ends,
/// cleanly (the peer said goodbye) or not (the thread panicked on a broken connection).
struct RecvWatch {
    remote: usize,
    clean: bool,
    shared: Arc<Shared>,
}

impl RecvWatch {
    fn observe(&mut self, batch: &LogBatch) {
        let ends = batch.iter().flatten().any(|(_, event)| {
            matches!(event, CommunicationEvent::State(state) if !state.send && !state.start)
        });
        if ends {
            self.clean = true;
        }
    }
}

impl Drop for RecvWatch {
    fn drop(&mut self) {
        let mut ended = self.shared.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended.push((self.remote, self.clean, Instant::now()));
    }
}

type LogBatch = Option<Vec<(Duration, CommunicationEvent)>>;

fn hooks(shared: &Arc<Shared>) -> Hooks {
    let shared = shared.clone();
    Hooks {
        // Called by each network thread as it starts.
        log_fn: Arc::new(move |setup: CommunicationSetup| {
            shared
                .threads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(std::thread::current().id());
            let remote = match (setup.sender, setup.remote) {
                (false, Some(remote)) => remote,
                _ => return None,
            };
            let mut watch = RecvWatch {
                remote,
                clean: false,
                shared: shared.clone(),
            };
            Some(Logger::new(
                Instant::now(),
                Duration::ZERO,
                move |_time: &Duration, batch: &mut LogBatch| watch.observe(batch),
            ))
        }),
        ..Hooks::default()
    }
}

/// Connects the processes and starts timely's networking on the connections.
fn connect(
    config: &ClusterConfig,
    shared: &Arc<Shared>,
) -> Result<(
    Vec<timely::communication::AllocatorBuilder>,
    Box<dyn std::any::Any + Send>,
)> {
    let cluster_error = |message: String| FlowError::Cluster {
        process: config.index,
        message,
    };
    if config.hosts.is_empty() {
        let communication = if config.threads == 1 {
            CommunicationConfig::Thread
        } else {
            CommunicationConfig::Process(config.threads)
        };
        return communication
            .try_build_with(hooks(shared))
            .map_err(cluster_error);
    }
    let sockets = super::connect::sockets(config)?;
    let hooks = hooks(shared);
    let process =
        ProcessBuilder::new_typed_vector(config.threads, hooks.refill.clone(), hooks.spill.clone());
    let (builders, guard) =
        initialize_networking_from_sockets(process, sockets, config.index, config.threads, hooks)
            .map_err(|error| cluster_error(format!("could not start the network: {error}")))?;
    Ok((
        builders.into_iter().map(AllocatorBuilder::Tcp).collect(),
        Box::new(guard),
    ))
}

/// Where a worker's output goes.
pub(crate) trait Sink<T>: Send + Sync + 'static {
    /// Attaches the output to `stream`, probed by `probe`; returns where a worker keeps
    /// what it gathers, if it gathers.
    fn attach<'s>(
        &self,
        stream: ClusterStream<'s, T>,
        probe: &ProbeHandle<Time>,
    ) -> Option<Rc<RefCell<Vec<T>>>>;
}

/// Everything to worker 0.
struct Gather;

impl<T: Wire> Sink<T> for Gather {
    fn attach<'s>(
        &self,
        stream: ClusterStream<'s, T>,
        probe: &ProbeHandle<Time>,
    ) -> Option<Rc<RefCell<Vec<T>>>> {
        let gathered = Rc::new(RefCell::new(Vec::new()));
        let into = gathered.clone();
        stream
            .stream
            .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                exchange(|_: &T| 0u64),
                "collect",
                move |_capability, _info| {
                    move |input, _output| {
                        input.for_each(|_time, data| into.borrow_mut().append(data));
                    }
                },
            )
            .probe_with(probe);
        Some(gathered)
    }
}

/// Each worker hands its output to a closure.
struct ForEach<F>(Arc<F>);

impl<T, F> Sink<T> for ForEach<F>
where
    T: Send + 'static,
    F: Fn(PartitionInfo, Vec<T>) + Send + Sync + 'static,
{
    fn attach<'s>(
        &self,
        stream: ClusterStream<'s, T>,
        probe: &ProbeHandle<Time>,
    ) -> Option<Rc<RefCell<Vec<T>>>> {
        let f = self.0.clone();
        let stream = stream.stream;
        let worker = PartitionInfo {
            index: stream.scope().index(),
            count: stream.scope().peers(),
        };
        stream
            .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
                Pipeline,
                "for_each",
                move |_capability, _info| {
                    move |input, _output| {
                        input.for_each(|_time, data| f(worker, std::mem::take(data)));
                    }
                },
            )
            .probe_with(probe);
        None
    }
}

/// Nowhere: the flow runs for its side effects and its report.
struct Discard;

impl<T: Send + 'static> Sink<T> for Discard {
    fn attach<'s>(
        &self,
        stream: ClusterStream<'s, T>,
        probe: &ProbeHandle<Time>,
    ) -> Option<Rc<RefCell<Vec<T>>>> {
        stream.stream.probe_with(probe);
        None
    }
}

/// What one worker ends its run with: what it gathered (worker 0 of `collect`), and the
/// run's report (worker 0).
type WorkerOutcome<T> = (Option<Vec<T>>, Option<Report>);

/// Runs the flow `build` makes on every worker of the cluster `config` describes, with
/// its output to `sink`. Returns what each local worker ended with.
fn run_flow<P, B, S>(
    config: &ClusterConfig,
    build: B,
    sink: S,
) -> Result<Vec<WorkerOutcome<P::Item>>>
where
    P: ClusterPlan,
    B: Fn() -> Flow<P> + Send + Sync + 'static,
    S: Sink<P::Item>,
{
    config.validate()?;
    if !config.hosts.is_empty() {
        watch_network_panics();
    }
    let shared = Arc::new(Shared::new());
    let (builders, others) = connect(config, &shared)?;
    let process = config.index;
    let (results, gathered) = mpsc::channel();
    let results = Mutex::new(results);
    let worker_config = config.clone();
    let worker_shared = shared.clone();
    let guards = timely::execute::execute_from(
        builders,
        others,
        timely::WorkerConfig::default(),
        move |worker: &mut Worker| {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                run_worker(worker, &worker_config, &worker_shared, &build, &sink)
            }));
            let outcome = outcome.unwrap_or_else(|payload| {
                let message = format!(
                    "worker {} panicked: {}",
                    worker.index(),
                    panic_message(payload.as_ref())
                );
                worker_shared.abort(message.clone());
                // Do not leave a dataflow behind: timely steps it until it ends.
                for dataflow in worker.installed_dataflows() {
                    let _ = catch_unwind(AssertUnwindSafe(|| worker.drop_dataflow(dataflow)));
                }
                Err(FlowError::Cluster { process, message })
            });
            let sender = results.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let _ = sender.send(outcome);
        },
    )
    .map_err(|message| FlowError::Cluster { process, message })?;
    let mut outputs = Vec::with_capacity(config.threads);
    let mut failure = None;
    for _ in 0..config.threads {
        match gathered.recv() {
            Ok(Ok(output)) => outputs.push(output),
            // The first error, except that a worker's own failure (a stage's error or
            // panic) wins over the `Cluster` errors of the workers that only report it,
            // whichever ended first.
            Ok(Err(error)) => {
                let replaces = match &failure {
                    None => true,
                    Some(FlowError::Cluster { .. }) => !matches!(error, FlowError::Cluster { .. }),
                    Some(_) => false,
                };
                if replaces {
                    failure = Some(error);
                }
            }
            Err(_) => {
                failure.get_or_insert(FlowError::Cluster {
                    process,
                    message: "a worker ended without a result".into(),
                });
                break;
            }
        }
    }
    if let Some(mut error) = failure {
        // A run that failed because a peer was lost (timely's workers panic on it) says
        // that first.
        if let (FlowError::Cluster { message, .. }, Some(lost)) =
            (&mut error, shared.lost_peer(Duration::ZERO))
        {
            if !message.starts_with(&lost) {
                *message = format!("{lost} ({message})");
            }
        }
        // Timely's guards join its network threads, which may wait on a dead peer or
        // panic on a broken connection: let them go on a thread of their own.
        let _ = std::thread::Builder::new()
            .name("flowstage:cluster-teardown".into())
            .spawn(move || drop(catch_unwind(AssertUnwindSafe(move || drop(guards)))));
        return Err(error);
    }
    // The run is complete everywhere (the frontier is empty). Timely's guards join its
    // network threads, which end once every peer has finished too; a peer that dies or
    // hangs now cannot change the result: wait at most `peer_timeout`, so that what this
    // process sends is flushed, then let the threads go.
    let (finished, teardown) = mpsc::channel();
    let _ = std::thread::Builder::new()
        .name("flowstage:cluster-teardown".into())
        .spawn(move || {
            let _ = catch_unwind(AssertUnwindSafe(move || drop(guards)));
            let _ = finished.send(());
        });
    let _ = teardown.recv_timeout(config.peer_timeout);
    Ok(outputs)
}

/// One worker: builds the dataflow, steps it to the end, watching for failures; then
/// sends its counters to worker 0, which makes the run's report.
fn run_worker<P, B, S>(
    worker: &mut Worker,
    config: &ClusterConfig,
    shared: &Shared,
    build: &B,
    sink: &S,
) -> Result<WorkerOutcome<P::Item>>
where
    P: ClusterPlan,
    B: Fn() -> Flow<P>,
    S: Sink<P::Item>,
{
    let runtime = Rc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(FlowError::Runtime)?,
    );
    let plan = build().into_plan();
    let probe = ProbeHandle::new();
    let failure = Rc::new(RefCell::new(None));
    let report = Rc::new(RefCell::new(WorkerReport::default()));
    let letters = Rc::new(RefCell::new(crate::stage::Pipeline::new()));
    let dataflow = worker.next_dataflow_index();
    // Timely's outermost scope needs a timestamp refining `()`; the flow's lexicographic
    // pairs live in a scope of their own inside it.
    let built = worker.dataflow::<u64, _, _>(|outer| {
        outer.scoped::<Time, _, _>("flow", |scope| {
            let mut compiler = ClusterCompiler {
                scope,
                probe: probe.clone(),
                gates: Vec::new(),
                runtime,
                failure: failure.clone(),
                epochs_ahead: config.epochs_ahead,
                epoch_events: config.epoch_events,
                report: report.clone(),
                letters: letters.clone(),
            };
            let stream = plan.timely(&mut compiler, Identity::new(), None)?;
            Ok(sink.attach(stream, &probe))
        })
    });
    let gathered = match built {
        Ok(gathered) => gathered,
        Err(error) => {
            // Every worker builds the same plan, so every worker fails the same way.
            worker.drop_dataflow(dataflow);
            return Err(error);
        }
    };
    // The error policies' dead-letter consumers run on a thread of their own, on the
    // stages' runtime, for as long as the dataflow sends them letters.
    let letters = std::mem::take(&mut *letters.borrow_mut());
    let letters = LetterStages::start(letters, worker.index())?;
    let done = || probe.done();
    let stepped = step_until(worker, config, shared, &failure, dataflow, done);
    // The operators hold the letters' senders: once they are gone, the letter stages end.
    if worker.installed_dataflows().contains(&dataflow) {
        worker.drop_dataflow(dataflow);
    }
    let lettered = letters.join(config.index);
    stepped?;
    lettered?;
    let gathered = gathered.map(|gathered| std::mem::take(&mut *gathered.borrow_mut()));
    // Every worker's counters to worker 0, in a dataflow of their own.
    let part = report.borrow().wire();
    let parts = Rc::new(RefCell::new(Vec::new()));
    let into = parts.clone();
    let report_probe = ProbeHandle::new();
    let dataflow = worker.next_dataflow_index();
    worker.dataflow::<u64, _, _>(|scope| {
        let mut part = Some(part);
        source(scope, "report", move |capability, _info| {
            let mut capability = Some(capability);
            move |output: &mut OutputBuilderSession<
                '_,
                u64,
                CapacityContainerBuilder<Vec<WireReport>>,
            >| {
                if let (Some(capability), Some(part)) = (capability.take(), part.take()) {
                    output.session(&capability).give_container(&mut vec![part]);
                }
            }
        })
        .unary::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
            exchange(|_: &WireReport| 0u64),
            "report-gather",
            move |_capability, _info| {
                move |input, _output| {
                    input.for_each(|_time, data| into.borrow_mut().append(data));
                }
            },
        )
        .probe_with(&report_probe);
    });
    step_until(worker, config, shared, &failure, dataflow, || {
        report_probe.done()
    })?;
    let report = (worker.index() == 0).then(|| merge(std::mem::take(&mut *parts.borrow_mut())));
    Ok((gathered, report))
}

/// The stages of a worker's dead-letter consumers, running while the worker runs its flow.
struct LetterStages(Option<std::thread::JoinHandle<Result<crate::stage::Report>>>);

impl LetterStages {
    /// Runs `pipeline` on a thread of its own, if it has any stage.
    fn start(pipeline: crate::stage::Pipeline, worker: usize) -> Result<Self> {
        if pipeline.is_empty() {
            return Ok(LetterStages(None));
        }
        let thread = std::thread::Builder::new()
            .name(format!("flowstage-dead-letters-{worker}"))
            .spawn(move || pipeline.run())?;
        Ok(LetterStages(Some(thread)))
    }

    /// Waits for the letter stages to end (once the dataflow that feeds them is gone):
    /// a consumer's error fails the worker's run. (`Pipeline::run` turns a stage's panic
    /// into its error: a panic of the thread itself is the runtime's, reported as this
    /// process's.)
    fn join(self, process: usize) -> Result<()> {
        match self.0.map(std::thread::JoinHandle::join) {
            None | Some(Ok(Ok(_))) => Ok(()),
            Some(Ok(Err(error))) => Err(error),
            Some(Err(payload)) => Err(FlowError::Cluster {
                process,
                message: format!(
                    "the dead-letter stages panicked: {}",
                    panic_message(payload.as_ref())
                ),
            }),
        }
    }
}

/// Steps `dataflow` until `done`, watching for failures: of this worker's operators, of
/// another worker of this process, of a peer.
fn step_until(
    worker: &mut Worker,
    config: &ClusterConfig,
    shared: &Shared,
    failure: &RefCell<Option<FlowError>>,
    dataflow: usize,
    done: impl Fn() -> bool,
) -> Result<()> {
    let process = config.index;
    let index = worker.index();
    let outcome = loop {
        if done() {
            break Ok(());
        }
        if let Some(error) = failure.borrow_mut().take() {
            shared.abort(format!("worker {index} failed: {error}"));
            break Err(error);
        }
        if let Some(message) = shared.aborted() {
            break Err(FlowError::Cluster { process, message });
        }
        if let Some(message) = shared.lost_peer(config.peer_timeout) {
            shared.abort(message.clone());
            break Err(FlowError::Cluster { process, message });
        }
        // Parks at most a few milliseconds, so the checks above run while peers are silent.
        worker.step_or_park(Some(Duration::from_millis(5)));
    };
    if outcome.is_err() {
        worker.drop_dataflow(dataflow);
    }
    outcome
}

/// Runs the flow that `build` makes on the cluster `config` describes and collects its
/// output at worker 0: `Some(events)` in the process that hosts worker 0 (process 0),
/// `None` in the others. Every process calls it with the same flow.
///
/// `build` runs once per worker (the flow is built where it runs): every worker must
/// build the same flow. Each `partition` has one partition per worker of the cluster
/// (its `stages` setting is not used); the output's order is not defined.
///
/// ```
/// use flowstage::cluster::{self, ClusterConfig};
/// use flowstage::flow::{Flow, Partition};
/// use std::collections::HashMap;
///
/// // One process, two workers.
/// let counts = cluster::collect(&ClusterConfig::local(2), || {
///     Flow::from_iter("a rose is a rose is a rose".split(' ').map(String::from).collect::<Vec<_>>())
///         .partition(Partition::new())
///         .reduce(HashMap::new, |word: String, mut counts: HashMap<String, u64>| {
///             *counts.entry(word).or_default() += 1;
///             counts
///         })
/// })?;
/// let mut counts = counts.expect("process 0 hosts worker 0");
/// counts.sort();
/// assert_eq!(counts, [("a".into(), 3), ("is".into(), 2), ("rose".into(), 3)]);
/// # Ok::<(), flowstage::FlowError>(())
/// ```
pub fn collect<P, B>(config: &ClusterConfig, build: B) -> Result<Option<Vec<P::Item>>>
where
    P: ClusterPlan,
    P::Item: Wire,
    B: Fn() -> Flow<P> + Send + Sync + 'static,
{
    let outputs = run_flow(config, build, Gather)?;
    Ok(if config.index == 0 {
        Some(
            outputs
                .into_iter()
                .flat_map(|(gathered, _)| gathered)
                .flatten()
                .collect(),
        )
    } else {
        None
    })
}

/// The report of worker 0, if this process hosts it.
fn worker_zero_report<T>(outcomes: Vec<WorkerOutcome<T>>) -> Option<Report> {
    outcomes.into_iter().find_map(|(_, report)| report)
}

/// Runs the flow that `build` makes on the cluster `config` describes; each worker hands
/// its own output, batch by batch, to `f` (with its index and the number of workers),
/// on its own thread — to write a file per worker, for example. Every process calls it
/// with the same flow. Returns the run's [`Report`] in process 0 (see [`run`]), `None`
/// in the others.
///
/// ```
/// use flowstage::cluster::{self, ClusterConfig};
/// use flowstage::flow::{Flow, Partition};
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
///
/// let total = Arc::new(AtomicU64::new(0));
/// let sum = total.clone();
/// cluster::for_each(
///     &ClusterConfig::local(2),
///     || Flow::from_iter(1..=100u64).partition(Partition::new()).reduce(|| 0u64, |x, s| s + x).emit_state(),
///     move |_worker, sums: Vec<u64>| {
///         sum.fetch_add(sums.iter().sum::<u64>(), Ordering::Relaxed);
///     },
/// )?;
/// assert_eq!(total.load(Ordering::Relaxed), 5050);
/// # Ok::<(), flowstage::FlowError>(())
/// ```
pub fn for_each<P, B, F>(config: &ClusterConfig, build: B, f: F) -> Result<Option<Report>>
where
    P: ClusterPlan,
    B: Fn() -> Flow<P> + Send + Sync + 'static,
    F: Fn(PartitionInfo, Vec<P::Item>) + Send + Sync + 'static,
{
    Ok(worker_zero_report(run_flow(
        config,
        build,
        ForEach(Arc::new(f)),
    )?))
}

/// Runs the flow that `build` makes on the cluster `config` describes for its side
/// effects, discarding its events, as [`Flow::run`](crate::flow::Flow::run) does locally.
/// Returns the run's [`Report`] in process 0, `None` in the others: every operator
/// instance of the cluster once (source shares and layer partitions, named
/// `operator[partition]`, in the order the operators were built; events in and out, late
/// events), and each error policy's skipped and dead-lettered events summed over the
/// workers. Every process calls it with the same flow.
///
/// ```
/// use flowstage::cluster::{self, ClusterConfig};
/// use flowstage::flow::{ErrorPolicy, Flow, Partition};
///
/// let report = cluster::run(&ClusterConfig::local(2), || {
///     Flow::from_iter(["1", "x", "3", "y"])
///         .try_map(|s: &str| s.parse::<u64>().map_err(|e| (s, e)))
///         .on_error(ErrorPolicy::skip())
///         .partition(Partition::new())
///         .reduce(|| 0u64, |x, sum| sum + x)
///         .emit_state()
/// })?
/// .expect("process 0 gets the report");
/// assert_eq!(report.errors[0].operator, "try_map");
/// assert_eq!(report.errors[0].skipped, 2); // summed over both workers
/// let partitions = report.stages.iter().filter(|s| s.stage.name.starts_with("partition"));
/// assert_eq!(partitions.map(|s| s.events_in).sum::<u64>(), 2);
/// # Ok::<(), flowstage::FlowError>(())
/// ```
pub fn run<P, B>(config: &ClusterConfig, build: B) -> Result<Option<Report>>
where
    P: ClusterPlan,
    B: Fn() -> Flow<P> + Send + Sync + 'static,
{
    Ok(worker_zero_report(run_flow(config, build, Discard)?))
}
