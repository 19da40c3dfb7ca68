//! Joins: exact vectors from SEMANTICS.md and a property test against a nested-loop join.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::guarded;
use flowstage::flow::{Flow, JoinMode, Shuffle, Side};
use flowstage::window::Window;
use proptest::prelude::*;

type Pair = (Option<u32>, Option<u32>);

fn join_0_3_with_4_8(mode: JoinMode, stages: usize, identity: bool) -> Vec<Pair> {
    guarded(move || {
        let mut pairs: Vec<Pair> = Flow::bounded_join(
            mode,
            Flow::from_iter(0..=3u32),
            Flow::from_iter(4..=8u32),
            |l: &u32| *l,
            move |r: &u32| if identity { *r } else { r - 3 },
            |l: Option<&u32>, r: Option<&u32>| (l.copied(), r.copied()),
            Shuffle::shuffle().stages(stages),
        )
        .collect()
        .unwrap();
        pairs.sort();
        pairs
    })
}

fn sorted(mut pairs: Vec<Pair>) -> Vec<Pair> {
    pairs.sort();
    pairs
}

#[test]
fn bounded_join_modes_give_the_semantics_vectors() {
    let inner = vec![(Some(1), Some(4)), (Some(2), Some(5)), (Some(3), Some(6))];
    let mut left = inner.clone();
    left.push((Some(0), None));
    let mut right = inner.clone();
    right.extend([(None, Some(7)), (None, Some(8))]);
    let mut full = left.clone();
    full.extend([(None, Some(7)), (None, Some(8))]);
    for stages in [1, 2, 4] {
        assert_eq!(
            join_0_3_with_4_8(JoinMode::Inner, stages, false),
            sorted(inner.clone())
        );
        assert_eq!(
            join_0_3_with_4_8(JoinMode::LeftOuter, stages, false),
            sorted(left.clone())
        );
        assert_eq!(
            join_0_3_with_4_8(JoinMode::RightOuter, stages, false),
            sorted(right.clone())
        );
        assert_eq!(
            join_0_3_with_4_8(JoinMode::FullOuter, stages, false),
            sorted(full.clone())
        );
    }
}

#[test]
fn identity_keys_match_nothing() {
    assert!(join_0_3_with_4_8(JoinMode::Inner, 2, true).is_empty());
    let all: Vec<Pair> = (0..=3)
        .map(|l| (Some(l), None))
        .chain((4..=8).map(|r| (None, Some(r))))
        .collect();
    assert_eq!(join_0_3_with_4_8(JoinMode::FullOuter, 2, true), sorted(all));
}

#[test]
fn a_match_is_emitted_as_soon_as_both_sides_have_it() {
    // The right side never ends, yet the match arrives: it does not wait for `Done`.
    let (tx, rx) = futures::channel::mpsc::unbounded::<u32>();
    tx.unbounded_send(7).unwrap();
    let pairs = Flow::bounded_join(
        JoinMode::Inner,
        Flow::from_iter(vec![7u32]),
        Flow::from_stream(rx),
        |l: &u32| *l,
        |r: &u32| *r,
        |l: Option<&u32>, r: Option<&u32>| (l.copied(), r.copied()),
        Shuffle::shuffle().stages(2),
    );
    let first = guarded(move || {
        let mut iter = pairs.into_iter();
        let first = iter.next();
        drop(tx);
        first.map(|r| r.unwrap())
    });
    assert_eq!(first, Some((Some(7), Some(7))));
}

#[test]
fn window_join_matches_only_within_a_window() {
    type Ev = (u32, i64); // (key, timestamp ms)
    let left: Vec<Ev> = vec![(1, 1), (2, 8), (3, 15)];
    // Key 2 comes 4 ms later but in the next 10 ms window: no match. Key 3 matches.
    let right: Vec<Ev> = vec![(1, 3), (2, 12), (3, 19)];
    for mode in [JoinMode::Inner, JoinMode::FullOuter] {
        let (l, r) = (left.clone(), right.clone());
        let mut pairs: Vec<(Option<Ev>, Option<Ev>)> = guarded(move || {
            Flow::window_join(
                mode,
                Flow::from_iter(l),
                Flow::from_iter(r),
                Window::fixed(Duration::from_millis(10), |e: &Side<Ev, Ev>| match e {
                    Side::Left((_, ts)) | Side::Right((_, ts)) => *ts,
                }),
                |l: &Ev| l.0,
                |r: &Ev| r.0,
                |l: Option<&Ev>, r: Option<&Ev>| (l.copied(), r.copied()),
                Shuffle::shuffle().stages(2),
            )
            .collect()
            .unwrap()
        });
        pairs.sort();
        let mut expected = vec![(Some((1, 1)), Some((1, 3))), (Some((3, 15)), Some((3, 19)))];
        if mode == JoinMode::FullOuter {
            expected.extend([(Some((2, 8)), None), (None, Some((2, 12)))]);
        }
        expected.sort();
        assert_eq!(pairs, expected, "{mode:?}");
    }
}

