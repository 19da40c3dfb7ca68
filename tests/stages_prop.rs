//! Property tests of the stage runtime over random pipelines.
//!
//! Each case builds 1–4 producers, an optional layer of 1–3 producer-consumers, and 1–4
//! consumers, with random demand settings, buffers, dispatcher, and producers that answer
//! demand with fewer events, none, or more (up to their buffer), all decided by the seed.
//! Properties:
//! - every event is delivered exactly once (for broadcast: to every consumer), nothing is
//!   dropped;
//! - with a partition dispatcher, a key reaches exactly one consumer;
//! - the order of one producer's events is kept at every consumer whenever there is at
//!   most one producer-consumer (so with one producer and one consumer the output equals
//!   the input, in order);
//! - chunks never exceed `max_demand - min_demand`, and a producer is never asked for more
//!   than its subscribers can have asked.
//!
//! Every case runs under a watchdog: a hang fails the case instead of stalling CI.
//! `PROPTEST_CASES` overrides the number of cases (512 by default).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowstage::StageError;
use flowstage::stage::{
    Consumer, ConsumerContext, Dispatcher, Pipeline, Produced, Producer, ProducerConsumer,
    ProducerConsumerOptions, ProducerOptions, ProducerRef, SubscribeOptions,
};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError};

/// A case that runs longer than this is a hang.
const WATCHDOG: Duration = Duration::from_secs(20);
/// Producers that had nothing are asked again after this (tokio rounds it up to its
/// timer's millisecond).
const RETRY: Duration = Duration::from_micros(100);
/// Producer `p`'s events carry `p` in these bits, so per-producer order can be checked.
const PRODUCER_SHIFT: u32 = 32;
const VALUE_MASK: u64 = (1 << PRODUCER_SHIFT) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Demand,
    Broadcast,
    Partition,
}

/// How a producer answers `handle_demand(n)`, in events per mille of the calls.
#[derive(Debug, Clone, Copy)]
struct Behaviour {
    /// Returns no events (at most `empties` times, to keep retries cheap).
    none: u32,
    empties: u32,
    /// Returns between 1 and `n` events.
    short: u32,
    /// Returns up to `buffer_size` events more than asked (kept in the buffer, never lost).
    over: u32,
    /// Yields to the runtime before answering.
    yields: u32,
    /// The last events come with `Finished`; otherwise `Finished` comes empty, later.
    finish_with_last: bool,
}

#[derive(Debug, Clone, Copy)]
struct Demand {
    max: usize,
    min: usize,
}

impl Demand {
    fn chunk_size(self) -> usize {
        (self.max - self.min).max(1)
    }

    fn options(self) -> SubscribeOptions<u64> {
        SubscribeOptions::new()
            .max_demand(self.max)
            .min_demand(self.min)
    }
}

#[derive(Debug, Clone, Copy)]
struct Middle {
    stages: usize,
    /// Maps each event (one event in, one out); identity otherwise.
    map: bool,
    /// The producers' dispatcher towards this layer: partition by key, or demand.
    partition_into: bool,
    demand: Demand,
}

#[derive(Debug, Clone)]
struct Case {
    producers: usize,
    consumers: usize,
    middle: Option<Middle>,
    /// The dispatcher in front of the consumers.
    kind: Kind,
    demand: Demand,
    buffer_size: usize,
    behaviour: Behaviour,
    len: usize,
    /// Values are drawn from `0..range`; a small range makes many duplicates.
    range: u64,
    seed: u64,
}

/// splitmix64: a tiny deterministic generator for everything the seed decides at run time.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn per_mille(&mut self, chance: u32) -> bool {
        self.below(1000) < u64::from(chance)
    }
}

/// What a producer saw, checked after the run.
#[derive(Debug, Default)]
struct ProducerLog {
    largest_ask: AtomicUsize,
    asked_after_finish: AtomicBool,
}

struct TestProducer {
    events: Vec<u64>,
    next: usize,
    rng: Rng,
    behaviour: Behaviour,
    empties_left: u32,
    buffer_size: usize,
    finished: bool,
    log: Arc<ProducerLog>,
}

impl Producer for TestProducer {
    type Item = u64;

