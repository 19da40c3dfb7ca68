//! Event-time windows: a keyed sum per 1-second fixed window, flowstage against the same
//! computation in one sequential loop, in one group.
//!
//! `cargo bench --bench windows`
//!
//! Input: 10 M events `(ts, key, value)`, generated on the fly from their index (no input
//! in memory, the same events on every side): keys in `0..100_000` and values from a
//! splitmix64 hash; timestamps advance 1 ms every 1 000 events — ten 1-second windows —
//! with up to 3 ms of jitter that reorders events inside a window but never moves one
//! into another, so no event is late however producers interleave, and every contestant
//! gets the same answer.
//!
//! - `flowstage`: two producers (`Flow::from_iters`) over the two halves of the time
//!   range; `partition` by key over two stages with a 1-second `Window::fixed`;
//!   `reduce_mut` into an `AHashMap` per window; `on_trigger` emitting `(window, key, sum)`
//!   when each window closes; collected. (`reduce_mut` updates the map in place, as the
//!   sequential loop does; `reduce` would move the 64-byte map through the closure on
//!   every event: 12 % more instructions here.)
//! - `flowstage_interleaved`: two producers each taking every other event, so both span
//!   the whole time range (two partitions of one log): the watermark moves with both.
//! - `flowstage_one_source`: a single producer (`Flow::from_iter`).
//! - `sequential`: one loop, one `AHashMap` emptied into the output whenever the window
//!   changes.
//! - `hand_made_threads`: the same dataflow written by hand for two cores, no library:
//!   two generator threads route events by key into batches of `MAX_DEMAND` sent over
//!   bounded crossbeam channels to two reducer threads, which keep a map per open window
//!   and close it when both generators have passed it. What flowstage should approach.
//!
//! - `machine_two_sequential`: not a contestant but the machine's ceiling, measured in
//!   the same run: two threads each run the whole sequential loop at once. Two free cores
//!   take as long as one run; a shared machine's second core delivers less (the speed-up
//!   ceiling is `2 x sequential / machine_two_sequential`).
//!
//! The maps are sized up front for the keys they will hold (a stage's map for its half of
//! the keys), on both sides: otherwise each flowstage window grows a fresh map from empty
//! while the sequential loop keeps its allocation, which cost flowstage about half again
//! as much time here. `max_demand` is 4096: cheap events want large batches.
//!
//! All must produce the same sorted `(window, key, sum)` list, checked once before
//! timing; the timed loop checks the number of results and their total.

use std::hint::black_box;
use std::time::Duration;

use ahash::AHashMap;
use criterion::{Criterion, Throughput, criterion_group};
use flowstage::flow::{Flow, Partition, Plan};
use flowstage::window::Window;

/// Events per run.
const EVENTS: u64 = 10_000_000;
/// Distinct keys.
const KEYS: u64 = 100_000;
/// Events per millisecond of event time: 10 M events span 10 s, ten 1-second windows.
const PER_MS: u64 = 1_000;
/// Window size in milliseconds.
const WINDOW_MS: i64 = 1_000;
/// Timestamps are jittered back by up to this many milliseconds, inside their window.
const JITTER_MS: u64 = 3;
/// Partition stages.
const STAGES: usize = 2;
/// `max_demand` into the windowed layer.
const MAX_DEMAND: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Event {
    /// Event time, milliseconds.
    ts: i64,
    key: u32,
    value: u64,
}

#[inline]
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The `i`-th event.
#[inline]
fn event(i: u64) -> Event {
    let h = mix(i);
    let base = (i / PER_MS) as i64;
    let start = base - base.rem_euclid(WINDOW_MS);
    Event {
        ts: (base - ((h >> 60) % (JITTER_MS + 1)) as i64).max(start),
        key: ((h & 0xffff_ffff) % KEYS) as u32,
        value: (h >> 32) & 0xffff,
    }
}

/// `(window start, key, sum)`.
type Sum = (i64, u32, u64);

type Sums = AHashMap<u32, u64>;

/// (results, their total): what the timed loop checks.
fn summary(sums: &[Sum]) -> (usize, u64) {
    (sums.len(), sums.iter().map(|s| s.2).sum())
}

