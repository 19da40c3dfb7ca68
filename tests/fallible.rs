//! Fallible operators: `try_map`, `try_flat_map` and their error policies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flowstage::FlowError;
use flowstage::flow::{DeadLetter, ErrorPolicy, Flow, OperatorError, Partition, Shuffle};
use proptest::prelude::*;

/// try_map hands the event over and takes it back in the `Err`.
fn parse(s: String) -> Result<u64, (String, std::num::ParseIntError)> {
    s.parse::<u64>().map_err(|e| (s, e))
}

#[test]
fn fail_is_the_default_and_names_stage_and_operator() {
    let error = Flow::from_iter(vec!["1".to_string(), "oops".into(), "3".into()])
        .try_map(parse)
        .collect::<Vec<u64>>()
        .unwrap_err();
    let FlowError::StageFailed {
        stage,
        message,
        source,
    } = &error
    else {
        panic!("expected StageFailed, got {error:?}");
    };
    assert!(stage.name.starts_with("from_iter"), "{stage}");
    assert!(message.starts_with("try_map: invalid digit"), "{message}");
    let operator = source
        .as_ref()
        .and_then(|s| s.downcast_ref::<OperatorError>())
        .expect("the source is the operator's error");
    assert_eq!(operator.operator, "try_map");
    assert!(
        operator
            .source
            .downcast_ref::<std::num::ParseIntError>()
            .is_some()
    );
}

#[test]
fn fail_after_a_reduce_reaches_the_stage() {
    // The failing operator runs after a reducer, at its Done trigger.
    let error = Flow::from_iter(1..=10u64)
        .partition(Partition::new().stages(2))
        .reduce(|| 0u64, |x, sum| sum + x)
        .emit_state()
        .try_map(|sum: u64| {
            if sum > 0 {
                Err((sum, "a sum"))
            } else {
                Ok(sum)
            }
        })
        .collect::<Vec<u64>>()
        .unwrap_err();
    assert!(error.to_string().contains("try_map: a sum"), "{error}");
    assert!(
        error
            .stage()
            .is_some_and(|s| s.name.starts_with("partition"))
    );
}

#[test]
fn skip_drops_and_counts_across_stages() {
    let input: Vec<Vec<String>> = vec![
        (0..1000)
            .map(|i| {
                if i % 10 == 0 {
                    format!("x{i}")
                } else {
                    i.to_string()
                }
            })
            .collect(),
        (1000..2000).map(|i| i.to_string()).collect(),
    ];
    let policy = ErrorPolicy::skip();
    let counters = policy.counters();
    let mut out: Vec<u64> = Flow::from_iters(input)
        .try_map(parse)
        .on_error(policy)
        .shuffle(Shuffle::shuffle().stages(2))
        .collect()
        .unwrap();
    out.sort();
    assert_eq!(out.len(), 1900);
    assert_eq!(counters.skipped(), 100);
    assert_eq!(counters.dead_lettered(), 0);
}

#[test]
fn counts_are_in_the_report() {
    let report = Flow::from_iter(vec!["1".to_string(), "b".into(), "c".into()])
        .try_map(parse)
        .on_error(ErrorPolicy::skip())
        .try_flat_map(|n: u64| if n == 1 { Err((n, "one")) } else { Ok(vec![n]) })
        .on_error(ErrorPolicy::dead_letter_fn(|_letters| Ok(())))
        .run()
        .unwrap();
    assert_eq!(report.errors.len(), 2);
    let by_name: HashMap<_, _> = report
        .errors
        .iter()
        .map(|e| (e.operator.as_str(), e))
        .collect();
    assert_eq!(by_name["try_map"].skipped, 2);
    assert_eq!(by_name["try_flat_map"].dead_lettered, 1);
}

#[test]
fn a_failing_dead_letter_sink_fails_the_run() {
    let error = Flow::from_iter(vec!["x".to_string()])
        .try_map(parse)
        .on_error(ErrorPolicy::dead_letter_fn(|_letters| {
            Err("disk full".into())
        }))
        .run()
        .unwrap_err();
    assert!(error.to_string().contains("disk full"), "{error}");
}

#[test]
fn try_flat_map_fail_stops_the_run() {
    let result = Flow::from_iter(0..100u32)
        .try_flat_map(|n: u32| {
            if n == 57 {
                Err((n, format!("bad {n}")))
            } else {
                Ok(vec![n, n])
            }
        })
        .collect::<Vec<u32>>();
    assert!(
        result
            .unwrap_err()
            .to_string()
            .contains("try_flat_map: bad 57")
    );
}