    async fn handle_demand(&mut self, demand: usize) -> Result<Produced<u64>, StageError> {
        self.log.largest_ask.fetch_max(demand, SeqCst);
        if self.finished || demand == 0 {
            self.log.asked_after_finish.store(true, SeqCst);
        }
        if self.rng.per_mille(self.behaviour.yields) {
            tokio::task::yield_now().await;
        }
        let left = self.events.len() - self.next;
        if left == 0 {
            self.finished = true;
            return Ok(Produced::Finished(Vec::new()));
        }
        let b = self.behaviour;
        let count = if self.empties_left > 0 && self.rng.per_mille(b.none) {
            self.empties_left -= 1;
            0
        } else if self.rng.per_mille(b.short) {
            1 + self.rng.below(demand as u64) as usize
        } else if self.buffer_size > 0 && self.rng.per_mille(b.over) {
            demand + 1 + self.rng.below(self.buffer_size as u64) as usize
        } else {
            demand
        };
        let count = count.min(left);
        let events = self.events[self.next..self.next + count].to_vec();
        self.next += count;
        if self.next == self.events.len() && b.finish_with_last {
            self.finished = true;
            Ok(Produced::Finished(events))
        } else {
            Ok(Produced::Events(events))
        }
    }
}

/// Largest chunk a stage was handed.
#[derive(Debug, Default)]
struct ChunkLog {
    largest: AtomicUsize,
}

struct Middleman {
    map: bool,
    yields: Rng,
    chunks: Arc<ChunkLog>,
}

fn mapped(event: u64) -> u64 {
    // Changes the value, keeps the producer bits (values are below 2^30, so 3v + 1 < 2^32).
    let value = event & VALUE_MASK;
    (event & !VALUE_MASK) | (value * 3 + 1)
}

impl ProducerConsumer for Middleman {
    type In = u64;
    type Out = u64;

    async fn handle_events(
        &mut self,
        events: Vec<u64>,
        _context: &mut ConsumerContext,
    ) -> Result<Vec<u64>, StageError> {
        self.chunks.largest.fetch_max(events.len(), SeqCst);
        if self.yields.per_mille(100) {
            tokio::task::yield_now().await;
        }
        Ok(if self.map {
            events.into_iter().map(mapped).collect()
        } else {
            events
        })
    }
}

struct Collector {
    seen: Arc<Mutex<Vec<u64>>>,
    yields: Rng,
    chunks: Arc<ChunkLog>,
}

impl Consumer for Collector {
    type Item = u64;

    async fn handle_events(
        &mut self,
        events: Vec<u64>,
        _context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        self.chunks.largest.fetch_max(events.len(), SeqCst);
        if self.yields.per_mille(100) {
            tokio::task::yield_now().await;
        }
        self.seen.lock().unwrap().extend(events);
        Ok(())
    }
}

fn dispatcher(kind: Kind) -> Dispatcher<u64> {
    match kind {
        Kind::Demand => Dispatcher::demand(),
        Kind::Broadcast => Dispatcher::broadcast(),
        Kind::Partition => Dispatcher::partition_by_key(|event: &u64| *event),
    }
}

/// Each producer's input, values tagged with the producer's index.
fn inputs(case: &Case) -> Vec<Vec<u64>> {
    let mut rng = Rng(case.seed);
    let per = case.len / case.producers;
    let extra = case.len % case.producers;
    (0..case.producers)
        .map(|p| {
            let count = per + usize::from(p < extra);
            (0..count)
                .map(|_| ((p as u64) << PRODUCER_SHIFT) | rng.below(case.range))
                .collect()
        })
        .collect()
}

/// Is `part` a subsequence of `whole`?
fn is_subsequence(part: &[u64], whole: &[u64]) -> bool {
    let mut whole = whole.iter();
    part.iter().all(|x| whole.any(|y| y == x))
}

