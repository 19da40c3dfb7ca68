//! Every operator on the cluster backend gives the local runtime's result: a suite of
//! flows, each built by one function and run both ways — on the cluster (1 process × 2
//! workers in this process; 2 and 3 processes, and 2 processes × 2 workers, over
//! loopback) and locally with one stage per worker — whose outputs are compared as sorted
//! lines. Where an output depends on arrival order or on processing time (count windows,
//! `every`, periodic windows and timers), a case compares what does not: per-partition
//! window sizes, counts at each trigger, totals, `Done` results.
//!
//! A multi-process test runs the whole suite in every child, one cluster run after the
//! other on the same ports, so that the suite costs three process starts in all.

#![cfg(feature = "timely")]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::processes::*;
use flowstage::FlowError;
use flowstage::cluster::{self, ClusterConfig, ClusterPlan, Wire};
use flowstage::flow::{
    ErrorPolicy, Flow, JoinMode, Partition, PartitionInfo, Shuffle, Side, Trigger,
};
use flowstage::source::{BoxedProducer, CsvSource, JsonLinesSource, Source, StreamProducer};
use flowstage::window::{Decision, LateEvents, TriggerHandle, TriggerName, Window};
use rayon::prelude::*;

/// Where the children find the suite's data files.
const ENV_DATA: &str = "FLOWSTAGE_CLUSTER_TEST_DATA";

// ---------------------------------------------------------------------------------------
// Data.

/// An event: (timestamp ms, key, value).
type Event = (i64, u32, u64);

/// Four in-order streams of events, keys 0..7; with `gaps`, a pause of 300 ms in event
/// time now and then (for sessions).
fn streams(gaps: bool) -> Vec<Vec<Event>> {
    common::event_streams(1_500, gaps)
}

fn values() -> Vec<Vec<u64>> {
    streams(false)
        .into_iter()
        .map(|s| s.into_iter().map(|e| e.2 + u64::from(e.1) * 100).collect())
        .collect()
}

/// The values as text, every 13th not a number.
fn texts() -> Vec<Vec<String>> {
    values()
        .into_iter()
        .map(|s| {
            s.into_iter()
                .enumerate()
                .map(|(i, v)| {
                    if i % 13 == 0 {
                        format!("x{v}")
                    } else {
                        v.to_string()
                    }
                })
                .collect()
        })
        .collect()
}

fn ts(e: &Event) -> i64 {
    e.0
}

fn key(e: &Event) -> u32 {
    e.1
}

fn sorted<T: std::fmt::Debug>(items: impl IntoIterator<Item = T>) -> Vec<String> {
    let mut lines: Vec<String> = items.into_iter().map(|i| format!("{i:?}")).collect();
    lines.sort();
    lines
}

/// A `(window, key, count)` row.
type Row3 = (i64, u32, u64);

/// Counts per key of a window's events.
fn count_keys(e: Event, mut counts: HashMap<u32, u64>) -> HashMap<u32, u64> {
    *counts.entry(e.1).or_default() += 1;
    counts
}

/// `(window, key, count)` rows of a window, resetting the counts.
fn rows(
    counts: HashMap<u32, u64>,
    _: PartitionInfo,
    trigger: &Trigger,
) -> (Vec<Row3>, HashMap<u32, u64>) {
    let id = trigger.window.id;
    let rows = counts.into_iter().map(|(k, n)| (id, k, n)).collect();
    (rows, HashMap::new())
}

/// Rows only at `Done` (timers' results depend on timing; `Done`'s do not).
fn done_rows(
    counts: HashMap<u32, u64>,
    partition: PartitionInfo,
    trigger: &Trigger,
) -> (Vec<Row3>, HashMap<u32, u64>) {
    if trigger.is_done() {
        rows(counts, partition, trigger)
    } else {
        (Vec::new(), counts)
    }
}

// ---------------------------------------------------------------------------------------
// The flows: each takes the number of partitions (workers on the cluster).

fn try_map_skip(w: usize) -> Flow<impl ClusterPlan<Item = (u64, u64)>> {
    Flow::from_iters(texts())
        .try_map(|s: String| s.parse::<u64>().map_err(|e| (s, e)))
        .on_error(ErrorPolicy::skip())
        .partition(Partition::by_key(|v: &u64| v % 5).stages(w))
        .reduce(HashMap::new, |v: u64, mut sums: HashMap<u64, u64>| {
            *sums.entry(v % 5).or_default() += v;
            sums
        })
}

/// Dead letters counted in this process (the sink runs where the error happened).
static DEAD_LETTERS: AtomicU64 = AtomicU64::new(0);

fn try_flat_map_dead_letters(w: usize) -> Flow<impl ClusterPlan<Item = u64>> {
    let policy =
        ErrorPolicy::dead_letter_fn(|letters: Vec<flowstage::flow::DeadLetter<String>>| {
            DEAD_LETTERS.fetch_add(letters.len() as u64, Ordering::Relaxed);
            Ok(())
        });
    Flow::from_iters(texts())
        .try_flat_map(|s: String| s.parse::<u64>().map(|v| [v, v + 1]).map_err(|e| (s, e)))
        .on_error(policy)
        .shuffle(Shuffle::shuffle().stages(w))
        .map(|v| v * 3)
}

