//! Behaviour tests of the stage layer (SEMANTICS.md, "Stage layer").
//!
//! Every test asserts on what stages received, what producers were asked for, or the
//! run's result and metrics. Timeouts appear only as hang watchdogs: a pipeline that does
//! not finish within [`WATCHDOG`] fails its test instead of hanging the suite.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowstage::stage::{
    BufferKeep, Cancel, Consumer, ConsumerContext, ConsumerOptions, DemandMode, Dispatcher,
    Pipeline, Produced, Producer, ProducerConsumer, ProducerConsumerOptions, ProducerOptions,
    Report, SubscribeOptions, consumer_fn, from_iter, partition_hash, partition_of, poll_fn,
    producer_consumer_fn,
};
use flowstage::{FlowError, StageError, StageKind};
use tokio::sync::Semaphore;

/// How long any one pipeline may take before its test fails as hung.
const WATCHDOG: Duration = Duration::from_secs(10);

type Shared<T> = Arc<Mutex<Vec<T>>>;

fn shared<T>() -> Shared<T> {
    Arc::new(Mutex::new(Vec::new()))
}

fn snapshot<T: Clone>(shared: &Shared<T>) -> Vec<T> {
    shared.lock().unwrap().clone()
}

/// Runs `pipeline` on a fresh multi-threaded runtime; fails the test if it hangs.
fn run(pipeline: Pipeline) -> flowstage::Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(watch(pipeline.run_async()))
}

/// Awaits `future`, failing the test if it takes longer than the watchdog.
async fn watch<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(WATCHDOG, future)
        .await
        .expect("watchdog: the pipeline hung")
}

/// Waits (polling) until `condition` holds; fails the test if it never does.
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(WATCHDOG, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "watchdog: never saw {what}");
}

/// The state of a counter producer: `0..total`, exactly `demand` events per request.
struct Count {
    next: u64,
    total: u64,
}

impl Count {
    fn new(total: u64) -> Self {
        Count { next: 0, total }
    }

    fn take(&mut self, demand: usize) -> Produced<u64> {
        let end = (self.next + demand as u64).min(self.total);
        let events: Vec<u64> = (self.next..end).collect();
        self.next = end;
        if self.next == self.total {
            Produced::Finished(events)
        } else {
            Produced::Events(events)
        }
    }
}

/// A counter producer: exactly `demand` events per call, `0..total`, then finished.
fn counter(total: u64) -> impl Producer<Item = u64> {
    let mut count = Count::new(total);
    poll_fn(move |demand: usize| count.take(demand))
}

/// A consumer that appends every event to `seen` and counts `handle_done` calls.
struct Collect<T> {
    seen: Shared<T>,
    done: Arc<AtomicUsize>,
    /// How many events had been seen when `handle_done` ran.
    seen_at_done: Arc<AtomicUsize>,
}

impl<T> Collect<T> {
    fn new() -> Self {
        Collect {
            seen: shared(),
            done: Arc::new(AtomicUsize::new(0)),
            seen_at_done: Arc::new(AtomicUsize::new(usize::MAX)),
        }
    }

    fn handles(&self) -> Self {
        Collect {
            seen: self.seen.clone(),
            done: self.done.clone(),
            seen_at_done: self.seen_at_done.clone(),
        }
    }
}

impl<T: Send + 'static> Consumer for Collect<T> {
    type Item = T;

    async fn handle_events(
        &mut self,
        events: Vec<T>,
        _context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        self.seen.lock().unwrap().extend(events);
        Ok(())
    }

    async fn handle_done(&mut self) -> Result<(), StageError> {
        self.seen_at_done
            .store(self.seen.lock().unwrap().len(), SeqCst);
        self.done.fetch_add(1, SeqCst);
        Ok(())
    }
}

/// A consumer that may handle an event only after the test released a permit for it.
struct Gated {
    gate: Arc<Semaphore>,
    seen: Shared<u64>,
    chunks: Shared<usize>,
    entered: Arc<AtomicUsize>,
    handled: Arc<AtomicUsize>,
}

