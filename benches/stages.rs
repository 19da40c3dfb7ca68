//! Throughput of a three-stage pipeline (producer -> identity -> sum) on flowstage, against
//! the same pipeline hand-written with three threads and bounded crossbeam channels.
//!
//! `cargo bench --bench stages`
//!
//! Both move `u64` counters in batches of 500 with about 1000 events in flight per boundary:
//! flowstage through its default demand (max 1000, min 500: the consumers handle chunks of
//! 500 and re-ask 500 at a time), the baseline through `bounded(2)` channels of 500-event
//! `Vec`s. Both check the sum, so neither can skip work. Each iteration is one whole run,
//! start-up (runtime or threads) included.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowstage::stage::{
    Pipeline, Produced, SubscribeOptions, consumer_fn, poll_fn, producer_consumer_fn,
};

/// Events per run.
const EVENTS: u64 = 10_000_000;
/// Baseline batch size: what flowstage's consumers get per chunk under default demand.
const BATCH: usize = 500;
/// Baseline channel capacity in batches: 2 x 500 = flowstage's `max_demand` of 1000.
const CAPACITY: usize = 2;

/// 0 + 1 + ... + (EVENTS - 1).
const EXPECTED: u64 = EVENTS * (EVENTS - 1) / 2;

fn flowstage_run(events: u64) -> u64 {
    let total = Arc::new(AtomicU64::new(0));
    let sink = total.clone();

    let mut pipeline = Pipeline::new();
    let mut next = 0u64;
    // Answers each demand with exactly `demand` counters (fewer at the end).
    let source = pipeline.producer(poll_fn(move |demand: usize| {
        let end = (next + demand as u64).min(events);
        let batch: Vec<u64> = (next..end).collect();
        next = end;
        if next == events {
            Produced::Finished(batch)
        } else {
            Produced::Events(batch)
        }
    }));
    let (identity_in, identity_out) =
        pipeline.producer_consumer(producer_consumer_fn(|batch: Vec<u64>| batch));
    let mut sum = 0u64;
    let adder = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
        sum += batch.iter().sum::<u64>();
        // The running total, published once per batch (one relaxed store).
        sink.store(sum, Ordering::Relaxed);
    }));
    pipeline
        .subscribe(&identity_in, &source, SubscribeOptions::new())
        .expect("subscribe identity");
    pipeline
        .subscribe(&adder, &identity_out, SubscribeOptions::new())
        .expect("subscribe adder");
    pipeline.run().expect("flowstage run");
    total.load(Ordering::Relaxed)
}

fn channels_run(events: u64) -> u64 {
    let (to_middle, middle_rx) = crossbeam_channel::bounded::<Vec<u64>>(CAPACITY);
    let (to_sink, sink_rx) = crossbeam_channel::bounded::<Vec<u64>>(CAPACITY);

    let producer = thread::spawn(move || {
        let mut next = 0u64;
        while next < events {
            let end = (next + BATCH as u64).min(events);
            let batch: Vec<u64> = (next..end).collect();
            next = end;
            if to_middle.send(batch).is_err() {
                break;
            }
        }
    });
    let middle = thread::spawn(move || {
        for batch in middle_rx {
            // Identity, as flowstage's producer-consumer.
            if to_sink.send(batch).is_err() {
                break;
            }
        }
    });
    let consumer = thread::spawn(move || {
        let mut sum = 0u64;
        for batch in sink_rx {
            sum += batch.iter().sum::<u64>();
        }
        sum
    });
    producer.join().expect("producer thread");
    middle.join().expect("middle thread");
    consumer.join().expect("consumer thread")
}

fn stage_throughput(c: &mut Criterion) {
    // Sanity: both pipelines compute the right sum before anything is timed.
    assert_eq!(flowstage_run(10_000), 10_000 * 9_999 / 2);
    assert_eq!(channels_run(10_000), 10_000 * 9_999 / 2);

    let mut group = c.benchmark_group("stage_throughput");
    group
        .throughput(Throughput::Elements(EVENTS))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(15));
    group.bench_function("flowstage", |b| {
        b.iter(|| {
            let sum = flowstage_run(black_box(EVENTS));
            assert_eq!(black_box(sum), EXPECTED);
        });
    });
    group.bench_function("crossbeam_threads", |b| {
        b.iter(|| {
            let sum = channels_run(black_box(EVENTS));
            assert_eq!(black_box(sum), EXPECTED);
        });
    });
    group.finish();
}

criterion_group!(benches, stage_throughput);
criterion_main!(benches);
