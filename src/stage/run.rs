//! The three stage loops: producer, producer-consumer, consumer.
//!
//! Each runs as one tokio task and owns its state; stages talk only through inbox messages
//! (see [`link`](super::link)). The loops are where the contracts live:
//! - a producer asks its user code for `credit - buffered` events, never more than its
//!   consumers asked for, and keeps asking while that debt is unpaid (no stalls);
//! - a consumer hands events over in chunks of `max_demand - min_demand` and re-asks after
//!   each chunk (GenStage's automatic demand);
//! - a producer-consumer takes input only while its consumers have demand.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

use super::buffer::Buffer;
use super::demand::{Cancel, DemandMode, Inflow};
use super::dispatcher::Dispatch;
use super::link::{Control, Msg, Spares};
use super::metrics::StageMetrics;
use super::{Consumer, ConsumerContext, Produced, Producer, ProducerConsumer};
use crate::error::{FlowError, Result, StageError, StageInfo};

/// A consumer's side of one subscription, as the runtime keeps it.
pub(crate) struct InflowSpec {
    pub(crate) control: Arc<dyn Control>,
    pub(crate) sub: usize,
    pub(crate) max_demand: usize,
    pub(crate) min_demand: usize,
    pub(crate) mode: DemandMode,
    pub(crate) cancel: Cancel,
    pub(crate) deferred: bool,
}

struct Inlet {
    control: Arc<dyn Control>,
    sub: usize,
    inflow: Inflow,
    cancel: Cancel,
    open: bool,
    /// Deferred and its first demand not sent yet.
    held: bool,
}

/// All subscriptions of a consuming stage.
struct Inlets {
    inlets: Vec<Inlet>,
    open: usize,
    /// A permanent subscription's producer finished: the stage finishes too.
    stop: bool,
}

impl Inlets {
    fn new(specs: Vec<InflowSpec>) -> Self {
        let inlets: Vec<Inlet> = specs
            .into_iter()
            .map(|spec| Inlet {
                control: spec.control,
                sub: spec.sub,
                inflow: Inflow::new(spec.max_demand, spec.min_demand, spec.mode),
                cancel: spec.cancel,
                open: true,
                held: spec.deferred,
            })
            .collect();
        Inlets {
            open: inlets.len(),
            inlets,
            stop: false,
        }
    }

    /// Sends the first demand of the deferred subscriptions once no other is open.
    fn release_deferred(&mut self) {
        if self.inlets.iter().any(|inlet| inlet.open && !inlet.held) {
            return;
        }
        for inlet in &mut self.inlets {
            if inlet.held {
                inlet.held = false;
                let ask = inlet.inflow.initial_ask();
                if ask > 0 && inlet.open {
                    inlet.control.ask(inlet.sub, ask);
                }
            }
        }
    }

    /// Lets the stage see each subscription (manual demand asks here), then sends the
    /// automatic first asks.
    fn subscribe(&mut self, mut handle_subscribe: impl FnMut(&mut ConsumerContext)) {
        for from in 0..self.inlets.len() {
            let mut context = ConsumerContext::new(from);
            handle_subscribe(&mut context);
            self.manual_asks(&mut context);
            let inlet = &mut self.inlets[from];
            if inlet.held {
                continue;
            }
            let ask = inlet.inflow.initial_ask();
            if ask > 0 {
                inlet.control.ask(inlet.sub, ask);
            }
        }
        self.release_deferred();
    }

    fn chunk_size(&self, from: usize) -> usize {
        self.inlets
            .get(from)
            .map_or(1, |inlet| inlet.inflow.chunk_size())
    }

    /// `n` events from `from` were handled: re-ask per automatic demand, then send the
    /// stage's own manual asks.
    fn handled(&mut self, from: usize, n: usize, context: &mut ConsumerContext) {
        if let Some(inlet) = self.inlets.get_mut(from) {
            let ask = inlet.inflow.handled(n);
            if ask > 0 && inlet.open {
                inlet.control.ask(inlet.sub, ask);
            }
        }
        self.manual_asks(context);
    }