/// A flow for its report: a `try_flat_map` that skips and a `try_map` that dead-letters.
fn reported(w: usize) -> Flow<impl ClusterPlan<Item = u64>> {
    let policy = ErrorPolicy::dead_letter_fn(|_: Vec<flowstage::flow::DeadLetter<u64>>| Ok(()));
    Flow::from_iters(texts())
        .try_flat_map(|s: String| s.parse::<u64>().map(|v| vec![v; 2]).map_err(|e| (s, e)))
        .on_error(ErrorPolicy::skip())
        .try_map(|v: u64| {
            if v % 7 == 0 {
                Err((v, "sevens"))
            } else {
                Ok(v)
            }
        })
        .on_error(policy)
        .partition(Partition::new().stages(w))
        .map(|v| v + 1)
}

fn report_lines(report: flowstage::stage::Report) -> Vec<String> {
    let mut lines: Vec<String> = report
        .errors
        .iter()
        .map(|e| {
            format!(
                "{} skipped {} dead {}",
                e.operator, e.skipped, e.dead_lettered
            )
        })
        .collect();
    let into_partitions: u64 = report
        .stages
        .iter()
        .filter(|s| s.stage.name.starts_with("partition"))
        .map(|s| s.events_in)
        .sum();
    lines.push(format!("partition in {into_partitions}"));
    lines
}

fn batches(_: usize) -> Flow<impl ClusterPlan<Item = (usize, u64)>> {
    Flow::from_iters(values())
        .batch(7, Duration::MAX)
        .map(|batch| (batch.len(), batch.iter().sum()))
}

/// Batch sizes, sorted, and the total of the batched values.
fn batch_lines(batches: Vec<(usize, u64)>) -> Vec<String> {
    let total: u64 = batches.iter().map(|b| b.1).sum();
    let mut lines = sorted(batches.iter().map(|b| b.0));
    lines.push(format!("total {total}"));
    lines
}

fn uniq(w: usize) -> Flow<impl ClusterPlan<Item = u64>> {
    Flow::from_iters(values())
        .map(|v| v % 97)
        .partition(Partition::new().stages(w))
        .uniq()
}

fn uniq_on_sources(_: usize) -> Flow<impl ClusterPlan<Item = u64>> {
    Flow::from_iters(values()).uniq_by(|v: &u64| v % 50)
}

fn merged(w: usize) -> Flow<impl ClusterPlan<Item = u64>> {
    let mut a = values();
    let b = a.split_off(2);
    Flow::merge(
        vec![Flow::from_iters(a), Flow::from_iters(b)],
        Shuffle::shuffle().stages(w),
    )
    .map(|v| v * 2)
}

fn departition(w: usize) -> Flow<impl ClusterPlan<Item = Vec<(u32, u64)>>> {
    Flow::from_iters(streams(false))
        .partition(Partition::by_key(key).stages(w))
        .reduce(HashMap::new, count_keys)
        .emit_state()
        .departition(
            Vec::new,
            |counts: HashMap<u32, u64>, mut all: Vec<(u32, u64)>| {
                all.extend(counts);
                all
            },
            |mut all, _| {
                all.sort();
                all
            },
        )
}

fn departition_windowed(w: usize) -> Flow<impl ClusterPlan<Item = Vec<(i64, u32, u64)>>> {
    let window = Window::fixed(Duration::from_millis(200), ts);
    Flow::from_iters(streams(false))
        .partition(Partition::by_key(key).stages(w).window(window))
        .reduce(HashMap::new, count_keys)
        .on_trigger(rows)
        .departition(
            Vec::new,
            |row, mut all: Vec<(i64, u32, u64)>| {
                all.push(row);
                all
            },
            |mut all, _| {
                all.sort();
                all
            },
        )
}

fn by_value_then_time(a: &Event, b: &Event) -> std::cmp::Ordering {
    b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1))
}

fn take_sort(w: usize) -> Flow<impl ClusterPlan<Item = Vec<Event>>> {
    Flow::from_iters(streams(false))
        .partition(Partition::by_key(key).stages(w))
        .take_sort(10, by_value_then_time)
}

fn take_sort_windowed(w: usize) -> Flow<impl ClusterPlan<Item = Vec<Event>>> {
    let window = Window::fixed(Duration::from_millis(200), ts);
    Flow::from_iters(streams(false))
        .partition(Partition::by_key(key).stages(w).window(window))
        .take_sort(3, by_value_then_time)
}

type Pair = (Option<Event>, Option<Event>);

fn join_sides() -> (Vec<Vec<Event>>, Vec<Vec<Event>>) {
    let all = streams(false);
    // Left: keys 0..5 of two streams; right: keys 2..7 of the others, fewer events.
    let left = all[..2]
        .iter()
        .map(|s| s.iter().copied().filter(|e| e.1 < 5).take(200).collect())
        .collect();
    let right = all[2..]
        .iter()
        .map(|s| s.iter().copied().filter(|e| e.1 >= 2).take(150).collect())
        .collect();
    (left, right)
}

