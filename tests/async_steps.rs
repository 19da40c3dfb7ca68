//! Async and blocking steps: `map_async`, `flat_map_async`, `try_map_async`,
//! `map_blocking`, and the blocking sink (`sink::blocking`).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowstage::flow::{DeadLetter, ErrorPolicy, Flow, Rejected};
use flowstage::{FlowError, sink};
use proptest::prelude::*;

/// A simulated service: `delay` yields (a different completion order per call) or, for
/// `delay` over 40, a millisecond's sleep; counts calls in flight and their maximum.
#[derive(Default)]
struct Service {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    calls: AtomicU64,
}

impl Service {
    async fn call<T>(&self, value: T, delay: u8) -> T {
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.max_in_flight.fetch_max(now, SeqCst);
        self.calls.fetch_add(1, SeqCst);
        if delay > 40 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            for _ in 0..delay {
                tokio::task::yield_now().await;
            }
        }
        self.in_flight.fetch_sub(1, SeqCst);
        value
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Every event comes out exactly once, with each source's events in their order
    /// when the step is ordered; calls in flight never exceed the concurrency of the
    /// stages (one per source).
    #[test]
    fn map_async_is_exactly_once_in_order_and_bounded(
        sources in prop::collection::vec(prop::collection::vec(0u8..44, 0..120), 1..4),
        concurrency in 1usize..=64,
        ordered in any::<bool>(),
    ) {
        let service = Arc::new(Service::default());
        let calls = service.clone();
        let input: Vec<Vec<(usize, usize, u8)>> = sources
            .iter()
            .enumerate()
            .map(|(source, delays)| delays.iter().enumerate().map(|(i, d)| (source, i, *d)).collect())
            .collect();
        let flow = Flow::from_iters(input.clone()).map_async(concurrency, move |event: (usize, usize, u8)| {
            let service = calls.clone();
            async move { service.call(event, event.2).await }
        });
        let out: Vec<(usize, usize, u8)> =
            if ordered { flow.collect().unwrap() } else { flow.unordered().collect().unwrap() };
        let total: usize = sources.iter().map(Vec::len).sum();
        prop_assert_eq!(out.len(), total);
        prop_assert_eq!(service.calls.load(SeqCst) as usize, total);
        // Exactly once: the multiset of outputs is the input's.
        let mut sorted = out.clone();
        sorted.sort();
        let mut expected: Vec<_> = input.iter().flatten().copied().collect();
        expected.sort();
        prop_assert_eq!(sorted, expected);
        if ordered {
            for (source, events) in input.iter().enumerate() {
                let seen: Vec<_> = out.iter().filter(|e| e.0 == source).copied().collect();
                prop_assert_eq!(&seen, events);
            }
        }
        prop_assert!(service.max_in_flight.load(SeqCst) <= concurrency * sources.len());
    }
}

#[test]
fn calls_in_flight_reach_the_concurrency_and_never_pass_it() {
    for concurrency in [1, 3, 8, 64] {
        let service = Arc::new(Service::default());
        let calls = service.clone();
        let out: Vec<u32> = Flow::from_iter(0..300u32)
            .map_async(concurrency, move |n| {
                let service = calls.clone();
                async move { service.call(n, 41).await }
            })
            .collect()
            .unwrap();
        assert_eq!(out, (0..300).collect::<Vec<_>>());
        // One stage (one source): up to `concurrency` calls at once, and no more.
        assert_eq!(service.max_in_flight.load(SeqCst), concurrency);
    }
}

#[test]
fn a_slow_service_slows_the_source() {
    // The source counts what it has emitted; each call checks how far ahead that is of
    // the calls completed: at most, per step stage, the step's input demand (twice the
    // concurrency) plus what is in flight; the step has a stage per source stage. Without
    // backpressure the source would emit all 2 000 at once.
    let concurrency = 4;
    for stages in 1..=3 {
        let emitted = Arc::new(AtomicUsize::new(0));
        let completed = Arc::new(AtomicUsize::new(0));
        let worst = Arc::new(AtomicUsize::new(0));
        let (counted, done, ahead) = (emitted.clone(), completed.clone(), worst.clone());
        let n = Flow::from_iter(0..2_000u32)
            .stages(stages)
            .inspect(move |_| {
                counted.fetch_add(1, SeqCst);
            })
            .map_async(concurrency, move |x| {
                let lead = emitted.load(SeqCst) - completed.load(SeqCst);
                ahead.fetch_max(lead, SeqCst);
                let done = completed.clone();
                async move {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    done.fetch_add(1, SeqCst);
                    x
                }
            })
            .collect::<Vec<u32>>()
            .unwrap()
            .len();
        assert_eq!(n, 2_000);
        assert_eq!(done.load(SeqCst), 2_000);
        let worst = worst.load(SeqCst);
        assert!(
            worst <= stages * 3 * concurrency,
            "{stages} stages: the source ran {worst} events ahead of the service"
        );
    }
}

