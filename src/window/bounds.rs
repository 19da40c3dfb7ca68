//! Event-time window bounds, in arithmetic that cannot overflow.
//!
//! Timestamps are any `i64`, so a window's start or end can fall outside `i64` (the fixed
//! window of `i64::MIN` starts below it; the one of `i64::MAX` ends above it). Bounds are
//! computed in `i128` and clamped back: a window id (its start) below `i64::MIN` is
//! `i64::MIN`, and a window's last millisecond above `i64::MAX` is `i64::MAX` — which no
//! watermark can pass, so such a window closes at the end of input. Windows are closed
//! when the watermark is *past their last millisecond*, an inclusive bound that always
//! fits.

/// `value`, clamped into `i64`.
#[inline]
pub(crate) fn clamp(value: i128) -> i64 {
    value.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// The fixed window of size `size` (ms, at least 1) holding `t`: its id (its start,
/// clamped) and its last millisecond (inclusive, clamped).
#[inline]
pub(crate) fn fixed(t: i64, size: i64) -> (i64, i64) {
    let start = i128::from(t.div_euclid(size)) * i128::from(size);
    (clamp(start), clamp(start + i128::from(size) - 1))
}

/// The last millisecond of the window with id `id` and size `size`.
#[inline]
pub(crate) fn last(id: i64, size: i64) -> i64 {
    clamp(i128::from(id) + i128::from(size) - 1)
}

/// The ids of the sliding windows (`size`, `slide`, both at least 1 ms) holding `t`,
/// oldest first: the starts `k·slide` in `(t - size, t]`. Starts below `i64::MIN` clamp
/// to it, so the windows that would start there are one window.
pub(crate) fn sliding(t: i64, size: i64, slide: i64) -> impl Iterator<Item = i64> {
    let (t, size, slide) = (i128::from(t), i128::from(size), i128::from(slide));
    let first = (t - size).div_euclid(slide) + 1;
    let newest = t.div_euclid(slide);
    let mut previous = None;
    (first..=newest).filter_map(move |k| {
        let id = clamp(k * slide);
        (previous != Some(id)).then(|| {
            previous = Some(id);
            id
        })
    })
}

/// The window ids strictly between `after` and `before`, `step` apart, if there are at
/// most `max` of them (the empty windows of a gap, when the user asked for them).
pub(crate) fn between(after: i64, before: i64, step: i64, max: u64) -> Option<Vec<i64>> {
    let gap = (i128::from(before) - i128::from(after)) / i128::from(step) - 1;
    if gap <= 0 || gap > i128::from(max) {
        return None;
    }
    Some(
        (1..=gap)
            .map(|k| clamp(i128::from(after) + k * i128::from(step)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_windows_hold_their_timestamps_at_both_ends_of_i64() {
        assert_eq!(fixed(25, 10), (20, 29));
        assert_eq!(fixed(-1, 10), (-10, -1));
        // i64::MIN's window starts below it: clamped; its end is exact.
        let (id, last) = fixed(i64::MIN, 10);
        assert_eq!(id, i64::MIN);
        assert_eq!(last, i64::MIN + 7); // -9223372036854775801 ends ...800 - 1
        assert_eq!(fixed(i64::MIN + 8, 10).0, i64::MIN + 8);
        // i64::MAX's window ends above it: its last millisecond is clamped.
        let (id, last) = fixed(i64::MAX, 10);
        assert_eq!(id, i64::MAX - 7);
        assert_eq!(last, i64::MAX);
        assert_eq!(fixed(i64::MAX, i64::MAX), (i64::MAX, i64::MAX));
        assert_eq!(fixed(i64::MIN, i64::MAX).0, i64::MIN);
    }

    #[test]
    fn sliding_windows_are_every_start_within_size_before() {
        assert_eq!(sliding(25, 20, 10).collect::<Vec<_>>(), [10, 20]);
        assert_eq!(sliding(20, 20, 10).collect::<Vec<_>>(), [10, 20]);
        assert_eq!(sliding(i64::MAX, 30, 10).count(), 3);
        // Near i64::MIN the windows that would start below it are one.
        let ids: Vec<i64> = sliding(i64::MIN, 30, 10).collect();
        assert_eq!(ids, [i64::MIN]);
        let ids: Vec<i64> = sliding(i64::MIN + 10, 30, 10).collect();
        assert_eq!(ids, [i64::MIN, i64::MIN + 8]);
    }

    #[test]
    fn gaps_are_listed_only_up_to_the_bound() {
        assert_eq!(between(0, 40, 10, 5), Some(vec![10, 20, 30]));
        assert_eq!(between(0, 40, 10, 2), None);
        assert_eq!(between(0, 10, 10, 5), None);
        assert_eq!(between(i64::MIN, i64::MAX - 7, 10, 1000), None);
    }
}
