//! Five iterator pipelines, each in rayon and in flowstage, side by side.
//!
//! `cargo run --release --example iterators -- [--events N]`
//!
//! Each pipeline runs once per library over the same input and prints both results (they
//! must agree; the example fails if not) and both times. The point is the code: the
//! flowstage version reads as the rayon one does, and borrows local data the same way.
//! The times are one run each, for orientation; `cargo bench --bench iterators` measures.
//!
//! 1. `map → filter → sum` over a range.
//! 2. `collect` into a `Vec` (rayon keeps the order; flowstage's `collect` keeps each
//!    stage's, so the two are compared sorted).
//! 3. A map that borrows a local `HashMap` (prices by product), summed.
//! 4. `fold` per worker, then combined: count and total in one pass.
//! 5. `for_each` with side effects, and `any` / `find_any`, which stop at the first hit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flowstage::flow::Flow;
use rayon::prelude::*;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) >> 24
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let value = f();
    (value, started.elapsed())
}

/// Prints one pipeline's line; an error if the two disagree or the flow failed.
fn report<T: PartialEq + std::fmt::Debug>(
    name: &str,
    rayon: (T, Duration),
    flowstage: (flowstage::Result<T>, Duration),
) -> Result<(), Box<dyn std::error::Error>> {
    let result = flowstage.0?;
    println!(
        "{name:<28} rayon {:>9.1?}   flowstage {:>9.1?}   result {result:?}",
        rayon.1, flowstage.1
    );
    if rayon.0 != result {
        return Err(format!("{name}: rayon {:?} != flowstage {result:?}", rayon.0).into());
    }
    Ok(())
}

fn events() -> Result<u64, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut events = 5_000_000;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--events" => {
                events = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--events takes a number")?;
            }
            other => {
                return Err(format!("unknown argument {other:?}; usage: [--events N]").into());
            }
        }
    }
    Ok(events)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = events()?;

    // 1. map → filter → sum.
    report(
        "map → filter → sum",
        timed(|| {
            (0..n)
                .into_par_iter()
                .map(mix)
                .filter(|x| x % 2 == 0)
                .sum::<u64>()
        }),
        timed(|| {
            Flow::from_iter(0..n)
                .map(mix)
                .filter(|x| x % 2 == 0)
                .sum::<u64>()
        }),
    )?;

    // 2. collect.
    let sorted = |mut v: Vec<u64>| {
        v.sort_unstable();
        v.len()
    };
    report(
        "collect (sorted length)",
        timed(|| sorted((0..n).into_par_iter().map(mix).collect())),
        timed(|| Flow::from_iter(0..n).map(mix).collect().map(sorted)),
    )?;

    // 3. Borrowing a local map: the blocking terminal returns when every stage has ended.
    let prices: HashMap<u64, u64> = (0..1000)
        .map(|product| (product, product % 97 + 1))
        .collect();
    let prices = &prices;
    report(
        "map over a borrowed HashMap",
        timed(|| {
            (0..n)
                .into_par_iter()
                .map(|i| prices[&(i % 1000)])
                .sum::<u64>()
        }),
        timed(|| {
            Flow::from_iter(0..n)
                .map(|i| prices[&(i % 1000)])
                .sum::<u64>()
        }),
    )?;

    // 4. fold per worker (rayon) / per stage (flowstage), then combined.
    report(
        "fold (count, total)",
        timed(|| {
            (0..n)
                .into_par_iter()
                .fold(|| (0u64, 0u64), |(c, t), x| (c + 1, t + mix(x)))
                .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        }),
        timed(|| {
            Flow::from_iter(0..n)
                .fold(|| (0u64, 0u64), |(c, t), x| (c + 1, t + mix(x)))
                .reduce_with(|a, b| (a.0 + b.0, a.1 + b.1))
                .map(Option::unwrap_or_default)
        }),
    )?;

    // 5. Side effects, and a search that stops at the first hit.
    let seen = AtomicU64::new(0);
    report(
        "for_each (side effects)",
        timed(|| {
            seen.store(0, Ordering::Relaxed);
            (0..n).into_par_iter().for_each(|x| {
                seen.fetch_add(x & 1, Ordering::Relaxed);
            });
            seen.load(Ordering::Relaxed)
        }),
        timed(|| {
            seen.store(0, Ordering::Relaxed);
            Flow::from_iter(0..n).for_each(|x| {
                seen.fetch_add(x & 1, Ordering::Relaxed);
            })?;
            Ok(seen.load(Ordering::Relaxed))
        }),
    )?;
    let target = mix(n / 2);
    report(
        "any (stops at the first)",
        timed(|| (0..u64::MAX).into_par_iter().any(|x| mix(x) == target)),
        timed(|| Flow::from_iter(0..u64::MAX).any(|x| mix(x) == target)),
    )?;
    Ok(())
}