impl Gated {
    fn new() -> Self {
        Gated {
            gate: Arc::new(Semaphore::new(0)),
            seen: shared(),
            chunks: shared(),
            entered: Arc::new(AtomicUsize::new(0)),
            handled: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn handles(&self) -> Self {
        Gated {
            gate: self.gate.clone(),
            seen: self.seen.clone(),
            chunks: self.chunks.clone(),
            entered: self.entered.clone(),
            handled: self.handled.clone(),
        }
    }
}

impl Consumer for Gated {
    type Item = u64;

    async fn handle_events(
        &mut self,
        events: Vec<u64>,
        _context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        self.entered.fetch_add(1, SeqCst);
        self.gate.acquire_many(events.len() as u32).await?.forget();
        self.chunks.lock().unwrap().push(events.len());
        self.handled.fetch_add(events.len(), SeqCst);
        self.seen.lock().unwrap().extend(events);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// 1. Automatic demand: the batches a consumer sees
// ---------------------------------------------------------------------------------------

/// Runs a counter producer of `total` events into a consumer and returns the
/// `(first, last)` of every chunk the consumer handled.
fn batches(options: SubscribeOptions<u64>, total: u64) -> Vec<(u64, u64)> {
    let seen = shared();
    let sink = seen.clone();
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer(counter(total));
    let consumer = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
        let first = *batch.first().expect("a chunk is never empty");
        let last = *batch.last().expect("a chunk is never empty");
        sink.lock().unwrap().push((first, last));
    }));
    pipeline.subscribe(&consumer, &numbers, options).unwrap();
    run(pipeline).unwrap();
    snapshot(&seen)
}

/// Consecutive `(first, last)` ranges of the given lengths, starting at 0.
fn ranges(lengths: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut start = 0;
    lengths
        .into_iter()
        .map(|len| {
            let range = (start, start + len - 1);
            start += len;
            range
        })
        .collect()
}

#[test]
fn default_demand_hands_over_halves_of_1000() {
    let seen = batches(SubscribeOptions::new(), 3000);
    assert_eq!(seen, ranges([500; 6]));
    assert_eq!(seen[..2], [(0, 499), (500, 999)]);
}

#[test]
fn max_100_min_80_hands_over_twenties() {
    assert_eq!(
        batches(SubscribeOptions::new().max_demand(100).min_demand(80), 400),
        ranges([20; 20])
    );
}

#[test]
fn max_100_min_20_hands_over_80_20_80() {
    let seen = batches(SubscribeOptions::new().max_demand(100).min_demand(20), 1800);
    // Ask 100 → chunks 80 (re-ask 80), 20; the 80 arrive as one chunk (re-ask 100); repeat.
    assert_eq!(
        seen[..5],
        [(0, 79), (80, 99), (100, 179), (180, 259), (260, 279)]
    );
    assert_eq!(seen, ranges([80, 20, 80].repeat(10)));
}

#[test]
fn max_1_min_0_hands_over_one_at_a_time() {
    let seen = batches(SubscribeOptions::new().max_demand(1).min_demand(0), 200);
    assert_eq!(seen, (0..200).map(|i| (i, i)).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------
// 2. Manual demand
// ---------------------------------------------------------------------------------------

/// Asks 3 on subscribe, then 1, 2 or 3 more after each chunk; checks it never got more
/// than it had asked for.
struct ManualAsker {
    asked: Arc<AtomicUsize>,
    received: usize,
    calls: usize,
    over_delivered: Arc<AtomicBool>,
    seen: Shared<u64>,
}

impl Consumer for ManualAsker {
    type Item = u64;

    fn handle_subscribe(&mut self, context: &mut ConsumerContext) {
        self.asked.fetch_add(3, SeqCst);
        context.ask(3);
    }

    async fn handle_events(
        &mut self,
        events: Vec<u64>,
        context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        // Every ask made so far was sent before these events could have been sent.
        self.received += events.len();
        if self.received > self.asked.load(SeqCst) {
            self.over_delivered.store(true, SeqCst);
        }
        self.seen.lock().unwrap().extend(events);
        self.calls += 1;
        let n = 1 + self.calls % 3;
        self.asked.fetch_add(n, SeqCst);
        context.ask(n);
        Ok(())
    }
}

#[test]
fn manual_demand_delivers_only_what_was_asked() {
    const TOTAL: u64 = 300;
    let asked = Arc::new(AtomicUsize::new(0));
    let over_delivered = Arc::new(AtomicBool::new(false));
    let over_asked = Arc::new(AtomicBool::new(false));
    let demands = shared();
    let seen = shared();

    let mut pipeline = Pipeline::new();
    let (asked_p, over_asked_p, demands_p) = (asked.clone(), over_asked.clone(), demands.clone());
    let mut inner = Count::new(TOTAL);
    let mut handed_out = 0usize;
    let numbers = pipeline.producer(poll_fn(move |demand: usize| {
        // The producer is never asked beyond what the consumer asked for in total.
        if handed_out + demand > asked_p.load(SeqCst) {
            over_asked_p.store(true, SeqCst);
        }
        demands_p.lock().unwrap().push(demand);
        handed_out += demand;
        inner.take(demand)
    }));
    let consumer = pipeline.consumer(ManualAsker {
        asked: asked.clone(),
        received: 0,
        calls: 0,
        over_delivered: over_delivered.clone(),
        seen: seen.clone(),
    });
    pipeline
        .subscribe(
            &consumer,
            &numbers,
            SubscribeOptions::new()
                .max_demand(10)
                .mode(DemandMode::Manual),
        )
        .unwrap();
    run(pipeline).unwrap();

    assert_eq!(snapshot(&seen), (0..TOTAL).collect::<Vec<_>>());
    assert!(
        !over_delivered.load(SeqCst),
        "consumer got more than it asked"
    );
    assert!(!over_asked.load(SeqCst), "producer asked beyond the asks");
    // The first request is the manual ask of 3, not an automatic ask of max_demand.
    assert_eq!(snapshot(&demands)[0], 3);
}

/// A stage subscribed to two "table" producers and one deferred "probe" producer, each
/// of `total` events tagged with its producer: it sees every table event before any
/// probe event.
#[test]
fn a_deferred_subscription_is_read_after_all_the_others_ended() {
    for (max_demand, total) in [(1usize, 5u64), (7, 50), (1000, 3000)] {
        for through_producer_consumer in [false, true] {
            let seen = shared();
            let mut pipeline = Pipeline::new();
            let tagged = |tag: u64| {
                let mut count = Count::new(total);
                poll_fn(move |demand: usize| match count.take(demand) {
                    Produced::Events(e) => Produced::Events(e.into_iter().map(|_| tag).collect()),
                    Produced::Finished(e) => {
                        Produced::Finished(e.into_iter().map(|_| tag).collect())
                    }
                })
            };
            let probe = pipeline.producer(tagged(2));
            let table_a = pipeline.producer(tagged(0));
            let table_b = pipeline.producer(tagged(1));
            let record = seen.clone();
            let sink = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
                record.lock().unwrap().extend(batch)
            }));
            let options = || SubscribeOptions::new().max_demand(max_demand);
            if through_producer_consumer {
                let (stage_in, stage_out) =
                    pipeline.producer_consumer(producer_consumer_fn(|b: Vec<u64>| b));
                pipeline
                    .subscribe(&stage_in, &probe, options().deferred())
                    .unwrap();
                pipeline.subscribe(&stage_in, &table_a, options()).unwrap();
                pipeline.subscribe(&stage_in, &table_b, options()).unwrap();
                pipeline.subscribe(&sink, &stage_out, options()).unwrap();
            } else {
                pipeline
                    .subscribe(&sink, &probe, options().deferred())
                    .unwrap();
                pipeline.subscribe(&sink, &table_a, options()).unwrap();
                pipeline.subscribe(&sink, &table_b, options()).unwrap();
            }
            run(pipeline).unwrap();
            let seen = snapshot(&seen);
            let case =
                format!("max_demand {max_demand}, producer-consumer {through_producer_consumer}");
            assert_eq!(seen.len() as u64, 3 * total, "{case}");
            // Every table event comes before the first probe event, all probe events after.
            let first_probe = seen.iter().position(|&tag| tag == 2).unwrap();
            assert_eq!(first_probe as u64, 2 * total, "{case}");
            assert!(seen[first_probe..].iter().all(|&tag| tag == 2), "{case}");
        }
    }
}

#[test]
fn a_producer_consumer_takes_whole_chunks_and_sends_only_under_demand() {
    // The stage's input chunks follow its own subscription (max 100, min 0), not its
    // consumer's demand of 1; its output still leaves one event per ask.
    let chunks = shared();
    let batches = shared();
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer(counter(1000));
    let record = chunks.clone();
    let (stage_in, stage_out) =
        pipeline.producer_consumer(producer_consumer_fn(move |b: Vec<u64>| {
            record.lock().unwrap().push(b.len());
            b
        }));
    let record = batches.clone();
    let sink = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
        record.lock().unwrap().push(batch)
    }));
    pipeline
        .subscribe(
            &stage_in,
            &numbers,
            SubscribeOptions::new().max_demand(100).min_demand(0),
        )
        .unwrap();
    pipeline
        .subscribe(
            &sink,
            &stage_out,
            SubscribeOptions::new().max_demand(1).min_demand(0),
        )
        .unwrap();
    run(pipeline).unwrap();
    assert_eq!(snapshot(&chunks), vec![100; 10]);
    let batches = snapshot(&batches);
    assert!(
        batches.iter().all(|b| b.len() == 1),
        "a batch beyond the demand of 1"
    );
    assert_eq!(batches.concat(), (0..1000).collect::<Vec<u64>>());
}

#[test]
fn only_deferred_subscriptions_start_at_once() {
    let seen = shared();
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer(counter(100));
    let record = seen.clone();
    let sink = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
        record.lock().unwrap().extend(batch)
    }));
    pipeline
        .subscribe(
            &sink,
            &numbers,
            SubscribeOptions::new().max_demand(10).deferred(),
        )
        .unwrap();
    run(pipeline).unwrap();
    assert_eq!(snapshot(&seen), (0..100).collect::<Vec<u64>>());
}

// ---------------------------------------------------------------------------------------
// 3. Never beyond demand; 4. the producer's buffer
// ---------------------------------------------------------------------------------------