fn sequential(events: u64) -> Vec<Sum> {
    let mut out = Vec::new();
    let mut current: Option<i64> = None;
    let mut sums = Sums::with_capacity(KEYS as usize);
    for e in (0..events).map(event) {
        let id = e.ts.div_euclid(WINDOW_MS) * WINDOW_MS;
        if current != Some(id) {
            if let Some(done) = current {
                out.extend(sums.drain().map(|(key, sum)| (done, key, sum)));
            }
            current = Some(id);
        }
        *sums.entry(e.key).or_default() += e.value;
    }
    if let Some(done) = current {
        out.extend(sums.drain().map(|(key, sum)| (done, key, sum)));
    }
    out
}

/// A stage's share of the keys, with room for an uneven split.
const STAGE_KEYS: usize = KEYS as usize / STAGES * 9 / 8;

fn windowed<P: Plan<Item = Event>>(flow: Flow<P>) -> Vec<Sum> {
    let window = Window::fixed(Duration::from_millis(WINDOW_MS as u64), |e: &Event| e.ts);
    flow.partition(
        Partition::by_key(|e: &Event| e.key)
            .stages(STAGES)
            .max_demand(MAX_DEMAND)
            .window(window),
    )
    .reduce_mut(
        || Sums::with_capacity(STAGE_KEYS),
        |e: Event, sums: &mut Sums| *sums.entry(e.key).or_default() += e.value,
    )
    .on_trigger(|sums, _, trigger| {
        let id = trigger.window.id;
        let out: Vec<Sum> = sums.into_iter().map(|(key, sum)| (id, key, sum)).collect();
        (out, Sums::new())
    })
    .collect()
    .expect("flowstage windows")
}

fn flowstage_halves(events: u64) -> Vec<Sum> {
    let halves = [0..events / 2, events / 2..events];
    windowed(Flow::from_iters(halves.map(|range| range.map(event))))
}

fn flowstage_interleaved(events: u64) -> Vec<Sum> {
    let every_other = [0u64, 1].map(|first| (first..events).step_by(2).map(event));
    windowed(Flow::from_iters(every_other))
}

fn flowstage_one_source(events: u64) -> Vec<Sum> {
    windowed(Flow::from_iter((0..events).map(event)))
}

/// Partition of a key for the hand-made pipeline: a multiplicative hash's top bits.
#[inline]
fn hand_route(key: u32) -> usize {
    ((u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize * STAGES) >> 32
}

/// The same computation as a hand-made pipeline: two generator threads route events by key
/// into per-partition batches of `MAX_DEMAND`, sent over bounded crossbeam channels to two
/// reducer threads, each holding one map per open window and closing a window when both
/// generators have moved past it (the watermark).
fn hand_made_threads(events: u64) -> Vec<Sum> {
    use std::collections::BTreeMap;
    // (generator, batch); `None` says the generator is done.
    type Message = (usize, Option<Vec<Event>>);
    let halves = [0..events / 2, events / 2..events];
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..STAGES)
        .map(|_| crossbeam_channel::bounded::<Message>(4))
        .unzip();
    std::thread::scope(|scope| {
        for (generator, range) in halves.into_iter().enumerate() {
            let senders = senders.clone();
            scope.spawn(move || {
                let mut queues: Vec<Vec<Event>> = (0..STAGES)
                    .map(|_| Vec::with_capacity(MAX_DEMAND))
                    .collect();
                for e in range.map(event) {
                    let p = hand_route(e.key);
                    let queue = &mut queues[p];
                    queue.push(e);
                    if queue.len() == MAX_DEMAND {
                        let batch = std::mem::replace(queue, Vec::with_capacity(MAX_DEMAND));
                        senders[p]
                            .send((generator, Some(batch)))
                            .expect("reducer alive");
                    }
                }
                for (queue, sender) in queues.into_iter().zip(&senders) {
                    if !queue.is_empty() {
                        sender
                            .send((generator, Some(queue)))
                            .expect("reducer alive");
                    }
                    sender.send((generator, None)).expect("reducer alive");
                }
            });
        }
        drop(senders);
        let reducers: Vec<_> = receivers
            .into_iter()
            .map(|receiver| {
                scope.spawn(move || {
                    let mut latest = [i64::MIN; 2];
                    let mut open: BTreeMap<i64, Sums> = BTreeMap::new();
                    let mut out = Vec::new();
                    for (generator, batch) in receiver {
                        match batch {
                            Some(batch) => {
                                let mut rest = &batch[..];
                                while let Some(first) = rest.first() {
                                    let id = first.ts.div_euclid(WINDOW_MS) * WINDOW_MS;
                                    let end = id + WINDOW_MS;
                                    let len = rest
                                        .iter()
                                        .position(|e| e.ts < id || e.ts >= end)
                                        .unwrap_or(rest.len());
                                    let sums = open
                                        .entry(id)
                                        .or_insert_with(|| Sums::with_capacity(STAGE_KEYS));
                                    for e in &rest[..len] {
                                        *sums.entry(e.key).or_default() += e.value;
                                    }
                                    latest[generator] = latest[generator].max(id);
                                    rest = &rest[len..];
                                }
                            }
                            None => latest[generator] = i64::MAX,
                        }
                        let watermark = latest[0].min(latest[1]);
                        while let Some(entry) = open.first_entry() {
                            if *entry.key() >= watermark {
                                break;
                            }
                            let (id, sums) = entry.remove_entry();
                            out.extend(sums.into_iter().map(|(key, sum)| (id, key, sum)));
                        }
                    }
                    out
                })
            })
            .collect();
        reducers
            .into_iter()
            .flat_map(|reducer| reducer.join().expect("reducer"))
            .collect()
    })
}