type Letters = Arc<Mutex<Vec<DeadLetter<(usize, String)>>>>;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every event is either in the output (parsed) or in the dead letters (with its
    /// error), exactly once, for any split into readers and any stage count.
    #[test]
    fn dead_letters_partition_the_input(
        input in prop::collection::vec(prop_oneof![3 => (0u64..1000).prop_map(|n| n.to_string()), 1 => "[a-z]{1,3}"], 0..400),
        readers in 1usize..4,
        stages in 1usize..4,
    ) {
        let chunks: Vec<Vec<(usize, String)>> = {
            let indexed: Vec<(usize, String)> = input.iter().cloned().enumerate().collect();
            let size = indexed.len().div_ceil(readers).max(1);
            let mut chunks: Vec<Vec<_>> = indexed.chunks(size).map(<[_]>::to_vec).collect();
            if chunks.is_empty() { chunks.push(Vec::new()); }
            chunks
        };
        let letters: Letters = Arc::default();
        let into = letters.clone();
        let mut ok: Vec<(usize, u64)> = Flow::from_iters(chunks)
            .shuffle(Shuffle::shuffle().stages(stages).max_demand(7))
            .try_map(|(i, s): (usize, String)| match s.parse::<u64>() { Ok(n) => Ok((i, n)), Err(e) => Err(((i, s), e)) })
            .on_error(ErrorPolicy::dead_letter_fn(move |batch| { into.lock().unwrap().extend(batch); Ok(()) }))
            .collect()
            .unwrap();
        ok.sort();
        let mut bad: Vec<usize> = letters.lock().unwrap().iter().map(|l| l.event.0).collect();
        bad.sort();
        let expected_ok: Vec<(usize, u64)> = input.iter().enumerate().filter_map(|(i, s)| s.parse().ok().map(|n| (i, n))).collect();
        let expected_bad: Vec<usize> = input.iter().enumerate().filter(|(_, s)| s.parse::<u64>().is_err()).map(|(i, _)| i).collect();
        prop_assert_eq!(ok, expected_ok);
        prop_assert_eq!(bad, expected_bad);
        for letter in letters.lock().unwrap().iter() {
            prop_assert_eq!(letter.operator, "try_map");
            prop_assert!(letter.error.to_string().contains("invalid digit"));
        }
    }
}

/// A slow dead-letter consumer slows the stages that make letters: what has been
/// rejected and not yet consumed stays within the letter channel, the letter stage's
/// demand and a batch per stage — never the whole input.
#[test]
fn a_slow_dead_letter_consumer_holds_the_flow_back() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let rejected = Arc::new(AtomicUsize::new(0));
    let consumed = Arc::new(AtomicUsize::new(0));
    let worst = Arc::new(AtomicUsize::new(0));
    let (made, eaten, ahead) = (rejected.clone(), consumed.clone(), worst.clone());
    let report = Flow::from_iter(0..200_000u64)
        .try_map(move |n: u64| {
            made.fetch_add(1, SeqCst);
            Err::<u64, _>((n, "all bad"))
        })
        .on_error(ErrorPolicy::dead_letter_fn(
            move |letters: Vec<DeadLetter<u64>>| {
                ahead.fetch_max(rejected.load(SeqCst) - eaten.load(SeqCst), SeqCst);
                std::thread::sleep(std::time::Duration::from_micros(300));
                eaten.fetch_add(letters.len(), SeqCst);
                Ok(())
            },
        ))
        .run()
        .unwrap();
    assert_eq!(consumed.load(SeqCst), 200_000);
    assert_eq!(report.errors[0].dead_lettered, 200_000);
    // 4 batches in the channel, 1 000 asked by the letter sink, one batch waiting in
    // the stage and one being made: batches are at most 1 000 events here.
    let worst = worst.load(SeqCst);
    assert!(worst <= 8_000, "{worst} letters waited for the consumer");
}

