//! Windows and triggers with exact expected outputs (SEMANTICS.md, "Windows and triggers").

mod common;

use std::time::Duration;

use common::guarded;
use flowstage::flow::{Flow, Partition, Shuffle, TriggerName};
use flowstage::window::{Decision, LateEvents, Window};

const DEMANDS: [usize; 4] = [1000, 5, 1, 7];

#[test]
fn count_windows_sum_each_ten_events_then_the_empty_last_window() {
    for max_demand in DEMANDS {
        let sums: Vec<u64> = guarded(move || {
            Flow::from_iter(1..=100u64)
                .partition(
                    Partition::new()
                        .stages(1)
                        .max_demand(max_demand)
                        .min_demand(0)
                        .window(Window::count(10)),
                )
                .reduce(|| 0u64, |x, sum| sum + x)
                .emit_state()
                .collect()
                .unwrap()
        });
        assert_eq!(
            sums,
            [55, 155, 255, 355, 455, 555, 655, 755, 855, 955, 0],
            "max_demand {max_demand}"
        );
    }
}

/// Global window + every(10) over 1..=100, summed; `reset` starts each trigger afresh.
fn every_ten(max_demand: usize, reset: bool) -> Vec<(u64, TriggerName)> {
    guarded(move || {
        Flow::from_iter(1..=100u64)
            .partition(
                Partition::new()
                    .stages(1)
                    .max_demand(max_demand)
                    .min_demand(0)
                    .window(Window::global().trigger_every(10)),
            )
            .reduce(|| 0u64, |x, sum| sum + x)
            .on_trigger(move |sum, _, trigger| {
                (
                    vec![(sum, trigger.name.clone())],
                    if reset { 0 } else { sum },
                )
            })
            .collect()
            .unwrap()
    })
}

#[test]
fn global_every_ten_keep_accumulates() {
    let mut expected: Vec<(u64, TriggerName)> = (1..=10u64)
        .map(|k| ((1..=10 * k).sum(), TriggerName::Every(10)))
        .collect();
    expected.push((5050, TriggerName::Done));
    assert_eq!(
        expected[..3].iter().map(|e| e.0).collect::<Vec<_>>(),
        [55, 210, 465]
    );
    for max_demand in DEMANDS {
        assert_eq!(
            every_ten(max_demand, false),
            expected,
            "max_demand {max_demand}"
        );
    }
}

#[test]
fn global_every_ten_reset_sums_each_ten() {
    let mut expected: Vec<(u64, TriggerName)> = (0..10u64)
        .map(|k| ((10 * k + 1..=10 * k + 10).sum(), TriggerName::Every(10)))
        .collect();
    expected.push((0, TriggerName::Done));
    assert_eq!(
        expected[..3].iter().map(|e| e.0).collect::<Vec<_>>(),
        [55, 155, 255]
    );
    for max_demand in DEMANDS {
        assert_eq!(
            every_ten(max_demand, true),
            expected,
            "max_demand {max_demand}"
        );
    }
}

type Fired = (i64, TriggerName, i64);

/// A single producer of timestamps into 10 ms fixed windows, summed; every trigger as
/// (window id, name, sum), in firing order; and the late events.
fn fixed_sums(
    ts: Vec<i64>,
    lateness: Option<Duration>,
    max_demand: usize,
) -> (Vec<Fired>, Vec<i64>) {
    guarded(move || {
        let late = LateEvents::keep();
        let mut window = Window::fixed(Duration::from_millis(10), |t: &i64| *t).late_events(&late);
        if let Some(lateness) = lateness {
            window = window.allowed_lateness(lateness);
        }
        let fired: Vec<Fired> = Flow::from_iter(ts)
            .partition(
                Partition::new()
                    .stages(1)
                    .max_demand(max_demand)
                    .min_demand(0)
                    .window(window),
            )
            .reduce(|| 0i64, |t, sum| sum + t)
            .on_trigger(|sum, _, trigger| {
                (vec![(trigger.window.id, trigger.name.clone(), sum)], sum)
            })
            .collect()
            .unwrap();
        (fired, late.take())
    })
}

#[test]
fn fixed_windows_in_order_fire_done_per_window() {
    for max_demand in DEMANDS {
        let (fired, late) = fixed_sums((0..30).collect(), None, max_demand);
        assert_eq!(
            fired,
            [
                (0, TriggerName::Done, 45),
                (10, TriggerName::Done, 145),
                (20, TriggerName::Done, 245)
            ],
            "max_demand {max_demand}"
        );
        assert!(late.is_empty());
    }
}