/// A producer that returns three times what it is asked for, `0..total`, recording each
/// `demand` it gets.
fn over_producer(total: u64, demands: Shared<usize>) -> impl Producer<Item = u64> {
    let mut next = 0u64;
    poll_fn(move |demand: usize| {
        demands.lock().unwrap().push(demand);
        let end = (next + 3 * demand as u64).min(total);
        let events: Vec<u64> = (next..end).collect();
        next = end;
        if next == total {
            Produced::Finished(events)
        } else {
            Produced::Events(events)
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overproduction_waits_in_the_buffer_and_never_exceeds_demand() {
    const TOTAL: u64 = 300;
    let demands = shared();
    let slow = Gated::new();
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer(over_producer(TOTAL, demands.clone()));
    let consumer = pipeline.consumer(slow.handles());
    pipeline
        .subscribe(&consumer, &numbers, SubscribeOptions::new().max_demand(10))
        .unwrap();
    let running = pipeline.spawn().unwrap();

    // First request: 10 asked, 30 made; 10 go out under credit, 20 wait in the buffer.
    wait_until("the 20 extra events in the buffer", || {
        running.metrics()[0].buffered == 20
    })
    .await;
    wait_until("the consumer holding its first chunk", || {
        slow.entered.load(SeqCst) == 1
    })
    .await;
    assert_eq!(snapshot(&demands), [10]);
    assert_eq!(running.metrics()[0].events_out, 10);

    slow.gate.add_permits(TOTAL as usize);
    let report = watch(running.join()).await.unwrap();

    assert_eq!(snapshot(&slow.seen), (0..TOTAL).collect::<Vec<_>>());
    let demands = snapshot(&demands);
    assert!(
        demands.iter().all(|&d| (1..=10).contains(&d)),
        "demand beyond the one subscriber's max_demand: {demands:?}"
    );
    assert!(snapshot(&slow.chunks).iter().all(|&n| n <= 5));
    assert_eq!(report.stages[0].dropped, 0);
    assert_eq!(report.stages[0].buffered, 0);
    assert_eq!(report.stages[0].events_out, TOTAL);
}

#[test]
fn overproduction_beyond_the_buffer_is_dropped_and_counted() {
    const TOTAL: u64 = 300;
    let demands = shared();
    let seen = shared();
    let sink = seen.clone();
    let chunks = shared();
    let chunk_sizes = chunks.clone();
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer_with(
        over_producer(TOTAL, demands.clone()),
        ProducerOptions::new()
            .buffer_size(12)
            .buffer_keep(BufferKeep::First),
    );
    let consumer = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
        chunk_sizes.lock().unwrap().push(batch.len());
        sink.lock().unwrap().extend(batch);
    }));
    pipeline
        .subscribe(&consumer, &numbers, SubscribeOptions::new().max_demand(10))
        .unwrap();
    let report = run(pipeline).unwrap();

    let seen = snapshot(&seen);
    let demands = snapshot(&demands);
    assert!(
        demands.iter().all(|&d| (1..=10).contains(&d)),
        "{demands:?}"
    );
    assert!(snapshot(&chunks).iter().all(|&n| n <= 5));
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "out of order: {seen:?}"
    );
    // The first request alone makes 30: 10 sent, 12 kept, 8 dropped.
    assert!(report.stages[0].dropped >= 8);
    assert_eq!(report.stages[0].dropped, TOTAL - seen.len() as u64);
    assert_eq!(report.stages[0].events_out, seen.len() as u64);
    assert_eq!(report.stages[1].events_in, seen.len() as u64);
}

/// A producer that answers its first request with `0abcdefgh` (9 events for a demand of 1)
/// and then finishes, into a consumer taking one event at a time.
fn keep(keep: BufferKeep) -> (String, Report, Vec<usize>) {
    let demands = shared();
    let calls = demands.clone();
    let seen = shared();
    let sink = seen.clone();
    let mut pipeline = Pipeline::new();
    let letters = pipeline.producer_with(
        poll_fn(move |demand: usize| {
            let mut calls = calls.lock().unwrap();
            calls.push(demand);
            if calls.len() == 1 {
                Produced::Events("0abcdefgh".chars().collect())
            } else {
                Produced::Finished(Vec::new())
            }
        }),
        ProducerOptions::new().buffer_size(5).buffer_keep(keep),
    );
    let consumer = pipeline.consumer(consumer_fn(move |batch: Vec<char>| {
        sink.lock().unwrap().extend(batch);
    }));
    pipeline
        .subscribe(
            &consumer,
            &letters,
            SubscribeOptions::new().max_demand(1).min_demand(0),
        )
        .unwrap();
    let report = run(pipeline).unwrap();
    (
        snapshot(&seen).into_iter().collect(),
        report,
        snapshot(&demands),
    )
}

#[test]
fn buffer_keep_first_keeps_the_oldest() {
    // `0` goes out under the one credit; `a..h` meet a buffer of 5: `a..e` stay.
    let (seen, report, demands) = keep(BufferKeep::First);
    assert_eq!(seen, "0abcde");
    assert_eq!(report.stages[0].dropped, 3);
    assert_eq!(report.stages[0].events_out, 6);
    // Asked again only once the buffer was empty.
    assert_eq!(demands, [1, 1]);
}

#[test]
fn buffer_keep_last_keeps_the_newest() {
    let (seen, report, demands) = keep(BufferKeep::Last);
    assert_eq!(seen, "0defgh");
    assert_eq!(report.stages[0].dropped, 3);
    assert_eq!(report.stages[0].events_out, 6);
    assert_eq!(demands, [1, 1]);
}

// ---------------------------------------------------------------------------------------
// 5. No stalls
// ---------------------------------------------------------------------------------------

#[test]
fn a_mostly_empty_polling_producer_still_delivers_everything() {
    const TOTAL: u64 = 10_000;
    let mut calls = 0u64;
    let mut next = 0u64;
    let empty_calls = Arc::new(AtomicUsize::new(0));
    let empties = empty_calls.clone();
    let seen = shared();
    let sink = seen.clone();
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer_with(
        poll_fn(move |demand: usize| {
            calls += 1;
            if calls % 10 != 0 {
                empties.fetch_add(1, SeqCst);
                return Produced::Events(Vec::new());
            }
            let end = (next + demand as u64).min(TOTAL);
            let events: Vec<u64> = (next..end).collect();
            next = end;
            if next == TOTAL {
                Produced::Finished(events)
            } else {
                Produced::Events(events)
            }
        }),
        ProducerOptions::new().retry_interval(Duration::from_millis(1)),
    );
    let consumer = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
        sink.lock().unwrap().extend(batch);
    }));
    pipeline
        .subscribe(&consumer, &numbers, SubscribeOptions::new().max_demand(500))
        .unwrap();
    run(pipeline).unwrap();
    assert_eq!(snapshot(&seen), (0..TOTAL).collect::<Vec<_>>());
    // 9 of every 10 calls came back empty; the debt was asked for again each time.
    assert!(empty_calls.load(SeqCst) >= 9 * 20);
}

/// An async producer fed by a channel: it waits for the first event, then takes what is
/// already there, up to the demand.
struct ChannelProducer {
    rx: tokio::sync::mpsc::Receiver<u64>,
}

impl Producer for ChannelProducer {
    type Item = u64;

