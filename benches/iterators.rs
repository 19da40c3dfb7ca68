//! Iterator-like combinators against rayon and a sequential loop, one group per shape.
//!
//! `cargo bench --bench iterators`
//!
//! Every group runs one chain over 10 M `u64` — `mix` (a splitmix64 finalizer, a few
//! multiplies and shifts), keep the even ones — and ends it the way the group says. Each
//! contestant checks its result against the sequential loop's before it is timed, and
//! every iteration is one whole run, runtime start-up included. Targets (issue 16,
//! same-run ratios of medians on the 2-core machine):
//!
//! | group | flowstage | target |
//! |---|---|---|
//! | `sum_from_iter` | `Flow::from_iter(0..n)` → `sum` | ≤ 1.2x `rayon` |
//! | `sum_from_iters` | `Flow::from_iters(one range per core)` → `sum` | ≤ 1.1x `rayon` |
//! | `sum_from_par_iter` | `Flow::from_par_iter((0..n).into_par_iter())` → `sum` | ≤ 1.3x `rayon` |
//! | `collect` | `from_iters` → `collect::<Vec<_>>()` | ≤ 1.1x rayon's `collect` |
//! | `blocking_for` | `for x in from_iters(..)...` | ≤ 1.5x rayon's `collect` |
//! | `heavy_map` | `from_iter`, a ≈ 1 µs map (hashing 1 KB) → `sum` | ≥ 1.7x faster than `sequential` |
//!
//! Measured on the 2-core development machine, one run, medians:
//!
//! | group | flowstage | rayon | sequential | ratio |
//! |---|---|---|---|---|
//! | `sum_from_iter` | 8.15 ms | 7.32 ms | 13.34 ms | 1.11x rayon |
//! | `sum_from_iters` | 7.27 ms | 7.24 ms | 13.33 ms | 1.00x rayon |
//! | `sum_from_par_iter` | 7.94 ms | 7.23 ms | 13.33 ms | 1.10x rayon |
//! | `collect` | 55.6 ms | 64.9 ms | 68.9 ms | 0.86x rayon |
//! | `blocking_for` | 82.9 ms | 65.5 ms | 66.8 ms | 1.27x rayon's `collect` |
//! | `heavy_map` | 15.46 ms | 15.26 ms | 30.23 ms | 1.96x faster than sequential |

use std::hash::{BuildHasher, Hasher};
use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkGroup, Criterion, criterion_group, criterion_main, measurement::WallTime,
};
use flowstage::flow::Flow;
use rayon::prelude::*;

/// Events in every group but `heavy_map`.
const EVENTS: u64 = 10_000_000;
/// Events in `heavy_map` (each costs about a microsecond).
const HEAVY_EVENTS: u64 = 100_000;

#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) >> 24 // 40 bits: 10 M of them sum without overflow
}

#[inline]
fn even(x: &u64) -> bool {
    x % 2 == 0
}

/// `0..events` split into `parts` contiguous ranges.
fn ranges(events: u64, parts: usize) -> Vec<std::ops::Range<u64>> {
    let parts = parts.max(1) as u64;
    (0..parts)
        .map(|i| events * i / parts..events * (i + 1) / parts)
        .collect()
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group
}

fn sum_sequential(n: u64) -> u64 {
    (0..n).map(mix).filter(even).sum()
}

fn sum_rayon(n: u64) -> u64 {
    (0..n).into_par_iter().map(mix).filter(even).sum()
}

fn sum_from_iter(n: u64) -> u64 {
    Flow::from_iter(0..n)
        .map(mix)
        .filter(even)
        .sum()
        .expect("from_iter sum")
}

fn sum_from_iters(n: u64) -> u64 {
    Flow::from_iters(ranges(n, flowstage::default_parallelism()))
        .map(mix)
        .filter(even)
        .sum()
        .expect("from_iters sum")
}

fn sum_from_par_iter(n: u64) -> u64 {
    Flow::from_par_iter((0..n).into_par_iter())
        .map(mix)
        .filter(even)
        .sum()
        .expect("from_par_iter sum")
}

/// A contestant of the sum groups.
type Summer = fn(u64) -> u64;

