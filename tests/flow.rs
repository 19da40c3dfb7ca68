//! Behaviour tests of the flow layer (SEMANTICS.md, "Flow layer" and "Defaults").
//!
//! One test per behaviour; each asserts on what the flow emitted, what its closures saw,
//! its compiled graph or its run's result. Timeouts appear only as hang watchdogs: a flow
//! that does not finish within [`WATCHDOG`] fails its test instead of hanging the suite.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{WATCHDOG, guarded};
use flowstage::flow::{Flow, Partition, Plan, Shuffle, TriggerName};
use flowstage::source::{BoxedProducer, Source};
use flowstage::stage::{Pipeline, Produced, Producer, SubscribeOptions, consumer_fn, from_iter};
use flowstage::{FlowError, StageError, StageKind};
use futures::StreamExt;

/// Awaits `future`, failing the test if it takes longer than the watchdog.
async fn watch<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(WATCHDOG, future)
        .await
        .expect("watchdog: the flow hung")
}

/// Waits (polling) until `condition` holds; fails the test if it never does.
async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let waited = tokio::time::timeout(WATCHDOG, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "watchdog: never saw {what}");
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

/// An endless counter `0, 1, 2, ...` that counts what it produced and flags its drop:
/// `from_iter(0..)` with a way to see that the source stopped.
struct Endless {
    next: u64,
    produced: Arc<AtomicU64>,
    dropped: Arc<AtomicBool>,
}

fn endless() -> (Endless, Arc<AtomicU64>, Arc<AtomicBool>) {
    let produced = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let source = Endless {
        next: 0,
        produced: produced.clone(),
        dropped: dropped.clone(),
    };
    (source, produced, dropped)
}

impl Iterator for Endless {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        self.produced.fetch_add(1, SeqCst);
        self.next += 1;
        Some(self.next - 1)
    }
}

impl Drop for Endless {
    fn drop(&mut self) {
        self.dropped.store(true, SeqCst);
    }
}

/// A deterministic pseudo-random sequence (an LCG), for inputs with duplicates.
fn pseudo_random(len: usize, modulo: u32, seed: u64) -> Vec<u32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as u32) % modulo
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Stateless operators and fusion
// ---------------------------------------------------------------------------------------

#[test]
fn two_sources_filter_even_plus_one_times_two() {
    let out: Vec<u32> = guarded(|| {
        Flow::from_iters(vec![vec![1u32, 2, 3], vec![4, 5, 6]])
            .filter(|x| x % 2 == 0)
            .map(|x| x + 1)
            .map(|x| x * 2)
            .collect()
    })
    .unwrap();
    assert_eq!(sorted(out), [6, 10, 14]);
}

#[test]
fn fusion_keeps_operator_order() {
    // map then filter: 1..=6 → 2..=7 → evens 2, 4, 6 → ×2.
    let map_first: Vec<u32> = guarded(|| {
        Flow::from_iters(vec![vec![1u32, 2, 3], vec![4, 5, 6]])
            .map(|x| x + 1)
            .filter(|x| x % 2 == 0)
            .map(|x| x * 2)
            .collect()
    })
    .unwrap();
    assert_eq!(sorted(map_first), [4, 8, 12]);
    // The same operators in the order of the SEMANTICS example give something else.
    let filter_first: Vec<u32> = guarded(|| {
        Flow::from_iters(vec![vec![1u32, 2, 3], vec![4, 5, 6]])
            .filter(|x| x % 2 == 0)
            .map(|x| x + 1)
            .map(|x| x * 2)
            .collect()
    })
    .unwrap();
    assert_eq!(sorted(filter_first), [6, 10, 14]);
}

#[test]
fn single_producer_single_stage_keeps_order() {
    let out: Vec<u32> = guarded(|| {
        Flow::from_iter(0..10_000u32)
            .stages(1)
            .map(|x| x * 3)
            .filter(|x| x % 2 == 0)
            .collect()
    })
    .unwrap();
    let expected: Vec<u32> = (0..10_000u32)
        .map(|x| x * 3)
        .filter(|x| x % 2 == 0)
        .collect();
    assert_eq!(out, expected);
}

#[test]
fn reject_drops_matching_events() {
    let out: Vec<u32> = guarded(|| {
        Flow::from_iters(vec![0..50u32, 50..100])
            .reject(|x| x % 3 == 0)
            .collect()
    })
    .unwrap();
    assert_eq!(
        sorted(out),
        (0..100u32).filter(|x| x % 3 != 0).collect::<Vec<_>>()
    );
}

#[test]
fn filter_map_keeps_the_somes() {
    let words = vec!["1", "x", "22", "", "333", "-4", "y5"];
    let out: Vec<i32> = guarded(move || {
        Flow::from_iter(words)
            .filter_map(|w: &str| w.parse::<i32>().ok())
            .collect()
    })
    .unwrap();
    assert_eq!(out, [1, 22, 333, -4]);
}

#[test]
fn inspect_sees_every_event_and_passes_it_on() {
    let before = Arc::new(AtomicUsize::new(0));
    let after = Arc::new(AtomicUsize::new(0));
    let sum = Arc::new(AtomicU64::new(0));
    let (b, a, s) = (before.clone(), after.clone(), sum.clone());
    let out: Vec<u64> = guarded(move || {
        Flow::from_iters(vec![0..700u64, 700..1500, 1500..1501])
            .inspect(move |_| {
                b.fetch_add(1, SeqCst);
            })
            .inspect(move |x| {
                s.fetch_add(*x, SeqCst);
            })
            .partition(Partition::new().stages(3))
            .inspect(move |_| {
                a.fetch_add(1, SeqCst);
            })
            .collect()
    })
    .unwrap();
    assert_eq!(before.load(SeqCst), 1501);
    assert_eq!(after.load(SeqCst), 1501);
    assert_eq!(sum.load(SeqCst), (0..1501u64).sum::<u64>());
    assert_eq!(sorted(out), (0..1501u64).collect::<Vec<_>>());
}

#[test]
fn map_values_maps_only_values() {
    let pairs = vec![("a", 1u32), ("b", 2), ("a", 3), ("c", 4)];
    let out: Vec<(&str, String)> = guarded(move || {
        Flow::from_iter(pairs)
            .map_values(|v| format!("<{v}>"))
            .collect()
    })
    .unwrap();
    assert_eq!(
        out,
        [
            ("a", "<1>".to_string()),
            ("b", "<2>".to_string()),
            ("a", "<3>".to_string()),
            ("c", "<4>".to_string())
        ]
    );
}

#[test]
fn flat_map_expands_and_drops() {
    // Each x becomes x % 4 copies of itself: 0 copies drops it.
    let out: Vec<u32> = guarded(|| {
        Flow::from_iters(vec![0..1000u32, 1000..3000])
            .flat_map(|x| std::iter::repeat_n(x, (x % 4) as usize))
            .collect()
    })
    .unwrap();
    let expected: Vec<u32> = (0..3000u32)
        .flat_map(|x| std::iter::repeat_n(x, (x % 4) as usize))
        .collect();
    assert_eq!(sorted(out), expected);
}

#[test]
fn flat_map_large_expansion_is_not_lost() {
    // One event becomes far more events than any demand: the surplus waits, none drops.
    let out: Vec<u32> = guarded(|| {
        Flow::from_iter(0..3u32)
            .flat_map(|x| (0..25_000u32).map(move |y| x * 100_000 + y))
            .collect()
    })
    .unwrap();
    assert_eq!(out.len(), 75_000);
    assert_eq!(out.iter().collect::<HashSet<_>>().len(), 75_000);
}

// ---------------------------------------------------------------------------------------
// map_batch
// ---------------------------------------------------------------------------------------

#[test]
fn map_batch_sees_whole_batches_at_the_source() {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = sizes.clone();
    let out: Vec<u32> = guarded(move || {
        // One stage: the batches are the reads of the iterator, in its order (stages
        // sharing it split the tail, whose last read may hold a single event).
        Flow::from_iter(0..20_000u32)
            .stages(1)
            .map_batch(move |batch: Vec<u32>| {
                seen.lock().unwrap().push(batch.len());
                batch
            })
            .map(|x| x + 1)
            .collect()
    })
    .unwrap();
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 20_000);
    // Default demand (1000/500): the source is asked for hundreds at a time.
    assert!(
        sizes.iter().all(|&size| size > 1),
        "every batch of a large input has more than one event: {sizes:?}"
    );
    assert!(sizes.iter().all(|&size| size <= 1000), "{sizes:?}");
    assert_eq!(out, (1..=20_000u32).collect::<Vec<_>>());
}

#[test]
fn map_batch_after_partition_sees_chunks_bounded_by_demand() {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = sizes.clone();
    let out: Vec<usize> = guarded(move || {
        Flow::from_iter(0..5000u32)
            .partition(Partition::new().stages(2).max_demand(100).min_demand(60))
            .map_batch(move |batch: Vec<u32>| {
                seen.lock().unwrap().push(batch.len());
                vec![batch.len()]
            })
            .collect()
    })
    .unwrap();
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 5000);
    assert_eq!(out.iter().sum::<usize>(), 5000);
    // A stage handles at most max - min = 40 events at once.
    assert!(
        sizes.iter().all(|&size| (1..=40).contains(&size)),
        "{sizes:?}"
    );
}

