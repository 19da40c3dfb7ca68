//! Event time on the cluster: the watermarks sources keep for the next layer's window, and
//! how a layer reads timely's frontier as a watermark.
//!
//! An event-time window closes on boundaries of a *granule*: the window size for fixed
//! windows, the greatest common divisor of size and slide for sliding ones (every window
//! starts and ends on it), the gap for sessions. A source sends what it reads at its
//! capability, then holds the capability at the largest granule start it has read; the
//! frontier at a layer is then the smallest such watermark over every source that can
//! still send. A window `[start, end)` closes locally once every producer has sent an event
//! at or after `end`; `end` being a granule boundary, that is exactly when the frontier
//! reaches `end`. (Sessions close on `last + gap`, not on a boundary: on the cluster up to
//! one gap later, which changes no result for events in order.)

use std::sync::Arc;

use super::plan::{EventTime, Stamp};
use crate::window::{Kind, Window, bounds};

/// The event time the sources of a layer with `window` keep their watermarks in; `None`
/// for windows without event time (global, count, periodic).
pub(crate) fn event_time<T: 'static>(window: Option<&Window<T>>) -> Stamp<T> {
    let window = window?;
    let (granule, ts) = match &window.kind {
        Kind::Fixed { size, ts, .. } => (*size, ts.clone()),
        Kind::Sliding {
            size, slide, ts, ..
        } => (gcd(*size, *slide), ts.clone()),
        Kind::Session { gap, ts, .. } => (*gap, ts.clone()),
        Kind::Global | Kind::Periodic(_) | Kind::Count(_) => return None,
    };
    let granule = granule.max(1);
    Some(EventTime {
        granule: Arc::new(move |event: &T| encode(bounds::fixed(ts(event), granule).0)),
        idle: window.idle_timeout,
    })
}

fn gcd(a: i64, b: i64) -> i64 {
    let (mut a, mut b) = (a.unsigned_abs(), b.unsigned_abs());
    while b != 0 {
        (a, b) = (b, a % b);
    }
    i64::try_from(a).unwrap_or(i64::MAX)
}

/// An event time (ms) as the first half of a timely timestamp: the order-preserving map
/// of `i64` onto `u64`.
#[inline]
pub(crate) fn encode(t: i64) -> u64 {
    (t as u64) ^ (1 << 63)
}

/// The event time (ms) a timestamp's first half stands for.
#[inline]
pub(crate) fn decode(window: u64) -> i64 {
    (window ^ (1 << 63)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn encoding_keeps_the_order_of_event_times() {
        let times = [i64::MIN, -1_000, -1, 0, 1, 999, i64::MAX];
        for pair in times.windows(2) {
            assert!(encode(pair[0]) < encode(pair[1]));
        }
        for t in times {
            assert_eq!(decode(encode(t)), t);
        }
    }

    #[test]
    fn granules_are_the_boundaries_windows_close_on() {
        let sliding = Window::sliding(
            Duration::from_millis(60),
            Duration::from_millis(40),
            |t: &i64| *t,
        );
        let stamp = event_time(Some(&sliding)).expect("event time");
        // gcd(60, 40) = 20
        assert_eq!(decode((stamp.granule)(&59)), 40);
        assert_eq!(decode((stamp.granule)(&-1)), -20);
        let fixed = Window::fixed(Duration::from_millis(10), |t: &i64| *t);
        let stamp = event_time(Some(&fixed)).expect("event time");
        assert_eq!(decode((stamp.granule)(&i64::MIN)), i64::MIN);
        assert_eq!(decode((stamp.granule)(&i64::MAX)), i64::MAX - 7);
        assert!(event_time(Some(&Window::<i64>::count(3))).is_none());
    }
}
