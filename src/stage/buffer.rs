//! The producer's buffer for events made beyond demand.

use std::collections::VecDeque;

/// Default `buffer_size` of a producer.
pub const DEFAULT_BUFFER_SIZE: usize = 10_000;

/// Which events a full buffer keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BufferKeep {
    /// Keep the oldest events; incoming ones are dropped.
    First,
    /// Keep the newest events; the oldest are dropped (the default).
    #[default]
    Last,
}

/// A bounded FIFO; overflow drops by [`BufferKeep`] and is counted.
#[derive(Debug)]
pub(crate) struct Buffer<T> {
    events: VecDeque<T>,
    size: usize,
    keep: BufferKeep,
    dropped: u64,
}

impl<T> Buffer<T> {
    pub(crate) fn new(size: usize, keep: BufferKeep) -> Self {
        Buffer {
            events: VecDeque::new(),
            size,
            keep,
            dropped: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Appends `events`, dropping per the keep policy; returns how many were dropped.
    pub(crate) fn extend(&mut self, events: impl IntoIterator<Item = T>) -> usize {
        let before = self.dropped;
        for event in events {
            if self.events.len() < self.size {
                self.events.push_back(event);
            } else {
                self.dropped += 1;
                if self.keep == BufferKeep::Last && self.size > 0 {
                    self.events.pop_front();
                    self.events.push_back(event);
                }
            }
        }
        (self.dropped - before) as usize
    }

    /// Removes up to `n` events from the front, in order.
    pub(crate) fn take(&mut self, n: usize) -> Vec<T> {
        let n = n.min(self.events.len());
        self.events.drain(..n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_first_keeps_a_to_e() {
        let mut buffer = Buffer::new(5, BufferKeep::First);
        assert_eq!(buffer.extend("abcdefgh".chars()), 3);
        assert_eq!(buffer.take(10).into_iter().collect::<String>(), "abcde");
        assert_eq!(buffer.dropped(), 3);
    }

    #[test]
    fn keep_last_keeps_d_to_h() {
        let mut buffer = Buffer::new(5, BufferKeep::Last);
        assert_eq!(buffer.extend("abcdefgh".chars()), 3);
        assert_eq!(buffer.take(10).into_iter().collect::<String>(), "defgh");
    }
}
