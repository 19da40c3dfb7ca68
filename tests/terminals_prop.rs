//! Every terminal against the sequential `Iterator` over the same input: random inputs,
//! reader and stage counts, and — behind a `partition` — demands, so a terminal runs
//! both fused into the source stages and in a partition's stages.
//!
//! Where the order across stages is not defined (`collect`, the extremes among equal
//! keys, `find_any`), the comparison is as multisets, by key, or by the predicate.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::num::Wrapping;
use std::sync::atomic::{AtomicU64, Ordering};

use common::guarded;
use flowstage::flow::{Flow, Partition};
use proptest::prelude::*;

/// One case: the input, cut into `readers` iterators, read by `stages` source stages;
/// behind a partition, `stages` partition stages asking `demand` events at a time.
#[derive(Debug, Clone)]
struct Case {
    input: Vec<u64>,
    readers: usize,
    stages: usize,
    demand: usize,
    partitioned: bool,
}

impl Case {
    fn parts(&self) -> Vec<Vec<u64>> {
        let size = self.input.len().div_ceil(self.readers).max(1);
        let mut parts: Vec<Vec<u64>> = self.input.chunks(size).map(<[u64]>::to_vec).collect();
        parts.resize(self.readers.max(parts.len()), Vec::new());
        parts
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(0..1_000_000u64, 0..2_000),
        1usize..=4,
        1usize..=4,
        prop::sample::select(vec![1usize, 2, 7, 64, 1000]),
        any::<bool>(),
    )
        .prop_map(|(input, readers, stages, demand, partitioned)| Case {
            input,
            readers,
            stages,
            demand,
            partitioned,
        })
}

/// Runs `$body` with `$flow` bound to the case's flow of `u64`, in the case's shape.
macro_rules! with_flow {
    ($case:expr, |$flow:ident| $body:expr) => {{
        let case: Case = $case.clone();
        guarded(move || {
            let source = Flow::from_iters(case.parts()).stages(case.stages);
            if case.partitioned {
                let $flow = source
                    .partition(Partition::new().stages(case.stages).max_demand(case.demand))
                    .map(|x: u64| x);
                $body
            } else {
                let $flow = source.map(|x: u64| x);
                $body
            }
        })
    }};
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: common::cases_from_env("FLOWSTAGE_TERMINAL_CASES", 64),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn numeric_terminals_equal_the_iterators(case in case()) {
        let input = case.input.clone();
        prop_assert_eq!(with_flow!(case, |f| f.sum::<u64>()).unwrap(), input.iter().sum::<u64>());
        prop_assert_eq!(with_flow!(case, |f| f.count()).unwrap(), input.len());
        prop_assert_eq!(
            with_flow!(case, |f| f.map(|x| Wrapping(x | 1)).product::<Wrapping<u64>>()).unwrap(),
            input.iter().map(|x| Wrapping(x | 1)).product::<Wrapping<u64>>()
        );
        prop_assert_eq!(with_flow!(case, |f| f.min()).unwrap(), input.iter().copied().min());
        prop_assert_eq!(with_flow!(case, |f| f.max()).unwrap(), input.iter().copied().max());
        prop_assert_eq!(
            with_flow!(case, |f| f.min_by(|a, b| b.cmp(a))).unwrap(),
            input.iter().copied().max()
        );
        prop_assert_eq!(
            with_flow!(case, |f| f.max_by(|a, b| b.cmp(a))).unwrap(),
            input.iter().copied().min()
        );
        // Among equal keys the stage order decides: compare the keys.
        let key = |x: &u64| x % 7;
        prop_assert_eq!(
            with_flow!(case, |f| f.min_by_key(|x| x % 7)).unwrap().as_ref().map(key),
            input.iter().min_by_key(|x| key(x)).map(key)
        );
        prop_assert_eq!(
            with_flow!(case, |f| f.max_by_key(|x| x % 7)).unwrap().as_ref().map(key),
            input.iter().max_by_key(|x| key(x)).map(key)
        );
        prop_assert_eq!(
            with_flow!(case, |f| f.reduce_with(|a, b| a ^ b.rotate_left(1) ^ b.rotate_right(1))
                .map(|x| x.is_some())).unwrap(),
            !input.is_empty()
        );
        prop_assert_eq!(
            with_flow!(case, |f| f.reduce_with(u64::wrapping_add)).unwrap(),
            input.iter().copied().reduce(u64::wrapping_add)
        );
        // fold per stage, then any terminal over the accumulators.
        prop_assert_eq!(
            with_flow!(case, |f| f
                .fold(|| (0u64, 0u64), |(n, sum), x| (n + 1, sum + x))
                .reduce_with(|a, b| (a.0 + b.0, a.1 + b.1))).unwrap().unwrap_or_default(),
            (input.len() as u64, input.iter().sum::<u64>())
        );
    }

    #[test]
    fn collecting_terminals_equal_the_iterators(case in case()) {
        let input = case.input.clone();
        prop_assert_eq!(sorted(with_flow!(case, |f| f.collect::<Vec<u64>>()).unwrap()), sorted(input.clone()));
        prop_assert_eq!(
            with_flow!(case, |f| f.collect::<HashSet<u64>>()).unwrap(),
            input.iter().copied().collect::<HashSet<u64>>()
        );
        // Into a map: every key once; the value kept for a key is one of its events'.
        let map = with_flow!(case, |f| f.map(|x| (x % 100, x)).collect::<BTreeMap<u64, u64>>()).unwrap();
        prop_assert_eq!(
            map.keys().copied().collect::<Vec<_>>(),
            input.iter().map(|x| x % 100).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>()
        );
        prop_assert!(map.iter().all(|(k, v)| v % 100 == *k && input.contains(v)));
        let (xs, doubled): (Vec<u64>, Vec<u64>) = with_flow!(case, |f| f.map(|x| (x, x * 2)).unzip()).unwrap();
        prop_assert_eq!(sorted(xs), sorted(input.clone()));
        prop_assert_eq!(sorted(doubled), sorted(input.iter().map(|x| x * 2).collect()));
        let (even, odd): (Vec<u64>, Vec<u64>) = with_flow!(case, |f| f.partition_into(|x| x % 2 == 0)).unwrap();
        let (even_seq, odd_seq): (Vec<u64>, Vec<u64>) = input.iter().partition(|x| *x % 2 == 0);
        prop_assert_eq!(sorted(even), sorted(even_seq));
        prop_assert_eq!(sorted(odd), sorted(odd_seq));
        let seen = std::sync::Arc::new(AtomicU64::new(0));
        let counter = seen.clone();
        with_flow!(case, |f| f.for_each(move |x| {
            counter.fetch_add(x, Ordering::Relaxed);
        })).unwrap();
        prop_assert_eq!(seen.load(Ordering::Relaxed), input.iter().sum::<u64>());
    }

    #[test]
    fn searching_terminals_equal_the_iterators(case in case(), modulus in 1u64..200) {
        let input = case.input.clone();
        let hit = move |x: &u64| x % modulus == 0;
        prop_assert_eq!(with_flow!(case, |f| f.any(move |x| hit(&x))).unwrap(), input.iter().any(hit));
        prop_assert_eq!(with_flow!(case, |f| f.all(move |x| !hit(&x))).unwrap(), input.iter().all(|x| !hit(x)));
        match with_flow!(case, |f| f.find_any(hit)).unwrap() {
            Some(found) => prop_assert!(hit(&found) && input.contains(&found), "found {}", found),
            None => prop_assert!(!input.iter().any(hit)),
        }
    }
}