#[test]
fn map_batch_is_never_called_with_an_empty_batch() {
    // A multiple of the demand: the source's last answer is an empty `Finished`.
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = sizes.clone();
    let out: Vec<usize> = guarded(move || {
        Flow::from_iter(0..20_000u32)
            .map_batch(move |batch: Vec<u32>| {
                seen.lock().unwrap().push(batch.len());
                vec![batch.len()]
            })
            .collect()
    })
    .unwrap();
    let sizes = sizes.lock().unwrap().clone();
    assert!(
        !sizes.contains(&0),
        "map_batch saw an empty batch: {sizes:?}"
    );
    assert!(!out.contains(&0));
    assert_eq!(out.iter().sum::<usize>(), 20_000);
}

// ---------------------------------------------------------------------------------------
// explain
// ---------------------------------------------------------------------------------------

#[test]
fn explain_text_shows_fused_operators_in_order_per_stage() {
    let explained = Flow::from_iters(vec![vec![1u32, 2, 3], vec![4, 5, 6]])
        .filter(|x| x % 2 == 0)
        .map(|x| x + 1)
        .map(|x| x * 2)
        .partition(Partition::new().stages(3))
        .inspect(|_| {})
        .reduce(|| 0u32, |x, sum| sum + x)
        .emit_state()
        .map(|sum| sum + 1)
        .explain()
        .unwrap();
    let text = explained.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(explained.stages(), 5, "{text}");
    assert_eq!(lines.len(), 5, "{text}");
    for (index, line) in lines.iter().take(2).enumerate() {
        assert!(line.contains(&format!("from_iters[{index}]")), "{line}");
        assert!(line.contains("(producer)"), "{line}");
        assert!(line.contains(": filter → map → map;"), "{line}");
        assert!(line.contains("dispatch partition(3)"), "{line}");
        // Each source feeds every partition stage (2, 3, 4).
        assert!(line.ends_with("-> 2, 3, 4"), "{line}");
    }
    for (offset, line) in lines.iter().skip(2).enumerate() {
        assert!(line.contains(&format!("partition[{offset}]")), "{line}");
        assert!(line.contains("(producer-consumer)"), "{line}");
        assert!(
            line.contains(": inspect → reduce(emit state) → map;"),
            "{line}"
        );
        assert!(line.contains("dispatch demand"), "{line}");
    }
}

#[test]
fn explain_dot_has_every_stage_and_subscription() {
    let dot = Flow::from_iters(vec![0..3u32, 3..6])
        .filter(|x| x % 2 == 0)
        .map(|x| x + 1)
        .partition(Partition::new().stages(3))
        .reduce(|| 0u32, |x, sum| sum + x)
        .emit_state()
        .explain()
        .unwrap()
        .dot();
    assert!(dot.starts_with("digraph flow {"), "{dot}");
    assert!(dot.trim_end().ends_with('}'), "{dot}");
    for source in 0..2 {
        let node = dot
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("s{source} [")))
            .unwrap_or_else(|| panic!("no node s{source}: {dot}"));
        assert!(node.contains(&format!("from_iters[{source}]")), "{node}");
        assert!(node.contains("filter → map"), "{node}");
        assert!(node.contains("partition(3)"), "{node}");
        for partition in 2..5 {
            assert!(
                dot.contains(&format!("s{source} -> s{partition};")),
                "{dot}"
            );
        }
    }
    for partition in 2..5 {
        let node = dot
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("s{partition} [")))
            .unwrap_or_else(|| panic!("no node s{partition}: {dot}"));
        assert!(
            node.contains(&format!("partition[{}]", partition - 2)),
            "{node}"
        );
        assert!(node.contains("reduce(emit state)"), "{node}");
        assert!(node.contains("dispatch: demand"), "{node}");
    }
    assert_eq!(dot.matches(" -> ").count(), 6, "{dot}");
}

#[test]
fn explain_one_partition_stage_uses_the_demand_dispatcher() {
    let text = Flow::from_iter(0..10u32)
        .partition(Partition::new().stages(1))
        .map(|x| x + 1)
        .explain()
        .unwrap()
        .to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].contains("from_iter[0]"), "{text}");
    assert!(lines[0].contains("dispatch demand"), "{text}");
    assert!(!text.contains("partition(1)"), "{text}");
    assert!(lines[1].contains("partition[0]"), "{text}");
    assert!(lines[1].contains(": map;"), "{text}");
}

#[test]
fn explain_shows_shuffle_merge_departition_and_take_sort_layers() {
    let shuffle = Flow::from_iter(0..10u32)
        .shuffle(Shuffle::shuffle().stages(2))
        .map(|x| x + 1)
        .explain()
        .unwrap();
    let text = shuffle.to_string();
    assert_eq!(shuffle.stages(), 3, "{text}");
    assert!(
        text.lines().next().unwrap().contains("dispatch demand"),
        "{text}"
    );
    assert!(
        text.contains("shuffle[0]") && text.contains("shuffle[1]"),
        "{text}"
    );

    let merge = Flow::merge(
        vec![Flow::from_iter(0..3u32), Flow::from_iter(3..6u32)],
        Shuffle::shuffle().stages(3),
    )
    .explain()
    .unwrap();
    let text = merge.to_string();
    assert_eq!(merge.stages(), 5, "{text}");
    assert_eq!(text.matches("merge[").count(), 3, "{text}");

    let departed = Flow::from_iter(0..10u32)
        .partition(Partition::new().stages(4))
        .reduce(|| 0u32, |x, sum| sum + x)
        .emit_state()
        .departition(
            Vec::new,
            |s, mut v: Vec<u32>| {
                v.push(s);
                v
            },
            |v, _| v,
        )
        .explain()
        .unwrap();
    let text = departed.to_string();
    assert_eq!(departed.stages(), 6, "{text}");
    let last = text.lines().last().unwrap();
    assert!(last.contains("departition[0]"), "{text}");
    assert!(last.contains(": departition;"), "{text}");

    let top = Flow::from_iter(0..10u32)
        .partition(Partition::new().stages(2))
        .take_sort(3, |a: &u32, b: &u32| a.cmp(b))
        .explain()
        .unwrap();
    let text = top.to_string();
    assert_eq!(top.stages(), 4, "{text}");
    assert_eq!(text.matches("take_sort(3)").count(), 3, "{text}");
}

#[test]
fn explain_defaults_to_available_parallelism_stages() {
    let cores = flowstage::default_parallelism();
    let explained = Flow::from_iter(0..10u32)
        .partition(Partition::new())
        .explain()
        .unwrap();
    assert_eq!(explained.stages(), 1 + cores, "{explained}");
    let shuffled = Flow::from_iter(0..10u32)
        .partition(Partition::new().stages(3))
        .shuffle(Shuffle::shuffle())
        .explain()
        .unwrap();
    // Not inherited from the upstream layer.
    assert_eq!(shuffled.stages(), 1 + 3 + cores, "{shuffled}");
}

// ---------------------------------------------------------------------------------------
// Reduce family
// ---------------------------------------------------------------------------------------

#[test]
fn emit_and_reduce_emits_running_sums() {
    let out: Vec<u64> = guarded(|| {
        Flow::from_iter(1..=100u64)
            .partition(Partition::new().stages(1))
            .emit_and_reduce(|| 0u64, |x, sum| (vec![sum + x], sum + x))
            .collect()
    })
    .unwrap();
    let expected: Vec<u64> = (1..=100u64)
        .scan(0, |sum, x| {
            *sum += x;
            Some(*sum)
        })
        .collect();
    assert_eq!(out, expected);
}

#[test]
fn emit_and_reduce_with_emit_state_adds_the_final_state() {
    let out: Vec<u64> = guarded(|| {
        Flow::from_iter(1..=4u64)
            .partition(Partition::new().stages(1))
            .emit_and_reduce(|| 0u64, |x, sum| (vec![sum + x], sum + x))
            .emit_state()
            .collect()
    })
    .unwrap();
    assert_eq!(out, [1, 3, 6, 10, 10]);
}

