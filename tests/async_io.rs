//! Async integration: channel and polling sources, async sinks under backpressure.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstage::StageError;
use flowstage::flow::{Flow, Shuffle};
use flowstage::stage::{Consumer, ConsumerContext, Produced};

#[test]
fn a_bounded_channel_source_holds_its_senders_back() {
    // The flow is slow (1 ms per batch of at most 10); the channel holds 8. The sender
    // can never be more than the channel, the source's demand and one batch ahead.
    let (tx, rx) = tokio::sync::mpsc::channel::<u64>(8);
    let handled = Arc::new(AtomicU64::new(0));
    let ahead = Arc::new(AtomicU64::new(0));
    let (seen, max_ahead) = (handled.clone(), ahead.clone());
    let feeder = std::thread::spawn(move || {
        for i in 0..2_000u64 {
            tx.blocking_send(i).unwrap();
            let lead = (i + 1).saturating_sub(seen.load(Relaxed));
            max_ahead.fetch_max(lead, Relaxed);
        }
    });
    let count = handled.clone();
    let sum: u64 = Flow::from_channel(rx)
        .shuffle(Shuffle::shuffle().stages(1).max_demand(10))
        .map(move |x| {
            std::thread::sleep(Duration::from_micros(100));
            count.fetch_add(1, Relaxed);
            x
        })
        .collect::<Vec<u64>>()
        .unwrap()
        .into_iter()
        .sum();
    feeder.join().unwrap();
    assert_eq!(sum, (0..2_000).sum::<u64>());
    // Channel 8 + the source's demand from the shuffle stage (10) + what is in hand.
    assert!(
        ahead.load(Relaxed) <= 8 + 10 + 10 + 2,
        "the sender ran {} ahead",
        ahead.load(Relaxed)
    );
}

/// A queue that is mostly empty: a feeder puts items in now and then.
#[derive(Default)]
struct Queue {
    items: Mutex<VecDeque<u32>>,
    closed: AtomicBool,
    polls: AtomicU64,
}

#[test]
fn a_polled_often_empty_queue_neither_stalls_nor_spins() {
    let queue = Arc::new(Queue::default());
    let feeder_queue = queue.clone();
    let feeder = std::thread::spawn(move || {
        for burst in 0..5u32 {
            std::thread::sleep(Duration::from_millis(40));
            feeder_queue
                .items
                .lock()
                .unwrap()
                .extend(burst * 10..burst * 10 + 10);
        }
        feeder_queue.closed.store(true, Relaxed);
    });
    let polled = queue.clone();
    let started = Instant::now();
    let mut items: Vec<u32> = Flow::from_poll(
        move |demand| {
            polled.polls.fetch_add(1, Relaxed);
            // Read `closed` before draining: whatever came before it was set is taken.
            let closed = polled.closed.load(Relaxed);
            let mut items = polled.items.lock().unwrap();
            let take = demand.min(items.len());
            let taken: Vec<u32> = items.drain(..take).collect();
            if closed && items.is_empty() {
                Produced::Finished(taken)
            } else {
                Produced::Events(taken)
            }
        },
        Duration::from_millis(50),
    )
    .collect()
    .unwrap();
    feeder.join().unwrap();
    items.sort();
    assert_eq!(items, (0..50).collect::<Vec<_>>());
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    // ~250 ms of mostly nothing at one poll per 50 ms (the source's interval, not the
    // runtime's default of 10 ms): a handful of polls, not a busy loop.
    let polls = queue.polls.load(Relaxed);
    assert!(
        polls <= elapsed.as_millis() as u64 * 3 / 100 + 5,
        "{polls} polls in {elapsed:?}"
    );
}

/// A sink that takes 2 ms per batch (a remote write) and stops the run after 20.
struct SlowSink {
    batches: u64,
}

impl Consumer for SlowSink {
    type Item = u64;

    async fn handle_events(
        &mut self,
        _events: Vec<u64>,
        _context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.batches += 1;
        if self.batches == 20 {
            Err("enough".into())
        } else {
            Ok(())
        }
    }
}

#[test]
fn a_slow_async_sink_slows_an_endless_source() {
    let produced = Arc::new(AtomicU64::new(0));
    let counter = produced.clone();
    let endless = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Relaxed);
    });
    let error = Flow::from_iter(endless)
        .run_into(SlowSink { batches: 0 })
        .unwrap_err();
    assert!(error.to_string().contains("enough"), "{error}");
    // 20 batches of at most 500 (max 1000 − min 500), the sink's demand of 1000 and a
    // source batch or two: tens of thousands at most, where an unchecked source makes
    // millions in the 40 ms the sink took.
    let produced = produced.load(Relaxed);
    assert!(
        produced <= 20 * 500 + 1000 + 2 * 1000,
        "the source made {produced} events"
    );
}

#[test]
fn an_async_fn_sink_holds_an_endless_source_back() {
    let produced = Arc::new(AtomicU64::new(0));
    let counter = produced.clone();
    let endless = (0u64..).inspect(move |_| {
        counter.fetch_add(1, Relaxed);
    });
    let mut batches = 0u64;
    let error = Flow::from_iter(endless)
        .run_into(flowstage::sink::async_fn(move |_batch: Vec<u64>| {
            batches += 1;
            let stop = batches == 20;
            async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if stop {
                    Err(StageError::from("enough"))
                } else {
                    Ok(())
                }
            }
        }))
        .unwrap_err();
    assert!(error.to_string().contains("enough"), "{error}");
    let produced = produced.load(Relaxed);
    assert!(
        produced <= 20 * 500 + 1000 + 2 * 1000,
        "the source made {produced} events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn into_stream_and_run_into_async_on_the_callers_runtime() {
    use futures::StreamExt;
    let doubled: Vec<u64> = Flow::from_iter(0..100u64)
        .map(|x| x * 2)
        .into_stream()
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(doubled.iter().sum::<u64>(), 9900);
    let report = Flow::from_iter(0..10u64)
        .run_into_async(SlowSink { batches: 0 })
        .await
        .unwrap();
    assert_eq!(report.stages.last().unwrap().events_in, 10);
}
