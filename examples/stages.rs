//! A job queue drained by a stage pipeline.
//!
//! `cargo run --release --example stages`
//!
//! ```text
//!  feeder thread ──push──▶ Mutex<VecDeque>  (an "external queue", often empty)
//!                                │ polled on demand
//!                         [producer: poll]
//!                                │ raw lines
//!                     [producer-consumer: parse]
//!                        │ jobs            │ jobs
//!              [supervisor A: 4]   [supervisor B: 4]   async workers, restarted on failure
//! ```
//!
//! The producer never blocks waiting for the queue: when it finds nothing it returns no
//! events, and the runtime asks it again after `retry_interval` (the no-stall rule). When
//! the feeder has closed the queue and it is empty, the producer returns
//! `Produced::Finished`, completion travels down the pipeline and `run()` returns.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use flowstage::stage::{
    ConsumerOptions, Pipeline, Produced, ProducerConsumerOptions, ProducerOptions, Restart,
    SubscribeOptions, Supervisor, SupervisorOptions, poll_fn, producer_consumer_fn,
};

/// How many jobs the feeder puts in the queue.
const JOBS: u64 = 300;

/// The external queue: jobs as raw text, and whether more will come.
#[derive(Default)]
struct Queue {
    lines: VecDeque<String>,
    closed: bool,
}

/// A parsed, enriched job.
#[derive(Debug, Clone)]
struct Job {
    id: u64,
    kind: &'static str,
    /// How long "processing" takes.
    cost: Duration,
}

/// Parses `"<id>:<kind>"` and adds what the workers need (the cost of each kind).
fn parse(line: &str) -> Option<Job> {
    let (id, kind) = line.split_once(':')?;
    let (kind, millis) = match kind {
        "thumbnail" => ("thumbnail", 1),
        "resize" => ("resize", 2),
        "transcode" => ("transcode", 5),
        _ => return None,
    };
    Some(Job {
        id: id.parse().ok()?,
        kind,
        cost: Duration::from_millis(millis),
    })
}

/// Fills the queue in bursts of 1..=8 jobs at irregular intervals (0..20 ms), then closes it.
fn feed(queue: Arc<Mutex<Queue>>) {
    const KINDS: [&str; 3] = ["thumbnail", "resize", "transcode"];
    let mut random = 0x2545_f491_4f6c_dd1du64; // xorshift: irregular, but the same every run
    let mut next = || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        random
    };
    let mut id = 0;
    while id < JOBS {
        thread::sleep(Duration::from_millis(next() % 20));
        let mut queue = queue.lock().unwrap();
        for _ in 0..1 + next() % 8 {
            if id < JOBS {
                queue
                    .lines
                    .push_back(format!("{id}:{}", KINDS[(next() % 3) as usize]));
                id += 1;
            }
        }
        // Closed under the same lock as the last push: the producer cannot miss a job.
        queue.closed = id == JOBS;
    }
}

fn main() -> Result<(), flowstage::FlowError> {
    let queue = Arc::new(Mutex::new(Queue::default()));
    let feeder = {
        let queue = queue.clone();
        thread::spawn(move || feed(queue))
    };

    let mut pipeline = Pipeline::new();

    // Producer: takes up to `demand` lines from the queue. An empty poll is no problem:
    // returning no events keeps the demand, and the runtime polls again 2 ms later.
    let (polls, empty_polls) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (poll_count, empty_count) = (polls.clone(), empty_polls.clone());
    let source = pipeline.producer_with(
        poll_fn(move |demand: usize| {
            poll_count.fetch_add(1, Ordering::Relaxed);
            let mut queue = queue.lock().unwrap();
            let take = demand.min(queue.lines.len());
            let lines: Vec<String> = queue.lines.drain(..take).collect();
            if lines.is_empty() {
                empty_count.fetch_add(1, Ordering::Relaxed);
            }
            if queue.closed && queue.lines.is_empty() {
                Produced::Finished(lines)
            } else {
                Produced::Events(lines)
            }
        }),
        ProducerOptions::new()
            .name("queue poller")
            .retry_interval(Duration::from_millis(2)),
    );

    // Producer-consumer: parses each line (dropping malformed ones) into a `Job`.
    let (parse_in, parse_out) = pipeline.producer_consumer_with(
        producer_consumer_fn(|lines: Vec<String>| {
            lines
                .iter()
                .filter_map(|line| parse(line))
                .collect::<Vec<Job>>()
        }),
        ProducerConsumerOptions::new().name("parse"),
    );
    pipeline.subscribe(&parse_in, &source, SubscribeOptions::new().max_demand(50))?;

    // Consumers: two supervisors of 4 async workers each; the default (demand) dispatcher
    // gives each batch to whichever has asked for more. Every 25th job fails on its first
    // attempt; `Restart::Permanent` runs it again (at most 20 restarts per second).
    let handled = Arc::new(AtomicU64::new(0));
    let failed_once = Arc::new(Mutex::new(HashSet::new()));
    let mut counters = Vec::new();
    for name in ["workers A", "workers B"] {
        let (handled, failed_once) = (handled.clone(), failed_once.clone());
        let options = SupervisorOptions::new(4)
            .restart(Restart::Permanent)
            .max_restarts(20, Duration::from_secs(1));
        let supervisor = Supervisor::new(options, move |job: Job| {
            let (handled, failed_once) = (handled.clone(), failed_once.clone());
            async move {
                if job.id % 25 == 0 && failed_once.lock().unwrap().insert(job.id) {
                    return Err(format!("job {} ({}): flaky backend", job.id, job.kind).into());
                }
                tokio::time::sleep(job.cost).await; // the "processing"
                handled.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        });
        counters.push(supervisor.counters());
        // Demand matching the concurrency: at most 4 jobs asked for at a time.
        let subscribe = supervisor.subscribe_options();
        let workers = pipeline.consumer_with(supervisor, ConsumerOptions::new().name(name));
        pipeline.subscribe(&workers, &parse_out, subscribe)?;
    }

    let started = Instant::now();
    let report = pipeline.run()?;
    feeder.join().expect("feeder thread");

    println!(
        "handled {} of {JOBS} jobs in {:.2?}",
        handled.load(Ordering::Relaxed),
        started.elapsed()
    );
    println!(
        "producer polled the queue {} times, {} found it empty (retried after the interval)",
        polls.load(Ordering::Relaxed),
        empty_polls.load(Ordering::Relaxed)
    );
    // The report has every stage's counters, in the order the stages were added.
    for stage in &report.stages {
        println!(
            "  {:<13} in {:>3}  out {:>3}  dropped {}",
            stage.stage.name, stage.events_in, stage.events_out, stage.dropped
        );
    }
    for (stage, c) in report.stages[2..].iter().zip(&counters) {
        println!(
            "  {:<13} {} failures, {} restarts, {} given up",
            stage.stage.name,
            c.failures(),
            c.restarts(),
            c.given_up()
        );
    }
    assert_eq!(handled.load(Ordering::Relaxed), JOBS);
    Ok(())
}
