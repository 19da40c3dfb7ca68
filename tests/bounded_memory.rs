//! Bounded memory, measured exactly: a counting global allocator tracks the live heap and
//! its peak while 10 M events flow from sources that make whatever they are asked for into
//! a slow consumer — straight, through a partition that sends every key to one stage, and
//! from two sources through a partition over two stages.
//!
//! The bound. Events are held only where the demand contract lets them be: on each
//! subscription at most its `max_demand` `M` in flight or queued at the consumer; in each
//! consuming stage one chunk being handled plus its output waiting for credit (≤ `M`
//! each); in each partitioning producer at most `(P + 1)·M` routed events waiting for a
//! partition's credit (a full queue stops the demand upstream); in each producer's buffer
//! at most `buffer_size` `Bf`. Each `Vec` holding them may be up to twice as large as its
//! contents. Emptied batches a stage keeps for its producers to refill hold room for at
//! most `2·M` per subscription. So, with `E` subscriptions, `S` consuming stages, `D`
//! partitioning producers, `B` producers and event size `s`:
//!
//! `peak − baseline ≤ F + 2·s·(E·M + 2·S·M + D·(P + 1)·M + B·Bf) + s·2·E·M`
//!
//! where `F` = 1 MiB covers what a run allocates whatever its input (tasks, channels,
//! metrics, the stage graph). The baseline is the live heap after a warm-up run of the
//! same shape, so the shared runtime and its lazy structures are already there. Without
//! backpressure the 10 M events (320 MB) would pile up in front of the slow consumer, two
//! orders of magnitude above the bound.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use common::guarded;
use flowstage::StageError;
use flowstage::flow::{Flow, Partition};
use flowstage::stage::{
    Consumer, ConsumerContext, DEFAULT_BUFFER_SIZE, DEFAULT_MAX_DEMAND, Produced, Producer,
};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = LIVE.fetch_add(bytes, SeqCst) + bytes;
    PEAK.fetch_max(now, SeqCst);
}

// SAFETY: every call is forwarded unchanged to `System`; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout, as `GlobalAlloc::alloc` requires.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            grew(layout.size());
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from this allocator with `layout`, per the caller.
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size(), SeqCst);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, SeqCst);
            }
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The tests of this binary measure the one process heap: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const EVENTS: u64 = 10_000_000;
const F: usize = 1 << 20;

/// A 32-byte event.
#[derive(Debug, Clone, Copy)]
struct Event {
    seq: u64,
    _payload: [u64; 3],
}

/// Makes exactly what it is asked for, up to `limit` events: it never waits, so only
/// demand keeps it from running ahead of the consumer.
struct Eager {
    next: u64,
    limit: u64,
}

impl Producer for Eager {
    type Item = Event;

    async fn handle_demand(&mut self, demand: usize) -> Result<Produced<Event>, StageError> {
        let end = (self.next + demand as u64).min(self.limit);
        let events = (self.next..end)
            .map(|seq| Event {
                seq,
                _payload: [seq; 3],
            })
            .collect();
        self.next = end;
        Ok(if end == self.limit {
            Produced::Finished(events)
        } else {
            Produced::Events(events)
        })
    }
}

/// Slow per batch: a 1 ms pause every 16 batches (a remote write, say), so the source
/// could run far ahead if demand let it.
struct Slow {
    batches: u64,
    received: Arc<AtomicU64>,
    checksum: Arc<AtomicU64>,
}

impl Consumer for Slow {
    type Item = Event;

    async fn handle_events(
        &mut self,
        events: Vec<Event>,
        _context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        self.batches += 1;
        if self.batches % 16 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.received.fetch_add(events.len() as u64, SeqCst);
        self.checksum
            .fetch_add(events.iter().map(|e| e.seq).sum::<u64>(), SeqCst);
        Ok(())
    }
}

/// The flows measured.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    /// source (+ map, fused) → sink.
    Straight,
    /// source → 2 partition stages, every event to the first (+ map) → sink.
    Skewed,
    /// 2 sources → 2 partition stages by key (+ map) → sink: every queue fills and
    /// flushes, batch after batch, and the stages hand their batches back.
    Balanced,
}

