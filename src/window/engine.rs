//! The windowing of one stage: assigns events to windows, tracks the watermark, runs the
//! triggers, and drives the stage's fused chain with [`WindowSignal`]s.
//!
//! Events reach the chain in *runs*: consecutive events of one window with no trigger
//! point inside. A run is fed through the chain in one fused pass, as an unwindowed batch
//! would be; a batch is cut wherever a window changes, the watermark closes a window, or
//! a trigger is due — at the exact event, so for one producer the results do not depend
//! on how events were batched.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use std::vec;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{
    CustomTrigger, Decision, Kind, Trigger, TriggerName, TriggerSpec, Window, WindowInfo,
    WindowSignal, bounds,
};
use crate::flow::Logic;

/// What one upstream producer told the stage so far.
#[derive(Debug, Clone)]
struct Upstream {
    /// The latest event timestamp it sent.
    latest: Option<i64>,
    done: bool,
    idle: bool,
    /// When it last sent a batch (for `idle_timeout`).
    seen: Option<Instant>,
}

/// The trigger state of one open window.
struct Slot<T> {
    /// Events fed into the window so far.
    events: u64,
    customs: Vec<Box<dyn CustomTrigger<T>>>,
    /// In its allowed lateness until then (it fired `Watermark` already).
    late_until: Option<Instant>,
}

/// An open session: its events wait until it closes.
struct Session<T> {
    /// The last timestamp plus the gap (exclusive; in `i128`, as it may pass `i64::MAX`).
    end: i128,
    events: Vec<T>,
}

/// The windowing state of one stage.
pub(crate) struct Windower<T> {
    spec: Arc<Window<T>>,
    kind: &'static str,
    /// The processing-time origin shared by the layer's stages (periodic windows and
    /// timers tick together across stages).
    epoch: Arc<OnceLock<Instant>>,
    started: bool,
    upstreams: Vec<Upstream>,
    watermark: Option<i64>,
    slots: BTreeMap<i64, Slot<T>>,
    /// Event-time windows: every slot below this id was closed by the watermark and waits
    /// out its allowed lateness; the slots from here on are open.
    open_from: i64,
    /// Event-time windows: the newest window that got a slot (for `fire_empty`).
    newest: Option<i64>,
    /// The window the chain was last told to enter.
    entered: Option<i64>,
    /// `count` and `periodic`: the current window.
    current: i64,
    sessions: BTreeMap<i64, Session<T>>,
    /// The largest end of a closed session.
    closed_end: i128,
    /// The next tick of each `periodically` trigger.
    ticks: Vec<(Duration, Option<Instant>)>,
    messages: Vec<broadcast::Receiver<String>>,
    pending_messages: Vec<String>,
    late: u64,
    /// Event-time windows: the current batch's timestamps (kept for its allocation).
    stamps: Vec<i64>,
    /// The windows (sliding) or sessions the current event enters (kept for its
    /// allocation: nothing is allocated per event).
    takers: Vec<i64>,
    /// Sliding windows: the one event fed to a window (kept for its allocation).
    single: Vec<T>,
}

/// Events still to feed to a window: a batch being drained, or events a custom trigger
/// put in place of a run.
trait Events: ExactSizeIterator {
    /// The events not read yet.
    fn as_slice(&self) -> &[Self::Item];
}

impl<T> Events for vec::Drain<'_, T> {
    fn as_slice(&self) -> &[T] {
        vec::Drain::as_slice(self)
    }
}

impl<T> Events for vec::IntoIter<T> {
    fn as_slice(&self) -> &[T] {
        vec::IntoIter::as_slice(self)
    }
}

/// What a custom trigger put in place of a run ([`Decision::ContinueWith`],
/// [`Decision::FireWith`]): `pre` for the window, then the trigger, then `pos` shown to
/// the triggers again.
struct Rewrite<T> {
    pre: Vec<T>,
    name: Option<String>,
    pos: Vec<T>,
}

/// Work a rewrite left, done before the rest of the batch (a stack: the last pushed
/// first).
enum Pending<T> {
    /// Events for the window; whether the custom triggers see them.
    Events(vec::IntoIter<T>, bool),
    /// A custom trigger to fire.
    Fire(String),
}

impl<T> Pending<T> {
    /// Pushes `rewrite`'s work so that `pre` comes first, then the trigger, then `pos`.
    fn push(stack: &mut Vec<Pending<T>>, rewrite: Rewrite<T>) {
        stack.push(Pending::Events(rewrite.pos.into_iter(), true));
        if let Some(name) = rewrite.name {
            stack.push(Pending::Fire(name));
        }
        stack.push(Pending::Events(rewrite.pre.into_iter(), false));
    }
}

