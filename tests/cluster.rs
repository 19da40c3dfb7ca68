//! The cluster backend (feature `timely`): flows on 1 process × 2 workers, and on 2 and 3
//! processes over loopback, give exactly the local runtime's results; unsupported
//! operators fail when the flow is built; backpressure bounds what is in flight; a peer
//! that cannot connect, dies or fails ends the others' runs with a typed error.
//!
//! Multi-process tests start this test binary again, once per process (see
//! `common/processes.rs`).

#![cfg(feature = "timely")]

mod common;

use common::processes::*;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flowstage::FlowError;
use flowstage::cluster::{self, ClusterConfig, ClusterPlan, ENV_SECRET};
#[path = "../examples/common/corpus.rs"]
mod corpus;
use corpus::Corpus;
use flowstage::flow::{Flow, Partition, PartitionInfo, Trigger};
use flowstage::source::{Chunk, FileSource, Word};
use flowstage::window::Window;

/// The corpus file of the word count tests.
const ENV_CORPUS: &str = "FLOWSTAGE_CLUSTER_TEST_CORPUS";
/// Where a child marks that its flow is running.
const ENV_STARTED: &str = "FLOWSTAGE_CLUSTER_TEST_STARTED";

// ---------------------------------------------------------------------------------------
// The flows under test, each run both locally and on the cluster.

/// Word count over `path`, the one flow both backends run, unchanged: chunks of
/// whitespace-aligned byte ranges, counted per chunk, then `reduce_by_key` (its combiner
/// fused into the sources, a partition by word, a sum per partition).
fn word_count_flow(
    path: &Path,
    readers: usize,
    stages: usize,
) -> Flow<impl ClusterPlan<Item = (Word, u64)> + use<>> {
    Flow::from_source(FileSource::new(path).readers(readers).block_size(64 << 10))
        .flat_map(|chunk: Chunk| chunk.word_counts())
        .reduce_by_key(|a, b| a + b, Partition::new().stages(stages))
}

/// Lines `word\tcount`, sorted.
fn word_count_cluster(
    config: &ClusterConfig,
    path: &Path,
) -> flowstage::Result<Option<Vec<String>>> {
    let path = path.to_path_buf();
    let readers = config.workers() * 2;
    let counts = cluster::collect(config, move || word_count_flow(&path, readers, 1))?;
    Ok(counts.map(word_lines))
}

fn word_count_local(path: &Path) -> Vec<String> {
    let counts: Vec<(Word, u64)> = word_count_flow(path, 2, 2)
        .collect()
        .expect("the local word count runs");
    word_lines(counts)
}

fn word_lines(counts: Vec<(Word, u64)>) -> Vec<String> {
    let mut lines: Vec<String> = counts.iter().map(|(w, n)| format!("{w}\t{n}")).collect();
    lines.sort();
    lines
}

/// An event: (timestamp ms, key, value).
type Event = (i64, u32, u64);

/// Four in-order streams of events over ~2 s of event time, keys 0..7.
fn event_streams() -> Vec<Vec<Event>> {
    common::event_streams(3_000, false)
}

/// Sum and count per key and 100 ms window, emitted as `window\tkey\tcount\tsum`.
fn windowed_flow(
    partitions: usize,
) -> Flow<impl flowstage::cluster::ClusterPlan<Item = (i64, u32, u64, u64)>> {
    let window = Window::fixed(Duration::from_millis(100), |e: &Event| e.0);
    Flow::from_iters(event_streams())
        .partition(
            Partition::by_key(|e: &Event| e.1)
                .stages(partitions)
                .window(window),
        )
        .reduce(
            HashMap::new,
            |(_, key, value), mut sums: HashMap<u32, (u64, u64)>| {
                let sum = sums.entry(key).or_default();
                sum.0 += 1;
                sum.1 += value;
                sums
            },
        )
        .on_trigger(|sums, _partition: PartitionInfo, trigger: &Trigger| {
            let id = trigger.window.id;
            let rows: Vec<_> = sums.into_iter().map(|(k, (n, s))| (id, k, n, s)).collect();
            (rows, HashMap::new())
        })
}