#[test]
fn fixed_windows_out_of_order_without_lateness_drop_late_events_to_the_side() {
    for max_demand in DEMANDS {
        let (fired, late) = fixed_sums(vec![1, 12, 3, 25, 14, 9, 31], None, max_demand);
        assert_eq!(
            fired,
            [
                (0, TriggerName::Done, 1),
                (10, TriggerName::Done, 12),
                (20, TriggerName::Done, 25),
                (30, TriggerName::Done, 31)
            ],
            "max_demand {max_demand}"
        );
        assert_eq!(late, [3, 14, 9]);
    }
}

#[test]
fn fixed_windows_out_of_order_with_lateness_fire_watermark_then_done_oldest_first() {
    for max_demand in DEMANDS {
        let (fired, late) = fixed_sums(
            vec![1, 12, 3, 25, 14, 9, 31],
            Some(Duration::from_secs(3600)),
            max_demand,
        );
        assert_eq!(
            fired,
            [
                (0, TriggerName::Watermark, 1),
                (10, TriggerName::Watermark, 12),
                (20, TriggerName::Watermark, 25),
                (0, TriggerName::Done, 13),
                (10, TriggerName::Done, 26),
                (20, TriggerName::Done, 25),
                (30, TriggerName::Done, 31)
            ],
            "max_demand {max_demand}"
        );
        assert!(late.is_empty(), "{late:?}");
    }
}

#[test]
fn only_fixed_windows_with_events_fire() {
    let (fired, _) = fixed_sums(vec![1, 35], None, 1000);
    assert_eq!(
        fired,
        [(0, TriggerName::Done, 1), (30, TriggerName::Done, 35)]
    );
}

#[test]
fn fire_empty_fires_the_empty_windows_of_short_gaps_only() {
    let fired = |events: Vec<i64>, lateness: Option<Duration>| {
        guarded(move || {
            let mut window = Window::fixed(Duration::from_millis(10), |t: &i64| *t).fire_empty(3);
            if let Some(lateness) = lateness {
                window = window.allowed_lateness(lateness);
            }
            Flow::from_iter(events)
                .partition(Partition::new().stages(1).window(window))
                .reduce(|| 0i64, |t, sum| sum + t)
                .on_trigger(|sum, _, trigger| {
                    (vec![(trigger.window.id, trigger.name.clone(), sum)], sum)
                })
                .collect::<Vec<Fired>>()
                .unwrap()
        })
    };
    use TriggerName::{Done, Watermark};
    // A gap of 2 empty windows fires them; one of 5 (40..=80) fires none.
    assert_eq!(
        fired(vec![1, 35, 95, 120], None),
        [
            (0, Done, 1),
            (10, Done, 0),
            (20, Done, 0),
            (30, Done, 35),
            (90, Done, 95),
            (100, Done, 0),
            (110, Done, 0),
            (120, Done, 120)
        ]
    );
    // With lateness the empty windows linger like the others and take late events.
    assert_eq!(
        fired(vec![1, 35, 12, 45], Some(Duration::from_secs(3600))),
        [
            (0, Watermark, 1),
            (10, Watermark, 0),
            (20, Watermark, 0),
            (30, Watermark, 35),
            (0, Done, 1),
            (10, Done, 12),
            (20, Done, 0),
            (30, Done, 35),
            (40, Done, 45)
        ]
    );
}

#[test]
fn late_events_are_counted_in_the_stage_metrics() {
    let report = guarded(|| {
        Flow::from_iter(vec![1i64, 12, 3, 25, 14, 9, 31])
            .partition(
                Partition::new()
                    .stages(1)
                    .window(Window::fixed(Duration::from_millis(10), |t: &i64| *t)),
            )
            .reduce(|| 0i64, |t, sum| sum + t)
            .emit_state()
            .run()
            .unwrap()
    });
    assert_eq!(report.stages.iter().map(|s| s.late).sum::<u64>(), 3);
}

