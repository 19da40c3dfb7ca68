//! Which windows an operator with per-window state must still end when its input ends.
//!
//! Every window ends with exactly one `Done`, whatever sits before the operator: the
//! stage's own windowing (which ends every window it opened), a merging stage
//! (`departition`, `take_sort`: one `Done` per window, as each completes), or nothing (the
//! global window, ended here).

use super::{Trigger, TriggerName, WindowInfo, WindowSignal};

/// What an operator has seen of its windows' ends; asked at the end of input.
#[derive(Debug, Clone)]
pub(crate) struct Ends {
    /// The stage's windowing ends every window it opens ([`WindowSignal::Start`]).
    windowed: bool,
    /// The kind of the window events last came in (a stage sees one kind).
    kind: &'static str,
    /// A window has ended already: the global window must not end again.
    ended_any: bool,
}

impl Default for Ends {
    fn default() -> Self {
        Ends {
            windowed: false,
            kind: WindowInfo::global().kind,
            ended_any: false,
        }
    }
}

impl Ends {
    /// Notes a window signal the operator received.
    pub(crate) fn observe(&mut self, signal: &WindowSignal<'_>) {
        match signal {
            WindowSignal::Start => self.windowed = true,
            WindowSignal::Enter(window) => self.kind = window.kind,
            WindowSignal::Fire(trigger) => self.observe_trigger(trigger),
        }
    }

    /// Notes a trigger that fired (a `Done` ends its window).
    pub(crate) fn observe_trigger(&mut self, trigger: &Trigger) {
        if trigger.is_done() {
            self.kind = trigger.window.kind;
            self.ended_any = true;
        }
    }

    /// The `Done` triggers still to fire at the end of input, oldest first: one per
    /// window still holding state (`with_state`, ascending ids), then the global window
    /// if the stage is not windowed and no window has ended.
    pub(crate) fn leftover(&mut self, with_state: Vec<i64>) -> Vec<Trigger> {
        let mut ends: Vec<Trigger> = with_state
            .into_iter()
            .map(|id| Trigger {
                window: WindowInfo {
                    kind: self.kind,
                    id,
                },
                name: TriggerName::Done,
            })
            .collect();
        if ends.is_empty() && !self.windowed && !self.ended_any {
            ends.push(Trigger::done_global());
        }
        self.ended_any = true;
        ends
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(kind: &'static str, id: i64) -> Trigger {
        Trigger {
            window: WindowInfo { kind, id },
            name: TriggerName::Done,
        }
    }

    #[test]
    fn an_unwindowed_operator_ends_the_global_window_once() {
        let mut ends = Ends::default();
        assert_eq!(ends.leftover(vec![]), [Trigger::done_global()]);
        assert_eq!(ends.leftover(vec![]), []);
    }

    #[test]
    fn windows_ended_upstream_do_not_end_again() {
        let mut ends = Ends::default();
        let window = WindowInfo {
            kind: "count",
            id: 3,
        };
        ends.observe(&WindowSignal::Enter(&window));
        ends.observe(&WindowSignal::Fire(&done("count", 3)));
        assert_eq!(ends.leftover(vec![]), []);
        // State made after the last upstream end still ends, named by its kind.
        let mut ends = Ends::default();
        ends.observe(&WindowSignal::Fire(&done("count", 3)));
        assert_eq!(ends.leftover(vec![4]), [done("count", 4)]);
    }

    #[test]
    fn a_windowed_stage_ends_only_windows_with_state() {
        let mut ends = Ends::default();
        ends.observe(&WindowSignal::Start);
        assert_eq!(ends.leftover(vec![]), []);
        let window = WindowInfo {
            kind: "fixed",
            id: 10,
        };
        ends.observe(&WindowSignal::Enter(&window));
        assert_eq!(
            ends.leftover(vec![10, 20]),
            [done("fixed", 10), done("fixed", 20)]
        );
    }
}
