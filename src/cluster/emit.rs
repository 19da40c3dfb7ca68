//! Emitting at event time: an operator's output goes out at a capability it holds, or, for
//! a next layer with event time, each event at the start of its granule (never before the
//! capability: an event older than that is sent at the capability, and is late if its
//! window has closed when it arrives).

use std::collections::BTreeMap;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilderSession;

use super::plan::{Stamp, Time};

pub(crate) type Output<'a, T> = OutputBuilderSession<'a, Time, CapacityContainerBuilder<Vec<T>>>;

/// Emits `out` (leaving it empty) at `capability`, or per `stamp`. Returns the largest
/// granule emitted at (the capability's when nothing was).
pub(crate) fn emit<T: 'static>(
    output: &mut Output<'_, T>,
    capability: &Capability<Time>,
    out: &mut Vec<T>,
    stamp: &Stamp<T>,
) -> u64 {
    let (window, epoch) = *capability.time();
    if out.is_empty() {
        return window;
    }
    let Some(time) = stamp else {
        output.session(capability).give_container(out);
        return window;
    };
    // Most batches fall in one granule: send them without sorting.
    let first = (time.granule)(&out[0]).max(window);
    if out
        .iter()
        .all(|event| (time.granule)(event).max(window) == first)
    {
        send(output, capability, (first, epoch), out);
        return first;
    }
    let mut runs: BTreeMap<u64, Vec<T>> = BTreeMap::new();
    for event in out.drain(..) {
        runs.entry((time.granule)(&event).max(window))
            .or_default()
            .push(event);
    }
    let mut largest = window;
    for (at, mut events) in runs {
        largest = at;
        send(output, capability, (at, epoch), &mut events);
    }
    largest
}

fn send<T: 'static>(
    output: &mut Output<'_, T>,
    capability: &Capability<Time>,
    at: Time,
    events: &mut Vec<T>,
) {
    if at == *capability.time() {
        output.session(capability).give_container(events);
    } else {
        let delayed = capability.delayed(&at);
        output.session(&delayed).give_container(events);
    }
}