fn bounded_join(mode: JoinMode, w: usize) -> Flow<impl ClusterPlan<Item = Pair>> {
    let (left, right) = join_sides();
    Flow::bounded_join(
        mode,
        Flow::from_iters(left),
        Flow::from_iters(right),
        |l: &Event| (l.1, l.2 % 10),
        |r: &Event| (r.1, r.2 % 10),
        |l: Option<&Event>, r: Option<&Event>| (l.copied(), r.copied()),
        Shuffle::shuffle().stages(w),
    )
}

fn window_join(mode: JoinMode, w: usize) -> Flow<impl ClusterPlan<Item = Pair>> {
    let (left, right) = join_sides();
    let window = Window::fixed(
        Duration::from_millis(100),
        |side: &Side<Event, Event>| match side {
            Side::Left(e) | Side::Right(e) => e.0,
        },
    );
    Flow::window_join(
        mode,
        Flow::from_iters(left),
        Flow::from_iters(right),
        window,
        |l: &Event| (l.1, l.2 % 10),
        |r: &Event| (r.1, r.2 % 10),
        |l: Option<&Event>, r: Option<&Event>| (l.copied(), r.copied()),
        Shuffle::shuffle().stages(w),
    )
}

fn windowed(
    w: usize,
    window: Window<Event>,
    gaps: bool,
) -> Flow<impl ClusterPlan<Item = (i64, u32, u64)>> {
    Flow::from_iters(streams(gaps))
        .partition(Partition::by_key(key).stages(w).window(window))
        .reduce(HashMap::new, count_keys)
        .on_trigger(rows)
}

fn sliding(w: usize) -> Flow<impl ClusterPlan<Item = (i64, u32, u64)>> {
    let window = Window::sliding(Duration::from_millis(300), Duration::from_millis(100), ts);
    windowed(w, window, false)
}

fn fixed_fire_empty(w: usize) -> Flow<impl ClusterPlan<Item = (i64, u32, u64)>> {
    windowed(
        w,
        Window::fixed(Duration::from_millis(100), ts).fire_empty(4),
        true,
    )
}

fn session(w: usize) -> Flow<impl ClusterPlan<Item = (i64, u32, u64)>> {
    windowed(w, Window::session(Duration::from_millis(50), ts), true)
}

/// `(partition, window, count)` rows at each trigger, keeping the count.
fn counted_per_partition(
    w: usize,
    window: Window<Event>,
) -> Flow<impl ClusterPlan<Item = (usize, String, u64)>> {
    Flow::from_iters(streams(false))
        .partition(Partition::by_key(key).stages(w).window(window))
        .reduce(|| 0u64, |_, n| n + 1)
        .on_trigger(|n, partition: PartitionInfo, trigger: &Trigger| {
            let name = match &trigger.name {
                TriggerName::Done => format!("done {}", trigger.window.id),
                other => format!("{other:?}"),
            };
            (vec![(partition.index, name, n)], n)
        })
}

fn count_window(w: usize) -> Flow<impl ClusterPlan<Item = (usize, String, u64)>> {
    counted_per_partition(w, Window::count(50))
}

fn every(w: usize) -> Flow<impl ClusterPlan<Item = (usize, String, u64)>> {
    counted_per_partition(w, Window::global().trigger_every(100))
}

fn custom(w: usize) -> Flow<impl ClusterPlan<Item = (usize, String, u64)>> {
    let window = Window::global().trigger(
        || 0usize,
        |seen: &mut usize, events: &[Event]| {
            // Fire at every 64th event of the window.
            let at = 64 - *seen % 64;
            if events.len() >= at {
                *seen += at;
                Decision::Fire {
                    at,
                    name: "64".into(),
                }
            } else {
                *seen += events.len();
                Decision::Continue
            }
        },
    );
    counted_per_partition(w, window)
}

fn periodic(w: usize) -> Flow<impl ClusterPlan<Item = u64>> {
    Flow::from_iters(values())
        .shuffle(
            Shuffle::shuffle()
                .stages(w)
                .window(Window::periodic(Duration::from_millis(2))),
        )
        .reduce(|| 0u64, |v, sum| sum + v)
        .emit_state()
}

fn total_lines(values: Vec<u64>) -> Vec<String> {
    vec![format!("total {}", values.iter().sum::<u64>())]
}

fn periodically(w: usize) -> Flow<impl ClusterPlan<Item = (i64, u32, u64)>> {
    let window = Window::fixed(Duration::from_millis(200), ts)
        .trigger_periodically(Duration::from_millis(1));
    Flow::from_iters(streams(false))
        .partition(Partition::by_key(key).stages(w).window(window))
        .reduce(HashMap::new, count_keys)
        .on_trigger(done_rows)
}

fn lateness(w: usize) -> Flow<impl ClusterPlan<Item = (i64, u32, u64)>> {
    let window =
        Window::fixed(Duration::from_millis(200), ts).allowed_lateness(Duration::from_millis(3));
    Flow::from_iters(streams(false))
        .partition(Partition::by_key(key).stages(w).window(window))
        .reduce(HashMap::new, count_keys)
        .on_trigger(done_rows)
}