/// Runs `events` events through `shape` into a slow consumer; returns the peak of the
/// live heap above what was live when it started, and the number of stages the flow
/// compiled to.
fn peak_above_baseline(events: u64, shape: Shape) -> (usize, usize) {
    let received = Arc::new(AtomicU64::new(0));
    let checksum = Arc::new(AtomicU64::new(0));
    let sink = Slow {
        batches: 0,
        received: received.clone(),
        checksum: checksum.clone(),
    };
    let producers = if shape == Shape::Balanced {
        vec![
            Eager {
                next: 0,
                limit: events / 2,
            },
            Eager {
                next: events / 2,
                limit: events,
            },
        ]
    } else {
        vec![Eager {
            next: 0,
            limit: events,
        }]
    };
    let source = Flow::from_stages(producers);
    let baseline = LIVE.load(SeqCst);
    PEAK.store(baseline, SeqCst);
    let report = match shape {
        Shape::Straight => source.map(|e| e).run_into(sink),
        // Every event to partition 0 of 2: the other partition never has anything.
        Shape::Skewed => source
            .partition(Partition::by_hash(|_: &Event, _| Some(0)).stages(2))
            .map(|e| e)
            .run_into(sink),
        Shape::Balanced => source
            .partition(Partition::by_key(|e: &Event| e.seq).stages(2))
            .map(|e| e)
            .run_into(sink),
    }
    .expect("the run ends Ok");
    let peak = PEAK.load(SeqCst) - baseline;
    let stages = report.stages.len();
    drop(report);
    assert_eq!(received.load(SeqCst), events, "every event arrived");
    assert_eq!(checksum.load(SeqCst), events * (events - 1) / 2);
    (peak, stages)
}

/// The bound for `subscriptions`, `consuming_stages`, `producers` of which `partitioning`
/// partition over `partitions`.
fn bound(
    subscriptions: usize,
    consuming_stages: usize,
    producers: usize,
    partitioning: usize,
    partitions: usize,
) -> usize {
    let m = DEFAULT_MAX_DEMAND;
    let dispatchers = partitioning * (partitions + 1) * m;
    let events = subscriptions * m
        + 2 * consuming_stages * m
        + dispatchers
        + producers * DEFAULT_BUFFER_SIZE;
    let spares = 2 * subscriptions * m;
    F + std::mem::size_of::<Event>() * (2 * events + spares)
}

fn measure(shape: Shape, stages: usize, bound: usize) {
    // Warm up: the shared runtime, its timers and thread-locals come into being here.
    peak_above_baseline(10_000, shape);
    let (peak, compiled) = peak_above_baseline(EVENTS, shape);
    assert_eq!(compiled, stages, "the graph the bound was counted on");
    let unbounded = EVENTS as usize * std::mem::size_of::<Event>();
    eprintln!(
        "{shape:?}: peak live heap {peak} bytes above baseline over {EVENTS} events (bound \
         {bound}; all events at once would be {unbounded})"
    );
    let key = format!("bounded_memory.{shape:?}").to_lowercase();
    common::figure(&format!("{key}.peak"), common::kilobytes(peak as u64));
    common::figure(&format!("{key}.bound"), common::megabytes(bound as u64));
    common::figure(
        &format!("{key}.unbounded"),
        common::megabytes(unbounded as u64),
    );
    assert!(peak <= bound, "peak {peak} above the bound {bound}");
    assert!(bound * 50 < unbounded, "the bound must mean something");
}

#[test]
fn a_slow_consumer_keeps_the_heap_bounded() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    guarded(|| {
        // source (+ map, fused) → sink: 1 subscription, 1 consuming stage.
        measure(Shape::Straight, 2, bound(1, 1, 1, 0, 0));
    });
}

#[test]
fn a_skewed_partition_keeps_the_heap_bounded() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    guarded(|| {
        // source → 2 partition stages (+ map) → sink: 4 subscriptions, 3 consuming stages,
        // a partition dispatcher over 2.
        measure(Shape::Skewed, 4, bound(4, 3, 1, 1, 2));
    });
}

#[test]
fn a_balanced_partition_keeps_the_heap_bounded() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    guarded(|| {
        // 2 sources → 2 partition stages (+ map) → sink: 6 subscriptions, 3 consuming
        // stages, 2 partition dispatchers over 2.
        measure(Shape::Balanced, 5, bound(6, 3, 2, 2, 2));
    });
}
