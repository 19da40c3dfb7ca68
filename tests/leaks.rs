//! No leaks: after every run — success, error, or the output dropped early — the
//! process's threads (`Threads:` in `/proc/self/status`), its open files (entries of
//! `/proc/self/fd`) and the live tasks of the runtime the run used (tokio's
//! `RuntimeMetrics::num_alive_tasks`: flowstage's shared runtime, read with
//! [`flowstage::runtime_metrics`], or the test's own runtime for async entry points)
//! return to their baseline.
//!
//! The counts are process-wide, so this binary has one test, which runs every scenario
//! in turn: a second test running beside it (libtest runs tests on threads of their own)
//! would change them.
//!
//! The baseline is taken after a warm-up: pools that live for the whole process start on
//! first use and are then reused — flowstage's shared runtime (one worker per core),
//! rayon's global pool (`from_par_iter`), and the test's own runtime. Every run of every
//! scenario must come back to that one baseline: nothing may grow per run.
//!
//! Stopping is partly asynchronous: an aborted task ends at its next await, a file
//! reader thread ends at its next send into the closed flow, a dropped runtime joins its
//! workers. So each check waits until the counts are back, up to [`SETTLE`] (a bound for
//! a leak, not a timing requirement), and then fails with the counts it saw.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::guarded;
use flowstage::flow::{Flow, Partition};
use flowstage::source::{Delimiter, LinesSource, ReaderSource};
use flowstage::stage::{
    Consumer, ConsumerContext, ConsumerOptions, Pipeline, Restart, Supervisor, SupervisorOptions,
    from_iter,
};
use flowstage::{FlowError, StageError};
use futures::StreamExt;
use rayon::prelude::*;

/// How long counts may take to come back before the scenario counts as leaking.
const SETTLE: Duration = Duration::from_secs(10);

/// Runs of each scenario.
const RUNS: usize = 10;

/// Scenarios whose blocking entry point returns only once the run's threads are joined
/// and its files closed (`collect`, `run_into`, and `FlowIter`, whose drop joins its
/// thread): their thread and file counts must be back as soon as it returns, not
/// eventually. (A dropped `FlowIter` waits for its thread up to a grace of 200 ms, then
/// leaves it to end in the background, counted in `flowstage::lingering`: these flows
/// never block in user code, but a loaded machine may exceed the grace. Such a run is
/// only checked to settle; most runs must be back at once.) (A file reader thread and async entry points stop after they return; and
/// a tokio task counts as alive for a moment after its `JoinSet` has seen it end, so
/// task counts are always waited for.)
const AT_ONCE: &[&str] = &[
    "collect succeeds",
    "collect fails (a panicking map)",
    "run_into fails (the consumer refuses)",
    "iteration to the end",
    "iterator dropped early",
    "iteration ends in an error",
    "a file read to the end",
    "a file's iterator dropped early",
    "a file with invalid UTF-8",
];

/// What the process holds at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    threads: usize,
    files: usize,
    /// Live tasks of flowstage's shared runtime (0 before it started).
    shared_tasks: usize,
    /// Live tasks of the test's own runtime.
    own_tasks: usize,
}

fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

/// Threads that are not on their way out: those whose `/proc/self/task/TID/stat` flags
/// lack `PF_EXITING`. A joined thread can still count in `Threads:` for a moment:
/// `pthread_join` returns once the kernel clears the thread's tid, early in its exit,
/// and the thread leaves the process's count only at the end of it (a loaded machine
/// may hold it in between for milliseconds). Such a thread has `PF_EXITING` set and
/// cannot come back, so this count is exact for "joined before the run returned".
fn threads_not_exiting() -> usize {
    const PF_EXITING: u64 = 0x4;
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| {
            // A thread that ended since the listing has no `stat` any more.
            let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            // After the command name in parentheses: state, ppid, pgrp, session, tty,
            // tpgid, flags.
            let (_, after_name) = stat.rsplit_once(')')?;
            after_name.split_whitespace().nth(6)?.parse::<u64>().ok()
        })
        .filter(|flags| flags & PF_EXITING == 0)
        .count()
}