#[test]
fn watermark_waits_for_every_producer() {
    // Producer A runs ahead to window 10 while B is still in window 0: window 0 closes only
    // once B moved on or finished, so none of B's events are late, whatever the
    // interleaving.
    for max_demand in DEMANDS {
        let fired: Vec<(i64, i64)> = guarded(move || {
            Flow::from_iters(vec![vec![1i64, 2, 15, 16], vec![3, 4]])
                .partition(
                    Partition::new()
                        .stages(1)
                        .max_demand(max_demand)
                        .min_demand(0)
                        .window(Window::fixed(Duration::from_millis(10), |t: &i64| *t)),
                )
                .reduce(|| 0i64, |t, sum| sum + t)
                .on_trigger(|sum, _, trigger| (vec![(trigger.window.id, sum)], sum))
                .collect()
                .unwrap()
        });
        assert_eq!(fired, [(0, 10), (10, 31)], "max_demand {max_demand}");
    }
}

#[test]
fn custom_trigger_fires_where_it_says() {
    // Fire each time a window's running sum reaches 100.
    for max_demand in DEMANDS {
        let fired: Vec<(u64, TriggerName)> = guarded(move || {
            Flow::from_iter(1..=40u64)
                .partition(
                    Partition::new()
                        .stages(1)
                        .max_demand(max_demand)
                        .min_demand(0)
                        .window(Window::global().trigger(
                            || 0u64,
                            |sum, events: &[u64]| {
                                for (i, e) in events.iter().enumerate() {
                                    *sum += e;
                                    if *sum >= 100 {
                                        *sum = 0;
                                        return Decision::Fire {
                                            at: i + 1,
                                            name: "hundred".into(),
                                        };
                                    }
                                }
                                Decision::Continue
                            },
                        )),
                )
                .reduce(|| 0u64, |x, sum| sum + x)
                .on_trigger(|sum, _, trigger| (vec![(sum, trigger.name.clone())], 0))
                .collect()
                .unwrap()
        });
        // Reference: cut 1..=40 wherever the running sum reaches 100.
        let mut expected = Vec::new();
        let mut sum = 0;
        for x in 1..=40u64 {
            sum += x;
            if sum >= 100 {
                expected.push((sum, TriggerName::Custom("hundred".into())));
                sum = 0;
            }
        }
        expected.push((sum, TriggerName::Done));
        assert_eq!(fired, expected, "max_demand {max_demand}");
    }
}

#[test]
fn uniq_is_per_window() {
    let out: Vec<Vec<char>> = guarded(|| {
        Flow::from_iter("aabababbc".chars())
            .partition(Partition::new().stages(1).window(Window::count(3)))
            .uniq()
            .reduce(Vec::new, |c, mut seen: Vec<char>| {
                seen.push(c);
                seen
            })
            .emit_state()
            .collect()
            .unwrap()
    });
    // Windows of 3 input events: "aab" "aba" "bbc"; uniq forgets at each window's end.
    assert_eq!(
        out,
        [vec!['a', 'b'], vec!['a', 'b'], vec!['b', 'c'], vec![]]
    );
}

#[test]
fn departition_merges_each_window_once_all_partitions_closed_it() {
    let events: Vec<i64> = (0..200).collect();
    let mut merged: Vec<(i64, i64)> = guarded(move || {
        Flow::from_iter(events)
            .partition(
                Partition::new()
                    .stages(4)
                    .window(Window::fixed(Duration::from_millis(50), |t: &i64| *t)),
            )
            .reduce(|| 0i64, |t, sum| sum + t)
            .on_trigger(|sum, _, trigger| (vec![(trigger.window.id, sum)], sum))
            .departition(
                || (None, 0i64),
                |(id, sum), (seen, total): (Option<i64>, i64)| {
                    assert!(seen.is_none_or(|s| s == id), "windows mixed: {seen:?} {id}");
                    (Some(id), total + sum)
                },
                |(id, total)| (id.unwrap_or(-1), total),
            )
            .collect()
            .unwrap()
    });
    merged.sort();
    let expected: Vec<(i64, i64)> = (0..4)
        .map(|w| (w * 50, (w * 50..w * 50 + 50).sum()))
        .collect();
    assert_eq!(merged, expected);
}

#[test]
fn take_sort_is_per_window() {
    let mut tops: Vec<Vec<i64>> = guarded(|| {
        Flow::from_iter(0..100i64)
            .partition(
                Partition::new()
                    .stages(3)
                    .window(Window::fixed(Duration::from_millis(25), |t: &i64| *t)),
            )
            .take_sort(3, |a, b| b.cmp(a))
            .collect()
            .unwrap()
    });
    tops.sort();
    assert_eq!(
        tops,
        [
            vec![24, 23, 22],
            vec![49, 48, 47],
            vec![74, 73, 72],
            vec![99, 98, 97]
        ]
    );
}

