//! Redis Streams against a real `redis-server`, started by the fixture on a free loopback
//! port. When the machine has none, the fixture installs it from Debian's packages first
//! (as `.ci/run` does), so the README's test command passes on a fresh machine.
#![cfg(feature = "redis")]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstage::FlowError;
use flowstage::flow::{Flow, Shuffle};
use flowstage::sink::{Outgoing, RedisAck, RedisStreamSink};
use flowstage::source::{EntryId, RedisStreamSource, StreamEntry};

/// A `redis-server` of this test's own, stopped (killed) on drop. Without persistence,
/// unless started with [`Server::persistent`]: then it keeps an append-only file in a
/// folder of its own, removed on drop, and can be killed and started again.
struct Server {
    child: Child,
    url: String,
    port: u16,
    args: Vec<String>,
    dir: Option<std::path::PathBuf>,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// Makes sure `redis-server` is installed: from Debian's packages, once, if missing.
fn ensure_redis_server() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if found {
            return;
        }
        eprintln!("redis-server is missing: installing it from Debian's packages");
        let installed = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server",
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        assert!(
            installed,
            "redis-server is missing and `apt-get install -y redis-server` failed: install it \
             by hand"
        );
    });
}

impl Server {
    fn start() -> Server {
        Server::with_args(&["--save", "", "--appendonly", "no"], None)
    }

