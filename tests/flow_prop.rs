//! Property tests of the flow layer: random pipelines against a sequential reference.
//!
//! A case is a random input (mostly short, mostly small values so keys repeat), split over
//! 1–4 sources (`from_iters`), a random list of operators — `Map(k)` (`x * k + 1`,
//! wrapping), `Filter(m)` (keep `x % m != 0`), `FlatMap(n)` (each event `n` times, 0–2) and
//! `Partition(stages, max_demand, min_demand)` — and an ending:
//! - `Collect`: the events, compared as a multiset with the same operators run by
//!   `Iterator`;
//! - `Count`: a partition + reduce word count (`key → count`), compared exactly per key
//!   with a sequential count, and no key emitted by two partitions;
//! - `Sum`: per-partition sums through `emit_state` and `departition`: one event, the
//!   sequential sum.
//!
//! A `Flow`'s type changes with each operator, so the flow has a fixed maximal shape: up to
//! three partitions, and before, between and after them a segment of [`SLOTS`] slots, each
//! slot a real `map → filter → flat_map` chain where the operators the slot does not use
//! are identities (so every operator kind is fused in every stage), plus one `flat_map`
//! applying any further operators of the segment in order. Partitions beyond the third
//! are left out (they do not change the multiset).
//!
//! Every case runs under a watchdog: a hang fails the case instead of stalling the suite.
//! `PROPTEST_CASES` overrides the number of cases (1000 by default).

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::{Layer, try_guarded};
use flowstage::flow::{Flow, Plan};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// Real operator slots per segment; further operators go into one closure.
const SLOTS: usize = 3;
/// Partitions the fixed shape has room for.
const MAX_PARTITIONS: usize = 3;
/// Cases whose reference output is larger than this are skipped (flat_map can double).
const MAX_EVENTS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Map(u32),
    Filter(u32),
    FlatMap(usize),
    Partition(Layer),
}

/// A stateless operator applied to one event: `(value, copies)`.
fn apply(op: Op, x: u32) -> (u32, usize) {
    match op {
        Op::Map(k) => (x.wrapping_mul(k).wrapping_add(1), 1),
        Op::Filter(m) => (x, usize::from(x % m != 0)),
        Op::FlatMap(n) => (x, n),
        Op::Partition(_) => (x, 1),
    }
}

/// The stateless operators `ops`, in order, on one event.
fn apply_all(ops: &[Op], x: u32) -> Vec<u32> {
    let mut events = vec![x];
    for &op in ops {
        events = events
            .into_iter()
            .flat_map(|x| {
                let (y, copies) = apply(op, x);
                std::iter::repeat_n(y, copies)
            })
            .collect();
    }
    events
}

/// The sequential reference: every operator by `Iterator`, partitions ignored.
fn reference(input: &[u32], ops: &[Op]) -> Vec<u32> {
    input.iter().flat_map(|&x| apply_all(ops, x)).collect()
}

#[derive(Debug, Clone, Copy)]
enum End {
    Collect,
    Count(Layer),
    Sum(Layer),
}

#[derive(Debug, Clone)]
struct Case {
    input: Vec<u32>,
    sources: usize,
    ops: Vec<Op>,
    end: End,
}

impl Case {
    /// The operators split at (at most three) partitions: segments and the layers
    /// between them.
    fn shape(&self) -> (Vec<Vec<Op>>, Vec<Layer>) {
        let mut segments = vec![Vec::new()];
        let mut layers = Vec::new();
        for &op in &self.ops {
            match op {
                Op::Partition(layer) if layers.len() < MAX_PARTITIONS => {
                    layers.push(layer);
                    segments.push(Vec::new());
                }
                Op::Partition(_) => {}
                op => segments.last_mut().unwrap().push(op),
            }
        }
        (segments, layers)
    }

    /// The input over `sources` iterators, contiguous parts (some may be empty).
    fn split_input(&self) -> Vec<Vec<u32>> {
        let len = self.input.len();
        (0..self.sources)
            .map(|i| self.input[i * len / self.sources..(i + 1) * len / self.sources].to_vec())
            .collect()
    }
}

