//! Processing-time windows and triggers with exact expected outputs (SEMANTICS.md,
//! "Windows and triggers"): periodic windows, `trigger_periodically`, allowed lateness,
//! idle producers, message triggers, and departition on an unbounded flow.
//!
//! Time is tokio's paused clock: every test runs on a current-thread runtime started
//! paused, sources are async streams that sleep until given instants, and the runtime
//! jumps from one timer to the next only when every task is idle. So the instants below
//! are exact, whatever the load of the machine. Each test also runs under a wall-clock
//! watchdog (a hang fails it) and a simulated-time limit (a flow waiting forever fails it).

use std::future::Future;
use std::panic::resume_unwind;
use std::pin::Pin;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowstage::flow::{Flow, Partition, TriggerName};
use flowstage::sink::FlowStream;
use flowstage::source::StreamProducer;
use flowstage::window::{LateEvents, TriggerHandle, Window};
use futures::{Stream, StreamExt};
use tokio::time::{Instant, sleep_until};

/// Wall-clock limit of one test.
const WATCHDOG: Duration = Duration::from_secs(60);
/// Simulated-time limit of one test: far beyond every instant the tests use.
const SIMULATED_LIMIT: Duration = Duration::from_secs(3600);

/// Runs `body` on a paused current-thread runtime on its own thread; fails the test if it
/// takes longer than the watchdog (wall clock) or the simulated limit (paused clock).
fn paused<F, Fut>(body: F) -> Fut::Output
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future,
    Fut::Output: Send + 'static,
{
    let (tx, rx) = channel();
    let worker = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let outcome = runtime.block_on(async move {
            tokio::time::timeout(SIMULATED_LIMIT, body())
                .await
                .unwrap_or_else(|_| panic!("the flow waited {SIMULATED_LIMIT:?} of paused time"))
        });
        let _ = tx.send(outcome);
    });
    match rx.recv_timeout(WATCHDOG) {
        Ok(value) => {
            let _ = worker.join();
            value
        }
        Err(RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => resume_unwind(panic),
            Ok(()) => unreachable!("the worker neither sent nor panicked"),
        },
        Err(RecvTimeoutError::Timeout) => panic!("watchdog: the flow hung for {WATCHDOG:?}"),
    }
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// Whole milliseconds from `start` to now (paused time: exact).
fn since(start: Instant) -> u64 {
    let elapsed = Instant::now() - start;
    assert_eq!(
        elapsed.as_nanos() % 1_000_000,
        0,
        "paused time moved by a fraction of a millisecond: {elapsed:?}"
    );
    elapsed.as_millis() as u64
}

type Timed<T> = Pin<Box<dyn Stream<Item = T> + Send>>;

/// A stream yielding each event at its instant (milliseconds after `start`), then ending at
/// `end` (so it stays open, silent, until then).
fn timed<T: Send + 'static>(start: Instant, events: Vec<(u64, T)>, end: u64) -> Timed<T> {
    let items = events
        .into_iter()
        .map(|(at, event)| (at, Some(event)))
        .chain(std::iter::once((end, None)));
    Box::pin(
        futures::stream::iter(items)
            .then(move |(at, event)| async move {
                sleep_until(start + ms(at)).await;
                event
            })
            .filter_map(|event| async move { event }),
    )
}

/// Reads the whole stream, each event with the instant it was received.
async fn drain<T>(mut stream: FlowStream<T>, start: Instant) -> Vec<(u64, T)> {
    let mut received = Vec::new();
    while let Some(event) = stream.next().await {
        received.push((since(start), event.expect("the flow failed")));
    }
    received
}

type Fired = (i64, TriggerName, u64);

/// A one-stage layer with `window` summing `events` (`(instant, value)`, the source ending
/// at `end`); every trigger as (window id, name, sum) with the instant it was received.
/// `reset` starts the sum afresh after each trigger.
fn sums(
    window: impl FnOnce() -> Window<u64> + Send + 'static,
    events: Vec<(u64, u64)>,
    end: u64,
    reset: bool,
) -> Vec<(u64, Fired)> {
    paused(move || async move {
        let start = Instant::now();
        let stream = Flow::from_stream(timed(start, events, end))
            .partition(Partition::new().stages(1).window(window()))
            .reduce(|| 0u64, |x, sum| sum + x)
            .on_trigger(move |sum, _, trigger| {
                (
                    vec![(trigger.window.id, trigger.name.clone(), sum)],
                    if reset { 0 } else { sum },
                )
            })
            .into_stream()
            .unwrap();
        drain(stream, start).await
    })
}

#[test]
fn periodic_windows_hold_the_events_of_their_tick_and_fire_every_tick() {
    // Ticks every 100 ms: window 0 is [0, 100), 1 is [100, 200), ...; window 2 gets
    // nothing and fires anyway; window 3 is open when the source ends at 380 and fires
    // then.
    let fired = sums(
        || Window::periodic(ms(100)),
        vec![(50, 1), (120, 2), (130, 3), (350, 4)],
        380,
        true,
    );
    assert_eq!(
        fired,
        [
            (100, (0, TriggerName::Done, 1)),
            (200, (1, TriggerName::Done, 5)),
            (300, (2, TriggerName::Done, 0)),
            (380, (3, TriggerName::Done, 4)),
        ]
    );
}

