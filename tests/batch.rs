//! `batch(size, timeout)`: batches by count or by time.

use std::time::Duration;

use flowstage::flow::{Batch, Flow, Shuffle};
use futures::StreamExt;
use proptest::prelude::*;

#[test]
fn full_batches_then_the_rest_at_the_end() {
    let batches: Vec<Batch<u32>> = Flow::from_iter(0..10u32)
        .batch(3, Duration::from_secs(60))
        .collect()
        .unwrap();
    assert_eq!(
        batches,
        [vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8], vec![9]]
    );
}

#[test]
fn a_quiet_source_closes_the_batch_on_time() {
    // Three events, a pause much longer than the timeout, one more: the first three
    // must leave as a batch of their own, before the fourth comes.
    let (tx, rx) = futures::channel::mpsc::unbounded::<u32>();
    let feeder = std::thread::spawn(move || {
        for i in 0..3 {
            tx.unbounded_send(i).unwrap();
        }
        std::thread::sleep(Duration::from_millis(400));
        tx.unbounded_send(3).unwrap();
    });
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    for batch in Flow::from_stream(rx).batch(100, Duration::from_millis(50)) {
        seen.push((batch.unwrap(), started.elapsed()));
    }
    feeder.join().unwrap();
    let batches: Vec<Batch<u32>> = seen.iter().map(|(b, _)| b.clone()).collect();
    assert_eq!(batches, [vec![0, 1, 2], vec![3]]);
    assert!(
        seen[0].1 < Duration::from_millis(350),
        "first batch came at {:?}",
        seen[0].1
    );
}

#[test]
fn an_endless_timeout_batches_by_count_only() {
    // The source pauses with a batch open: the batcher waits with no deadline.
    let (tx, rx) = futures::channel::mpsc::unbounded::<u32>();
    let feeder = std::thread::spawn(move || {
        for i in 0..3 {
            tx.unbounded_send(i).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
        tx.unbounded_send(3).unwrap();
        tx.unbounded_send(4).unwrap();
    });
    let batches: Vec<Batch<u32>> = Flow::from_stream(rx)
        .batch(2, Duration::MAX)
        .collect()
        .unwrap();
    feeder.join().unwrap();
    assert_eq!(batches, [vec![0, 1], vec![2, 3], vec![4]]);
}

#[test]
fn zero_size_is_a_config_error() {
    let error = Flow::from_iter(0..3u32)
        .batch(0, Duration::from_millis(1))
        .collect::<Vec<_>>()
        .unwrap_err();
    assert!(
        error.to_string().contains("batch: size must be at least 1"),
        "{error}"
    );
}

#[test]
fn operators_after_batch_see_whole_batches() {
    let sums: Vec<u64> = Flow::from_iters(vec![0..50u64, 50..100])
        .batch(10, Duration::from_secs(60))
        .map(|batch| batch.iter().sum::<u64>())
        .collect()
        .unwrap();
    assert_eq!(sums.len(), 10);
    assert_eq!(sums.iter().sum::<u64>(), 4950);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_of_batches_holds_the_source_back() {
    // An endless source; the reader takes a few batches slowly and stops. Were the
    // batcher not under backpressure, the source would run far ahead.
    let produced = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = produced.clone();
    let source = (0u64..).inspect(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let mut stream = Flow::from_iter(source)
        .batch(100, Duration::from_secs(60))
        .into_stream()
        .unwrap();
    for _ in 0..5 {
        let batch = stream.next().await.unwrap().unwrap();
        assert_eq!(batch.len(), 100);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time for an unchecked source to make millions of events.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = produced.load(std::sync::atomic::Ordering::Relaxed);
    drop(stream);
    // Bounded by demand: the reader's 1000 batches of 100 (demand counts batches), two
    // chunks in the channel, the feeder's and the source's demand of 1000 events each.
    let bound = 1000 * 100 + 2 * 1000 + 2 * 1000 + 1000;
    assert!(seen <= bound, "the source ran ahead: {seen} events");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Every event in exactly one batch, none larger than `size`; from one reader in
    /// order, every batch but the last is full.
    #[test]
    fn batches_partition_the_input(n in 0u32..3000, size in 1usize..300, readers in 1usize..4, stages in 1usize..3) {
        let batches: Vec<Batch<u32>> = Flow::from_iter(0..n)
            .batch(size, Duration::from_secs(60))
            .collect()
            .unwrap();
        prop_assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= size));
        let flat: Vec<u32> = batches.iter().flatten().copied().collect();
        prop_assert_eq!(flat, (0..n).collect::<Vec<_>>());
        if let Some((_, full)) = batches.split_last() {
            prop_assert!(full.iter().all(|b| b.len() == size));
        }

        let per_reader = n.div_ceil(readers as u32).max(1);
        let ranges: Vec<_> = (0..readers as u32).map(|r| (r * per_reader).min(n)..((r + 1) * per_reader).min(n)).collect();
        let mut all: Vec<u32> = Flow::from_iters(ranges)
            .shuffle(Shuffle::shuffle().stages(stages).max_demand(17))
            .batch(size, Duration::from_secs(60))
            .collect::<Vec<Batch<u32>>>()
            .unwrap()
            .into_iter()
            .inspect(|b| assert!(b.len() <= size))
            .flatten()
            .collect();
        all.sort();
        prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
    }
}