    fn manual_asks(&mut self, context: &mut ConsumerContext) {
        for (upstream, n) in context.take_asks() {
            if let Some(inlet) = self.inlets.get_mut(upstream) {
                if inlet.open && n > 0 {
                    inlet.inflow.asked(n);
                    inlet.control.ask(inlet.sub, n);
                }
            }
        }
    }

    /// Subscription `from` ended (normally, or because its producer failed).
    fn close(&mut self, from: usize) {
        if let Some(inlet) = self.inlets.get_mut(from) {
            if inlet.open {
                inlet.open = false;
                self.open -= 1;
                if inlet.cancel == Cancel::Permanent {
                    self.stop = true;
                }
                self.release_deferred();
            }
        }
    }

    fn is_open(&self, from: usize) -> bool {
        self.inlets.get(from).is_some_and(|inlet| inlet.open)
    }

    fn finished(&self) -> bool {
        self.stop || self.open == 0
    }

    /// Tells every producer still subscribed that this stage is gone.
    fn cancel_all(&mut self) {
        for inlet in &mut self.inlets {
            if inlet.open {
                inlet.open = false;
                inlet.control.cancel(inlet.sub);
            }
        }
        self.open = 0;
    }
}

/// Splits `events` into chunks of at most `size`, without copying when one chunk will do.
fn chunks<T>(events: Vec<T>, size: usize) -> impl Iterator<Item = Vec<T>> {
    let mut single = None;
    let mut many = None;
    if events.len() <= size {
        single = Some(events);
    } else {
        let mut iter = events.into_iter();
        many = Some(std::iter::from_fn(move || {
            let chunk: Vec<T> = iter.by_ref().take(size).collect();
            (!chunk.is_empty()).then_some(chunk)
        }));
    }
    single.into_iter().chain(many.into_iter().flatten())
}

fn stage_error(stage: &StageInfo, error: StageError) -> FlowError {
    FlowError::from_stage_error(stage, error)
}

/// Settings of a producer's loop.
pub(crate) struct ProducerSettings {
    pub(crate) buffer_size: usize,
    pub(crate) buffer_keep: super::BufferKeep,
    pub(crate) retry_interval: Duration,
    /// Asks the producer to finish early (graceful shutdown).
    pub(crate) shutdown: super::shutdown::ShutdownListener,
}

/// A producer flushes every partition queue at least once per this many productions.
const FLUSH_EVERY: u32 = 16;

