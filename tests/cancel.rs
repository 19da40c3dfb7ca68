//! Cancellation reaches what blocks: dropping a flow's iterator returns while a user
//! closure is still blocked; the library's own readers (a child process's pipe, a user
//! type over a descriptor, standard input) stop, and close their descriptor, soon after
//! the flow is dropped although their writer stays open and silent; what cannot be
//! interrupted (a blocked closure, a user's blocked `Read`) is counted in
//! `flowstage::lingering` until it returns, and then leaves nothing behind.
//!
//! Counts of threads (`/proc/self/task`) and descriptors (`/proc/self/fd`) are
//! process-wide, so this binary has one test, which runs every scenario in turn (as
//! `tests/leaks.rs` does). Standard input is the test process's own: that scenario runs
//! in a child process (this test binary again, told so by an environment variable) whose
//! standard input is a pipe the parent keeps open.
//!
//! Bounds on time ([`PROMPT`]) are far above what they check (50 ms polls, a 200 ms
//! grace), so that a loaded machine does not fail them; without the fixes they tested,
//! the waits they bound never end.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::guarded;
use flowstage::flow::Flow;
use flowstage::source::{Delimiter, ReaderSource};

/// How soon a cancelled reader must be gone, and a dropped iterator must return.
const PROMPT: Duration = Duration::from_secs(1);

/// How long counts may take to come back once blocked user code returned.
const SETTLE: Duration = Duration::from_secs(10);

/// Set in the child process that reads its standard input.
const CHILD: &str = "FLOWSTAGE_CANCEL_TEST_STDIN";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    threads: usize,
    files: usize,
}

fn counts() -> Counts {
    let entries = |dir: &str| std::fs::read_dir(dir).expect(dir).count();
    Counts {
        threads: entries("/proc/self/task"),
        files: entries("/proc/self/fd"),
    }
}

/// The counts once what lives as long as the process has started: a first runtime
/// starts tokio's signal handling, whose socket pair stays.
fn baseline() -> Counts {
    let warm: Vec<u64> = guarded(|| {
        Flow::from_iter(0..10u64)
            .into_iter()
            .collect::<Result<_, _>>()
    })
    .expect("warm-up");
    assert_eq!(warm.len(), 10);
    counts()
}

