//! The timely operators a flow becomes: sources and layers.
//!
//! A **source** operator reads one share of a source (its producer), runs the fused
//! logic after it, and emits at `(window, epoch)`: `window` is the largest window of
//! anything it read (its watermark), `epoch` counts its reads. It holds its capability
//! there, so timely's frontier at any operator downstream is the smallest watermark of
//! all sources everywhere that can still send — and it waits while the run's probe shows
//! the cluster more than `max_epochs_ahead` epochs behind it (backpressure).
//!
//! A **layer** operator (one per worker for each `partition`/`shuffle`) receives its
//! partition through timely's exchange, runs the layer's logic, and fires each window's
//! `Done` once the frontier of its input has passed the window: no worker anywhere can
//! send it anything more. It holds one capability, at its input frontier, to emit with.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange as ExchangePact;
use timely::dataflow::operators::generic::{Operator, OutputBuilderSession, source};
use timely::dataflow::operators::{Capability, Concatenate};

use super::plan::{ClusterCompiler, ClusterStream, Stamp, Time, Wire};
use super::window::{LayerWindowSpec, encode};
use crate::error::{FlowError, StageError, StageInfo, StageKind};
use crate::flow::{Logic, PartitionInfo, Route, Trigger, TriggerName, WindowInfo};
use crate::source::BoxedProducer;
use crate::stage::{Produced, Producer};
use crate::window::WindowSignal;

type Output<'a, T> = OutputBuilderSession<'a, Time, CapacityContainerBuilder<Vec<T>>>;

/// Records the first failure of the worker's operators; the worker ends the run with it.
fn report(failure: &Rc<RefCell<Option<FlowError>>>, stage: StageInfo, error: StageError) {
    let mut failure = failure.borrow_mut();
    if failure.is_none() {
        *failure = Some(FlowError::from_stage_error(&stage, error));
    }
}

/// Emits `out` at `capability`, or, with a `stamp`, each event at its window (never
/// before the capability). Returns the largest window emitted at.
fn emit<T: 'static>(
    output: &mut Output<'_, T>,
    capability: &Capability<Time>,
    out: &mut Vec<T>,
    stamp: &Stamp<T>,
) -> u64 {
    let (window, epoch) = *capability.time();
    if out.is_empty() {
        return window;
    }
    let Some(stamp) = stamp else {
        output.session(capability).give_container(out);
        return window;
    };
    let mut runs: BTreeMap<u64, Vec<T>> = BTreeMap::new();
    for event in out.drain(..) {
        runs.entry(stamp(&event).max(window))
            .or_default()
            .push(event);
    }
    let mut largest = window;
    for (at, mut events) in runs {
        largest = at;
        if at == window {
            output.session(capability).give_container(&mut events);
        } else {
            let delayed = capability.delayed(&(at, epoch));
            output.session(&delayed).give_container(&mut events);
        }
    }
    largest
}

/// One source operator per share, on every worker (timely needs the same operators on
/// all workers); the worker's own shares read, the others end at once.
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
    let mut streams: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(index, share)| {
            let partition = PartitionInfo { index, count };
            source_operator(
                compiler,
                label,
                partition,
                share,
                logic.clone(),
                stamp.clone(),
            )
        })
        .collect();
    match streams.len() {
        1 => streams.remove(0),
        _ => compiler.scope.concatenate(streams),
    }
}

/// What a source operator holds while it reads.
struct Reader<T, L: Logic> {
    producer: BoxedProducer<T>,
    logic: L,
    capability: Capability<Time>,
    out: Vec<L::Out>,
}

fn source_operator<'s, T, L>(
    compiler: &mut ClusterCompiler<'s>,
    label: &'static str,
    partition: PartitionInfo,
    share: Option<BoxedProducer<T>>,
    mut logic: L,
    stamp: Stamp<L::Out>,
) -> ClusterStream<'s, L::Out>
where
    T: Send + 'static,
    L: Logic<In = T> + 'static,
{
    let scope = compiler.scope;
    let probe = compiler.probe.clone();
    let runtime = compiler.runtime.clone();
    let failure = compiler.failure.clone();
    let (ahead, batch) = (compiler.epochs_ahead, compiler.epoch_events);
    let stage = StageInfo {
        name: format!("{label}[{}]", partition.index),
        kind: StageKind::Producer,
        index: partition.index,
    };
    source(scope, &stage.name.clone(), move |capability, info| {
        let activator = scope.activator_for(info.address);
        logic.start(partition);
        let mut reader = share.map(|producer| Reader {
            producer,
            logic,
            capability,
            out: Vec::new(),
        });
        move |output| {
            let Some(state) = reader.as_mut() else {
                return;
            };
            let (window, epoch) = *state.capability.time();
            // Backpressure: wait while anything `ahead` epochs older is still in flight.
            if epoch > ahead && probe.less_than(&(window, epoch - ahead)) {
                activator.activate_after(Duration::from_micros(200));
                return;
            }
            let (mut events, last) = match runtime.block_on(state.producer.handle_demand(batch)) {
                Ok(Produced::Events(events)) => (events, false),
                Ok(Produced::Finished(events)) => (events, true),
                Err(error) => {
                    report(&failure, stage.clone(), error);
                    reader = None;
                    return;
                }
            };
            let read = events.len();
            state.logic.batch(&mut events, &mut state.out);
            if last {
                state.logic.done(&mut state.out);
            }
            if let Some(error) = state.logic.failure() {
                report(&failure, stage.clone(), error);
                reader = None;
                return;
            }
            let largest = emit(output, &state.capability, &mut state.out, &stamp);
            if last {
                reader = None;
                return;
            }
            state.capability.downgrade(&(largest, epoch + 1));
            if read == 0 {
                // Nothing to read right now (a polling producer): ask again in a while.
                activator.activate_after(Duration::from_millis(1));
            } else {
                activator.activate();
            }
        }
    })
}