pub(crate) async fn run_producer<'a, P: Producer + 'a>(
    stage: StageInfo,
    mut producer: P,
    mut inbox: UnboundedReceiver<Msg<Infallible>>,
    mut dispatch: Box<dyn Dispatch<P::Item> + 'a>,
    settings: ProducerSettings,
    metrics: Arc<StageMetrics>,
) -> Result<()> {
    let mut buffer = Buffer::new(settings.buffer_size, settings.buffer_keep);
    let mut finished = false;
    let mut retry_at: Option<Instant> = None;
    let mut shutdown = settings.shutdown;
    // Productions since the last flush of every queue (see below).
    let mut held_for = 0u32;
    loop {
        // A drain was asked: make nothing new, finish as if the input had ended. What is
        // already made (the buffer) still goes out below, under demand.
        if !finished && shutdown.is_requested() {
            finished = true;
            retry_at = None;
        }
        // Take every control message that is already here, so demand is coalesced.
        while let Ok(msg) = inbox.try_recv() {
            apply_control(dispatch.as_mut(), msg);
        }
        // Buffered events were made first: they go before anything new.
        send_buffered(&stage, dispatch.as_mut(), &mut buffer)?;
        // While the producer goes on making events, a partition's queue waits until it
        // fills its subscriber's credit: one batch instead of a piece per production
        // (productions shrink as the credit left gets uneven over partitions; sending
        // each piece made the average batch a sixth of `max_demand`). Everything goes
        // before the producer waits, and at least every `FLUSH_EVERY` productions, so a
        // partition that rarely gets an event still gets it.
        let producing = wanted(finished, dispatch.as_ref(), &buffer, retry_at) > 0;
        let all = !producing || held_for >= FLUSH_EVERY;
        if all {
            held_for = 0;
        }
        metrics.add_dropped(dispatch.flush(all));
        metrics.set_demand(dispatch.credit());
        metrics.set_buffered(buffer.len() + dispatch.pending());

        if dispatch.all_closed() {
            return Ok(());
        }
        if finished && buffer.is_empty() && dispatch.pending() == 0 {
            for outlet in dispatch.outlets() {
                outlet.finish();
            }
            return Ok(());
        }
        // (Again after the flush: sending a full queue can open demand up.)
        let want = wanted(finished, dispatch.as_ref(), &buffer, retry_at);
        if want > 0 {
            retry_at = None;
            held_for += 1;
            // While the producer waits for data (an async source), demand keeps coming:
            // take it meanwhile and send what is already queued (another partition's
            // events, the buffer) — a producer waiting on one partition's behalf must not
            // hold back events another partition has credit for.
            let started = Instant::now();
            // A producer that routes itself without waiting routes into the dispatcher's
            // queues, lent for the production (taken back below).
            let mut lent = 0;
            if producer.routes_without_waiting() {
                if let Some(routed) = producer.routed() {
                    dispatch.lend(routed);
                    lent = routed.iter().map(Vec::len).sum::<usize>();
                }
            }
            let produced = {
                let asked = producer.handle_demand(want);
                tokio::pin!(asked);
                let mut flushed = false;
                loop {
                    tokio::select! {
                        biased;
                        produced = &mut asked => break produced,
                        // The producer has to wait (it was not ready above): what the queues
                        // hold goes now, not when the wait ends.
                        () = std::future::ready(()), if !flushed => {
                            flushed = true;
                            metrics.add_dropped(dispatch.flush(true));
                        }
                        msg = inbox.recv() => match msg {
                            Some(msg) => {
                                apply_control(dispatch.as_mut(), msg);
                                send_buffered(&stage, dispatch.as_mut(), &mut buffer)?;
                                metrics.add_dropped(dispatch.flush(true));
                                if dispatch.all_closed() {
                                    return Ok(());
                                }
                            }
                            // Every consumer's handle is gone: nobody can ask any more.
                            None => return Ok(()),
                        },
                    }
                }
            };
            metrics.add_busy(started);
            let (events, last) = match produced.map_err(|e| stage_error(&stage, e))? {
                Produced::Events(events) => (events, false),
                Produced::Finished(events) => (events, true),
            };
            finished = last;
            let mut made = events.len();
            let left = dispatch
                .dispatch(events)
                .map_err(|e| stage_error(&stage, e))?;
            metrics.add_dropped(buffer.extend(left));
            // What the producer routed into partition queues itself (a flow's source
            // before a `partition`) joins the dispatcher's queues.
            if let Some(routed) = producer.routed() {
                // (Saturating: a producer that took from the lent queues made nothing.)
                made += routed
                    .iter()
                    .map(Vec::len)
                    .sum::<usize>()
                    .saturating_sub(lent);
                let left = dispatch
                    .absorb(routed)
                    .map_err(|e| stage_error(&stage, e))?;
                metrics.add_dropped(buffer.extend(left));
            }
            if made == 0 && !last {
                // Nothing to give now: keep the debt and ask again after the interval.
                retry_at = Some(Instant::now() + settings.retry_interval);
            }
            continue;
        }
        // Not finished, not waiting out a retry: what stops it is the lack of demand.
        let waiting = (!finished && retry_at.is_none()).then(Instant::now);
        tokio::select! {
            msg = inbox.recv() => match msg {
                Some(msg) => apply_control(dispatch.as_mut(), msg),
                // Every consumer's handle is gone: nobody can ask any more.
                None => return Ok(()),
            },
            () = sleep_until(retry_at), if retry_at.is_some() => {}
            () = shutdown.requested(), if !finished => {}
        }
        if let Some(since) = waiting {
            metrics.add_waiting(since);
        }
    }
}

