//! Exactly once at scale: random pipelines over random configurations deliver every event
//! exactly once — the flow's output is multiset-equal to a sequential reference computed
//! here with `Iterator`.
//!
//! A case is:
//! - an input of `u32`s (mostly small values, so keys and windows repeat), read by one of
//!   `from_iter`, `from_iters` (1–4 iterators), `from_par_iter`, `from_stages` (1–4 user
//!   producers that answer demand with up to 5 000 events more than asked), `LinesSource`
//!   (1–4 readers) or `FileSource` by lines (1–4 readers, block sizes 1 byte–64 KiB, read
//!   or mapped) over a temporary file of one number per line;
//! - a fused chain `map → filter → flat_map` (each operator maybe an identity) in the
//!   source stages, and optionally a middle layer — `partition` by event hash or by a key
//!   with few values, or `shuffle` — with another fused chain;
//! - an ending, each over a new layer of 1–16 stages with `max_demand` 1–5000 and a random
//!   `min_demand` below it:
//!   - `Collect`: the events;
//!   - `Count`: a partition + reduce per-key count, exact per key, and no key from two
//!     partitions;
//!   - `Windowed`: a windowed reduce that gathers each window's events and, through
//!     `on_trigger`, emits them and resets at every trigger — fixed windows (with and
//!     without `allowed_lateness`, late events kept with `LateEvents::keep`), count windows
//!     and the global window, with or without `trigger_every(n)`. Emitted plus late events
//!     are the input exactly once, and every event of a fixed window lies in it;
//!   - `Departition`: per-partition lists merged by `departition` into exactly one list;
//!   - `Join`: `bounded_join` of the events with a small random table, in a random mode,
//!     equal to a nested-loop join.
//!
//! Buffers: a flow sizes the file readers' blocks, and the user producers' surplus fills
//! their stages' buffers (a flow's source buffers never drop events, so they are not a
//! setting; the stage layer's `buffer_size` and `BufferKeep` are covered by
//! `tests/stages_prop.rs`).
//!
//! Every case runs under the shared watchdog (`tests/common`): a hang fails the case.
//! 1 000 cases by default; CI (`.ci/run`) runs 10 000, as does:
//!
//! ```text
//! FLOWSTAGE_PROP_CASES=10000 cargo test --release --test exactly_once
//! ```

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Layer, try_guarded};
use flowstage::StageError;
use flowstage::flow::{Flow, JoinMode, Partition, Plan};
use flowstage::source::{Delimiter, FileSource, LinesSource};
use flowstage::stage::{Produced, Producer};
use flowstage::window::{LateEvents, Window};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use rayon::prelude::*;

#[derive(Debug, Clone, Copy)]
enum SourceKind {
    Iter,
    Iters(usize),
    Lines {
        readers: usize,
    },
    File {
        readers: usize,
        block_size: usize,
        mmap: bool,
    },
    /// `from_par_iter` over the input.
    ParIter,
    /// `from_stages`: 1–4 user producers, each answering demand `n` with up to
    /// `n + extra` events (the surplus waits in the stage's buffer).
    Stages {
        producers: usize,
        extra: usize,
    },
}

/// A user producer over `events` that sends up to `extra` more events than asked.
struct Overproducer {
    events: std::collections::VecDeque<u32>,
    extra: usize,
}

impl Producer for Overproducer {
    type Item = u32;

    async fn handle_demand(&mut self, demand: usize) -> Result<Produced<u32>, StageError> {
        let n = (demand + self.extra).min(self.events.len());
        let events: Vec<u32> = self.events.drain(..n).collect();
        Ok(if self.events.is_empty() {
            Produced::Finished(events)
        } else {
            Produced::Events(events)
        })
    }
}

/// A fused `map → filter → flat_map` chain: `x * mul + add` (wrapping), keep
/// `x % modulo != 0` (0: keep all), each event `copies` times.
#[derive(Debug, Clone, Copy)]
struct Chain {
    mul: u32,
    add: u32,
    modulo: u32,
    copies: usize,
}