fn window_lines(rows: Vec<(i64, u32, u64, u64)>) -> Vec<String> {
    let mut lines: Vec<String> = rows
        .iter()
        .map(|(w, k, n, s)| format!("{w}\t{k}\t{n}\t{s}"))
        .collect();
    lines.sort();
    lines
}

fn windowed_cluster(config: &ClusterConfig) -> flowstage::Result<Option<Vec<String>>> {
    let partitions = config.workers();
    Ok(cluster::collect(config, move || windowed_flow(partitions))?.map(window_lines))
}

fn windowed_local(partitions: usize) -> Vec<String> {
    window_lines(
        windowed_flow(partitions)
            .collect()
            .expect("the local windowed flow runs"),
    )
}

/// The corpus of the word count tests, written once per test binary run.
fn corpus() -> PathBuf {
    if let Some(path) = std::env::var_os(ENV_CORPUS) {
        return PathBuf::from(path);
    }
    // Written once per test process: tests run in parallel, and two of them writing the
    // same partial file raced (one renamed it away under the other: CI failed on it).
    static CORPUS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CORPUS
        .get_or_init(|| {
            let path = std::env::temp_dir().join(format!(
                "flowstage-cluster-corpus-{}.txt",
                std::process::id()
            ));
            let partial = path.with_extension("partial");
            std::fs::write(&partial, Corpus::new(2 << 20).seed(11).generate()).expect("corpus");
            std::fs::rename(&partial, &path).expect("corpus");
            path
        })
        .clone()
}

// ---------------------------------------------------------------------------------------
// Equal results.

#[test]
fn word_count_on_one_process_with_two_workers_equals_the_local_run() {
    let path = corpus();
    let expected = word_count_local(&path);
    let got = common::guarded(move || word_count_cluster(&ClusterConfig::local(2), &path))
        .expect("the cluster run succeeds")
        .expect("one process hosts worker 0");
    assert!(!expected.is_empty());
    assert_eq!(got, expected);
}

#[test]
fn count_by_key_runs_on_the_cluster_unchanged() {
    // Many repeats of few keys, over several iterators: each worker's combiner folds
    // its share before the exchange; more keys than `COMBINER_CAPACITY` is covered by
    // the local tests of the combiner, which the cluster reuses.
    let flow = || {
        let shares: Vec<Vec<u64>> = (0..5u64)
            .map(|s| (0..20_000u64).map(|i| (i * 7 + s) % 997).collect())
            .collect();
        Flow::from_iters(shares).count_by_key(Partition::new().stages(2))
    };
    let mut expected: Vec<(u64, u64)> = flow().collect().expect("the local run");
    expected.sort_unstable();
    let mut got = common::guarded(move || cluster::collect(&ClusterConfig::local(2), flow))
        .expect("the cluster run succeeds")
        .expect("one process hosts worker 0");
    got.sort_unstable();
    assert_eq!(expected.len(), 997);
    assert_eq!(expected.iter().map(|(_, n)| n).sum::<u64>(), 100_000);
    assert_eq!(got, expected);
}

#[test]
fn windowed_aggregation_on_one_process_with_two_workers_equals_the_local_run() {
    let expected = windowed_local(2);
    let got = common::guarded(|| windowed_cluster(&ClusterConfig::local(2)))
        .expect("the cluster run succeeds")
        .expect("one process hosts worker 0");
    assert!(expected.len() > 100, "{} windows × keys", expected.len());
    assert_eq!(got, expected);
}

fn word_count_on_processes(test: &str, processes: usize, threads: usize) {
    if run_child(|config| word_count_cluster(&config, &corpus())) {
        return;
    }
    let path = corpus();
    let expected = word_count_local(&path);
    let env = [(ENV_CORPUS, path.display().to_string())];
    let reports = run_processes(test, processes, threads, &env);
    assert_gathered(&reports, &expected);
}

#[test]
fn word_count_on_two_processes_equals_the_local_run() {
    word_count_on_processes("word_count_on_two_processes_equals_the_local_run", 2, 1);
}

#[test]
fn word_count_on_three_processes_equals_the_local_run() {
    word_count_on_processes("word_count_on_three_processes_equals_the_local_run", 3, 1);
}

