//! Layer operators: the exchange into one operator per worker (or one on worker 0) that
//! runs a layer's logic under the layer's window — what a layer of stages is locally.
//!
//! The window is the local runtime's own [`Windower`]: the same window kinds, triggers,
//! lateness and late events, fed the layer's input as it arrives. Its watermark is
//! timely's frontier at the operator's input — no earlier event can arrive from anywhere
//! in the cluster (see [`window`](super::window)) — given to it as the one upstream it
//! has; the layer's events reach it from no upstream of its own. Processing-time timers
//! (periodic windows, `trigger_periodically`, `allowed_lateness`) schedule the operator.
//!
//! The operator holds one capability at its input frontier to emit with (reduce results,
//! triggers, `Done`), so that nothing downstream can pass what it may still emit; at the
//! end of input (an empty frontier) every open window fires and the logic finishes.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use timely::dataflow::channels::pact::ExchangeCore;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::{Capability, Concatenate, Probe};
use timely::dataflow::{ProbeHandle, Scope};

use super::emit::{Output, emit};
use super::exchange::{Messages, exchange};
use super::plan::{ClusterCompiler, ClusterStream, EventTime, Time, Wire};
use super::report::Counters;
use super::source::{RELEASED, guarded, report};
use super::window::{decode, event_time};
use crate::error::{FlowError, StageInfo, StageKind};
use crate::flow::{Logic, PartitionInfo, Route, settled_blocking};
use crate::window::{TriggerSpec, Window, Windower};

/// How events reach a layer's workers.
pub(crate) enum Routing<R> {
    /// By a route (the key hash of `partition`, a join's key).
    Key(Arc<R>),
    /// Dealt round robin (`shuffle`, `merge`).
    RoundRobin,
    /// All to worker 0 (a layer of one stage).
    Worker0,
}

/// Where a layer's logic runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// On every worker: one partition each.
    Everywhere,
    /// On worker 0 only (`batch`, `departition`, `take_sort`: one stage locally).
    Worker0,
}

/// A layer: its name, routing, window and placement.
pub(crate) struct Layer<T, R> {
    pub(crate) label: &'static str,
    pub(crate) routing: Routing<R>,
    pub(crate) window: Option<Window<T>>,
    pub(crate) placement: Placement,
}

/// One stream of several.
pub(crate) fn concatenate<'s, T: 'static>(
    compiler: &ClusterCompiler<'s>,
    mut streams: Vec<ClusterStream<'s, T>>,
) -> ClusterStream<'s, T> {
    let instances = streams.iter().map(|s| s.instances).sum();
    let stream = match streams.len() {
        1 => streams.remove(0).stream,
        _ => compiler
            .scope
            .concatenate(streams.into_iter().map(|s| s.stream)),
    };
    ClusterStream { stream, instances }
}

/// `stream`, watched by `probe`.
pub(crate) fn probed<'s, T: 'static>(
    stream: ClusterStream<'s, T>,
    probe: &ProbeHandle<Time>,
) -> ClusterStream<'s, T> {
    ClusterStream {
        stream: stream.stream.probe_with(probe),
        instances: stream.instances,
    }
}

/// The exchange of a layer's routing.
fn pact<T: Wire, R: Route<T> + 'static>(
    routing: &Routing<R>,
    workers: usize,
) -> ExchangeCore<Messages<T>, impl FnMut(&T) -> u64 + 'static> {
    let route = match routing {
        Routing::Key(route) => Some(route.clone()),
        _ => None,
    };
    let round_robin = matches!(routing, Routing::RoundRobin);
    let mut next = 0u64;
    exchange(move |event: &T| match &route {
        // Events a route drops (or sends out of range) go to worker 0, which checks again.
        Some(route) => route
            .route(event, workers)
            .filter(|&p| p < workers)
            .unwrap_or(0) as u64,
        None if round_robin => {
            next = next.wrapping_add(1);
            next
        }
        None => 0,
    })
}

