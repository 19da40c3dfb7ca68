//! Graceful shutdown: a drained run stops taking new input, delivers everything its sources
//! already made exactly once (and acknowledges it), and ends `Ok` — unlike cancelling,
//! which aborts and loses what is in flight.
//!
//! The sources here never end on their own: without a working drain each test hangs and
//! the watchdog fails it.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::guarded;
use flowstage::StageError;
use flowstage::flow::{Flow, Partition};
use flowstage::stage::{
    Consumer, ConsumerContext, Pipeline, Produced, Producer, SubscribeOptions, consumer_fn,
};
use futures::StreamExt;

/// Counts up forever; `made` is how many events it has handed to the runtime. It returns
/// a little more than asked, so some of what it made waits in the runtime's buffer when
/// the drain comes: those must be delivered too.
struct Endless {
    next: u64,
    made: Arc<AtomicU64>,
}

impl Producer for Endless {
    type Item = u64;

    async fn handle_demand(&mut self, demand: usize) -> Result<Produced<u64>, StageError> {
        let n = demand as u64 + 7;
        let events: Vec<u64> = (self.next..self.next + n).collect();
        self.next += n;
        self.made.fetch_add(n, SeqCst);
        Ok(Produced::Events(events))
    }
}

/// Runs `flow`'s output into a sink recording every event, drains once the sink has seen
/// `after` events, and returns (what the sources made, what the sink got).
fn drain_after<F>(after: usize, build: F) -> (u64, Vec<u64>)
where
    F: FnOnce(Arc<AtomicU64>, &mut Pipeline) -> Vec<flowstage::stage::ProducerRef<u64>>
        + Send
        + 'static,
{
    guarded(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let made = Arc::new(AtomicU64::new(0));
            let received = Arc::new(Mutex::new(Vec::new()));
            let mut pipeline = Pipeline::new();
            let outputs = build(made.clone(), &mut pipeline);
            let into = received.clone();
            let sink = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
                into.lock().unwrap().extend(batch);
            }));
            for output in &outputs {
                pipeline
                    .subscribe(&sink, output, SubscribeOptions::new())
                    .unwrap();
            }
            let running = pipeline.spawn().unwrap();
            let shutdown = running.shutdown_handle();
            while received.lock().unwrap().len() < after {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            shutdown.drain();
            running.join().await.expect("a drained run ends Ok");
            let received = std::mem::take(&mut *received.lock().unwrap());
            (made.load(SeqCst), received)
        })
    })
}

fn assert_exactly_once(made: u64, received: &[u64]) {
    let distinct: BTreeSet<u64> = received.iter().copied().collect();
    assert_eq!(distinct.len(), received.len(), "an event came twice");
    assert_eq!(
        received.len() as u64,
        made,
        "the sources made {made} events, the sink got {}",
        received.len()
    );
    assert!(distinct.iter().copied().eq(0..made), "an event was lost");
}

#[test]
fn a_drained_source_delivers_everything_it_made_exactly_once() {
    let (made, received) = drain_after(50_000, |made, pipeline| {
        Flow::from_stages(vec![Endless { next: 0, made }])
            .map(|x| x)
            .into_stages(pipeline)
            .unwrap()
    });
    assert!(received.len() >= 50_000);
    assert_exactly_once(made, &received);
}

#[test]
fn a_drain_passes_through_partitions_and_keeps_order_per_partition() {
    let (made, received) = drain_after(50_000, |made, pipeline| {
        Flow::from_stages(vec![Endless { next: 0, made }])
            .partition(Partition::by_key(|x: &u64| x % 3).stages(3))
            .map(|x| x)
            .into_stages(pipeline)
            .unwrap()
    });
    assert_exactly_once(made, &received);
    // One producer, so within each partition the events keep the source's order.
    for key in 0..3 {
        let lane: Vec<u64> = received.iter().copied().filter(|x| x % 3 == key).collect();
        assert!(lane.is_sorted(), "partition {key} reordered");
    }
}

#[test]
fn a_drain_lets_reducers_fire_done_over_everything_made() {
    // A global-window sum per partition emits only at `Done`: a drain must reach it.
    let sums = Arc::new(Mutex::new(Vec::new()));
    let made = Arc::new(AtomicU64::new(0));
    let (into, counted) = (sums.clone(), made.clone());
    guarded(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let seen = Arc::new(AtomicU64::new(0));
            let watched = seen.clone();
            let mut pipeline = Pipeline::new();
            let outputs = Flow::from_stages(vec![Endless {
                next: 0,
                made: counted,
            }])
            .inspect(move |_| {
                watched.fetch_add(1, SeqCst);
            })
            .partition(Partition::new().stages(2))
            .reduce(|| (0u64, 0u64), |x, (n, sum)| (n + 1, sum + x))
            .emit_state()
            .into_stages(&mut pipeline)
            .unwrap();
            let sink = pipeline.consumer(consumer_fn(move |batch: Vec<(u64, u64)>| {
                into.lock().unwrap().extend(batch);
            }));
            for output in &outputs {
                pipeline
                    .subscribe(&sink, output, SubscribeOptions::new())
                    .unwrap();
            }
            let running = pipeline.spawn().unwrap();
            while seen.load(SeqCst) < 100_000 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            running.shutdown().await.expect("a drained run ends Ok");
        })
    });
    let sums = sums.lock().unwrap();
    let made = made.load(SeqCst);
    assert_eq!(sums.len(), 2, "one Done per partition: {sums:?}");
    let (count, total) = sums
        .iter()
        .fold((0, 0), |(n, s), (pn, ps)| (n + pn, s + ps));
    assert_eq!(count, made, "events reduced vs made");
    assert_eq!(total, made * (made - 1) / 2, "sum of 0..made");
}