/// `find_any` over an endless iterator ends: the first match drains the sources.
#[test]
fn find_any_and_any_end_on_an_endless_source() {
    for stages in 1..=4 {
        let found = guarded(move || {
            Flow::from_iter(1..u64::MAX)
                .stages(stages)
                .find_any(|x| x % 1_000_003 == 0)
        })
        .unwrap();
        assert_eq!(found.map(|x| x % 1_000_003), Some(0), "{stages} stages");
        assert!(
            guarded(move || Flow::from_iter(0..u64::MAX)
                .stages(stages)
                .any(|x| x == 5_000))
            .unwrap()
        );
        assert!(
            !guarded(move || Flow::from_iter(0..u64::MAX)
                .stages(stages)
                .all(|x| x < 5_000))
            .unwrap()
        );
    }
}

proptest! {
    #![proptest_config(config())]

    /// `from_par_iter`: the chain runs in rayon's splits, read in batches of 4096; inputs
    /// up to 3 batches, any stage count, with and without a partition after it.
    #[test]
    fn par_iter_terminals_equal_the_iterators(
        input in prop::collection::vec(0..1_000_000u64, 0..12_000),
        stages in 1usize..=4,
        partitioned in any::<bool>(),
    ) {
        use rayon::prelude::*;
        let expected_sum: u64 = input.iter().map(|x| x * 3).filter(|x| x % 2 == 0).sum();
        let expected: Vec<u64> = sorted(input.iter().map(|x| x * 3).filter(|x| x % 2 == 0).collect());
        let owned = input.clone();
        let (sum, all) = guarded(move || {
            let flow = || Flow::from_par_iter(owned.clone().into_par_iter()).stages(stages).map(|x| x * 3);
            if partitioned {
                let layer = || Partition::new().stages(stages);
                (
                    flow().partition(layer()).filter(|x| x % 2 == 0).sum::<u64>(),
                    flow().partition(layer()).filter(|x| x % 2 == 0).collect::<Vec<u64>>(),
                )
            } else {
                (
                    flow().filter(|x| x % 2 == 0).sum::<u64>(),
                    flow().filter(|x| x % 2 == 0).collect::<Vec<u64>>(),
                )
            }
        });
        prop_assert_eq!(sum.unwrap(), expected_sum);
        prop_assert_eq!(sorted(all.unwrap()), expected);
    }
}