/// A layer: the exchange into one operator per worker running `logic` under `window`.
pub(crate) fn layer<'s, T, R, L>(
    compiler: &mut ClusterCompiler<'s>,
    label: &'static str,
    upstream: ClusterStream<'s, T>,
    route: Option<Arc<R>>,
    window: LayerWindowSpec<T>,
    mut logic: L,
    stamp: Stamp<L::Out>,
) -> ClusterStream<'s, L::Out>
where
    T: Wire,
    R: Route<T> + 'static,
    L: Logic<In = T> + 'static,
{
    let workers = compiler.scope.peers();
    let worker = compiler.scope.index();
    let failure = compiler.failure.clone();
    let stage = StageInfo {
        name: format!("{label}[{worker}]"),
        kind: StageKind::ProducerConsumer,
        index: worker,
    };
    // Events a route drops (or sends out of range) go to worker 0, which checks again.
    let checks = route
        .as_ref()
        .is_some_and(|route| route.needed_with_one_partition());
    let mut next = 0u64;
    let key_route = route.clone();
    let pact = ExchangePact::new(move |event: &T| match &key_route {
        Some(route) => route
            .route(event, workers)
            .filter(|&p| p < workers)
            .unwrap_or(0) as u64,
        None => {
            // `shuffle`: round robin.
            next = next.wrapping_add(1);
            next
        }
    });
    upstream.unary_frontier(pact, label, move |capability, _info| {
        let partition = PartitionInfo {
            index: worker,
            count: workers,
        };
        logic.start(partition);
        let mut out = Vec::new();
        let windowed = window.is_windowed();
        if windowed {
            logic.window(WindowSignal::Start, &mut out);
        }
        let mut hold = Some(capability);
        // Open windows (ids) and the encoded window below which all have fired.
        let mut open: BTreeMap<i64, ()> = BTreeMap::new();
        let mut fired_below = 0u64;
        let mut entered: Option<i64> = None;
        let mut run = Vec::new();
        move |(input, frontier), output| {
            input.for_each(|time, data| {
                let events = std::mem::take(data);
                let Some(capability) = time.retain_least(0).or_else(|| hold.clone()) else {
                    return;
                };
                let mut events: Vec<T> = if checks {
                    let mut kept = Vec::with_capacity(events.len());
                    for event in events {
                        match route.as_ref().map(|r| r.route(&event, workers)) {
                            Some(Some(p)) if p < workers => kept.push(event),
                            Some(Some(p)) => {
                                report(
                                    &failure,
                                    stage.clone(),
                                    format!("partition {p} out of range for {workers} workers")
                                        .into(),
                                );
                            }
                            _ => {}
                        }
                    }
                    kept
                } else {
                    events
                };
                if windowed {
                    // Runs of one window each, in arrival order; late events aside.
                    for event in events {
                        let id = window.window_of(&event);
                        if encode(id) < fired_below {
                            window.late(event);
                            continue;
                        }
                        if entered != Some(id) {
                            if !run.is_empty() {
                                logic.batch(&mut run, &mut out);
                            }
                            let info = WindowInfo { kind: "fixed", id };
                            logic.window(WindowSignal::Enter(&info), &mut out);
                            entered = Some(id);
                            open.insert(id, ());
                        }
                        run.push(event);
                    }
                    if !run.is_empty() {
                        logic.batch(&mut run, &mut out);
                    }
                } else {
                    logic.batch(&mut events, &mut out);
                }
                emit(output, &capability, &mut out, &stamp);
            });
            let Some(held) = hold.as_mut() else {
                return;
            };
            let passed = frontier.frontier().iter().next().copied();
            // Fire, oldest first, every window the frontier has passed.
            let closing: Vec<i64> = open
                .keys()
                .copied()
                .take_while(|&id| passed.is_none_or(|(w, _)| encode(id) < w))
                .collect();
            for id in closing {
                open.remove(&id);
                let trigger = Trigger {
                    window: WindowInfo { kind: "fixed", id },
                    name: TriggerName::Done,
                };
                logic.window(WindowSignal::Fire(&trigger), &mut out);
            }
            if let Some((w, _)) = passed {
                fired_below = fired_below.max(w);
            }
            if passed.is_none() {
                logic.done(&mut out);
            }
            if let Some(error) = logic.failure() {
                report(&failure, stage.clone(), error);
            }
            emit(output, held, &mut out, &stamp);
            match passed {
                Some(time) => held.downgrade(&time),
                None => hold = None,
            }
        }
    })
}