/// A source with acknowledgements, as a broker has them: every event it hands out is
/// pending until the sink acknowledges it.
struct Acknowledged {
    next: u64,
    pending: Arc<Mutex<HashSet<u64>>>,
    made: Arc<AtomicU64>,
}

impl Producer for Acknowledged {
    type Item = u64;

    async fn handle_demand(&mut self, demand: usize) -> Result<Produced<u64>, StageError> {
        let events: Vec<u64> = (self.next..self.next + demand as u64).collect();
        self.next += demand as u64;
        self.pending.lock().unwrap().extend(events.iter().copied());
        self.made.fetch_add(events.len() as u64, SeqCst);
        Ok(Produced::Events(events))
    }
}

/// Acknowledges each event once it has been handled (slowly: a pause per batch).
struct Acker {
    pending: Arc<Mutex<HashSet<u64>>>,
    acked: Arc<AtomicU64>,
}

impl Consumer for Acker {
    type Item = u64;

    async fn handle_events(
        &mut self,
        events: Vec<u64>,
        _context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        tokio::time::sleep(Duration::from_micros(200)).await;
        let mut pending = self.pending.lock().unwrap();
        for event in events {
            if !pending.remove(&event) {
                return Err(format!("{event} acknowledged twice or never handed out").into());
            }
            self.acked.fetch_add(1, SeqCst);
        }
        Ok(())
    }
}

#[test]
fn a_drain_acknowledges_everything_the_source_handed_out() {
    let pending = Arc::new(Mutex::new(HashSet::new()));
    let made = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let (p, m, a) = (pending.clone(), made.clone(), acked.clone());
    guarded(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let sources = vec![
                Acknowledged {
                    next: 0,
                    pending: p.clone(),
                    made: m.clone(),
                },
                Acknowledged {
                    next: 1 << 40,
                    pending: p.clone(),
                    made: m,
                },
            ];
            let mut pipeline = Pipeline::new();
            let outputs = Flow::from_stages(sources)
                .partition(Partition::new().stages(2))
                .into_stages(&mut pipeline)
                .unwrap();
            let sink = pipeline.consumer(Acker {
                pending: p,
                acked: a.clone(),
            });
            for output in &outputs {
                pipeline
                    .subscribe(&sink, output, SubscribeOptions::new())
                    .unwrap();
            }
            let running = pipeline.spawn().unwrap();
            while a.load(SeqCst) < 20_000 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            running.shutdown().await.expect("a drained run ends Ok");
        })
    });
    let unacked = pending.lock().unwrap().len();
    assert_eq!(
        unacked, 0,
        "{unacked} events handed out were never acknowledged"
    );
    assert_eq!(acked.load(SeqCst), made.load(SeqCst));
}

#[test]
fn a_drain_stops_a_source_waiting_out_its_retry_interval() {
    // Empty forever, asked again only every hour: the drain must not wait for the hour.
    let report = guarded(|| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let running = Flow::from_poll(
                |_demand| Produced::<u32>::Events(Vec::new()),
                Duration::from_secs(3600),
            )
            .spawn()
            .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            running.shutdown().await
        })
    });
    let report = report.expect("a drained run ends Ok");
    assert_eq!(report.stages[0].events_out, 0);
}

#[test]
fn a_drained_stream_yields_everything_then_ends() {
    let made = Arc::new(AtomicU64::new(0));
    let counted = made.clone();
    let received: Vec<u64> = guarded(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let mut stream = Flow::from_stages(vec![Endless {
                next: 0,
                made: counted,
            }])
            .partition(Partition::new().stages(2))
            .into_stream()
            .unwrap();
            let mut received = Vec::new();
            while let Some(event) = stream.next().await {
                received.push(event.expect("no error"));
                if received.len() == 10_000 {
                    stream.shutdown_handle().drain();
                }
            }
            received
        })
    });
    assert_exactly_once(made.load(SeqCst), &received);
}

#[test]
fn a_drained_iterator_yields_everything_then_ends() {
    let made = Arc::new(AtomicU64::new(0));
    let counted = made.clone();
    let received: Vec<u64> = guarded(move || {
        let mut events = Flow::from_stages(vec![Endless {
            next: 0,
            made: counted,
        }])
        .into_iter();
        let mut received: Vec<u64> = events
            .by_ref()
            .take(10_000)
            .collect::<Result<_, _>>()
            .unwrap();
        events.drain();
        received.extend(events.map(|event| event.expect("no error")));
        received
    });
    assert_exactly_once(made.load(SeqCst), &received);
}