#[test]
fn bounded_join_state_is_released_at_done() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    /// Counts live values.
    struct Live(Arc<AtomicUsize>);
    impl Drop for Live {
        fn drop(&mut self) {
            self.0.fetch_sub(1, SeqCst);
        }
    }
    let live = Arc::new(AtomicUsize::new(0));
    let make = {
        let live = live.clone();
        move |k: u32| {
            live.fetch_add(1, SeqCst);
            (k, Live(live.clone()))
        }
    };
    let (make_l, make_r) = (make.clone(), make);
    let watch = live.clone();
    let seen = guarded(move || {
        Flow::bounded_join(
            JoinMode::FullOuter,
            Flow::from_iter(0..100u32).map(make_l),
            Flow::from_iter(50..150u32).map(make_r),
            |l: &(u32, Live)| l.0,
            |r: &(u32, Live)| r.0,
            |_: Option<&(u32, Live)>, _: Option<&(u32, Live)>| 1u32,
            Shuffle::shuffle().stages(3),
        )
        // The next layer's `Done` comes after every join stage finished: by then the
        // joins must have dropped what they held, while the flow still runs.
        .shuffle(Shuffle::shuffle().stages(1))
        .reduce(|| 0u32, |x, n| n + x)
        .on_trigger(move |n, _, _| (vec![(n, watch.load(SeqCst))], n))
        .collect::<Vec<(u32, usize)>>()
        .unwrap()
    });
    assert_eq!(
        seen,
        [(150, 0)],
        "(outputs, live join state at the next layer's Done)"
    );
}

#[test]
fn a_bounded_join_holds_the_left_side_and_never_the_right() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    const RIGHTS: u32 = 20_000;
    /// A right event that counts how many of its kind are alive, and the most ever alive.
    struct Tracked(u32, Arc<(AtomicUsize, AtomicUsize)>);
    impl Drop for Tracked {
        fn drop(&mut self) {
            self.1.0.fetch_sub(1, SeqCst);
        }
    }
    let live = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let track = live.clone();
    let make = move |k: u32| {
        let now = track.0.fetch_add(1, SeqCst) + 1;
        track.1.fetch_max(now, SeqCst);
        Tracked(k, track.clone())
    };
    for mode in [JoinMode::Inner, JoinMode::FullOuter] {
        live.1.store(0, SeqCst);
        let make = make.clone();
        let (pairs, unmatched_left): (usize, usize) = guarded(move || {
            let out: Vec<(bool, bool)> = Flow::bounded_join(
                mode,
                Flow::from_iter(0..100u32),
                Flow::from_iters([0..RIGHTS / 2, RIGHTS / 2..RIGHTS]).map(make),
                |l: &u32| *l,
                |r: &Tracked| r.0 % 200,
                |l: Option<&u32>, r: Option<&Tracked>| (l.is_some(), r.is_some()),
                Shuffle::shuffle().stages(2).max_demand(50),
            )
            .collect()
            .unwrap();
            (
                out.iter().filter(|(l, r)| *l && *r).count(),
                out.iter().filter(|(l, r)| *l && !*r).count(),
            )
        });
        // Keys 0..100 of the right side match one left event each; keys 100..200 do not.
        assert_eq!(
            (pairs, unmatched_left),
            (RIGHTS as usize / 2, 0),
            "{mode:?}"
        );
        let most = live.1.load(SeqCst);
        // Right events live only between their producer and their probe: in flight under
        // demand (2 producers x 2 stages x max_demand 50, plus the producers' batches),
        // never the whole right side as a symmetric join would keep them.
        assert!(
            most <= 2_000,
            "{mode:?}: {most} right events were alive at once"
        );
        assert_eq!(live.0.load(SeqCst), 0, "{mode:?}");
    }
}

/// The nested-loop reference join.
fn reference(
    mode: JoinMode,
    left: &[(u8, u16)],
    right: &[(u8, u16)],
) -> Vec<(Option<u16>, Option<u16>)> {
    let mut out = Vec::new();
    for l in left {
        for r in right {
            if l.0 == r.0 {
                out.push((Some(l.1), Some(r.1)));
            }
        }
    }
    if matches!(mode, JoinMode::LeftOuter | JoinMode::FullOuter) {
        for l in left {
            if !right.iter().any(|r| r.0 == l.0) {
                out.push((Some(l.1), None));
            }
        }
    }
    if matches!(mode, JoinMode::RightOuter | JoinMode::FullOuter) {
        for r in right {
            if !left.iter().any(|l| l.0 == r.0) {
                out.push((None, Some(r.1)));
            }
        }
    }
    out.sort();
    out
}