/// What a slot does for `op`: `map` by `k`, `filter` by `m`, `flat_map` to `n` copies
/// (identities for the operators `op` is not).
fn slot_parts(op: Option<Op>) -> (Option<u32>, Option<u32>, usize) {
    match op {
        Some(Op::Map(k)) => (Some(k), None, 1),
        Some(Op::Filter(m)) => (None, Some(m), 1),
        Some(Op::FlatMap(n)) => (None, None, n),
        _ => (None, None, 1),
    }
}

/// One slot: `map → filter → flat_map`, each an identity unless `op` is of its kind.
///
/// A macro, not a function returning `Flow<impl Plan>`: nesting such functions makes
/// rustc's compile time and memory grow about threefold per level (ten levels of
/// `map → filter` took 7.7 GB and 45 s; this file's shape did not compile in 23 GB).
macro_rules! slot {
    ($flow:expr, $op:expr) => {{
        let (k, m, n) = slot_parts($op);
        $flow
            .map(move |x: u32| match k {
                Some(k) => x.wrapping_mul(k).wrapping_add(1),
                None => x,
            })
            .filter(move |x: &u32| m.is_none_or(|m| x % m != 0))
            .flat_map(move |x: u32| std::iter::repeat_n(x, n))
    }};
}

/// A segment: [`SLOTS`] slots, then one closure for the operators left over.
macro_rules! segment {
    ($flow:expr, $ops:expr) => {{
        let ops: &[Op] = $ops;
        let rest: Arc<[Op]> = ops.get(SLOTS..).unwrap_or(&[]).into();
        let flow = slot!($flow, ops.first().copied());
        let flow = slot!(flow, ops.get(1).copied());
        let flow = slot!(flow, ops.get(2).copied());
        flow.flat_map(move |x: u32| apply_all(&rest, x))
    }};
}

#[derive(Debug)]
enum Outcome {
    Events(Vec<u32>),
    Counts(Vec<(u32, u64)>),
    Sums(Vec<u64>),
}

fn finish<P: Plan<Item = u32>>(flow: Flow<P>, end: End) -> flowstage::Result<Outcome> {
    match end {
        End::Collect => flow.collect().map(Outcome::Events),
        End::Count(layer) => flow
            .partition(layer.options())
            .reduce(HashMap::new, |x, mut counts: HashMap<u32, u64>| {
                *counts.entry(x).or_default() += 1;
                counts
            })
            .collect()
            .map(Outcome::Counts),
        End::Sum(layer) => flow
            .partition(layer.options())
            .reduce(|| 0u64, |x, sum| sum + u64::from(x))
            .emit_state()
            .departition(
                Vec::new,
                |sum, mut sums: Vec<u64>| {
                    sums.push(sum);
                    sums
                },
                |sums, _| sums,
            )
            .collect::<Vec<Vec<u64>>>()
            .map(|mut all| {
                assert_eq!(all.len(), 1, "departition emits once: {all:?}");
                let sums = all.pop().unwrap_or_default();
                assert_eq!(sums.len(), layer.stages, "one sum per partition");
                vec![sums.iter().sum()]
            })
            .map(Outcome::Sums),
    }
}

fn run(case: &Case) -> flowstage::Result<Outcome> {
    let (segments, layers) = case.shape();
    let source = Flow::from_iters(case.split_input());
    let first = segment!(source, &segments[0]);
    match layers.len() {
        0 => finish(first, case.end),
        1 => finish(
            segment!(first.partition(layers[0].options()), &segments[1]),
            case.end,
        ),
        2 => {
            let second = segment!(first.partition(layers[0].options()), &segments[1]);
            finish(
                segment!(second.partition(layers[1].options()), &segments[2]),
                case.end,
            )
        }
        _ => {
            let second = segment!(first.partition(layers[0].options()), &segments[1]);
            let third = segment!(second.partition(layers[1].options()), &segments[2]);
            finish(
                segment!(third.partition(layers[2].options()), &segments[3]),
                case.end,
            )
        }
    }
}

/// Runs the case on a thread of its own; `Err` if it hangs or panics.
fn run_guarded(case: &Case) -> Result<flowstage::Result<Outcome>, String> {
    let owned = case.clone();
    try_guarded(move || run(&owned))
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort_unstable();
    items
}

