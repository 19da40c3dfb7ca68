//! Loom models of the demand protocol.
//!
//! The runtime's stages talk by message passing; the state machines that decide how much
//! to ask and how much may be sent are pure: `Inflow` (consumer side) and `Credit`/`Permit`
//! (producer side). These models run the real ones on loom threads that exchange the
//! runtime's messages (`Ask` upstream, `Events` and `Done` downstream) over loom channels,
//! and check under every interleaving that
//! - a producer never sends beyond the credit it was granted,
//! - events sent and not yet handled never exceed `max_demand`,
//! - every event is delivered exactly once, in order per subscriber,
//! - the exchange ends: no demand is lost (a stall is a loom deadlock, hence a failure).
//!
//! Run with:
//! `RUSTFLAGS="--cfg flowstage_loom" cargo test --release --test loom --target-dir target/loom`
#![cfg(flowstage_loom)]

use std::collections::VecDeque;

use flowstage::__loom::{Credit, Inflow};
use flowstage::stage::DemandMode;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use loom::sync::mpsc::{Receiver, Sender, channel};
use loom::thread;

/// Consumer to producer.
#[derive(Debug)]
enum Up {
    Ask {
        sub: usize,
        n: usize,
    },
    /// The consumer is done with this subscription (the runtime's `Cancel`).
    Cancel,
}

/// Producer to consumer.
#[derive(Debug)]
enum Down {
    Events(Vec<usize>),
    Done,
}

/// How a producer's source answers `want`: the `call`-th answer is short, exact or more
/// than asked (more goes to the producer's buffer), in a fixed rotation.
fn answer(call: usize, want: usize) -> usize {
    match call % 3 {
        0 => 1.min(want),
        1 => want + 1,
        _ => want,
    }
}

/// One subscriber as the producer sees it.
struct Outlet {
    credit: Credit,
    /// Demand received on this subscription, in total (the model's ghost counter).
    granted: usize,
    /// Events sent on this subscription, in total.
    sent: usize,
    tx: Sender<Down>,
    /// Events sent to this subscriber and not yet handled by it.
    in_flight: Arc<AtomicUsize>,
    max_demand: usize,
}

impl Outlet {
    /// Sends the front of `events` under a permit cut from credit; what does not fit stays.
    fn send(&mut self, events: &mut VecDeque<usize>) {
        let permit = self.credit.take(events.len());
        if permit.is_empty() {
            return;
        }
        let batch: Vec<usize> = events.drain(..permit.len()).collect();
        self.sent += batch.len();
        assert!(
            self.sent <= self.granted,
            "sent {} beyond the {} granted",
            self.sent,
            self.granted
        );
        let before = self.in_flight.fetch_add(batch.len(), SeqCst);
        assert!(
            before + batch.len() <= self.max_demand,
            "{} events unhandled, max_demand {}",
            before + batch.len(),
            self.max_demand
        );
        self.tx.send(Down::Events(batch)).unwrap();
    }
}

/// How the producer splits a batch among its subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dispatch {
    /// To the subscriber with the most credit, then the next (the demand dispatcher).
    Demand,
    /// Every event to every subscriber, as far as the smallest credit goes.
    Broadcast,
}

/// The producer loop: take every message already there (coalescing demand), send buffered
/// events first, then ask the source for `demand - buffered`, as `run_producer` does.
fn producer(total: usize, up: Receiver<Up>, mut outlets: Vec<Outlet>, dispatch: Dispatch) {
    let mut next = 0;
    let mut call = 0;
    let mut buffer: VecDeque<usize> = VecDeque::new();
    loop {
        while let Ok(msg) = up.try_recv() {
            grant(&mut outlets, msg);
        }
        send(&mut outlets, &mut buffer, dispatch);
        let demand = demand(&outlets, dispatch);
        if next == total && buffer.is_empty() {
            for outlet in &outlets {
                outlet.tx.send(Down::Done).unwrap();
            }
            // Late asks may still come; every consumer cancels when it has seen `Done`.
            let mut cancelled = 0;
            while cancelled < outlets.len() {
                if let Up::Cancel = up.recv().expect("a consumer hung up without Cancel") {
                    cancelled += 1;
                }
            }
            return;
        }
        let want = demand.saturating_sub(buffer.len());
        if want > 0 && next < total {
            let made = answer(call, want).min(total - next);
            call += 1;
            buffer.extend(next..next + made);
            next += made;
            continue;
        }
        // Nothing to do until a subscriber asks.
        let msg = up.recv().expect("a consumer hung up early");
        grant(&mut outlets, msg);
    }
}

fn grant(outlets: &mut [Outlet], msg: Up) {
    match msg {
        Up::Ask { sub, n } => {
            outlets[sub].credit.grant(n);
            outlets[sub].granted += n;
        }
        Up::Cancel => panic!("a consumer cancelled before Done"),
    }
}