/// Sends what the producer's buffer holds as far as demand allows; the rest stays in it,
/// in order.
fn send_buffered<T>(
    stage: &StageInfo,
    dispatch: &mut dyn Dispatch<T>,
    buffer: &mut Buffer<T>,
) -> Result<()> {
    if !buffer.is_empty() {
        let sendable = buffer.take(dispatch.demand());
        let left = dispatch
            .dispatch(sendable)
            .map_err(|e| stage_error(stage, e))?;
        buffer.extend(left);
    }
    Ok(())
}

/// Counts late events, and tells `tracing`.
fn late(stage: &StageInfo, metrics: &StageMetrics, n: u64) {
    if n > 0 {
        metrics.add_late(n);
        crate::observe::late(stage, n);
    }
}

/// How many events to ask a producer for now: the demand its buffer does not cover, or 0
/// when it finished or waits out its retry interval.
fn wanted<T>(
    finished: bool,
    dispatch: &dyn Dispatch<T>,
    buffer: &Buffer<T>,
    retry_at: Option<Instant>,
) -> usize {
    if finished || retry_at.is_some_and(|at| Instant::now() < at) {
        return 0;
    }
    dispatch.demand().saturating_sub(buffer.len())
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

fn apply_control<T, I>(dispatch: &mut dyn Dispatch<T>, msg: Msg<I>) {
    match msg {
        Msg::Ask { sub, n } => dispatch.ask(sub, n),
        Msg::Cancel { sub } => dispatch.cancel(sub),
        // A producer has no upstream; these cannot reach it.
        Msg::Events { .. } | Msg::Done { .. } | Msg::Failed { .. } => {}
    }
}

pub(crate) async fn run_consumer<C: Consumer>(
    stage: StageInfo,
    mut consumer: C,
    mut inbox: UnboundedReceiver<Msg<C::Item>>,
    inflows: Vec<InflowSpec>,
    metrics: Arc<StageMetrics>,
) -> Result<()> {
    let mut inlets = Inlets::new(inflows);
    inlets.subscribe(|context| consumer.handle_subscribe(context));
    while !inlets.finished() {
        let msg = tokio::select! {
            msg = inbox.recv() => msg,
            error = consumer.failed() => return Err(stage_error(&stage, error)),
        };
        let Some(msg) = msg else {
            break;
        };
        match msg {
            Msg::Events { from, events } => {
                metrics.add_in(events.len());
                for chunk in chunks(events, inlets.chunk_size(from)) {
                    let n = chunk.len();
                    let mut context = ConsumerContext::new(from);
                    let started = Instant::now();
                    consumer
                        .handle_events(chunk, &mut context)
                        .await
                        .map_err(|e| stage_error(&stage, e))?;
                    metrics.add_busy(started);
                    late(&stage, &metrics, context.take_late());
                    inlets.handled(from, n, &mut context);
                }
            }
            Msg::Done { from } | Msg::Failed { from } => inlets.close(from),
            Msg::Ask { .. } | Msg::Cancel { .. } => {}
        }
    }
    inlets.cancel_all();
    let started = Instant::now();
    let done = consumer
        .handle_done()
        .await
        .map_err(|e| stage_error(&stage, e));
    metrics.add_busy(started);
    done
}

pub(crate) async fn run_producer_consumer<'a, S: ProducerConsumer + 'a>(
    stage: StageInfo,
    mut inner: S,
    mut inbox: UnboundedReceiver<Msg<S::In>>,
    inflows: Vec<InflowSpec>,
    spares: Arc<Spares<S::In>>,
    mut dispatch: Box<dyn Dispatch<S::Out> + 'a>,
    metrics: Arc<StageMetrics>,
) -> Result<()> {
    let mut inlets = Inlets::new(inflows);
    inlets.subscribe(|context| inner.handle_subscribe(context));
    // Input received and not yet handled: at most the demand this stage sent upstream.
    let mut input: VecDeque<Input<S::In>> = VecDeque::new();
    let mut queued = 0usize;
    // Output made and not yet sent for lack of credit; input waits until it is gone. A
    // queue, so that a large output (a reducer's whole state at `Done`) leaves a chunk
    // per credit in linear time: cutting each chunk off the front of a `Vec` copies the
    // rest every time, quadratic in the output (seconds for 500 k events).
    let mut output: VecDeque<S::Out> = VecDeque::new();
    let mut done_handled = false;
    loop {
        while let Ok(msg) = inbox.try_recv() {
            receive(
                msg,
                &mut input,
                &mut queued,
                &mut inlets,
                dispatch.as_mut(),
                &metrics,
            );
        }
        if !output.is_empty() {
            let sendable = dispatch.demand().min(output.len());
            if sendable > 0 {
                let left = dispatch
                    .dispatch(output.drain(..sendable).collect())
                    .map_err(|e| stage_error(&stage, e))?;
                // What could not go stays in front, in order.
                for event in left.into_iter().rev() {
                    output.push_front(event);
                }
            }
        }
        // After dispatching: a partition dispatcher queues first, then sends under credit.
        metrics.add_dropped(dispatch.flush(true));
        metrics.set_demand(dispatch.credit());
        metrics.set_buffered(queued + output.len() + dispatch.pending());
        if dispatch.all_closed() {
            // Nobody downstream any more: stop and let the producers know.
            inlets.cancel_all();
            return Ok(());
        }
        // A subscription ended, after its last events were handled: tell the stage.
        if output.is_empty() {
            if let Some(&Input::Ended(from)) = input.front() {
                input.pop_front();
                let started = Instant::now();
                let made = inner
                    .handle_upstream_done(from)
                    .await
                    .map_err(|e| stage_error(&stage, e))?;
                metrics.add_busy(started);
                output = dispatch
                    .dispatch(made)
                    .map_err(|e| stage_error(&stage, e))?
                    .into();
                continue;
            }
        }
        let demand = dispatch.demand();
        if output.is_empty() && demand > 0 && matches!(input.front(), Some(Input::Events(..))) {
            let (from, mut chunk) = next_chunk(&mut input, inlets.chunk_size_for_front(), &spares);
            let n = chunk.len();
            queued -= n;
            let mut context = ConsumerContext::new(from);
            let started = Instant::now();
            let made = inner
                .handle_events_in_place(&mut chunk, &mut context)
                .await
                .map_err(|e| stage_error(&stage, e))?;
            metrics.add_busy(started);
            // The chunk's allocation goes back to the producers for a later batch.
            spares.put(chunk);
            late(&stage, &metrics, context.take_late());
            inlets.handled(from, n, &mut context);
            output = dispatch
                .dispatch(made)
                .map_err(|e| stage_error(&stage, e))?
                .into();
            continue;
        }
        if input.is_empty() && inlets.finished() {
            if !done_handled {
                done_handled = true;
                inlets.cancel_all();
                let started = Instant::now();
                let made = inner
                    .handle_done()
                    .await
                    .map_err(|e| stage_error(&stage, e))?;
                metrics.add_busy(started);
                output.extend(made);
                continue;
            }
            if output.is_empty() && dispatch.pending() == 0 {
                for outlet in dispatch.outlets() {
                    outlet.finish();
                }
                return Ok(());
            }
        }
        // Idle: wait for a message, or for the stage's own wake-up (a timer, a message from
        // outside) — the latter only while no output waits, so it cannot pile up.
        // Output made, or input to handle, and no demand: waiting on the consumers.
        let waiting =
            (!output.is_empty() || dispatch.pending() > 0 || (demand == 0 && !input.is_empty()))
                .then(Instant::now);
        let woken = if output.is_empty() && !done_handled {
            tokio::select! {
                msg = inbox.recv() => Woken::Msg(msg),
                () = inner.wakeup() => Woken::Stage,
            }
        } else {
            Woken::Msg(inbox.recv().await)
        };
        if let Some(since) = waiting {
            metrics.add_waiting(since);
        }
        match woken {
            Woken::Msg(Some(msg)) => receive(
                msg,
                &mut input,
                &mut queued,
                &mut inlets,
                dispatch.as_mut(),
                &metrics,
            ),
            Woken::Msg(None) => {
                // No producer and no consumer can reach us: nothing more will happen.
                inlets.cancel_all();
                return Ok(());
            }
            Woken::Stage => {
                let started = Instant::now();
                let made = inner
                    .handle_wakeup()
                    .await
                    .map_err(|e| stage_error(&stage, e))?;
                metrics.add_busy(started);
                output = dispatch
                    .dispatch(made)
                    .map_err(|e| stage_error(&stage, e))?
                    .into();
            }
        }
    }
}

/// What ended an idle producer-consumer's wait.
enum Woken<I> {
    Msg(Option<Msg<I>>),
    Stage,
}

/// A producer-consumer's queued input, in arrival order.
enum Input<I> {
    /// Events from a subscription, the ones not handed to the stage yet.
    Events(usize, std::vec::IntoIter<I>),
    /// That subscription ended; its events before this were all handled first.
    Ended(usize),
}

fn receive<I, O>(
    msg: Msg<I>,
    input: &mut VecDeque<Input<I>>,
    queued: &mut usize,
    inlets: &mut Inlets,
    dispatch: &mut dyn Dispatch<O>,
    metrics: &StageMetrics,
) {
    match msg {
        Msg::Events { from, events } => {
            metrics.add_in(events.len());
            *queued += events.len();
            input.push_back(Input::Events(from, events.into_iter()));
        }
        Msg::Done { from } | Msg::Failed { from } => {
            if inlets.is_open(from) {
                input.push_back(Input::Ended(from));
            }
            inlets.close(from);
        }
        Msg::Ask { sub, n } => dispatch.ask(sub, n),
        Msg::Cancel { sub } => dispatch.cancel(sub),
    }
}

impl Inlets {
    fn chunk_size_for_front(&self) -> impl Fn(usize) -> usize + '_ {
        move |from| self.chunk_size(from)
    }
}

