//! Per-window state of one operator in one stage.

use std::collections::BTreeMap;

/// One state per open window: the window events currently go to is kept apart, so the
/// common case — a run of events for the same window — touches no map.
#[derive(Debug)]
pub(crate) struct Slots<S> {
    current: i64,
    /// The current window's state (`None`: not made yet).
    hot: Option<S>,
    parked: BTreeMap<i64, S>,
}

impl<S> Default for Slots<S> {
    fn default() -> Self {
        Slots {
            current: 0,
            hot: None,
            parked: BTreeMap::new(),
        }
    }
}

impl<S> Slots<S> {
    /// Makes `id` the current window.
    pub(crate) fn enter(&mut self, id: i64) {
        if id == self.current {
            return;
        }
        if let Some(state) = self.hot.take() {
            self.parked.insert(self.current, state);
        }
        self.current = id;
        self.hot = self.parked.remove(&id);
    }

    /// The current window's state, made by `init` if new.
    #[inline]
    pub(crate) fn current(&mut self, init: impl FnOnce() -> S) -> &mut S {
        self.hot.get_or_insert_with(init)
    }

    /// Takes the current window's state out, to fold a batch through by value.
    #[inline]
    pub(crate) fn take_current(&mut self) -> Option<S> {
        self.hot.take()
    }

    /// Puts the current window's state back.
    #[inline]
    pub(crate) fn put_current(&mut self, state: S) {
        self.hot = Some(state);
    }

    /// Takes window `id`'s state out (it is gone until put back).
    pub(crate) fn take(&mut self, id: i64) -> Option<S> {
        if id == self.current {
            self.hot.take()
        } else {
            self.parked.remove(&id)
        }
    }

    /// Puts window `id`'s state back.
    pub(crate) fn put(&mut self, id: i64, state: S) {
        if id == self.current {
            self.hot = Some(state);
        } else {
            self.parked.insert(id, state);
        }
    }

    /// The ids of every window with state, oldest first.
    pub(crate) fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.parked.keys().copied().collect();
        if self.hot.is_some() {
            let at = ids.partition_point(|&id| id < self.current);
            ids.insert(at, self.current);
        }
        ids
    }

    /// Whether no window has state.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.hot.is_none() && self.parked.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_their_windows() {
        let mut slots: Slots<Vec<u32>> = Slots::default();
        slots.enter(10);
        slots.current(Vec::new).push(1);
        slots.enter(20);
        slots.current(Vec::new).push(2);
        slots.enter(10);
        slots.current(Vec::new).push(3);
        assert_eq!(slots.ids(), [10, 20]);
        assert_eq!(slots.take(20), Some(vec![2]));
        assert_eq!(slots.take(10), Some(vec![1, 3]));
        assert!(slots.is_empty());
    }
}