fn sorted(mut events: Vec<u64>) -> Vec<u64> {
    events.sort_unstable();
    events
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let inputs = inputs(case);
    let mut pipeline = Pipeline::new();
    let mut producer_logs = Vec::new();
    let mut producers = Vec::new();
    // The producers' dispatcher: the case's, unless a producer-consumer layer follows.
    let producer_kind = match case.middle {
        None => case.kind,
        Some(middle) if middle.partition_into => Kind::Partition,
        Some(_) => Kind::Demand,
    };
    for (p, events) in inputs.iter().enumerate() {
        let log = Arc::new(ProducerLog::default());
        producer_logs.push(log.clone());
        let producer = TestProducer {
            events: events.clone(),
            next: 0,
            rng: Rng(case.seed ^ (0x1000 + p as u64)),
            behaviour: case.behaviour,
            empties_left: case.behaviour.empties,
            buffer_size: case.buffer_size,
            finished: false,
            log,
        };
        let options = ProducerOptions::new()
            .dispatcher(dispatcher(producer_kind))
            .buffer_size(case.buffer_size)
            .retry_interval(RETRY);
        producers.push(pipeline.producer_with(producer, options));
    }

    // The layer the consumers subscribe to.
    let mut last: Vec<ProducerRef<u64>> = producers;
    let mut middle_logs = Vec::new();
    if let Some(middle) = case.middle {
        let mut outs = Vec::new();
        for m in 0..middle.stages {
            let chunks = Arc::new(ChunkLog::default());
            middle_logs.push(chunks.clone());
            let stage = Middleman {
                map: middle.map,
                yields: Rng(case.seed ^ (0x2000 + m as u64)),
                chunks,
            };
            let options = ProducerConsumerOptions::new().dispatcher(dispatcher(case.kind));
            let (input, output) = pipeline.producer_consumer_with(stage, options);
            for producer in &last {
                pipeline
                    .subscribe(&input, producer, middle.demand.options())
                    .unwrap();
            }
            outs.push(output);
        }
        last = outs;
    }

    let mut seen = Vec::new();
    let mut consumer_logs = Vec::new();
    for c in 0..case.consumers {
        let events = Arc::new(Mutex::new(Vec::new()));
        seen.push(events.clone());
        let chunks = Arc::new(ChunkLog::default());
        consumer_logs.push(chunks.clone());
        let consumer = pipeline.consumer(Collector {
            seen: events,
            yields: Rng(case.seed ^ (0x3000 + c as u64)),
            chunks,
        });
        for producer in &last {
            pipeline
                .subscribe(&consumer, producer, case.demand.options())
                .unwrap();
        }
    }
    drop(last);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome =
        runtime.block_on(async { tokio::time::timeout(WATCHDOG, pipeline.run_async()).await });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let report = match outcome {
        Err(_) => {
            return Err(TestCaseError::fail(format!(
                "hang: no end within {WATCHDOG:?}"
            )));
        }
        Ok(Err(error)) => return Err(TestCaseError::fail(format!("run failed: {error}"))),
        Ok(Ok(report)) => report,
    };

    let map = case.middle.is_some_and(|m| m.map);
    let expected: Vec<Vec<u64>> = inputs
        .iter()
        .map(|events| {
            if map {
                events.iter().copied().map(mapped).collect()
            } else {
                events.clone()
            }
        })
        .collect();
    let all_expected = sorted(expected.concat());
    let seen: Vec<Vec<u64>> = seen
        .iter()
        .map(|events| std::mem::take(&mut *events.lock().unwrap()))
        .collect();

    // Exactly once.
    if case.kind == Kind::Broadcast {
        for (c, events) in seen.iter().enumerate() {
            prop_assert!(
                sorted(events.clone()) == all_expected,
                "broadcast: consumer {c} got {} events, expected {}",
                events.len(),
                all_expected.len()
            );
        }
    } else {
        let all_seen = sorted(seen.concat());
        prop_assert!(
            all_seen == all_expected,
            "got {} events, expected {}",
            all_seen.len(),
            all_expected.len()
        );
    }

    // A key reaches one consumer only.
    if case.kind == Kind::Partition {
        let mut owner = HashMap::new();
        for (c, events) in seen.iter().enumerate() {
            for &event in events {
                let first = *owner.entry(event).or_insert(c);
                prop_assert_eq!(first, c, "key {} reached two consumers", event);
            }
        }
    }

    // Order of one producer's events, wherever at most one stage sits in between.
    if case.middle.is_none_or(|m| m.stages == 1) {
        for (c, events) in seen.iter().enumerate() {
            for (p, input) in expected.iter().enumerate() {
                let from_p: Vec<u64> = events
                    .iter()
                    .copied()
                    .filter(|e| e >> PRODUCER_SHIFT == p as u64)
                    .collect();
                prop_assert!(
                    is_subsequence(&from_p, input),
                    "consumer {c}: producer {p}'s events out of order"
                );
            }
        }
        if case.producers == 1 && case.consumers == 1 {
            prop_assert!(seen[0] == expected[0], "1 → 1: output differs from input");
        }
    }

    // Chunk sizes and asks.
    for (c, log) in consumer_logs.iter().enumerate() {
        let largest = log.largest.load(SeqCst);
        prop_assert!(
            largest <= case.demand.chunk_size(),
            "consumer {c} got a chunk of {largest}"
        );
    }
    if let Some(middle) = case.middle {
        for (m, log) in middle_logs.iter().enumerate() {
            let largest = log.largest.load(SeqCst);
            prop_assert!(
                largest <= middle.demand.chunk_size(),
                "producer-consumer {m} got a chunk of {largest}"
            );
        }
    }
    let (subscribers, max_demand) = match case.middle {
        Some(middle) => (middle.stages, middle.demand.max),
        None => (case.consumers, case.demand.max),
    };
    for (p, log) in producer_logs.iter().enumerate() {
        prop_assert!(
            !log.asked_after_finish.load(SeqCst),
            "producer {p} asked after it finished, or for 0"
        );
        let largest = log.largest_ask.load(SeqCst);
        prop_assert!(
            largest <= subscribers * max_demand,
            "producer {p} asked for {largest} by {subscribers} subscribers of max {max_demand}"
        );
    }
    for stage in &report.stages {
        prop_assert_eq!(stage.dropped, 0, "{} dropped events", stage.stage);
    }
    Ok(())
}