/// Cuts the next chunk off the front of the input queue: at most the subscription's chunk
/// size, as GenStage hands a producer-consumer its events. Not cut to the downstream
/// demand: a chunk's output may exceed it and waits in the stage's output queue (input
/// waits until that is sent), and cutting input that way made reducing stages, whose
/// output has nothing to do with their input, handle chunks of a few hundred events.
///
/// Copies stay linear in the batch: a batch that fits goes whole, in its own allocation;
/// of a larger one, chunks are copied out of the front one at a time until at most two
/// remain, and the last split keeps the front's allocation and copies only the rest (with
/// the default `min_demand`, half of `max_demand`, that is the only copy). Cutting every
/// chunk off the front of a `Vec` would copy the rest each time: quadratic when the chunk
/// is small against the batch (`max_demand` 5 000, `min_demand` 4 999).
fn next_chunk<I>(
    input: &mut VecDeque<Input<I>>,
    chunk_size: impl Fn(usize) -> usize,
    spares: &Spares<I>,
) -> (usize, Vec<I>) {
    let Some(Input::Events(from, events)) = input.front_mut() else {
        return (0, Vec::new());
    };
    let from = *from;
    let limit = chunk_size(from).max(1);
    let remaining = events.len();
    if remaining <= limit {
        return match input.pop_front() {
            // An untouched iterator gives its `Vec` back as it was.
            Some(Input::Events(_, events)) => (from, events.collect()),
            _ => (from, Vec::new()),
        };
    }
    // Copies go into spare buffers: allocating them fresh would bring back the churn
    // that spares avoid.
    if remaining > 2 * limit {
        let mut chunk = spares.take(limit);
        chunk.extend(events.by_ref().take(limit));
        return (from, chunk);
    }
    let mut front: Vec<I> = std::mem::take(events).collect();
    let mut rest = spares.take(front.len() - limit);
    rest.extend(front.drain(limit..));
    *events = rest.into_iter();
    (from, front)
}