fn mode() -> impl Strategy<Value = JoinMode> {
    prop_oneof![
        Just(JoinMode::Inner),
        Just(JoinMode::LeftOuter),
        Just(JoinMode::RightOuter),
        Just(JoinMode::FullOuter)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_mode_equals_the_nested_loop_join(
        mode in mode(),
        left in prop::collection::vec((0u8..12, any::<u16>()), 0..60),
        right in prop::collection::vec((0u8..12, any::<u16>()), 0..60),
        stages in 1usize..=8,
        max_demand in 1usize..50,
        readers in 1usize..=3,
    ) {
        let expected = reference(mode, &left, &right);
        // Split the left side over several readers, so stages see interleaved producers.
        let chunk = left.len().div_ceil(readers).max(1);
        let lefts: Vec<Vec<(u8, u16)>> = left.chunks(chunk).map(|c| c.to_vec()).collect();
        let got = guarded(move || {
            let left_flow = if lefts.is_empty() {
                Flow::from_iters(vec![Vec::new()])
            } else {
                Flow::from_iters(lefts)
            };
            let mut got: Vec<(Option<u16>, Option<u16>)> = Flow::bounded_join(
                mode,
                left_flow,
                Flow::from_iter(right),
                |l: &(u8, u16)| l.0,
                |r: &(u8, u16)| r.0,
                |l: Option<&(u8, u16)>, r: Option<&(u8, u16)>| (l.map(|l| l.1), r.map(|r| r.1)),
                Shuffle::shuffle().stages(stages).max_demand(max_demand).min_demand(0),
            )
            .collect()
            .unwrap();
            got.sort();
            got
        });
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn keys_of_any_hashable_type_and_different_element_types() {
    let users = vec![(1u64, "ada".to_string()), (2, "bob".to_string())];
    let orders = vec![("o1", 1u64, 30u32), ("o2", 1, 12), ("o3", 3, 7)];
    let mut totals: HashMap<String, u32> = HashMap::new();
    let joined: Vec<(Option<String>, Option<u32>)> = guarded(move || {
        Flow::bounded_join(
            JoinMode::FullOuter,
            Flow::from_iter(users),
            Flow::from_iter(orders),
            |u: &(u64, String)| u.0,
            |o: &(&str, u64, u32)| o.1,
            |u: Option<&(u64, String)>, o: Option<&(&str, u64, u32)>| {
                (u.map(|u| u.1.clone()), o.map(|o| o.2))
            },
            Shuffle::shuffle().stages(2),
        )
        .collect()
        .unwrap()
    });
    for (user, amount) in joined {
        *totals
            .entry(user.unwrap_or_else(|| "?".into()))
            .or_default() += amount.unwrap_or(0);
    }
    let mut totals: Vec<(String, u32)> = totals.into_iter().collect();
    totals.sort();
    assert_eq!(
        totals,
        [
            ("?".to_string(), 7),
            ("ada".to_string(), 42),
            ("bob".to_string(), 0)
        ]
    );
}

#[test]
fn a_reduce_after_a_join_folds_the_pairs_in_the_join_stage() {
    // Left 0..100, right 0..100 twice: every left meets two rights.
    let (pairs, explain) = guarded(|| {
        let build = || {
            Flow::bounded_join(
                JoinMode::Inner,
                Flow::from_iter(0..100u32),
                Flow::from_iters(vec![0..100u32, 0..100]),
                |l: &u32| *l,
                |r: &u32| *r,
                |l: Option<&u32>, r: Option<&u32>| {
                    l.copied().unwrap_or(0) + r.copied().unwrap_or(0)
                },
                Shuffle::shuffle().stages(3),
            )
            .reduce(
                || (0u64, 0u64),
                |x, (n, sum): (u64, u64)| (n + 1, sum + x as u64),
            )
            .emit_state()
        };
        let parts: Vec<(u64, u64)> = build().collect().unwrap();
        let explain = build().explain().unwrap().to_string();
        (
            parts.iter().fold((0, 0), |(n, s), (m, t)| (n + m, s + t)),
            explain,
        )
    });
    assert_eq!(pairs, (200, 2 * (0..100u64).map(|x| 2 * x).sum::<u64>()));
    // The reduce runs inside the join stages: no layer after them but the sink.
    assert_eq!(explain.matches("join[").count(), 3, "{explain}");
    assert!(
        !explain.contains("partition[") && !explain.contains("shuffle["),
        "{explain}"
    );
}