fn demand() -> impl Strategy<Value = Demand> {
    prop_oneof![
        2 => 1..=8usize,
        1 => 9..=100usize,
        1 => 101..=2000usize,
    ]
    .prop_flat_map(|max| (Just(max), 0..max))
    .prop_map(|(max, min)| Demand { max, min })
}

fn behaviour() -> impl Strategy<Value = Behaviour> {
    (
        prop_oneof![Just(0u32), Just(50), Just(300)],
        0..=30u32,
        prop_oneof![Just(0u32), Just(200), Just(700)],
        prop_oneof![Just(0u32), Just(200)],
        prop_oneof![Just(0u32), Just(300)],
        any::<bool>(),
    )
        .prop_map(
            |(none, empties, short, over, yields, finish_with_last)| Behaviour {
                none,
                empties,
                short,
                over,
                yields,
                finish_with_last,
            },
        )
}

fn case() -> impl Strategy<Value = Case> {
    let middle = (1..=3usize, any::<bool>(), any::<bool>(), demand()).prop_map(
        |(stages, map, partition_into, demand)| Middle {
            stages,
            map,
            partition_into,
            demand,
        },
    );
    let len = prop_oneof![
        6 => 0..=64usize,
        3 => 65..=2000usize,
        2 => 2001..=20_000usize,
        1 => 20_001..=100_000usize,
    ];
    let buffer_size = prop_oneof![0..=64usize, Just(1000), Just(10_000)];
    let kind = prop_oneof![
        Just(Kind::Demand),
        Just(Kind::Broadcast),
        Just(Kind::Partition)
    ];
    let range = prop_oneof![Just(8u64), Just(1000), Just(1 << 30)];
    (
        (1..=4usize, 1..=4usize, proptest::option::of(middle), kind),
        (demand(), buffer_size, behaviour()),
        (len, range, any::<u64>()),
    )
        .prop_map(
            |(
                (producers, consumers, middle, kind),
                (demand, buffer_size, behaviour),
                (len, range, seed),
            )| Case {
                producers,
                consumers,
                middle,
                kind,
                demand,
                buffer_size,
                behaviour,
                len,
                range,
                seed,
            },
        )
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(512);
    ProptestConfig {
        cases,
        // A failing case may be a hang of WATCHDOG each: bound the shrinking.
        max_shrink_time: 120_000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_event_is_delivered_exactly_once(case in case()) {
        check(&case)?;
    }
}

/// One producer into one consumer keeps the order, for each dispatcher and also through
/// one producer-consumer: the cases the random search may reach rarely, run every time.
#[test]
fn one_to_one_keeps_order() {
    let behaviour = Behaviour {
        none: 50,
        empties: 5,
        short: 300,
        over: 200,
        yields: 100,
        finish_with_last: false,
    };
    for kind in [Kind::Demand, Kind::Broadcast, Kind::Partition] {
        for middle in [
            None,
            Some(Middle {
                stages: 1,
                map: true,
                partition_into: false,
                demand: Demand { max: 7, min: 2 },
            }),
        ] {
            for (max, min) in [(1, 0), (3, 1), (1000, 500), (2000, 1999)] {
                let case = Case {
                    producers: 1,
                    consumers: 1,
                    middle,
                    kind,
                    demand: Demand { max, min },
                    buffer_size: 16,
                    behaviour,
                    len: 5000,
                    range: 1000,
                    seed: (max * 31 + min) as u64,
                };
                if let Err(error) = check(&case) {
                    panic!("{case:?}: {error}");
                }
            }
        }
    }
}