fn sums_per_key(v: u64, mut sums: HashMap<u64, u64>) -> HashMap<u64, u64> {
    *sums.entry(v % 11).or_default() += v;
    sums
}

fn from_stream(w: usize) -> Flow<impl ClusterPlan<Item = (u64, u64)>> {
    let all: Vec<u64> = values().concat();
    Flow::from_stream(futures::stream::iter(all))
        .map(|v| v + 1)
        .partition(Partition::by_key(|v: &u64| v % 11).stages(w))
        .reduce(HashMap::new, sums_per_key)
}

fn from_par_iter(w: usize) -> Flow<impl ClusterPlan<Item = (u64, u64)>> {
    let all: Vec<u64> = values().concat();
    Flow::from_par_iter(all.into_par_iter())
        .partition(Partition::by_key(|v: &u64| v % 11).stages(w))
        .reduce(HashMap::new, sums_per_key)
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct Row {
    ts: i64,
    key: u32,
    value: u64,
}

fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(ENV_DATA) {
        return PathBuf::from(dir);
    }
    // Written once per test process: tests run in parallel, and one could read the CSV
    // while another was still writing it, or rename the partial file away under it.
    static DATA: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DATA.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("flowstage-cluster-ops-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a data dir");
        let rows: Vec<Event> = streams(false).concat();
        let mut csv = String::from("ts,key,value\n");
        let mut json = String::new();
        for (i, (ts, key, value)) in rows.iter().enumerate() {
            if i % 101 == 0 {
                csv.push_str("oops,1,2\n");
                json.push_str("{\"ts\": \"oops\"}\n");
            }
            csv.push_str(&format!("{ts},{key},{value}\n"));
            json.push_str(&format!(
                "{{\"ts\":{ts},\"key\":{key},\"value\":{value}}}\n"
            ));
        }
        std::fs::write(dir.join("rows.csv"), csv).expect("csv");
        std::fs::write(dir.join("rows.jsonl"), json).expect("json");
        dir
    })
    .clone()
}

fn row_sums(row: Row, mut sums: HashMap<u32, u64>) -> HashMap<u32, u64> {
    *sums.entry(row.key).or_default() += row.value;
    sums
}

fn csv(w: usize) -> Flow<impl ClusterPlan<Item = (u32, u64)>> {
    let source = CsvSource::<Row>::new(data_dir().join("rows.csv"))
        .readers(w * 2)
        .block_size(4096)
        .on_error(ErrorPolicy::skip());
    Flow::from_source(source)
        .partition(Partition::by_key(|r: &Row| r.key).stages(w))
        .reduce(HashMap::new, row_sums)
}

fn json_lines(w: usize) -> Flow<impl ClusterPlan<Item = (u32, u64)>> {
    let source = JsonLinesSource::<Row>::new(data_dir().join("rows.jsonl"))
        .readers(w * 2)
        .block_size(4096)
        .on_error(ErrorPolicy::skip());
    Flow::from_source(source)
        .partition(Partition::by_key(|r: &Row| r.key).stages(w))
        .reduce(HashMap::new, row_sums)
}

// ---------------------------------------------------------------------------------------
// The suite.

type Lines = flowstage::Result<Vec<String>>;
/// Process 0's lines (`None` in the others).
type ProcessLines = flowstage::Result<Option<Vec<String>>>;

/// One case: its name, its cluster run (lines in process 0, `None` elsewhere) and its
/// local run with `w` stages.
struct Case {
    name: &'static str,
    cluster: Box<dyn Fn(&ClusterConfig) -> ProcessLines>,
    local: Box<dyn Fn(usize) -> Lines>,
}

/// A case collecting `flow(w)`'s output, turned into lines by `lines`.
fn collected<P, T>(
    name: &'static str,
    flow: fn(usize) -> Flow<P>,
    lines: fn(Vec<T>) -> Vec<String>,
) -> Case
where
    P: ClusterPlan<Item = T> + 'static,
    T: Wire,
{
    Case {
        name,
        cluster: Box::new(move |config| {
            let w = config.workers();
            Ok(cluster::collect(config, move || flow(w))?.map(lines))
        }),
        local: Box::new(move |w| Ok(lines(flow(w).collect()?))),
    }
}

fn debug_lines<T: std::fmt::Debug>(items: Vec<T>) -> Vec<String> {
    sorted(items)
}