/// Dead letters of a CSV source go, as they are, to a JSON-lines file.
#[cfg(all(feature = "csv", feature = "json"))]
#[test]
fn dead_letters_into_a_json_lines_sink() {
    use flowstage::sink::JsonLinesSink;
    use flowstage::source::{BadRecord, CsvSource};
    let dir = std::env::temp_dir().join(format!("flowstage-dead-json-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (csv, letters) = (dir.join("in.csv"), dir.join("letters.jsonl"));
    let mut text = String::from("id,amount\n");
    for i in 0..5_000u32 {
        if i % 97 == 0 {
            text.push_str(&format!("{i},n/a\n"));
        } else {
            text.push_str(&format!("{i},{}\n", i * 2));
        }
    }
    std::fs::write(&csv, &text).unwrap();
    #[derive(serde::Deserialize)]
    struct Row {
        #[allow(dead_code)]
        id: u32,
        amount: u64,
    }
    let sink: JsonLinesSink<DeadLetter<BadRecord>> = JsonLinesSink::create(&letters).unwrap();
    let rows: Vec<Row> = Flow::from_source(
        CsvSource::<Row>::new(&csv)
            .readers(3)
            .block_size(4096)
            .on_error(ErrorPolicy::dead_letter(sink)),
    )
    .collect()
    .unwrap();
    assert_eq!(rows.len(), 5_000 - 52);
    assert!(rows.iter().all(|r| r.amount % 2 == 0));
    let written = std::fs::read_to_string(&letters).unwrap();
    let mut lines: Vec<u64> = written
        .lines()
        .map(|line| {
            let letter: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(letter["operator"], "csv");
            let line = letter["event"]["line"].as_u64().unwrap();
            let id = (line - 2) as u32;
            assert_eq!(letter["event"]["text"], format!("{id},n/a"));
            assert!(letter["error"].as_str().unwrap().contains("field `amount`"));
            line
        })
        .collect();
    lines.sort();
    let expected: Vec<u64> = (0..5_000u64)
        .filter(|i| i % 97 == 0)
        .map(|i| i + 2)
        .collect();
    assert_eq!(lines, expected);
}

/// Every dead letter reaches a slow consumer whatever runs the fallible step — a shared
/// source's readers, rayon's splits, a stage after `map_init` — so each of them waits for
/// the letters as a stage does (without it, letters beyond the channel's room were never
/// sent).
#[test]
fn every_dead_letter_arrives_whatever_runs_the_step() {
    use rayon::prelude::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    const N: u64 = 20_000;
    let odd = |n: u64| if n % 2 == 0 { Ok(n) } else { Err((n, "odd")) };
    let slow = |eaten: Arc<AtomicUsize>| {
        ErrorPolicy::dead_letter_fn(move |letters: Vec<DeadLetter<u64>>| {
            std::thread::sleep(std::time::Duration::from_micros(200));
            eaten.fetch_add(letters.len(), SeqCst);
            Ok(())
        })
    };
    let evens = (0..N).filter(|n| n % 2 == 0);
    for stages in [1, 2, 3] {
        let eaten = Arc::new(AtomicUsize::new(0));
        let count = Flow::from_iter(0..N)
            .stages(stages)
            .try_map(odd)
            .on_error(slow(eaten.clone()))
            .count()
            .unwrap();
        assert_eq!(count as u64, N / 2);
        assert_eq!(eaten.load(SeqCst) as u64, N / 2, "count, {stages} stages");

        let eaten = Arc::new(AtomicUsize::new(0));
        let sum: u64 = Flow::from_par_iter((0..N).into_par_iter())
            .stages(stages)
            .try_map(odd)
            .on_error(slow(eaten.clone()))
            .sum()
            .unwrap();
        assert_eq!(sum, evens.clone().sum::<u64>());
        assert_eq!(
            eaten.load(SeqCst) as u64,
            N / 2,
            "from_par_iter, {stages} stages"
        );

        let eaten = Arc::new(AtomicUsize::new(0));
        let mut mapped: Vec<u64> = Flow::from_iters(vec![0..N / 2, N / 2..N])
            .shuffle(Shuffle::shuffle().stages(stages))
            .map_init(|_| 1u64, |one, n| n + *one)
            .try_map(move |n| odd(n - 1).map(|n| n + 1).map_err(|(n, e)| (n + 1, e)))
            .on_error(slow(eaten.clone()))
            .collect()
            .unwrap();
        mapped.sort_unstable();
        assert_eq!(mapped, evens.clone().map(|n| n + 1).collect::<Vec<_>>());
        assert_eq!(
            eaten.load(SeqCst) as u64,
            N / 2,
            "map_init, {stages} stages"
        );
    }
}
