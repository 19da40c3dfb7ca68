//! CSV and JSON-lines sources and sinks: typed records, line numbers, error policies.
#![cfg(all(feature = "csv", feature = "json"))]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use flowstage::FlowError;
use flowstage::flow::{DeadLetter, ErrorPolicy, Flow, OperatorError};
use flowstage::sink::{CsvSink, JsonLinesSink};
use flowstage::source::{BadRecord, CsvSource, JsonLinesSource};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: u32,
    name: String,
    amount: f64,
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flowstage-csv-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// The `Record` error under a run's error (stage → operator → record).
fn record_error(error: &FlowError) -> &FlowError {
    let FlowError::StageFailed {
        source: Some(source),
        ..
    } = error
    else {
        panic!("expected StageFailed, got {error:?}");
    };
    let operator = source
        .downcast_ref::<OperatorError>()
        .expect("an operator error");
    operator
        .source
        .downcast_ref::<FlowError>()
        .expect("a FlowError inside")
}

type Letters = Arc<Mutex<Vec<DeadLetter<BadRecord>>>>;

fn collecting_policy() -> (ErrorPolicy<BadRecord>, Letters) {
    let letters: Letters = Arc::default();
    let into = letters.clone();
    let policy = ErrorPolicy::dead_letter(move |batch| {
        into.lock().unwrap().extend(batch);
        Ok(())
    });
    (policy, letters)
}

#[test]
fn a_bad_csv_row_fails_the_run_with_file_and_line() {
    let path = temp("fail.csv");
    std::fs::write(&path, "id,name,amount\n1,a,1.0\n2,b,1.0\n3,c,x\n4,d,1\n").unwrap();
    let error = Flow::from_source(CsvSource::<Row>::new(&path).readers(2))
        .collect::<Vec<_>>()
        .unwrap_err();
    let FlowError::Record {
        path: file,
        line,
        message,
    } = record_error(&error)
    else {
        panic!("expected a Record error, got {error:?}");
    };
    assert_eq!(file, &path);
    assert_eq!(*line, 4);
    assert!(message.starts_with("field `amount`"), "{message}");
}

#[test]
fn csv_without_headers_by_position_and_other_delimiters() {
    let path = temp("positional.csv");
    std::fs::write(&path, "1;a;2.5\r\n2;b;0\r\n").unwrap();
    let mut rows: Vec<Row> =
        Flow::from_source(CsvSource::new(&path).has_headers(false).delimiter(b';'))
            .collect()
            .unwrap();
    rows.sort_by_key(|r| r.id);
    assert_eq!(
        rows[0],
        Row {
            id: 1,
            name: "a".into(),
            amount: 2.5
        }
    );
    assert_eq!(rows.len(), 2);
}

#[test]
fn wrong_field_counts_are_malformed_rows() {
    let path = temp("fields.csv");
    std::fs::write(&path, "id,name,amount\n1,a\n2,b,1,extra\n3,c,3\n").unwrap();
    let (policy, letters) = collecting_policy();
    let report = Flow::from_source(CsvSource::<Row>::new(&path).on_error(policy))
        .run()
        .unwrap();
    let mut letters: Vec<(u64, String, String)> = letters
        .lock()
        .unwrap()
        .iter()
        .map(|l| (l.event.line, l.event.text.clone(), l.error.to_string()))
        .collect();
    letters.sort();
    assert_eq!(letters[0].0, 2);
    assert_eq!(letters[0].1, "1,a");
    assert!(
        letters[0]
            .2
            .ends_with("fields.csv:2: expected 3 fields, found 2"),
        "{}",
        letters[0].2
    );
    assert_eq!(letters[1].0, 3);
    assert_eq!(report.errors[0].operator, "csv");
    assert_eq!(report.errors[0].dead_lettered, 2);
}