fn suite() -> Vec<Case> {
    vec![
        collected("try_map skip", try_map_skip, debug_lines),
        collected(
            "try_flat_map dead letters",
            try_flat_map_dead_letters,
            debug_lines,
        ),
        Case {
            name: "report",
            cluster: Box::new(|config| {
                let w = config.workers();
                Ok(cluster::run(config, move || reported(w))?.map(report_lines))
            }),
            local: Box::new(|w| Ok(report_lines(reported(w).run()?))),
        },
        collected("batch", batches, batch_lines),
        collected("uniq", uniq, debug_lines),
        collected("uniq on sources", uniq_on_sources, debug_lines),
        collected("merge", merged, debug_lines),
        collected("departition", departition, debug_lines),
        collected("departition windowed", departition_windowed, debug_lines),
        collected("take_sort", take_sort, debug_lines),
        collected("take_sort windowed", take_sort_windowed, debug_lines),
        collected(
            "bounded_join inner",
            |w| bounded_join(JoinMode::Inner, w),
            debug_lines,
        ),
        collected(
            "bounded_join left",
            |w| bounded_join(JoinMode::LeftOuter, w),
            debug_lines,
        ),
        collected(
            "bounded_join right",
            |w| bounded_join(JoinMode::RightOuter, w),
            debug_lines,
        ),
        collected(
            "bounded_join full",
            |w| bounded_join(JoinMode::FullOuter, w),
            debug_lines,
        ),
        collected(
            "window_join inner",
            |w| window_join(JoinMode::Inner, w),
            debug_lines,
        ),
        collected(
            "window_join full",
            |w| window_join(JoinMode::FullOuter, w),
            debug_lines,
        ),
        collected("sliding", sliding, debug_lines),
        collected("session", session, debug_lines),
        collected("fixed fire_empty", fixed_fire_empty, debug_lines),
        collected("count window", count_window, debug_lines),
        collected("periodic", periodic, total_lines),
        collected("every", every, debug_lines),
        collected("custom trigger", custom, debug_lines),
        collected("periodically", periodically, debug_lines),
        collected("allowed_lateness", lateness, debug_lines),
        collected("from_stream", from_stream, debug_lines),
        collected("from_par_iter", from_par_iter, debug_lines),
        collected("csv", csv, debug_lines),
        collected("json lines", json_lines, debug_lines),
    ]
}

/// Runs every case on the cluster; process 0's lines, each case under a `## name` header.
fn run_suite(config: &ClusterConfig) -> flowstage::Result<Option<Vec<String>>> {
    let mut all = Vec::new();
    let mut gathered = false;
    for case in suite() {
        let lines = (case.cluster)(config).map_err(|error| {
            flowstage::FlowError::Config(format!("case {}: {error}", case.name))
        })?;
        if let Some(lines) = lines {
            gathered = true;
            all.push(format!("## {}", case.name));
            all.extend(lines);
        }
    }
    Ok(gathered.then_some(all))
}

/// What every case gives locally with `w` stages, in the same form.
fn expected(w: usize) -> Vec<String> {
    let mut all = Vec::new();
    for case in suite() {
        let lines = (case.local)(w).unwrap_or_else(|e| panic!("case {}: {e}", case.name));
        assert!(!lines.is_empty(), "case {}: no local result", case.name);
        all.push(format!("## {}", case.name));
        all.extend(lines);
    }
    all
}

/// The lines of each case, by name.
fn by_case(lines: &[String]) -> Vec<(String, Vec<String>)> {
    let mut cases: Vec<(String, Vec<String>)> = Vec::new();
    for line in lines {
        match line.strip_prefix("## ") {
            Some(name) => cases.push((name.to_string(), Vec::new())),
            None => cases
                .last_mut()
                .expect("a case header first")
                .1
                .push(line.clone()),
        }
    }
    cases
}

/// Each case's cluster lines equal its local lines.
fn assert_cases_equal(got: &[String], want: &[String]) {
    let (got, want) = (by_case(got), by_case(want));
    assert_eq!(got.len(), want.len(), "the cases run");
    for ((name, got), (_, want)) in got.iter().zip(&want) {
        assert_eq!(
            got, want,
            "case {name}: the cluster's result differs from the local run's"
        );
    }
}

#[test]
fn every_operator_on_one_process_with_two_workers_equals_the_local_run() {
    let want = expected(2);
    let got = common::guarded(|| run_suite(&ClusterConfig::local(2)))
        .expect("the cluster runs succeed")
        .expect("one process hosts worker 0");
    assert_cases_equal(&got, &want);
}

fn suite_on_processes(test: &str, processes: usize, threads: usize) {
    if run_child(|config| run_suite(&config)) {
        return;
    }
    let want = expected(processes * threads);
    let env = [(ENV_DATA, data_dir().display().to_string())];
    let reports = run_processes(test, processes, threads, &env);
    match &reports[0] {
        Reported::Lines(got) => assert_cases_equal(got, &want),
        other => panic!("process 0 reported {other:?}"),
    }
    for (i, report) in reports.iter().enumerate().skip(1) {
        assert_eq!(report, &Reported::Nothing, "process {i}");
    }
}

#[test]
fn every_operator_on_two_processes_equals_the_local_run() {
    suite_on_processes("every_operator_on_two_processes_equals_the_local_run", 2, 1);
}

#[test]
fn every_operator_on_three_processes_equals_the_local_run() {
    suite_on_processes(
        "every_operator_on_three_processes_equals_the_local_run",
        3,
        1,
    );
}

#[test]
fn every_operator_on_two_processes_with_two_workers_each_equals_the_local_run() {
    suite_on_processes(
        "every_operator_on_two_processes_with_two_workers_each_equals_the_local_run",
        2,
        2,
    );
}

// ---------------------------------------------------------------------------------------
// What depends on processing time or arrival, in one process: the same behaviour as
// locally, checked with handshakes between the flow and the test instead of timing.

