//! The ETL example's parse-validate-aggregate part against a sequential implementation.
//!
//! `cargo bench --bench etl`
//!
//! One group, `parse_validate_aggregate_1M`, over the example's generated CSV of 1 M
//! orders (300 malformed), written once in the set-up (no download). Each contestant
//! parses every row into a typed, validated `Order` with serde, computes its revenue,
//! and sums orders and revenue per (customer, day) into an ahash map:
//!
//! - `sequential`: the csv crate's reader over the file, one thread (the baseline).
//! - `flowstage`: the example's pipeline: `CsvSource` with one reader per core,
//!   `(key, total)` pairs partitioned by key into one reducing stage per core.
//! - `flowstage_merged`: no exchange: each reader's stage folds its orders into a map of
//!   its own (`reduce`, fused), and `departition` merges the maps.
//!
//! Each iteration is a whole run; all three check the number of keys.
//!
//! Measured on the 2-core machine, nothing else running (`cargo bench --bench etl`):
//! `flowstage` 105.0 ms, `flowstage_merged` 152.6 ms, `sequential` 323.4 ms — 3.08x and
//! 2.12x the sequential loop. The partitioned flow also costs less CPU than the loop
//! (about 195 ms against 275 ms per run): each partition's map holds half the keys.
//! With another process busy on one of the two cores, the flows lose their second core
//! and the same run gave 240 / 382 / 293 ms: measure on a quiet machine.

#[path = "../examples/etl/orders.rs"]
mod orders;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use flowstage::flow::ErrorPolicy;

const ROWS: u64 = 1_000_000;

fn parse_validate_aggregate(c: &mut Criterion) {
    let dir = std::env::temp_dir().join("flowstage-bench-etl");
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let csv = dir.join("orders.csv");
    orders::generate(&csv, ROWS, 300).expect("the generated orders");
    let (expected, _) = orders::aggregate_sequential(&csv).expect("the sequential totals");
    let keys = expected.len();
    let cores = flowstage::default_parallelism();

    let mut group = c.benchmark_group("parse_validate_aggregate_1M");
    group
        .throughput(Throughput::Elements(ROWS))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    group.bench_function("flowstage", |b| {
        b.iter(|| {
            let totals: Vec<_> = orders::aggregate(&csv, ErrorPolicy::skip(), cores, cores)
                .collect()
                .expect("the flow runs");
            assert_eq!(totals.len(), keys);
            black_box(totals)
        })
    });
    group.bench_function("flowstage_merged", |b| {
        b.iter(|| {
            let totals: Vec<_> = orders::aggregate_merged(&csv, ErrorPolicy::skip(), cores)
                .collect()
                .expect("the flow runs");
            assert_eq!(totals.len(), keys);
            black_box(totals)
        })
    });
    group.bench_function("sequential", |b| {
        b.iter(|| {
            let (totals, _) = orders::aggregate_sequential(&csv).expect("the file reads");
            assert_eq!(totals.len(), keys);
            black_box(totals)
        })
    });
    group.finish();
}

criterion_group!(benches, parse_validate_aggregate);
criterion_main!(benches);