#[test]
fn word_count_on_two_processes_with_two_workers_each_equals_the_local_run() {
    word_count_on_processes(
        "word_count_on_two_processes_with_two_workers_each_equals_the_local_run",
        2,
        2,
    );
}

fn windowed_on_processes(test: &str, processes: usize) {
    if run_child(|config| windowed_cluster(&config)) {
        return;
    }
    let expected = windowed_local(processes);
    let reports = run_processes(test, processes, 1, &[]);
    assert_gathered(&reports, &expected);
}

#[test]
fn windowed_aggregation_on_two_processes_equals_the_local_run() {
    windowed_on_processes(
        "windowed_aggregation_on_two_processes_equals_the_local_run",
        2,
    );
}

#[test]
fn windowed_aggregation_on_three_processes_equals_the_local_run() {
    windowed_on_processes(
        "windowed_aggregation_on_three_processes_equals_the_local_run",
        3,
    );
}

#[test]
fn per_worker_outputs_add_up_to_the_local_run() {
    // `for_each`: each worker writes its own partitions' rows; together, the local result.
    let expected = windowed_local(2);
    let rows = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let (into, seen) = (rows.clone(), workers.clone());
    common::guarded(move || {
        cluster::for_each(
            &ClusterConfig::local(2),
            || windowed_flow(2),
            move |worker, batch| {
                seen.lock().unwrap().insert(worker.index);
                into.lock().unwrap().extend(batch);
            },
        )
    })
    .expect("the cluster run succeeds");
    let rows = std::mem::take(&mut *rows.lock().unwrap());
    assert_eq!(window_lines(rows), expected);
    assert_eq!(*workers.lock().unwrap(), [0, 1].into_iter().collect());
}

// ---------------------------------------------------------------------------------------
// Invalid flows: the same error as locally, when the flow is built.