    /// A server that writes every command to its append-only file before answering
    /// (`appendfsync always`), so a kill loses nothing it acknowledged.
    fn persistent() -> Server {
        let dir = std::env::temp_dir().join(format!(
            "flowstage-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("a folder for the append-only file");
        let dir_arg = dir.to_str().expect("a UTF-8 temporary folder").to_string();
        Server::with_args(
            &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
                &dir_arg,
            ],
            Some(dir),
        )
    }

    fn with_args(args: &[&str], dir: Option<std::path::PathBuf>) -> Server {
        ensure_redis_server();
        let port = free_port();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let child = Server::spawn(port, &args);
        // A server with a password is reached with it.
        let url = match args.iter().position(|a| a == "--requirepass") {
            Some(i) => format!("redis://:{}@127.0.0.1:{port}", args[i + 1]),
            None => format!("redis://127.0.0.1:{port}"),
        };
        let mut server = Server {
            child,
            url,
            port,
            args,
            dir,
        };
        server.wait_until_up();
        server
    }

    fn spawn(port: u16, args: &[String]) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install it with `apt-get install -y redis-server` (.ci/run does)")
            })
    }

    /// Waits for the server to answer.
    fn wait_until_up(&mut self) {
        let url = self.url.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut connection) =
                redis::Client::open(url.as_str()).and_then(|c| c.get_connection())
            {
                if redis::cmd("PING").query::<String>(&mut connection).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer within 10 s",
            self.port
        );
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port and files.
    fn restart(&mut self) {
        self.child = Server::spawn(self.port, &self.args);
        self.wait_until_up();
    }

    fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn add(&self, stream: &str, n: u64) {
        let mut connection = self.connection();
        let mut pipe = redis::pipe();
        for i in 0..n {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("n")
                .arg(i)
                .ignore();
        }
        pipe.query::<()>(&mut connection).unwrap();
    }

    /// What a consumer that crashed leaves: the group (created if missing) has read
    /// `count` new entries as `consumer`, acknowledged none. Their IDs.
    fn read_and_crash(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Vec<String> {
        let mut connection = self.connection();
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg(&["CREATE", stream, group, "0"][..])
            .query(&mut connection);
        if let Err(error) = created {
            assert_eq!(error.code(), Some("BUSYGROUP"), "{error}");
        }
        let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg(&["GROUP", group, consumer, "COUNT", &count.to_string()][..])
            .arg(&["STREAMS", stream, ">"][..])
            .query(&mut connection)
            .unwrap();
        read.keys
            .into_iter()
            .flat_map(|key| key.ids)
            .map(|id| id.id)
            .collect()
    }

    fn pending(&self, stream: &str, group: &str) -> u64 {
        let reply: redis::Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .query(&mut self.connection())
            .unwrap();
        match reply {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Int(n)) => *n as u64,
                other => panic!("XPENDING: {other:?}"),
            },
            other => panic!("XPENDING: {other:?}"),
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn number(entry: &StreamEntry) -> u64 {
    entry
        .text("n")
        .and_then(|n| n.parse().ok())
        .expect("a number in field n")
}

/// The `Broker` error under a run's error.
fn broker_error(error: &FlowError) -> (&str, &str) {
    let FlowError::StageFailed {
        source: Some(source),
        ..
    } = error
    else {
        panic!("expected StageFailed, got {error:?}");
    };
    match source.downcast_ref::<FlowError>() {
        Some(FlowError::Broker { url, message }) => (url, message),
        other => panic!("expected a Broker error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_consumer_loses_nothing_and_nothing_stays_pending() {
    let server = Server::start();
    const N: u64 = 3000;
    server.add("orders", N);

    // Consumer A processes slowly and is dropped mid-stream: what it read and did not
    // acknowledge stays pending under its name.
    let processed_a = Arc::new(Mutex::new(Vec::new()));
    let seen_a = processed_a.clone();
    // The shuffle lets the source read ahead of the slow processing, as a real flow does.
    let flow_a = Flow::from_source(
        RedisStreamSource::new(&server.url, "orders", "group", "a").max_count(200),
    )
    .shuffle(Shuffle::shuffle().stages(1).max_demand(400))
    .map(move |entry: StreamEntry| {
        std::thread::sleep(Duration::from_micros(300));
        seen_a.lock().unwrap().push(number(&entry));
        entry.id
    })
    .run_into_async(RedisAck::new(&server.url));
    let a = tokio::spawn(flow_a);
    let deadline = Instant::now() + Duration::from_secs(20);
    // Mid-stream: some entries processed, some read and not yet acknowledged.
    while processed_a.lock().unwrap().len() < 600 || server.pending("orders", "group") == 0 {
        assert!(Instant::now() < deadline, "consumer a made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.abort();
    let _ = a.await;
    let pending_after_crash = server.pending("orders", "group");
    assert!(
        pending_after_crash > 0,
        "the crash should leave entries pending"
    );

    // Consumer B reclaims A's pending entries once idle, and reads the rest.
    let processed_b = Arc::new(Mutex::new(Vec::new()));
    let seen_b = processed_b.clone();
    let source_b = RedisStreamSource::new(&server.url, "orders", "group", "b")
        .claim_idle(Duration::from_millis(200))
        .stop_when_idle(Duration::from_millis(800));
    let counters = source_b.counters();
    Flow::from_source(source_b)
        .map(move |entry: StreamEntry| {
            seen_b.lock().unwrap().push(number(&entry));
            entry.id
        })
        .run_into_async(RedisAck::new(&server.url))
        .await
        .unwrap();

    let a = processed_a.lock().unwrap().clone();
    let b = processed_b.lock().unwrap().clone();
    let all: BTreeSet<u64> = a.iter().chain(&b).copied().collect();
    assert_eq!(
        all,
        (0..N).collect::<BTreeSet<_>>(),
        "every entry processed at least once"
    );
    assert_eq!(
        server.pending("orders", "group"),
        0,
        "every entry acknowledged"
    );
    let duplicates = (a.len() + b.len()) as u64 - N;
    let in_both = a
        .iter()
        .collect::<BTreeSet<_>>()
        .intersection(&b.iter().collect())
        .count() as u64;
    assert_eq!(
        duplicates, in_both,
        "a duplicate is an entry both processed"
    );
    assert!(
        counters.reclaimed() >= pending_after_crash.min(1),
        "b reclaimed a's entries"
    );
    assert!(
        duplicates <= counters.reclaimed(),
        "only reclaimed entries can be duplicates"
    );
    println!(
        "a processed {}, b processed {} ({} reclaimed, {} new): {duplicates} duplicates",
        a.len(),
        b.len(),
        counters.reclaimed(),
        counters.read()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_share_a_stream_and_a_transactional_sink_writes_each_once() {
    let server = Server::start();
    const N: u64 = 2000;
    server.add("in", N);
    let run = |name: &'static str| {
        Flow::from_source(
            RedisStreamSource::new(&server.url, "in", "workers", name)
                .max_count(100)
                .stop_when_idle(Duration::from_millis(500)),
        )
        .map(|entry: StreamEntry| Outgoing {
            fields: vec![(
                "double".into(),
                (number(&entry) * 2).to_string().into_bytes(),
            )],
            ack: Some(entry.id),
        })
        .run_into_async(RedisStreamSink::new(&server.url, "out"))
    };
    let (one, two) = tokio::join!(run("one"), run("two"));
    one.unwrap();
    two.unwrap();
    let mut connection = server.connection();
    let entries: Vec<HashMap<String, String>> = redis::cmd("XRANGE")
        .arg("out")
        .arg("-")
        .arg("+")
        .query::<redis::streams::StreamRangeReply>(&mut connection)
        .unwrap()
        .ids
        .into_iter()
        .map(|id| {
            id.map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap()))
                .collect()
        })
        .collect();
    let doubles: BTreeSet<u64> = entries
        .iter()
        .map(|e| e["double"].parse().unwrap())
        .collect();
    assert_eq!(entries.len() as u64, N, "each input written once");
    assert_eq!(doubles, (0..N).map(|n| n * 2).collect());
    assert_eq!(server.pending("in", "workers"), 0);
}

#[test]
fn a_broker_that_is_down_at_start_is_a_typed_error() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let error = Flow::from_source(
        RedisStreamSource::new(&url, "s", "g", "c").timeout(Duration::from_secs(1)),
    )
    .map(|entry: StreamEntry| entry.id)
    .run_into(RedisAck::new(&url))
    .unwrap_err();
    let (at, message) = broker_error(&error);
    assert_eq!(at, url);
    assert!(message.starts_with("cannot connect"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_broker_that_goes_away_mid_run_is_a_typed_error_not_a_hang() {
    let mut server = Server::start();
    server.add("s", 100_000);
    let url = server.url.clone();
    let processed = Arc::new(Mutex::new(0u64));
    let count = processed.clone();
    let run = std::thread::spawn(move || {
        let started = Instant::now();
        let result = Flow::from_source(
            RedisStreamSource::new(&url, "s", "g", "c")
                .max_count(100)
                .timeout(Duration::from_secs(1)),
        )
        .map(move |entry: StreamEntry| -> EntryId {
            std::thread::sleep(Duration::from_micros(200));
            *count.lock().unwrap() += 1;
            entry.id
        })
        .run_into(RedisAck::new(&url).timeout(Duration::from_secs(1)));
        (result, started.elapsed())
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while *processed.lock().unwrap() < 200 {
        assert!(
            Instant::now() < deadline,
            "no progress before the broker went away"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.stop();
    let stopped = Instant::now();
    let (result, _) = run.join().unwrap();
    let error = result.unwrap_err();
    let (at, _) = broker_error(&error);
    assert_eq!(at, server.url);
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "the run hung for {:?}",
        stopped.elapsed()
    );
}

/// Graceful shutdown of an endless Redis source: the drain stops it reading, and every
/// entry it read — counted by the source itself — is processed once and acknowledged:
/// nothing stays pending, unlike the crash above. Without the drain it never ends, and
/// the watchdog fails it.
#[test]
fn a_drained_redis_flow_acknowledges_everything_it_read() {
    let server = Server::start();
    const N: u64 = 20_000;
    server.add("jobs", N);
    let url = server.url.clone();
    let (read, processed) = common::guarded(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            // No `stop_when_idle`: without the drain this source never ends.
            let source = RedisStreamSource::new(&url, "jobs", "group", "worker").max_count(100);
            let counters = source.counters();
            let processed = Arc::new(Mutex::new(Vec::new()));
            let seen = processed.clone();
            let mut pipeline = flowstage::stage::Pipeline::new();
            let outputs = Flow::from_source(source)
                .shuffle(Shuffle::shuffle().stages(2).max_demand(200))
                .map(move |entry: StreamEntry| {
                    std::thread::sleep(Duration::from_micros(100));
                    seen.lock().unwrap().push(number(&entry));
                    entry.id
                })
                .into_stages(&mut pipeline)
                .unwrap();
            let ack = pipeline.consumer(RedisAck::new(&url));
            for output in &outputs {
                pipeline
                    .subscribe(&ack, output, flowstage::stage::SubscribeOptions::new())
                    .unwrap();
            }
            let running = pipeline.spawn().unwrap();
            while processed.lock().unwrap().len() < 2000 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            running.shutdown().await.expect("a drained run ends Ok");
            let processed = processed.lock().unwrap().clone();
            (counters.read(), processed)
        })
    });
    let distinct: BTreeSet<u64> = processed.iter().copied().collect();
    assert_eq!(distinct.len(), processed.len(), "an entry processed twice");
    assert_eq!(
        processed.len() as u64,
        read,
        "every entry the source read was processed"
    );
    assert!(read < N, "the drain stopped the reading");
    assert_eq!(
        server.pending("jobs", "group"),
        0,
        "every entry acknowledged"
    );
}

/// Processed entries of one run, recorded as they are processed.
fn recorder() -> (
    Arc<Mutex<Vec<u64>>>,
    impl Fn(&StreamEntry) + Send + Sync + 'static,
) {
    let processed = Arc::new(Mutex::new(Vec::new()));
    let seen = processed.clone();
    (processed, move |entry: &StreamEntry| {
        seen.lock().unwrap().push(number(entry))
    })
}

/// Runs `source` (which must stop when idle) into `RedisAck`; the entries it processed.
fn process_until_idle(source: RedisStreamSource, url: &str) -> Vec<u64> {
    let (processed, record) = recorder();
    Flow::from_source(source)
        .map(move |entry: StreamEntry| {
            record(&entry);
            entry.id
        })
        .run_into(RedisAck::new(url))
        .unwrap();
    processed.lock().unwrap().clone()
}

/// Entries processed in both runs: the duplicates an at-least-once restart may cause.
fn processed_twice(a: &[u64], b: &[u64]) -> u64 {
    let a: BTreeSet<u64> = a.iter().copied().collect();
    b.iter().filter(|n| a.contains(n)).count() as u64
}

/// The broker is killed mid-run (`kill -9`) while the flow holds entries it read and has
/// not acknowledged; started again from its append-only file, it still has them pending
/// under the consumer's name. The consumer, run again under that name, reads its own
/// pending list first — with the default `claim_idle` of 30 s nothing would take them
/// otherwise — then the rest: every entry processed at least once, none left pending.
#[test]
fn a_consumer_restarted_after_a_broker_crash_recovers_its_own_pending_entries() {
    let mut server = Server::persistent();
    const N: u64 = 3000;
    server.add("orders", N);
    let url = server.url.clone();

    let (processed_1, record) = recorder();
    let run_1 = std::thread::spawn(move || {
        Flow::from_source(
            RedisStreamSource::new(&url, "orders", "group", "worker")
                .max_count(200)
                .timeout(Duration::from_secs(1)),
        )
        // Reads ahead of the slow processing: entries in flight when the broker dies.
        .shuffle(Shuffle::shuffle().stages(1).max_demand(400))
        .map(move |entry: StreamEntry| {
            std::thread::sleep(Duration::from_micros(300));
            record(&entry);
            entry.id
        })
        .run_into(RedisAck::new(&url).timeout(Duration::from_secs(1)))
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while processed_1.lock().unwrap().len() < 600 || server.pending("orders", "group") == 0 {
        assert!(Instant::now() < deadline, "the first run made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    server.stop();
    let error = run_1.join().unwrap().unwrap_err();
    broker_error(&error);

    server.restart();
    let pending_after_restart = server.pending("orders", "group");
    assert!(
        pending_after_restart > 0,
        "the crash should leave entries pending"
    );
    let source = RedisStreamSource::new(&server.url, "orders", "group", "worker")
        .stop_when_idle(Duration::from_millis(300));
    let counters = source.counters();
    let processed_2 = process_until_idle(source, &server.url);

    let first = processed_1.lock().unwrap().clone();
    let second = processed_2;
    let all: BTreeSet<u64> = first.iter().chain(&second).copied().collect();
    let missing = (0..N).filter(|n| !all.contains(n)).count();
    assert_eq!(missing, 0, "entries never processed");
    assert_eq!(all.len() as u64, N, "entries that were never added");
    assert_eq!(server.pending("orders", "group"), 0, "none left pending");
    assert_eq!(
        counters.recovered(),
        pending_after_restart,
        "the second run read its own pending list again"
    );
    assert_eq!(counters.reclaimed(), 0, "nothing taken over from others");
    let duplicates = (first.len() + second.len()) as u64 - N;
    assert_eq!(
        duplicates,
        processed_twice(&first, &second),
        "a duplicate is an entry both runs processed"
    );
    assert!(
        duplicates <= counters.recovered(),
        "only recovered entries can be duplicates"
    );
    println!(
        "first run processed {} before the kill; {pending_after_restart} pending after the \
         restart; second run processed {} ({} recovered, {} new): {duplicates} duplicates",
        first.len(),
        second.len(),
        counters.recovered(),
        counters.read()
    );
}

/// An entry deleted from the stream after the consumer read it cannot be processed: the
/// restarted consumer acknowledges it instead of leaving it pending for ever.
#[test]
fn own_pending_entries_deleted_from_the_stream_are_acknowledged_not_processed() {
    let server = Server::start();
    server.add("jobs", 10);
    // A crashed run of consumer `worker`: read everything, acknowledged nothing.
    let ids = server.read_and_crash("jobs", "group", "worker", 10);
    let mut connection = server.connection();
    redis::cmd("XDEL")
        .arg("jobs")
        .arg(&ids[..4])
        .query::<()>(&mut connection)
        .unwrap();

    let source = RedisStreamSource::new(&server.url, "jobs", "group", "worker")
        .stop_when_idle(Duration::from_millis(100));
    let counters = source.counters();
    let processed = process_until_idle(source, &server.url);
    let mut processed = processed;
    processed.sort_unstable();
    assert_eq!(processed, (4..10).collect::<Vec<u64>>());
    assert_eq!(counters.recovered(), 6);
    assert_eq!(server.pending("jobs", "group"), 0);
}

/// A `claim_idle` far shorter than the processing: the source's own entries, read ahead
/// and waiting in the flow, are idle longer than it, yet the source never takes them
/// again — each entry is processed exactly once. (Taking over its own in-flight entries
/// processed 2 000 entries 20 000 times.)
#[test]
fn a_short_claim_idle_never_duplicates_the_sources_own_in_flight_entries() {
    let server = Server::start();
    const N: u64 = 2000;
    server.add("jobs", N);
    let (processed, record) = recorder();
    let source = RedisStreamSource::new(&server.url, "jobs", "group", "worker")
        .max_count(200)
        .claim_idle(Duration::from_millis(1))
        .stop_when_idle(Duration::from_millis(300));
    let counters = source.counters();
    Flow::from_source(source)
        .shuffle(Shuffle::shuffle().stages(1).max_demand(400))
        .map(move |entry: StreamEntry| {
            std::thread::sleep(Duration::from_micros(200));
            record(&entry);
            entry.id
        })
        .run_into(RedisAck::new(&server.url))
        .unwrap();
    let processed = processed.lock().unwrap().clone();
    let distinct: BTreeSet<u64> = processed.iter().copied().collect();
    assert_eq!(
        processed.len() as u64,
        N,
        "entries processed twice (or never)"
    );
    assert_eq!(distinct.len() as u64, N, "entries never processed");
    assert!(
        distinct.iter().all(|n| *n < N),
        "entries that were never added"
    );
    assert_eq!(counters.reclaimed(), 0);
    assert_eq!(counters.read(), N);
    assert_eq!(server.pending("jobs", "group"), 0);
}

/// A second consumer with a short `claim_idle` still takes over what a stopped consumer
/// left pending — only its own entries are passed over.
#[test]
fn a_short_claim_idle_takes_over_another_consumers_pending_entries() {
    let server = Server::start();
    server.add("jobs", 50);
    // Consumer `gone` read 20 entries and stopped.
    server.read_and_crash("jobs", "group", "gone", 20);
    std::thread::sleep(Duration::from_millis(20));
    let source = RedisStreamSource::new(&server.url, "jobs", "group", "worker")
        .claim_idle(Duration::from_millis(10))
        .stop_when_idle(Duration::from_millis(200));
    let counters = source.counters();
    let processed = process_until_idle(source, &server.url);
    let mut processed = processed;
    processed.sort_unstable();
    assert_eq!(processed, (0..50).collect::<Vec<u64>>());
    assert_eq!(counters.reclaimed(), 20);
    assert_eq!(counters.read(), 30);
    assert_eq!(server.pending("jobs", "group"), 0);
}

/// Settings Redis cannot honour are configuration errors before anything connects: a
/// `block` under 1 ms would be `BLOCK 0` (wait for ever), a zero `claim_idle` would take
/// over live consumers' entries, a zero `max_count` was silently read as 1.
#[test]
fn settings_redis_cannot_honour_are_config_errors() {
    // Nothing listens there: a config error must come before any connection.
    let url = format!("redis://127.0.0.1:{}", free_port());
    let source = || RedisStreamSource::new(&url, "s", "g", "c");
    let cases = [
        ("block", source().block(Duration::ZERO)),
        ("block", source().block(Duration::from_micros(999))),
        ("claim_idle", source().claim_idle(Duration::ZERO)),
        ("timeout", source().timeout(Duration::ZERO)),
        ("max_count", source().max_count(0)),
    ];
    for (setting, source) in cases {
        let error = Flow::from_source(source)
            .map(|entry: StreamEntry| entry.id)
            .run_into(RedisAck::new(&url))
            .unwrap_err();
        match &error {
            FlowError::Config(message) => assert!(message.contains(setting), "{message}"),
            other => panic!("{setting}: expected a Config error, got {other:?}"),
        }
    }
}

/// The shortest `block` allowed, 1 ms, reads and ends like any other.
#[test]
fn a_one_millisecond_block_reads_everything_and_ends() {
    let server = Server::start();
    server.add("s", 500);
    let (processed, record) = recorder();
    Flow::from_source(
        RedisStreamSource::new(&server.url, "s", "g", "c")
            .block(Duration::from_millis(1))
            .max_count(1)
            .stop_when_idle(Duration::from_millis(50)),
    )
    .map(move |entry: StreamEntry| {
        record(&entry);
        entry.id
    })
    .run_into(RedisAck::new(&server.url))
    .unwrap();
    assert_eq!(processed.lock().unwrap().len(), 500);
    assert_eq!(server.pending("s", "g"), 0);
}

/// `redis://user:password@host`: the password is used to connect and shown nowhere — not
/// in the `Debug` of the source, acknowledger or sink, not in the `Broker` error of a
/// refused login, an unreachable broker or an invalid address.
#[test]
fn the_password_of_a_broker_address_never_shows() {
    const PASSWORD: &str = "s3cret-pa55";
    let server = Server::with_args(&["--save", "", "--requirepass", PASSWORD], None);
    let good = format!("redis://default:{PASSWORD}@127.0.0.1:{}", server.port);
    let shown = format!("redis://default:***@127.0.0.1:{}", server.port);

    let source = RedisStreamSource::new(&good, "s", "g", "c");
    let debug = [
        format!("{source:?}"),
        format!("{:?}", RedisAck::new(&good)),
        format!("{:?}", RedisStreamSink::new(&good, "out")),
    ];
    for text in &debug {
        assert!(!text.contains(PASSWORD), "{text}");
        assert!(text.contains(&shown), "{text}");
    }

    // The password is what connects.
    server.add("s", 100);
    let (processed, record) = recorder();
    Flow::from_source(source.stop_when_idle(Duration::from_millis(100)))
        .map(move |entry: StreamEntry| {
            record(&entry);
            Outgoing {
                fields: vec![("n".into(), number(&entry).to_string().into_bytes())],
                ack: Some(entry.id),
            }
        })
        .run_into(RedisStreamSink::new(&good, "out"))
        .unwrap();
    assert_eq!(processed.lock().unwrap().len(), 100);
    assert_eq!(server.pending("s", "g"), 0);

    let wrong = format!("redis://default:wr0ng-{PASSWORD}@127.0.0.1:{}", server.port);
    let down = format!("redis://default:{PASSWORD}@127.0.0.1:{}", free_port());
    let invalid = format!("redis://default:{PASSWORD}@127.0.0.1:port/0");
    let failures = [
        (wrong.as_str(), "refused login"),
        (down.as_str(), "broker down"),
        (invalid.as_str(), "invalid address"),
    ];
    for (url, case) in failures {
        let error = Flow::from_source(
            RedisStreamSource::new(url, "s", "g", "c").timeout(Duration::from_secs(1)),
        )
        .map(|entry: StreamEntry| entry.id)
        .run_into(RedisAck::new(url))
        .unwrap_err();
        let (at, message) = match &error {
            FlowError::Broker { url, message } => (url.as_str(), message.as_str()),
            _ => broker_error(&error),
        };
        for text in [at, message, &error.to_string(), &format!("{error:?}")] {
            assert!(!text.contains(PASSWORD), "{case}: {text}");
        }
        assert!(at.contains(":***@127.0.0.1:"), "{case}: {at}");
    }
}

/// The fault matrix (`tests/faults.rs`) for the Redis source: its connection killed by the
/// broker (`CLIENT KILL`) at a random entry ends the run with a `StageFailed` naming the
/// source, carrying a `Broker` error — not a hang, not an `Ok` with entries missing.
#[test]
fn a_connection_killed_at_a_random_entry_fails_the_source() {
    let server = Server::start();
    const N: u64 = 2000;
    // Positions spread over the stream, in different read batches (`max_count` 50).
    for (run, at) in [0u64, 37, 512, 1499].into_iter().enumerate() {
        let stream = format!("s{run}");
        server.add(&stream, N);
        let url = server.url.clone();
        let killed = Arc::new(Mutex::new(None::<Instant>));
        let fired = killed.clone();
        let (result, ended) = common::guarded(move || {
            let result = Flow::from_source(
                RedisStreamSource::new(&url, &stream, "g", "c")
                    .max_count(50)
                    .timeout(Duration::from_secs(1)),
            )
            .map(move |entry: StreamEntry| {
                if number(&entry) == at {
                    let mut admin = redis::Client::open(url.as_str())
                        .and_then(|c| c.get_connection())
                        .expect("an admin connection");
                    redis::cmd("CLIENT")
                        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
                        .query::<u64>(&mut admin)
                        .expect("CLIENT KILL");
                    fired.lock().unwrap().get_or_insert_with(Instant::now);
                }
                entry.id
            })
            .collect::<Vec<EntryId>>();
            (result, Instant::now())
        });
        let error = result.expect_err("the run succeeded despite the killed connection");
        let stage = error.stage().expect("the error names a stage");
        assert!(stage.name.starts_with("source"), "at {at}: {error}");
        let (broker, _) = broker_error(&error);
        assert_eq!(broker, server.url);
        let killed = killed.lock().unwrap().expect("the kill happened");
        assert!(
            ended.duration_since(killed) < Duration::from_secs(5),
            "at {at}: the run hung for {:?} after the kill",
            ended.duration_since(killed)
        );
    }
}

/// A panic while processing Redis entries ends the run naming the source stage (the
/// processing is fused into it); what the run had read and not acknowledged — the
/// panicking entry among them — stays pending, and the consumer run again processes it.
#[test]
fn a_panic_processing_redis_entries_fails_the_run_and_a_rerun_recovers_them() {
    let server = Server::start();
    const N: u64 = 1000;
    const AT: u64 = 437;
    server.add("jobs", N);
    let (processed_1, record) = recorder();
    let url = server.url.clone();
    let error = common::guarded(move || {
        Flow::from_source(RedisStreamSource::new(&url, "jobs", "g", "c").max_count(100))
            .map(move |entry: StreamEntry| {
                assert!(number(&entry) != AT, "injected fault at entry {AT}");
                record(&entry);
                entry.id
            })
            .run_into(RedisAck::new(&url))
    })
    .unwrap_err();
    match &error {
        FlowError::StagePanicked { stage, message } => {
            assert!(stage.name.starts_with("source"), "{error}");
            assert!(message.contains("injected fault at entry 437"), "{message}");
        }
        other => panic!("expected StagePanicked, got {other:?}"),
    }
    assert!(server.pending("jobs", "g") > 0);

    let source = RedisStreamSource::new(&server.url, "jobs", "g", "c")
        .stop_when_idle(Duration::from_millis(200));
    let counters = source.counters();
    let processed_2 = process_until_idle(source, &server.url);
    let first = processed_1.lock().unwrap().clone();
    let second = processed_2;
    let all: BTreeSet<u64> = first.iter().chain(&second).copied().collect();
    assert_eq!(all.len() as u64, N, "every entry processed at least once");
    assert!(
        second.contains(&AT),
        "the entry that panicked was processed again"
    );
    assert!(counters.recovered() >= 1);
    assert_eq!(server.pending("jobs", "g"), 0);
}