/// The state of a layer's logic on one worker.
struct Core<T: Send + 'static, L: Logic<In = T> + 'static, R> {
    logic: L,
    windower: Option<Windower<T>>,
    /// With `idle_timeout`: the largest granule the layer received, its watermark once
    /// every share has stopped holding windows.
    seen: Option<(EventTime<T>, u64)>,
    /// Whether the window has `TriggerHandle` messages to poll for.
    messages: bool,
    out: Vec<L::Out>,
    stage: StageInfo,
    counters: Rc<Counters>,
    failure: Rc<RefCell<Option<FlowError>>>,
    /// A route to check again on arrival (one that may drop events).
    checks: Option<Arc<R>>,
    /// User code panicked: the layer takes nothing more.
    broken: bool,
    workers: usize,
}

impl<T, L, R> Core<T, L, R>
where
    T: Send + 'static,
    L: Logic<In = T> + 'static,
    R: Route<T> + 'static,
{
    /// Runs user code `f` on the layer; after a panic (reported as `StagePanicked`) the
    /// layer takes nothing more: the run is ending.
    fn guard(&mut self, f: impl FnOnce(&mut Self)) {
        if self.broken {
            return;
        }
        let (failure, stage) = (self.failure.clone(), self.stage.clone());
        if !guarded(&failure, &stage, || f(self)) {
            self.broken = true;
            self.out.clear();
        }
    }

    /// Handles a batch of input.
    fn events(&mut self, events: &mut Vec<T>) {
        if self.broken {
            events.clear();
            return;
        }
        self.guard(|core| core.handle(events));
    }

    fn handle(&mut self, events: &mut Vec<T>) {
        self.counters.add_in(events.len());
        if let Some(route) = &self.checks {
            let workers = self.workers;
            let (failure, stage) = (&self.failure, &self.stage);
            events.retain(|event| match route.route(event, workers) {
                Some(p) if p < workers => true,
                Some(p) => {
                    report(
                        failure,
                        stage,
                        format!("partition {p} out of range for {workers} workers").into(),
                    );
                    false
                }
                None => false,
            });
        }
        let before = self.out.len();
        match &mut self.windower {
            Some(windower) => {
                if let Some((time, seen)) = &mut self.seen {
                    for event in events.iter() {
                        *seen = (*seen).max((time.granule)(event));
                    }
                }
                // From no upstream: only the frontier moves the watermark.
                windower.batch(1, events, &mut self.logic, &mut self.out);
                self.counters.add_late(windower.take_late());
            }
            None => self.logic.batch(events, &mut self.out),
        }
        self.counters.add_out(self.out.len() - before);
    }

    /// The input frontier moved to `passed` (`None`: the input has ended).
    fn frontier(&mut self, passed: Option<Time>) {
        self.guard(|core| core.advance(passed));
    }

    fn advance(&mut self, passed: Option<Time>) {
        let before = self.out.len();
        match (&mut self.windower, passed) {
            (Some(windower), Some((window, _))) => {
                let window = match &self.seen {
                    Some((_, seen)) if window == RELEASED => *seen,
                    _ => window,
                };
                windower.advance(0, decode(window), &mut self.logic, &mut self.out);
            }
            (Some(windower), None) => windower.done(&mut self.logic, &mut self.out),
            (None, Some(_)) => {}
            (None, None) => self.logic.done(&mut self.out),
        }
        self.counters.add_out(self.out.len() - before);
    }

    /// Fires due timers; returns how long until the next one.
    fn timers(&mut self) -> Option<Duration> {
        let mut next = None;
        self.guard(|core| next = core.wake());
        next
    }

    fn wake(&mut self) -> Option<Duration> {
        let windower = self.windower.as_mut()?;
        let before = self.out.len();
        windower.wake(&mut self.logic, &mut self.out);
        self.counters.add_out(self.out.len() - before);
        let next = windower
            .deadline()
            .map(|at| at.saturating_duration_since(tokio::time::Instant::now()));
        match (next, self.messages) {
            (next, true) => Some(next.unwrap_or(MESSAGE_POLL).min(MESSAGE_POLL)),
            (next, false) => next,
        }
    }

    fn check(&mut self) {
        if let Err(error) = settled_blocking(&mut self.logic) {
            report(&self.failure, &self.stage, error);
        }
    }
}