#[test]
fn shuffle_takes_a_window_too() {
    let sums: Vec<u64> = guarded(|| {
        Flow::from_iter(1..=20u64)
            .shuffle(Shuffle::shuffle().stages(1).window(Window::count(5)))
            .reduce(|| 0u64, |x, sum| sum + x)
            .emit_state()
            .collect()
            .unwrap()
    });
    assert_eq!(sums, [15, 40, 65, 90, 0]);
}

#[test]
fn invalid_windows_are_config_errors() {
    let cases: Vec<(&str, flowstage::Result<Vec<u64>>)> = vec![
        (
            "count 0",
            Flow::from_iter(1..=3u64)
                .partition(Partition::new().stages(1).window(Window::count(0)))
                .reduce(|| 0u64, |x, s| s + x)
                .emit_state()
                .collect(),
        ),
        (
            "fixed 0",
            Flow::from_iter(1..=3u64)
                .partition(
                    Partition::new()
                        .stages(1)
                        .window(Window::fixed(Duration::ZERO, |x: &u64| *x as i64)),
                )
                .reduce(|| 0u64, |x, s| s + x)
                .emit_state()
                .collect(),
        ),
        (
            "lateness on count",
            Flow::from_iter(1..=3u64)
                .partition(
                    Partition::new()
                        .stages(1)
                        .window(Window::count(2).allowed_lateness(Duration::from_secs(1))),
                )
                .reduce(|| 0u64, |x, s| s + x)
                .emit_state()
                .collect(),
        ),
        (
            "every on session",
            Flow::from_iter(1..=3u64)
                .partition(Partition::new().stages(1).window(
                    Window::session(Duration::from_millis(5), |x: &u64| *x as i64).trigger_every(2),
                ))
                .reduce(|| 0u64, |x, s| s + x)
                .emit_state()
                .collect(),
        ),
    ];
    for (what, result) in cases {
        match result {
            Err(flowstage::FlowError::Config(message)) => assert!(!message.is_empty(), "{what}"),
            other => panic!("{what}: expected a config error, got {other:?}"),
        }
    }
}

#[test]
fn a_failing_try_map_in_a_windowed_stage_ends_the_run() {
    let windowed = guarded(|| {
        Flow::from_iter(0..100i64)
            .partition(
                Partition::new()
                    .stages(2)
                    .window(Window::fixed(Duration::from_millis(10), |t: &i64| *t)),
            )
            .try_map(|t: &i64| {
                if *t == 57 {
                    Err("bad event 57")
                } else {
                    Ok(*t)
                }
            })
            .reduce(|| 0i64, |t, sum| sum + t)
            .emit_state()
            .collect::<Vec<i64>>()
    });
    match windowed {
        Err(error) => assert!(error.to_string().contains("bad event 57"), "{error}"),
        Ok(sums) => panic!("the failure was lost: {sums:?}"),
    }
}

#[test]
fn a_failing_try_map_after_a_join_ends_the_run() {
    let joined = guarded(|| {
        Flow::bounded_join(
            flowstage::flow::JoinMode::Inner,
            Flow::from_iter(0..50u32),
            Flow::from_iter(0..50u32),
            |l: &u32| *l,
            |r: &u32| *r,
            |l: Option<&u32>, _r: Option<&u32>| l.copied().unwrap_or(0),
            Shuffle::shuffle().stages(2),
        )
        .try_map(|x: &u32| if *x == 33 { Err("bad pair 33") } else { Ok(*x) })
        .collect::<Vec<u32>>()
    });
    match joined {
        Err(error) => assert!(error.to_string().contains("bad pair 33"), "{error}"),
        Ok(pairs) => panic!("the failure was lost: {pairs:?}"),
    }
}

/// Counts per window of one in-order producer's timestamps `ts` through `window` over
/// `stages` stages, as (window id, events) over all stages; and the late events.
fn counts_per_window(ts: Vec<i64>, window: Window<i64>, stages: usize) -> (Vec<(i64, u64)>, u64) {
    guarded(move || {
        let late = LateEvents::keep();
        let mut fired: Vec<(i64, u64)> = Flow::from_iter(ts)
            .partition(
                Partition::by_key(|t: &i64| *t)
                    .stages(stages)
                    .window(window.late_events(&late)),
            )
            .reduce(|| 0u64, |_, n| n + 1)
            .on_trigger(|n, _, trigger| {
                let out = if trigger.is_done() {
                    vec![(trigger.window.id, n)]
                } else {
                    vec![]
                };
                (out, n)
            })
            .collect()
            .unwrap();
        // (A window's events may be in several stages.)
        let mut merged = std::collections::BTreeMap::new();
        for (id, n) in fired.drain(..) {
            *merged.entry(id).or_insert(0) += n;
        }
        (merged.into_iter().collect(), late.count())
    })
}

