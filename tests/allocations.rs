//! The windowed reducer's per-event path allocates nothing: a counting global allocator
//! counts allocation calls while events flow through each event-time window kind into a
//! reducer whose state is a plain counter. What a run allocates per batch (batches,
//! their queues, each window's slot) stays far below one allocation per event; an
//! allocation per event (a `Vec` per sliding window an event enters, as the engine once
//! made) is several per event.
//!
//! One test function: the counter is global, and tests of one binary run at once.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use flowstage::flow::{Flow, Partition};
use flowstage::window::Window;

/// The system allocator, counting allocation calls.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to `System`; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: forwarded with the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from this allocator with `layout`, per the caller.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(pointer, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const EVENTS: i64 = 200_000;

/// Events `(ms, key)`: 20 per millisecond, over 8 keys, in time order.
fn events() -> impl Iterator<Item = (i64, u8)> + Send + 'static {
    (0..EVENTS).map(|i| (i / 20, (i % 8) as u8))
}

/// Runs `window` over the events, counting per window and partition; returns the
/// number of events the windows took (each as often as windows hold it) and the
/// allocations the run made.
fn run(window: Window<(i64, u8)>) -> (u64, u64) {
    let before = ALLOCATIONS.load(Relaxed);
    let counts: Vec<u64> = Flow::from_iter(events())
        .partition(
            Partition::by_key(|e: &(i64, u8)| e.1)
                .stages(2)
                .max_demand(4096)
                .window(window),
        )
        .reduce(|| 0u64, |_e, n| n + 1)
        .emit_state()
        .collect()
        .expect("the run");
    let made = ALLOCATIONS.load(Relaxed) - before;
    (counts.iter().sum(), made)
}

#[test]
fn windowed_reducers_allocate_per_batch_not_per_event() {
    let stamp = |e: &(i64, u8)| e.0;
    // Warm-up: the shared runtime and lazy structures.
    run(Window::fixed(Duration::from_millis(100), stamp));
    let kinds = [
        ("fixed", Window::fixed(Duration::from_millis(100), stamp), 1),
        (
            "sliding",
            Window::sliding(Duration::from_millis(100), Duration::from_millis(25), stamp),
            4,
        ),
        (
            "session",
            Window::session(Duration::from_millis(5), stamp),
            1,
        ),
    ];
    for (kind, window, copies) in kinds {
        let (taken, allocations) = run(window);
        // Every event in `copies` windows (sliding: the first windows hold fewer).
        assert!(
            taken <= EVENTS as u64 * copies && taken >= (EVENTS as u64 - 2_000) * copies,
            "{kind}: the windows took {taken} events"
        );
        assert!(
            allocations < EVENTS as u64 / 10,
            "{kind}: {allocations} allocations for {EVENTS} events ({} per event)",
            allocations as f64 / EVENTS as f64
        );
    }
}