fn files() -> usize {
    // The directory handle `read_dir` holds is counted in both measurements alike.
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

fn counts(own: &tokio::runtime::Runtime) -> Counts {
    Counts {
        threads: threads(),
        files: files(),
        shared_tasks: flowstage::runtime_metrics().map_or(0, |m| m.num_alive_tasks()),
        own_tasks: own.metrics().num_alive_tasks(),
    }
}

/// Waits until the counts are `baseline` again; fails with what it saw after [`SETTLE`].
fn settles(scenario: &str, baseline: Counts, own: &tokio::runtime::Runtime) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = counts(own);
        if now == baseline {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{scenario}: leaked — {now:?} after the run, {baseline:?} before"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A test file of `lines` numbered lines, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> Self {
        let path =
            std::env::temp_dir().join(format!("flowstage-leaks-{}-{name}", std::process::id()));
        let mut file = std::fs::File::create(&path).expect("temp file");
        file.write_all(bytes).expect("write");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn numbered_lines(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("line {i}\n"))
        .collect::<String>()
        .into_bytes()
}

/// A consumer that fails on its first batch.
struct Refuses;

impl Consumer for Refuses {
    type Item = u64;

    async fn handle_events(
        &mut self,
        _events: Vec<u64>,
        _context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        Err("refused".into())
    }
}

/// `Ok` if the scenario ended as it should (the result is checked here, so a scenario
/// that stops failing or succeeding is noticed too).
type Outcome = Result<(), String>;

fn expect_ok<T>(result: flowstage::Result<T>) -> Outcome {
    result
        .map(|_| ())
        .map_err(|error| format!("expected success: {error}"))
}

fn expect_err<T>(result: flowstage::Result<T>) -> Outcome {
    match result {
        Err(FlowError::Cancelled) => Err("expected a stage's error, got Cancelled".into()),
        Err(_) => Ok(()),
        Ok(_) => Err("expected an error, the run succeeded".into()),
    }
}

/// A long flow, so that dropping its output stops it mid-run.
fn long_flow() -> Flow<impl flowstage::flow::Plan<Item = u64>> {
    Flow::from_iters(vec![0..10_000_000u64, 0..10_000_000])
        .map(|x| x + 1)
        .partition(Partition::new().stages(3).max_demand(50))
        .map(|x| x * 2)
}

/// A named run of a flow; `Ok` if it ended as it should.
type Scenario = (
    &'static str,
    Box<dyn Fn(&tokio::runtime::Runtime) -> Outcome>,
);

fn scenarios(lines: PathBuf, bad_utf8: PathBuf) -> Vec<Scenario> {
    let (lines_a, lines_b, lines_c, lines_d) = (lines.clone(), lines.clone(), lines.clone(), lines);
    vec![
        (
            "collect succeeds",
            Box::new(|_: &tokio::runtime::Runtime| {
                expect_ok(guarded(|| {
                    Flow::from_iters(vec![0..5000u64, 5000..10_000])
                        .partition(Partition::new().stages(4))
                        .reduce(|| 0u64, |x, sum| sum + x)
                        .emit_state()
                        .collect::<Vec<u64>>()
                }))
            }),
        ),
        (
            "collect fails (a panicking map)",
            Box::new(|_| {
                expect_err(guarded(|| {
                    Flow::from_iter(0..10_000u64)
                        .map(|x| if x == 5000 { panic!("boom") } else { x })
                        .partition(Partition::new().stages(4))
                        .collect::<Vec<u64>>()
                }))
            }),
        ),
        (
            "run_into fails (the consumer refuses)",
            Box::new(|_| expect_err(guarded(|| Flow::from_iter(0..10_000u64).run_into(Refuses)))),
        ),
        (
            "iteration to the end",
            Box::new(|_| {
                guarded(|| {
                    let total: u64 = Flow::from_iter(0..10_000u64)
                        .into_iter()
                        .map(|x| x.expect("no error"))
                        .sum();
                    (total == (0..10_000u64).sum::<u64>())
                        .then_some(())
                        .ok_or_else(|| format!("wrong total {total}"))
                })
            }),
        ),
        (
            "iterator dropped early",
            Box::new(|_| {
                guarded(|| {
                    let first: Vec<u64> = long_flow()
                        .into_iter()
                        .take(10)
                        .map(|x| x.expect("no error"))
                        .collect();
                    (first.len() == 10).then_some(()).ok_or("too few".into())
                })
            }),
        ),
        (
            "iteration ends in an error",
            Box::new(|_| {
                guarded(|| {
                    let last = Flow::from_iter(0..10_000u64)
                        .map(|x| if x == 9000 { panic!("boom") } else { x })
                        .into_iter()
                        .last();
                    expect_err(last.ok_or(FlowError::Cancelled).and_then(|r| r))
                })
            }),
        ),
        (
            "stream dropped early",
            Box::new(|own| {
                guarded_on(own, async {
                    let mut stream = long_flow().into_stream().map_err(|e| e.to_string())?;
                    for _ in 0..10 {
                        stream
                            .next()
                            .await
                            .ok_or("ended")?
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            }),
        ),
        (
            "stream ends in an error",
            Box::new(|own| {
                guarded_on(own, async {
                    let mut stream = Flow::from_iter(0..10_000u64)
                        .map(|x| if x == 9000 { panic!("boom") } else { x })
                        .partition(Partition::new().stages(2))
                        .into_stream()
                        .map_err(|e| e.to_string())?;
                    while let Some(item) = stream.next().await {
                        if item.is_err() {
                            return Ok(());
                        }
                    }
                    Err("the stream ended without the error".into())
                })
            }),
        ),
        (
            "run_async fails",
            Box::new(|own| {
                guarded_on(own, async {
                    expect_err(
                        Flow::from_iter(0..10_000u64)
                            .map(|x| if x == 10 { panic!("boom") } else { x })
                            .run_async()
                            .await,
                    )
                })
            }),
        ),
        (
            "a file read to the end",
            Box::new(move |_| {
                let path = lines_a.clone();
                expect_ok(guarded(move || {
                    Flow::from_source(LinesSource::new(&path).readers(3)).collect::<Vec<String>>()
                }))
            }),
        ),
        (
            "a file's iterator dropped early",
            Box::new(move |_| {
                let path = lines_b.clone();
                guarded(move || {
                    let first: Vec<String> = Flow::from_source(LinesSource::new(&path).readers(2))
                        .into_iter()
                        .take(3)
                        .map(|line| line.expect("no error"))
                        .collect();
                    (first.len() == 3).then_some(()).ok_or("too few".into())
                })
            }),
        ),
        (
            "a file with invalid UTF-8",
            Box::new(move |_| {
                let path = bad_utf8.clone();
                expect_err(guarded(move || {
                    Flow::from_source(LinesSource::new(&path).readers(2)).collect::<Vec<String>>()
                }))
            }),
        ),
        (
            "a reader thread's flow dropped early",
            Box::new(move |_| {
                let path = lines_c.clone();
                guarded(move || {
                    let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                    let source = ReaderSource::new(file, "lines")
                        .delimiter(Delimiter::Line)
                        .block_size(64);
                    let first: Vec<_> = Flow::from_source(source).into_iter().take(2).collect();
                    (first.len() == 2).then_some(()).ok_or("too few".into())
                })
            }),
        ),
        (
            "a reader thread's flow fails",
            Box::new(move |_| {
                let path = lines_d.clone();
                expect_err(guarded(move || {
                    let file = std::fs::File::open(&path).expect("open");
                    let source = ReaderSource::new(file, "lines")
                        .delimiter(Delimiter::Line)
                        .block_size(64);
                    Flow::from_source(source)
                        .map(|_chunk| -> u64 { panic!("boom") })
                        .collect::<Vec<u64>>()
                }))
            }),
        ),
        (
            "a supervisor whose worker fails",
            Box::new(|_| {
                expect_err(guarded(|| {
                    let supervisor = Supervisor::new(
                        SupervisorOptions::new(4)
                            .restart(Restart::Permanent)
                            .max_restarts(0, Duration::from_secs(60)),
                        |x: u64| async move {
                            if x == 20 {
                                return Err(StageError::from("worker failed"));
                            }
                            // Other workers are still sleeping when the run fails.
                            tokio::time::sleep(Duration::from_millis(if x % 2 == 0 {
                                0
                            } else {
                                50
                            }))
                            .await;
                            Ok(())
                        },
                    );
                    let subscribe = supervisor.subscribe_options();
                    let mut pipeline = Pipeline::new();
                    let numbers = pipeline.producer(from_iter(0..10_000u64));
                    let workers =
                        pipeline.consumer_with(supervisor, ConsumerOptions::new().name("workers"));
                    pipeline.subscribe(&workers, &numbers, subscribe)?;
                    pipeline.run()
                }))
            }),
        ),
        (
            "an unbounded from_par_iter dropped early",
            Box::new(|_| {
                let first: Vec<_> = guarded(|| {
                    Flow::from_par_iter((0..u64::MAX).into_par_iter())
                        .into_iter()
                        .take(5)
                        .collect()
                });
                // The dropped flow's rayon job must stop: left running over the whole
                // range, it would hold rayon's global pool for good, and this would hang.
                let sum: u64 = guarded(|| (0..1000u64).into_par_iter().sum());
                (first.len() == 5 && sum == 499_500)
                    .then_some(())
                    .ok_or("wrong results".into())
            }),
        ),
        (
            "from_par_iter dropped early",
            Box::new(|_| {
                guarded(|| {
                    let first: Vec<_> = Flow::from_par_iter((0..2_000_000u64).into_par_iter())
                        .into_iter()
                        .take(5)
                        .collect();
                    (first.len() == 5).then_some(()).ok_or("too few".into())
                })
            }),
        ),
    ]
}

/// Runs `body` on the test's own runtime, under the watchdog.
fn guarded_on(
    own: &tokio::runtime::Runtime,
    body: impl std::future::Future<Output = Outcome> + Send + 'static,
) -> Outcome {
    let handle = own.handle().clone();
    guarded(move || handle.block_on(body))
}

#[test]
fn runs_leave_no_threads_tasks_or_files_behind() {
    let own = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the test's runtime");
    let lines = TempFile::new("lines.txt", &numbered_lines(20_000));
    let mut bad = numbered_lines(5000);
    bad.extend_from_slice(b"bad \xff\n");
    let bad_utf8 = TempFile::new("bad.txt", &bad);
    // Warm-up: start the pools that live as long as the process (flowstage's shared
    // runtime, rayon's global pool); the test's runtime is already up.
    let warm: Vec<u64> = guarded(|| Flow::from_iter(0..10u64).collect()).expect("warm-up");
    assert_eq!(warm.len(), 10);
    let warm: Vec<u64> =
        guarded(|| Flow::from_par_iter((0..10u64).into_par_iter()).collect()).expect("warm-up");
    assert_eq!(warm.len(), 10);
    // Taken once the warm-up is over: no thread mid-exit (the warm-up's are joined,
    // perhaps not yet gone; `from_par_iter`'s reader is not joined at all) and the same
    // counts twice in a row, so a file some thread held for a moment is not counted.
    let deadline = Instant::now() + SETTLE;
    let baseline = loop {
        let first = counts(&own);
        std::thread::sleep(Duration::from_millis(20));
        let second = counts(&own);
        if (first == second && threads() == threads_not_exiting()) || Instant::now() > deadline {
            break second;
        }
    };
    let (mut at_once, mut left_behind) = (0, 0);
    for (scenario, run) in scenarios(lines.0.clone(), bad_utf8.0.clone()) {
        for attempt in 0..RUNS {
            let lingering = flowstage::lingering().total();
            if let Err(error) = run(&own) {
                panic!("{scenario} (run {attempt}): {error}");
            }
            if flowstage::lingering().total() != lingering {
                left_behind += 1;
            } else if AT_ONCE.contains(&scenario) {
                at_once += 1;
                assert_eq!(
                    (threads_not_exiting(), files()),
                    (baseline.threads, baseline.files),
                    "{scenario}: threads and files not back when the run returned"
                );
            }
            settles(scenario, baseline, &own);
        }
    }
    assert!(
        left_behind < at_once,
        "{left_behind} runs left threads behind, only {at_once} were back at once"
    );
}