/// The text of a configuration error.
fn config_error(error: FlowError) -> String {
    match error {
        FlowError::Config(message) => message,
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn invalid_flows_fail_when_built_as_locally() {
    let count_window = || {
        Flow::from_iter(0..10u64)
            .partition(Partition::new().window(Window::count(0)))
            .reduce(|| 0u64, |x, s| s + x)
            .emit_state()
    };
    let local = config_error(count_window().collect::<Vec<_>>().unwrap_err());
    let clustered =
        common::guarded(move || cluster::collect(&ClusterConfig::local(2), count_window));
    assert_eq!(config_error(clustered.unwrap_err()), local);

    let batch = || Flow::from_iter(0..10u64).batch(0, Duration::from_secs(1));
    let local = config_error(batch().collect::<Vec<_>>().unwrap_err());
    let clustered = common::guarded(move || cluster::collect(&ClusterConfig::local(2), batch));
    assert_eq!(config_error(clustered.unwrap_err()), local);

    let merge_nothing = || {
        Flow::merge(
            Vec::<
                Flow<
                    flowstage::flow::nodes::SourceNode<
                        flowstage::source::IterSource<std::ops::Range<u64>>,
                    >,
                >,
            >::new(),
            flowstage::flow::Shuffle::shuffle(),
        )
    };
    let local = config_error(merge_nothing().collect::<Vec<_>>().unwrap_err());
    let clustered =
        common::guarded(move || cluster::collect(&ClusterConfig::local(2), merge_nothing));
    assert_eq!(config_error(clustered.unwrap_err()), local);
}

// ---------------------------------------------------------------------------------------
// Backpressure.

/// The largest number of events a source emitted that the layer after the partition had
/// not consumed yet, over a run where one worker consumes everything slowly.
fn max_in_flight(epochs_ahead: u64, epoch_events: usize) -> (u64, u64) {
    let produced = Arc::new(AtomicU64::new(0));
    let consumed = Arc::new(AtomicU64::new(0));
    let max = Arc::new(AtomicU64::new(0));
    let (p, c, m) = (produced.clone(), consumed.clone(), max.clone());
    let config = ClusterConfig::local(2)
        .max_epochs_ahead(epochs_ahead)
        .epoch_events(epoch_events);
    let total = common::guarded(move || {
        cluster::collect(&config, move || {
            let (p, c, m, c2) = (p.clone(), c.clone(), m.clone(), c.clone());
            Flow::from_iter(0..60_000u64)
                .inspect(move |_| {
                    let made = p.fetch_add(1, Ordering::SeqCst) + 1;
                    let done = c.load(Ordering::SeqCst);
                    m.fetch_max(made.saturating_sub(done), Ordering::SeqCst);
                })
                // Everything to worker 1, which is slow: worker 0's source would run ahead.
                .partition(Partition::by_hash(|_: &u64, _| Some(1)))
                .inspect(move |_| {
                    let spin = Instant::now();
                    while spin.elapsed() < Duration::from_micros(5) {}
                    c2.fetch_add(1, Ordering::SeqCst);
                })
                .reduce(|| 0u64, |x, sum| sum + x)
                .emit_state()
        })
    })
    .expect("the run succeeds")
    .expect("one process");
    assert_eq!(total.iter().sum::<u64>(), (0..60_000u64).sum::<u64>());
    (max.load(Ordering::SeqCst), consumed.load(Ordering::SeqCst))
}

#[test]
fn sources_do_not_run_more_than_k_epochs_ahead_of_the_slowest_worker() {
    let (k, b, sources) = (2u64, 64usize, 2u64);
    let (bounded, consumed) = max_in_flight(k, b);
    assert_eq!(consumed, 60_000);
    // Each source has at most K + 1 epochs of B events not yet through the dataflow.
    let bound = (k + 1) * b as u64 * sources;
    assert!(bounded <= bound, "in flight {bounded} > bound {bound}");
    // Without the limit the fast source does run ahead: the bound is what holds it.
    let (unbounded, _) = max_in_flight(u64::MAX, b);
    assert!(
        unbounded > 4 * bound,
        "without backpressure only {unbounded} in flight"
    );
}

#[test]
fn the_report_gives_each_operators_busy_time_and_the_time_backpressure_held_a_source() {
    // One event per epoch, none ahead: the source must wait for each event to get
    // through the slow layer before it reads the next.
    let config = ClusterConfig::local(2).max_epochs_ahead(0).epoch_events(1);
    let report = common::guarded(move || {
        cluster::run(&config, || {
            Flow::from_iter(0..40u64)
                .partition(Partition::new())
                .map(|x| {
                    std::thread::sleep(Duration::from_millis(1));
                    x
                })
        })
    })
    .expect("the run succeeds")
    .expect("process 0 reports");
    let source = report
        .stages
        .iter()
        .find(|s| s.stage.name.starts_with("from_iter"))
        .expect("the source is listed");
    let layers: Vec<_> = report
        .stages
        .iter()
        .filter(|s| s.stage.name.starts_with("partition"))
        .collect();
    assert_eq!(layers.len(), 2, "{report:?}");
    assert_eq!(layers.iter().map(|s| s.events_in).sum::<u64>(), 40);
    // 40 sleeps of 1 ms in the layers' own code.
    let layer_busy: Duration = layers.iter().map(|s| s.busy).sum();
    assert!(layer_busy >= Duration::from_millis(40), "{report:?}");
    assert!(source.busy > Duration::ZERO, "{report:?}");
    assert!(source.waiting_for_demand > Duration::ZERO, "{report:?}");
    assert!(
        layers
            .iter()
            .all(|s| s.waiting_for_demand == Duration::ZERO),
        "a layer has no demand to wait for: {report:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Failures: typed errors within a bound, never a hang.

#[test]
fn a_process_whose_peer_never_starts_fails_to_connect() {
    const TEST: &str = "a_process_whose_peer_never_starts_fails_to_connect";
    if run_child(|config| {
        cluster::collect(&config.connect_timeout(Duration::from_secs(2)), || {
            Flow::from_iter(0..10u64).map(|x| x.to_string())
        })
    }) {
        return;
    }
    // Process 1 of 2 is started; process 0 never is.
    let hosts = free_hosts(2);
    let started = Instant::now();
    let reports = Processes::start(TEST, &hosts, &[1], 1, &[]).finish();
    let elapsed = started.elapsed();
    match &reports[0] {
        Reported::Error { kind, text } => {
            assert_eq!(kind, "Cluster", "{text}");
            assert!(text.contains("could not connect"), "{text}");
            assert!(text.contains("process 0 at"), "{text}");
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    eprintln!("connect failure reported after {elapsed:?} (timeout 2 s)");
}

/// An endless flow that marks, once, that it runs.
fn endless(config: &ClusterConfig) -> flowstage::Result<Option<Vec<String>>> {
    let marker = std::env::var_os(ENV_STARTED).map(PathBuf::from);
    let sums = cluster::collect(config, move || {
        let marker = marker.clone();
        Flow::from_iter(0u64..)
            .inspect(move |x| {
                if *x == 10_000 {
                    if let Some(marker) = &marker {
                        let _ = std::fs::File::create(marker).and_then(|mut f| f.write_all(b"1"));
                    }
                }
                if x % 4096 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
            .partition(Partition::new())
            .reduce(|| 0u64, |x, sum| sum.wrapping_add(x))
            .emit_state()
    })?;
    Ok(sums.map(|sums| sums.iter().map(u64::to_string).collect()))
}

#[test]
fn a_peer_killed_mid_run_makes_the_others_fail() {
    const TEST: &str = "a_peer_killed_mid_run_makes_the_others_fail";
    if run_child(|config| endless(&config)) {
        return;
    }
    let hosts = free_hosts(3);
    let dir = std::env::temp_dir().join(format!("flowstage-cluster-kill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("started");
    let _ = std::fs::remove_file(&marker);
    let env = [(ENV_STARTED, marker.display().to_string())];
    let mut processes = Processes::start(TEST, &hosts, &[0, 1, 2], 1, &env);
    // Worker w reads the elements i with i % 3 == w: the marker (element 10 000, worker
    // 1's) means the cluster is connected and running.
    let deadline = Instant::now() + CHILD_WATCHDOG;
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "watchdog: the flow never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Instant::now();
    let (victim, _) = &mut processes.children[2];
    victim.kill().expect("kill process 2");
    let _ = victim.wait();
    let survivors: Vec<(Child, PathBuf)> = processes.children.drain(..2).collect();
    let dir_kept = processes.dir.clone();
    drop(processes);
    let reports = Processes {
        children: survivors,
        dir: dir_kept,
    }
    .finish();
    let elapsed = killed.elapsed();
    for (i, report) in reports.iter().enumerate() {
        match report {
            Reported::Error { kind, text } => {
                assert_eq!(kind, "Cluster", "process {i}: {text}");
                assert!(text.contains("process 2"), "process {i}: {text}");
            }
            other => panic!("process {i}: expected a cluster error, got {other:?}"),
        }
    }
    eprintln!("both survivors reported the lost peer within {elapsed:?} of the kill");
}

#[test]
fn a_failing_process_makes_the_others_fail() {
    const TEST: &str = "a_failing_process_makes_the_others_fail";
    if run_child(|config| {
        let sums = cluster::collect(&config, || {
            Flow::from_iter(0..1_000_000u64)
                // Element 5000 is read by worker 5000 % 2 = 0, in process 0.
                .inspect(|x| assert_ne!(*x, 5000, "boom at {x}"))
                .partition(Partition::new())
                .reduce(|| 0u64, |x, sum| sum + x)
                .emit_state()
        })?;
        Ok(sums.map(|sums| sums.iter().map(u64::to_string).collect()))
    }) {
        return;
    }
    let reports = run_processes(TEST, 2, 1, &[]);
    match &reports[0] {
        Reported::Error { kind, text } => {
            // As locally: the panic, naming the stage (the source's share on worker 0).
            assert_eq!(kind, "StagePanicked", "{text}");
            assert!(
                text.contains("from_iter[0]") && text.contains("boom"),
                "{text}"
            );
        }
        other => panic!("process 0: expected its panic, got {other:?}"),
    }
    match &reports[1] {
        Reported::Error { kind, text } => {
            assert_eq!(kind, "Cluster", "{text}");
            assert!(text.contains("process 0"), "{text}");
        }
        other => panic!("process 1: expected a cluster error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Start-up: connections that are not the cluster's never kill the run.

/// A connection that is not one of the cluster's processes.
#[derive(Debug, Clone, Copy)]
enum Intruder {
    /// Connects and closes at once.
    Closes,
    /// Connects and sends nothing.
    Silent,
    /// Answers the challenge as process 1 would, without the secret.
    WrongSecret,
}

/// Connects to `address` (retrying until it listens) and behaves as `intruder`; returns
/// what the cluster sent it before closing the connection, once it did.
fn intrude(address: &str, intruder: Intruder) -> Vec<u8> {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        match std::net::TcpStream::connect(address) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(error) => panic!("{address} never listened: {error}"),
        }
    };
    let mut received = Vec::new();
    match intruder {
        Intruder::Closes => {}
        Intruder::Silent => {
            let _ = stream.read_to_end(&mut received);
        }
        Intruder::WrongSecret => {
            // The challenge is 8 bytes of magic and a 32-byte nonce; the answer the magic,
            // the index 1, a nonce and a MAC — here one made without the secret.
            let mut challenge = [0u8; 40];
            stream.read_exact(&mut challenge).expect("the challenge");
            let mut answer = challenge[..8].to_vec();
            answer.extend(1u64.to_be_bytes());
            answer.extend([0x5a; 64]);
            stream.write_all(&answer).expect("the answer");
            received.extend(challenge);
            let _ = stream.read_to_end(&mut received);
        }
    }
    received
}

/// Starts process 0 of 2, lets `intruder` connect to it while it waits for process 1,
/// then starts process 1: the cluster runs and gives the local result.
fn cluster_starts_despite(test: &str, intruder: Intruder) {
    if run_child(|config| windowed_cluster(&config)) {
        return;
    }
    let expected = windowed_local(2);
    let hosts = free_hosts(2);
    // A long handshake deadline: a silent intruder is still pending while process 1 joins,
    // so the run shows that accepting does not wait on it.
    let env = [(ENV_HANDSHAKE, "60000".to_string())];
    let first = Processes::start(test, &hosts, &[0], 1, &env);
    let address = hosts[0].clone();
    let mut intruding = Some(std::thread::spawn(move || intrude(&address, intruder)));
    if matches!(intruder, Intruder::Closes) {
        intruding
            .take()
            .map(|t| t.join().expect("the intruder ran"));
    } else {
        // The intruder is connected (and pending) before process 1 starts.
        std::thread::sleep(Duration::from_millis(200));
    }
    let second = Processes::start(test, &hosts, &[1], 1, &env);
    let mut reports = first.finish();
    reports.extend(second.finish());
    assert_gathered(&reports, &expected);
    if let Some(intruding) = intruding {
        // Process 0 dropped the intruder's connection: it got the challenge (40 bytes)
        // and nothing more — no proof for a wrong secret.
        let received = intruding.join().expect("the intruder ran");
        assert_eq!(received.len(), 40, "the intruder received {received:?}");
        assert_eq!(&received[..8], b"FLOWSTG\x01");
    }
}

#[test]
fn a_connection_that_closes_during_start_up_does_not_stop_the_cluster() {
    cluster_starts_despite(
        "a_connection_that_closes_during_start_up_does_not_stop_the_cluster",
        Intruder::Closes,
    );
}

#[test]
fn a_silent_connection_during_start_up_does_not_stop_the_cluster() {
    cluster_starts_despite(
        "a_silent_connection_during_start_up_does_not_stop_the_cluster",
        Intruder::Silent,
    );
}

#[test]
fn a_connection_with_the_wrong_secret_does_not_join_the_cluster() {
    cluster_starts_despite(
        "a_connection_with_the_wrong_secret_does_not_join_the_cluster",
        Intruder::WrongSecret,
    );
}

#[test]
fn a_peer_that_never_comes_is_named_with_the_connections_dropped() {
    // Process 0 of 2 waits for process 1; an intruder that knows the port and says it is
    // process 1 (without the secret) is dropped, and process 0 times out naming process
    // 1 and the dropped connection.
    let hosts = free_hosts(2);
    let target = hosts[0].clone();
    let intruder = std::thread::spawn(move || intrude(&target, Intruder::WrongSecret));
    let config = ClusterConfig::process(0, hosts)
        .secret(SECRET)
        .connect_timeout(Duration::from_secs(1));
    let outcome = common::guarded(move || cluster::collect(&config, || Flow::from_iter(0..10u64)));
    assert_eq!(
        intruder.join().unwrap().len(),
        40,
        "the intruder got no proof"
    );
    match outcome {
        Err(FlowError::Cluster {
            process: 0,
            message,
        }) => {
            assert!(
                message.contains("no connection from process 1"),
                "{message}"
            );
            assert!(message.contains("shared secret"), "{message}");
        }
        other => panic!("expected a connect timeout, got {other:?}"),
    }
}

/// Listens at `host` as process 0 for 3 s, speaking the protocol without the secret:
/// it answers a connection with a proof that fails (only the first one when
/// `answer_once`; the later ones are held silent). Returns how many it answered.
fn impostor(host: &str, answer_once: bool) -> std::thread::JoinHandle<usize> {
    let listener = std::net::TcpListener::bind(host).expect("process 0's port");
    std::thread::spawn(move || {
        use std::io::Read;
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        let (mut answered, mut held) = (0, Vec::new());
        while Instant::now() < deadline {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            if answer_once && answered > 0 {
                held.push(stream);
                continue;
            }
            let mut hello = b"FLOWSTG\x01".to_vec();
            hello.extend([7u8; 32]);
            let mut answer = [0u8; 80];
            if stream.write_all(&hello).is_ok() && stream.read_exact(&mut answer).is_ok() {
                let _ = stream.write_all(&[0u8; 32]);
                answered += 1;
            }
        }
        answered
    })
}

/// Process 1 of 2 connecting within `connect_timeout` to an [`impostor`]: the error must
/// name process 0 and the failed proof.
fn refused_by_the_impostor(hosts: Vec<String>, connect_timeout: Duration) {
    let config = ClusterConfig::process(1, hosts)
        .secret(SECRET)
        .connect_timeout(connect_timeout);
    let outcome = common::guarded(move || cluster::collect(&config, || Flow::from_iter(0..10u64)));
    match outcome {
        Err(FlowError::Cluster {
            process: 1,
            message,
        }) => {
            assert!(message.contains("process 0 at"), "{message}");
            assert!(message.contains("failed to prove"), "{message}");
        }
        other => panic!("expected a connect error naming process 0, got {other:?}"),
    }
}

/// The impostor answers the first connection with a proof that fails, then holds every
/// later one silent: the last attempt runs out of time, and the error still gives the
/// reason the user can act on.
#[test]
fn a_refused_secret_is_named_even_when_the_last_attempt_times_out() {
    let hosts = free_hosts(2);
    let answering = impostor(&hosts[0], true);
    refused_by_the_impostor(hosts, Duration::from_millis(1500));
    assert_eq!(answering.join().unwrap(), 1, "one answered attempt");
}

#[test]
fn a_listener_without_the_secret_is_not_taken_for_a_peer() {
    // Process 1 of 2 connects to process 0's address, where something that speaks the
    // protocol but cannot prove the secret listens: process 1 gives up naming process 0.
    let hosts = free_hosts(2);
    let answering = impostor(&hosts[0], false);
    refused_by_the_impostor(hosts, Duration::from_secs(1));
    assert!(
        answering.join().unwrap() > 0,
        "process 1 reached the impostor"
    );
}

#[test]
fn several_processes_need_a_shared_secret() {
    let config = ClusterConfig::process(0, free_hosts(2));
    let outcome = common::guarded(move || cluster::collect(&config, || Flow::from_iter(0..10u64)));
    match outcome {
        Err(FlowError::Config(message)) => {
            assert!(message.contains(ENV_SECRET), "{message}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
    let empty = ClusterConfig::process(0, free_hosts(2)).secret("");
    let outcome = common::guarded(move || cluster::collect(&empty, || Flow::from_iter(0..10u64)));
    assert!(matches!(outcome, Err(FlowError::Config(m)) if m.contains("empty")));
}
