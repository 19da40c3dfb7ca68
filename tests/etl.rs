//! The ETL example end to end: SQLite holds exactly what a sequential computation gives,
//! and every malformed row is a dead letter, with its line, and nowhere else.
#![cfg(feature = "csv")]

#[path = "../examples/etl/orders.rs"]
mod orders;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use flowstage::FlowError;
use flowstage::flow::{ErrorPolicy, Flow};
use orders::{Day, Key, Total};

fn dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("flowstage-etl-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn table(db: &std::path::Path) -> BTreeMap<(u32, String), (u64, i64)> {
    let connection = rusqlite::Connection::open(db).unwrap();
    let mut query = connection
        .prepare("SELECT customer, day, orders, revenue_cents FROM daily_revenue")
        .unwrap();
    query
        .query_map([], |row| {
            Ok(((row.get(0)?, row.get(1)?), (row.get(2)?, row.get(3)?)))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn by_day_text(
    totals: impl IntoIterator<Item = (Key, Total)>,
) -> BTreeMap<(u32, String), (u64, i64)> {
    totals
        .into_iter()
        .map(|((customer, day), total): ((u32, Day), Total)| ((customer, day.to_string()), total))
        .collect()
}

#[test]
fn sqlite_equals_the_sequential_computation_and_dead_letters_are_exact() {
    let dir = dir("full");
    let (csv, letters, db) = (
        dir.join("orders.csv"),
        dir.join("dead.csv"),
        dir.join("orders.db"),
    );
    let generated = orders::generate(&csv, 60_000, 240).unwrap();
    assert_eq!(generated.malformed_lines.len(), 240);

    let summary = orders::run(&csv, &letters, &db, 3, false).unwrap();
    let (expected, bad_lines) = orders::aggregate_sequential(&csv).unwrap();

    // Loaded: every total, equal to the sequential one, and nothing else.
    let loaded = table(&db);
    assert_eq!(loaded.len() as u64, summary.rows_loaded);
    assert_eq!(loaded, by_day_text(expected));
    let orders_loaded: u64 = loaded.values().map(|(orders, _)| orders).sum();
    assert_eq!(orders_loaded, 60_000 - 240);
    assert_eq!(summary.rows_in, 60_000);

    // Dead letters: exactly the malformed lines, each with its own text and a reason.
    let file = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = file.lines().collect();
    let mut reader = csv::Reader::from_path(&letters).unwrap();
    let mut dead = BTreeSet::new();
    for record in reader.records() {
        let record = record.unwrap();
        let line: u64 = record[0].parse().unwrap();
        assert!(
            !record[1].is_empty(),
            "a dead letter without a reason: {record:?}"
        );
        assert_eq!(&record[2], lines[line as usize - 1], "line {line}");
        assert!(dead.insert(line), "line {line} dead-lettered twice");
    }
    let malformed: BTreeSet<u64> = generated.malformed_lines.iter().copied().collect();
    assert_eq!(dead, malformed);
    assert_eq!(bad_lines.into_iter().collect::<BTreeSet<_>>(), malformed);
    assert_eq!(summary.dead_letters, 240);
}

#[test]
fn both_aggregations_equal_the_sequential_one_for_any_parallelism() {
    let dir = dir("parallelism");
    let csv = dir.join("orders.csv");
    orders::generate(&csv, 20_000, 50).unwrap();
    let (expected, _) = orders::aggregate_sequential(&csv).unwrap();
    let expected = by_day_text(expected);
    for readers in 1..=4 {
        let merged: Vec<(Key, Total)> =
            orders::aggregate_merged(&csv, ErrorPolicy::skip(), readers)
                .collect()
                .unwrap();
        assert_eq!(
            merged.len(),
            expected.len(),
            "readers {readers}: a key twice?"
        );
        assert_eq!(by_day_text(merged), expected, "readers {readers}");
        for stages in 1..=3 {
            let partitioned: Vec<(Key, Total)> =
                orders::aggregate(&csv, ErrorPolicy::skip(), readers, stages)
                    .collect()
                    .unwrap();
            assert_eq!(partitioned.len(), expected.len());
            assert_eq!(
                by_day_text(partitioned),
                expected,
                "readers {readers} stages {stages}"
            );
        }
    }
}

#[test]
fn a_malformed_row_fails_the_run_by_default() {
    let dir = dir("fail");
    let csv = dir.join("orders.csv");
    let generated = orders::generate(&csv, 1_000, 1).unwrap();
    let error = orders::aggregate(&csv, ErrorPolicy::fail(), 2, 2)
        .collect::<Vec<_>>()
        .unwrap_err();
    let line = generated.malformed_lines[0];
    assert!(
        error.to_string().contains(&format!("orders.csv:{line}: ")),
        "{error}"
    );
}

#[test]
fn a_loader_error_ends_the_run_with_a_typed_error() {
    // The same key twice: the primary key rejects the second insert.
    let dir = dir("loader");
    let (loader, _) = orders::sqlite_loader(&dir.join("orders.db")).unwrap();
    let rows = vec![((1u32, Day(1)), (1u64, 100i64)); 2];
    let error = Flow::from_iter(rows)
        .batch(10, Duration::from_millis(10))
        .run_into(loader)
        .unwrap_err();
    let FlowError::StageFailed { stage, message, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(stage.name, "sink");
    assert!(message.contains("UNIQUE constraint failed"), "{message}");
}
