//! Word count on the cluster backend against the local runtime, in one group.
//!
//! `cargo bench --features timely --bench cluster -- --warm-up-time 1 --measurement-time 5`
//!
//! Input: `FLOWSTAGE_WC_INPUT` if set (e.g. the real prose of `benches/word_count.rs`);
//! else a generated Zipf-distributed corpus of 32 MB in `target/wc-data`.
//!
//! Every variant runs the same flow, the one of `examples/word_count.rs` — byte ranges
//! of the file, `Chunk::word_counts`, `reduce_by_key` (a combiner per source stage or
//! worker, a partition by word, a sum per partition) — and must agree on the total and
//! the number of distinct words:
//!
//! - `local_runtime`: the local stage runtime, 2 readers, 2 partitions.
//! - `timely_1x2`: the cluster backend, one process with 2 workers (no network).
//! - `timely_2x1`: the cluster backend, 2 processes × 1 worker over loopback TCP: this
//!   process is process 0; each iteration starts process 1 (this bench binary again), so
//!   the figure includes starting a process and connecting.
//!
//! On a 2-core machine the point is the overhead of timely (and of serializing the
//! exchange over TCP), not a speed-up. Measured on the 2-core development machine, one
//! run each, all variants running `reduce_by_key`:
//!
//! | input | `local_runtime` | `timely_1x2` | `timely_2x1` |
//! |---|---|---|---|
//! | 531 MB of linux-doc prose (the word count bench's real prose) | 1.574 s | 1.791 s (1.14x) | 1.783 s (1.13x) |
//!
//! (`timely_2x1` includes starting process 1 and connecting, every iteration.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use criterion::{Criterion, Throughput};
use flowstage::cluster::{self, ClusterConfig, ENV_HOSTS, ENV_INDEX, ENV_SECRET};
use flowstage::corpus::Corpus;
use flowstage::flow::{Flow, Partition};
use flowstage::source::{Chunk, FileSource, Word};

/// Set in the child process of `timely_2x1`: the input file.
const ENV_CHILD_INPUT: &str = "FLOWSTAGE_BENCH_CLUSTER_INPUT";
/// The shared secret of the bench's two processes.
const SECRET: &str = "flowstage bench cluster secret";

const GENERATED_BYTES: usize = 32 << 20;

fn input() -> PathBuf {
    if let Ok(path) = std::env::var("FLOWSTAGE_WC_INPUT") {
        return PathBuf::from(path);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("wc-data");
    std::fs::create_dir_all(&dir).expect("target/wc-data");
    let path = dir.join("generated-32mb.txt");
    if std::fs::metadata(&path).map_or(true, |m| m.len() < GENERATED_BYTES as u64) {
        std::fs::write(&path, Corpus::new(GENERATED_BYTES).generate()).expect("corpus");
    }
    path
}

/// (total words, distinct words)
type Summary = (u64, usize);

fn summary(counts: &[(Word, u64)]) -> Summary {
    (counts.iter().map(|(_, n)| n).sum(), counts.len())
}

fn flow(
    path: PathBuf,
    readers: usize,
    partitions: usize,
) -> Flow<impl cluster::ClusterPlan<Item = (Word, u64)>> {
    Flow::from_source(FileSource::new(&path).readers(readers).block_size(1 << 20))
        .flat_map(|chunk: Chunk| chunk.word_counts())
        .reduce_by_key(
            |a, b| a + b,
            Partition::new().stages(partitions).max_demand(4096),
        )
}

fn local_runtime(path: &Path) -> Summary {
    let counts: Vec<(Word, u64)> = flow(path.to_path_buf(), 2, 2).collect().expect("local run");
    summary(&counts)
}

fn cluster_run(config: &ClusterConfig, path: &Path) -> Option<Summary> {
    let path = path.to_path_buf();
    let readers = config.workers() * 2;
    let partitions = config.workers();
    cluster::collect(config, move || flow(path.clone(), readers, partitions))
        .expect("cluster run")
        .map(|counts| summary(&counts))
}

fn timely_2x1(path: &Path) -> Summary {
    let listeners: Vec<_> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    let hosts: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").to_string())
        .collect();
    drop(listeners);
    let mut command = Command::new(std::env::current_exe().expect("the bench binary"));
    command
        .env(ENV_CHILD_INPUT, path)
        .env(ENV_INDEX, "1")
        .env(ENV_HOSTS, hosts.join(","))
        .env(ENV_SECRET, SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let mut child = command.spawn().expect("process 1 starts");
    let config = ClusterConfig::process(0, hosts)
        .secret(SECRET)
        .connect_timeout(Duration::from_secs(30));
    let counted = cluster_run(&config, path).expect("process 0 gathers");
    let status = child.wait().expect("process 1 ends");
    assert!(status.success(), "process 1 failed: {status}");
    counted
}

fn bench(c: &mut Criterion) {
    let path = input();
    let bytes = std::fs::metadata(&path).expect("input").len();
    eprintln!("input: {} ({bytes} bytes)", path.display());
    let expected = local_runtime(&path);
    assert_eq!(cluster_run(&ClusterConfig::local(2), &path), Some(expected));
    assert_eq!(timely_2x1(&path), expected);

    let mut group = c.benchmark_group("cluster_word_count");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("local_runtime", |b| b.iter(|| local_runtime(&path)));
    group.bench_function("timely_1x2", |b| {
        b.iter(|| cluster_run(&ClusterConfig::local(2), &path))
    });
    group.bench_function("timely_2x1", |b| b.iter(|| timely_2x1(&path)));
    group.finish();
}

fn main() {
    // Process 1 of `timely_2x1`: run its part and leave.
    if let Some(input) = std::env::var_os(ENV_CHILD_INPUT) {
        let config = ClusterConfig::from_env()
            .expect("configuration from the parent")
            .connect_timeout(Duration::from_secs(30));
        let gathered = cluster_run(&config, Path::new(&input));
        assert!(gathered.is_none(), "process 1 gathers nothing");
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}