/// The next `left` events of a batch: `take(left)` over the batch's iterator, with a
/// plain counted loop for `fold`. (`Take<&mut vec::IntoIter>` folds through `try_fold`,
/// where a large accumulator — a reduce's map, moved through each step — is copied to
/// and from the stack on every event.)
struct Run<'a, I> {
    events: &'a mut I,
    left: usize,
}

impl<T, I: ExactSizeIterator<Item = T>> Iterator for Run<'_, I> {
    type Item = T;

    #[inline]
    fn next(&mut self) -> Option<T> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        self.events.next()
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.left.min(self.events.len());
        (n, Some(n))
    }

    #[inline]
    fn fold<B, F: FnMut(B, T) -> B>(self, init: B, mut f: F) -> B {
        // The usual run, the rest of the batch: one end check per event, not two.
        if self.left >= self.events.len() {
            return self.events.fold(init, f);
        }
        let mut acc = init;
        for event in self {
            acc = f(acc, event);
        }
        acc
    }
}

/// The moment of tick `n` of `period` after `epoch` (far in the future when that does
/// not fit an `Instant`).
fn tick_at(epoch: Instant, period: Duration, n: u128) -> Instant {
    let far = |epoch: Instant| epoch.checked_add(Duration::from_secs(86_400 * 365 * 100));
    let nanos = period.as_nanos().saturating_mul(n);
    u64::try_from(nanos)
        .ok()
        .and_then(|nanos| epoch.checked_add(Duration::from_nanos(nanos)))
        .or_else(|| far(epoch))
        .unwrap_or(epoch)
}

