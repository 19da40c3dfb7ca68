//! The supervisor of concurrent workers (ConsumerSupervisor's role): the concurrency bound,
//! also across restarts, the three restart policies, restart intensity, exactly-once.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowstage::stage::{
    ConsumerOptions, Pipeline, Report, Restart, SubscribeOptions, Supervisor, SupervisorCounters,
    SupervisorOptions, from_iter,
};
use flowstage::{FlowError, StageError, StageKind};

/// A run that takes longer than this is a hang, and fails the test.
const WATCHDOG: Duration = Duration::from_secs(30);

/// Workers running right now, and the most ever seen at once.
#[derive(Debug, Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

/// One worker in flight; leaving (also by unwinding) decrements the gauge.
struct InFlight(Arc<Gauge>);

impl Gauge {
    fn enter(self: &Arc<Self>) -> InFlight {
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.max.fetch_max(now, SeqCst);
        InFlight(self.clone())
    }

    fn max(&self) -> usize {
        self.max.load(SeqCst)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, SeqCst);
    }
}

/// Per-event counters: how often a worker was started, and how often it succeeded.
#[derive(Debug)]
struct Ledger {
    attempts: Vec<AtomicU32>,
    successes: Vec<AtomicU32>,
}

impl Ledger {
    fn new(events: usize) -> Arc<Self> {
        Arc::new(Ledger {
            attempts: (0..events).map(|_| AtomicU32::new(0)).collect(),
            successes: (0..events).map(|_| AtomicU32::new(0)).collect(),
        })
    }

    /// Counts an attempt and returns its number (1 for the first try).
    fn attempt(&self, event: u64) -> u32 {
        self.attempts[event as usize].fetch_add(1, SeqCst) + 1
    }

    fn succeed(&self, event: u64) {
        self.successes[event as usize].fetch_add(1, SeqCst);
    }

    fn attempts(&self, event: usize) -> u32 {
        self.attempts[event].load(SeqCst)
    }

    fn successes(&self, event: usize) -> u32 {
        self.successes[event].load(SeqCst)
    }
}

/// Runs `0..events` from `producers` producers (interleaved) into one supervisor named
/// `workers`, under a watchdog; `demand` overrides `(max_demand, min_demand)` of
/// [`Supervisor::subscribe_options`].
async fn run<F, Fut>(
    events: u64,
    producers: u64,
    options: SupervisorOptions,
    demand: Option<(usize, usize)>,
    worker: F,
) -> (Result<Report, FlowError>, Arc<SupervisorCounters>)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), StageError>> + Send + 'static,
{
    let supervisor = Supervisor::new(options, worker);
    let counters = supervisor.counters();
    let mut pipeline = Pipeline::new();
    let mut sources = Vec::new();
    for p in 0..producers {
        sources.push(pipeline.producer(from_iter((p..events).step_by(producers as usize))));
    }
    let subscriptions: Vec<SubscribeOptions<u64>> = sources
        .iter()
        .map(|_| match demand {
            Some((max, min)) => SubscribeOptions::new().max_demand(max).min_demand(min),
            None => supervisor.subscribe_options(),
        })
        .collect();
    let workers = pipeline.consumer_with(supervisor, ConsumerOptions::new().name("workers"));
    for (source, options) in sources.iter().zip(subscriptions) {
        pipeline.subscribe(&workers, source, options).unwrap();
    }
    let result = tokio::time::timeout(WATCHDOG, pipeline.run_async())
        .await
        .expect("the run hung (watchdog)");
    (result, counters)
}

