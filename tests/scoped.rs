//! Flows that borrow: the blocking terminals run a flow to its end before they return, so
//! its closures may borrow the caller's data (see `stage::scoped`, the module that erases
//! the borrows' lifetime for tokio's tasks).
//!
//! Each test borrows data on the heap that is freed as soon as the terminal returns: a
//! stage that touched it afterwards would read freed memory, which `valgrind` reports
//! (CI runs this binary under `valgrind --error-exitcode=1`), and the tests check the
//! borrowed data was fully used before the return (counters the closures bump).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use common::guarded;
use flowstage::FlowError;
use flowstage::flow::{Flow, Partition};

/// Prices by id, on the heap, freed when the test's scope ends.
fn prices(n: u64) -> HashMap<u64, u64> {
    (0..n).map(|id| (id, id * 3)).collect()
}

#[test]
fn closures_borrow_a_local_map_in_a_blocking_terminal() {
    guarded(|| {
        for stages in [1, 2, 4] {
            let prices = prices(10_000);
            let calls = AtomicU64::new(0);
            let priced: Vec<u64> = Flow::from_iter(0..10_000u64)
                .map(|id| {
                    calls.fetch_add(1, SeqCst);
                    prices[&id]
                })
                .partition(Partition::new().stages(stages))
                .collect()
                .expect("a complete run");
            assert_eq!(calls.load(SeqCst), 10_000);
            assert_eq!(
                priced.iter().sum::<u64>(),
                (0..10_000u64).map(|id| id * 3).sum::<u64>()
            );
            drop(prices);
        }
    });
}

#[test]
fn a_borrowing_flow_that_fails_returns_only_after_every_stage_ended() {
    guarded(|| {
        for stages in [1, 3] {
            let prices = prices(1000);
            let seen = AtomicU64::new(0);
            let result: Result<Vec<u64>, FlowError> = Flow::from_iter(0..100_000u64)
                .map(|id| prices[&(id % 1000)])
                .partition(Partition::by_key(|price: &u64| *price).stages(stages))
                .map(|price| {
                    seen.fetch_add(1, SeqCst);
                    assert!(price != 2997, "a bad price");
                    price
                })
                .collect();
            assert!(
                matches!(result, Err(FlowError::StagePanicked { .. })),
                "{result:?}"
            );
            // The other stages were stopped, not left running: nothing counts any more.
            let after = seen.load(SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(seen.load(SeqCst), after);
            drop(prices);
        }
    });
}