impl<T: Send + 'static> Windower<T> {
    pub(crate) fn new(
        spec: Arc<Window<T>>,
        epoch: Arc<OnceLock<Instant>>,
        upstreams: usize,
    ) -> Self {
        let kind = spec.kind_name();
        let ticks = spec
            .triggers
            .iter()
            .filter_map(|t| match t {
                TriggerSpec::Periodically(d) => Some((*d, None)),
                _ => None,
            })
            .collect();
        let messages = spec
            .triggers
            .iter()
            .filter_map(|t| match t {
                TriggerSpec::Message(handle) => Some(handle.subscribe()),
                _ => None,
            })
            .collect();
        Windower {
            kind,
            epoch,
            started: false,
            upstreams: vec![
                Upstream {
                    latest: None,
                    done: false,
                    idle: false,
                    seen: None,
                };
                upstreams
            ],
            watermark: None,
            slots: BTreeMap::new(),
            open_from: i64::MIN,
            newest: None,
            entered: None,
            current: 0,
            sessions: BTreeMap::new(),
            closed_end: i128::from(i64::MIN),
            ticks,
            messages,
            pending_messages: Vec::new(),
            late: 0,
            stamps: Vec::new(),
            takers: Vec::new(),
            single: Vec::new(),
            spec,
        }
    }

    /// Late events since the last call (for the stage's metrics).
    pub(crate) fn take_late(&mut self) -> u64 {
        std::mem::take(&mut self.late)
    }

    fn uses_clock(&self) -> bool {
        matches!(self.spec.kind, Kind::Periodic(_))
            || !self.ticks.is_empty()
            || self.spec.lateness.is_some()
            || self.spec.idle_timeout.is_some()
    }

    fn epoch(&self) -> Instant {
        *self.epoch.get_or_init(Instant::now)
    }

    fn start<L: Logic<In = T>>(&mut self, chain: &mut L, out: &mut Vec<L::Out>) {
        if !self.started {
            self.started = true;
            chain.window(WindowSignal::Start, out);
            let epoch = self.epoch();
            for (period, next) in &mut self.ticks {
                *next = Some(epoch + *period);
            }
            if self.spec.idle_timeout.is_some() {
                let now = Instant::now();
                for upstream in &mut self.upstreams {
                    upstream.seen = Some(now);
                }
            }
        }
    }

    // ---- the chain ----------------------------------------------------------------------

    fn enter<L: Logic<In = T>>(&mut self, id: i64, chain: &mut L, out: &mut Vec<L::Out>) {
        if self.entered != Some(id) {
            self.entered = Some(id);
            let info = WindowInfo {
                kind: self.kind,
                id,
            };
            chain.window(WindowSignal::Enter(&info), out);
        }
    }

    fn fire<L: Logic<In = T>>(
        &mut self,
        id: i64,
        name: TriggerName,
        chain: &mut L,
        out: &mut Vec<L::Out>,
    ) {
        let done = name == TriggerName::Done;
        let trigger = Trigger {
            window: WindowInfo {
                kind: self.kind,
                id,
            },
            name,
        };
        chain.window(WindowSignal::Fire(&trigger), out);
        if done {
            self.slots.remove(&id);
        }
    }

    fn new_slot(spec: &Window<T>) -> Slot<T> {
        Slot {
            events: 0,
            customs: spec
                .triggers
                .iter()
                .filter_map(|t| match t {
                    TriggerSpec::Custom(make) => Some(make()),
                    _ => None,
                })
                .collect(),
            late_until: None,
        }
    }

    /// Feeds the next `len` events of `events` to window `id`, firing `every` and custom
    /// triggers at their exact events. What a custom trigger puts in place of a run is
    /// fed (and handed back to the triggers) before the rest of `events`.
    fn feed<L: Logic<In = T>>(
        &mut self,
        id: i64,
        events: &mut vec::Drain<'_, T>,
        len: usize,
        chain: &mut L,
        out: &mut Vec<L::Out>,
    ) {
        if self.grid().is_some() && !self.slots.contains_key(&id) {
            self.open_window(id, chain, out);
        }
        let mut left = len;
        while left > 0 {
            let (taken, rewrite) = self.run(id, events, left, true, chain, out);
            left -= taken;
            if let Some(rewrite) = rewrite {
                self.rewritten(id, rewrite, chain, out);
            }
        }
    }

    /// Feeds what a custom trigger put in place of a run, and what that hands back in
    /// turn, until nothing is left. A work list, not recursion: a trigger handing events
    /// back at every event would otherwise nest once per trigger.
    fn rewritten<L: Logic<In = T>>(
        &mut self,
        id: i64,
        rewrite: Rewrite<T>,
        chain: &mut L,
        out: &mut Vec<L::Out>,
    ) {
        let mut stack = Vec::new();
        Pending::push(&mut stack, rewrite);
        while let Some(pending) = stack.pop() {
            let (mut events, ask) = match pending {
                Pending::Fire(name) => {
                    self.fire(id, TriggerName::Custom(name), chain, out);
                    continue;
                }
                Pending::Events(events, ask) => (events, ask),
            };
            while events.len() > 0 {
                let left = events.len();
                let (_, rewrite) = self.run(id, &mut events, left, ask, chain, out);
                if let Some(rewrite) = rewrite {
                    // The rest of these events comes after what the rewrite gives.
                    stack.push(Pending::Events(events, ask));
                    Pending::push(&mut stack, rewrite);
                    break;
                }
            }
        }
    }

    /// Feeds one run — at most `left` events of `events`, up to the next trigger — to
    /// window `id` and fires the triggers due at its end; asks the custom triggers only
    /// when `ask`. Returns how many events it consumed, and what a custom trigger put in
    /// place of them (then nothing was fed).
    fn run<I: Events<Item = T>, L: Logic<In = T>>(
        &mut self,
        id: i64,
        events: &mut I,
        left: usize,
        ask: bool,
        chain: &mut L,
        out: &mut Vec<L::Out>,
    ) -> (usize, Option<Rewrite<T>>) {
        let (spec, slots) = (&*self.spec, &mut self.slots);
        let slot = slots.entry(id).or_insert_with(|| Self::new_slot(spec));
        // Where the next trigger falls in this run, and which fire there.
        let mut take = left;
        for trigger in &spec.triggers {
            if let TriggerSpec::Every(n) = trigger {
                let to_next = (n - slot.events % n).min(usize::MAX as u64) as usize;
                take = take.min(to_next);
            }
        }
        let mut fires: Vec<TriggerName> = Vec::new();
        let customs = if ask { &mut slot.customs[..] } else { &mut [] };
        for custom in customs {
            let prefix = &events.as_slice()[..take];
            let (pre, name, pos) = match custom.decide(prefix) {
                Decision::Continue => continue,
                Decision::Fire { at, name } => {
                    let at = at.clamp(1, take);
                    if at < take {
                        fires.clear();
                    }
                    take = at;
                    fires.push(TriggerName::Custom(name));
                    continue;
                }
                Decision::ContinueWith(events) => (events, None, Vec::new()),
                Decision::FireWith { pre, name, pos } => (pre, Some(name), pos),
            };
            // The run is replaced: drop it (the trigger copied what it keeps).
            if take > 0 {
                events.nth(take - 1);
            }
            return (take, Some(Rewrite { pre, name, pos }));
        }
        slot.events += take as u64;
        let count = slot.events;
        for trigger in &spec.triggers {
            if let TriggerSpec::Every(n) = trigger {
                if count % n == 0 {
                    fires.insert(0, TriggerName::Every(*n));
                }
            }
        }
        self.enter(id, chain, out);
        let before = events.len();
        chain.feed(Run { events, left: take }, out);
        // A chain stops early only when it failed (a `try_map` ending the run): skip
        // what it left, so the batch still ends.
        let unread = take.saturating_sub(before - events.len());
        if unread > 0 {
            events.nth(unread - 1);
        }
        for name in fires {
            self.fire(id, name, chain, out);
        }
        (take, None)
    }

    /// Gives event-time window `id` its slot, as its first events come. With
    /// [`fire_empty`](Window::fire_empty), a gap of few enough empty windows since the
    /// newest window gets theirs too, and those the watermark already passed close now.
    fn open_window<L: Logic<In = T>>(&mut self, id: i64, chain: &mut L, out: &mut Vec<L::Out>) {
        let gap = match (self.spec.fire_empty, self.newest, self.grid()) {
            (Some(max), Some(newest), Some((_, step))) if newest < id => {
                bounds::between(newest, id, step, max).unwrap_or_default()
            }
            _ => Vec::new(),
        };
        self.newest = Some(self.newest.map_or(id, |newest| newest.max(id)));
        let spec = self.spec.clone();
        for empty in gap.iter().copied().chain([id]) {
            self.slots
                .entry(empty)
                .or_insert_with(|| Self::new_slot(&spec));
        }
        if !gap.is_empty() {
            self.close(chain, out);
        }
    }

    fn late(&mut self, event: T) {
        self.late += 1;
        if let Some(late) = &self.spec.late {
            late.push(event);
        }
    }

    // ---- input --------------------------------------------------------------------------

    /// Handles a batch from upstream `from`.
    pub(crate) fn batch<L: Logic<In = T>>(
        &mut self,
        from: usize,
        events: &mut Vec<T>,
        chain: &mut L,
        out: &mut Vec<L::Out>,
    ) {
        self.start(chain, out);
        if self.uses_clock() {
            let now = Instant::now();
            if self.spec.idle_timeout.is_some() {
                if let Some(upstream) = self.upstreams.get_mut(from) {
                    upstream.seen = Some(now);
                    upstream.idle = false;
                }
            }
            self.clock(now, chain, out);
        }
        // Drained, not consumed: the batch's allocation goes back to its producer.
        let mut events = events.drain(..);
        match &self.spec.kind {
            Kind::Global => {
                let len = events.len();
                self.feed(0, &mut events, len, chain, out);
            }
            Kind::Periodic(_) => {
                let len = events.len();
                self.feed(self.current, &mut events, len, chain, out);
            }
            &Kind::Count(n) => {
                while events.len() > 0 {
                    let id = self.current;
                    let filled = self.slots.get(&id).map_or(0, |slot| slot.events);
                    let len = ((n - filled).min(usize::MAX as u64) as usize).min(events.len());
                    self.feed(id, &mut events, len, chain, out);
                    if self.slots.get(&id).map_or(0, |slot| slot.events) >= n {
                        self.fire(id, TriggerName::Done, chain, out);
                        self.current += 1;
                    }
                }
            }
            Kind::Fixed { size, stamps, .. } => {
                let (size, stamps) = (*size, stamps.clone());
                self.fixed(from, size, &*stamps, &mut events, chain, out);
            }
            Kind::Sliding {
                size,
                slide,
                stamps,
                clone,
                ..
            } => {
                let (size, slide, stamps_of, clone) = (*size, *slide, stamps.clone(), *clone);
                let stamps = self.batch_stamps(&*stamps_of, events.as_slice());
                for (event, &t) in events.by_ref().zip(&stamps) {
                    self.sliding(from, size, slide, t, event, clone, chain, out);
                }
                self.stamps = stamps;
            }
            Kind::Session { gap, stamps, .. } => {
                let (gap, stamps_of) = (*gap, stamps.clone());
                let stamps = self.batch_stamps(&*stamps_of, events.as_slice());
                for (event, &t) in events.by_ref().zip(&stamps) {
                    self.session(from, gap, t, event, chain, out);
                }
                self.stamps = stamps;
            }
        }
    }

    /// The timestamps of `events`, in one dynamic call; in the windower's buffer, taken
    /// (give it back after use, for its allocation).
    fn batch_stamps(
        &mut self,
        stamps_of: &(dyn Fn(&[T], &mut Vec<i64>) + Send + Sync),
        events: &[T],
    ) -> Vec<i64> {
        let mut stamps = std::mem::take(&mut self.stamps);
        stamps.clear();
        stamps_of(events, &mut stamps);
        stamps
    }

    fn fixed<L: Logic<In = T>>(
        &mut self,
        from: usize,
        size: i64,
        stamps_of: &(dyn Fn(&[T], &mut Vec<i64>) + Send + Sync),
        events: &mut vec::Drain<'_, T>,
        chain: &mut L,
        out: &mut Vec<L::Out>,
    ) {
        // Every event's timestamp, in one call: `stamps[i]` belongs to the event `i`
        // places after the batch's first one still in `events`.
        let stamps = self.batch_stamps(stamps_of, events.as_slice());
        let total = stamps.len();
        while let Some(&t) = stamps.get(total - events.len()) {
            let at = total - events.len();
            let (id, last) = bounds::fixed(t, size);
            self.observe(from, t, chain, out);
            if !self.accepts(id, last) {
                if let Some(event) = events.next() {
                    self.late(event);
                }
                continue;
            }
            // The run: the following events of the same window that close nothing. (A
            // range check, not a division per event; the upstream's latest timestamp is
            // only updated, and the watermark recomputed, when an event passes it.)
            // (`i64::MIN` for none: the run's first event was just observed, so only an
            // unknown upstream has none, and nothing is observed for it anyway.)
            let latest_of = |windower: &Self| {
                windower
                    .upstreams
                    .get(from)
                    .and_then(|u| u.latest)
                    .unwrap_or(i64::MIN)
            };
            let mut latest = latest_of(self);
            let mut len = 1;
            // `id <= t <= last` as one unsigned comparison (`last >= id`).
            let span = last.wrapping_sub(id) as u64;
            for &t in &stamps[at + 1..] {
                if t.wrapping_sub(id) as u64 > span {
                    break;
                }
                if t > latest {
                    if !self.observe_quietly(from, t, last) {
                        break;
                    }
                    latest = latest_of(self);
                }
                len += 1;
            }
            self.feed(id, events, len, chain, out);
        }
        self.stamps = stamps;
    }

    #[allow(clippy::too_many_arguments)]
    fn sliding<L: Logic<In = T>>(
        &mut self,
        from: usize,
        size: i64,
        slide: i64,
        t: i64,
        event: T,
        clone: fn(&T) -> T,
        chain: &mut L,
        out: &mut Vec<L::Out>,
    ) {
        self.observe(from, t, chain, out);
        let mut takers = std::mem::take(&mut self.takers);
        takers.clear();
        takers.extend(
            bounds::sliding(t, size, slide).filter(|&id| self.accepts(id, bounds::last(id, size))),
        );
        match takers.split_last() {
            None => self.late(event),
            Some((&final_window, earlier)) => {
                for &start in earlier {
                    self.feed_one(start, clone(&event), chain, out);
                }
                self.feed_one(final_window, event, chain, out);
            }
        }
        self.takers = takers;
    }

    /// Feeds one event to window `id`, through the windower's one-event buffer.
    fn feed_one<L: Logic<In = T>>(
        &mut self,
        id: i64,
        event: T,
        chain: &mut L,
        out: &mut Vec<L::Out>,
    ) {
        let mut single = std::mem::take(&mut self.single);
        single.push(event);
        self.feed(id, &mut single.drain(..), 1, chain, out);
        self.single = single;
    }

    fn session<L: Logic<In = T>>(
        &mut self,
        from: usize,
        gap: i64,
        t: i64,
        event: T,
        chain: &mut L,
        out: &mut Vec<L::Out>,
    ) {
        self.observe(from, t, chain, out);
        let end = i128::from(t) + i128::from(gap);
        if i128::from(t) < self.closed_end || self.watermark.is_some_and(|w| end <= i128::from(w)) {
            self.late(event);
            return;
        }
        // The sessions this event touches: those starting before its end and ending
        // after it, latest first (in the windower's buffer: nothing is allocated per
        // event).
        let mut touching = std::mem::take(&mut self.takers);
        touching.clear();
        touching.extend(
            self.sessions
                .range(..=bounds::clamp(end - 1))
                .rev()
                .take_while(|(_, session)| session.end > i128::from(t))
                .map(|(&start, _)| start),
        );
        match touching[..] {
            // The usual case: the event extends one session, in place.
            [start] if start <= t => {
                if let Some(session) = self.sessions.get_mut(&start) {
                    session.end = session.end.max(end);
                    session.events.push(event);
                }
            }
            // Otherwise the event opens a session, moves one's start earlier, or
            // bridges several: they become one, keyed by the earliest start.
            _ => {
                let mut start = t;
                let mut merged: Option<Session<T>> = None;
                for &id in touching.iter().rev() {
                    let Some(session) = self.sessions.remove(&id) else {
                        continue;
                    };
                    start = start.min(id);
                    merged = Some(match merged {
                        // The earliest session's events stay where they are.
                        None => session,
                        Some(mut merged) => {
                            merged.end = merged.end.max(session.end);
                            merged.events.extend(session.events);
                            merged
                        }
                    });
                }
                let mut session = merged.unwrap_or(Session {
                    end,
                    events: Vec::new(),
                });
                session.end = session.end.max(end);
                session.events.push(event);
                self.sessions.insert(start, session);
            }
        }
        self.takers = touching;
    }

    // ---- the watermark ------------------------------------------------------------------

    /// Takes event time `t` from upstream `from`; closes what the watermark passed.
    fn observe<L: Logic<In = T>>(
        &mut self,
        from: usize,
        t: i64,
        chain: &mut L,
        out: &mut Vec<L::Out>,
    ) {
        let Some(upstream) = self.upstreams.get_mut(from) else {
            return;
        };
        if upstream.latest.is_some_and(|latest| latest >= t) {
            return;
        }
        upstream.latest = Some(t);
        if self.recompute_watermark() {
            self.close(chain, out);
        }
    }

    /// Like [`observe`](Self::observe) for an event inside the current run, whose window
    /// ends at `run_last`: applies it only if it closes nothing, and says whether it did.
    fn observe_quietly(&mut self, from: usize, t: i64, run_last: i64) -> bool {
        let Some(upstream) = self.upstreams.get(from) else {
            return true;
        };
        if upstream.latest.is_some_and(|latest| latest >= t) {
            return true;
        }
        let before = (self.upstreams[from].latest, self.watermark);
        self.upstreams[from].latest = Some(t);
        if !self.recompute_watermark() {
            return true;
        }
        let next_close = self
            .oldest_open_last()
            .map_or(run_last, |last| last.min(run_last));
        if self.watermark.is_some_and(|w| w > next_close) {
            (self.upstreams[from].latest, self.watermark) = before;
            return false;
        }
        true
    }

    /// Event-time windows: the size and step of their grid.
    fn grid(&self) -> Option<(i64, i64)> {
        match &self.spec.kind {
            Kind::Fixed { size, .. } => Some((*size, *size)),
            Kind::Sliding { size, slide, .. } => Some((*size, *slide)),
            _ => None,
        }
    }

    /// The last millisecond of event-time window `id`.
    fn last_of(&self, id: i64) -> i64 {
        self.grid()
            .map_or(i64::MAX, |(size, _)| bounds::last(id, size))
    }

    /// The last millisecond of the oldest open window that has a slot.
    fn oldest_open_last(&self) -> Option<i64> {
        let (&id, _) = self.slots.range(self.open_from..).next()?;
        Some(self.last_of(id))
    }

    /// Whether event-time window `id` (ending at `last`) still takes events: the
    /// watermark has not passed it, or it waits out its allowed lateness. A window that
    /// had no events when the watermark passed it never existed (unless
    /// [`fire_empty`](Window::fire_empty) made it): it takes none later.
    fn accepts(&self, id: i64, last: i64) -> bool {
        self.watermark.is_none_or(|watermark| watermark <= last)
            || self
                .slots
                .get(&id)
                .is_some_and(|slot| slot.late_until.is_some())
    }

    /// Recomputes the watermark (it never goes back); says whether it moved.
    fn recompute_watermark(&mut self) -> bool {
        let mut active = self
            .upstreams
            .iter()
            .filter(|u| !u.done && !u.idle)
            .peekable();
        let candidate = if active.peek().is_none() {
            self.upstreams.iter().filter_map(|u| u.latest).max()
        } else {
            active
                .map(|u| u.latest)
                .try_fold(i64::MAX, |min, latest| latest.map(|l| min.min(l)))
        };
        match candidate {
            Some(c) if self.watermark.is_none_or(|w| c > w) => {
                self.watermark = Some(c);
                true
            }
            _ => false,
        }
    }

    /// Closes every window the watermark passed: event-time windows with a slot, in
    /// order; sessions that ended.
    fn close<L: Logic<In = T>>(&mut self, chain: &mut L, out: &mut Vec<L::Out>) {
        let Some(watermark) = self.watermark else {
            return;
        };
        if self.grid().is_some() {
            let passed: Vec<i64> = self
                .slots
                .range(self.open_from..)
                .map(|(&id, _)| id)
                .take_while(|&id| self.last_of(id) < watermark)
                .collect();
            for id in passed {
                self.close_window(id, chain, out);
            }
        } else if let Kind::Session { .. } = self.spec.kind {
            while let Some((&start, session)) = self.sessions.first_key_value() {
                if session.end > i128::from(watermark) {
                    break;
                }
                self.close_session(start, chain, out);
            }
        }
    }

    /// Closes event-time window `id`, which has a slot: `Watermark` and its allowed
    /// lateness, or `Done`.
    fn close_window<L: Logic<In = T>>(&mut self, id: i64, chain: &mut L, out: &mut Vec<L::Out>) {
        self.open_from = self.open_from.max(id.saturating_add(1));
        match self.spec.lateness {
            Some(lateness) => {
                let until = Instant::now() + lateness;
                if let Some(slot) = self.slots.get_mut(&id) {
                    slot.late_until = Some(until);
                }
                self.fire(id, TriggerName::Watermark, chain, out);
            }
            None => self.fire(id, TriggerName::Done, chain, out),
        }
    }

    fn close_session<L: Logic<In = T>>(
        &mut self,
        start: i64,
        chain: &mut L,
        out: &mut Vec<L::Out>,
    ) {
        if let Some(session) = self.sessions.remove(&start) {
            self.closed_end = self.closed_end.max(session.end);
            let mut events = session.events;
            let len = events.len();
            self.feed(start, &mut events.drain(..), len, chain, out);
            self.fire(start, TriggerName::Done, chain, out);
        }
    }

    /// Upstream `from` has moved to event time `t` without sending an event: the cluster
    /// backend's layers have one such upstream, timely's frontier (no earlier event can
    /// arrive from anywhere), and feed their events with a `from` that is no upstream.
    /// Closes what the new watermark passes.
    #[cfg(feature = "timely")]
    pub(crate) fn advance<L: Logic<In = T>>(
        &mut self,
        from: usize,
        t: i64,
        chain: &mut L,
        out: &mut Vec<L::Out>,
    ) {
        self.start(chain, out);
        self.observe(from, t, chain, out);
    }

    /// Upstream `from` finished: it no longer holds the watermark back.
    pub(crate) fn upstream_done<L: Logic<In = T>>(
        &mut self,
        from: usize,
        chain: &mut L,
        out: &mut Vec<L::Out>,
    ) {
        self.start(chain, out);
        if let Some(upstream) = self.upstreams.get_mut(from) {
            upstream.done = true;
        }
        // The last producer finishing changes nothing here: the end of input follows.
        if self.upstreams.iter().any(|u| !u.done) && self.recompute_watermark() {
            self.close(chain, out);
        }
    }

    // ---- processing time ----------------------------------------------------------------

    /// When the stage next needs waking for a timer.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        if let Kind::Periodic(period) = self.spec.kind {
            if let Some(epoch) = self.epoch.get() {
                consider(tick_at(
                    *epoch,
                    period,
                    u128::try_from(self.current).unwrap_or(0) + 1,
                ));
            }
        }
        for (_, tick) in &self.ticks {
            if let Some(at) = tick {
                consider(*at);
            }
        }
        for slot in self.slots.values() {
            if let Some(at) = slot.late_until {
                consider(at);
            }
        }
        if let Some(timeout) = self.spec.idle_timeout {
            for upstream in &self.upstreams {
                if let (false, false, Some(seen)) = (upstream.done, upstream.idle, upstream.seen) {
                    consider(seen + timeout);
                }
            }
        }
        next
    }

    /// Waits for the next timer or message (cancel-safe: a message received is kept).
    pub(crate) async fn wait(&mut self) {
        if !self.started {
            // Timers start with the stage: the first wake-up arms them.
            return;
        }
        let deadline = self.deadline();
        if deadline.is_none() && self.messages.is_empty() {
            return std::future::pending().await;
        }
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let messages = &mut self.messages;
        let pending = &mut self.pending_messages;
        let message = async {
            if messages.is_empty() {
                return std::future::pending().await;
            }
            let recvs = messages.iter_mut().map(|m| Box::pin(m.recv()));
            let (received, _, _) = futures::future::select_all(recvs).await;
            if let Ok(name) = received {
                pending.push(name);
            }
        };
        tokio::select! {
            () = sleep => {}
            () = message => {}
        }
    }

    /// Handles due timers and messages.
    pub(crate) fn wake<L: Logic<In = T>>(&mut self, chain: &mut L, out: &mut Vec<L::Out>) {
        self.start(chain, out);
        self.clock(Instant::now(), chain, out);
    }

    fn clock<L: Logic<In = T>>(&mut self, now: Instant, chain: &mut L, out: &mut Vec<L::Out>) {
        // Periodic windows: every tick that passed closes its window.
        if let Kind::Periodic(period) = self.spec.kind {
            let elapsed = now.saturating_duration_since(self.epoch());
            let tick = (elapsed.as_nanos() / period.as_nanos().max(1)) as i64;
            while self.current < tick {
                let id = self.current;
                self.fire(id, TriggerName::Done, chain, out);
                self.current += 1;
            }
        }
        // Allowed lateness that ran out.
        let expired: Vec<i64> = self
            .slots
            .iter()
            .filter(|(_, slot)| slot.late_until.is_some_and(|at| at <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.fire(id, TriggerName::Done, chain, out);
        }
        // Producers that went quiet.
        if let Some(timeout) = self.spec.idle_timeout {
            let mut changed = false;
            for upstream in &mut self.upstreams {
                if !upstream.done
                    && !upstream.idle
                    && upstream.seen.is_some_and(|seen| seen + timeout <= now)
                {
                    upstream.idle = true;
                    changed = true;
                }
            }
            if changed && self.recompute_watermark() {
                self.close(chain, out);
            }
        }
        // `periodically` timers.
        let epoch = self.epoch();
        let mut fired: Vec<Duration> = Vec::new();
        for (period, next) in &mut self.ticks {
            if next.is_some_and(|at| at <= now) {
                fired.push(*period);
                let ticks = now.saturating_duration_since(epoch).as_nanos() / period.as_nanos();
                *next = Some(tick_at(epoch, *period, ticks + 1));
            }
        }
        for period in fired {
            self.fire_open(TriggerName::Periodically(period), chain, out);
        }
        // Messages from outside.
        for receiver in &mut self.messages {
            loop {
                match receiver.try_recv() {
                    Ok(name) => self.pending_messages.push(name),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                    Err(_) => break,
                }
            }
        }
        for name in std::mem::take(&mut self.pending_messages) {
            self.fire_open(TriggerName::Message(name), chain, out);
        }
    }

    /// Fires `name` for every open window, oldest first.
    fn fire_open<L: Logic<In = T>>(
        &mut self,
        name: TriggerName,
        chain: &mut L,
        out: &mut Vec<L::Out>,
    ) {
        let ids: Vec<i64> = match self.spec.kind {
            Kind::Global => vec![0],
            Kind::Count(_) | Kind::Periodic(_) => vec![self.current],
            _ => self.slots.keys().copied().collect(),
        };
        for id in ids {
            self.fire(id, name.clone(), chain, out);
        }
    }

    /// The end of input: every open window fires `Done`, oldest first; then the chain
    /// finishes.
    pub(crate) fn done<L: Logic<In = T>>(&mut self, chain: &mut L, out: &mut Vec<L::Out>) {
        self.start(chain, out);
        match &self.spec.kind {
            Kind::Global => self.fire(0, TriggerName::Done, chain, out),
            Kind::Count(_) | Kind::Periodic(_) => {
                let id = self.current;
                self.fire(id, TriggerName::Done, chain, out);
            }
            Kind::Fixed { .. } | Kind::Sliding { .. } => {
                // Windows in their lateness, then the open ones, oldest first.
                let lingering: Vec<i64> = self
                    .slots
                    .range(..self.open_from)
                    .map(|(&id, _)| id)
                    .collect();
                for id in lingering {
                    self.fire(id, TriggerName::Done, chain, out);
                }
                let open: Vec<i64> = self.slots.keys().copied().collect();
                for id in open {
                    self.fire(id, TriggerName::Done, chain, out);
                }
            }
            Kind::Session { .. } => {
                let starts: Vec<i64> = self.sessions.keys().copied().collect();
                for start in starts {
                    self.close_session(start, chain, out);
                }
            }
        }
        chain.done(out);
    }
}