/// The timestamp of the event a waiting stream sends when its wait timed out.
const MARKER: i64 = 10_000;

/// What `build`'s flow collects on the cluster (1 process × 2 workers) or locally.
fn collect_on<P>(
    on_cluster: bool,
    build: impl Fn() -> Flow<P> + Send + Sync + 'static,
) -> Vec<P::Item>
where
    P: ClusterPlan,
    P::Item: Wire,
{
    if on_cluster {
        common::guarded(move || cluster::collect(&ClusterConfig::local(2), build))
            .expect("the cluster run succeeds")
            .expect("one process hosts worker 0")
    } else {
        build().collect().expect("the local run succeeds")
    }
}

/// Waits (asynchronously, on the source's runtime) until `flag` is set, or gives up after
/// a while so that a broken behaviour fails its assertion instead of hanging.
async fn until(flag: &AtomicBool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !flag.load(Ordering::SeqCst) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    true
}

/// `events`, then (once `flag` is set) `after`: a stream whose source waits in between.
fn waiting_stream(
    events: Vec<Event>,
    flag: Arc<AtomicBool>,
    after: Vec<Event>,
) -> impl futures::Stream<Item = Event> + Send + Unpin + 'static {
    use futures::StreamExt;
    let later = futures::stream::once(async move {
        // A marker event (key 99) says the wait timed out.
        let waited = until(&flag).await;
        let marker = (!waited).then_some((MARKER, 99, 0));
        futures::stream::iter(marker.into_iter().chain(after))
    })
    .flatten();
    Box::pin(futures::stream::iter(events).chain(later))
}

/// Sets `flag` once window 0 fires `Done`, and emits `(window, count)` at every `Done`.
fn flagging(
    flag: Arc<AtomicBool>,
) -> impl Fn(u64, PartitionInfo, &Trigger) -> (Vec<(i64, u64)>, u64) + Send + Sync + 'static {
    move |n, _partition, trigger| {
        if trigger.is_done() && trigger.window.id == 0 {
            flag.store(true, Ordering::SeqCst);
        }
        let rows = if trigger.is_done() {
            vec![(trigger.window.id, n)]
        } else {
            Vec::new()
        };
        (rows, 0)
    }
}

#[test]
fn late_events_go_to_the_side_output_as_locally() {
    // One source: window 0, then 100; once window 0 has closed (the test sees its `Done`),
    // an event of window 0 comes: late, on both backends.
    let run = |on_cluster: bool| {
        let flag = Arc::new(AtomicBool::new(false));
        let late = LateEvents::keep();
        let (build_flag, build_late) = (flag.clone(), late.clone());
        let build = move || {
            let events: Vec<Event> = (0..10).map(|t| (t, 0, 1)).chain([(100, 0, 1)]).collect();
            let stream = waiting_stream(events, build_flag.clone(), vec![(5, 0, 1), (150, 0, 1)]);
            let window = Window::fixed(Duration::from_millis(50), ts).late_events(&build_late);
            Flow::from_stream(stream)
                // Everything to worker 0, which also reads the stream: its waiting must
                // not hold the worker.
                .partition(
                    Partition::by_hash(|_: &Event, _| Some(0))
                        .stages(2)
                        .window(window),
                )
                .reduce(|| 0u64, |_, n| n + 1)
                .on_trigger(flagging(build_flag.clone()))
        };
        let mut rows = collect_on(on_cluster, build);
        rows.sort();
        (rows, late.take())
    };
    let (local_rows, local_late) = run(false);
    let (rows, late) = run(true);
    assert_eq!(local_late, [(5, 0, 1)], "locally the event is late");
    assert!(
        !rows.iter().any(|r| r.0 == MARKER),
        "the source waited in vain"
    );
    assert_eq!(rows, local_rows);
    assert_eq!(late, local_late);
}

/// Two producers: one reads `events` and ends, the other reads one event and then waits
/// for `flag`.
struct OneQuiet {
    events: Vec<Event>,
    flag: Arc<AtomicBool>,
}

impl OneQuiet {
    fn producers(self) -> Vec<BoxedProducer<Event>> {
        let busy = futures::stream::iter(self.events);
        let quiet = waiting_stream(vec![(0, 1, 1)], self.flag, vec![(1, 1, 1)]);
        vec![
            BoxedProducer::new(StreamProducer(busy)),
            BoxedProducer::new(StreamProducer(quiet)),
        ]
    }
}

impl Source for OneQuiet {
    type Item = Event;

    fn into_producers(self) -> flowstage::Result<Vec<BoxedProducer<Event>>> {
        Ok(self.producers())
    }

    fn into_worker_producers(
        self,
        worker: usize,
        workers: usize,
    ) -> flowstage::Result<Vec<Option<BoxedProducer<Event>>>> {
        Ok(self
            .producers()
            .into_iter()
            .enumerate()
            .map(|(i, p)| (i % workers == worker).then_some(p))
            .collect())
    }
}

