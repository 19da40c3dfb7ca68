//! Inner join throughput: flowstage's `bounded_join` against a sequential hash join.
//!
//! `cargo bench --bench joins`
//!
//! 1 M left rows `(key, id)` and 1 M right rows `(key, value)` over 100 k keys (about 10
//! rows per key and side, so about 10 M matching pairs). Rows are made on the fly from
//! their index by a splitmix64 mix, the same way for both contestants, so neither reads
//! a prepared table. Each pair is combined into a `u64`.
//!
//! - `flowstage`: `Flow::bounded_join(Inner, ...)` over 8 stages with `max_demand` 8192
//!   (see `STAGES` for why more stages than cores), each side read by two producers
//!   (`from_iters` over halves); a `reduce` fused into each join stage folds the pairs
//!   into (pairs, checksum) as they are made.
//! - `sequential`: build an `AHashMap<key, Vec<id>>` of the left side, probe it with each
//!   right row, and fold every pair into (pairs, checksum).
//! - `hand_made_threads`: what a careful engineer writes by hand for two cores, no
//!   library: two threads each make half of both sides and split it by key into two
//!   partitions, then two threads each run the sequential join on one partition. Not
//!   streaming (both sides are held whole), so an upper bound on what two threads get.
//!
//! - `machine_two_sequential`: not a contestant but the machine's ceiling, measured in
//!   the same run: two threads each run the whole sequential join at once. Two free cores
//!   take as long as one run; a shared machine's second core delivers less (its speed-up
//!   ceiling is `2 x sequential / machine_two_sequential`).
//!
//! Every iteration checks both results against each other.

use std::hint::black_box;
use std::time::Duration;

use ahash::AHashMap;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowstage::flow::{Flow, JoinMode, Shuffle};

const ROWS: u64 = 1_000_000;
const KEYS: u64 = 100_000;
/// Join stages. More than the 2 cores: each stage's table (left rows and key slots)
/// is an eighth of the left side, about 1 MB, which the cache holds while it is probed;
/// and eight tasks balance over two workers. The instructions hardly change (459 M at 8
/// stages against 443 M at 4), the time does. Best of 15 runs of this join, in one
/// sitting: 2 stages 34–41 ms, 4 stages 32–34 ms, 8 stages 29–31 ms, 16 stages 26–29 ms
/// (sequential 51–53 ms).
const STAGES: usize = 8;
/// `max_demand` into the join layer: rows are cheap, so batches are large (as in
/// `benches/windows.rs`). With the default 1 000 the batches were about 115 rows, and
/// their fixed cost was 7 % of flowstage's instructions.
const MAX_DEMAND: usize = 8192;

#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

type Row = (u32, u32);

#[inline]
fn left_row(i: u64) -> Row {
    ((mix(i) % KEYS) as u32, i as u32)
}

#[inline]
fn right_row(i: u64) -> Row {
    let h = mix(i ^ 0x5555_5555_5555_5555);
    ((h % KEYS) as u32, (h >> 40) as u32)
}

#[inline]
fn combine(l: &Row, r: &Row) -> u64 {
    (l.1 as u64) * 31 + r.1 as u64
}

fn halves(rows: u64) -> Vec<std::ops::Range<u64>> {
    vec![0..rows / 2, rows / 2..rows]
}

/// The join, with each stage folding its pairs into (pairs, checksum) as they are made —
/// a `reduce` fused after the join in the same stage — and the per-stage results added.
fn join_flowstage(rows: u64) -> (u64, u64) {
    let parts: Vec<(u64, u64)> = Flow::bounded_join(
        JoinMode::Inner,
        Flow::from_iters(halves(rows)).map(left_row),
        Flow::from_iters(halves(rows)).map(right_row),
        |l: &Row| l.0,
        |r: &Row| r.0,
        |l: Option<&Row>, r: Option<&Row>| match (l, r) {
            (Some(l), Some(r)) => combine(l, r),
            _ => 0,
        },
        Shuffle::shuffle().stages(STAGES).max_demand(MAX_DEMAND),
    )
    .reduce(
        || (0u64, 0u64),
        |x, (n, sum): (u64, u64)| (n + 1, sum.wrapping_add(x)),
    )
    .emit_state()
    .collect()
    .expect("flowstage join");
    parts
        .into_iter()
        .fold((0, 0), |(n, sum), (m, s)| (n + m, sum.wrapping_add(s)))
}