#[test]
fn operators_after_the_step_are_fused_into_its_stage() {
    let explain = Flow::from_iters(vec![0..10u32, 10..20])
        .map_async(2, |x| async move { x * 2 })
        .filter(|x| x % 3 == 0)
        .explain()
        .unwrap()
        .to_string();
    assert!(explain.contains("map_async[0]"), "{explain}");
    assert!(explain.contains("map_async[1]"), "{explain}");
    assert!(explain.contains("filter"), "{explain}");
    let mut out: Vec<u32> = Flow::from_iters(vec![0..10u32, 10..20])
        .map_async(2, |x| async move { x * 2 })
        .filter(|x| x % 3 == 0)
        .collect()
        .unwrap();
    out.sort();
    assert_eq!(
        out,
        (0..20)
            .map(|x| x * 2)
            .filter(|x| x % 3 == 0)
            .collect::<Vec<_>>()
    );
}

#[test]
fn flat_map_async_flattens_in_order() {
    let out: Vec<u32> = Flow::from_iter(0..50u32)
        .flat_map_async(5, |n| async move {
            tokio::time::sleep(Duration::from_micros(u64::from(50 - n) * 10)).await;
            vec![n; (n % 3) as usize]
        })
        .collect()
        .unwrap();
    let expected: Vec<u32> = (0..50).flat_map(|n| vec![n; (n % 3) as usize]).collect();
    assert_eq!(out, expected);
}

type Letters = Arc<Mutex<Vec<DeadLetter<(usize, String)>>>>;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// `try_map_async` with a dead-letter consumer: every event is in the output or a
    /// dead letter (given back whole, with its error), exactly once.
    #[test]
    fn try_map_async_dead_letters_partition_the_input(
        input in prop::collection::vec(prop_oneof![3 => (0u64..1000).prop_map(|n| n.to_string()), 1 => "[a-z]{1,3}"], 0..300),
        concurrency in 1usize..=64,
    ) {
        let letters: Letters = Arc::default();
        let into = letters.clone();
        let indexed: Vec<(usize, String)> = input.iter().cloned().enumerate().collect();
        let mut ok: Vec<(usize, u64)> = Flow::from_iter(indexed)
            .try_map_async(concurrency, |(i, s): (usize, String)| async move {
                tokio::task::yield_now().await;
                match s.parse::<u64>() {
                    Ok(n) => Ok((i, n)),
                    Err(e) => Err(Rejected::new((i, s), e)),
                }
            })
            .unordered()
            .on_error(ErrorPolicy::dead_letter_fn(move |batch| { into.lock().unwrap().extend(batch); Ok(()) }))
            .collect()
            .unwrap();
        ok.sort();
        let expected_ok: Vec<(usize, u64)> = input.iter().enumerate().filter_map(|(i, s)| s.parse().ok().map(|n| (i, n))).collect();
        prop_assert_eq!(ok, expected_ok);
        let mut bad: Vec<(usize, String)> = letters.lock().unwrap().iter().map(|l| l.event.clone()).collect();
        bad.sort();
        let expected_bad: Vec<(usize, String)> = input.iter().cloned().enumerate().filter(|(_, s)| s.parse::<u64>().is_err()).collect();
        prop_assert_eq!(bad, expected_bad);
        for letter in letters.lock().unwrap().iter() {
            prop_assert_eq!(letter.operator, "try_map_async");
        }
    }
}

