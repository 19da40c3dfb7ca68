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

/// A `redis-server` of this test's own, without persistence, stopped on drop.
struct Server {
    child: Child,
    url: String,
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
        ensure_redis_server();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install it with `apt-get install -y redis-server` (.ci/run does)")
            });
        let server = Server {
            child,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(mut connection) =
                redis::Client::open(server.url.as_str()).and_then(|c| c.get_connection())
            {
                if redis::cmd("PING").query::<String>(&mut connection).is_ok() {
                    return server;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {port} did not answer within 10 s");
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
    }
}

fn number(entry: &StreamEntry) -> u64 {
    entry
        .text("n")
        .and_then(|n| n.parse().ok())
        .expect("a number in field n")
}

/// The `Broker` error a run ended with (the source's own error is the run's).
fn broker_error(error: &FlowError) -> (&str, &str) {
    match error.root_cause() {
        FlowError::Broker { url, message } => (url, message),
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