fn layer() -> impl Strategy<Value = Layer> {
    (
        1usize..=4,
        prop_oneof![3 => 1usize..=20, 2 => 1usize..=2000],
    )
        .prop_flat_map(|(stages, max_demand)| {
            (0..max_demand).prop_map(move |min_demand| Layer {
                stages,
                max_demand,
                min_demand,
            })
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop_oneof![0u32..4, any::<u32>()].prop_map(Op::Map),
        3 => (2u32..=7).prop_map(Op::Filter),
        2 => (0usize..=2).prop_map(Op::FlatMap),
        2 => layer().prop_map(Op::Partition),
    ]
}

fn end() -> impl Strategy<Value = End> {
    prop_oneof![
        2 => Just(End::Collect),
        1 => layer().prop_map(End::Count),
        1 => layer().prop_map(End::Sum),
    ]
}

fn input() -> impl Strategy<Value = Vec<u32>> {
    let value = prop_oneof![4 => 0u32..20, 1 => any::<u32>()];
    prop_oneof![
        3 => prop::collection::vec(value.clone(), 0..50),
        1 => prop::collection::vec(value, 0..2000),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        input(),
        1usize..=4,
        prop::collection::vec(op(), 0..10),
        end(),
    )
        .prop_map(|(input, sources, ops, end)| Case {
            input,
            sources,
            ops,
            end,
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: common::cases_from_env("PROPTEST_CASES", 1000),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_flows_match_the_sequential_reference(case in case()) {
        let expected = reference(&case.input, &case.ops);
        prop_assume!(expected.len() <= MAX_EVENTS);
        let outcome = run_guarded(&case)
            .map_err(TestCaseError::fail)?
            .map_err(|error| TestCaseError::fail(format!("the flow failed: {error}")))?;
        match outcome {
            Outcome::Events(events) => {
                prop_assert_eq!(sorted(events), sorted(expected));
            }
            Outcome::Counts(counts) => {
                let mut got: HashMap<u32, u64> = HashMap::new();
                for (key, count) in counts {
                    prop_assert!(
                        got.insert(key, count).is_none(),
                        "key {} emitted by two partitions", key
                    );
                }
                let mut want: HashMap<u32, u64> = HashMap::new();
                for x in expected {
                    *want.entry(x).or_default() += 1;
                }
                prop_assert_eq!(got, want);
            }
            Outcome::Sums(sums) => {
                let want: u64 = expected.iter().map(|&x| u64::from(x)).sum();
                prop_assert_eq!(sums, vec![want]);
            }
        }
    }
}

#[test]
fn the_fixed_shape_covers_every_operator_position() {
    // A fixed case through the same machinery: 3 partitions, more operators than slots in
    // one segment, every ending.
    let layer = Layer {
        stages: 3,
        max_demand: 10,
        min_demand: 4,
    };
    let ops = vec![
        Op::Map(3),
        Op::Filter(2),
        Op::FlatMap(2),
        Op::Map(5),
        Op::Filter(4),
        Op::Partition(layer),
        Op::FlatMap(1),
        Op::Map(7),
        Op::Partition(Layer { stages: 1, ..layer }),
        Op::Partition(Layer { stages: 4, ..layer }),
        Op::Partition(layer),
        Op::Map(2),
    ];
    let input: Vec<u32> = (0..500).collect();
    let expected = reference(&input, &ops);
    assert!(!expected.is_empty());
    for end in [End::Collect, End::Count(layer), End::Sum(layer)] {
        let case = Case {
            input: input.clone(),
            sources: 3,
            ops: ops.clone(),
            end,
        };
        let (segments, layers) = case.shape();
        assert_eq!(layers.len(), MAX_PARTITIONS);
        assert_eq!(
            segments[0].len(),
            5,
            "more than SLOTS: the overflow closure runs"
        );
        match run_guarded(&case).unwrap().unwrap() {
            Outcome::Events(events) => assert_eq!(sorted(events), sorted(expected.clone())),
            Outcome::Counts(counts) => {
                assert_eq!(
                    counts.iter().map(|c| c.1).sum::<u64>(),
                    expected.len() as u64
                )
            }
            Outcome::Sums(sums) => {
                assert_eq!(sums, [expected.iter().map(|&x| u64::from(x)).sum::<u64>()])
            }
        }
    }
}