#[test]
fn emit_and_reduce_with_on_trigger_over_partitions() {
    // Running sums are tagged `None`; at `Done` each stage adds its final sum, tagged with
    // its partition index.
    let out: Vec<(Option<usize>, u64)> = guarded(|| {
        Flow::from_iter(1..=1000u64)
            .partition(Partition::new().stages(4))
            .emit_and_reduce(|| 0u64, |x, sum| (vec![(None, sum + x)], sum + x))
            .on_trigger(|sum, partition, _| (vec![(Some(partition.index), sum)], sum))
            .collect()
    })
    .unwrap();
    let running: Vec<u64> = out.iter().filter(|e| e.0.is_none()).map(|e| e.1).collect();
    let finals: BTreeMap<usize, u64> = out.iter().filter_map(|e| Some((e.0?, e.1))).collect();
    assert_eq!(running.len(), 1000);
    assert_eq!(finals.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(finals.values().sum::<u64>(), 500_500);
    // Each final sum is the last running sum of its stage.
    let running: HashSet<u64> = running.into_iter().collect();
    assert!(
        finals.values().all(|f| running.contains(f) || *f == 0),
        "{finals:?}"
    );
}

#[test]
fn reduce_emit_state_emits_one_accumulator_per_stage() {
    let out: Vec<u64> = guarded(|| {
        Flow::from_iters(vec![1..=500u64, 501..=1000])
            .partition(Partition::new().stages(4))
            .reduce(|| 0u64, |x, sum| sum + x)
            .emit_state()
            .collect()
    })
    .unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(out.iter().sum::<u64>(), 500_500);
}

#[test]
fn reduce_emit_events_emits_the_accumulators_items() {
    let out: Vec<u32> = guarded(|| {
        Flow::from_iters(vec![0..300u32, 300..1000])
            .partition(Partition::new().stages(3))
            .reduce(Vec::new, |x, mut all: Vec<u32>| {
                all.push(x);
                all
            })
            .emit_events()
            .collect()
    })
    .unwrap();
    assert_eq!(sorted(out), (0..1000u32).collect::<Vec<_>>());
}

#[test]
fn reduce_emit_nothing_emits_nothing_but_still_reduces() {
    let folded = Arc::new(AtomicUsize::new(0));
    let count = folded.clone();
    let out: Vec<u64> = guarded(move || {
        Flow::from_iter(0..1000u64)
            .partition(Partition::new().stages(2))
            .reduce(
                || 0u64,
                move |x, sum| {
                    count.fetch_add(1, SeqCst);
                    sum + x
                },
            )
            .emit_nothing()
            .collect()
    })
    .unwrap();
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(folded.load(SeqCst), 1000);
}

#[test]
fn on_trigger_gets_partition_index_count_and_done_trigger() {
    let out: Vec<(usize, usize, u64, TriggerName, &'static str, i64)> = guarded(|| {
        Flow::from_iter(1..=1000u64)
            .partition(Partition::new().stages(4))
            .reduce(|| 0u64, |_, count| count + 1)
            .on_trigger(|count, partition, trigger| {
                (
                    vec![(
                        partition.index,
                        partition.count,
                        count,
                        trigger.name.clone(),
                        trigger.window.kind,
                        trigger.window.id,
                    )],
                    0,
                )
            })
            .collect()
    })
    .unwrap();
    let mut indexes: Vec<usize> = out.iter().map(|e| e.0).collect();
    indexes.sort();
    assert_eq!(indexes, [0, 1, 2, 3]);
    assert!(out.iter().all(|e| e.1 == 4), "{out:?}");
    assert_eq!(out.iter().map(|e| e.2).sum::<u64>(), 1000);
    assert!(
        out.iter()
            .all(|e| e.3 == TriggerName::Done && e.4 == "global" && e.5 == 0),
        "{out:?}"
    );
}

/// An accumulator that counts its drops.
struct Tally {
    events: u64,
    drops: Arc<AtomicUsize>,
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.drops.fetch_add(1, SeqCst);
    }
}

#[test]
fn on_trigger_accumulator_returned_at_done_is_dropped() {
    let drops = Arc::new(AtomicUsize::new(0));
    let made = drops.clone();
    let counts: Vec<u64> = guarded(move || {
        Flow::from_iter(0..300u32)
            .partition(Partition::new().stages(3))
            .reduce(
                move || Tally {
                    events: 0,
                    drops: made.clone(),
                },
                |_, mut tally| {
                    tally.events += 1;
                    tally
                },
            )
            // "Keep": the same accumulator comes back, and is dropped after `Done`.
            .on_trigger(|tally, _, _| (vec![tally.events], tally))
            .collect()
    })
    .unwrap();
    assert_eq!(counts.len(), 3);
    assert_eq!(counts.iter().sum::<u64>(), 300);
    // One accumulator per stage, each dropped once the run was over.
    assert_eq!(drops.load(SeqCst), 3);
}

#[test]
fn reduce_init_runs_once_per_stage_for_the_global_window() {
    let inits = Arc::new(AtomicUsize::new(0));
    let count = inits.clone();
    let out: Vec<u64> = guarded(move || {
        Flow::from_iter(0..100u64)
            .partition(Partition::new().stages(3))
            .reduce(
                move || {
                    count.fetch_add(1, SeqCst);
                    0u64
                },
                |x, sum| sum + x,
            )
            .emit_state()
            .collect()
    })
    .unwrap();
    assert_eq!(out.iter().sum::<u64>(), 4950);
    assert_eq!(inits.load(SeqCst), 3);
}

#[test]
fn reduce_in_the_source_layer_reduces_per_source() {
    let out: Vec<u64> = guarded(|| {
        Flow::from_iters(vec![0..10u64, 10..20, 20..30])
            .reduce(|| 0u64, |x, sum| sum + x)
            .emit_state()
            .collect()
    })
    .unwrap();
    assert_eq!(sorted(out), [45, 145, 245]);
}

#[test]
fn group_by_key_emit_state_events_nothing() {
    fn events() -> Vec<(&'static str, i32)> {
        vec![("foo", 1), ("foo", 2), ("bar", 3), ("foo", 4), ("bar", 5)]
    }
    let state: Vec<HashMap<&str, Vec<i32>>> = guarded(|| {
        Flow::from_iter(events())
            .partition(Partition::new().stages(1))
            .group_by_key()
            .emit_state()
            .collect()
    })
    .unwrap();
    let expected = HashMap::from([("foo", vec![4, 2, 1]), ("bar", vec![5, 3])]);
    assert_eq!(state, [expected]);

    let pairs: Vec<(&str, Vec<i32>)> = guarded(|| {
        Flow::from_iter(events())
            .partition(Partition::new().stages(1))
            .group_by_key()
            .emit_events()
            .collect()
    })
    .unwrap();
    assert_eq!(sorted(pairs), [("bar", vec![5, 3]), ("foo", vec![4, 2, 1])]);

    let nothing: Vec<(&str, Vec<i32>)> = guarded(|| {
        Flow::from_iter(events())
            .partition(Partition::new().stages(1))
            .group_by_key()
            .emit_nothing()
            .collect()
    })
    .unwrap();
    assert!(nothing.is_empty(), "{nothing:?}");
}

#[test]
fn group_by_key_default_emits_pairs() {
    let pairs: Vec<(&str, Vec<i32>)> = guarded(|| {
        Flow::from_iter(vec![
            ("foo", 1),
            ("foo", 2),
            ("bar", 3),
            ("foo", 4),
            ("bar", 5),
        ])
        .partition(Partition::new().stages(1))
        .group_by_key()
        .collect()
    })
    .unwrap();
    assert_eq!(sorted(pairs), [("bar", vec![5, 3]), ("foo", vec![4, 2, 1])]);
}

#[test]
fn group_by_key_over_partitions_splits_keys_and_keeps_newest_first() {
    let input: Vec<(u32, u32)> = (0..2000u32).map(|i| (i % 37, i)).collect();
    let states: Vec<HashMap<u32, Vec<u32>>> = guarded(move || {
        Flow::from_iter(input)
            .partition(Partition::by_key(|(k, _): &(u32, u32)| *k).stages(4))
            .group_by_key()
            .emit_state()
            .collect()
    })
    .unwrap();
    assert_eq!(states.len(), 4);
    let mut merged = HashMap::new();
    for state in states {
        for (key, values) in state {
            assert!(
                merged.insert(key, values).is_none(),
                "key {key} in two partitions"
            );
        }
    }
    assert_eq!(merged.len(), 37);
    for (key, values) in merged {
        let expected: Vec<u32> = (0..2000u32).filter(|i| i % 37 == key).rev().collect();
        assert_eq!(values, expected, "key {key}");
    }
}

#[test]
fn group_by_with_key_and_value_functions() {
    let words = vec![
        "apple",
        "avocado",
        "banana",
        "blueberry",
        "cherry",
        "apricot",
    ];
    let groups: Vec<(char, Vec<usize>)> = guarded(move || {
        Flow::from_iter(words)
            .partition(Partition::new().stages(1))
            .group_by(|w: &&str| w.chars().next().unwrap(), |w: &str| w.len())
            .collect()
    })
    .unwrap();
    assert_eq!(
        sorted(groups),
        [('a', vec![7, 7, 5]), ('b', vec![9, 6]), ('c', vec![6])]
    );
}

#[test]
fn departition_merges_every_partition_state_once() {
    let out: Vec<Vec<u64>> = guarded(|| {
        Flow::from_iter(1..=10u64)
            .partition(Partition::new().stages(4))
            .reduce(|| 0u64, |x, sum| sum + x)
            .emit_state()
            .departition(
                Vec::new,
                |sum, mut sums: Vec<u64>| {
                    sums.push(sum);
                    sums
                },
                |mut sums, _| {
                    sums.sort();
                    sums
                },
            )
            .collect()
    })
    .unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].len(), 4, "{out:?}");
    assert_eq!(out[0].iter().sum::<u64>(), 55);
    assert!(out[0].windows(2).all(|w| w[0] <= w[1]), "{out:?}");
}

#[test]
fn departition_then_map_applies_to_its_result() {
    let out: Vec<u64> = guarded(|| {
        Flow::from_iters(vec![1..=50u64, 51..=100])
            .partition(Partition::new().stages(3))
            .reduce(|| 0u64, |x, sum| sum + x)
            .emit_state()
            .departition(|| 0u64, |sum, total| total + sum, |total, _| total)
            .map(|total| total * 2)
            .collect()
    })
    .unwrap();
    assert_eq!(out, [10_100]);
}

// ---------------------------------------------------------------------------------------
// take_sort
// ---------------------------------------------------------------------------------------

