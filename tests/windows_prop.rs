//! Property tests of windows (SEMANTICS.md, "Windows and triggers") against brute-force
//! references:
//! - sliding windows over 1–3 producers, each in timestamp order, over 1–3 stages: the
//!   sum and count of every non-empty window equal those of the events it covers;
//! - session windows over 1–3 producers in timestamp order: the sessions are the runs of
//!   the sorted timestamps split where two are `gap` or more apart;
//! - fixed windows from one producer in any order: the triggers and late events do not
//!   depend on `max_demand`, late events are exactly those whose window ended at or before
//!   an earlier timestamp (with lateness: and had no events then), and nothing is lost;
//! - count windows: the input cut into runs of `n`, plus the last (maybe empty) window;
//! - `reduce_mut` (the accumulator updated in place): per-key sums per fixed window over
//!   1–3 producers and 1–3 stages equal a brute-force reference; from one producer, every
//!   trigger (`every(n)` included, which splits batches) fires exactly as with `reduce`.
//!
//! Every case runs under a watchdog: a hang fails the case instead of stalling the suite.
//! `PROPTEST_CASES` overrides the number of cases (300 by default).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::try_guarded;
use flowstage::flow::{Flow, Partition, TriggerName};
use flowstage::window::{LateEvents, Window};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// Runs a flow under the watchdog; a hang, panic or failed run fails the case.
fn run<T: Send + 'static>(
    body: impl FnOnce() -> flowstage::Result<T> + Send + 'static,
) -> Result<T, TestCaseError> {
    try_guarded(body)
        .map_err(TestCaseError::fail)?
        .map_err(|error| TestCaseError::fail(format!("the flow failed: {error}")))
}

fn ms(millis: i64) -> Duration {
    Duration::from_millis(millis as u64)
}

/// `(timestamp, value)`.
type Event = (i64, i64);

/// The demand of a layer's subscriptions.
#[derive(Debug, Clone, Copy)]
struct Demand {
    max: usize,
    min: usize,
}

fn demand() -> impl Strategy<Value = Demand> {
    prop_oneof![3 => 1usize..=10, 1 => 11usize..=1000]
        .prop_flat_map(|max| (0..max).prop_map(move |min| Demand { max, min }))
}

fn event() -> impl Strategy<Value = Event> {
    (-40i64..160, -50i64..100)
}

/// 1–3 producers, each emitting its events in timestamp order.
fn ordered_producers() -> impl Strategy<Value = Vec<Vec<Event>>> {
    prop::collection::vec(
        prop::collection::vec(event(), 0..40).prop_map(|mut events| {
            events.sort_by_key(|&(ts, _)| ts);
            events
        }),
        1..=3,
    )
}

/// The sum and count of the events of each non-empty sliding window, by window start.
fn sliding_reference(events: &[Event], size: i64, slide: i64) -> BTreeMap<i64, (i64, u64)> {
    let mut windows: BTreeMap<i64, (i64, u64)> = BTreeMap::new();
    for &(ts, value) in events {
        let mut start = ts.div_euclid(slide) * slide;
        while start > ts - size {
            assert!(start <= ts && ts < start + size);
            let window = windows.entry(start).or_default();
            window.0 += value;
            window.1 += 1;
            start -= slide;
        }
    }
    windows
}

/// Sessions of gap `gap` as (start, sum, count): the sorted timestamps split where two
/// neighbours are `gap` or more apart.
fn session_reference(events: &[Event], gap: i64) -> Vec<(i64, i64, u64)> {
    let mut sorted = events.to_vec();
    sorted.sort_by_key(|&(ts, _)| ts);
    let mut sessions: Vec<(i64, i64, u64)> = Vec::new();
    let mut last: Option<i64> = None;
    for (ts, value) in sorted {
        match (last, sessions.last_mut()) {
            (Some(previous), Some(session)) if ts - previous < gap => {
                session.1 += value;
                session.2 += 1;
            }
            _ => sessions.push((ts, value, 1)),
        }
        last = Some(ts);
    }
    sessions
}

/// Every trigger of a one-producer, one-stage layer of fixed windows over `events`, as
/// (window id, name, sum), in firing order; and the late events.
type FixedOutcome = (Vec<(i64, TriggerName, i64)>, Vec<Event>);