#[test]
fn try_map_async_fails_the_run_by_default() {
    let error = Flow::from_iter(0..100u32)
        .try_map_async(4, |n| async move {
            if n == 42 { Err((n, "no 42")) } else { Ok(n) }
        })
        .collect::<Vec<u32>>()
        .unwrap_err();
    let FlowError::StageFailed { stage, message, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(stage.name, "try_map_async[0]");
    assert!(message.contains("try_map_async: no 42"), "{message}");
}

#[test]
fn a_panicking_future_ends_the_run_naming_the_step() {
    let error = Flow::from_iter(0..10u32)
        .map_async(2, |n| async move {
            assert!(n != 7, "boom at 7");
            n
        })
        .collect::<Vec<u32>>()
        .unwrap_err();
    let FlowError::StagePanicked { stage, message } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(stage.name, "map_async[0]");
    assert!(message.contains("boom at 7"), "{message}");
}

#[test]
fn zero_concurrency_is_a_config_error() {
    let error = Flow::from_iter(0..3u32)
        .map_async(0, |n| async move { n })
        .collect::<Vec<u32>>()
        .unwrap_err();
    assert!(matches!(error, FlowError::Config(_)), "{error:?}");
}

#[test]
fn map_blocking_runs_off_the_stage_threads() {
    let stage_threads = Arc::new(Mutex::new(HashSet::new()));
    let blocking_threads = Arc::new(Mutex::new(HashSet::new()));
    let (on_stage, off_stage) = (stage_threads.clone(), blocking_threads.clone());
    let mut out: Vec<u64> = Flow::from_iters(vec![0..500u64, 500..1000])
        .inspect(move |_| {
            on_stage.lock().unwrap().insert(std::thread::current().id());
        })
        .map_blocking(move |n| {
            off_stage
                .lock()
                .unwrap()
                .insert(std::thread::current().id());
            n * 3
        })
        .collect()
        .unwrap();
    out.sort();
    assert_eq!(out, (0..1000).map(|n| n * 3).collect::<Vec<_>>());
    let (stage, blocking) = (
        stage_threads.lock().unwrap(),
        blocking_threads.lock().unwrap(),
    );
    assert!(!blocking.is_empty());
    assert!(stage.is_disjoint(&blocking), "{stage:?} {blocking:?}");
}

/// Rows into SQLite through a blocking sink that owns the connection (`Send`, not
/// `Sync`): no mutex, one transaction per batch, a commit at the end.
#[test]
fn a_blocking_sink_owns_a_sqlite_connection() {
    let connection = rusqlite::Connection::open_in_memory().unwrap();
    connection
        .execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let batches = Arc::new(AtomicUsize::new(0));
    let counted = batches.clone();
    let writer = sink::blocking_batches(
        connection,
        move |db: &mut rusqlite::Connection, rows: Vec<(u32, u32)>| {
            counted.fetch_add(1, SeqCst);
            let transaction = db.transaction()?;
            for (k, v) in rows {
                transaction.execute("INSERT INTO t VALUES (?1, ?2)", (k, v))?;
            }
            transaction.commit()?;
            Ok(())
        },
    )
    .on_done(move |db| tx.send(db).map_err(|_| "the test is gone".into()));
    Flow::from_iters(vec![0..700u32, 700..1000])
        .map(|k| (k, k * k))
        .batch(128, Duration::from_secs(5))
        .run_into(writer)
        .unwrap();
    let db = rx.recv().unwrap();
    let rows: BTreeMap<u32, u32> = db
        .prepare("SELECT k, v FROM t")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows, (0..1000).map(|k| (k, k * k)).collect());
    // 1000 rows in batches of at most 128: at least 8 transactions.
    assert!(batches.load(SeqCst) >= 8);
}

#[test]
fn a_blocking_sink_error_or_panic_ends_the_run() {
    let error = Flow::from_iter(0..10u32)
        .run_into(sink::blocking((), |_: &mut (), batch: Vec<u32>| {
            if batch.contains(&5) {
                Err("disk full".into())
            } else {
                Ok(())
            }
        }))
        .unwrap_err();
    assert!(error.to_string().contains("disk full"), "{error}");
    assert_eq!(error.stage().map(|s| s.name.as_str()), Some("sink"));

    let done = Arc::new(AtomicBool::new(false));
    let seen = done.clone();
    let error = Flow::from_iter(0..10u32)
        .run_into(
            sink::blocking((), |_: &mut (), _batch: Vec<u32>| {
                panic!("the driver crashed")
            })
            .on_done(move |()| {
                seen.store(true, SeqCst);
                Ok(())
            }),
        )
        .unwrap_err();
    assert!(error.to_string().contains("the driver crashed"), "{error}");
    assert!(!done.load(SeqCst), "on_done ran after a failure");
}