fn demand(outlets: &[Outlet], dispatch: Dispatch) -> usize {
    let credits = outlets.iter().map(|o| o.credit.available());
    match dispatch {
        Dispatch::Demand => credits.sum(),
        Dispatch::Broadcast => credits.min().unwrap_or(0),
    }
}

fn send(outlets: &mut [Outlet], buffer: &mut VecDeque<usize>, dispatch: Dispatch) {
    match dispatch {
        Dispatch::Demand => {
            while !buffer.is_empty() {
                let Some(outlet) = outlets
                    .iter_mut()
                    .filter(|o| o.credit.available() > 0)
                    .max_by_key(|o| o.credit.available())
                else {
                    break;
                };
                outlet.send(buffer);
            }
        }
        Dispatch::Broadcast => {
            let n = demand(outlets, dispatch).min(buffer.len());
            for outlet in outlets.iter_mut() {
                let mut copy: VecDeque<usize> = buffer.iter().take(n).copied().collect();
                outlet.send(&mut copy);
                assert!(copy.is_empty(), "a broadcast subscriber lacked credit");
            }
            buffer.drain(..n);
        }
    }
}

/// The consumer loop of `run_consumer`: automatic demand, chunks of `max - min`, re-ask
/// after each chunk. Returns the events handled, in order.
fn consumer(
    sub: usize,
    max: usize,
    min: usize,
    up: Sender<Up>,
    down: Receiver<Down>,
    in_flight: Arc<AtomicUsize>,
) -> Vec<usize> {
    let mut inflow = Inflow::new(max, min, DemandMode::Automatic);
    let mut asked = inflow.initial_ask();
    assert_eq!(asked, max);
    up.send(Up::Ask { sub, n: asked }).unwrap();
    let mut handled = Vec::new();
    loop {
        match down.recv().expect("the producer hung up without Done") {
            Down::Events(events) => {
                assert!(
                    handled.len() + events.len() <= asked,
                    "received beyond what was asked"
                );
                for chunk in events.chunks(inflow.chunk_size()) {
                    assert!(chunk.len() <= (max - min).max(1));
                    handled.extend_from_slice(chunk);
                    // Handled before asking again: the producer may refill at once.
                    in_flight.fetch_sub(chunk.len(), SeqCst);
                    let ask = inflow.handled(chunk.len());
                    if ask > 0 {
                        asked += ask;
                        assert!(asked - handled.len() <= max, "outstanding beyond max");
                        up.send(Up::Ask { sub, n: ask }).unwrap();
                    }
                }
            }
            Down::Done => {
                up.send(Up::Cancel).unwrap();
                return handled;
            }
        }
    }
}

/// One producer of `total` events, `consumers` subscribers of `(max, min)` each.
fn model(total: usize, consumers: usize, max: usize, min: usize, dispatch: Dispatch) {
    let (up_tx, up_rx) = channel();
    let mut outlets = Vec::new();
    let mut handles = Vec::new();
    for sub in 0..consumers {
        let (down_tx, down_rx) = channel();
        let in_flight = Arc::new(AtomicUsize::new(0));
        outlets.push(Outlet {
            credit: Credit::default(),
            granted: 0,
            sent: 0,
            tx: down_tx,
            in_flight: in_flight.clone(),
            max_demand: max,
        });
        let up = up_tx.clone();
        handles.push(thread::spawn(move || {
            consumer(sub, max, min, up, down_rx, in_flight)
        }));
    }
    drop(up_tx);
    producer(total, up_rx, outlets, dispatch);
    let seen: Vec<Vec<usize>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    match dispatch {
        Dispatch::Broadcast => {
            for events in &seen {
                assert_eq!(*events, (0..total).collect::<Vec<_>>());
            }
        }
        Dispatch::Demand => {
            let mut all: Vec<usize> = seen.concat();
            for events in &seen {
                assert!(events.windows(2).all(|w| w[0] < w[1]), "out of order");
            }
            all.sort_unstable();
            assert_eq!(all, (0..total).collect::<Vec<_>>());
        }
    }
}

/// Explores every interleaving of `f`, up to `preemptions` preemptions unless
/// `LOOM_MAX_PREEMPTIONS` says otherwise (`None`: unbounded).
fn check(preemptions: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = preemptions;
    }
    builder.check(f);
}

// Two threads: exhaustive.

#[test]
fn one_consumer_max_3_min_1() {
    check(None, || model(5, 1, 3, 1, Dispatch::Demand));
}

#[test]
fn one_consumer_max_1_min_0() {
    check(None, || model(3, 1, 1, 0, Dispatch::Demand));
}

#[test]
fn one_consumer_max_2_min_0() {
    check(None, || model(4, 1, 2, 0, Dispatch::Demand));
}

// Three threads: bounded, or they take minutes (unbounded: ~2 min on 2 cores).

#[test]
fn two_consumers_share_one_producer() {
    check(Some(3), || model(4, 2, 2, 1, Dispatch::Demand));
}

#[test]
fn two_consumers_of_a_broadcast() {
    check(Some(4), || model(3, 2, 2, 0, Dispatch::Broadcast));
}