impl Chain {
    fn apply(self, x: u32) -> impl Iterator<Item = u32> {
        let y = x.wrapping_mul(self.mul).wrapping_add(self.add);
        let keep = self.modulo == 0 || y % self.modulo != 0;
        std::iter::repeat_n(y, if keep { self.copies } else { 0 })
    }
}

#[derive(Debug, Clone, Copy)]
enum WindowKind {
    /// Fixed windows of `size` ms over [`timestamp`]; `lateness` keeps closed windows
    /// open for an hour. (Events of windows before a stage's first window are late even
    /// then: those windows were never opened — see `tests/windows_prop.rs`.)
    Fixed {
        size: u64,
        lateness: bool,
    },
    Count(u64),
    Global,
}

#[derive(Debug, Clone)]
enum End {
    Collect,
    Count(Layer),
    Windowed {
        layer: Layer,
        window: WindowKind,
        every: Option<u64>,
    },
    Departition(Layer),
    Join {
        layer: Layer,
        mode: JoinMode,
        keys: u32,
        table: Vec<(u32, u32)>,
    },
}

#[derive(Debug, Clone)]
struct Case {
    input: Vec<u32>,
    source: SourceKind,
    first: Chain,
    middle: Option<(Layer, Route, Chain)>,
    end: End,
}

/// How the middle layer routes events.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// `Partition::new()`: by the hash of the event.
    Hash,
    /// `Partition::by_key(x % modulus)`: few keys, so some stages get nothing.
    Key(u32),
    /// `shuffle`: by demand.
    Shuffle,
}

/// What a run gave, normalised for comparison.
#[derive(Debug)]
enum Outcome {
    Events(Vec<u32>),
    Counts(Vec<(u32, u64)>),
    /// Emitted `(window id, event)` and the late events.
    Windowed(Vec<(i64, u32)>, Vec<u32>),
    Lists(Vec<Vec<u32>>),
    Pairs(Vec<(Option<u32>, Option<u32>)>),
}

/// The events after the stateless part: the sequential reference.
fn reference_events(case: &Case) -> Vec<u32> {
    case.input
        .iter()
        .flat_map(|&x| case.first.apply(x))
        .flat_map(|x| match case.middle {
            Some((_, _, chain)) => chain.apply(x).collect::<Vec<_>>(),
            None => vec![x],
        })
        .collect()
}

fn join_reference(
    events: &[u32],
    mode: JoinMode,
    keys: u32,
    table: &[(u32, u32)],
) -> Vec<(Option<u32>, Option<u32>)> {
    let mut pairs = Vec::new();
    for &l in events {
        let matches: Vec<_> = table.iter().filter(|r| r.0 == l % keys).collect();
        for r in &matches {
            pairs.push((Some(l), Some(r.1)));
        }
        if matches.is_empty() && matches!(mode, JoinMode::LeftOuter | JoinMode::FullOuter) {
            pairs.push((Some(l), None));
        }
    }
    if matches!(mode, JoinMode::RightOuter | JoinMode::FullOuter) {
        for r in table {
            if !events.iter().any(|l| l % keys == r.0) {
                pairs.push((None, Some(r.1)));
            }
        }
    }
    pairs
}

static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// A temporary file of one number per line, removed on drop.
struct TempInput(PathBuf);