#[test]
fn a_quiet_source_stops_holding_windows_after_its_idle_timeout() {
    // The quiet producer holds the watermark at 0 until its idle timeout: then windows
    // close up to the busy producer's events (the test sees window 0's `Done`, and the
    // quiet producer ends); without it, they would wait for the quiet one to end.
    let run = |on_cluster: bool| {
        let flag = Arc::new(AtomicBool::new(false));
        let build_flag = flag.clone();
        let build = move || {
            let source = OneQuiet {
                events: (0..500).map(|t| (t, 0, 1)).collect(),
                flag: build_flag.clone(),
            };
            let window = Window::fixed(Duration::from_millis(100), ts)
                .idle_timeout(Duration::from_millis(20));
            Flow::from_source(source)
                .partition(Partition::by_key(key).stages(2).window(window))
                .reduce(|| 0u64, |_, n| n + 1)
                .on_trigger(flagging(build_flag.clone()))
        };
        let mut rows = collect_on(on_cluster, build);
        rows.sort();
        rows
    };
    let local = run(false);
    assert!(
        !local.iter().any(|r| r.0 == MARKER),
        "locally the windows closed"
    );
    let rows = run(true);
    assert!(
        !rows.iter().any(|r| r.0 == MARKER),
        "the windows never closed"
    );
    assert_eq!(rows, local);
}

#[test]
fn a_trigger_handle_fires_the_windows_of_its_process() {
    // The source waits until a `flush` message has fired; the test fires it until then.
    let handle = TriggerHandle::new();
    let flag = Arc::new(AtomicBool::new(false));
    let (build_handle, build_flag) = (handle.clone(), flag.clone());
    let build = move || {
        let events: Vec<Event> = (0..200).map(|t| (t, (t % 7) as u32, 1)).collect();
        let stream = waiting_stream(events, build_flag.clone(), vec![(300, 1, 1)]);
        let window = Window::global().trigger_on(&build_handle);
        let flag = build_flag.clone();
        Flow::from_stream(stream)
            .partition(Partition::by_key(key).stages(2).window(window))
            .reduce(|| 0u64, |_, n| n + 1)
            .on_trigger(move |n, partition: PartitionInfo, trigger: &Trigger| {
                if let TriggerName::Message(name) = &trigger.name {
                    flag.store(true, Ordering::SeqCst);
                    return (vec![(partition.index, name.clone(), n)], n);
                }
                (vec![(partition.index, "done".to_string(), n)], n)
            })
    };
    let firing = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
            handle.fire("flush");
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let rows = common::guarded(move || cluster::collect(&ClusterConfig::local(2), build))
        .expect("the cluster run succeeds")
        .expect("one process");
    firing.join().unwrap();
    let flushes = rows.iter().filter(|r| r.1 == "flush").count();
    assert!(flushes >= 1, "no message trigger fired: {rows:?}");
    let done: u64 = rows.iter().filter(|r| r.1 == "done").map(|r| r.2).sum();
    assert_eq!(done, 201, "every event counted once at Done: {rows:?}");
}

#[test]
fn dead_letters_reach_the_sink_as_locally() {
    let run = |on_cluster: bool| {
        let letters = Arc::new(Mutex::new(Vec::new()));
        let into = letters.clone();
        let build = move || {
            let into = into.clone();
            let policy = ErrorPolicy::dead_letter_fn(
                move |batch: Vec<flowstage::flow::DeadLetter<String>>| {
                    let mut letters = into.lock().unwrap();
                    letters.extend(batch.into_iter().map(|l| (l.event, l.error.to_string())));
                    Ok(())
                },
            );
            Flow::from_iters(texts())
                .try_map(|s: String| s.parse::<u64>().map_err(|e| (s, e)))
                .on_error(policy)
                .partition(Partition::new().stages(2))
                .reduce(|| 0u64, |v, sum| sum + v)
                .emit_state()
        };
        let sums = collect_on(on_cluster, build);
        let mut letters = std::mem::take(&mut *letters.lock().unwrap());
        letters.sort();
        (sums.iter().sum::<u64>(), letters)
    };
    let local = run(false);
    assert!(!local.1.is_empty());
    assert_eq!(run(true), local);
}

fn failure_text(error: FlowError) -> String {
    match error {
        FlowError::StageFailed { message, .. } => format!("failed: {message}"),
        FlowError::StagePanicked { stage, message } => {
            format!("panicked: {} {message}", stage.name)
        }
        other => panic!("expected a stage failure, got {other:?}"),
    }
}

