//! Word count on a timely-dataflow cluster: the same flow as `word_count`, run by
//! several processes (on one machine or several) that share the file's byte ranges and
//! exchange `(word, count)` pairs by word over TCP.
//!
//! ```text
//! cargo run --release --features timely --example cluster_word_count -- [FILE] [options]
//! ```
//!
//! - With no `--process`: a launcher. It starts `--processes N` (default 2) copies of
//!   itself on free 127.0.0.1 ports, waits for them (killing them all if one fails or
//!   they run past `--timeout` seconds, default 120), and checks process 0's counts
//!   against the local runtime's. Without FILE it counts a generated 8 MB corpus.
//! - With `--process I --hosts HOST:PORT,...` (or `--hostfile PATH`, one `host:port` per
//!   line): process I of the cluster, as on each machine of a real one. Process 0 prints
//!   `total N`, `distinct N` and the top words (`--top N`, default 10).
//! - `--threads W`: worker threads per process (default 1).
//!
//! The processes authenticate each other with the shared secret in
//! `FLOWSTAGE_CLUSTER_SECRET` (the same in every process; the launcher makes a fresh one
//! for its processes). It goes in the environment, not on the command line, where other
//! users of the machine could read it.
//!
//! Every process must see FILE at the same path (a shared or copied file): each worker
//! reads only its own byte ranges of it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flowstage::cluster::{self, ClusterConfig, ClusterPlan, ENV_SECRET};
use flowstage::corpus::Corpus;
use flowstage::flow::{Flow, Partition};
use flowstage::source::{Chunk, FileSource, Word};

#[derive(Debug, Default)]
struct Args {
    file: Option<PathBuf>,
    processes: usize,
    threads: usize,
    process: Option<usize>,
    hosts: Option<String>,
    hostfile: Option<PathBuf>,
    top: usize,
    timeout: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        processes: 2,
        threads: 1,
        top: 10,
        timeout: 120,
        ..Args::default()
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        let mut value = || iter.next().ok_or(format!("{arg} needs a value"));
        let number = |text: String| -> Result<usize, String> {
            text.parse().map_err(|_| format!("not a number: {text}"))
        };
        match arg.as_str() {
            "--processes" => args.processes = number(value()?)?,
            "--threads" => args.threads = number(value()?)?,
            "--process" => args.process = Some(number(value()?)?),
            "--hosts" => args.hosts = Some(value()?),
            "--hostfile" => args.hostfile = Some(PathBuf::from(value()?)),
            "--top" => args.top = number(value()?)?,
            "--timeout" => args.timeout = number(value()?)? as u64,
            _ if args.file.is_none() && !arg.starts_with("--") => {
                args.file = Some(PathBuf::from(arg))
            }
            _ => return Err(format!("unexpected argument: {arg}")),
        }
    }
    if args.processes == 0 || args.threads == 0 {
        return Err("--processes and --threads must be at least 1".into());
    }
    Ok(args)
}

/// The word count flow, the same for the cluster and the local runtime: byte ranges per
/// reader (each worker reads its share on the cluster), words counted per chunk, then
/// `reduce_by_key` (combined per worker, partitioned by word, summed per partition).
fn word_count(file: &Path, readers: usize) -> Flow<impl ClusterPlan<Item = (Word, u64)> + use<>> {
    Flow::from_source(FileSource::new(file).readers(readers).block_size(1 << 20))
        .flat_map(|chunk: Chunk| chunk.word_counts())
        .reduce_by_key(|a, b| a + b, Partition::new())
}

/// The counts on the cluster, gathered at process 0.
fn count(config: &ClusterConfig, file: PathBuf) -> flowstage::Result<Option<Vec<(Word, u64)>>> {
    let readers = config.workers() * 4;
    cluster::collect(config, move || word_count(&file, readers))
}

fn report(counts: &mut [(Word, u64)], top: usize) {
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    println!("total {total}");
    println!("distinct {}", counts.len());
    counts.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (word, n) in counts.iter().take(top) {
        println!("{n}\t{word}");
    }
}