/// Partition of a key for the hand-made join: a multiplicative hash's top bit.
#[inline]
fn hand_route(key: u32) -> usize {
    (u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 63) as usize
}

/// The same join by hand on two threads, in two phases: each thread makes its half of
/// both sides and splits it by key into two partitions; then each thread hash-joins one
/// partition (the sequential join on its share of the keys). (pairs, checksum).
fn join_hand_made_threads(rows: u64) -> (u64, u64) {
    type Split = [Vec<Row>; 2];
    fn split(range: std::ops::Range<u64>, row: fn(u64) -> Row) -> Split {
        let mut parts: Split = [Vec::new(), Vec::new()];
        for i in range {
            let row = row(i);
            parts[hand_route(row.0)].push(row);
        }
        parts
    }
    let made: Vec<(Split, Split)> = std::thread::scope(|scope| {
        let threads: Vec<_> = halves(rows)
            .into_iter()
            .map(|range| {
                scope.spawn(move || (split(range.clone(), left_row), split(range, right_row)))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("maker"))
            .collect()
    });
    let made = &made;
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..2)
            .map(|p| {
                scope.spawn(move || {
                    let mut table: AHashMap<u32, Vec<u32>> =
                        AHashMap::with_capacity(KEYS as usize / 2 * 9 / 8);
                    for (left, _) in made {
                        for &(key, id) in &left[p] {
                            table.entry(key).or_default().push(id);
                        }
                    }
                    let (mut pairs, mut sum) = (0u64, 0u64);
                    for (_, right) in made {
                        for right in &right[p] {
                            if let Some(ids) = table.get(&right.0) {
                                for &id in ids {
                                    pairs += 1;
                                    sum = sum.wrapping_add(combine(&(right.0, id), right));
                                }
                            }
                        }
                    }
                    (pairs, sum)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("joiner"))
            .fold((0u64, 0u64), |(n, s), (m, t)| (n + m, s.wrapping_add(t)))
    })
}

/// (pairs, checksum).
fn join_sequential(rows: u64) -> (u64, u64) {
    let mut table: AHashMap<u32, Vec<u32>> = AHashMap::with_capacity(KEYS as usize);
    for i in 0..rows {
        let (key, id) = left_row(i);
        table.entry(key).or_default().push(id);
    }
    let (mut pairs, mut sum) = (0u64, 0u64);
    for i in 0..rows {
        let right = right_row(i);
        if let Some(ids) = table.get(&right.0) {
            for &id in ids {
                pairs += 1;
                sum = sum.wrapping_add(combine(&(right.0, id), &right));
            }
        }
    }
    (pairs, sum)
}

fn joins(c: &mut Criterion) {
    let expected = join_sequential(ROWS);
    assert_eq!(join_flowstage(ROWS), expected);
    assert_eq!(join_flowstage(1_000), join_sequential(1_000));
    assert_eq!(join_hand_made_threads(ROWS), expected);

    let mut group = c.benchmark_group("joins");
    group
        .throughput(Throughput::Elements(2 * ROWS))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    group.bench_function("flowstage", |b| {
        b.iter(|| assert_eq!(join_flowstage(black_box(ROWS)), expected));
    });
    group.bench_function("sequential", |b| {
        b.iter(|| assert_eq!(join_sequential(black_box(ROWS)), expected));
    });
    group.bench_function("hand_made_threads", |b| {
        b.iter(|| assert_eq!(join_hand_made_threads(black_box(ROWS)), expected));
    });
    group.bench_function("machine_two_sequential", |b| {
        b.iter(|| {
            let other = std::thread::spawn(|| join_sequential(black_box(ROWS)));
            assert_eq!(join_sequential(black_box(ROWS)), expected);
            assert_eq!(other.join().ok(), Some(expected));
        });
    });
    group.finish();
}

criterion_group!(benches, joins);
criterion_main!(benches);