    async fn handle_demand(&mut self, demand: usize) -> Result<Produced<u64>, StageError> {
        let Some(first) = self.rx.recv().await else {
            return Ok(Produced::Finished(Vec::new()));
        };
        let mut events = vec![first];
        while events.len() < demand {
            match self.rx.try_recv() {
                Ok(event) => events.push(event),
                Err(_) => break,
            }
        }
        Ok(Produced::Events(events))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_async_producer_waiting_on_a_channel_delivers_everything() {
    const TOTAL: u64 = 2_000;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let feeder = tokio::spawn(async move {
        for i in 0..TOTAL {
            tx.send(i).await.unwrap();
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    let collect = Collect::new();
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer(ChannelProducer { rx });
    let consumer = pipeline.consumer(collect.handles());
    pipeline
        .subscribe(&consumer, &numbers, SubscribeOptions::new().max_demand(50))
        .unwrap();
    watch(pipeline.run_async()).await.unwrap();
    feeder.await.unwrap();
    assert_eq!(snapshot(&collect.seen), (0..TOTAL).collect::<Vec<_>>());
    assert_eq!(collect.done.load(SeqCst), 1);
}

// ---------------------------------------------------------------------------------------
// 6. Dispatchers
// ---------------------------------------------------------------------------------------

#[test]
fn demand_dispatcher_spreads_and_delivers_each_event_once() {
    const TOTAL: u64 = 3_000;
    // Waits until all three consumers have asked (3 × 10), so the first batch is spread.
    let mut started = false;
    let mut inner = Count::new(TOTAL);
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer_with(
        poll_fn(move |demand: usize| {
            if !started && demand < 30 {
                return Produced::Events(Vec::new());
            }
            started = true;
            inner.take(demand)
        }),
        ProducerOptions::new().retry_interval(Duration::from_millis(1)),
    );
    let collectors: Vec<Collect<u64>> = (0..3).map(|_| Collect::new()).collect();
    for collect in &collectors {
        let consumer = pipeline.consumer(collect.handles());
        pipeline
            .subscribe(&consumer, &numbers, SubscribeOptions::new().max_demand(10))
            .unwrap();
    }
    run(pipeline).unwrap();

    let mut all = Vec::new();
    for collect in &collectors {
        let seen = snapshot(&collect.seen);
        assert!(!seen.is_empty(), "a consumer got nothing");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "out of order");
        all.extend(seen);
    }
    all.sort_unstable();
    assert_eq!(all, (0..TOTAL).collect::<Vec<_>>());
}

#[test]
fn broadcast_sends_every_event_to_every_consumer_and_selectors_filter() {
    const TOTAL: u64 = 1_000;
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer_with(
        from_iter(0..TOTAL),
        ProducerOptions::new().dispatcher(Dispatcher::broadcast()),
    );
    let (a, b, evens) = (Collect::new(), Collect::new(), Collect::new());
    let consumer_a = pipeline.consumer(a.handles());
    let consumer_b = pipeline.consumer(b.handles());
    let consumer_evens = pipeline.consumer(evens.handles());
    pipeline
        .subscribe(
            &consumer_a,
            &numbers,
            SubscribeOptions::new().max_demand(10),
        )
        .unwrap();
    pipeline
        .subscribe(
            &consumer_b,
            &numbers,
            SubscribeOptions::new().max_demand(100),
        )
        .unwrap();
    pipeline
        .subscribe(
            &consumer_evens,
            &numbers,
            SubscribeOptions::new()
                .max_demand(10)
                .selector(|n: &u64| n % 2 == 0),
        )
        .unwrap();
    let report = run(pipeline).unwrap();

    let all: Vec<u64> = (0..TOTAL).collect();
    assert_eq!(snapshot(&a.seen), all);
    assert_eq!(snapshot(&b.seen), all);
    assert_eq!(
        snapshot(&evens.seen),
        all.iter()
            .copied()
            .filter(|n| n % 2 == 0)
            .collect::<Vec<_>>()
    );
    assert_eq!(report.stages[3].events_in, TOTAL / 2);
}

#[test]
fn partition_by_key_sends_each_key_to_exactly_one_consumer() {
    const TOTAL: u64 = 10_000;
    const PARTITIONS: usize = 4;
    let key = |n: &u64| n % 37;
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer_with(
        from_iter(0..TOTAL),
        ProducerOptions::new().dispatcher(Dispatcher::partition_by_key(key)),
    );
    let collectors: Vec<Collect<u64>> = (0..PARTITIONS).map(|_| Collect::new()).collect();
    for collect in &collectors {
        let consumer = pipeline.consumer(collect.handles());
        pipeline
            .subscribe(&consumer, &numbers, SubscribeOptions::new().max_demand(50))
            .unwrap();
    }
    run(pipeline).unwrap();

    let mut owner: BTreeMap<u64, usize> = BTreeMap::new();
    let mut all = Vec::new();
    for (partition, collect) in collectors.iter().enumerate() {
        let seen = snapshot(&collect.seen);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "out of order");
        for n in &seen {
            let k = key(n);
            let previous = owner.insert(k, partition);
            assert!(
                previous.is_none_or(|p| p == partition),
                "key {k} reached partitions {previous:?} and {partition}"
            );
            // Default partition of a subscriber is its subscription order.
            assert_eq!(partition_of(partition_hash(&k), PARTITIONS), partition);
        }
        all.extend(seen);
    }
    all.sort_unstable();
    assert_eq!(all, (0..TOTAL).collect::<Vec<_>>());
    assert_eq!(owner.len(), 37);
}

#[test]
fn partition_with_none_drops_events_on_purpose() {
    const TOTAL: u64 = 1_000;
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer_with(
        from_iter(0..TOTAL),
        ProducerOptions::new().dispatcher(Dispatcher::partition_with(|n: &u64, partitions| {
            (n % 2 == 0).then_some((n / 2) as usize % partitions)
        })),
    );
    let (first, second) = (Collect::new(), Collect::new());
    for collect in [&first, &second] {
        let consumer = pipeline.consumer(collect.handles());
        pipeline
            .subscribe(&consumer, &numbers, SubscribeOptions::new().max_demand(20))
            .unwrap();
    }
    let report = run(pipeline).unwrap();

    // Evens 0, 4, 8, ... to partition 0; 2, 6, 10, ... to partition 1; odds nowhere.
    assert_eq!(
        snapshot(&first.seen),
        (0..TOTAL).step_by(4).collect::<Vec<_>>()
    );
    assert_eq!(
        snapshot(&second.seen),
        (2..TOTAL).step_by(4).collect::<Vec<_>>()
    );
    assert_eq!(report.stages[0].events_out, TOTAL / 2);
    assert_eq!(report.stages[0].dropped, 0, "a `None` route is not a loss");
}

#[test]
fn partition_with_an_out_of_range_index_fails_the_producer() {
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer_with(
        from_iter(0..100u64),
        ProducerOptions::new()
            .name("router")
            .dispatcher(Dispatcher::partition_with(|n: &u64, partitions| {
                Some(if *n == 42 { partitions } else { 0 })
            })),
    );
    for _ in 0..2 {
        let consumer = pipeline.consumer(consumer_fn(|_batch: Vec<u64>| {}));
        pipeline
            .subscribe(&consumer, &numbers, SubscribeOptions::new().max_demand(10))
            .unwrap();
    }
    match run(pipeline) {
        Err(FlowError::StageFailed { stage, message, .. }) => {
            assert_eq!(stage.name, "router");
            assert_eq!(stage.kind, StageKind::Producer);
            assert_eq!(stage.index, 0);
            assert!(message.contains("returned 2"), "{message}");
        }
        other => panic!("expected StageFailed, got {other:?}"),
    }
}

#[test]
fn explicit_partition_option_routes_to_the_chosen_consumer() {
    const TOTAL: u64 = 1_000;
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer_with(
        from_iter(0..TOTAL),
        ProducerOptions::new().dispatcher(Dispatcher::partition_with(|n: &u64, _| {
            Some((n % 2) as usize)
        })),
    );
    let (odds, evens) = (Collect::new(), Collect::new());
    // Subscribed first, but takes partition 1.
    let consumer_odds = pipeline.consumer(odds.handles());
    pipeline
        .subscribe(
            &consumer_odds,
            &numbers,
            SubscribeOptions::new().max_demand(10).partition(1),
        )
        .unwrap();
    let consumer_evens = pipeline.consumer(evens.handles());
    pipeline
        .subscribe(
            &consumer_evens,
            &numbers,
            SubscribeOptions::new().max_demand(30).partition(0),
        )
        .unwrap();
    run(pipeline).unwrap();
    assert_eq!(
        snapshot(&odds.seen),
        (1..TOTAL).step_by(2).collect::<Vec<_>>()
    );
    assert_eq!(
        snapshot(&evens.seen),
        (0..TOTAL).step_by(2).collect::<Vec<_>>()
    );
}

#[test]
fn duplicate_partition_index_is_a_config_error_at_run() {
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer_with(
        from_iter(0..10u64),
        ProducerOptions::new().dispatcher(Dispatcher::partition_by_key(|n: &u64| *n)),
    );
    for _ in 0..2 {
        let consumer = pipeline.consumer(consumer_fn(|_batch: Vec<u64>| {}));
        pipeline
            .subscribe(&consumer, &numbers, SubscribeOptions::new().partition(0))
            .unwrap();
    }
    let result = run(pipeline);
    assert!(
        matches!(result, Err(FlowError::Config(_))),
        "expected a config error, got {result:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 7. Partition backpressure
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_partition_backpressures_the_producer() {
    const TOTAL: u64 = 2_000;
    const MAX: usize = 10;
    // Partition 0's queue stops the producer once it holds `MAX`; one more request adds at
    // most the credit of both subscribers (2 × MAX).
    const QUEUE_BOUND: u64 = 3 * MAX as u64;

    let slow = Gated::new();
    let produced = Arc::new(AtomicUsize::new(0));
    let overran = Arc::new(AtomicBool::new(false));
    let (produced_p, overran_p, handled_p) =
        (produced.clone(), overran.clone(), slow.handled.clone());
    let mut inner = Count::new(TOTAL);
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer_with(
        poll_fn(move |demand: usize| {
            let out = inner.take(demand);
            let made = match &out {
                Produced::Events(e) | Produced::Finished(e) => e.len(),
            };
            let total = produced_p.fetch_add(made, SeqCst) + made;
            // Made and not yet handled by partition 0: in flight (≤ MAX) + its queue.
            if total > handled_p.load(SeqCst) + MAX + QUEUE_BOUND as usize {
                overran_p.store(true, SeqCst);
            }
            out
        }),
        ProducerOptions::new().dispatcher(Dispatcher::partition_with(|_: &u64, _| Some(0))),
    );
    let consumer_slow = pipeline.consumer(slow.handles());
    pipeline
        .subscribe(
            &consumer_slow,
            &numbers,
            SubscribeOptions::new().max_demand(MAX),
        )
        .unwrap();
    let fast = Collect::new();
    let consumer_fast = pipeline.consumer(fast.handles());
    pipeline
        .subscribe(
            &consumer_fast,
            &numbers,
            SubscribeOptions::new().max_demand(MAX),
        )
        .unwrap();
    let running = pipeline.spawn().unwrap();

    // Partition 0 is stuck on its first chunk: the producer must stop early.
    wait_until("the slow consumer's first chunk", || {
        slow.entered.load(SeqCst) > 0
    })
    .await;
    let mut max_buffered = 0;
    for _ in 0..100 {
        let producer = &running.metrics()[0];
        max_buffered = max_buffered.max(producer.buffered);
        assert!(
            produced.load(SeqCst) <= MAX + QUEUE_BOUND as usize,
            "the producer kept making events for a stuck partition"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(produced.load(SeqCst) as u64 <= TOTAL / 20);

    // Let partition 0 catch up bit by bit, sampling all along.
    watch(async {
        while running.metrics()[0].events_out < TOTAL || slow.handled.load(SeqCst) < TOTAL as usize
        {
            slow.gate.add_permits(25);
            max_buffered = max_buffered.max(running.metrics()[0].buffered);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    watch(running.join()).await.unwrap();

    assert!(
        max_buffered <= QUEUE_BOUND,
        "producer held {max_buffered} events"
    );
    assert!(!overran.load(SeqCst), "producer ran ahead of partition 0");
    assert_eq!(snapshot(&slow.seen), (0..TOTAL).collect::<Vec<_>>());
    assert!(snapshot(&fast.seen).is_empty());
    assert_eq!(fast.done.load(SeqCst), 1);
}

// ---------------------------------------------------------------------------------------
// 8. Completion
// ---------------------------------------------------------------------------------------

#[test]
fn a_producer_that_finishes_at_once_completes_normally() {
    let collect = Collect::<u64>::new();
    let mut pipeline = Pipeline::new();
    let nothing = pipeline.producer(from_iter(std::iter::empty::<u64>()));
    let consumer = pipeline.consumer(collect.handles());
    pipeline
        .subscribe(&consumer, &nothing, SubscribeOptions::new())
        .unwrap();
    let report = run(pipeline).unwrap();
    assert!(snapshot(&collect.seen).is_empty());
    assert_eq!(collect.done.load(SeqCst), 1);
    assert_eq!(report.stages[0].events_out, 0);
    assert!(report.tolerated.is_empty());
}

/// Waits a little before producing anything, so its consumer hears from it last.
struct Late {
    inner: std::ops::Range<u64>,
}

impl Producer for Late {
    type Item = u64;

    async fn handle_demand(&mut self, demand: usize) -> Result<Produced<u64>, StageError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let events: Vec<u64> = self.inner.by_ref().take(demand).collect();
        Ok(if self.inner.is_empty() {
            Produced::Finished(events)
        } else {
            Produced::Events(events)
        })
    }
}

#[test]
fn a_consumer_of_three_producers_finishes_after_all_three() {
    let collect = Collect::new();
    let mut pipeline = Pipeline::new();
    let small = pipeline.producer(from_iter(0..10u64));
    let large = pipeline.producer(from_iter(10..5_000u64));
    let late = pipeline.producer(Late {
        inner: 5_000..5_300,
    });
    let consumer = pipeline.consumer(collect.handles());
    for producer in [&small, &large, &late] {
        pipeline
            .subscribe(&consumer, producer, SubscribeOptions::new().max_demand(100))
            .unwrap();
    }
    run(pipeline).unwrap();
    let mut seen = snapshot(&collect.seen);
    seen.sort_unstable();
    assert_eq!(seen, (0..5_300).collect::<Vec<_>>());
    assert_eq!(collect.done.load(SeqCst), 1);
    assert_eq!(collect.seen_at_done.load(SeqCst), 5_300);
}

/// Appends its letter to every event's trail; its `handle_done` emits a marker.
struct Stamp(char);

impl ProducerConsumer for Stamp {
    type In = (u64, String);
    type Out = (u64, String);

    async fn handle_events(
        &mut self,
        events: Vec<(u64, String)>,
        _context: &mut ConsumerContext,
    ) -> Result<Vec<(u64, String)>, StageError> {
        Ok(events
            .into_iter()
            .map(|(n, mut trail)| {
                trail.push(self.0);
                (n, trail)
            })
            .collect())
    }

    async fn handle_done(&mut self) -> Result<Vec<(u64, String)>, StageError> {
        Ok(vec![(1_000_000 + self.0 as u64, String::new())])
    }
}

#[test]
fn a_chain_of_producer_consumers_completes_and_forwards_handle_done_output() {
    const TOTAL: u64 = 1_000;
    let collect = Collect::new();
    let mut pipeline = Pipeline::new();
    let source = pipeline.producer(from_iter((0..TOTAL).map(|n| (n, String::new()))));
    let mut upstream = source;
    for (letter, max) in [('a', 7), ('b', 100), ('c', 1000)] {
        let (input, output) = pipeline.producer_consumer(Stamp(letter));
        pipeline
            .subscribe(&input, &upstream, SubscribeOptions::new().max_demand(max))
            .unwrap();
        upstream = output;
    }
    let consumer = pipeline.consumer(collect.handles());
    pipeline
        .subscribe(&consumer, &upstream, SubscribeOptions::new().max_demand(13))
        .unwrap();
    let report = run(pipeline).unwrap();

    let mut expected: Vec<(u64, String)> = (0..TOTAL).map(|n| (n, "abc".to_string())).collect();
    expected.push((1_000_000 + 'a' as u64, "bc".into()));
    expected.push((1_000_000 + 'b' as u64, "c".into()));
    expected.push((1_000_000 + 'c' as u64, String::new()));
    assert_eq!(snapshot(&collect.seen), expected);
    assert_eq!(collect.done.load(SeqCst), 1);
    assert_eq!(report.stages[4].events_in, TOTAL + 3);
}

// ---------------------------------------------------------------------------------------
// 9. Cancel modes
// ---------------------------------------------------------------------------------------

/// A producer that never finishes; sets `dropped` when it is dropped.
struct Endless {
    next: u64,
    dropped: Arc<AtomicBool>,
}

impl Endless {
    fn new() -> (Self, Arc<AtomicBool>) {
        let dropped = Arc::new(AtomicBool::new(false));
        (
            Endless {
                next: 0,
                dropped: dropped.clone(),
            },
            dropped,
        )
    }
}

impl Producer for Endless {
    type Item = u64;

    async fn handle_demand(&mut self, demand: usize) -> Result<Produced<u64>, StageError> {
        let events = (self.next..self.next + demand as u64).collect();
        self.next += demand as u64;
        Ok(Produced::Events(events))
    }
}

impl Drop for Endless {
    fn drop(&mut self) {
        self.dropped.store(true, SeqCst);
    }
}

const MARK: u64 = 1 << 40;

/// Collects like [`Collect`]; on subscription `manual` (a manual-demand one) it asks `n`
/// once, on subscribe, and never again.
struct AskOnce {
    collect: Collect<u64>,
    manual: usize,
    n: usize,
}

impl Consumer for AskOnce {
    type Item = u64;

    fn handle_subscribe(&mut self, context: &mut ConsumerContext) {
        if context.from() == self.manual {
            context.ask(self.n);
        }
    }

    async fn handle_events(
        &mut self,
        events: Vec<u64>,
        context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        self.collect.handle_events(events, context).await
    }

    async fn handle_done(&mut self) -> Result<(), StageError> {
        self.collect.handle_done().await
    }
}

#[test]
fn permanent_subscription_ends_the_consumer_when_its_producer_finishes() {
    let collect = Collect::new();
    let (endless, endless_dropped) = Endless::new();
    let mut pipeline = Pipeline::new();
    let short = pipeline.producer(from_iter(MARK..MARK + 10));
    let long = pipeline.producer(endless);
    let consumer = pipeline.consumer(AskOnce {
        collect: collect.handles(),
        manual: 1,
        n: 10,
    });
    pipeline
        .subscribe(
            &consumer,
            &short,
            SubscribeOptions::new().cancel(Cancel::Permanent),
        )
        .unwrap();
    // The endless producer is asked for 10 once: after that it sits idle without credit, so
    // only the consumer's cancellation can stop it (this test still holds its handle, so
    // its inbox never closes on its own).
    pipeline
        .subscribe(
            &consumer,
            &long,
            SubscribeOptions::new()
                .max_demand(10)
                .mode(DemandMode::Manual)
                .cancel(Cancel::Transient),
        )
        .unwrap();
    // Completing at all means the endless producer stopped once its consumer was gone.
    run(pipeline).unwrap();
    let seen = snapshot(&collect.seen);
    let from_short: Vec<u64> = seen.iter().copied().filter(|&n| n >= MARK).collect();
    let from_long: Vec<u64> = seen.iter().copied().filter(|&n| n < MARK).collect();
    assert_eq!(from_short, (MARK..MARK + 10).collect::<Vec<_>>());
    assert_eq!(from_long, (0..from_long.len() as u64).collect::<Vec<_>>());
    assert!(from_long.len() <= 10);
    assert_eq!(collect.done.load(SeqCst), 1);
    assert!(endless_dropped.load(SeqCst));
    drop(long);
}

#[test]
fn transient_subscriptions_end_the_consumer_after_all_producers() {
    let collect = Collect::new();
    let mut pipeline = Pipeline::new();
    let short = pipeline.producer(from_iter(MARK..MARK + 10));
    let long = pipeline.producer(Late { inner: 0..3_000 });
    let consumer = pipeline.consumer(collect.handles());
    for producer in [&short, &long] {
        pipeline
            .subscribe(
                &consumer,
                producer,
                SubscribeOptions::new()
                    .max_demand(100)
                    .cancel(Cancel::Transient),
            )
            .unwrap();
    }
    run(pipeline).unwrap();
    let mut seen = snapshot(&collect.seen);
    seen.sort_unstable();
    let expected: Vec<u64> = (0..3_000).chain(MARK..MARK + 10).collect();
    assert_eq!(seen, expected);
    assert_eq!(collect.seen_at_done.load(SeqCst), 3_010);
}

/// A producer whose first request fails.
struct Failing;

impl Producer for Failing {
    type Item = u64;

    async fn handle_demand(&mut self, _demand: usize) -> Result<Produced<u64>, StageError> {
        Err("source unavailable".into())
    }
}

#[test]
fn temporary_subscription_tolerates_its_producer_failing() {
    let collect = Collect::new();
    let mut pipeline = Pipeline::new();
    let good = pipeline.producer(from_iter(0..1_000u64));
    let flaky = pipeline.producer_with(Failing, ProducerOptions::new().name("flaky"));
    let consumer = pipeline.consumer(collect.handles());
    pipeline
        .subscribe(&consumer, &good, SubscribeOptions::new().max_demand(10))
        .unwrap();
    pipeline
        .subscribe(
            &consumer,
            &flaky,
            SubscribeOptions::new().cancel(Cancel::Temporary),
        )
        .unwrap();
    let report = run(pipeline).unwrap();
    assert_eq!(snapshot(&collect.seen), (0..1_000).collect::<Vec<_>>());
    assert_eq!(report.tolerated.len(), 1);
    match &report.tolerated[0] {
        FlowError::StageFailed { stage, message, .. } => {
            assert_eq!(stage.name, "flaky");
            assert_eq!(stage.index, 1);
            assert_eq!(message, "source unavailable");
        }
        other => panic!("expected StageFailed, got {other:?}"),
    }
}

#[test]
fn transient_subscription_does_not_tolerate_its_producer_failing() {
    let mut pipeline = Pipeline::new();
    let good = pipeline.producer(from_iter(0..1_000u64));
    let flaky = pipeline.producer_with(Failing, ProducerOptions::new().name("flaky"));
    let consumer = pipeline.consumer(consumer_fn(|_batch: Vec<u64>| {}));
    pipeline
        .subscribe(&consumer, &good, SubscribeOptions::new())
        .unwrap();
    pipeline
        .subscribe(&consumer, &flaky, SubscribeOptions::new())
        .unwrap();
    let error = run(pipeline).unwrap_err();
    assert!(matches!(error, FlowError::StageFailed { .. }), "{error:?}");
    assert_eq!(error.stage().unwrap().name, "flaky");
}

// ---------------------------------------------------------------------------------------
// 10. Errors
// ---------------------------------------------------------------------------------------

/// Producer → producer-consumer → consumer, named `src`, `mid` and `sink`, where the stage
/// of `kind` panics with `panic_text` on its first call.
fn panicking_chain(kind: StageKind) -> flowstage::Result<Report> {
    let mut pipeline = Pipeline::new();
    let source = pipeline.producer_with(
        poll_fn(move |demand: usize| {
            if kind == StageKind::Producer {
                panic!("boom in the producer ({demand})");
            }
            Produced::Finished((0..100u64).collect())
        }),
        ProducerOptions::new().name("src"),
    );
    let (mid_in, mid_out) = pipeline.producer_consumer_with(
        producer_consumer_fn(move |batch: Vec<u64>| {
            if kind == StageKind::ProducerConsumer {
                panic!("boom in the middle");
            }
            batch
        }),
        ProducerConsumerOptions::new().name("mid"),
    );
    let sink = pipeline.consumer_with(
        consumer_fn(move |_batch: Vec<u64>| {
            if kind == StageKind::Consumer {
                panic!("boom in the sink");
            }
        }),
        ConsumerOptions::new().name("sink"),
    );
    pipeline
        .subscribe(&mid_in, &source, SubscribeOptions::new())
        .unwrap();
    pipeline
        .subscribe(&sink, &mid_out, SubscribeOptions::new())
        .unwrap();
    run(pipeline)
}

fn assert_panicked(
    result: flowstage::Result<Report>,
    name: &str,
    kind: StageKind,
    index: usize,
    text: &str,
) {
    match result {
        Err(error @ FlowError::StagePanicked { .. }) => {
            let stage = error.stage().unwrap();
            assert_eq!(
                (stage.name.as_str(), stage.kind, stage.index),
                (name, kind, index)
            );
            let FlowError::StagePanicked { message, .. } = &error else {
                unreachable!()
            };
            assert!(message.contains(text), "message {message:?}");
            assert!(error.to_string().contains(name));
        }
        other => panic!("expected StagePanicked, got {other:?}"),
    }
}

#[test]
fn a_panicking_producer_ends_the_run_naming_it() {
    assert_panicked(
        panicking_chain(StageKind::Producer),
        "src",
        StageKind::Producer,
        0,
        "boom in the producer (1000)",
    );
}

#[test]
fn a_panicking_producer_consumer_ends_the_run_naming_it() {
    assert_panicked(
        panicking_chain(StageKind::ProducerConsumer),
        "mid",
        StageKind::ProducerConsumer,
        1,
        "boom in the middle",
    );
}

#[test]
fn a_panicking_consumer_ends_the_run_naming_it() {
    assert_panicked(
        panicking_chain(StageKind::Consumer),
        "sink",
        StageKind::Consumer,
        2,
        "boom in the sink",
    );
}

/// A consumer that fails on the event 7.
struct RejectSeven;

impl Consumer for RejectSeven {
    type Item = u64;

    async fn handle_events(
        &mut self,
        events: Vec<u64>,
        _context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        if events.contains(&7) {
            return Err("bad event 7".into());
        }
        Ok(())
    }
}

#[test]
fn an_err_from_handle_events_ends_the_run_with_stage_failed() {
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer(from_iter(0..100u64));
    let consumer = pipeline.consumer(RejectSeven);
    pipeline
        .subscribe(&consumer, &numbers, SubscribeOptions::new().max_demand(4))
        .unwrap();
    match run(pipeline) {
        Err(FlowError::StageFailed {
            stage,
            message,
            source,
        }) => {
            assert_eq!(stage.name, "consumer#1");
            assert_eq!(stage.kind, StageKind::Consumer);
            assert_eq!(stage.index, 1);
            assert_eq!(message, "bad event 7");
            assert_eq!(source.unwrap().to_string(), "bad event 7");
        }
        other => panic!("expected StageFailed, got {other:?}"),
    }
}

#[test]
fn invalid_subscribe_options_are_config_errors() {
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer(from_iter(0..10u64));
    let consumer = pipeline.consumer(consumer_fn(|_batch: Vec<u64>| {}));
    let invalid = [
        SubscribeOptions::new().max_demand(0),
        SubscribeOptions::new().max_demand(10).min_demand(10),
        SubscribeOptions::new().max_demand(10).min_demand(11),
    ];
    for options in invalid {
        let shown = format!("{options:?}");
        let result = pipeline.subscribe(&consumer, &numbers, options);
        assert!(
            matches!(result, Err(FlowError::Config(_))),
            "{shown} gave {result:?}"
        );
    }
    // Still usable: a valid subscription after the rejected ones runs normally.
    pipeline
        .subscribe(
            &consumer,
            &numbers,
            SubscribeOptions::new().max_demand(1).min_demand(0),
        )
        .unwrap();
    let report = run(pipeline).unwrap();
    assert_eq!(report.stages[1].events_in, 10);
}

#[test]
fn spawn_outside_a_runtime_is_an_error() {
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer(from_iter(0..10u64));
    let consumer = pipeline.consumer(consumer_fn(|_batch: Vec<u64>| {}));
    pipeline
        .subscribe(&consumer, &numbers, SubscribeOptions::new())
        .unwrap();
    let result = pipeline.spawn();
    assert!(matches!(result, Err(FlowError::Config(_))), "{result:?}");
}

#[test]
fn run_from_inside_a_runtime_still_works() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = runtime.block_on(async {
            assert!(tokio::runtime::Handle::try_current().is_ok());
            let seen = shared();
            let sink = seen.clone();
            let mut pipeline = Pipeline::new();
            let numbers = pipeline.producer(from_iter(0..1_000u64));
            let consumer = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
                sink.lock().unwrap().extend(batch);
            }));
            pipeline
                .subscribe(&consumer, &numbers, SubscribeOptions::new().max_demand(10))
                .unwrap();
            pipeline.run().map(|_| snapshot(&seen))
        });
        let _ = done_tx.send(result);
    });
    let seen = done_rx
        .recv_timeout(WATCHDOG)
        .expect("run() inside a runtime hung (watchdog) or panicked")
        .unwrap();
    assert_eq!(seen, (0..1_000).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------
// 11. Dropping the handle cancels the run
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_running_cancels_an_endless_producer() {
    let (endless, dropped) = Endless::new();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer(endless);
    let consumer = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
        counted.fetch_add(batch.len(), SeqCst);
    }));
    pipeline
        .subscribe(&consumer, &numbers, SubscribeOptions::new().max_demand(10))
        .unwrap();
    let running = pipeline.spawn().unwrap();
    wait_until("events flowing", || count.load(SeqCst) >= 1_000).await;
    assert!(!dropped.load(SeqCst));
    drop(running);
    wait_until("the producer dropped after cancel", || dropped.load(SeqCst)).await;
}

// ---------------------------------------------------------------------------------------
// 12. Metrics
// ---------------------------------------------------------------------------------------

#[test]
fn metrics_count_events_in_and_out_per_stage() {
    const TOTAL: u64 = 5_000;
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer(from_iter(0..TOTAL));
    let (evens_in, evens_out) =
        pipeline.producer_consumer(producer_consumer_fn(|batch: Vec<u64>| {
            batch.into_iter().filter(|n| n % 2 == 0).collect()
        }));
    let consumer = pipeline.consumer(consumer_fn(|_batch: Vec<u64>| {}));
    pipeline
        .subscribe(&evens_in, &numbers, SubscribeOptions::new().max_demand(64))
        .unwrap();
    pipeline
        .subscribe(
            &consumer,
            &evens_out,
            SubscribeOptions::new().max_demand(30),
        )
        .unwrap();
    let report = run(pipeline).unwrap();

    let counts: Vec<(u64, u64)> = report
        .stages
        .iter()
        .map(|s| (s.events_in, s.events_out))
        .collect();
    assert_eq!(counts, [(0, TOTAL), (TOTAL, TOTAL / 2), (TOTAL / 2, 0)]);
    let names: BTreeSet<&str> = report
        .stages
        .iter()
        .map(|s| s.stage.name.as_str())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["producer#0", "producer-consumer#1", "consumer#2"])
    );
    assert!(
        report
            .stages
            .iter()
            .all(|s| s.dropped == 0 && s.buffered == 0)
    );
}