/// The three sum groups: one flowstage source each, with rayon and the loop beside it.
fn sums(c: &mut Criterion) {
    let expected = sum_sequential(EVENTS);
    let contestants: [(&str, Summer); 3] = [
        ("sum_from_iter", sum_from_iter),
        ("sum_from_iters", sum_from_iters),
        ("sum_from_par_iter", sum_from_par_iter),
    ];
    assert_eq!(sum_rayon(EVENTS), expected);
    for (name, flowstage) in contestants {
        assert_eq!(flowstage(EVENTS), expected, "{name}");
        assert_eq!(flowstage(1_000), sum_sequential(1_000), "{name}");
        let mut group = group(c, name);
        group.bench_function("flowstage", |b| {
            b.iter(|| assert_eq!(flowstage(black_box(EVENTS)), expected));
        });
        group.bench_function("rayon", |b| {
            b.iter(|| assert_eq!(sum_rayon(black_box(EVENTS)), expected));
        });
        group.bench_function("sequential", |b| {
            b.iter(|| assert_eq!(sum_sequential(black_box(EVENTS)), expected));
        });
        group.finish();
    }
}

fn collect_sequential(n: u64) -> Vec<u64> {
    (0..n).map(mix).filter(even).collect()
}

fn collect_rayon(n: u64) -> Vec<u64> {
    (0..n).into_par_iter().map(mix).filter(even).collect()
}

fn collect_flowstage(n: u64) -> Vec<u64> {
    Flow::from_iters(ranges(n, flowstage::default_parallelism()))
        .map(mix)
        .filter(even)
        .collect()
        .expect("flowstage collect")
}

/// The blocking iterator, consumed by a `for` loop that keeps every event (as `collect`).
fn blocking_for(n: u64) -> Vec<u64> {
    let mut kept = Vec::new();
    for x in Flow::from_iters(ranges(n, flowstage::default_parallelism()))
        .map(mix)
        .filter(even)
        .into_iter()
    {
        kept.push(x.expect("flowstage event"));
    }
    kept
}

fn collects(c: &mut Criterion) {
    let expected = collect_sequential(EVENTS);
    let sorted = |mut v: Vec<u64>| {
        v.sort_unstable();
        v
    };
    let expected_sorted = sorted(expected.clone());
    // rayon's collect keeps the order; the flow's (one range per stage) keeps each
    // stage's, and the blocking iterator interleaves stages: compare as multisets.
    assert_eq!(collect_rayon(EVENTS), expected);
    assert_eq!(sorted(collect_flowstage(EVENTS)), expected_sorted);
    assert_eq!(sorted(blocking_for(EVENTS)), expected_sorted);
    let len = expected.len();
    drop((expected, expected_sorted));

    for (name, flowstage) in [
        ("collect", collect_flowstage as fn(u64) -> Vec<u64>),
        ("blocking_for", blocking_for),
    ] {
        let mut group = group(c, name);
        group.bench_function("flowstage", |b| {
            b.iter(|| assert_eq!(flowstage(black_box(EVENTS)).len(), len));
        });
        group.bench_function("rayon", |b| {
            b.iter(|| assert_eq!(collect_rayon(black_box(EVENTS)).len(), len));
        });
        group.bench_function("sequential", |b| {
            b.iter(|| assert_eq!(collect_sequential(black_box(EVENTS)).len(), len));
        });
        group.finish();
    }
}

/// About a microsecond of work: hashes a 1 KB buffer seeded by `x`.
fn heavy(x: u64, buffer: &[u8]) -> u64 {
    let mut hasher = ahash::RandomState::with_seeds(x, 1, 2, 3).build_hasher();
    for _ in 0..4 {
        hasher.write(buffer);
    }
    hasher.finish() >> 24
}

fn heavy_map(c: &mut Criterion) {
    let buffer: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    let buffer = &buffer[..];
    let sequential = |n: u64| -> u64 { (0..n).map(|x| heavy(x, buffer)).sum() };
    // Borrows `buffer`: the blocking terminal returns when every stage has finished.
    let flowstage = |n: u64| -> u64 {
        Flow::from_iter(0..n)
            .map(|x| heavy(x, buffer))
            .sum()
            .expect("flowstage heavy map")
    };
    let rayon = |n: u64| -> u64 { (0..n).into_par_iter().map(|x| heavy(x, buffer)).sum() };
    let expected = sequential(HEAVY_EVENTS);
    assert_eq!(flowstage(HEAVY_EVENTS), expected);
    assert_eq!(rayon(HEAVY_EVENTS), expected);

    let mut group = group(c, "heavy_map");
    group.bench_function("flowstage", |b| {
        b.iter(|| assert_eq!(flowstage(black_box(HEAVY_EVENTS)), expected));
    });
    group.bench_function("rayon", |b| {
        b.iter(|| assert_eq!(rayon(black_box(HEAVY_EVENTS)), expected));
    });
    group.bench_function("sequential", |b| {
        b.iter(|| assert_eq!(sequential(black_box(HEAVY_EVENTS)), expected));
    });
    group.finish();
}

criterion_group!(benches, sums, collects, heavy_map);
criterion_main!(benches);