/// A contestant: all the `(window, key, sum)` of the first `n` events.
type Contestant = fn(u64) -> Vec<Sum>;

fn sorted(mut sums: Vec<Sum>) -> Vec<Sum> {
    sums.sort_unstable();
    sums
}

/// Every contestant, by name.
const CONTESTANTS: [(&str, Contestant); 5] = [
    ("flowstage", flowstage_halves),
    ("flowstage_interleaved", flowstage_interleaved),
    ("flowstage_one_source", flowstage_one_source),
    ("sequential", sequential),
    ("hand_made_threads", hand_made_threads),
];

fn windows(c: &mut Criterion) {
    let reference = sorted(sequential(EVENTS));
    assert_eq!(sorted(flowstage_halves(EVENTS)), reference);
    assert_eq!(sorted(flowstage_interleaved(EVENTS)), reference);
    assert_eq!(sorted(flowstage_one_source(EVENTS)), reference);
    assert_eq!(sorted(hand_made_threads(EVENTS)), reference);
    assert_eq!(sorted(flowstage_halves(10_000)), sorted(sequential(10_000)));
    let expected = summary(&reference);
    eprintln!(
        "windows: {EVENTS} events, {} windows, {} (window, key) sums",
        reference.last().map_or(0, |s| s.0 / WINDOW_MS + 1),
        expected.0
    );
    drop(reference);

    let mut group = c.benchmark_group("windows");
    group
        .throughput(Throughput::Elements(EVENTS))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    for (name, run) in CONTESTANTS {
        group.bench_function(name, |b| {
            b.iter(|| assert_eq!(summary(&run(black_box(EVENTS))), expected));
        });
    }
    group.bench_function("machine_two_sequential", |b| {
        b.iter(|| {
            let other = std::thread::spawn(|| summary(&sequential(black_box(EVENTS))));
            assert_eq!(summary(&sequential(black_box(EVENTS))), expected);
            assert_eq!(other.join().ok(), Some(expected));
        });
    });
    group.finish();
}

criterion_group!(benches, windows);

fn main() {
    if let Ok(one) = std::env::var(ONE) {
        run_one(&one);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

/// `FLOWSTAGE_BENCH_ONE=contestant:events`: run one contestant once and print its
/// summary, nothing else (for callgrind, see `benches/README.md`).
const ONE: &str = "FLOWSTAGE_BENCH_ONE";

fn run_one(one: &str) {
    let (name, events) = one.split_once(':').unwrap_or((one, "2000000"));
    let events: u64 = events
        .parse()
        .expect("FLOWSTAGE_BENCH_ONE=contestant:events");
    let (_, run) = CONTESTANTS
        .iter()
        .find(|(known, _)| *known == name)
        .unwrap_or_else(|| panic!("no contestant {name}"));
    let (results, total) = summary(&run(events));
    println!("{name}: {events} events, {results} sums, total {total}");
}