#[test]
fn a_failing_try_map_and_a_panicking_source_fail_the_run_as_locally() {
    let try_map = || {
        Flow::from_iters(vec![vec!["1".to_string(), "2".into()], vec!["x".into()]])
            .try_map(|s: String| s.parse::<u64>().map_err(|e| (s, e)))
            .partition(Partition::new().stages(2))
    };
    let local = failure_text(try_map().collect::<Vec<_>>().unwrap_err());
    let clustered = common::guarded(move || cluster::collect(&ClusterConfig::local(2), try_map));
    assert_eq!(failure_text(clustered.unwrap_err()), local);
    assert!(local.contains("try_map: invalid digit"), "{local}");

    let panicking = || {
        let stream = futures::stream::iter(0..10u64).map(|x| {
            assert!(x < 5, "the stream broke at {x}");
            x
        });
        Flow::from_stream(stream).partition(Partition::new().stages(2))
    };
    use futures::StreamExt;
    let local = failure_text(panicking().collect::<Vec<_>>().unwrap_err());
    let clustered = common::guarded(move || cluster::collect(&ClusterConfig::local(2), panicking));
    let clustered = failure_text(clustered.unwrap_err());
    assert!(clustered.contains("the stream broke at 5"), "{clustered}");
    assert!(local.contains("the stream broke at 5"), "{local}");
    assert!(
        clustered.starts_with("panicked: from_stream"),
        "{clustered}"
    );

    // A panic in a layer's reduce names the layer's stage, as locally.
    let reducing = || {
        Flow::from_iter(0..100u64)
            .partition(Partition::by_hash(|_: &u64, _| Some(1)).stages(2))
            .reduce(
                || 0u64,
                |x, sum| {
                    assert!(x != 42, "the reduce broke at {x}");
                    sum + x
                },
            )
            .emit_state()
    };
    let local = failure_text(reducing().collect::<Vec<_>>().unwrap_err());
    let clustered = common::guarded(move || cluster::collect(&ClusterConfig::local(2), reducing));
    assert_eq!(failure_text(clustered.unwrap_err()), local);
    assert_eq!(local, "panicked: partition[1] the reduce broke at 42");
}

#[test]
fn a_bounded_join_reads_its_right_side_once_the_left_is_complete() {
    // As locally (the right side is subscribed deferred): no right event waits in memory
    // while the left side is read.
    let left_read = Arc::new(AtomicU64::new(0));
    let seen_by_right = Arc::new(AtomicU64::new(u64::MAX));
    let (l, r) = (left_read.clone(), seen_by_right.clone());
    let build = move || {
        let (left, right) = join_sides();
        let (l, r, l2) = (l.clone(), r.clone(), l.clone());
        Flow::bounded_join(
            JoinMode::Inner,
            Flow::from_iters(left).inspect(move |_| {
                l.fetch_add(1, Ordering::SeqCst);
            }),
            Flow::from_iters(right).inspect(move |_| {
                r.fetch_min(l2.load(Ordering::SeqCst), Ordering::SeqCst);
            }),
            |l: &Event| l.1,
            |r: &Event| r.1,
            |l: Option<&Event>, r: Option<&Event>| (l.copied(), r.copied()),
            Shuffle::shuffle().stages(2),
        )
    };
    let pairs = common::guarded(move || cluster::collect(&ClusterConfig::local(2), build))
        .expect("the cluster run succeeds")
        .expect("one process");
    assert!(!pairs.is_empty());
    let left_total: usize = join_sides().0.iter().map(Vec::len).sum();
    assert_eq!(left_read.load(Ordering::SeqCst), left_total as u64);
    assert_eq!(seen_by_right.load(Ordering::SeqCst), left_total as u64);
}

// ---------------------------------------------------------------------------------------
// Redis Streams: one consumer of the group per worker.

#[cfg(feature = "redis")]
#[test]
fn a_redis_stream_is_read_by_one_consumer_per_worker() {
    use flowstage::source::{RedisStreamSource, StreamEntry};
    use std::process::{Command, Stdio};

    // A redis-server of this test's own (the Redis tests install it when missing).
    let port = free_hosts(1)[0]
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("a port");
    let Ok(mut server) = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        panic!("redis-server is needed: `apt-get install -y redis-server` (.ci/run does)");
    };
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).expect("a client");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut connection = loop {
        if let Ok(connection) = client.get_connection() {
            break connection;
        }
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    const N: u64 = 2000;
    let mut pipe = redis::pipe();
    for i in 0..N {
        pipe.cmd("XADD")
            .arg("orders")
            .arg("*")
            .arg("n")
            .arg(i)
            .ignore();
    }
    pipe.query::<()>(&mut connection).expect("XADD");

    let source_url = url.clone();
    let numbers = common::guarded(move || {
        cluster::collect(&ClusterConfig::local(2), move || {
            let source = RedisStreamSource::new(&source_url, "orders", "group", "reader")
                .max_count(50)
                .stop_when_idle(Duration::from_millis(300));
            Flow::from_source(source)
                .map(|entry: StreamEntry| {
                    entry
                        .text("n")
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(u64::MAX)
                })
                .shuffle(Shuffle::shuffle())
        })
    });
    let consumers: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg("orders")
        .arg("group")
        .query(&mut connection)
        .expect("XINFO CONSUMERS");
    let _ = server.kill();
    let _ = server.wait();
    let mut numbers = numbers
        .expect("the cluster run succeeds")
        .expect("one process");
    numbers.sort_unstable();
    assert_eq!(numbers, (0..N).collect::<Vec<_>>(), "every entry once");
    let names: Vec<String> = consumers
        .iter()
        .filter_map(|fields| match fields.get(1) {
            Some(redis::Value::BulkString(name)) => Some(String::from_utf8_lossy(name).into()),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["reader-0", "reader-1"]);
}