/// How often a layer looks for `TriggerHandle` messages.
const MESSAGE_POLL: Duration = Duration::from_millis(10);

/// The parts of a layer operator every shell needs.
struct Shell<T: Send + 'static, L: Logic<In = T> + 'static, R> {
    core: Option<Core<T, L, R>>,
    hold: Option<Capability<Time>>,
}

impl<T, L, R> Shell<T, L, R>
where
    T: Send + 'static,
    L: Logic<In = T> + 'static,
    R: Route<T> + 'static,
{
    /// The activation that started at `started` ends: its time was the layer's own.
    fn busy(&self, started: Instant) {
        if let Some(core) = &self.core {
            core.counters.add_busy(started);
        }
    }

    /// A message of input: through the logic, its output at the message's time.
    fn take(
        &mut self,
        capability: Option<Capability<Time>>,
        data: &mut Vec<T>,
        output: &mut Output<'_, L::Out>,
    ) {
        let (Some(core), Some(capability)) = (self.core.as_mut(), capability) else {
            data.clear();
            return;
        };
        core.events(data);
        emit(output, &capability, &mut core.out);
    }

    /// After the input of one activation: moves the windows and the held capability to
    /// the frontier `passed`, emits, and schedules the next timer.
    fn settle(
        &mut self,
        passed: Option<Time>,
        output: &mut Output<'_, L::Out>,
        activator: &timely::scheduling::Activator,
    ) {
        let Some(held) = self.hold.as_mut() else {
            return;
        };
        if let Some(core) = self.core.as_mut() {
            if let Some(after) = core.timers() {
                activator.activate_after(after);
            }
            core.frontier(passed);
            core.check();
            emit(output, held, &mut core.out);
        }
        match passed {
            Some(time) => held.downgrade(&time),
            None => self.hold = None,
        }
    }
}