/// A producer-consumer that emits only in `handle_done`, like a reducer.
struct EmitAtDone(Vec<u64>);

impl ProducerConsumer for EmitAtDone {
    type In = u64;
    type Out = u64;

    async fn handle_events(
        &mut self,
        events: Vec<u64>,
        _context: &mut ConsumerContext,
    ) -> Result<Vec<u64>, StageError> {
        self.0.extend(events);
        Ok(Vec::new())
    }

    async fn handle_done(&mut self) -> Result<Vec<u64>, StageError> {
        Ok(std::mem::take(&mut self.0))
    }
}

#[test]
fn output_made_at_done_reaches_a_partition_dispatcher_s_consumers() {
    // Regression: output from `handle_done` went into the partition queues after the
    // stage had last flushed them, and the run hung with the events queued.
    let seen = shared::<u64>();
    let mut pipeline = Pipeline::new();
    let source = pipeline.producer(from_iter(0..100u64));
    let (hold_in, hold_out) = pipeline.producer_consumer_with(
        EmitAtDone(Vec::new()),
        ProducerConsumerOptions::new().dispatcher(Dispatcher::partition_by_key(|n: &u64| *n)),
    );
    pipeline
        .subscribe(&hold_in, &source, SubscribeOptions::new())
        .unwrap();
    for _ in 0..2 {
        let into = seen.clone();
        let sink = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
            into.lock().unwrap().extend(batch)
        }));
        pipeline
            .subscribe(&sink, &hold_out, SubscribeOptions::new())
            .unwrap();
    }
    run(pipeline).expect("run");
    let mut got = snapshot(&seen);
    got.sort_unstable();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