/// One process of the cluster.
fn process(args: &Args, index: usize) -> Result<(), Box<dyn std::error::Error>> {
    let config = match (&args.hosts, &args.hostfile) {
        (Some(hosts), _) => ClusterConfig::process(index, hosts.split(',')),
        (None, Some(path)) => ClusterConfig::from_hostfile(index, path)?,
        (None, None) => return Err("--process needs --hosts or --hostfile".into()),
    }
    .threads(args.threads)
    .connect_timeout(Duration::from_secs(args.timeout));
    let config = match std::env::var_os(ENV_SECRET) {
        Some(secret) => config.secret(secret.as_encoded_bytes()),
        // Without it, the run fails at once and says what to set.
        None => config,
    };
    let file = args.file.clone().ok_or("a cluster process needs FILE")?;
    if let Some(mut counts) = count(&config, file)? {
        report(&mut counts, args.top);
    }
    Ok(())
}

/// The launcher: N local processes on free ports, checked against the local runtime.
fn launch(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let file = match &args.file {
        Some(file) => file.clone(),
        None => {
            let path = std::env::temp_dir().join("flowstage-cluster-example-8mb.txt");
            let text = Corpus::new(8 << 20).generate();
            if std::fs::metadata(&path).map(|m| m.len()).ok() != Some(text.len() as u64) {
                let partial = path.with_extension(format!("{}.partial", std::process::id()));
                std::fs::write(&partial, &text)?;
                std::fs::rename(&partial, &path)?;
            }
            path
        }
    };
    // Free ports: bind them all, note them, let them go.
    let listeners = (0..args.processes)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let hosts = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<Result<Vec<_>, _>>()?
        .join(",");
    drop(listeners);
    // A fresh secret for this cluster of local processes.
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| e.to_string())?;
    let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let exe = std::env::current_exe()?;
    let out = std::env::temp_dir().join(format!(
        "flowstage-cluster-example-{}.out",
        std::process::id()
    ));
    let started = Instant::now();
    let mut children = Vec::new();
    for index in 0..args.processes {
        let mut command = Command::new(&exe);
        command
            .arg(&file)
            .args(["--process", &index.to_string(), "--hosts", &hosts])
            .args([
                "--threads",
                &args.threads.to_string(),
                "--top",
                &args.top.to_string(),
            ])
            .args(["--timeout", &args.timeout.to_string()])
            .env(ENV_SECRET, &secret)
            .stdin(Stdio::null());
        if index == 0 {
            command.stdout(std::fs::File::create(&out)?);
        } else {
            // Timely reports connection attempts on stdout.
            command.stdout(Stdio::null());
        }
        children.push(command.spawn()?);
    }
    // Wait for all; on a failure or the timeout, stop the rest.
    let deadline = started + Duration::from_secs(args.timeout);
    let mut failed = None;
    for (index, child) in children.iter_mut().enumerate() {
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() && failed.is_none() {
                    failed = Some(format!("process {index} exited with {status}"));
                }
                break;
            }
            if Instant::now() >= deadline || failed.is_some() {
                failed.get_or_insert(format!("process {index} ran past {}s", args.timeout));
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(failed) = failed {
        for child in &mut children {
            let _ = child.kill();
        }
        return Err(failed.into());
    }
    let elapsed = started.elapsed();
    // Timely reports its connection attempts on stdout too: keep only the counts.
    let printed: String = std::fs::read_to_string(&out)?
        .lines()
        .filter(|line| !line.starts_with("awaiting connections") && !line.starts_with("worker "))
        .map(|line| format!("{line}\n"))
        .collect();
    let _ = std::fs::remove_file(&out);
    print!("{printed}");
    // The same counts as the local runtime's.
    let local: Vec<(Word, u64)> = word_count(&file, 4).collect()?;
    let total: u64 = local.iter().map(|(_, n)| n).sum();
    let expected = format!("total {total}\ndistinct {}\n", local.len());
    if !printed.starts_with(&expected) {
        return Err(
            format!("the cluster's counts differ from the local run's:\n{expected}").into(),
        );
    }
    eprintln!(
        "{} processes x {} workers: {elapsed:.2?}, totals equal to the local run's",
        args.processes, args.threads
    );
    Ok(())
}

fn main() {
    let outcome = parse_args()
        .map_err(Into::into)
        .and_then(|args| match args.process {
            Some(index) => process(&args, index),
            None => launch(&args),
        });
    if let Err(error) = outcome {
        eprintln!("cluster_word_count: {error}");
        std::process::exit(1);
    }
}
