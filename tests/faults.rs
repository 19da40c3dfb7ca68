//! Fault injection: a panic, and separately an `Err`, at a random event in every kind of
//! stage — a source (user iterator, user producer), a fused chain, a partition's reducer,
//! a trigger (`on_trigger`, a custom trigger), `departition`, a join (key function, join
//! function), a sink (`run_into` consumer, `async_fn`), producers, producer-consumers and
//! consumers written against the stage layer, and a supervised worker; also at the end of
//! input (`handle_done`, a `Done` trigger, `departition`'s `done`), and seen through the
//! `into_iter` and `into_stream` terminals, where the error is the last item.
//!
//! Every callback kind the flow API takes panics itself in some test: besides those above,
//! [`CALLBACKS`] faults fused operators (`map`, `filter`, `flat_map`, `filter_map`,
//! `inspect`, `map_batch`), partition keys (`by_key`, `by_hash`), `reduce_mut`,
//! `group_by` and `uniq_by` keys and the timestamp function of fixed, sliding and session
//! windows. And every source kind fails: `from_par_iter` (the rayon job's closure),
//! `ReaderSource` (the reader panics, or returns an I/O error), `from_stream` (a panic in
//! `poll_next`), `from_poll`, `from_channel` (the stage reading it fails; the blocked
//! sender is released); the Redis source in `tests/redis.rs` (its connection killed at a
//! random entry; a panic processing its entries, recovered by the next run).
//!
//! Every run must end with a [`FlowError`] that names the stage and carries the message,
//! within 1 s of the fault (measured from the moment the fault fires to the moment the
//! run returns), and never hang (the shared watchdog, `tests/common`, fails a hung run).
//! Only `try_map` and `try_flat_map` return `Err`: where a callback has no fallible form
//! (reduce, triggers, departition, join, keys, timestamps) the `Err` case uses a `try_map`
//! fused into the same stage, and a source whose items cannot be errors (an iterator, a
//! stream) carries them as `Result` items to a `try_map` fused into the source.
//!
//! Each property runs 24 random cases (`FLOWSTAGE_FAULT_CASES` for more): the failing
//! event, panic or `Err`, the number of stages and the demand are drawn by proptest.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::try_guarded;
use flowstage::flow::{Flow, JoinMode, Partition, Shuffle};
use flowstage::sink::async_fn;
use flowstage::stage::{
    Consumer, ConsumerContext, ConsumerOptions, Pipeline, Produced, Producer, ProducerConsumer,
    ProducerConsumerOptions, ProducerOptions, Restart, SubscribeOptions, Supervisor,
    SupervisorOptions,
};
use flowstage::window::{Decision, Window};
use flowstage::{FlowError, StageError, StageKind};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// How long a run may take from its fault to its error.
const BOUND: Duration = Duration::from_secs(1);

/// Events per run: the fault fires at one of them.
const EVENTS: u64 = 300;

/// Panic or `Err`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Panic,
    Err,
}

fn how() -> impl Strategy<Value = How> {
    prop_oneof![Just(How::Panic), Just(How::Err)]
}

/// The moment a fault fired (the first time it did).
#[derive(Clone, Default)]
struct Fault(Arc<Mutex<Option<Instant>>>);

impl Fault {
    /// Records the moment and returns the message the fault carries.
    fn fire(&self, at: u64) -> String {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Instant::now);
        format!("injected fault at event {at}")
    }

    /// Records the moment and panics.
    fn panic(&self, at: u64) -> ! {
        let message = self.fire(at);
        panic!("{message}")
    }

    fn fired(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a faulty run must end with.
struct Expect {
    how: How,
    /// A part of the failed stage's name.
    stage: &'static str,
    kind: StageKind,
    at: u64,
}

/// Runs `body` under the watchdog and checks the error it ends with against `expect`.
fn check<T: Send + 'static>(
    expect: Expect,
    fault: Fault,
    body: impl FnOnce() -> flowstage::Result<T> + Send + 'static,
) -> Result<(), TestCaseError> {
    let watched = fault.clone();
    let (result, ended) = try_guarded(move || {
        let result = body();
        (result, Instant::now())
    })
    .map_err(TestCaseError::fail)?;
    let Err(error) = result else {
        return Err(TestCaseError::fail("the run succeeded despite the fault"));
    };
    let fired = watched
        .fired()
        .ok_or_else(|| TestCaseError::fail(format!("the fault never fired, yet: {error}")))?;
    let took = ended.saturating_duration_since(fired);
    prop_assert!(
        took < BOUND,
        "{:?} from the fault to the error: {}",
        took,
        error
    );
    let (stage, message) = match (&error, expect.how) {
        (FlowError::StagePanicked { stage, message }, How::Panic) => (stage, message),
        (FlowError::StageFailed { stage, message, .. }, How::Err) => (stage, message),
        (other, how) => {
            return Err(TestCaseError::fail(format!(
                "expected a {how:?} error, got {other:?}"
            )));
        }
    };
    prop_assert!(
        stage.name.contains(expect.stage),
        "stage {} should name {}",
        stage,
        expect.stage
    );
    prop_assert_eq!(stage.kind, expect.kind, "stage {}", stage);
    let wanted = format!("injected fault at event {}", expect.at);
    prop_assert!(message.contains(&wanted), "message {:?}", message);
    prop_assert!(error.to_string().contains(&wanted), "display {}", error);
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("FLOWSTAGE_FAULT_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(24),
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    }
}