#[test]
fn a_large_output_leaves_a_producer_consumer_in_linear_time() {
    // Regression: a producer-consumer re-cut its unsent output from the front of a
    // `Vec` at each credit, copying the rest every time: 300 k events handed out two at
    // a time took 6 s, 600 k four times that. Now linear: well under a second.
    const N: u64 = 600_000;
    let total = shared::<u64>();
    let mut pipeline = Pipeline::new();
    let source = pipeline.producer(from_iter(0..N));
    let (hold_in, hold_out) = pipeline.producer_consumer(EmitAtDone(Vec::new()));
    let into = total.clone();
    let sink = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
        into.lock().unwrap().push(batch.iter().sum::<u64>())
    }));
    pipeline
        .subscribe(&hold_in, &source, SubscribeOptions::new())
        .unwrap();
    pipeline
        .subscribe(
            &sink,
            &hold_out,
            SubscribeOptions::new().max_demand(2).min_demand(0),
        )
        .unwrap();
    // Quadratic copying would take minutes here: `run` fails it through its watchdog.
    run(pipeline).expect("run");
    assert_eq!(snapshot(&total).iter().sum::<u64>(), N * (N - 1) / 2);
}

/// Emits events 0..6, all for partition 1, then waits forever for more data.
struct EmitsTwoThenWaits(bool);