fn take_sort_reference<T: Clone>(
    items: &[T],
    n: usize,
    cmp: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> Vec<T> {
    let mut all = items.to_vec();
    all.sort_by(cmp);
    all.truncate(n);
    all
}

#[test]
fn take_sort_equals_sort_then_take() {
    let values = pseudo_random(3000, 500, 7);
    for n in [0usize, 1, 5, 513, 1200, 3000, 3100] {
        let input = values.clone();
        let out: Vec<Vec<u32>> = guarded(move || {
            let half = input.len() / 2;
            Flow::from_iters(vec![input[..half].to_vec(), input[half..].to_vec()])
                .partition(Partition::new().stages(3))
                .take_sort(n, |a: &u32, b: &u32| a.cmp(b))
                .collect()
        })
        .unwrap();
        assert_eq!(out.len(), 1, "n = {n}: one list");
        assert_eq!(
            out[0],
            take_sort_reference(&values, n, |a, b| a.cmp(b)),
            "n = {n}"
        );
    }
}

#[test]
fn take_sort_with_duplicates_under_a_total_order() {
    // Many equal keys; ties broken by a unique id, so the order is total.
    let keys = pseudo_random(2500, 7, 11);
    let items: Vec<(u32, usize)> = keys.into_iter().enumerate().map(|(i, k)| (k, i)).collect();
    let descending = |a: &(u32, usize), b: &(u32, usize)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
    for n in [0usize, 1, 10, 600, 2500, 2501] {
        let input = items.clone();
        let out: Vec<Vec<(u32, usize)>> = guarded(move || {
            Flow::from_iters(vec![input[..1000].to_vec(), input[1000..].to_vec()])
                .partition(Partition::new().stages(4))
                .take_sort(n, descending)
                .collect()
        })
        .unwrap();
        assert_eq!(out, [take_sort_reference(&items, n, descending)], "n = {n}");
    }
}

#[test]
fn take_sort_over_nothing_is_one_empty_list() {
    let out: Vec<Vec<u32>> = guarded(|| {
        Flow::from_iter(Vec::<u32>::new())
            .partition(Partition::new().stages(2))
            .take_sort(3, |a: &u32, b: &u32| a.cmp(b))
            .collect()
    })
    .unwrap();
    assert_eq!(out, [Vec::<u32>::new()]);
}

// ---------------------------------------------------------------------------------------
// partition, shuffle, merge
// ---------------------------------------------------------------------------------------

const TEXT: &str = "the quick brown fox jumps over the lazy dog \
    and the dog sleeps while the fox runs over the hill \
    a b c a b a the end of the story is not the end";

fn text_lines(copies: usize) -> Vec<String> {
    (0..copies)
        .map(|i| format!("{TEXT} word{} extra{}", i % 13, i % 5))
        .collect()
}

fn sequential_count(lines: &[String]) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for word in lines.iter().flat_map(|l| l.split_whitespace()) {
        *counts.entry(word.to_string()).or_default() += 1;
    }
    counts
}

