//! The exchanges of the cluster: events routed to workers by a function, packed into
//! messages of about [`MESSAGE_BYTES`] each.
//!
//! Timely's own `Vec` builder packs 8 KiB per message. Every message to another process
//! is a hand-off to its network thread and a wake-up of the process that reads it; on
//! the 2-core machine a 2-process join (400 000 events of 24 bytes crossing) spent more
//! time in those wake-ups than in serializing. Messages of 64 KiB cut the messages to an
//! eighth; within a process they only change the batch size. The container stays a
//! `Vec`, so nothing else in the dataflow changes.

use std::collections::VecDeque;

use timely::container::{ContainerBuilder, LengthPreservingContainerBuilder, PushInto};
use timely::dataflow::channels::pact::ExchangeCore;

/// The bytes of events an exchange packs per message.
pub(crate) const MESSAGE_BYTES: usize = 64 << 10;

/// The exchange that sends each event to worker `route(event) % workers`.
pub(crate) fn exchange<T, F>(route: F) -> ExchangeCore<Messages<T>, F>
where
    T: 'static,
    F: FnMut(&T) -> u64 + 'static,
{
    ExchangeCore::<Messages<T>, F>::new_core(route)
}

/// Events per message: [`MESSAGE_BYTES`] of them, at least one.
const fn capacity<T>() -> usize {
    let size = std::mem::size_of::<T>();
    if size == 0 || size >= MESSAGE_BYTES {
        1
    } else {
        MESSAGE_BYTES / size
    }
}

/// A container builder of `Vec`s of [`capacity`] events, in the order pushed (timely's
/// `CapacityContainerBuilder` with a larger capacity).
pub(crate) struct Messages<T> {
    /// The message being filled.
    current: Vec<T>,
    /// The last message handed out, for its allocation.
    spare: Option<Vec<T>>,
    /// Full messages not yet handed out.
    full: VecDeque<Vec<T>>,
}

impl<T> Default for Messages<T> {
    fn default() -> Self {
        Messages {
            current: Vec::new(),
            spare: None,
            full: VecDeque::new(),
        }
    }
}

impl<T> PushInto<T> for Messages<T> {
    #[inline]
    fn push_into(&mut self, event: T) {
        if self.current.capacity() == 0 {
            let mut message = self.spare.take().unwrap_or_default();
            message.clear();
            message.reserve_exact(capacity::<T>());
            self.current = message;
        }
        self.current.push(event);
        if self.current.len() >= capacity::<T>() {
            self.full.push_back(std::mem::take(&mut self.current));
        }
    }
}

impl<T> ContainerBuilder for Messages<T> {
    type Container = Vec<T>;

    fn extract(&mut self) -> Option<&mut Vec<T>> {
        let message = self.full.pop_front()?;
        Some(self.spare.insert(message))
    }

    fn finish(&mut self) -> Option<&mut Vec<T>> {
        if !self.current.is_empty() {
            self.full.push_back(std::mem::take(&mut self.current));
        }
        self.spare = self.full.pop_front();
        self.spare.as_mut()
    }
}

// Every event pushed comes out in exactly one message.
impl<T> LengthPreservingContainerBuilder for Messages<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drains everything the builder hands out, as timely's exchange does.
    fn drain(builder: &mut Messages<u64>, finish: bool, into: &mut Vec<Vec<u64>>) {
        loop {
            let message = if finish {
                builder.finish()
            } else {
                builder.extract()
            };
            match message {
                Some(message) => into.push(std::mem::take(message)),
                None => break,
            }
        }
    }

    #[test]
    fn every_event_comes_out_once_in_order_in_full_messages() {
        let per = capacity::<u64>();
        assert_eq!(per, MESSAGE_BYTES / 8);
        let mut builder = Messages::default();
        let mut messages = Vec::new();
        let total = 2 * per + 17;
        for event in 0..total as u64 {
            builder.push_into(event);
            if event % 1000 == 0 {
                drain(&mut builder, false, &mut messages);
            }
        }
        drain(&mut builder, false, &mut messages);
        let full = messages.len();
        assert_eq!(full, 2, "two full messages before the finish");
        drain(&mut builder, true, &mut messages);
        let sizes: Vec<usize> = messages.iter().map(Vec::len).collect();
        assert_eq!(sizes, [per, per, 17]);
        let events: Vec<u64> = messages.concat();
        assert_eq!(events, (0..total as u64).collect::<Vec<_>>());
        assert!(builder.finish().is_none(), "nothing left");
    }

    #[test]
    fn large_events_travel_one_per_message() {
        assert_eq!(capacity::<[u8; MESSAGE_BYTES]>(), 1);
        assert_eq!(capacity::<()>(), 1);
    }
}