impl Producer for EmitsTwoThenWaits {
    type Item = u64;

    async fn handle_demand(&mut self, _demand: usize) -> Result<Produced<u64>, StageError> {
        if std::mem::replace(&mut self.0, true) {
            std::future::pending::<()>().await;
        }
        // Let both consumers' first asks arrive, so that the next call is made (partition
        // 0 has credit) while events 4 and 5 still wait for partition 1's second ask.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(Produced::Events((0..6).collect()))
    }
}

#[test]
fn a_producer_waiting_for_data_still_sends_what_it_queued_when_credit_comes() {
    // Partition 1's consumer takes 4 at a time: events 4 and 5 wait in its queue (below
    // the queue's bound, so the producer is asked for more) for a re-ask that can only
    // come while the producer is already waiting for more data.
    // The producer must take that ask while it waits (regression: it sat in user code and
    // event 1 never left; a join whose other side stayed open hung).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let got = shared::<u64>();
    let (into, seen) = (got.clone(), got.clone());
    runtime.block_on(watch(async move {
        let mut pipeline = Pipeline::new();
        let source = pipeline.producer_with(
            EmitsTwoThenWaits(false),
            ProducerOptions::new().dispatcher(Dispatcher::partition_with(|_: &u64, _| Some(1))),
        );
        let idle = pipeline.consumer(consumer_fn(|_batch: Vec<u64>| {}));
        let slow = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
            into.lock().unwrap().extend(batch)
        }));
        pipeline
            .subscribe(&idle, &source, SubscribeOptions::new().partition(0))
            .unwrap();
        pipeline
            .subscribe(
                &slow,
                &source,
                SubscribeOptions::new()
                    .partition(1)
                    .max_demand(4)
                    .min_demand(0),
            )
            .unwrap();
        let running = pipeline.spawn().unwrap();
        while snapshot(&seen).len() < 6 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        running.cancel().await;
    }));
    assert_eq!(snapshot(&got), [0, 1, 2, 3, 4, 5]);
}