/// A user producer emitting `0..EVENTS`, failing at event `at`.
struct FaultyProducer {
    next: u64,
    at: u64,
    how: How,
    fault: Fault,
}

impl Producer for FaultyProducer {
    type Item = u64;

    async fn handle_demand(&mut self, demand: usize) -> Result<Produced<u64>, StageError> {
        let mut events = Vec::with_capacity(demand);
        while events.len() < demand && self.next < EVENTS {
            if self.next == self.at {
                match self.how {
                    How::Panic => self.fault.panic(self.at),
                    How::Err => return Err(self.fault.fire(self.at).into()),
                }
            }
            events.push(self.next);
            self.next += 1;
        }
        Ok(if self.next == EVENTS {
            Produced::Finished(events)
        } else {
            Produced::Events(events)
        })
    }
}

/// A user producer-consumer passing events on, failing at event `at` (at `EVENTS`: in
/// `handle_done`, after the last event).
struct FaultyRelay {
    at: u64,
    how: How,
    fault: Fault,
}

impl ProducerConsumer for FaultyRelay {
    type In = u64;
    type Out = u64;

    async fn handle_events(
        &mut self,
        events: Vec<u64>,
        _context: &mut ConsumerContext,
    ) -> Result<Vec<u64>, StageError> {
        fail_at(&events, self.at, self.how, &self.fault)?;
        Ok(events)
    }

    async fn handle_done(&mut self) -> Result<Vec<u64>, StageError> {
        fail_at(&[EVENTS], self.at, self.how, &self.fault)?;
        Ok(Vec::new())
    }
}

/// A user consumer, failing at event `at` (at `EVENTS`: in `handle_done`).
struct FaultyConsumer {
    at: u64,
    how: How,
    fault: Fault,
}

impl Consumer for FaultyConsumer {
    type Item = u64;

    async fn handle_events(
        &mut self,
        events: Vec<u64>,
        _context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        fail_at(&events, self.at, self.how, &self.fault)
    }

    async fn handle_done(&mut self) -> Result<(), StageError> {
        fail_at(&[EVENTS], self.at, self.how, &self.fault)
    }
}

/// Fails (as `how`) if `events` holds `at`.
fn fail_at(events: &[u64], at: u64, how: How, fault: &Fault) -> Result<(), StageError> {
    if events.contains(&at) {
        match how {
            How::Panic => fault.panic(at),
            How::Err => return Err(fault.fire(at).into()),
        }
    }
    Ok(())
}

/// `x`, or the fault if `x == at`.
fn step(x: u64, at: u64, how: How, fault: &Fault) -> Result<u64, String> {
    if x == at {
        match how {
            How::Panic => fault.panic(at),
            How::Err => return Err(fault.fire(at)),
        }
    }
    Ok(x)
}

/// A panic-only callback: `x`, or a panic if `x == at`.
fn boom(x: u64, at: u64, fault: &Fault) -> u64 {
    if x == at {
        fault.panic(at);
    }
    x
}

fn partition(stages: usize, max_demand: usize) -> Partition {
    Partition::new().stages(stages).max_demand(max_demand)
}