#[test]
fn json_lines_fail_with_line_and_skip_counts() {
    let path = temp("events.jsonl");
    std::fs::write(&path, "{\"id\":1,\"name\":\"a\",\"amount\":1}\n{\"id\":2}\n\n{\"id\":\"x\",\"name\":\"b\",\"amount\":1}\n").unwrap();
    // One reader, so the first bad line is the one that ends the run.
    let error = Flow::from_source(JsonLinesSource::<Row>::new(&path).readers(1))
        .run()
        .unwrap_err();
    let FlowError::Record { line, .. } = record_error(&error) else {
        panic!("{error:?}");
    };
    assert_eq!(*line, 2);
    let report =
        Flow::from_source(JsonLinesSource::<Row>::new(&path).on_error(ErrorPolicy::skip()))
            .run()
            .unwrap();
    assert_eq!(report.errors[0].operator, "json");
    assert_eq!(report.errors[0].skipped, 2);
}

#[test]
fn sinks_write_what_sources_read_back() {
    let rows: Vec<Row> = (0..5000)
        .map(|id| Row {
            id,
            name: format!("n,{id}\""),
            amount: id as f64 / 4.0,
        })
        .collect();
    let csv = temp("roundtrip.csv");
    let json = temp("roundtrip.jsonl");
    Flow::from_iter(rows.clone())
        .run_into(CsvSink::create(&csv).unwrap())
        .unwrap();
    Flow::from_iter(rows.clone())
        .run_into(JsonLinesSink::create(&json).unwrap())
        .unwrap();
    let mut from_csv: Vec<Row> =
        Flow::from_source(CsvSource::new(&csv).readers(3).block_size(1000))
            .collect()
            .unwrap();
    let mut from_json: Vec<Row> =
        Flow::from_source(JsonLinesSource::new(&json).readers(3).block_size(1000))
            .collect()
            .unwrap();
    from_csv.sort_by_key(|r| r.id);
    from_json.sort_by_key(|r| r.id);
    assert_eq!(from_csv, rows);
    assert_eq!(from_json, rows);
}

#[test]
fn a_sink_that_cannot_write_names_its_file() {
    let error = CsvSink::<Row>::create("/nonexistent-dir/x.csv").unwrap_err();
    assert!(
        matches!(&error, FlowError::Io { path: Some(path), .. } if path.ends_with("x.csv")),
        "{error:?}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Every good row is read once, every malformed row is a dead letter with its exact
    /// line and text, for any number of readers and block size.
    #[test]
    fn every_row_once_and_every_bad_line_exact(
        rows in prop::collection::vec(prop_oneof![4 => Just(true), 1 => Just(false)], 0..300),
        readers in 1usize..5,
        block_size in 8usize..200,
        json in any::<bool>(),
    ) {
        let path = temp(&format!("prop-{}.{}", std::thread::current().name().unwrap_or("t").replace(':', "_"), if json { "jsonl" } else { "csv" }));
        let mut text = String::new();
        let mut good = Vec::new();
        let mut bad = Vec::new();
        if !json {
            text.push_str("id,name,amount\n");
        }
        for (i, ok) in rows.iter().enumerate() {
            let line = i as u64 + if json { 1 } else { 2 };
            let row = Row { id: i as u32, name: format!("r{i}"), amount: i as f64 };
            let record = match (ok, json) {
                (true, false) => format!("{},{},{}", row.id, row.name, row.amount),
                (true, true) => serde_json::to_string(&row).unwrap(),
                (false, false) => format!("{},{},not-a-number", row.id, row.name),
                (false, true) => format!("{{\"id\":{},\"name\":", row.id),
            };
            text.push_str(&record);
            text.push('\n');
            if *ok { good.push(row) } else { bad.push((line, record)) }
        }
        std::fs::write(&path, &text).unwrap();
        let (policy, letters) = collecting_policy();
        let mut out: Vec<Row> = if json {
            Flow::from_source(JsonLinesSource::new(&path).readers(readers).block_size(block_size).on_error(policy)).collect().unwrap()
        } else {
            Flow::from_source(CsvSource::new(&path).readers(readers).block_size(block_size).on_error(policy)).collect().unwrap()
        };
        out.sort_by_key(|r| r.id);
        let mut dead: Vec<(u64, String)> = letters.lock().unwrap().iter().map(|l| (l.event.line, l.event.text.clone())).collect();
        dead.sort();
        prop_assert_eq!(out, good);
        prop_assert_eq!(dead, bad);
    }
}
