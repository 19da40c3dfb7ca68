//! Source operators: one per share of a source, on every worker (timely needs the same
//! operators on all of them); the worker's own shares read, the others end at once.
//!
//! A source operator reads its producer, runs the fused logic after it, and emits at
//! `(window, epoch)`: `window` is the largest granule of anything it read (its watermark,
//! see [`window`](super::window)), `epoch` counts its reads. It holds its capability
//! there, so timely's frontier at any operator downstream is the smallest watermark of all
//! sources everywhere that can still send — and it waits while the run's probe shows the
//! cluster more than `max_epochs_ahead` epochs behind it (backpressure).
//!
//! With `idle_timeout`, a share that read nothing for that long stops holding windows
//! back: its capability moves to the end of event time, where it stays (a capability
//! never moves back), and the layer then takes the largest event time it has seen as its
//! watermark when no share holds windows any more (as locally when every producer is
//! idle).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::source;

use super::emit::{emit, watermark};
use super::plan::{ClusterCompiler, ClusterStream, Stamp, Time};
use super::report::Counters;
use crate::error::{FlowError, StageError, StageInfo, StageKind};
use crate::flow::{Logic, PartitionInfo};
use crate::source::BoxedProducer;
use crate::stage::{Produced, Producer};

/// The window half of a released share's capability: after every event time.
pub(crate) const RELEASED: u64 = u64::MAX;

/// Records the first failure of the worker's operators; the worker ends the run with it.
pub(crate) fn report(
    failure: &Rc<RefCell<Option<FlowError>>>,
    stage: &StageInfo,
    error: StageError,
) {
    fail(failure, FlowError::from_stage_error(stage, error));
}

/// Runs user code `f`, turning a panic into `StagePanicked` naming `stage`, as the local
/// runtime does; says whether `f` returned.
pub(crate) fn guarded(
    failure: &Rc<RefCell<Option<FlowError>>>,
    stage: &StageInfo,
    f: impl FnOnce(),
) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(()) => true,
        Err(payload) => {
            fail(failure, FlowError::from_panic(stage, payload));
            false
        }
    }
}

fn fail(failure: &Rc<RefCell<Option<FlowError>>>, error: FlowError) {
    let mut failure = failure.borrow_mut();
    if failure.is_none() {
        *failure = Some(error);
    }
}

/// How long a source operator waits for its producer before it lets the worker's other
/// operators run (and tries again later).
const PATIENCE: Duration = Duration::from_millis(1);

type Answer<T> = (
    BoxedProducer<T>,
    std::result::Result<Produced<T>, StageError>,
);

/// A producer and its demand in flight: `handle_demand` runs as a task on the worker's
/// runtime, so that a producer with nothing to give yet (a quiet stream, a channel)
/// never holds the worker's thread — the worker's other operators run meanwhile.
enum Reading<T> {
    Idle(BoxedProducer<T>),
    Asked(tokio::task::JoinHandle<Answer<T>>),
    Gone,
}

/// One source operator per share.
pub(crate) fn sources<'s, T, L>(
    compiler: &mut ClusterCompiler<'s>,
    label: &'static str,
    shares: Vec<Option<BoxedProducer<T>>>,
    logic: L,
    stamp: Stamp<L::Out>,
) -> ClusterStream<'s, L::Out>
where
    T: Send + 'static,
    L: Logic<In = T> + Clone + 'static,
{
    let count = shares.len();
    let operator = compiler.report.borrow_mut().operator();
    let streams: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(index, share)| {
            let partition = PartitionInfo { index, count };
            let share = share.map(|producer| {
                let name = format!("{label}[{index}]");
                let counters = compiler.report.borrow_mut().stage(
                    operator,
                    name.clone(),
                    StageKind::Producer,
                    index,
                );
                let stage = StageInfo {
                    name,
                    kind: StageKind::Producer,
                    index,
                };
                (producer, stage, counters)
            });
            ClusterStream {
                stream: source_operator(
                    compiler,
                    label,
                    partition,
                    share,
                    logic.clone(),
                    stamp.clone(),
                ),
                instances: 1,
            }
        })
        .collect();
    let mut stream = super::layer::concatenate(compiler, streams);
    stream.instances = count;
    stream
}

/// What a source operator holds while it reads.
struct Reader<T, L: Logic> {
    reading: Reading<T>,
    logic: L,
    capability: Capability<Time>,
    out: Vec<L::Out>,
    stage: StageInfo,
    counters: Rc<Counters>,
    /// When it last read an event, for `idle_timeout`.
    read_at: Instant,
    /// Since when backpressure has held it back, if it does.
    held_since: Option<Instant>,
}

/// How a source paces itself: the probe it checks, how far ahead it may run, and the
/// probes it waits for before reading at all.
struct Pace {
    probe: ProbeHandle<Time>,
    ahead: u64,
    gates: Vec<ProbeHandle<Time>>,
}