/// Waits up to `within` for the counts to be `baseline` again; fails with what it saw.
fn back_within(what: &str, baseline: Counts, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = counts();
        if now == baseline {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {now:?} {within:?} after, {baseline:?} before"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child that writes `output` on a pipe and keeps it open (silent) for a minute.
fn silent_writer(output: &str) -> (std::process::Child, ChildStdout) {
    let mut child = Command::new("sh")
        .args(["-c", &format!("printf '{output}'; exec sleep 60")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sh");
    let stdout = child.stdout.take().expect("piped");
    (child, stdout)
}

/// A user's reader over a descriptor, which `ReaderSource::new` cannot know.
struct Device(ChildStdout);

impl Read for Device {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl AsFd for Device {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Takes the first chunk of `source` (its reader is then waiting for more), drops the
/// flow, and checks that the reader thread and its descriptor are gone within [`PROMPT`],
/// counted nowhere as left behind.
fn reader_stops<R: Read + Send + 'static>(what: &str, source: ReaderSource<R>, baseline: Counts) {
    let lingering = flowstage::lingering();
    let first = guarded(move || {
        Flow::from_source(source.delimiter(Delimiter::Line).block_size(4))
            .into_iter()
            .next()
            .expect("a chunk")
            .expect("no error")
    });
    assert_eq!(first.bytes(), b"one\n", "{what}");
    back_within(what, baseline, PROMPT);
    assert_eq!(flowstage::lingering(), lingering, "{what}");
}

/// A signal from blocked user code, and its release.
struct Gate {
    entered: crossbeam_channel::Sender<()>,
    release: crossbeam_channel::Receiver<()>,
}

impl Gate {
    /// The gate, the signal that code entered it, and its release.
    fn new() -> (
        Gate,
        crossbeam_channel::Receiver<()>,
        crossbeam_channel::Sender<()>,
    ) {
        let (entered, on_enter) = crossbeam_channel::unbounded();
        let (release, on_release) = crossbeam_channel::unbounded();
        let gate = Gate {
            entered,
            release: on_release,
        };
        (gate, on_enter, release)
    }

    fn block(&self) {
        let _ = self.entered.send(());
        let _ = self.release.recv();
    }
}

/// A user's reader that gives `one\n`, then blocks in its next `read` until released.
struct Blocking {
    gate: Gate,
    given: bool,
}

impl Read for Blocking {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !std::mem::replace(&mut self.given, true) {
            let n = buf.len().min(4);
            buf[..n].copy_from_slice(&b"one\n"[..n]);
            return Ok(n);
        }
        self.gate.block();
        Ok(0)
    }
}

/// Drops `iterator` once `on_enter` says user code is blocked: the drop must return while
/// it still is, counting one thread left behind; released, it ends and leaves nothing.
fn drop_returns_while_blocked<T: Send + 'static>(
    what: &str,
    iterator: flowstage::sink::FlowIter<T>,
    on_enter: crossbeam_channel::Receiver<()>,
    release: crossbeam_channel::Sender<()>,
    baseline: Counts,
) {
    let before = flowstage::lingering();
    let elapsed = guarded(move || {
        on_enter.recv().expect("user code entered");
        let started = Instant::now();
        drop(iterator);
        started.elapsed()
    });
    assert!(elapsed < PROMPT, "{what}: drop took {elapsed:?}");
    let left = flowstage::lingering();
    assert_eq!(
        (left.threads(), left.total()),
        (before.threads() + 1, before.total() + 1),
        "{what}: the blocked thread is counted"
    );
    release.send(()).expect("the blocked code waits");
    back_within(what, baseline, SETTLE);
    let after = flowstage::lingering();
    assert_eq!(
        (after.threads(), after.total()),
        (before.threads(), before.total() + 1),
        "{what}: the thread ended"
    );
}

/// The child's part: its standard input is a pipe holding `one\n`, left open.
fn stdin_reader_stops() {
    reader_stops("stdin", flowstage::source::stdin(), baseline());
}

#[test]
fn cancelled_readers_stop_and_blocked_user_code_is_left_behind_counted() {
    if std::env::var_os(CHILD).is_some() {
        return stdin_reader_stops();
    }
    let baseline = baseline();

    let (mut child, stdout) = silent_writer("one\\ntwo");
    reader_stops(
        "a child's pipe",
        ReaderSource::new(stdout, "child"),
        baseline,
    );
    child.kill().expect("kill");
    child.wait().expect("wait");

    let (mut child, stdout) = silent_writer("one\\ntwo");
    reader_stops(
        "a user's reader over a descriptor",
        ReaderSource::from_fd(Device(stdout), "device"),
        baseline,
    );
    child.kill().expect("kill");
    child.wait().expect("wait");

    // Standard input, in a child process whose input stays open.
    let mut stdin_child = Command::new(std::env::current_exe().expect("this test"))
        .args([
            "--exact",
            "cancelled_readers_stop_and_blocked_user_code_is_left_behind_counted",
        ])
        .env(CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("this test again");
    let mut input = stdin_child.stdin.take().expect("piped");
    input.write_all(b"one\ntwo").expect("write");
    let output = guarded(move || stdin_child.wait_with_output().expect("the child"));
    drop(input);
    assert!(
        output.status.success(),
        "stdin: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(counts(), baseline, "the child is gone");

    // A closure blocked inside a stage.
    let (gate, on_enter, release) = Gate::new();
    let iterator = Flow::from_iter(0..1_000_000u64)
        .map(move |x| {
            if x == 0 {
                gate.block();
            }
            x
        })
        .into_iter();
    drop_returns_while_blocked("a blocked closure", iterator, on_enter, release, baseline);

    // A user's `Read` blocked in a `ReaderSource`.
    let (gate, on_enter, release) = Gate::new();
    let source = ReaderSource::new(Blocking { gate, given: false }, "blocking")
        .delimiter(Delimiter::Line)
        .block_size(4);
    let mut iterator = Flow::from_source(source).into_iter();
    let first = guarded(move || {
        let first = iterator.next().expect("a chunk").expect("no error");
        (first, iterator)
    });
    assert_eq!(first.0.bytes(), b"one\n");
    drop_returns_while_blocked("a blocked Read", first.1, on_enter, release, baseline);
}