/// A short pause inside a worker, so that workers overlap.
async fn work() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_never_exceeds_max_and_reaches_it() {
    let gauge = Arc::new(Gauge::default());
    let ledger = Ledger::new(200);
    let (g, l) = (gauge.clone(), ledger.clone());
    let (result, counters) = run(200, 1, SupervisorOptions::new(4), None, move |n| {
        let (g, l) = (g.clone(), l.clone());
        async move {
            let _in_flight = g.enter();
            l.attempt(n);
            work().await;
            l.succeed(n);
            Ok(())
        }
    })
    .await;
    result.unwrap();
    assert_eq!(gauge.max(), 4, "sleeping workers should fill all 4 slots");
    for n in 0..200 {
        assert_eq!(
            (ledger.attempts(n), ledger.successes(n)),
            (1, 1),
            "event {n}"
        );
    }
    assert_eq!(counters.failures(), 0);
    assert_eq!(counters.restarts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bound_does_not_depend_on_demand() {
    // Demand far beyond the concurrency: the supervisor still runs at most `max` workers.
    let gauge = Arc::new(Gauge::default());
    let g = gauge.clone();
    let (result, _) = run(
        200,
        2,
        SupervisorOptions::new(3),
        Some((100, 10)),
        move |_| {
            let g = g.clone();
            async move {
                let _in_flight = g.enter();
                work().await;
                Ok(())
            }
        },
    )
    .await;
    result.unwrap();
    assert_eq!(gauge.max(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bound_holds_across_restarts() {
    // Every third event panics on its first try, after entering the gauge; a restart must
    // not add a worker while the failed one's slot is free again.
    let gauge = Arc::new(Gauge::default());
    let ledger = Ledger::new(200);
    let (g, l) = (gauge.clone(), ledger.clone());
    let options = SupervisorOptions::new(4)
        .restart(Restart::Permanent)
        .max_restarts(1000, Duration::from_secs(60));
    let (result, counters) = run(200, 1, options, None, move |n| {
        let (g, l) = (g.clone(), l.clone());
        async move {
            let _in_flight = g.enter();
            let attempt = l.attempt(n);
            work().await;
            if n % 3 == 0 && attempt == 1 {
                panic!("event {n} fails on its first try");
            }
            l.succeed(n);
            Ok(())
        }
    })
    .await;
    result.unwrap();
    assert!(gauge.max() <= 4, "{} workers at once", gauge.max());
    let failing = (0..200).filter(|n| n % 3 == 0).count() as u64;
    assert_eq!(counters.failures(), failing);
    assert_eq!(counters.restarts(), failing);
    assert_eq!(counters.given_up(), 0);
    for n in 0..200usize {
        let expected_attempts = if n % 3 == 0 { 2 } else { 1 };
        assert_eq!(ledger.attempts(n), expected_attempts, "event {n}");
        assert_eq!(ledger.successes(n), 1, "event {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bound_holds_with_many_restarts_of_one_event() {
    // Max 2; some events fail five times in a row (Err and panic alternating).
    let gauge = Arc::new(Gauge::default());
    let ledger = Ledger::new(60);
    let (g, l) = (gauge.clone(), ledger.clone());
    let options = SupervisorOptions::new(2)
        .restart(Restart::Permanent)
        .max_restarts(10_000, Duration::from_secs(60));
    let (result, counters) = run(60, 3, options, None, move |n| {
        let (g, l) = (g.clone(), l.clone());
        async move {
            let _in_flight = g.enter();
            let attempt = l.attempt(n);
            tokio::task::yield_now().await;
            if n % 7 == 0 && attempt <= 5 {
                if attempt % 2 == 0 {
                    panic!("event {n}, attempt {attempt}");
                }
                return Err(format!("event {n}, attempt {attempt}").into());
            }
            l.succeed(n);
            Ok(())
        }
    })
    .await;
    result.unwrap();
    assert!(gauge.max() <= 2, "{} workers at once", gauge.max());
    let failing = (0..60).filter(|n| n % 7 == 0).count() as u64;
    assert_eq!(counters.restarts(), 5 * failing);
    for n in 0..60usize {
        assert_eq!(ledger.successes(n), 1, "event {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_retries_an_err_until_success() {
    let ledger = Ledger::new(50);
    let l = ledger.clone();
    let options = SupervisorOptions::new(4)
        .restart(Restart::Permanent)
        .max_restarts(1000, Duration::from_secs(60));
    // Event n fails with `Err` on its first `n % 4` tries.
    let (result, counters) = run(50, 1, options, None, move |n| {
        let l = l.clone();
        async move {
            let attempt = l.attempt(n);
            if u64::from(attempt) <= n % 4 {
                return Err(format!("event {n} not yet").into());
            }
            l.succeed(n);
            Ok(())
        }
    })
    .await;
    result.unwrap();
    let failures: u64 = (0..50u64).map(|n| n % 4).sum();
    assert_eq!(counters.failures(), failures);
    assert_eq!(counters.restarts(), failures);
    assert_eq!(counters.given_up(), 0);
    for n in 0..50usize {
        assert_eq!(ledger.attempts(n), n as u32 % 4 + 1, "event {n}");
        assert_eq!(ledger.successes(n), 1, "event {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_restarts_a_panic_but_not_an_err() {
    let ledger = Ledger::new(60);
    let l = ledger.clone();
    let options = SupervisorOptions::new(3)
        .restart(Restart::Transient)
        .max_restarts(1000, Duration::from_secs(60));
    // n % 3 == 1 panics on the first try; n % 3 == 2 returns Err on the first try.
    let (result, counters) = run(60, 1, options, None, move |n| {
        let l = l.clone();
        async move {
            let attempt = l.attempt(n);
            if attempt == 1 && n % 3 == 1 {
                panic!("event {n} panics");
            }
            if attempt == 1 && n % 3 == 2 {
                return Err(format!("event {n} fails").into());
            }
            l.succeed(n);
            Ok(())
        }
    })
    .await;
    result.unwrap();
    assert_eq!(counters.failures(), 40);
    assert_eq!(counters.restarts(), 20, "only the panics are restarted");
    assert_eq!(counters.given_up(), 20, "the errors are given up");
    for n in 0..60usize {
        let (attempts, successes) = match n % 3 {
            0 => (1, 1),
            1 => (2, 1),
            _ => (1, 0),
        };
        assert_eq!(ledger.attempts(n), attempts, "event {n}");
        assert_eq!(ledger.successes(n), successes, "event {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_never_restarts() {
    let ledger = Ledger::new(60);
    let l = ledger.clone();
    let options = SupervisorOptions::new(3).restart(Restart::Temporary);
    let (result, counters) = run(60, 1, options, None, move |n| {
        let l = l.clone();
        async move {
            l.attempt(n);
            match n % 3 {
                1 => panic!("event {n} panics"),
                2 => Err(format!("event {n} fails").into()),
                _ => {
                    l.succeed(n);
                    Ok(())
                }
            }
        }
    })
    .await;
    result.unwrap();
    assert_eq!(counters.failures(), 40);
    assert_eq!(counters.restarts(), 0);
    assert_eq!(counters.given_up(), 40);
    for n in 0..60usize {
        assert_eq!(ledger.attempts(n), 1, "event {n}");
        assert_eq!(ledger.successes(n), u32::from(n % 3 == 0), "event {n}");
    }
}

/// Checks that `result` failed with `StageFailed` naming the supervisor stage.
fn assert_supervisor_failed(result: Result<Report, FlowError>) {
    match result {
        Err(FlowError::StageFailed { stage, message, .. }) => {
            assert_eq!(stage.name, "workers");
            assert_eq!(stage.kind, StageKind::Consumer);
            assert_eq!(stage.index, 1);
            assert!(message.contains("max_restarts"), "message: {message}");
        }
        other => panic!("expected StageFailed of the supervisor, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supervisor_of_zero_workers_is_an_error_not_a_hang() {
    // Its own subscribe options ask for max_demand 0: a config error at subscribe.
    let supervisor = Supervisor::new(SupervisorOptions::new(0), |_: u64| async { Ok(()) });
    let mut pipeline = Pipeline::new();
    let numbers = pipeline.producer(from_iter(0..10u64));
    let subscribe = supervisor.subscribe_options();
    let workers = pipeline.consumer(supervisor);
    assert!(matches!(
        pipeline.subscribe(&workers, &numbers, subscribe),
        Err(FlowError::Config(_))
    ));
    // Subscribed with demand of its own, it fails the run naming the stage, instead of
    // waiting for a worker slot forever.
    let (result, counters) = run(10, 1, SupervisorOptions::new(0), Some((4, 2)), |_| async {
        Ok(())
    })
    .await;
    match result {
        Err(FlowError::StageFailed { stage, message, .. }) => {
            assert_eq!(stage.name, "workers");
            assert!(message.contains("at least 1"), "message: {message}");
        }
        other => panic!("expected StageFailed of the supervisor, got {other:?}"),
    }
    assert_eq!(counters.failures(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_restarts_fail_the_run() {
    // Permanent, and a worker that always errs: the 4th failure within the window is one
    // more than 3 restarts allow.
    let options = SupervisorOptions::new(2)
        .restart(Restart::Permanent)
        .max_restarts(3, Duration::from_secs(60));
    let attempts = Arc::new(AtomicU32::new(0));
    let a = attempts.clone();
    let (result, counters) = run(10, 1, options, None, move |n| {
        let a = a.clone();
        async move {
            a.fetch_add(1, SeqCst);
            if n == 5 {
                Err("event 5 always fails".into())
            } else {
                Ok(())
            }
        }
    })
    .await;
    assert_supervisor_failed(result);
    assert_eq!(counters.restarts(), 3);
    assert_eq!(counters.failures(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_restarts_of_panics_fail_the_run() {
    // Transient restarts panics; restarts of different events add up in one window.
    let options = SupervisorOptions::new(4)
        .restart(Restart::Transient)
        .max_restarts(5, Duration::from_secs(60));
    let (result, counters) = run(100, 1, options, None, move |n| async move {
        if n % 10 == 0 {
            panic!("event {n} always panics");
        }
        Ok(())
    })
    .await;
    assert_supervisor_failed(result);
    assert_eq!(counters.restarts(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_outside_the_window_do_not_add_up() {
    // One worker at a time; each event fails once and then takes 30 ms, so two failures are
    // never within the 10 ms window: 1 restart allowed, 8 happen, the run succeeds.
    let ledger = Ledger::new(8);
    let l = ledger.clone();
    let options = SupervisorOptions::new(1)
        .restart(Restart::Permanent)
        .max_restarts(1, Duration::from_millis(10));
    let (result, counters) = run(8, 1, options, None, move |n| {
        let l = l.clone();
        async move {
            if l.attempt(n) == 1 {
                return Err("first try".into());
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
            l.succeed(n);
            Ok(())
        }
    })
    .await;
    result.unwrap();
    assert_eq!(counters.restarts(), 8);
    for n in 0..8 {
        assert_eq!(ledger.successes(n), 1, "event {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_panics_before_its_future_is_restarted() {
    // The worker function itself panics (before it returns a future): still a worker
    // failure under the restart policy, not a crash of the supervisor.
    let ledger = Ledger::new(20);
    let l = ledger.clone();
    let options = SupervisorOptions::new(2)
        .restart(Restart::Permanent)
        .max_restarts(100, Duration::from_secs(60));
    let (result, counters) = run(20, 1, options, None, move |n| {
        let attempt = l.attempt(n);
        if n % 5 == 0 && attempt == 1 {
            panic!("event {n} panics in the worker function");
        }
        let l = l.clone();
        async move {
            l.succeed(n);
            Ok(())
        }
    })
    .await;
    result.unwrap();
    assert_eq!(counters.restarts(), 4);
    for n in 0..20 {
        assert_eq!(ledger.successes(n), 1, "event {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_handled_exactly_once() {
    for (max, producers, events) in [(1, 1, 300), (3, 2, 1000), (16, 4, 5000), (64, 3, 5000)] {
        let gauge = Arc::new(Gauge::default());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (g, s) = (gauge.clone(), seen.clone());
        let (result, counters) = run(events, producers, SupervisorOptions::new(max), None, {
            move |n| {
                let (g, s) = (g.clone(), s.clone());
                async move {
                    let _in_flight = g.enter();
                    if n % 2 == 0 {
                        tokio::task::yield_now().await;
                    }
                    s.lock().unwrap().push(n);
                    Ok(())
                }
            }
        })
        .await;
        let report = result.unwrap();
        let mut seen = std::mem::take(&mut *seen.lock().unwrap());
        seen.sort_unstable();
        assert_eq!(seen, (0..events).collect::<Vec<_>>(), "max {max}");
        assert!(gauge.max() <= max, "max {max}: {} at once", gauge.max());
        assert_eq!(counters.failures(), 0);
        let consumer = report.stages.last().unwrap();
        assert_eq!(consumer.events_in, events);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_worker_failure_ends_the_run_while_the_source_is_idle() {
    // One event, then a producer that stays open with nothing to give: the supervisor gets
    // no more events, so only its own failure signal can end the run.
    let options = SupervisorOptions::new(2)
        .restart(Restart::Permanent)
        .max_restarts(2, Duration::from_secs(60));
    let supervisor = Supervisor::new(options, |_n: u64| async {
        Err::<(), StageError>("always fails".into())
    });
    let subscribe = supervisor.subscribe_options();
    let mut pipeline = Pipeline::new();
    let mut sent = false;
    let source = pipeline.producer(flowstage::stage::poll_fn(move |_demand: usize| {
        if sent {
            flowstage::stage::Produced::Events(Vec::new())
        } else {
            sent = true;
            flowstage::stage::Produced::Events(vec![1u64])
        }
    }));
    let workers = pipeline.consumer_with(supervisor, ConsumerOptions::new().name("workers"));
    pipeline.subscribe(&workers, &source, subscribe).unwrap();
    let result = tokio::time::timeout(WATCHDOG, pipeline.run_async())
        .await
        .expect("watchdog: the run did not end on the worker's failure");
    assert_supervisor_failed(result);
}