proptest! {
    #![proptest_config(config())]

    /// A user iterator panics inside the source stage that reads it.
    #[test]
    fn a_panicking_user_iterator_fails_its_source(at in 0..EVENTS, stages in 1usize..=4) {
        let fault = Fault::default();
        let inner = fault.clone();
        check(
            Expect { how: How::Panic, stage: "from_iter[0]", kind: StageKind::Producer, at },
            fault,
            move || {
                Flow::from_iter((0..EVENTS).map(move |x| boom(x, at, &inner)))
                    .partition(partition(stages, 10))
                    .collect::<Vec<u64>>()
            },
        )?;
    }

    /// A user producer (`from_stages`) panics or returns `Err`.
    #[test]
    fn a_failing_user_producer_fails_its_source(at in 0..EVENTS, how in how(), stages in 1usize..=4) {
        let fault = Fault::default();
        let inner = fault.clone();
        check(
            Expect { how, stage: "from_stages[0]", kind: StageKind::Producer, at },
            fault,
            move || {
                Flow::from_stages(vec![FaultyProducer { next: 0, at, how, fault: inner }])
                    .partition(partition(stages, 7))
                    .collect::<Vec<u64>>()
            },
        )?;
    }

    /// A fused `map` panics, or a fused `try_map` returns `Err`, in the source stages.
    #[test]
    fn a_failing_fused_chain_fails_its_stage(at in 0..EVENTS, how in how(), sources in 1usize..=4) {
        let fault = Fault::default();
        let inner = fault.clone();
        let parts: Vec<_> = (0..sources as u64)
            .map(|i| i * EVENTS / sources as u64..(i + 1) * EVENTS / sources as u64)
            .collect();
        let failing = parts.iter().position(|r| r.contains(&at)).unwrap_or(0);
        let stage: &'static str = Box::leak(format!("from_iters[{failing}]").into_boxed_str());
        check(
            Expect { how, stage, kind: StageKind::Producer, at },
            fault,
            move || {
                Flow::from_iters(parts)
                    .map(|x| x * 2)
                    .filter(|x| x % 2 == 0)
                    .map(|x| x / 2)
                    .try_map(move |&x| step(x, at, how, &inner))
                    .collect::<Vec<u64>>()
            },
        )?;
    }

    /// A partition's reducer panics; or a `try_map` fused into the partition's stage,
    /// ahead of the reducer, returns `Err`.
    #[test]
    fn a_failing_reducer_fails_its_partition(at in 0..EVENTS, how in how(), stages in 1usize..=4, max_demand in 1usize..=50) {
        let fault = Fault::default();
        let inner = fault.clone();
        check(
            Expect { how, stage: "partition[", kind: StageKind::ProducerConsumer, at },
            fault,
            move || {
                let layer = Flow::from_iter(0..EVENTS).partition(partition(stages, max_demand));
                match how {
                    How::Panic => layer
                        .reduce(|| 0u64, move |x, sum| sum + boom(x, at, &inner))
                        .emit_state()
                        .collect::<Vec<u64>>(),
                    How::Err => layer
                        .try_map(move |&x| step(x, at, how, &inner))
                        .reduce(|| 0u64, |x, sum| sum + x)
                        .emit_state()
                        .collect::<Vec<u64>>(),
                }
            },
        )?;
    }

    /// `on_trigger` panics at its n-th call (count windows of 10: one trigger per ten
    /// events and partition).
    #[test]
    fn a_panicking_on_trigger_fails_its_partition(nth in 0u64..10, stages in 1usize..=3) {
        let fault = Fault::default();
        let inner = fault.clone();
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        check(
            Expect { how: How::Panic, stage: "partition[", kind: StageKind::ProducerConsumer, at: nth },
            fault,
            move || {
                Flow::from_iter(0..EVENTS)
                    .partition(partition(stages, 5).window(Window::count(10)))
                    .reduce(|| 0u64, |x, sum| sum + x)
                    .on_trigger(move |sum, _partition, _trigger| {
                        let call = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        boom(call, nth, &inner);
                        (vec![sum], 0)
                    })
                    .collect::<Vec<u64>>()
            },
        )?;
    }

    /// A custom trigger's decision function panics at a random event; or a `try_map`
    /// fused into the windowed stage returns `Err`.
    #[test]
    fn a_failing_trigger_fails_its_partition(at in 0..EVENTS, how in how(), stages in 1usize..=3) {
        let fault = Fault::default();
        let inner = fault.clone();
        check(
            Expect { how, stage: "partition[", kind: StageKind::ProducerConsumer, at },
            fault,
            move || {
                let panics = how == How::Panic;
                let trigger_fault = inner.clone();
                let window = Window::<u64>::global().trigger(|| 0u64, move |seen, events| {
                    for (i, &x) in events.iter().enumerate() {
                        if panics {
                            boom(x, at, &trigger_fault);
                        }
                        *seen += 1;
                        if *seen == 20 {
                            *seen = 0;
                            return Decision::Fire { at: i + 1, name: "twenty".into() };
                        }
                    }
                    Decision::Continue
                });
                Flow::from_iter(0..EVENTS)
                    .partition(partition(stages, 9).window(window))
                    .try_map(move |&x| if panics { Ok(x) } else { step(x, at, how, &inner) })
                    .reduce(|| 0u64, |x, sum| sum + x)
                    .emit_state()
                    .collect::<Vec<u64>>()
            },
        )?;
    }

    /// `departition`'s merge panics at its `at`-th call (one per partition); or a
    /// `try_map` after it (fused into the departition stage) returns `Err`.
    #[test]
    fn a_failing_departition_fails_its_stage(at in 0u64..4, how in how()) {
        let fault = Fault::default();
        let inner = fault.clone();
        check(
            Expect { how, stage: "departition", kind: StageKind::ProducerConsumer, at },
            fault,
            move || {
                let calls = std::sync::atomic::AtomicU64::new(0);
                let sums = Flow::from_iter(0..EVENTS)
                    .partition(partition(4, 10))
                    .reduce(|| 0u64, |x, sum| sum + x)
                    .emit_state();
                let panics = how == How::Panic;
                let merge_fault = inner.clone();
                sums.departition(
                    Vec::new,
                    move |sum, mut sums: Vec<u64>| {
                        let call = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if panics {
                            boom(call, at, &merge_fault);
                        }
                        sums.push(sum);
                        sums
                    },
                    |sums| sums,
                )
                // The departition emits once, after every merge; an `Err` fires there.
                .try_map(move |sums: &Vec<u64>| {
                    if panics { Ok(sums.clone()) } else { step(at, at, how, &inner).map(|_| sums.clone()) }
                })
                .collect::<Vec<Vec<u64>>>()
            },
        )?;
    }

    /// A join's key function or join function panics; or a `try_map` fused into the join
    /// stage returns `Err`. The key functions run where events are routed to the join's
    /// partitions — in the stages before the join (here the left source), which the error
    /// then names — and, with one join stage (no routing), in the join stage.
    #[test]
    fn a_failing_join_fails_its_stage(at in 0..EVENTS, how in how(), in_key in any::<bool>(), stages in 1usize..=4) {
        let fault = Fault::default();
        let inner = fault.clone();
        let (stage, kind) = if how == How::Panic && in_key && stages > 1 {
            ("from_iter[0]", StageKind::Producer)
        } else {
            ("join[", StageKind::ProducerConsumer)
        };
        check(
            Expect { how, stage, kind, at },
            fault,
            move || {
                let key_fault = inner.clone();
                let join_fault = inner.clone();
                let key_panics = how == How::Panic && in_key;
                let join_panics = how == How::Panic && !in_key;
                Flow::bounded_join(
                    JoinMode::Inner,
                    Flow::from_iter(0..EVENTS),
                    Flow::from_iter(0..EVENTS),
                    move |l: &u64| if key_panics { boom(*l, at, &key_fault) } else { *l },
                    |r: &u64| *r,
                    move |l: Option<&u64>, _r: Option<&u64>| {
                        let l = l.copied().unwrap_or(u64::MAX);
                        if join_panics { boom(l, at, &join_fault) } else { l }
                    },
                    Shuffle::shuffle().stages(stages),
                )
                .try_map(move |&x| if how == How::Err { step(x, at, how, &inner) } else { Ok(x) })
                .collect::<Vec<u64>>()
            },
        )?;
    }

    /// The consumer given to `run_into` panics or returns `Err`.
    #[test]
    fn a_failing_run_into_consumer_fails_the_sink(at in 0..EVENTS, how in how(), stages in 1usize..=4) {
        let fault = Fault::default();
        let inner = fault.clone();
        check(
            Expect { how, stage: "sink", kind: StageKind::Consumer, at },
            fault,
            move || {
                Flow::from_iter(0..EVENTS)
                    .partition(partition(stages, 13))
                    .run_into(FaultyConsumer { at, how, fault: inner })
            },
        )?;
    }

    /// An `async_fn` sink panics or returns `Err`.
    #[test]
    fn a_failing_async_fn_sink_fails_the_sink(at in 0..EVENTS, how in how()) {
        let fault = Fault::default();
        let inner = fault.clone();
        check(
            Expect { how, stage: "sink", kind: StageKind::Consumer, at },
            fault,
            move || {
                Flow::from_iter(0..EVENTS).run_into(async_fn(move |events: Vec<u64>| {
                    let result = fail_at(&events, at, how, &inner);
                    async move { result }
                }))
            },
        )?;
    }

    /// Stage-layer producers, producer-consumers and consumers written by the user, each
    /// named, fail at a random event or at the end (`handle_done`): the error names the
    /// stage that failed.
    #[test]
    fn a_failing_user_stage_fails_the_pipeline(at in 0..=EVENTS, how in how(), which in 0usize..3, max_demand in 1usize..=40) {
        // `EVENTS`: the producer-consumer or consumer fails in `handle_done`.
        let at = if which == 0 { at.min(EVENTS - 1) } else { at };
        let fault = Fault::default();
        let inner = fault.clone();
        let (stage, kind) = [
            ("numbers", StageKind::Producer),
            ("relay", StageKind::ProducerConsumer),
            ("writer", StageKind::Consumer),
        ][which];
        check(
            Expect { how, stage, kind, at },
            fault,
            move || {
                // Only the chosen stage fails: the others get an event that never comes.
                let at_of = |i: usize| if i == which { at } else { u64::MAX };
                let mut pipeline = Pipeline::new();
                let numbers = pipeline.producer_with(
                    FaultyProducer { next: 0, at: at_of(0), how, fault: inner.clone() },
                    ProducerOptions::new().name("numbers"),
                );
                let (relay_in, relay_out) = pipeline.producer_consumer_with(
                    FaultyRelay { at: at_of(1), how, fault: inner.clone() },
                    ProducerConsumerOptions::new().name("relay"),
                );
                let writer = pipeline.consumer_with(
                    FaultyConsumer { at: at_of(2), how, fault: inner },
                    ConsumerOptions::new().name("writer"),
                );
                let options = || SubscribeOptions::new().max_demand(max_demand).min_demand(max_demand / 2);
                pipeline.subscribe(&relay_in, &numbers, options())?;
                pipeline.subscribe(&writer, &relay_out, options())?;
                pipeline.run()
            },
        )?;
    }

    /// A supervised worker panics or returns `Err` once, with no restarts allowed: the
    /// supervisor's stage fails with the worker's message.
    #[test]
    fn a_failing_supervised_worker_fails_the_supervisor(at in 0..EVENTS, how in how(), max in 1usize..=8) {
        let fault = Fault::default();
        let inner = fault.clone();
        check(
            Expect { how: How::Err, stage: "workers", kind: StageKind::Consumer, at },
            fault,
            move || {
                let supervisor = Supervisor::new(
                    SupervisorOptions::new(max)
                        .restart(Restart::Permanent)
                        .max_restarts(0, Duration::from_secs(60)),
                    move |x: u64| {
                        let result = step(x, at, how, &inner).map(|_| ()).map_err(StageError::from);
                        async move { result }
                    },
                );
                let subscribe = supervisor.subscribe_options();
                let mut pipeline = Pipeline::new();
                let numbers = pipeline.producer(flowstage::stage::from_iter(0..EVENTS));
                let workers = pipeline.consumer_with(supervisor, ConsumerOptions::new().name("workers"));
                pipeline.subscribe(&workers, &numbers, subscribe)?;
                pipeline.run()
            },
        )?;
    }

    /// `on_trigger` panics on the `Done` trigger of one partition (the end of its input),
    /// or a `try_map` after it returns `Err` for that partition's last emission.
    #[test]
    fn a_failing_done_trigger_fails_its_partition(stages in 1usize..=4, chosen in 0usize..4, how in how()) {
        let chosen = chosen % stages;
        let fault = Fault::default();
        let inner = fault.clone();
        let at = chosen as u64;
        check(
            Expect { how, stage: "partition[", kind: StageKind::ProducerConsumer, at },
            fault,
            move || {
                let trigger_fault = inner.clone();
                Flow::from_iter(0..EVENTS)
                    .partition(partition(stages, 8))
                    .reduce(|| 0u64, |x, sum| sum + x)
                    .on_trigger(move |sum, partition, trigger| {
                        let done = trigger.is_done() && partition.index == chosen;
                        if done && how == How::Panic {
                            trigger_fault.panic(at);
                        }
                        // (partition, sum, whether this is the chosen Done)
                        (vec![(partition.index, sum, done)], 0)
                    })
                    .try_map(move |&(_, sum, done)| {
                        if done && how == How::Err { Err(inner.fire(at)) } else { Ok(sum) }
                    })
                    .collect::<Vec<u64>>()
            },
        )?;
    }

    /// `departition`'s `done` panics when every partition has been merged.
    #[test]
    fn a_panicking_departition_done_fails_its_stage(stages in 1usize..=4) {
        let fault = Fault::default();
        let inner = fault.clone();
        check(
            Expect { how: How::Panic, stage: "departition", kind: StageKind::ProducerConsumer, at: 0 },
            fault,
            move || {
                Flow::from_iter(0..EVENTS)
                    .partition(partition(stages, 10))
                    .reduce(|| 0u64, |x, sum| sum + x)
                    .emit_state()
                    .departition(
                        Vec::new,
                        |sum, mut sums: Vec<u64>| {
                            sums.push(sum);
                            sums
                        },
                        move |sums: Vec<u64>| -> Vec<u64> {
                            drop(sums);
                            inner.panic(0)
                        },
                    )
                    .collect::<Vec<Vec<u64>>>()
            },
        )?;
    }

    /// Through `into_iter`, a fault ends the iteration with the error as its last item,
    /// after the events that came before it.
    #[test]
    fn a_fault_ends_the_iterator_with_the_error(at in 0..EVENTS, how in how(), stages in 1usize..=4) {
        let fault = Fault::default();
        let inner = fault.clone();
        check(
            Expect { how, stage: "partition[", kind: StageKind::ProducerConsumer, at },
            fault,
            move || {
                let mut items = Flow::from_iter(0..EVENTS)
                    .partition(partition(stages, 6))
                    .try_map(move |&x| match how {
                        How::Panic => Ok(boom(x, at, &inner)),
                        How::Err => step(x, at, how, &inner),
                    })
                    .into_iter();
                let mut seen = 0u64;
                for item in items.by_ref() {
                    match item {
                        Ok(_) => seen += 1,
                        Err(error) => {
                            assert!(items.next().is_none(), "the error is the last item");
                            assert!(seen < EVENTS);
                            return Err(error);
                        }
                    }
                }
                Ok(seen)
            },
        )?;
    }

    /// Through `into_stream`, a fault ends the stream with the error as its last item.
    #[test]
    fn a_fault_ends_the_stream_with_the_error(at in 0..EVENTS, how in how(), stages in 1usize..=4) {
        let fault = Fault::default();
        let inner = fault.clone();
        check(
            Expect { how, stage: "from_iter[0]", kind: StageKind::Producer, at },
            fault,
            move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(FlowError::Runtime)?;
                runtime.block_on(async move {
                    use futures::StreamExt;
                    let mut stream = Flow::from_iter(0..EVENTS)
                        .try_map(move |&x| match how {
                            How::Panic => Ok(boom(x, at, &inner)),
                            How::Err => step(x, at, how, &inner),
                        })
                        .partition(partition(stages, 6))
                        .into_stream()?;
                    while let Some(item) = stream.next().await {
                        if let Err(error) = item {
                            assert!(stream.next().await.is_none(), "the error is the last item");
                            return Err(error);
                        }
                    }
                    Ok(())
                })
            },
        )?;
    }
}