impl Pace {
    /// Whether the source at `(window, epoch)` must wait.
    fn waits(&self, (window, epoch): Time) -> bool {
        if self.gates.iter().any(|gate| !gate.done()) {
            return true;
        }
        if epoch <= self.ahead {
            return false;
        }
        if window == RELEASED {
            // A released share is after everything in event time: it paces itself on the
            // epoch of the cluster's slowest part instead.
            return self
                .probe
                .with_frontier(|frontier| frontier.iter().any(|t| t.1 + self.ahead < epoch));
        }
        self.probe.less_than(&(window, epoch - self.ahead))
    }
}

fn source_operator<'s, T, L>(
    compiler: &mut ClusterCompiler<'s>,
    label: &'static str,
    partition: PartitionInfo,
    share: Option<(BoxedProducer<T>, StageInfo, Rc<Counters>)>,
    mut logic: L,
    stamp: Stamp<L::Out>,
) -> timely::dataflow::StreamVec<'s, Time, L::Out>
where
    T: Send + 'static,
    L: Logic<In = T> + 'static,
{
    let scope = compiler.scope;
    let runtime = compiler.runtime.clone();
    let failure = compiler.failure.clone();
    let pace = Pace {
        probe: compiler.probe.clone(),
        ahead: compiler.epochs_ahead,
        gates: compiler.gates.clone(),
    };
    let batch = compiler.epoch_events;
    let idle = stamp.as_ref().and_then(|time| time.idle);
    let name = format!("{label}[{}]", partition.index);
    source(scope, &name, move |capability, info| {
        let activator = scope.activator_for(info.address);
        logic.start(partition);
        let mut reader = share.map(|(producer, stage, counters)| Reader {
            reading: Reading::Idle(producer),
            logic,
            capability,
            out: Vec::new(),
            stage,
            counters,
            read_at: Instant::now(),
            held_since: None,
        });
        move |output| {
            let Some(state) = reader.as_mut() else {
                return;
            };
            let (window, epoch) = *state.capability.time();
            if pace.waits((window, epoch)) {
                state.held_since.get_or_insert_with(Instant::now);
                activator.activate_after(Duration::from_micros(200));
                return;
            }
            if let Some(since) = state.held_since.take() {
                state.counters.add_waiting(since);
            }
            let started = Instant::now();
            let asked = match std::mem::replace(&mut state.reading, Reading::Gone) {
                Reading::Idle(mut producer) => runtime.spawn(async move {
                    let answer = producer.handle_demand(batch).await;
                    (producer, answer)
                }),
                Reading::Asked(asked) => asked,
                Reading::Gone => return,
            };
            let mut asked = asked;
            let answer =
                runtime.block_on(async { tokio::time::timeout(PATIENCE, &mut asked).await });
            let answer = match answer {
                Ok(Ok((producer, answer))) => {
                    state.reading = Reading::Idle(producer);
                    answer
                }
                Ok(Err(joined)) => {
                    let error = match joined.try_into_panic() {
                        Ok(payload) => FlowError::from_panic(&state.stage, payload),
                        Err(_) => FlowError::Cancelled,
                    };
                    fail(&failure, error);
                    reader = None;
                    return;
                }
                Err(_elapsed) => {
                    // Nothing yet: let the worker's other operators run meanwhile.
                    state.reading = Reading::Asked(asked);
                    if idle.is_some_and(|idle| state.read_at.elapsed() >= idle) {
                        state.capability.downgrade(&(RELEASED, epoch));
                    }
                    activator.activate_after(PATIENCE);
                    return;
                }
            };
            let (mut events, last) = match answer {
                Ok(Produced::Events(events)) => (events, false),
                Ok(Produced::Finished(events)) => (events, true),
                Err(error) => {
                    report(&failure, &state.stage, error);
                    reader = None;
                    return;
                }
            };
            let read = events.len();
            let (logic, out) = (&mut state.logic, &mut state.out);
            let ran = guarded(&failure, &state.stage, || {
                logic.batch(&mut events, out);
                if last {
                    logic.done(out);
                }
            });
            if !ran {
                reader = None;
                return;
            }
            if let Err(error) = crate::flow::settled_blocking(&mut state.logic) {
                report(&failure, &state.stage, error);
                reader = None;
                return;
            }
            state.counters.add_out(state.out.len());
            let largest = watermark(window, &state.out, &stamp);
            emit(output, &state.capability, &mut state.out);
            // Busy: the read (as locally, reading is the producer's own work; a read
            // that timed out above is not counted), the chain after it and the sending.
            state.counters.add_busy(started);
            if last {
                reader = None;
                return;
            }
            if read > 0 {
                state.read_at = Instant::now();
            }
            let released = idle.is_some_and(|idle| state.read_at.elapsed() >= idle);
            let window = if released { RELEASED } else { largest };
            state.capability.downgrade(&(window, epoch + 1));
            if read == 0 {
                // Nothing to read right now (a polling producer): ask again in a while.
                activator.activate_after(Duration::from_millis(1));
            } else {
                activator.activate();
            }
        }
    })
}
