//! Running a test's flow on a cluster of processes: the test binary starts itself again,
//! once per process, running only the same test (`--exact`) with the process's index,
//! the hosts (free 127.0.0.1 ports) and the shared secret in the environment; each child
//! writes its result to a file the parent reads. Every child runs under a watchdog: one
//! that does not end in time is killed and the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowstage::FlowError;
use flowstage::cluster::{ClusterConfig, ENV_HOSTS, ENV_INDEX, ENV_SECRET, ENV_THREADS};

/// Where a child process writes its result (set only in children).
pub const ENV_OUT: &str = "FLOWSTAGE_CLUSTER_TEST_OUT";
/// A child's handshake timeout in milliseconds, when the test sets one.
pub const ENV_HANDSHAKE: &str = "FLOWSTAGE_CLUSTER_TEST_HANDSHAKE_MS";
/// How long a child may run before the parent kills it and fails the test.
pub const CHILD_WATCHDOG: Duration = Duration::from_secs(60);
/// The shared secret of the test clusters.
pub const SECRET: &str = "flowstage test cluster secret";

/// In a child: the file to write the result to.
pub fn child_output() -> Option<PathBuf> {
    std::env::var_os(ENV_OUT).map(PathBuf::from)
}

/// In a child: runs `part` with the configuration from the environment and writes its
/// result for the parent. Returns whether this is a child (the test then ends).
pub fn run_child(
    part: impl FnOnce(ClusterConfig) -> flowstage::Result<Option<Vec<String>>>,
) -> bool {
    let Some(out) = child_output() else {
        return false;
    };
    let mut config = ClusterConfig::from_env()
        .expect("the parent sets a valid configuration")
        .connect_timeout(Duration::from_secs(20));
    if let Some(ms) = std::env::var(ENV_HANDSHAKE)
        .ok()
        .and_then(|ms| ms.parse().ok())
    {
        config = config.handshake_timeout(Duration::from_millis(ms));
    }
    let started = Instant::now();
    let text = match part(config) {
        Ok(Some(lines)) => format!("ok\n{}", lines.join("\n")),
        Ok(None) => "ok-none\n".to_string(),
        Err(error) => format!(
            "err\n{}\n{error}\nafter {:?}",
            error_kind(&error),
            started.elapsed()
        ),
    };
    let partial = out.with_extension("partial");
    std::fs::write(&partial, text).expect("the child writes its result");
    std::fs::rename(&partial, &out).expect("the child publishes its result");
    true
}

pub fn error_kind(error: &FlowError) -> &'static str {
    match error {
        FlowError::Cluster { .. } => "Cluster",
        FlowError::Unsupported { .. } => "Unsupported",
        FlowError::StageFailed { .. } => "StageFailed",
        FlowError::StagePanicked { .. } => "StagePanicked",
        FlowError::Config(_) => "Config",
        _ => "Other",
    }
}

/// What a child reported.
#[derive(Debug, PartialEq, Eq)]
pub enum Reported {
    Lines(Vec<String>),
    Nothing,
    Error { kind: String, text: String },
}

pub fn read_report(path: &Path) -> Option<Reported> {
    let text = std::fs::read_to_string(path).ok()?;
    let (head, rest) = text.split_once('\n').unwrap_or((&text, ""));
    Some(match head {
        "ok" => Reported::Lines(rest.lines().map(String::from).collect()),
        "ok-none" => Reported::Nothing,
        _ => {
            let (kind, text) = rest.split_once('\n').unwrap_or((rest, ""));
            Reported::Error {
                kind: kind.to_string(),
                text: text.to_string(),
            }
        }
    })
}

/// `n` distinct free ports on 127.0.0.1 (bound together, then released).
pub fn free_hosts(n: usize) -> Vec<String> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| format!("127.0.0.1:{}", l.local_addr().expect("bound").port()))
        .collect()
}

/// Child processes of one test.
pub struct Processes {
    pub children: Vec<(Child, PathBuf)>,
    pub dir: PathBuf,
}

impl Processes {
    /// Starts processes `indices` of `hosts.len()` (each running `test`), `threads`
    /// workers each.
    pub fn start(
        test: &str,
        hosts: &[String],
        indices: &[usize],
        threads: usize,
        env: &[(&str, String)],
    ) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "flowstage-cluster-{test}-{}-{}",
            std::process::id(),
            hosts.join("-").replace([':', '.'], "_")
        ));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let exe = std::env::current_exe().expect("the test binary");
        let children = indices
            .iter()
            .map(|&index| {
                let out = dir.join(format!("process-{index}.out"));
                let _ = std::fs::remove_file(&out);
                let stderr = std::fs::File::create(dir.join(format!("process-{index}.err")))
                    .expect("a log file");
                let child = Command::new(&exe)
                    .args([test, "--exact", "--nocapture", "--test-threads=1"])
                    .env(ENV_OUT, &out)
                    .env(ENV_INDEX, index.to_string())
                    .env(ENV_HOSTS, hosts.join(","))
                    .env(ENV_THREADS, threads.to_string())
                    .env(ENV_SECRET, SECRET)
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(stderr)
                    .spawn()
                    .expect("the test binary starts");
                (child, out)
            })
            .collect();
        Processes { children, dir }
    }

    /// Waits for every child to end (killing all on the watchdog) and returns what each
    /// reported.
    pub fn finish(mut self) -> Vec<Reported> {
        let deadline = Instant::now() + CHILD_WATCHDOG;
        for (child, _) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() >= deadline => {
                        self.kill_all();
                        panic!("watchdog: a cluster process ran past {CHILD_WATCHDOG:?}");
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.children
            .iter()
            .enumerate()
            .map(|(i, (_, out))| {
                read_report(out).unwrap_or_else(|| {
                    let log = std::fs::read_to_string(self.dir.join(format!("process-{i}.err")))
                        .unwrap_or_default();
                    panic!("process {i} reported nothing; its stderr:\n{log}")
                })
            })
            .collect()
    }

    pub fn kill_all(&mut self) {
        for (child, _) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        // A failing test must not leave processes behind.
        self.kill_all();
    }
}

/// Runs `test` on `processes` processes of `threads` workers; retries once with new
/// ports if one was taken meanwhile.
pub fn run_processes(
    test: &str,
    processes: usize,
    threads: usize,
    env: &[(&str, String)],
) -> Vec<Reported> {
    let indices: Vec<usize> = (0..processes).collect();
    let mut reports = Vec::new();
    for _attempt in 0..2 {
        let hosts = free_hosts(processes);
        reports = Processes::start(test, &hosts, &indices, threads, env).finish();
        let clash = reports.iter().any(
            |r| matches!(r, Reported::Error { text, .. } if text.contains("ddress already in use")),
        );
        if !clash {
            break;
        }
    }
    reports
}

/// Process 0 gathered exactly `expected`; the others reported nothing to gather.
pub fn assert_gathered(reports: &[Reported], expected: &[String]) {
    assert!(!expected.is_empty(), "the reference result is empty");
    match &reports[0] {
        Reported::Lines(lines) => {
            assert_eq!(lines.len(), expected.len(), "distinct results differ");
            assert_eq!(lines, expected);
        }
        other => panic!("process 0 reported {other:?}"),
    }
    for (i, report) in reports.iter().enumerate().skip(1) {
        assert_eq!(report, &Reported::Nothing, "process {i}");
    }
}