/// Makes `bursts` batches of `size` consecutive numbers, whatever the demand: what a
/// combiner does when it hands over its whole map.
struct Bursts {
    next: u64,
    size: u64,
    bursts: u64,
}

impl Producer for Bursts {
    type Item = u64;

    async fn handle_demand(&mut self, _demand: usize) -> Result<Produced<u64>, StageError> {
        let events: Vec<u64> = (self.next..self.next + self.size).collect();
        self.next += self.size;
        self.bursts -= 1;
        Ok(if self.bursts == 0 {
            Produced::Finished(events)
        } else {
            Produced::Events(events)
        })
    }
}

#[test]
fn a_partition_sends_bursts_far_beyond_the_credit_whole_and_in_order() {
    // Bursts of 20 000 into subscribers asking 64 at a time: each partition's queue holds
    // hundreds of batches at once, sent from the front batch by batch.
    const SIZE: u64 = 20_000;
    const BURSTS: u64 = 3;
    for partitions in [1usize, 2, 3] {
        let mut pipeline = Pipeline::new();
        let numbers = pipeline.producer_with(
            Bursts {
                next: 0,
                size: SIZE,
                bursts: BURSTS,
            },
            ProducerOptions::new().dispatcher(Dispatcher::partition_with(|n: &u64, p| {
                Some(*n as usize % p)
            })),
        );
        let collectors: Vec<Collect<u64>> = (0..partitions).map(|_| Collect::new()).collect();
        for collect in &collectors {
            let consumer = pipeline.consumer(collect.handles());
            pipeline
                .subscribe(&consumer, &numbers, SubscribeOptions::new().max_demand(64))
                .unwrap();
        }
        let report = run(pipeline).unwrap();
        for (partition, collect) in collectors.iter().enumerate() {
            let expected: Vec<u64> = (0..SIZE * BURSTS)
                .filter(|n| *n as usize % partitions == partition)
                .collect();
            assert_eq!(snapshot(&collect.seen), expected, "partition {partition}");
        }
        assert_eq!(report.stages[0].events_out, SIZE * BURSTS);
    }
}