/// A layer's state on one worker (`None` where it does not run), its routing and name.
type Built<T, L, R> = (Option<Core<T, L, R>>, Routing<R>, &'static str);

/// Builds a layer's state on one worker: `None` where it does not run.
fn core<T, L, R>(compiler: &mut ClusterCompiler<'_>, layer: Layer<T, R>, logic: L) -> Built<T, L, R>
where
    T: Send + 'static,
    L: Logic<In = T> + 'static,
    R: Route<T> + 'static,
{
    let (worker, workers) = (compiler.scope.index(), compiler.scope.peers());
    let operator = compiler.report.borrow_mut().operator();
    let here = layer.placement == Placement::Everywhere || worker == 0;
    let core = here.then(|| {
        let name = format!("{}[{worker}]", layer.label);
        let counters = compiler.report.borrow_mut().stage(
            operator,
            name.clone(),
            StageKind::ProducerConsumer,
            worker,
        );
        let mut logic = logic;
        let count = match layer.placement {
            Placement::Everywhere => workers,
            Placement::Worker0 => 1,
        };
        logic.start(PartitionInfo {
            index: worker,
            count,
        });
        let seen = layer
            .window
            .as_ref()
            .filter(|window| window.idle_timeout.is_some())
            .and_then(|window| event_time(Some(window)))
            .map(|time| (time, 0));
        let messages = layer.window.as_ref().is_some_and(|window| {
            window
                .triggers
                .iter()
                .any(|trigger| matches!(trigger, TriggerSpec::Message(_)))
        });
        let windower = layer
            .window
            .map(|window| Windower::new(Arc::new(window), Arc::new(OnceLock::new()), 1));
        let checks = match &layer.routing {
            Routing::Key(route) if route.needed_with_one_partition() => Some(route.clone()),
            _ => None,
        };
        Core {
            logic,
            windower,
            seen,
            messages,
            out: Vec::new(),
            stage: StageInfo {
                name,
                kind: StageKind::ProducerConsumer,
                index: worker,
            },
            counters,
            failure: compiler.failure.clone(),
            checks,
            broken: false,
            workers,
        }
    });
    (core, layer.routing, layer.label)
}

fn instances(placement: Placement, workers: usize) -> usize {
    match placement {
        Placement::Everywhere => workers,
        Placement::Worker0 => 1,
    }
}

/// A layer with one input.
pub(crate) fn unary<'s, T, R, L>(
    compiler: &mut ClusterCompiler<'s>,
    layer: Layer<T, R>,
    upstream: ClusterStream<'s, T>,
    logic: L,
) -> ClusterStream<'s, L::Out>
where
    T: Wire,
    R: Route<T> + 'static,
    L: Logic<In = T> + 'static,
{
    let scope: Scope<'s, Time> = compiler.scope;
    let workers = scope.peers();
    let placement = layer.placement;
    let (core, routing, label) = core(compiler, layer, logic);
    let pact = pact(&routing, workers);
    let stream = upstream
        .stream
        .unary_frontier(pact, label, move |capability, info| {
            let activator = scope.activator_for(info.address);
            // A first activation starts the window's timers.
            activator.activate();
            let hold = core.is_some().then_some(capability);
            let mut shell = Shell { core, hold };
            move |(input, frontier), output| {
                let started = Instant::now();
                input.for_each(|time, data| {
                    shell.take(time.retain_least(0), data, output);
                });
                let passed = frontier.frontier().iter().next().copied();
                shell.settle(passed, output, &activator);
                shell.busy(started);
            }
        });
    ClusterStream {
        stream,
        instances: instances(placement, workers),
    }
}

/// A layer with two inputs, the second read only once the first has ended everywhere
/// (a bounded join: every left event before the first right event). Right events that
/// arrive before then wait, with their capabilities.
pub(crate) fn deferring<'s, T, R, L>(
    compiler: &mut ClusterCompiler<'s>,
    layer: Layer<T, R>,
    first: ClusterStream<'s, T>,
    second: ClusterStream<'s, T>,
    logic: L,
) -> ClusterStream<'s, L::Out>
where
    T: Wire,
    R: Route<T> + 'static,
    L: Logic<In = T> + 'static,
{
    let scope: Scope<'s, Time> = compiler.scope;
    let workers = scope.peers();
    let placement = layer.placement;
    let (core, routing, label) = core(compiler, layer, logic);
    let (pact_first, pact_second) = (pact(&routing, workers), pact(&routing, workers));
    let stream = first.stream.binary_frontier(
        second.stream,
        pact_first,
        pact_second,
        label,
        move |capability, info| {
            let activator = scope.activator_for(info.address);
            let hold = core.is_some().then_some(capability);
            let mut shell = Shell { core, hold };
            let mut waiting: Vec<(Capability<Time>, Vec<T>)> = Vec::new();
            move |(first, first_frontier), (second, second_frontier), output| {
                let started = Instant::now();
                let first_done = first_frontier.frontier().is_empty();
                first.for_each(|time, data| {
                    shell.take(time.retain_least(0), data, output);
                });
                second.for_each(|time, data| {
                    if shell.core.is_none() {
                        data.clear();
                        return;
                    }
                    if let Some(capability) = time.retain_least(0) {
                        waiting.push((capability, std::mem::take(data)));
                    }
                });
                if first_done {
                    for (capability, mut data) in waiting.drain(..) {
                        shell.take(Some(capability), &mut data, output);
                    }
                }
                let passed = [first_frontier, second_frontier]
                    .iter()
                    .filter_map(|f| f.frontier().iter().next().copied())
                    .min();
                shell.settle(passed, output, &activator);
                shell.busy(started);
            }
        },
    );
    ClusterStream {
        stream,
        instances: instances(placement, workers),
    }
}