#[test]
fn periodic_windows_tick_while_no_event_comes_at_all() {
    let fired = sums(|| Window::periodic(ms(100)), vec![], 250, true);
    assert_eq!(
        fired,
        [
            (100, (0, TriggerName::Done, 0)),
            (200, (1, TriggerName::Done, 0)),
            (250, (2, TriggerName::Done, 0)),
        ]
    );
}

const EVENTS: [(u64, u64); 4] = [(50, 1), (120, 2), (130, 3), (250, 4)];

#[test]
fn trigger_periodically_on_the_global_window_keeps_the_state() {
    let fired = sums(
        || Window::global().trigger_periodically(ms(100)),
        EVENTS.to_vec(),
        350,
        false,
    );
    let every = TriggerName::Periodically(ms(100));
    assert_eq!(
        fired,
        [
            (100, (0, every.clone(), 1)),
            (200, (0, every.clone(), 6)),
            (300, (0, every, 10)),
            (350, (0, TriggerName::Done, 10)),
        ]
    );
}

#[test]
fn trigger_periodically_on_the_global_window_resets_the_state() {
    let fired = sums(
        || Window::global().trigger_periodically(ms(100)),
        EVENTS.to_vec(),
        350,
        true,
    );
    let every = TriggerName::Periodically(ms(100));
    assert_eq!(
        fired,
        [
            (100, (0, every.clone(), 1)),
            (200, (0, every.clone(), 5)),
            (300, (0, every, 4)),
            (350, (0, TriggerName::Done, 0)),
        ]
    );
}

#[test]
fn stacked_periodic_triggers_each_keep_their_own_period() {
    let fired = sums(
        || {
            Window::global()
                .trigger_periodically(ms(100))
                .trigger_periodically(ms(250))
        },
        vec![(50, 1), (120, 2), (130, 3), (260, 4), (420, 5)],
        480,
        false,
    );
    let (short, long) = (
        TriggerName::Periodically(ms(100)),
        TriggerName::Periodically(ms(250)),
    );
    assert_eq!(
        fired,
        [
            (100, (0, short.clone(), 1)),
            (200, (0, short.clone(), 6)),
            (250, (0, long, 6)),
            (300, (0, short.clone(), 10)),
            (400, (0, short, 10)),
            (480, (0, TriggerName::Done, 15)),
        ]
    );
}

type Lateness = (Vec<(u64, i64, TriggerName, i64)>, Vec<i64>, u64);

/// 10 ms fixed windows over timestamps (summed) with 100 ms allowed lateness: every trigger
/// with the instant it fired, the late events, and the late count of the run's report.
fn with_lateness(events: Vec<(u64, i64)>, end: u64) -> Lateness {
    paused(move || async move {
        let start = Instant::now();
        let late = LateEvents::keep();
        let window = Window::fixed(ms(10), |t: &i64| *t)
            .allowed_lateness(ms(100))
            .late_events(&late);
        let fired = Arc::new(Mutex::new(Vec::new()));
        let into = fired.clone();
        let report = Flow::from_stream(timed(start, events, end))
            .partition(Partition::new().stages(1).window(window))
            .reduce(|| 0i64, |t, sum| sum + t)
            .on_trigger(move |sum, _, trigger| {
                into.lock().unwrap().push((
                    since(start),
                    trigger.window.id,
                    trigger.name.clone(),
                    sum,
                ));
                (Vec::<()>::new(), sum)
            })
            .run_async()
            .await
            .unwrap();
        let fired = std::mem::take(&mut *fired.lock().unwrap());
        let counted = report.stages.iter().map(|s| s.late).sum();
        (fired, late.take(), counted)
    })
}

#[test]
fn allowed_lateness_takes_late_events_until_it_runs_out() {
    // (instant, timestamp). At 20 the watermark (15) passes window 0: `Watermark`, and 0
    // stays open until 120. Timestamp 3 at 50 is late but allowed; at 120 window 0 fires
    // `Done` with it, while the source still runs; timestamp 5 at 150 is too late. At 160
    // the watermark (25) passes window 10. The source ends at 200: window 10 (still in its
    // lateness) and window 20 fire `Done`, oldest first.
    let (fired, late, counted) =
        with_lateness(vec![(10, 1), (20, 15), (50, 3), (150, 5), (160, 25)], 200);
    assert_eq!(
        fired,
        [
            (20, 0, TriggerName::Watermark, 1),
            (120, 0, TriggerName::Done, 4),
            (160, 10, TriggerName::Watermark, 15),
            (200, 10, TriggerName::Done, 15),
            (200, 20, TriggerName::Done, 25),
        ]
    );
    assert_eq!(late, [5]);
    assert_eq!(counted, 1);
}