/// A user callback with no fallible form, panicking at event `at`: the flow it sits in,
/// the stage that must fail (a part of its name) and that stage's kind.
struct Callback {
    name: &'static str,
    stage: &'static str,
    kind: StageKind,
    /// Runs `0..EVENTS` through the callback over `stages` partitions; `Ok` is the
    /// number of items that came out.
    run: fn(at: u64, fault: Fault, stages: usize) -> flowstage::Result<usize>,
}

/// Event time of event `x`: 1 ms apart, so every window kind closes windows mid-run.
fn stamp(x: u64, at: u64, fault: &Fault) -> i64 {
    boom(x, at, fault) as i64
}

/// Sums per window (or per partition) of `layer`, counted.
fn window_sums(layer: Flow<impl flowstage::flow::Plan<Item = u64>>) -> flowstage::Result<usize> {
    layer
        .reduce(|| 0u64, |x, sum| sum + x)
        .emit_state()
        .collect::<Vec<u64>>()
        .map(|sums| sums.len())
}

/// Every callback kind the flow API takes that `proptest!` above does not already fault
/// (reduce, `on_trigger`, custom triggers, departition, join key and join function):
/// fused operators, partition keys, an in-place reduce, group and uniq keys, and the
/// timestamp function of each event-time window kind.
const CALLBACKS: &[Callback] = &[
    Callback {
        name: "map",
        stage: "from_iter[0]",
        kind: StageKind::Producer,
        run: |at, fault, _| {
            Flow::from_iter(0..EVENTS)
                .map(move |x| boom(x, at, &fault))
                .collect::<Vec<u64>>()
                .map(|v| v.len())
        },
    },
    Callback {
        name: "filter",
        stage: "from_iter[0]",
        kind: StageKind::Producer,
        run: |at, fault, _| {
            Flow::from_iter(0..EVENTS)
                .filter(move |&x| boom(x, at, &fault) % 2 == 0)
                .collect::<Vec<u64>>()
                .map(|v| v.len())
        },
    },
    Callback {
        name: "flat_map",
        stage: "from_iter[0]",
        kind: StageKind::Producer,
        run: |at, fault, _| {
            Flow::from_iter(0..EVENTS)
                .flat_map(move |x| [boom(x, at, &fault), x])
                .collect::<Vec<u64>>()
                .map(|v| v.len())
        },
    },
    Callback {
        name: "filter_map",
        stage: "from_iter[0]",
        kind: StageKind::Producer,
        run: |at, fault, _| {
            Flow::from_iter(0..EVENTS)
                .filter_map(move |x| Some(boom(x, at, &fault)))
                .collect::<Vec<u64>>()
                .map(|v| v.len())
        },
    },
    Callback {
        name: "inspect",
        stage: "from_iter[0]",
        kind: StageKind::Producer,
        run: |at, fault, _| {
            Flow::from_iter(0..EVENTS)
                .inspect(move |&x| {
                    boom(x, at, &fault);
                })
                .collect::<Vec<u64>>()
                .map(|v| v.len())
        },
    },
    Callback {
        name: "map_batch",
        stage: "from_iter[0]",
        kind: StageKind::Producer,
        run: |at, fault, _| {
            Flow::from_iter(0..EVENTS)
                .map_batch(move |batch: Vec<u64>| {
                    batch
                        .into_iter()
                        .map(|x| boom(x, at, &fault))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<u64>>()
                .map(|v| v.len())
        },
    },
    // A partition's key function runs where events are routed: in the stage before.
    Callback {
        name: "partition by_key",
        stage: "from_iter[0]",
        kind: StageKind::Producer,
        run: |at, fault, stages| {
            Flow::from_iter(0..EVENTS)
                .partition(Partition::by_key(move |&x: &u64| boom(x, at, &fault)).stages(stages))
                .collect::<Vec<u64>>()
                .map(|v| v.len())
        },
    },
    Callback {
        name: "partition by_hash",
        stage: "from_iter[0]",
        kind: StageKind::Producer,
        run: |at, fault, stages| {
            Flow::from_iter(0..EVENTS)
                .partition(
                    Partition::by_hash(move |&x: &u64, n| Some(boom(x, at, &fault) as usize % n))
                        .stages(stages),
                )
                .collect::<Vec<u64>>()
                .map(|v| v.len())
        },
    },
    Callback {
        name: "reduce_mut",
        stage: "partition[",
        kind: StageKind::ProducerConsumer,
        run: |at, fault, stages| {
            Flow::from_iter(0..EVENTS)
                .partition(partition(stages, 10))
                .reduce_mut(|| 0u64, move |x, sum| *sum += boom(x, at, &fault))
                .emit_state()
                .collect::<Vec<u64>>()
                .map(|v| v.len())
        },
    },
    Callback {
        name: "group_by key",
        stage: "partition[",
        kind: StageKind::ProducerConsumer,
        run: |at, fault, stages| {
            Flow::from_iter(0..EVENTS)
                .partition(partition(stages, 10))
                .group_by(move |&x: &u64| boom(x, at, &fault) % 7, |x: u64| x)
                .collect::<Vec<_>>()
                .map(|v| v.len())
        },
    },
    Callback {
        name: "uniq_by key",
        stage: "partition[",
        kind: StageKind::ProducerConsumer,
        run: |at, fault, stages| {
            Flow::from_iter(0..EVENTS)
                .partition(partition(stages, 10))
                .uniq_by(move |&x: &u64| boom(x, at, &fault))
                .collect::<Vec<u64>>()
                .map(|v| v.len())
        },
    },
    Callback {
        name: "fixed window timestamp",
        stage: "partition[",
        kind: StageKind::ProducerConsumer,
        run: |at, fault, stages| {
            let window = Window::fixed(Duration::from_millis(10), move |&x| stamp(x, at, &fault));
            window_sums(Flow::from_iter(0..EVENTS).partition(partition(stages, 10).window(window)))
        },
    },
    Callback {
        name: "sliding window timestamp",
        stage: "partition[",
        kind: StageKind::ProducerConsumer,
        run: |at, fault, stages| {
            let window = Window::sliding(
                Duration::from_millis(20),
                Duration::from_millis(10),
                move |&x| stamp(x, at, &fault),
            );
            window_sums(Flow::from_iter(0..EVENTS).partition(partition(stages, 10).window(window)))
        },
    },
    Callback {
        name: "session window timestamp",
        stage: "partition[",
        kind: StageKind::ProducerConsumer,
        run: |at, fault, stages| {
            // Every tenth event starts a new session.
            let window = Window::session(Duration::from_millis(5), move |&x| {
                stamp(x, at, &fault) + (x as i64 / 10) * 10
            });
            window_sums(Flow::from_iter(0..EVENTS).partition(partition(stages, 10).window(window)))
        },
    },
];

proptest! {
    #![proptest_config(config())]

    /// Every callback kind of [`CALLBACKS`], in each case, panics at a random event: the
    /// stage it runs in fails, naming itself and carrying the message.
    #[test]
    fn a_panicking_callback_fails_the_stage_it_runs_in(at in 0..EVENTS, stages in 2usize..=4) {
        for callback in CALLBACKS {
            let fault = Fault::default();
            let inner = fault.clone();
            let run = callback.run;
            check(
                Expect { how: How::Panic, stage: callback.stage, kind: callback.kind, at },
                fault,
                move || run(at, inner, stages),
            )
            .map_err(|e| TestCaseError::fail(format!("{}: {e}", callback.name)))?;
        }
    }

    /// The `Err` of a `try_flat_map` (the fallible operators are `try_map`, faulted above,
    /// and `try_flat_map`) fails the stage it is fused into.
    #[test]
    fn a_failing_try_flat_map_fails_its_stage(at in 0..EVENTS, stages in 1usize..=4) {
        let fault = Fault::default();
        let inner = fault.clone();
        check(
            Expect { how: How::Err, stage: "partition[", kind: StageKind::ProducerConsumer, at },
            fault,
            move || {
                Flow::from_iter(0..EVENTS)
                    .partition(partition(stages, 10))
                    .try_flat_map(move |&x| step(x, at, How::Err, &inner).map(|x| [x, x]))
                    .collect::<Vec<u64>>()
            },
        )?;
    }

    /// `from_par_iter`: the user's closure in the rayon job panics (it aborted the
    /// process); or the items carry an `Err`, which a `try_map` fused into the source
    /// stage turns into the run's error.
    #[test]
    fn a_failing_par_iter_fails_its_source(at in 0..EVENTS, how in how(), stages in 1usize..=4) {
        use rayon::prelude::*;
        let fault = Fault::default();
        let inner = fault.clone();
        check(
            Expect { how, stage: "from_par_iter[", kind: StageKind::Producer, at },
            fault,
            move || {
                Flow::from_par_iter((0..EVENTS).into_par_iter().map(move |x| match how {
                    How::Panic => Ok(boom(x, at, &inner)),
                    How::Err => step(x, at, how, &inner),
                }))
                .try_map(|item: &Result<u64, String>| item.clone())
                .partition(partition(stages, 10))
                .collect::<Vec<u64>>()
            },
        )?;
    }

    /// A `ReaderSource`'s reader panics, or fails with an I/O error, at a random line: the
    /// source fails (a panic once ended the run `Ok` with the rest missing); the `Err` is
    /// a `FlowError::Io` naming the reader, with the reader's message.
    #[test]
    fn a_failing_reader_fails_its_source(at in 0..EVENTS, how in how(), block in 1usize..64) {
        let fault = Fault::default();
        let inner = fault.clone();
        check(
            Expect { how, stage: "source", kind: StageKind::Producer, at },
            fault,
            move || {
                let reader = FaultyReader { line: 0, pending: Vec::new(), at, how, fault: inner };
                Flow::from_source(
                    flowstage::source::ReaderSource::new(reader, "faulty-reader").block_size(block),
                )
                .map(|chunk| chunk.bytes().len())
                .collect::<Vec<usize>>()
            },
        )?;
    }

    /// A `futures::Stream` panics in `poll_next` at a random item; or its items carry an
    /// `Err`, turned into the run's error by a `try_map` fused into the source.
    #[test]
    fn a_failing_stream_fails_its_source(at in 0..EVENTS, how in how(), stages in 1usize..=4) {
        use futures::StreamExt;
        let fault = Fault::default();
        let inner = fault.clone();
        check(
            Expect { how, stage: "from_stream[0]", kind: StageKind::Producer, at },
            fault,
            move || {
                let items = futures::stream::iter(0..EVENTS).map(move |x| match how {
                    How::Panic => Ok(boom(x, at, &inner)),
                    How::Err => step(x, at, how, &inner),
                });
                Flow::from_stream(items)
                    .try_map(|item: &Result<u64, String>| item.clone())
                    .partition(partition(stages, 10))
                    .collect::<Vec<u64>>()
            },
        )?;
    }

    /// A `from_poll` function panics at a random event (it has no `Err`: what it returns
    /// is what it made).
    #[test]
    fn a_panicking_poll_fails_its_source(at in 0..EVENTS, stages in 1usize..=4) {
        let fault = Fault::default();
        let inner = fault.clone();
        check(
            Expect { how: How::Panic, stage: "from_poll[0]", kind: StageKind::Producer, at },
            fault,
            move || {
                let mut next = 0u64;
                Flow::from_poll(
                    move |demand| {
                        let end = (next + demand as u64).min(EVENTS);
                        let events = (next..end).map(|x| boom(x, at, &inner)).collect();
                        next = end;
                        if next == EVENTS {
                            Produced::Finished(events)
                        } else {
                            Produced::Events(events)
                        }
                    },
                    Duration::from_millis(1),
                )
                .partition(partition(stages, 10))
                .collect::<Vec<u64>>()
            },
        )?;
    }

    /// A fault in the stage reading a channel (a channel cannot fail by itself: its
    /// senders closing is the end of its input) ends the run with the error, and the
    /// sender, blocked on the full channel, is released with a send error instead of
    /// waiting for ever.
    #[test]
    fn a_fault_reading_a_channel_fails_its_source_and_releases_the_sender(at in 0..EVENTS, how in how(), capacity in 1usize..8) {
        let fault = Fault::default();
        let inner = fault.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        // Sends everything, then more than the flow will ever take: it can only stop
        // because the flow dropped the channel.
        let sender = std::thread::spawn(move || {
            (0..).take_while(|&x| tx.blocking_send(x).is_ok()).count() as u64
        });
        check(
            Expect { how, stage: "from_channel[0]", kind: StageKind::Producer, at },
            fault,
            move || {
                Flow::from_channel(rx)
                    .try_map(move |&x| match how {
                        How::Panic => Ok(boom(x, at, &inner)),
                        How::Err => step(x, at, how, &inner),
                    })
                    .collect::<Vec<u64>>()
            },
        )?;
        let sent = common::guarded(move || sender.join().expect("the sender thread"));
        prop_assert!(sent > at, "sent {} of {}", sent, at);
    }
}

/// Lines `0\n1\n...`; at line `at` its `read` panics or fails with an I/O error.
struct FaultyReader {
    line: u64,
    pending: Vec<u8>,
    at: u64,
    how: How,
    fault: Fault,
}

impl std::io::Read for FaultyReader {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.pending.is_empty() {
            if self.line == EVENTS {
                return Ok(0);
            }
            if self.line == self.at {
                match self.how {
                    How::Panic => self.fault.panic(self.at),
                    How::Err => return Err(std::io::Error::other(self.fault.fire(self.at))),
                }
            }
            self.pending = format!("{}\n", self.line).into_bytes();
            self.line += 1;
        }
        let n = self.pending.len().min(buffer.len());
        buffer[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}