fn fixed(
    events: Vec<Event>,
    size: i64,
    lateness: bool,
    max_demand: usize,
) -> Result<FixedOutcome, TestCaseError> {
    run(move || {
        let late = LateEvents::keep();
        let mut window = Window::fixed(ms(size), |e: &Event| e.0).late_events(&late);
        if lateness {
            // Far longer than any case runs: windows only end at the end of input.
            window = window.allowed_lateness(Duration::from_secs(3600));
        }
        let fired: Vec<(i64, TriggerName, i64)> = Flow::from_iter(events)
            .partition(
                Partition::new()
                    .stages(1)
                    .max_demand(max_demand)
                    .window(window),
            )
            .reduce(|| 0i64, |(_, value), sum| sum + value)
            .on_trigger(|sum, _, trigger| {
                (vec![(trigger.window.id, trigger.name.clone(), sum)], sum)
            })
            .collect()?;
        Ok((fired, late.take()))
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: common::cases_from_env("PROPTEST_CASES", 300),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn sliding_windows_hold_exactly_the_events_they_cover(
        (size, slide) in (1i64..=30).prop_flat_map(|size| (Just(size), 1..=size)),
        producers in ordered_producers(),
        stages in 1usize..=3,
        demand in demand(),
    ) {
        let all: Vec<Event> = producers.iter().flatten().copied().collect();
        let expected = sliding_reference(&all, size, slide);
        let (fired, late) = run(move || {
            let late = LateEvents::keep();
            let window =
                Window::sliding(ms(size), ms(slide), |e: &Event| e.0).late_events(&late);
            let fired: Vec<(usize, i64, TriggerName, i64, u64)> = Flow::from_iters(producers)
                .partition(
                    Partition::new()
                        .stages(stages)
                        .max_demand(demand.max)
                        .min_demand(demand.min)
                        .window(window),
                )
                .reduce(|| (0i64, 0u64), |(_, value), (sum, count)| (sum + value, count + 1))
                .on_trigger(|(sum, count), partition, trigger| {
                    let fired = (partition.index, trigger.window.id, trigger.name.clone());
                    (vec![(fired.0, fired.1, fired.2, sum, count)], (sum, count))
                })
                .collect()?;
            Ok((fired, late.take()))
        })?;
        prop_assert!(late.is_empty(), "late events in timestamp order: {:?}", late);
        let mut seen = std::collections::HashSet::new();
        let mut got: BTreeMap<i64, (i64, u64)> = BTreeMap::new();
        for (stage, id, name, sum, count) in fired {
            prop_assert_eq!(name, TriggerName::Done);
            prop_assert!(seen.insert((stage, id)), "stage {} fired window {} twice", stage, id);
            prop_assert_eq!(id.rem_euclid(slide), 0, "window {} not on the slide", id);
            if count > 0 {
                let window = got.entry(id).or_default();
                window.0 += sum;
                window.1 += count;
            }
        }
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn session_windows_split_where_the_gap_is_reached(
        gap in 1i64..=25,
        producers in ordered_producers(),
        demand in demand(),
    ) {
        let all: Vec<Event> = producers.iter().flatten().copied().collect();
        let expected = session_reference(&all, gap);
        let (mut fired, late) = run(move || {
            let late = LateEvents::keep();
            let window = Window::session(ms(gap), |e: &Event| e.0).late_events(&late);
            let fired: Vec<(i64, i64, u64)> = Flow::from_iters(producers)
                .partition(
                    Partition::new()
                        .stages(1)
                        .max_demand(demand.max)
                        .min_demand(demand.min)
                        .window(window),
                )
                .reduce(|| (0i64, 0u64), |(_, value), (sum, count)| (sum + value, count + 1))
                .on_trigger(|(sum, count), _, trigger| {
                    assert_eq!(trigger.name, TriggerName::Done);
                    (vec![(trigger.window.id, sum, count)], (sum, count))
                })
                .collect()?;
            Ok((fired, late.take()))
        })?;
        prop_assert!(late.is_empty(), "late events in timestamp order: {:?}", late);
        fired.sort_unstable();
        prop_assert_eq!(fired, expected);
    }

    #[test]
    fn fixed_windows_of_one_producer_do_not_depend_on_demand(
        events in prop::collection::vec(event(), 0..60),
        size in 1i64..=30,
        lateness in any::<bool>(),
    ) {
        let total: i64 = events.iter().map(|&(_, value)| value).sum();
        // An event is late when an earlier one is at or past the end of its window. With
        // (unending) lateness a window that had events when that happened stays open; one
        // that had none never existed, and takes none later.
        let floor = |ts: i64| ts.div_euclid(size) * size;
        let mut expected_late = Vec::new();
        let mut opened = std::collections::HashSet::new();
        let mut latest = i64::MIN;
        for &(ts, value) in &events {
            let passed = floor(ts) + size <= latest;
            if passed && !(lateness && opened.contains(&floor(ts))) {
                expected_late.push((ts, value));
            } else {
                opened.insert(floor(ts));
            }
            latest = latest.max(ts);
        }
        let first = fixed(events.clone(), size, lateness, 1)?;
        for max_demand in [3, 1000] {
            let other = fixed(events.clone(), size, lateness, max_demand)?;
            prop_assert_eq!(&other, &first, "max_demand 1 against {}", max_demand);
        }
        let (fired, late) = first;
        prop_assert_eq!(&late, &expected_late);
        let done: Vec<(i64, i64)> = fired
            .iter()
            .filter(|(_, name, _)| *name == TriggerName::Done)
            .map(|(id, _, sum)| (*id, *sum))
            .collect();
        prop_assert!(
            done.windows(2).all(|w| w[0].0 < w[1].0),
            "windows not done once each, oldest first: {:?}", fired
        );
        let kept: i64 = done.iter().map(|(_, sum)| sum).sum();
        let dropped: i64 = late.iter().map(|(_, value)| value).sum();
        prop_assert_eq!(kept + dropped, total);
    }

    #[test]
    fn reduce_mut_sums_each_key_of_each_fixed_window(
        producers in ordered_producers(),
        size in 1i64..=30,
        stages in 1usize..=3,
        demand in demand(),
    ) {
        // Keys from the values: a handful, so that windows hold repeated keys.
        let key = |value: i64| value.rem_euclid(5);
        let mut expected: BTreeMap<(i64, i64), i64> = BTreeMap::new();
        for &(ts, value) in producers.iter().flatten() {
            *expected.entry((ts.div_euclid(size) * size, key(value))).or_default() += value;
        }
        let fired: Vec<(i64, i64, i64)> = run(move || {
            Flow::from_iters(producers)
                .partition(
                    Partition::by_key(move |e: &Event| key(e.1))
                        .stages(stages)
                        .max_demand(demand.max)
                        .min_demand(demand.min)
                        .window(Window::fixed(ms(size), |e: &Event| e.0)),
                )
                .reduce_mut(BTreeMap::new, move |(_, value), sums: &mut BTreeMap<i64, i64>| {
                    *sums.entry(key(value)).or_default() += value;
                })
                .on_trigger(|sums, _, trigger| {
                    let id = trigger.window.id;
                    let out: Vec<_> = sums.into_iter().map(|(k, sum)| (id, k, sum)).collect();
                    (out, BTreeMap::new())
                })
                .collect()
        })?;
        let mut got: BTreeMap<(i64, i64), i64> = BTreeMap::new();
        for (id, k, sum) in fired {
            prop_assert!(
                got.insert((id, k), sum).is_none(),
                "key {} of window {} emitted twice", k, id
            );
        }
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn reduce_mut_fires_every_trigger_as_reduce_does(
        events in prop::collection::vec(event(), 0..80),
        size in 1i64..=30,
        every in 1u64..=7,
        demand in demand(),
    ) {
        type Fired = Vec<(i64, TriggerName, i64, u64)>;
        let flow = move |in_place: bool| {
            let events = events.clone();
            run(move || {
                let window = Window::fixed(ms(size), |e: &Event| e.0).trigger_every(every);
                let layer = Flow::from_iter(events).partition(
                    Partition::new()
                        .stages(1)
                        .max_demand(demand.max)
                        .min_demand(demand.min)
                        .window(window),
                );
                let report = |(sum, count): (i64, u64), _, trigger: &flowstage::flow::Trigger| {
                    let fired = (trigger.window.id, trigger.name.clone(), sum, count);
                    (vec![fired], (sum, count))
                };
                let fired: Fired = if in_place {
                    layer
                        .reduce_mut(|| (0i64, 0u64), |(_, value), acc: &mut (i64, u64)| {
                            acc.0 += value;
                            acc.1 += 1;
                        })
                        .on_trigger(report)
                        .collect()?
                } else {
                    layer
                        .reduce(|| (0i64, 0u64), |(_, value), (sum, count)| (sum + value, count + 1))
                        .on_trigger(report)
                        .collect()?
                };
                Ok(fired)
            })
        };
        let by_value = flow(false)?;
        prop_assert!(
            by_value.iter().any(|(_, name, _, _)| *name == TriggerName::Done) || by_value.is_empty(),
            "no Done trigger: {:?}", by_value
        );
        prop_assert_eq!(flow(true)?, by_value);
    }

    #[test]
    fn count_windows_cut_the_input_in_runs_of_n(
        input in prop::collection::vec(any::<u32>(), 0..200),
        n in 1u64..=20,
        demand in demand(),
    ) {
        let events = input.clone();
        let windows: Vec<Vec<u32>> = run(move || {
            Flow::from_iter(events)
                .partition(
                    Partition::new()
                        .stages(1)
                        .max_demand(demand.max)
                        .min_demand(demand.min)
                        .window(Window::count(n)),
                )
                .reduce(Vec::new, |x, mut window: Vec<u32>| {
                    window.push(x);
                    window
                })
                .emit_state()
                .collect()
        })?;
        let n = n as usize;
        let full = input.len() / n;
        let mut expected: Vec<Vec<u32>> = input.chunks(n).take(full).map(<[u32]>::to_vec).collect();
        expected.push(input[full * n..].to_vec());
        prop_assert_eq!(windows, expected);
    }
}

#[test]
fn an_event_for_a_window_the_watermark_passed_before_it_opened_is_late() {
    // Window 0 never opened, but the watermark (50) passed it: 3 is late, as it is once a
    // window closed (55 closes window 50 and passes 0 too). With lateness, window 0 never
    // fired `Watermark`, so it takes no late events either.
    for lateness in [false, true] {
        for (events, expected_late) in [
            (vec![(50, 1), (3, 2)], vec![(3, 2)]),
            (vec![(50, 1), (65, 4), (3, 2)], vec![(3, 2)]),
        ] {
            let (fired, late) = fixed(events.clone(), 10, lateness, 1000).unwrap();
            assert_eq!(late, expected_late, "{events:?}, lateness {lateness}");
            assert!(
                fired.iter().all(|(id, _, _)| *id >= 50),
                "windows before the first fired: {fired:?}"
            );
        }
    }
}