#[test]
fn allowed_lateness_without_late_events_still_fires_done_when_it_runs_out() {
    let (fired, late, counted) = with_lateness(vec![(10, 1), (20, 12), (30, 21)], 500);
    assert_eq!(
        fired,
        [
            (20, 0, TriggerName::Watermark, 1),
            (30, 10, TriggerName::Watermark, 12),
            (120, 0, TriggerName::Done, 1),
            (130, 10, TriggerName::Done, 12),
            (500, 20, TriggerName::Done, 21),
        ]
    );
    assert!(late.is_empty());
    assert_eq!(counted, 0);
}

/// Two producers into one stage of 10 ms fixed windows over timestamps (summed): `busy`
/// sends `(instant, timestamp)`s and ends at 2000, `quiet` sends one event at 5 and then
/// nothing until it ends at 1000. Every `Done` with the instant it was received.
fn two_producers(idle_timeout: Option<Duration>) -> Vec<(u64, (i64, i64))> {
    paused(move || async move {
        let start = Instant::now();
        let busy = timed(start, vec![(10, 1i64), (20, 12), (30, 25)], 2000);
        let quiet = timed(start, vec![(5, 2i64)], 1000);
        let mut window = Window::fixed(ms(10), |t: &i64| *t);
        if let Some(timeout) = idle_timeout {
            window = window.idle_timeout(timeout);
        }
        let stream = Flow::from_stages(vec![StreamProducer(busy), StreamProducer(quiet)])
            .partition(Partition::new().stages(1).window(window))
            .reduce(|| 0i64, |t, sum| sum + t)
            .on_trigger(|sum, _, trigger| {
                assert_eq!(trigger.name, TriggerName::Done);
                (vec![(trigger.window.id, sum)], sum)
            })
            .into_stream()
            .unwrap();
        drain(stream, start).await
    })
}

#[test]
fn a_silent_producer_holds_the_watermark_until_it_ends() {
    // The quiet producer's timestamp 2 holds windows 0 and 10 open until it ends at 1000.
    assert_eq!(
        two_producers(None),
        [(1000, (0, 3)), (1000, (10, 12)), (2000, (20, 25))]
    );
}

#[test]
fn idle_timeout_stops_a_silent_producer_from_holding_the_watermark() {
    // The quiet producer last sent at 5: at 105 it is idle, the watermark becomes the busy
    // producer's 25, and windows 0 and 10 close — long before the quiet one ends at 1000.
    assert_eq!(
        two_producers(Some(ms(100))),
        [(105, (0, 3)), (105, (10, 12)), (2000, (20, 25))]
    );
}

#[test]
fn a_trigger_handle_fires_a_message_trigger_while_the_flow_runs() {
    let received = paused(|| async {
        let start = Instant::now();
        let flush = TriggerHandle::new();
        let window = Window::global().trigger_on(&flush);
        assert_eq!(
            flush.fire("too early"),
            0,
            "no stage listens before the run"
        );
        let stream = Flow::from_stream(timed(start, vec![(10, 1u64), (20, 2), (60, 4)], 100))
            .partition(Partition::new().stages(1).window(window))
            .reduce(|| 0u64, |x, sum| sum + x)
            .on_trigger(|sum, _, trigger| (vec![(trigger.name.clone(), sum)], sum))
            .into_stream()
            .unwrap();
        sleep_until(start + ms(50)).await;
        assert_eq!(flush.fire("flush"), 1, "the one stage listens");
        let received = drain(stream, start).await;
        assert_eq!(flush.fire("too late"), 0, "no stage listens after the run");
        received
    });
    assert_eq!(
        received,
        [
            (50, (TriggerName::Message("flush".into()), 3)),
            (100, (TriggerName::Done, 7)),
        ]
    );
}

#[test]
fn departition_of_periodic_windows_emits_each_tick_while_the_source_runs() {
    // Two partitions, 100 ms ticks, a source open until 10 s: the merged sum of each tick
    // comes out at the tick, long before the end of input.
    let received = paused(|| async {
        let start = Instant::now();
        let events = vec![(50, 1u64), (60, 2), (150, 3), (170, 4), (250, 5), (260, 6)];
        let mut stream = Flow::from_stream(timed(start, events, 10_000))
            .partition(Partition::new().stages(2).window(Window::periodic(ms(100))))
            .reduce(|| 0u64, |x, sum| sum + x)
            .on_trigger(|sum, _, trigger| (vec![(trigger.window.id, sum)], sum))
            .departition(
                || (None, 0u64),
                |(id, sum), (seen, total): (Option<i64>, u64)| {
                    assert!(seen.is_none_or(|s| s == id), "windows mixed: {seen:?} {id}");
                    (Some(id), total + sum)
                },
                |(id, total), window| {
                    assert_eq!(id, Some(window.id), "every partition fires every tick");
                    (window.id, total)
                },
            )
            .into_stream()
            .unwrap();
        let mut received = Vec::new();
        for _ in 0..4 {
            let event = stream.next().await.expect("a tick").unwrap();
            received.push((since(start), event));
        }
        // Dropping the stream stops the flow; the source is still open.
        drop(stream);
        received
    });
    assert_eq!(
        received,
        [(100, (0, 3)), (200, (1, 7)), (300, (2, 11)), (400, (3, 0))]
    );
}