/// `(window id, events)` from a reference assignment of each timestamp to its windows.
fn reference(ts: &[i64], windows_of: impl Fn(i128) -> Vec<i128>) -> Vec<(i64, u64)> {
    let clamp = |v: i128| v.clamp(i64::MIN.into(), i64::MAX.into()) as i64;
    let mut counts = std::collections::BTreeMap::new();
    for &t in ts {
        let mut ids: Vec<i64> = windows_of(t.into()).into_iter().map(clamp).collect();
        ids.dedup();
        for id in ids {
            *counts.entry(id).or_insert(0u64) += 1;
        }
    }
    counts.into_iter().collect()
}

#[test]
fn event_time_windows_take_any_i64_timestamp_and_skip_huge_gaps() {
    let extremes = vec![
        i64::MIN,
        i64::MIN + 1,
        i64::MIN + 9,
        -1,
        0,
        5,
        100_000_000,
        10_000_000_000,
        i64::MAX - 10,
        i64::MAX - 1,
        i64::MAX,
    ];
    let ms = Duration::from_millis;
    for stages in [1, 2] {
        // Fixed, with and without lateness and fire_empty: only windows with events fire,
        // however far apart (10 ms windows; the old engine fired every window between).
        let fixed = reference(&extremes, |t| vec![t.div_euclid(10) * 10]);
        for variant in 0..3 {
            let mut window = Window::fixed(ms(10), |t: &i64| *t);
            match variant {
                1 => window = window.allowed_lateness(Duration::from_secs(3600)),
                2 => window = window.fire_empty(1000),
                _ => {}
            }
            let (fired, late) = counts_per_window(extremes.clone(), window, stages);
            assert_eq!(late, 0, "variant {variant}, {stages} stages");
            assert_eq!(fired, fixed, "variant {variant}, {stages} stages");
        }
        // Sliding (30 ms every 10 ms): each event in its three windows, the windows that
        // would start below i64::MIN being one.
        let sliding = reference(&extremes, |t| {
            let first = (t - 30).div_euclid(10) + 1;
            (first..=t.div_euclid(10)).map(|k| k * 10).collect()
        });
        let (fired, late) = counts_per_window(
            extremes.clone(),
            Window::sliding(ms(30), ms(10), |t: &i64| *t),
            stages,
        );
        assert_eq!(late, 0);
        assert_eq!(fired, sliding, "{stages} stages");
        // Sessions (gap 10 ms): the runs of timestamps less than 10 apart.
        let mut sessions: Vec<(i64, u64)> = Vec::new();
        let mut previous: Option<i64> = None;
        for &t in &extremes {
            match (previous, sessions.last_mut()) {
                (Some(p), Some(session)) if i128::from(t) - i128::from(p) < 10 => session.1 += 1,
                _ => sessions.push((t, 1)),
            }
            previous = Some(t);
        }
        if stages == 1 {
            let (fired, late) =
                counts_per_window(extremes.clone(), Window::session(ms(10), |t: &i64| *t), 1);
            assert_eq!(late, 0);
            assert_eq!(fired, sessions);
        }
    }
}

#[test]
fn two_events_a_day_of_windows_apart_fire_two_windows() {
    // 0 and 1e8 ms with 10 ms windows: 10 000 001 windows between them used to fire (1.7 s,
    // 163 MB); 1e10 ms apart, a 4 GB allocation aborted the process.
    for gap in [100_000_000i64, 10_000_000_000, i64::MAX] {
        let (fired, _) = counts_per_window(
            vec![0, gap],
            Window::fixed(Duration::from_millis(10), |t: &i64| *t),
            1,
        );
        assert_eq!(fired.len(), 2, "gap {gap}: {} windows", fired.len());
        let (fired, _) = counts_per_window(
            vec![0, gap],
            Window::fixed(Duration::from_millis(10), |t: &i64| *t).fire_empty(1_000_000),
            1,
        );
        assert_eq!(
            fired.len(),
            2,
            "gap {gap} with fire_empty: {} windows",
            fired.len()
        );
    }
}