impl TempInput {
    fn new(input: &[u32]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("flowstage-exactly-once-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(format!("{}.txt", NEXT_FILE.fetch_add(1, Ordering::Relaxed)));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("temp file"));
        for x in input {
            writeln!(file, "{x}").expect("write");
        }
        file.flush().expect("flush");
        TempInput(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempInput {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An event's timestamp for fixed windows, in ms: bounded, so that the windows a
/// watermark skips over (which fire, empty) stay few.
fn timestamp(x: &u32) -> i64 {
    i64::from(x % 1000)
}

fn parse(line: &str) -> u32 {
    line.trim().parse().expect("the test file holds numbers")
}

/// The stateless chain as fused operators.
macro_rules! chain {
    ($flow:expr, $chain:expr) => {{
        let Chain {
            mul,
            add,
            modulo,
            copies,
        } = $chain;
        $flow
            .map(move |x: u32| x.wrapping_mul(mul).wrapping_add(add))
            .filter(move |y: &u32| modulo == 0 || y % modulo != 0)
            .flat_map(move |y: u32| std::iter::repeat_n(y, copies))
    }};
}

fn run(case: Case) -> flowstage::Result<Outcome> {
    match case.source {
        SourceKind::Iter => middle(Flow::from_iter(case.input.clone()), &case),
        SourceKind::Iters(parts) => {
            let len = case.input.len();
            let iters: Vec<Vec<u32>> = (0..parts)
                .map(|i| case.input[i * len / parts..(i + 1) * len / parts].to_vec())
                .collect();
            middle(Flow::from_iters(iters), &case)
        }
        SourceKind::ParIter => middle(
            Flow::from_par_iter(case.input.clone().into_par_iter()),
            &case,
        ),
        SourceKind::Stages { producers, extra } => {
            let len = case.input.len();
            let stages: Vec<Overproducer> = (0..producers)
                .map(|i| Overproducer {
                    events: case.input[i * len / producers..(i + 1) * len / producers]
                        .iter()
                        .copied()
                        .collect(),
                    extra,
                })
                .collect();
            middle(Flow::from_stages(stages), &case)
        }
        SourceKind::Lines { readers } => {
            let file = TempInput::new(&case.input);
            let flow = Flow::from_source(LinesSource::new(file.path()).readers(readers))
                .map(|line: String| parse(&line));
            middle(flow, &case)
        }
        SourceKind::File {
            readers,
            block_size,
            mmap,
        } => {
            let file = TempInput::new(&case.input);
            let source = FileSource::new(file.path())
                .delimiter(Delimiter::Line)
                .readers(readers)
                .block_size(block_size);
            // SAFETY: the test's own temporary file; nothing changes it while the flow runs.
            let source = unsafe { source.mmap(mmap) };
            let flow = Flow::from_source(source).flat_map(|chunk| {
                chunk
                    .words()
                    .map(|word| parse(std::str::from_utf8(word).expect("ASCII")))
                    .collect::<Vec<_>>()
            });
            middle(flow, &case)
        }
    }
}

fn middle<P: Plan<Item = u32>>(flow: Flow<P>, case: &Case) -> flowstage::Result<Outcome> {
    let flow = chain!(flow, case.first);
    match case.middle {
        None => end(flow, case),
        Some((layer, Route::Hash, chain)) => {
            end(chain!(flow.partition(layer.options()), chain), case)
        }
        Some((layer, Route::Key(modulus), chain)) => {
            let by_key = Partition::by_key(move |x: &u32| x % modulus)
                .stages(layer.stages)
                .max_demand(layer.max_demand)
                .min_demand(layer.min_demand);
            end(chain!(flow.partition(by_key), chain), case)
        }
        Some((layer, Route::Shuffle, chain)) => {
            end(chain!(flow.shuffle(layer.shuffle()), chain), case)
        }
    }
}

fn end<P: Plan<Item = u32>>(flow: Flow<P>, case: &Case) -> flowstage::Result<Outcome> {
    match case.end.clone() {
        End::Collect => flow.collect().map(Outcome::Events),
        End::Count(layer) => flow
            .partition(layer.options())
            .reduce(HashMap::new, |x, mut counts: HashMap<u32, u64>| {
                *counts.entry(x).or_default() += 1;
                counts
            })
            .collect()
            .map(Outcome::Counts),
        End::Windowed {
            layer,
            window,
            every,
        } => {
            let late = LateEvents::keep();
            let mut spec = match window {
                WindowKind::Fixed { size, lateness } => {
                    let fixed =
                        Window::fixed(Duration::from_millis(size), timestamp).late_events(&late);
                    if lateness {
                        fixed.allowed_lateness(Duration::from_secs(3600))
                    } else {
                        fixed
                    }
                }
                WindowKind::Count(n) => Window::count(n),
                WindowKind::Global => Window::global(),
            };
            if let Some(n) = every {
                spec = spec.trigger_every(n);
            }
            let emitted: Vec<(i64, u32)> = flow
                .partition(layer.options().window(spec))
                .reduce(Vec::new, |x, mut events: Vec<u32>| {
                    events.push(x);
                    events
                })
                .on_trigger(|events, _partition, trigger| {
                    let id = trigger.window.id;
                    (
                        events.into_iter().map(move |x| (id, x)).collect::<Vec<_>>(),
                        Vec::new(),
                    )
                })
                .collect()?;
            Ok(Outcome::Windowed(emitted, late.take()))
        }
        End::Departition(layer) => flow
            .partition(layer.options())
            .reduce(Vec::new, |x, mut events: Vec<u32>| {
                events.push(x);
                events
            })
            .emit_state()
            .departition(
                Vec::new,
                |events, mut all: Vec<u32>| {
                    all.extend(events);
                    all
                },
                |all| all,
            )
            .collect()
            .map(Outcome::Lists),
        End::Join {
            layer,
            mode,
            keys,
            table,
        } => Flow::bounded_join(
            mode,
            flow,
            Flow::from_iter(table),
            move |l: &u32| l % keys,
            |r: &(u32, u32)| r.0,
            |l: Option<&u32>, r: Option<&(u32, u32)>| (l.copied(), r.map(|r| r.1)),
            layer.shuffle(),
        )
        .collect()
        .map(Outcome::Pairs),
    }
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort_unstable();
    items
}

/// Checks one case's outcome against the reference.
fn check(case: &Case, outcome: Outcome) -> Result<(), TestCaseError> {
    let expected = reference_events(case);
    match outcome {
        Outcome::Events(events) => prop_assert_eq!(sorted(events), sorted(expected)),
        Outcome::Counts(counts) => {
            let mut got: HashMap<u32, u64> = HashMap::new();
            for (key, count) in counts {
                prop_assert!(
                    got.insert(key, count).is_none(),
                    "key {} emitted by two partitions",
                    key
                );
            }
            let mut want: HashMap<u32, u64> = HashMap::new();
            for x in expected {
                *want.entry(x).or_default() += 1;
            }
            prop_assert_eq!(got, want);
        }
        Outcome::Windowed(emitted, late) => {
            if let End::Windowed {
                window: WindowKind::Fixed { size, .. },
                ..
            } = case.end
            {
                for &(id, x) in &emitted {
                    let start = timestamp(&x).div_euclid(size as i64) * size as i64;
                    prop_assert_eq!(id, start, "event {} in the wrong window", x);
                }
            } else {
                prop_assert!(
                    late.is_empty(),
                    "late events without event time: {:?}",
                    late
                );
            }
            let mut all: Vec<u32> = emitted.into_iter().map(|(_, x)| x).collect();
            all.extend(late);
            prop_assert_eq!(sorted(all), sorted(expected));
        }
        Outcome::Lists(mut lists) => {
            prop_assert_eq!(lists.len(), 1, "departition emits exactly once");
            let all = lists.pop().unwrap_or_default();
            prop_assert_eq!(sorted(all), sorted(expected));
        }
        Outcome::Pairs(pairs) => {
            let End::Join {
                mode, keys, table, ..
            } = &case.end
            else {
                unreachable!("pairs come from joins")
            };
            let want = join_reference(&expected, *mode, *keys, table);
            prop_assert_eq!(sorted(pairs), sorted(want));
        }
    }
    Ok(())
}

fn layer() -> impl Strategy<Value = Layer> {
    (
        prop_oneof![3 => 1usize..=4, 1 => 5usize..=16],
        prop_oneof![3 => 1usize..=20, 2 => 21usize..=5000],
    )
        .prop_flat_map(|(stages, max_demand)| (Just(stages), Just(max_demand), 0..max_demand))
        .prop_map(|(stages, max_demand, min_demand)| Layer {
            stages,
            max_demand,
            min_demand,
        })
}

fn source() -> impl Strategy<Value = SourceKind> {
    prop_oneof![
        2 => Just(SourceKind::Iter),
        2 => (1usize..=4).prop_map(SourceKind::Iters),
        1 => (1usize..=4).prop_map(|readers| SourceKind::Lines { readers }),
        1 => Just(SourceKind::ParIter),
        1 => (1usize..=4, prop_oneof![Just(0usize), 1usize..=64, 65usize..=5000])
            .prop_map(|(producers, extra)| SourceKind::Stages { producers, extra }),
        1 => (
            1usize..=4,
            prop_oneof![1usize..=16, 17usize..=65_536],
            any::<bool>()
        )
            .prop_map(|(readers, block_size, mmap)| SourceKind::File {
                readers,
                block_size,
                mmap
            }),
    ]
}

fn chain() -> impl Strategy<Value = Chain> {
    (
        prop_oneof![3 => Just(1u32), 1 => 0u32..4],
        prop_oneof![3 => Just(0u32), 1 => 0u32..10],
        prop_oneof![2 => Just(0u32), 1 => 2u32..=5],
        prop_oneof![4 => Just(1usize), 1 => 0usize..=3],
    )
        .prop_map(|(mul, add, modulo, copies)| Chain {
            mul,
            add,
            modulo,
            copies,
        })
}

fn window() -> impl Strategy<Value = WindowKind> {
    prop_oneof![
        2 => (1u64..=50, any::<bool>()).prop_map(|(size, lateness)| WindowKind::Fixed { size, lateness }),
        1 => (1u64..=40).prop_map(WindowKind::Count),
        1 => Just(WindowKind::Global),
    ]
}

fn mode() -> impl Strategy<Value = JoinMode> {
    prop_oneof![
        Just(JoinMode::Inner),
        Just(JoinMode::LeftOuter),
        Just(JoinMode::RightOuter),
        Just(JoinMode::FullOuter),
    ]
}

fn ending() -> impl Strategy<Value = End> {
    prop_oneof![
        2 => Just(End::Collect),
        1 => layer().prop_map(End::Count),
        3 => (layer(), window(), prop::option::of(1u64..=30)).prop_map(|(layer, window, every)| End::Windowed { layer, window, every }),
        1 => layer().prop_map(End::Departition),
        2 => (layer(), mode(), 1u32..=12)
            .prop_flat_map(|(layer, mode, keys)| {
                (Just(layer), Just(mode), Just(keys), prop::collection::vec((0..keys + 2, 0u32..1000), 0..8))
            })
            .prop_map(|(layer, mode, keys, table)| End::Join { layer, mode, keys, table }),
    ]
}

fn input() -> impl Strategy<Value = Vec<u32>> {
    let value = prop_oneof![4 => 0u32..200, 1 => 0u32..100_000];
    prop_oneof![
        6 => prop::collection::vec(value.clone(), 0..60),
        1 => prop::collection::vec(value.clone(), 60..4000),
        1 => prop::collection::vec(value, 4000..20_000),
    ]
}

fn route() -> impl Strategy<Value = Route> {
    prop_oneof![
        Just(Route::Hash),
        (1u32..=5).prop_map(Route::Key),
        Just(Route::Shuffle),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        input(),
        source(),
        chain(),
        prop::option::of((layer(), route(), chain())),
        ending(),
    )
        .prop_map(|(input, source, first, middle, end)| Case {
            input,
            source,
            first,
            middle,
            end,
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: common::cases_from_env("FLOWSTAGE_PROP_CASES", 1000),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_event_is_delivered_exactly_once(case in case()) {
        let owned = case.clone();
        let outcome = try_guarded(move || run(owned))
            .map_err(TestCaseError::fail)?
            .map_err(|error| TestCaseError::fail(format!("the flow failed: {error}")))?;
        check(&case, outcome)?;
    }
}