#[test]
fn word_count_through_partition_and_reduce_equals_sequential_count() {
    let lines = text_lines(200);
    let expected = sequential_count(&lines);
    let counts: HashMap<String, u64> = guarded(move || {
        let thirds: Vec<Vec<String>> = lines.chunks(70).map(<[String]>::to_vec).collect();
        Flow::from_iters(thirds)
            .flat_map(|line: String| {
                line.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .partition(Partition::new().stages(4))
            .reduce(HashMap::new, |word, mut counts: HashMap<String, u64>| {
                *counts.entry(word).or_default() += 1;
                counts
            })
            .collect()
    })
    .unwrap();
    assert_eq!(counts, expected);
}

#[test]
fn partition_routes_each_key_to_exactly_one_stage() {
    let lines = text_lines(150);
    let expected = sequential_count(&lines);
    let tagged: Vec<(usize, String, u64)> = guarded(move || {
        let parts: Vec<Vec<String>> = lines.chunks(40).map(<[String]>::to_vec).collect();
        Flow::from_iters(parts)
            .flat_map(|line: String| {
                line.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .partition(Partition::new().stages(4).max_demand(50))
            .reduce(HashMap::new, |word, mut counts: HashMap<String, u64>| {
                *counts.entry(word).or_default() += 1;
                counts
            })
            .on_trigger(|counts, partition, _| {
                let tagged: Vec<(usize, String, u64)> = counts
                    .into_iter()
                    .map(|(word, count)| (partition.index, word, count))
                    .collect();
                (tagged, HashMap::new())
            })
            .collect()
    })
    .unwrap();
    let mut partition_of: HashMap<String, usize> = HashMap::new();
    let mut counts: HashMap<String, u64> = HashMap::new();
    for (index, word, count) in tagged {
        assert!(index < 4);
        if let Some(previous) = partition_of.insert(word.clone(), index) {
            panic!("{word} in partitions {previous} and {index}");
        }
        counts.insert(word, count);
    }
    assert_eq!(counts, expected);
    // More than one partition got words (the hash spreads them).
    assert!(partition_of.values().collect::<HashSet<_>>().len() > 1);
}

#[test]
fn partition_by_key_routes_by_the_key_function() {
    let input: Vec<(u32, u32)> = (0..3000u32).map(|i| (i % 50, i)).collect();
    let tagged: Vec<(usize, u32)> = guarded(move || {
        Flow::from_iters(vec![input[..1500].to_vec(), input[1500..].to_vec()])
            .partition(Partition::by_key(|(key, _): &(u32, u32)| *key).stages(3))
            .reduce(BTreeSet::new, |(key, _), mut keys: BTreeSet<u32>| {
                keys.insert(key);
                keys
            })
            .on_trigger(|keys, partition, _| {
                (
                    keys.into_iter()
                        .map(|k| (partition.index, k))
                        .collect::<Vec<_>>(),
                    BTreeSet::new(),
                )
            })
            .collect()
    })
    .unwrap();
    let mut seen = BTreeMap::new();
    for (index, key) in tagged {
        assert!(
            seen.insert(key, index).is_none(),
            "key {key} in two partitions"
        );
    }
    assert_eq!(seen.len(), 50);
}

#[test]
fn partition_by_hash_picks_the_partition_or_drops() {
    let tagged: Vec<(usize, u32)> = guarded(|| {
        Flow::from_iter(0..1000u32)
            .partition(
                Partition::by_hash(|x: &u32, partitions| {
                    (x % 5 != 0).then_some(*x as usize % partitions)
                })
                .stages(3),
            )
            .reduce(Vec::new, |x, mut all: Vec<u32>| {
                all.push(x);
                all
            })
            .on_trigger(|all, partition, _| {
                (
                    all.into_iter()
                        .map(|x| (partition.index, x))
                        .collect::<Vec<_>>(),
                    Vec::new(),
                )
            })
            .collect()
    })
    .unwrap();
    assert_eq!(tagged.len(), 800);
    for (index, x) in &tagged {
        assert_ne!(x % 5, 0, "{x} should have been dropped");
        assert_eq!(*index, *x as usize % 3, "{x} in the wrong partition");
    }
}

#[test]
fn partition_by_hash_out_of_range_fails_the_run() {
    let result: flowstage::Result<Vec<u32>> = guarded(|| {
        Flow::from_iter(0..100u32)
            .partition(Partition::by_hash(|_: &u32, partitions| Some(partitions + 1)).stages(2))
            .collect()
    });
    let error = result.unwrap_err();
    let stage = error.stage().expect("a stage error");
    assert!(stage.name.contains("from_iter[0]"), "{error}");
}

#[test]
fn partition_by_hash_drops_also_with_one_stage() {
    // One stage needs no routing, but `hash` returning `None` still drops the event.
    let out: Vec<u32> = guarded(|| {
        Flow::from_iter(0..100u32)
            .partition(Partition::by_hash(|x: &u32, _| (x % 4 == 0).then_some(0)).stages(1))
            .collect()
    })
    .unwrap();
    assert_eq!(out, (0..100u32).step_by(4).collect::<Vec<_>>());
    let result: flowstage::Result<Vec<u32>> = guarded(|| {
        Flow::from_iter(0..10u32)
            .partition(Partition::by_hash(|_: &u32, _| Some(1)).stages(1))
            .collect()
    });
    assert!(result.is_err(), "index 1 of 1 partition: {result:?}");
}

#[test]
fn within_one_partition_order_from_one_producer_is_kept() {
    let lists: Vec<Vec<u32>> = guarded(|| {
        Flow::from_iter(0..20_000u32)
            .partition(Partition::new().stages(4).max_demand(64))
            .reduce(Vec::new, |x, mut all: Vec<u32>| {
                all.push(x);
                all
            })
            .emit_state()
            .collect()
    })
    .unwrap();
    assert_eq!(lists.len(), 4);
    assert_eq!(lists.iter().map(Vec::len).sum::<usize>(), 20_000);
    for list in &lists {
        assert!(list.windows(2).all(|w| w[0] < w[1]), "out of order");
    }
}

#[test]
fn shuffle_delivers_every_event_exactly_once() {
    for (max, min) in [(1000, 500), (7, 3), (1, 0)] {
        let out: Vec<u32> = guarded(move || {
            Flow::from_iters(vec![0..1000u32, 1000..1500, 1500..3000])
                .shuffle(Shuffle::shuffle().stages(3).max_demand(max).min_demand(min))
                .map(|x| x + 1)
                .collect()
        })
        .unwrap();
        assert_eq!(
            sorted(out),
            (1..=3000u32).collect::<Vec<_>>(),
            "max {max}, min {min}"
        );
    }
}

fn piece(items: Vec<u32>) -> Flow<impl Plan<Item = u32>> {
    Flow::from_iter(items).map(|x| x * 10)
}

#[test]
fn merge_delivers_every_event_of_every_flow_exactly_once() {
    let out: Vec<u32> = guarded(|| {
        Flow::merge(
            vec![
                piece((0..500).collect()),
                piece((500..1700).collect()),
                piece(Vec::new()),
                piece((1700..2000).collect()),
            ],
            Shuffle::shuffle().stages(3).max_demand(50),
        )
        .filter(|x| x % 20 == 0)
        .collect()
    })
    .unwrap();
    assert_eq!(
        sorted(out),
        (0..2000u32)
            .map(|x| x * 10)
            .filter(|x| x % 20 == 0)
            .collect::<Vec<_>>()
    );
}

#[test]
fn merge_then_partition_and_reduce() {
    let sums: Vec<u64> = guarded(|| {
        Flow::merge(
            vec![Flow::from_iter(1..=50u64), Flow::from_iter(51..=100u64)],
            Shuffle::shuffle().stages(2),
        )
        .partition(Partition::new().stages(3))
        .reduce(|| 0u64, |x, sum| sum + x)
        .emit_state()
        .collect()
    })
    .unwrap();
    assert_eq!(sums.len(), 3);
    assert_eq!(sums.iter().sum::<u64>(), 5050);
}

// ---------------------------------------------------------------------------------------
// uniq
// ---------------------------------------------------------------------------------------

#[test]
fn uniq_keeps_the_first_of_equal_events() {
    let out: Vec<u32> = guarded(|| {
        Flow::from_iter(vec![3u32, 1, 3, 2, 1, 4, 4, 3])
            .uniq()
            .collect()
    })
    .unwrap();
    assert_eq!(out, [3, 1, 2, 4]);
}

#[test]
fn uniq_is_per_stage() {
    // Two sources, two stages: each keeps its own seen-set.
    let out: Vec<u32> = guarded(|| {
        Flow::from_iters(vec![vec![1u32, 2, 1, 3], vec![3, 2, 2, 5]])
            .uniq()
            .collect()
    })
    .unwrap();
    assert_eq!(sorted(out), [1, 2, 2, 3, 3, 5]);
}

#[test]
fn uniq_after_partition_is_global_because_keys_meet() {
    let input = pseudo_random(5000, 300, 3);
    let expected: BTreeSet<u32> = input.iter().copied().collect();
    let out: Vec<u32> = guarded(move || {
        Flow::from_iters(vec![input[..2500].to_vec(), input[2500..].to_vec()])
            .partition(Partition::new().stages(3))
            .uniq()
            .collect()
    })
    .unwrap();
    assert_eq!(out.len(), expected.len());
    assert_eq!(out.into_iter().collect::<BTreeSet<_>>(), expected);
}

#[test]
fn uniq_by_keeps_the_first_event_per_key() {
    let out: Vec<u32> =
        guarded(|| Flow::from_iter(1..=10u32).uniq_by(|x| x % 3).collect()).unwrap();
    assert_eq!(out, [1, 2, 3]);
}

#[test]
fn uniq_before_reduce_in_the_same_layer() {
    let out: Vec<usize> = guarded(|| {
        Flow::from_iter(vec![5u32, 5, 6, 7, 6, 5])
            .partition(Partition::new().stages(1))
            .uniq()
            .reduce(|| 0usize, |_, count| count + 1)
            .emit_state()
            .collect()
    })
    .unwrap();
    assert_eq!(out, [3]);
}

// ---------------------------------------------------------------------------------------
// After a reduce
// ---------------------------------------------------------------------------------------

#[test]
fn map_after_reduce_applies_to_what_it_emits() {
    let mapped = Arc::new(AtomicUsize::new(0));
    let count = mapped.clone();
    let out: Vec<u64> = guarded(move || {
        Flow::from_iter(1..=100u64)
            .partition(Partition::new().stages(4))
            .reduce(|| 0u64, |x, sum| sum + x)
            .emit_state()
            .map(move |sum| {
                count.fetch_add(1, SeqCst);
                sum * 2
            })
            .filter(|sum| *sum > 0)
            .collect()
    })
    .unwrap();
    // Four accumulators went through `map`, not the hundred events.
    assert_eq!(mapped.load(SeqCst), 4);
    assert_eq!(out.iter().sum::<u64>(), 10_100);
}

#[test]
fn flat_map_after_group_by_key_sees_the_pairs() {
    let out: Vec<(u32, u32)> = guarded(|| {
        Flow::from_iter((0..30u32).map(|i| (i % 3, i)))
            .partition(Partition::by_key(|(key, _): &(u32, u32)| *key).stages(2))
            .group_by_key()
            .flat_map(|(key, values): (u32, Vec<u32>)| values.into_iter().map(move |v| (key, v)))
            .collect()
    })
    .unwrap();
    assert_eq!(out.len(), 30);
    // Per key, the values come as the group held them: newest first.
    let mut per_key: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (key, value) in out {
        per_key.entry(key).or_default().push(value);
    }
    for (key, values) in per_key {
        let expected: Vec<u32> = (0..30u32).filter(|i| i % 3 == key).rev().collect();
        assert_eq!(values, expected, "key {key}");
    }
}

// ---------------------------------------------------------------------------------------
// Configuration errors
// ---------------------------------------------------------------------------------------

fn assert_config<T: std::fmt::Debug>(result: flowstage::Result<T>, what: &str) {
    match result {
        Err(FlowError::Config(message)) => assert!(!message.is_empty(), "{what}"),
        other => panic!("{what}: expected FlowError::Config, got {other:?}"),
    }
}

/// A second reducer in one layer does not build: `one_reducer_per_layer!` in the
/// library fails the build naming the operator (see the `compile_fail` doctests of
/// `Flow::reduce` and `Flow::take_sort`). What builds is the flow with a layer between.
#[test]
fn a_second_reduce_needs_a_layer_between() {
    // With a new layer in between it is fine.
    let sums: Vec<u64> = guarded(|| {
        Flow::from_iter(1..=10u64)
            .partition(Partition::new().stages(2))
            .reduce(|| 0u64, |x, sum| sum + x)
            .emit_state()
            .partition(Partition::new().stages(1))
            .reduce(|| 0u64, |x, sum| sum + x)
            .emit_state()
            .collect()
    })
    .unwrap();
    assert_eq!(sums, [55]);

    // The top 3 of a reduce's output, as the build error says: shuffle first.
    let top: Vec<Vec<(u64, u64)>> = guarded(|| {
        Flow::from_iter(0..100u64)
            .map(|x| (x % 7, x))
            .reduce_by_key(|a, b| a + b, Partition::new().stages(3))
            .shuffle(Shuffle::shuffle().stages(2))
            .take_sort(3, |a, b| b.1.cmp(&a.1))
            .collect()
    })
    .unwrap();
    let mut sums: Vec<(u64, u64)> = (0..7)
        .map(|k| (k, (0..100u64).filter(|x| x % 7 == k).sum()))
        .collect();
    sums.sort_by_key(|&(_, sum)| std::cmp::Reverse(sum));
    assert_eq!(top, [sums[..3].to_vec()]);
}

#[test]
fn zero_stages_is_a_config_error_at_run() {
    assert_config(
        guarded(|| {
            Flow::from_iter(0..10u32)
                .partition(Partition::new().stages(0))
                .collect::<Vec<_>>()
        }),
        "partition with 0 stages",
    );
    assert_config(
        guarded(|| {
            Flow::from_iter(0..10u32)
                .shuffle(Shuffle::shuffle().stages(0))
                .collect::<Vec<_>>()
        }),
        "shuffle with 0 stages",
    );
    assert_config(
        guarded(|| {
            Flow::merge(
                vec![Flow::from_iter(0..10u32)],
                Shuffle::shuffle().stages(0),
            )
            .collect::<Vec<_>>()
        }),
        "merge with 0 stages",
    );
    assert_config(
        guarded(|| {
            Flow::from_iter(0..10u32)
                .partition(Partition::new().stages(0))
                .run()
        }),
        "run with 0 stages",
    );
}

#[test]
fn invalid_demand_is_a_config_error_at_run() {
    for (max, min) in [(10usize, 10usize), (10, 11), (0, 0), (1, 1)] {
        assert_config(
            guarded(move || {
                Flow::from_iter(0..10u32)
                    .partition(Partition::new().stages(2).max_demand(max).min_demand(min))
                    .collect::<Vec<_>>()
            }),
            &format!("partition max {max} min {min}"),
        );
    }
    assert_config(
        guarded(|| {
            Flow::from_iter(0..10u32)
                .partition(Partition::new().stages(2).max_demand(0))
                .collect::<Vec<_>>()
        }),
        "max_demand 0",
    );
    assert_config(
        guarded(|| {
            Flow::from_iter(0..10u32)
                .shuffle(Shuffle::shuffle().stages(2).max_demand(5).min_demand(5))
                .collect::<Vec<_>>()
        }),
        "shuffle min == max",
    );
}

#[test]
fn config_errors_end_iteration_with_one_err() {
    let items: Vec<flowstage::Result<u32>> = guarded(|| {
        Flow::from_iter(0..10u32)
            .partition(Partition::new().stages(0))
            .into_iter()
            .collect()
    });
    assert_eq!(items.len(), 1);
    assert!(matches!(items[0], Err(FlowError::Config(_))), "{items:?}");
}

// ---------------------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------------------

#[test]
fn from_iters_with_an_empty_list_is_an_error() {
    assert_config(
        guarded(|| Flow::from_iters(Vec::<Vec<u32>>::new()).collect::<Vec<_>>()),
        "from_iters(vec![])",
    );
    assert_config(
        guarded(|| {
            Flow::from_stages(Vec::<flowstage::stage::IterProducer<std::ops::Range<u32>>>::new())
                .collect::<Vec<_>>()
        }),
        "from_stages(vec![])",
    );
}

#[test]
fn from_iters_with_empty_iterators_is_fine() {
    let out: Vec<u32> = guarded(|| {
        Flow::from_iters(vec![Vec::new(), vec![1u32, 2], Vec::new()])
            .partition(Partition::new().stages(2))
            .collect()
    })
    .unwrap();
    assert_eq!(sorted(out), [1, 2]);
    let empty: Vec<u32> =
        guarded(|| Flow::from_iter(Vec::<u32>::new()).map(|x| x + 1).collect()).unwrap();
    assert!(empty.is_empty());
}

#[test]
fn from_stream_reads_an_async_stream() {
    let out: Vec<u32> = guarded(|| {
        Flow::from_stream(futures::stream::iter(0..5000u32))
            .map(|x| x * 2)
            .collect()
    })
    .unwrap();
    // Read by one reader, mapped on one stage per core: every event once, in any order.
    assert_eq!(sorted(out), (0..5000u32).map(|x| x * 2).collect::<Vec<_>>());
}

#[test]
fn from_stream_reads_a_stream_that_waits() {
    // A stream that yields to the scheduler before every item.
    let stream = Box::pin(futures::stream::unfold(0u32, |next| async move {
        if next == 300 {
            return None;
        }
        tokio::task::yield_now().await;
        Some((next, next + 1))
    }));
    let out: Vec<u32> = guarded(move || {
        Flow::from_stream(stream)
            .partition(Partition::new().stages(2))
            .collect()
    })
    .unwrap();
    assert_eq!(sorted(out), (0..300u32).collect::<Vec<_>>());
}

#[test]
fn from_par_iter_reads_a_rayon_iterator() {
    use rayon::prelude::*;
    let out: Vec<u64> = guarded(|| {
        Flow::from_par_iter((0..50_000u64).into_par_iter().map(|x| x * 3))
            .filter(|x| x % 2 == 0)
            .collect()
    })
    .unwrap();
    let expected: Vec<u64> = (0..50_000u64)
        .map(|x| x * 3)
        .filter(|x| x % 2 == 0)
        .collect();
    assert_eq!(sorted(out), expected);
}

#[test]
fn from_stages_reads_user_producers() {
    let out: Vec<u32> = guarded(|| {
        Flow::from_stages(vec![
            from_iter(0..500u32),
            from_iter(500..600),
            from_iter(600..601),
        ])
        .map(|x| x + 1)
        .collect()
    })
    .unwrap();
    assert_eq!(sorted(out), (1..=601u32).collect::<Vec<_>>());
}

/// A producer that gives at most three events per call, fewer than asked: the runtime must
/// keep asking.
struct Trickle {
    next: u32,
    end: u32,
}

impl Producer for Trickle {
    type Item = u32;

    async fn handle_demand(&mut self, demand: usize) -> Result<Produced<u32>, StageError> {
        let take = demand.min(3) as u32;
        let stop = (self.next + take).min(self.end);
        let events: Vec<u32> = (self.next..stop).collect();
        self.next = stop;
        Ok(if self.next == self.end {
            Produced::Finished(events)
        } else {
            Produced::Events(events)
        })
    }
}

/// A user source: `0..n` split over `readers` trickling producers.
struct Split {
    n: u32,
    readers: u32,
}

impl Source for Split {
    type Item = u32;

    fn into_producers(self) -> flowstage::Result<Vec<BoxedProducer<u32>>> {
        let step = self.n.div_ceil(self.readers);
        Ok((0..self.readers)
            .map(|r| {
                BoxedProducer::new(Trickle {
                    next: (r * step).min(self.n),
                    end: ((r + 1) * step).min(self.n),
                })
            })
            .collect())
    }
}

#[test]
fn from_source_reads_a_user_source() {
    let out: Vec<u32> = guarded(|| {
        Flow::from_source(Split {
            n: 1000,
            readers: 3,
        })
        .partition(Partition::new().stages(2))
        .collect()
    })
    .unwrap();
    assert_eq!(sorted(out), (0..1000u32).collect::<Vec<_>>());
    let explained = Flow::from_source(Split { n: 10, readers: 3 })
        .explain()
        .unwrap();
    assert_eq!(explained.stages(), 3, "{explained}");
}

/// A source whose splitting fails.
struct Broken;

impl Source for Broken {
    type Item = u32;

    fn into_producers(self) -> flowstage::Result<Vec<BoxedProducer<u32>>> {
        Err(FlowError::Config("no such file".into()))
    }
}

#[test]
fn from_source_errors_end_the_run_before_it_starts() {
    match guarded(|| {
        Flow::from_source(Broken)
            .map(|x| x + 1)
            .collect::<Vec<u32>>()
    }) {
        Err(FlowError::Config(message)) => assert_eq!(message, "no such file"),
        other => panic!("expected the source's error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Terminals
// ---------------------------------------------------------------------------------------

#[test]
fn collect_into_vec_hashmap_hashset() {
    let vec: Vec<u32> = guarded(|| Flow::from_iter(0..100u32).collect()).unwrap();
    assert_eq!(vec, (0..100).collect::<Vec<_>>());

    let map: HashMap<u32, u32> = guarded(|| {
        Flow::from_iters(vec![0..50u32, 50..100])
            .map(|x| (x, x * x))
            .collect()
    })
    .unwrap();
    assert_eq!(map.len(), 100);
    assert!(map.iter().all(|(k, v)| *v == k * k));

    let set: HashSet<u32> = guarded(|| {
        Flow::from_iters(vec![0..50u32, 25..75])
            .partition(Partition::new().stages(2))
            .collect()
    })
    .unwrap();
    assert_eq!(set, (0..75).collect::<HashSet<_>>());

    let total: BTreeMap<bool, u32> = guarded(|| {
        Flow::from_iter(0..10u32)
            .partition(Partition::new().stages(1))
            .reduce(BTreeMap::new, |x, mut by: BTreeMap<bool, u32>| {
                *by.entry(x % 2 == 0).or_default() += x;
                by
            })
            .collect()
    })
    .unwrap();
    assert_eq!(total, BTreeMap::from([(false, 25), (true, 20)]));
}

#[test]
fn run_reports_per_stage_counters() {
    let report = guarded(|| {
        Flow::from_iters(vec![0..100u32, 100..250])
            .filter(|x| x % 2 == 0)
            .partition(Partition::new().stages(3))
            .flat_map(|x| [x, x])
            .run()
    })
    .unwrap();
    let names: Vec<&str> = report
        .stages
        .iter()
        .map(|s| s.stage.name.as_str())
        .collect();
    assert_eq!(report.stages.len(), 6, "{names:?}");
    let source_out: Vec<u64> = report.stages[..2].iter().map(|s| s.events_out).collect();
    assert_eq!(source_out, [50, 75], "{names:?}");
    for stage in &report.stages[..2] {
        assert_eq!(stage.stage.kind, StageKind::Producer);
        assert!(stage.stage.name.starts_with("from_iters["), "{names:?}");
        assert_eq!(stage.dropped, 0);
    }
    let partitions = &report.stages[2..5];
    assert!(
        partitions
            .iter()
            .all(|s| s.stage.name.starts_with("partition[")),
        "{names:?}"
    );
    assert!(
        partitions
            .iter()
            .all(|s| s.stage.kind == StageKind::ProducerConsumer)
    );
    assert_eq!(partitions.iter().map(|s| s.events_in).sum::<u64>(), 125);
    assert_eq!(partitions.iter().map(|s| s.events_out).sum::<u64>(), 250);
    for stage in partitions {
        assert_eq!(stage.events_out, 2 * stage.events_in, "{stage:?}");
    }
    let sink = &report.stages[5];
    assert_eq!(sink.stage.kind, StageKind::Consumer);
    assert_eq!(sink.events_in, 250);
}

#[test]
fn blocking_iteration_yields_everything() {
    let out: Vec<u32> = guarded(|| {
        let mut out = Vec::new();
        for x in Flow::from_iters(vec![0..3000u32, 3000..5000])
            .partition(Partition::new().stages(3))
            .map(|x| x + 1)
        {
            out.push(x.unwrap());
        }
        out
    });
    assert_eq!(sorted(out), (1..=5000u32).collect::<Vec<_>>());
}

#[test]
fn dropping_the_iterator_early_stops_an_endless_flow() {
    let (source, produced, dropped) = endless();
    let first: Vec<u64> = guarded(move || {
        let mut iter = Flow::from_iter(source).map(|x| x * 2).into_iter();
        let first: Vec<u64> = iter.by_ref().take(5).map(Result::unwrap).collect();
        drop(iter);
        first
    });
    // Mapped on one stage per core, which read the source a batch each: five distinct
    // events, doubled, from whichever batch came first.
    let mut first = first;
    first.sort_unstable();
    first.dedup();
    assert_eq!(first.len(), 5, "{first:?}");
    assert!(first.iter().all(|x| x % 2 == 0), "{first:?}");
    // Dropping the iterator waited for the run to end: the source is gone.
    assert!(dropped.load(SeqCst), "the source was not dropped");
    let now = produced.load(SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(produced.load(SeqCst), now, "the source kept producing");
}

#[test]
fn dropping_the_iterator_early_stops_a_partitioned_flow() {
    let (source, _, dropped) = endless();
    let seen: usize = guarded(move || {
        let iter = Flow::from_iter(source)
            .partition(Partition::new().stages(3))
            .map(|x| x + 1)
            .into_iter();
        iter.take(2500).map(Result::unwrap).count()
    });
    assert_eq!(seen, 2500);
    assert!(dropped.load(SeqCst), "the source was not dropped");
}

#[test]
fn iteration_reports_a_failed_run_as_one_err() {
    let items: Vec<flowstage::Result<u32>> = guarded(|| {
        Flow::from_iter(0..100u32)
            .map(|x| {
                if x == 60 {
                    panic!("boom in iteration");
                }
                x
            })
            .into_iter()
            .collect()
    });
    let errors: Vec<&FlowError> = items.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(errors.len(), 1, "{items:?}");
    assert!(items.last().unwrap().is_err(), "the error comes last");
    assert!(
        matches!(errors[0], FlowError::StagePanicked { .. }),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn into_stream_yields_everything() {
    let stream = Flow::from_iters(vec![0..4000u32, 4000..6000])
        .partition(Partition::new().stages(2))
        .map(|x| x * 2)
        .into_stream()
        .unwrap();
    let out: Vec<u32> = watch(stream.map(Result::unwrap).collect()).await;
    assert_eq!(sorted(out), (0..6000u32).map(|x| x * 2).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_early_stops_the_flow() {
    let (source, produced, dropped) = endless();
    let mut stream = Flow::from_iter(source)
        .map(|x| x + 1)
        .into_stream()
        .unwrap();
    let mut first = Vec::new();
    for _ in 0..10 {
        first.push(watch(stream.next()).await.unwrap().unwrap());
    }
    // (Mapped on one stage per core: ten distinct events, in any order.)
    first.sort_unstable();
    first.dedup();
    assert_eq!(first.len(), 10, "{first:?}");
    assert!(first.iter().all(|x| *x >= 1));
    drop(stream);
    wait_until("the source dropped", || dropped.load(SeqCst)).await;
    let now = produced.load(SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(produced.load(SeqCst), now, "the source kept producing");
}

/// Starts `flow` as a stream, waits a little for an event that cannot come, drops the
/// stream and waits for `dropped`. On its own runtime in a guarded thread: a stage that
/// never yields would otherwise hang the test's runtime at shutdown instead of failing.
fn drop_stream_of_filtered_flow(
    flow: Flow<impl Plan<Item = u64> + 'static>,
    dropped: Arc<AtomicBool>,
) {
    guarded(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut stream = flow.filter(|_| false).into_stream().unwrap();
            let waited = tokio::time::timeout(Duration::from_millis(100), stream.next()).await;
            assert!(waited.is_err(), "nothing can come out");
            drop(stream);
            wait_until("the source dropped", || dropped.load(SeqCst)).await;
        });
    });
}

#[test]
fn dropping_a_stream_stops_an_iterator_source_whose_events_are_all_filtered() {
    let (source, _, dropped) = endless();
    drop_stream_of_filtered_flow(Flow::from_iter(source), dropped.clone());
    assert!(dropped.load(SeqCst));
}

#[test]
fn dropping_a_stream_stops_a_producer_source_whose_events_are_all_filtered() {
    let (source, _, dropped) = endless();
    drop_stream_of_filtered_flow(Flow::from_stages(vec![from_iter(source)]), dropped.clone());
    assert!(dropped.load(SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn into_stream_reports_a_failed_run_as_one_err() {
    let stream = Flow::from_iter(0..100u32)
        .partition(Partition::new().stages(2))
        .map(|x| {
            if x == 70 {
                panic!("boom in stream");
            }
            x
        })
        .into_stream()
        .unwrap();
    let items: Vec<flowstage::Result<u32>> = watch(stream.collect()).await;
    assert_eq!(items.iter().filter(|r| r.is_err()).count(), 1);
    match items.last() {
        Some(Err(FlowError::StagePanicked { message, .. })) => {
            assert!(message.contains("boom in stream"), "{message}")
        }
        other => panic!("expected a panic error last, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_async_runs_on_the_callers_runtime() {
    let seen = Arc::new(AtomicU64::new(0));
    let sum = seen.clone();
    let report = watch(
        Flow::from_iter(1..=100u64)
            .partition(Partition::new().stages(2))
            .inspect(move |x| {
                sum.fetch_add(*x, SeqCst);
            })
            .run_async(),
    )
    .await
    .unwrap();
    assert_eq!(seen.load(SeqCst), 5050);
    assert_eq!(report.stages.last().unwrap().events_in, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_works_inside_a_multi_thread_runtime() {
    let out: Vec<u32> = Flow::from_iters(vec![0..10u32, 10..20])
        .partition(Partition::new().stages(2))
        .collect()
        .unwrap();
    assert_eq!(sorted(out), (0..20).collect::<Vec<_>>());
}

#[tokio::test(flavor = "current_thread")]
async fn collect_works_inside_a_current_thread_runtime() {
    let out: Vec<u32> = Flow::from_iter(0..10u32).map(|x| x + 1).collect().unwrap();
    assert_eq!(sorted(out), (1..=10).collect::<Vec<_>>());
    let report = Flow::from_iter(0..10u32).run().unwrap();
    assert_eq!(report.stages[0].events_out, 10);
}

#[test]
fn into_stages_feeds_user_consumers() {
    let seen_a = Arc::new(Mutex::new(Vec::new()));
    let seen_b = Arc::new(Mutex::new(Vec::new()));
    let (a, b) = (seen_a.clone(), seen_b.clone());
    let report = guarded(move || {
        let mut pipeline = Pipeline::new();
        let outputs = Flow::from_iters(vec![0..1000u32, 1000..2000])
            .partition(Partition::new().stages(3))
            .map(|x| x + 1)
            .into_stages(&mut pipeline)?;
        assert_eq!(outputs.len(), 3);
        let first = pipeline.consumer(consumer_fn(move |batch: Vec<u32>| {
            a.lock().unwrap().extend(batch);
        }));
        let second = pipeline.consumer(consumer_fn(move |batch: Vec<u32>| {
            b.lock().unwrap().extend(batch);
        }));
        for output in &outputs {
            pipeline.subscribe(&first, output, SubscribeOptions::new().max_demand(10))?;
            pipeline.subscribe(&second, output, SubscribeOptions::new().max_demand(10))?;
        }
        pipeline.run()
    })
    .unwrap();
    let mut all = seen_a.lock().unwrap().clone();
    all.extend(seen_b.lock().unwrap().iter());
    // Between them, the two consumers got every event exactly once.
    assert_eq!(sorted(all), (1..=2000u32).collect::<Vec<_>>());
    assert_eq!(report.stages.len(), 2 + 3 + 2);
}

// ---------------------------------------------------------------------------------------
// Panics in user code
// ---------------------------------------------------------------------------------------

#[test]
fn panic_in_a_map_names_the_source_stage() {
    let result: flowstage::Result<Vec<u32>> = guarded(|| {
        Flow::from_iters(vec![0..100u32, 100..200])
            .map(|x| {
                if x == 150 {
                    panic!("map exploded at {x}");
                }
                x
            })
            .partition(Partition::new().stages(2))
            .collect()
    });
    match result {
        Err(FlowError::StagePanicked { stage, message }) => {
            assert!(stage.name.contains("from_iters[1]"), "{stage}");
            assert_eq!(stage.kind, StageKind::Producer);
            assert!(message.contains("map exploded at 150"), "{message}");
        }
        other => panic!("expected StagePanicked, got {other:?}"),
    }
}

#[test]
fn panic_in_a_from_iter_map_names_from_iter() {
    let result: flowstage::Result<Vec<u32>> = guarded(|| {
        Flow::from_iter(0..100u32)
            .map(|x| {
                if x == 10 {
                    panic!("bad event {x}");
                }
                x
            })
            .collect()
    });
    let error = result.unwrap_err();
    assert!(
        matches!(&error, FlowError::StagePanicked { message, .. } if message.contains("bad event 10")),
        "{error:?}"
    );
    // Any of the source's stages (the map runs on one per core) may have met event 10.
    assert!(
        error.stage().unwrap().name.starts_with("from_iter["),
        "{error}"
    );
    assert!(error.to_string().contains("bad event 10"), "{error}");
}

#[test]
fn panic_in_a_reduce_after_partition_names_the_partition_stage() {
    let result: flowstage::Result<Vec<u64>> = guarded(|| {
        Flow::from_iter(0..1000u64)
            .partition(Partition::new().stages(3))
            .reduce(
                || 0u64,
                |x, sum| {
                    if x == 777 {
                        panic!("reduce exploded");
                    }
                    sum + x
                },
            )
            .emit_state()
            .collect()
    });
    match result {
        Err(FlowError::StagePanicked { stage, message }) => {
            assert!(stage.name.contains("partition["), "{stage}");
            assert_eq!(stage.kind, StageKind::ProducerConsumer);
            assert!(message.contains("reduce exploded"), "{message}");
        }
        other => panic!("expected StagePanicked, got {other:?}"),
    }
}

#[test]
fn panic_in_on_trigger_fails_the_run() {
    let result: flowstage::Result<Vec<u64>> = guarded(|| {
        Flow::from_iter(0..100u64)
            .partition(Partition::new().stages(2))
            .reduce(|| 0u64, |x, sum| sum + x)
            .on_trigger(|_, partition, _| -> (Vec<u64>, u64) {
                panic!("trigger exploded in {}", partition.index)
            })
            .collect()
    });
    match result {
        Err(FlowError::StagePanicked { stage, message }) => {
            assert!(stage.name.contains("partition["), "{stage}");
            assert!(message.contains("trigger exploded"), "{message}");
        }
        other => panic!("expected StagePanicked, got {other:?}"),
    }
}

#[test]
fn flows_run_inside_the_stages_of_other_flows_complete() {
    // Blocking terminals share one runtime; a flow collected inside a stage of another
    // (while both workers may be busy with stages) must not wait on that runtime.
    let mut sums: Vec<u64> = guarded(|| {
        Flow::from_iters(vec![0..4u64, 4..8])
            .map(|n| {
                Flow::from_iter(0..=n)
                    .collect::<Vec<u64>>()
                    .map(|all| all.iter().sum())
                    .unwrap_or(u64::MAX)
            })
            .collect()
            .expect("outer flow")
    });
    sums.sort_unstable();
    assert_eq!(sums, (0..8u64).map(|n| n * (n + 1) / 2).collect::<Vec<_>>());
}

#[test]
fn many_threads_collect_at_once() {
    let handles: Vec<_> = (0..8u64)
        .map(|seed| {
            std::thread::spawn(move || {
                Flow::from_iter(0..10_000u64)
                    .map(move |x| x + seed)
                    .partition(Partition::new().stages(2))
                    .reduce(|| 0u64, |x, sum| sum + x)
                    .emit_state()
                    .collect::<Vec<u64>>()
                    .map(|sums| sums.into_iter().sum::<u64>())
            })
        })
        .collect();
    for (seed, handle) in handles.into_iter().enumerate() {
        let total = guarded(move || handle.join().expect("thread")).expect("flow");
        assert_eq!(total, (0..10_000u64).sum::<u64>() + 10_000 * seed as u64);
    }
}

#[test]
fn a_partitioning_source_sends_batches_that_fill_the_credit() {
    // Two sources, two partitions, `max_demand` 1 000 (a consumer asks again for 500 or
    // more once it has handled 500). A source sends a partition's events once they fill
    // its credit, not in the shrinking pieces each production brings (which made the
    // average batch a sixth of `max_demand`).
    let report = guarded(|| {
        Flow::from_iters([0..200_000u64, 200_000..400_000])
            .partition(Partition::by_key(|x: &u64| *x).stages(2).max_demand(1000))
            .reduce(|| 0u64, |_, count| count + 1)
            .emit_state()
            .run()
    })
    .unwrap();
    let partitions: Vec<_> = report
        .stages
        .iter()
        .filter(|s| s.stage.name.starts_with("partition["))
        .collect();
    assert_eq!(partitions.len(), 2);
    assert_eq!(partitions.iter().map(|s| s.events_in).sum::<u64>(), 400_000);
    for stage in partitions {
        let average = stage.events_in / stage.batches_in.max(1);
        assert!(
            average >= 400,
            "average batch {average} into {}: {stage:?}",
            stage.stage.name
        );
    }
}

#[test]
fn a_partitioning_source_that_waits_sends_what_it_holds_first() {
    // The stream gives one event, then waits: that event must come out of the flow while
    // the source is still open, not when its next production ends.
    let first = guarded(|| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let (tx, rx) = futures::channel::mpsc::unbounded::<u32>();
            let mut stream = Flow::from_stream(rx)
                .partition(Partition::new().stages(2))
                .into_stream()
                .unwrap();
            // Both partitions' demand reaches the waiting source first; then the event.
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.unbounded_send(7).unwrap();
            let first = stream.next().await;
            drop(tx);
            first.map(|event| event.unwrap())
        })
    });
    assert_eq!(first, Some(7));
}

#[test]
fn map_init_knows_its_stage_in_every_layer() {
    // Issue 18 item 5: user code learns its stage's index and its layer's count, without
    // a reduce. Iterator k yields k * 100 + i; the partition layer routes x to x % 4.
    let inits = Arc::new(AtomicUsize::new(0));
    let (in_source, in_partition) = (inits.clone(), inits.clone());
    let placed: Vec<(usize, usize, usize, usize, u32)> = guarded(move || {
        Flow::from_iters((0..3u32).map(|k| k * 100..k * 100 + 50).collect::<Vec<_>>())
            .map_init(
                move |p| {
                    in_source.fetch_add(1, SeqCst);
                    p
                },
                |p, x| (p.index, p.count, x),
            )
            .partition(
                Partition::by_hash(|(_, _, x): &(usize, usize, u32), n| Some(*x as usize % n))
                    .stages(4),
            )
            .map_init(
                move |p| {
                    in_partition.fetch_add(1, SeqCst);
                    p
                },
                |p, (source, sources, x)| (source, sources, p.index, p.count, x),
            )
            .collect()
            .unwrap()
    });
    assert_eq!(placed.len(), 150);
    for (source, sources, partition, partitions, x) in placed {
        assert_eq!((source, sources), (x as usize / 100, 3), "{x}");
        assert_eq!((partition, partitions), (x as usize % 4, 4), "{x}");
    }
    // Once per stage: 3 sources, 4 partitions.
    assert_eq!(inits.load(SeqCst), 7);
}

// Small frictions (issue 18 item 8).

#[test]
fn partition_by_key_infers_the_key_closure_and_keeps_each_key_on_one_partition() {
    let pairs: Vec<(u32, u32)> = (0..200u32).map(|i| (i % 13, i)).collect();
    let expected: BTreeMap<u32, u32> = pairs.iter().fold(BTreeMap::new(), |mut sums, p| {
        *sums.entry(p.0).or_insert(0) += p.1;
        sums
    });
    let placed: Vec<(usize, u32, u32)> = guarded(move || {
        Flow::from_iter(pairs)
            // No annotation on `pair`: its type is the flow's.
            .partition_by_key(|pair| pair.0, Partition::new().stages(4))
            .map_init(|p| p.index, |index, pair| (*index, pair.0, pair.1))
            .collect()
            .unwrap()
    });
    let mut partition_of: BTreeMap<u32, BTreeSet<usize>> = BTreeMap::new();
    let mut sums: BTreeMap<u32, u32> = BTreeMap::new();
    for (index, key, value) in placed {
        partition_of.entry(key).or_default().insert(index);
        *sums.entry(key).or_insert(0) += value;
    }
    assert_eq!(sums, expected);
    assert!(
        partition_of.values().all(|p| p.len() == 1),
        "{partition_of:?}"
    );
}

#[test]
fn shuffle_new_is_the_shuffle_options() {
    for options in [Shuffle::new(), Shuffle::default(), Shuffle::shuffle()] {
        let mut events: Vec<u64> = guarded(move || {
            Flow::from_iter(1..=10u64)
                .shuffle(options.stages(3).max_demand(4).min_demand(2))
                .collect()
                .unwrap()
        });
        events.sort();
        assert_eq!(events, (1..=10).collect::<Vec<_>>());
    }
}

#[test]
fn from_stream_takes_a_stream_that_is_not_unpin() {
    // `unfold` over an `async` block is `!Unpin`; it used to need `Box::pin` by hand.
    let items: Vec<u64> = guarded(|| {
        let stream = futures::stream::unfold(0u64, |n| async move {
            tokio::task::yield_now().await;
            (n < 100).then_some((n * n, n + 1))
        });
        Flow::from_stream(stream).collect().unwrap()
    });
    assert_eq!(items, (0..100u64).map(|n| n * n).collect::<Vec<_>>());
}

/// A source stage whose chain ends in a reducer before a `partition`: the reducer's
/// output at `Done` goes through the routing tail one event at a time (not a fed batch),
/// and every key still reaches the one stage that owns it, exactly once.
#[test]
fn a_reducer_in_the_source_stage_routes_its_output_by_key() {
    let result: Vec<(u64, u64)> = guarded(|| {
        let parts: Vec<_> = (0..3u64)
            .map(|p| (p * 10_000)..((p + 1) * 10_000))
            .collect();
        Flow::from_iters(parts)
            .stages(3)
            // Per source stage: each key's count in its share of the input.
            .reduce(HashMap::new, |x: u64, mut counts: HashMap<u64, u64>| {
                *counts.entry(x % 97).or_default() += 1;
                counts
            })
            .partition(Partition::by_key(|&(key, _): &(u64, u64)| key).stages(4))
            // Per partition: each key must arrive from every source stage, on one stage.
            .reduce(HashMap::new, |(key, n), mut totals: HashMap<u64, u64>| {
                *totals.entry(key).or_default() += n;
                totals
            })
            .collect()
    })
    .unwrap();
    let mut keys = BTreeSet::new();
    for &(key, _) in &result {
        assert!(keys.insert(key), "key {key} reduced on two stages");
    }
    let expected: BTreeMap<u64, u64> = (0..30_000u64).fold(BTreeMap::new(), |mut m, x| {
        *m.entry(x % 97).or_default() += 1;
        m
    });
    assert_eq!(result.into_iter().collect::<BTreeMap<_, _>>(), expected);
}
