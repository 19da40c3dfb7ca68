//! Windows and triggers: how a reducing stage splits its events in time.
//!
//! A [`Window`] is given to the layer a `partition` or `shuffle` starts; it decides which
//! window each event of a stage belongs to and when each window's state is emitted — the
//! window's *triggers*. Every window of a stage ends with the `Done` trigger; the reduce
//! family (`reduce`, `emit_and_reduce`, `group_by`, `uniq`, `departition`, `take_sort`)
//! keeps one state per window.
//!
//! | kind | window of an event | id | closes |
//! |---|---|---|---|
//! | [`global`](Window::global) | the only one | 0 | at the end of input |
//! | [`fixed`](Window::fixed) | `[start, start + size)` of its timestamp | start (ms) | watermark |
//! | [`sliding`](Window::sliding) | every `[k·slide, k·slide + size)` holding it | start (ms) | watermark |
//! | [`session`](Window::session) | events closer than `gap` to each other | first timestamp | watermark |
//! | [`periodic`](Window::periodic) | the processing-time tick it arrives in | tick number | each tick |
//! | [`count`](Window::count) | the stage's `k`-th run of `n` events | `k` | its `n`-th event |
//!
//! **Watermark** (event-time kinds): a stage keeps, per upstream producer, the latest
//! timestamp seen; the watermark is the smallest of them over producers that are neither
//! finished nor idle (see [`idle_timeout`](Window::idle_timeout); when every producer is
//! idle, the largest). A window closes — fires `Done`, or `Watermark` first with
//! [`allowed_lateness`](Window::allowed_lateness) — once the watermark reaches its end.
//! Only windows that received events fire: the empty windows between them cost nothing,
//! however far apart the events' timestamps are (ask for them with
//! [`fire_empty`](Window::fire_empty)). An event for a closed window is *late*: it is
//! counted in the stage's metrics and, with [`late_events`](Window::late_events), kept
//! for the user to read. At the end of input every open window fires `Done`, oldest first.
//!
//! Timestamps may be any `i64`: window bounds are computed without overflow. The window
//! that would start below `i64::MIN` has the id `i64::MIN`; a window that would end above
//! `i64::MAX` closes only at the end of input.
//!
//! For a single upstream producer results never depend on batch sizes or demand: windows
//! close, and `every(n)` fires, at the exact event, splitting batches where needed.
//!
//! ```
//! use flowstage::flow::{Flow, Partition};
//! use flowstage::window::Window;
//!
//! // Sum per 10-event window: 55, 155, ..., 955, then the empty last window.
//! let sums: Vec<u64> = Flow::from_iter(1..=100u64)
//!     .partition(Partition::new().stages(1).window(Window::count(10)))
//!     .reduce(|| 0u64, |x, sum| sum + x)
//!     .emit_state()
//!     .collect()?;
//! assert_eq!(sums, [55, 155, 255, 355, 455, 555, 655, 755, 855, 955, 0]);
//! # Ok::<(), flowstage::FlowError>(())
//! ```

pub(crate) mod bounds;
mod ends;
mod engine;
mod slots;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::error::{FlowError, Result};

pub(crate) use ends::Ends;
pub(crate) use engine::Windower;
pub(crate) use slots::Slots;

/// The window a trigger fired for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowInfo {
    /// The window kind: `"global"`, `"fixed"`, `"sliding"`, `"session"`, `"periodic"` or
    /// `"count"`.
    pub kind: &'static str,
    /// The window's id: its start in milliseconds for event-time kinds, its number for
    /// `periodic` and `count`, 0 for `global`.
    pub id: i64,
}

impl WindowInfo {
    pub(crate) fn global() -> Self {
        WindowInfo {
            kind: "global",
            id: 0,
        }
    }
}

/// Why a trigger fired.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TriggerName {
    /// The window ended; its state is dropped after this.
    Done,
    /// The watermark passed the window, which stays open for its allowed lateness.
    Watermark,
    /// `every(n)`: the window received another `n` events.
    Every(u64),
    /// `periodically(d)`: the timer of period `d` ticked.
    Periodically(Duration),
    /// A custom trigger fired, with the name it gave.
    Custom(String),
    /// A [`TriggerHandle`] was fired from outside, with this name.
    Message(String),
}

/// What a `reduce`'s `on_trigger` learns about a trigger.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Trigger {
    /// The window the trigger fired for.
    pub window: WindowInfo,
    /// Which trigger.
    pub name: TriggerName,
}

impl Trigger {
    pub(crate) fn done_global() -> Self {
        Trigger {
            window: WindowInfo::global(),
            name: TriggerName::Done,
        }
    }

    /// Whether this is the window's last trigger.
    pub fn is_done(&self) -> bool {
        self.name == TriggerName::Done
    }
}

/// What a custom trigger decides about a run of events `T` of one window: Flow's
/// `{:cont, acc}`, `{:cont, events, acc}` and `{:trigger, name, pre, pos, acc}`, and a
/// cut of the run that needs no copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<T> {
    /// Take all of them; no trigger.
    Continue,
    /// Take the first `at` events (at most all), then fire a trigger named `name`; the
    /// rest of the run comes back to the trigger afterwards.
    Fire {
        /// How many events of the run come before the trigger.
        at: usize,
        /// The trigger's name ([`TriggerName::Custom`]).
        name: String,
    },
    /// No trigger; these events go to the window in place of the run (not shown to the
    /// custom triggers again). Flow's `{:cont, events, acc}`.
    ContinueWith(Vec<T>),
    /// In place of the run: `pre` goes to the window, the trigger `name` fires, then
    /// `pos` comes back to the triggers as the window's next events — before the rest of
    /// the batch. An event of the run may be in both (a count-based sliding window by
    /// punctuation hands the event that closes a window back to open the next). Flow's
    /// `{:trigger, name, pre, pos, acc}`. As there, the trigger must come to take what
    /// it hands back (here: hand back fewer events than the run, or decide otherwise when
    /// they return), or the stage feeds the same events forever.
    FireWith {
        /// The events the window takes before the trigger.
        pre: Vec<T>,
        /// The trigger's name ([`TriggerName::Custom`]).
        name: String,
        /// The events handed back: seen by the triggers again, after the trigger.
        pos: Vec<T>,
    },
}

/// The signals a stage's window sends down its fused chain. Plumbing for
/// [`Logic`](crate::flow::Logic) implementations: operators without per-window state pass
/// them on.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub enum WindowSignal<'a> {
    /// The stage is windowed: from now on state is per window, and `done` must not fire
    /// the global window.
    Start,
    /// The next events belong to this window.
    Enter(&'a WindowInfo),
    /// A trigger fired.
    Fire(&'a Trigger),
}

/// A handle to fire a trigger from outside while the flow runs (a message trigger): every
/// stage of the windowed layer fires [`TriggerName::Message`] for its open windows.
///
/// ```
/// use flowstage::window::{TriggerHandle, Window};
/// let flush = TriggerHandle::new();
/// let window = Window::<u64>::global().trigger_on(&flush);
/// // ... later, from any thread, while the flow runs:
/// flush.fire("flush");
/// # let _ = window;
/// ```
#[derive(Clone)]
pub struct TriggerHandle {
    sender: broadcast::Sender<String>,
}

impl fmt::Debug for TriggerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TriggerHandle")
            .field("stages", &self.sender.receiver_count())
            .finish()
    }
}

impl Default for TriggerHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl TriggerHandle {
    /// A handle no stage listens to yet; give it to [`Window::trigger_on`].
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(1024);
        TriggerHandle { sender }
    }

    /// Fires a trigger named `name` in every listening stage. Returns how many stages
    /// listen (0 before the flow runs or after it ended: nothing fires then).
    pub fn fire(&self, name: impl Into<String>) -> usize {
        self.sender.send(name.into()).unwrap_or(0)
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<String> {
        self.sender.subscribe()
    }
}

/// Where late events go: a counter, and optionally the events themselves, readable while
/// and after the flow runs. Late events are also counted in the stage's metrics
/// ([`StageSnapshot::late`](crate::stage::StageSnapshot::late)).
///
/// ```
/// use flowstage::flow::{Flow, Partition};
/// use flowstage::window::{LateEvents, Window};
/// use std::time::Duration;
///
/// let late = LateEvents::keep();
/// let window = Window::fixed(Duration::from_millis(10), |e: &i64| *e).late_events(&late);
/// let sums: Vec<i64> = Flow::from_iter(vec![1, 2, 15, 3, 25])
///     .partition(Partition::new().stages(1).window(window))
///     .reduce(|| 0i64, |e, sum| sum + e)
///     .emit_state()
///     .collect()?;
/// assert_eq!(sums, [3, 15, 25]); // 3 arrived after window 0 closed
/// assert_eq!(late.take(), [3]);
/// assert_eq!(late.count(), 1);
/// # Ok::<(), flowstage::FlowError>(())
/// ```
pub struct LateEvents<T> {
    inner: Arc<LateInner<T>>,
}

struct LateInner<T> {
    count: std::sync::atomic::AtomicU64,
    events: Option<Mutex<Vec<T>>>,
}

impl<T> Clone for LateEvents<T> {
    fn clone(&self) -> Self {
        LateEvents {
            inner: self.inner.clone(),
        }
    }
}

impl<T> fmt::Debug for LateEvents<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LateEvents")
            .field("count", &self.count())
            .field("keeps", &self.inner.events.is_some())
            .finish()
    }
}

impl<T> LateEvents<T> {
    /// Counts late events and keeps them, for [`take`](LateEvents::take).
    pub fn keep() -> Self {
        LateEvents {
            inner: Arc::new(LateInner {
                count: std::sync::atomic::AtomicU64::new(0),
                events: Some(Mutex::new(Vec::new())),
            }),
        }
    }

    /// Only counts late events.
    pub fn count_only() -> Self {
        LateEvents {
            inner: Arc::new(LateInner {
                count: std::sync::atomic::AtomicU64::new(0),
                events: None,
            }),
        }
    }

    /// How many late events there were so far.
    pub fn count(&self) -> u64 {
        self.inner.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes the late events kept so far (none with [`count_only`](LateEvents::count_only)).
    pub fn take(&self) -> Vec<T> {
        self.kept()
            .map(|mut events| std::mem::take(&mut *events))
            .unwrap_or_default()
    }

    pub(crate) fn push(&self, event: T) {
        self.inner
            .count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(mut events) = self.kept() {
            events.push(event);
        }
    }

    /// The kept events, locked (a panic elsewhere while holding the lock loses nothing:
    /// a `Vec` push cannot leave it half-done).
    fn kept(&self) -> Option<std::sync::MutexGuard<'_, Vec<T>>> {
        let events = self.inner.events.as_ref()?;
        Some(
            events
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

/// A custom trigger's per-window state and decision, type-erased.
pub(crate) trait CustomTrigger<T>: Send {
    fn decide(&mut self, events: &[T]) -> Decision<T>;
}

struct CustomFn<S, F> {
    state: S,
    f: Arc<F>,
}

impl<T, S, F> CustomTrigger<T> for CustomFn<S, F>
where
    S: Send,
    F: Fn(&mut S, &[T]) -> Decision<T> + Send + Sync,
{
    fn decide(&mut self, events: &[T]) -> Decision<T> {
        (self.f)(&mut self.state, events)
    }
}

type MakeCustom<T> = Arc<dyn Fn() -> Box<dyn CustomTrigger<T>> + Send + Sync>;
type Timestamp<T> = Arc<dyn Fn(&T) -> i64 + Send + Sync>;
/// A timestamp function over a whole slice, appending one stamp per event: built where the
/// user's function is still a concrete type, so its loop inlines it — one dynamic call per
/// batch instead of one per event.
pub(crate) type Stamps<T> = Arc<dyn Fn(&[T], &mut Vec<i64>) + Send + Sync>;

/// The user's timestamp function, per event and per batch.
fn timestamps<T, F>(timestamp: F) -> (Timestamp<T>, Stamps<T>)
where
    F: Fn(&T) -> i64 + Send + Sync + 'static,
{
    let ts = Arc::new(timestamp);
    let each = ts.clone();
    let stamps = Arc::new(move |events: &[T], stamps: &mut Vec<i64>| {
        stamps.extend(events.iter().map(|event| each(event)));
    });
    (ts, stamps)
}

pub(crate) enum Kind<T> {
    Global,
    Fixed {
        size: i64,
        ts: Timestamp<T>,
        stamps: Stamps<T>,
    },
    Sliding {
        size: i64,
        slide: i64,
        ts: Timestamp<T>,
        stamps: Stamps<T>,
        clone: fn(&T) -> T,
    },
    Session {
        gap: i64,
        ts: Timestamp<T>,
        stamps: Stamps<T>,
    },
    Periodic(Duration),
    Count(u64),
}

impl<T> Clone for Kind<T> {
    fn clone(&self) -> Self {
        match self {
            Kind::Global => Kind::Global,
            Kind::Fixed { size, ts, stamps } => Kind::Fixed {
                size: *size,
                ts: ts.clone(),
                stamps: stamps.clone(),
            },
            Kind::Sliding {
                size,
                slide,
                ts,
                stamps,
                clone,
            } => Kind::Sliding {
                size: *size,
                slide: *slide,
                ts: ts.clone(),
                stamps: stamps.clone(),
                clone: *clone,
            },
            Kind::Session { gap, ts, stamps } => Kind::Session {
                gap: *gap,
                ts: ts.clone(),
                stamps: stamps.clone(),
            },
            Kind::Periodic(d) => Kind::Periodic(*d),
            Kind::Count(n) => Kind::Count(*n),
        }
    }
}

impl<T> Clone for TriggerSpec<T> {
    fn clone(&self) -> Self {
        match self {
            TriggerSpec::Every(n) => TriggerSpec::Every(*n),
            TriggerSpec::Periodically(d) => TriggerSpec::Periodically(*d),
            TriggerSpec::Custom(make) => TriggerSpec::Custom(make.clone()),
            TriggerSpec::Message(handle) => TriggerSpec::Message(handle.clone()),
        }
    }
}

impl<T> Clone for Window<T> {
    fn clone(&self) -> Self {
        Window {
            kind: self.kind.clone(),
            triggers: self.triggers.clone(),
            lateness: self.lateness,
            idle_timeout: self.idle_timeout,
            late: self.late.clone(),
            fire_empty: self.fire_empty,
            error: self.error.clone(),
        }
    }
}

pub(crate) enum TriggerSpec<T> {
    Every(u64),
    Periodically(Duration),
    Custom(MakeCustom<T>),
    Message(TriggerHandle),
}

/// A window kind with its triggers, lateness and late-event handling, for the layer a
/// `partition` or `shuffle` starts (see the [module docs](self)).
pub struct Window<T> {
    pub(crate) kind: Kind<T>,
    pub(crate) triggers: Vec<TriggerSpec<T>>,
    pub(crate) lateness: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) late: Option<LateEvents<T>>,
    /// Event-time windows: fire the empty windows of gaps of at most this many.
    pub(crate) fire_empty: Option<u64>,
    /// The first invalid setting, reported when the flow is built into stages.
    pub(crate) error: Option<String>,
}

impl<T> fmt::Debug for Window<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Window")
            .field("kind", &self.kind_name())
            .field("triggers", &self.triggers.len())
            .field("lateness", &self.lateness)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl<T: Send + 'static> Window<T> {
    fn new(kind: Kind<T>) -> Self {
        Window {
            kind,
            triggers: Vec::new(),
            lateness: None,
            idle_timeout: None,
            late: None,
            fire_empty: None,
            error: None,
        }
    }

    fn invalid(mut self, error: String) -> Self {
        self.error.get_or_insert(error);
        self
    }

    /// One window for all input; fires `Done` when all the stage's producers finish.
    pub fn global() -> Self {
        Window::new(Kind::Global)
    }

    /// Fixed event-time windows of `size` (whole milliseconds): the window of an event is
    /// `[start, start + size)` with `start = floor(timestamp / size) * size`, and `start`
    /// is its id. `timestamp` returns milliseconds.
    pub fn fixed(size: Duration, timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static) -> Self {
        let (ts, stamps) = timestamps(timestamp);
        let window = Window::new(Kind::Fixed {
            size: millis(size),
            ts,
            stamps,
        });
        if millis(size) <= 0 {
            return window.invalid(format!(
                "fixed window size must be at least 1 ms, got {size:?}"
            ));
        }
        window
    }

    /// Sliding event-time windows `[k·slide, k·slide + size)`: an event belongs to each
    /// window that covers it (so it is cloned into up to `size / slide` windows).
    pub fn sliding(
        size: Duration,
        slide: Duration,
        timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static,
    ) -> Self
    where
        T: Clone,
    {
        let (size_ms, slide_ms) = (millis(size), millis(slide));
        let (ts, stamps) = timestamps(timestamp);
        let window = Window::new(Kind::Sliding {
            size: size_ms,
            slide: slide_ms,
            ts,
            stamps,
            clone: T::clone,
        });
        if size_ms <= 0 || slide_ms <= 0 {
            return window.invalid(format!(
                "sliding window size and slide must be at least 1 ms, got {size:?} and {slide:?}"
            ));
        }
        if slide_ms > size_ms {
            return window.invalid(format!(
                "sliding window slide {slide:?} is longer than its size {size:?}: events would \
                 fall between windows"
            ));
        }
        window
    }

    /// Session windows: events whose timestamps are less than `gap` apart (transitively)
    /// form one window, whose id is its first timestamp and whose end is its last
    /// timestamp plus `gap`. Sessions that an event bridges merge. A session's events are
    /// kept until it closes and reduced then, in arrival order, so sessions take only the
    /// `Done` trigger.
    pub fn session(gap: Duration, timestamp: impl Fn(&T) -> i64 + Send + Sync + 'static) -> Self {
        let (ts, stamps) = timestamps(timestamp);
        let window = Window::new(Kind::Session {
            gap: millis(gap),
            ts,
            stamps,
        });
        if millis(gap) <= 0 {
            return window.invalid(format!("session gap must be at least 1 ms, got {gap:?}"));
        }
        window
    }

    /// Processing-time windows: window `k` holds the events that arrive during the `k`-th
    /// period of `duration` since the flow started; each tick fires `Done` for window `k`
    /// and opens `k + 1`, also when no event came.
    pub fn periodic(duration: Duration) -> Self {
        let window = Window::new(Kind::Periodic(duration));
        if duration.is_zero() {
            return window.invalid("periodic window duration must not be zero".into());
        }
        window
    }

    /// Count windows: every `n` events of a stage form a window (ids 0, 1, ...). At the
    /// end of input the open window fires `Done`, even if empty.
    pub fn count(n: u64) -> Self {
        let window = Window::new(Kind::Count(n));
        if n == 0 {
            return window.invalid("count window size must be at least 1".into());
        }
        window
    }

    /// Fires [`TriggerName::Every`]`(n)` after each `n`-th event of a window (a batch is
    /// split there); the count restarts with each window.
    pub fn trigger_every(mut self, n: u64) -> Self {
        if n == 0 {
            return self.invalid("trigger_every needs n >= 1".into());
        }
        self.triggers.push(TriggerSpec::Every(n));
        self
    }

    /// Fires [`TriggerName::Periodically`]`(period)` for every open window each `period`
    /// of processing time. Several can be stacked.
    pub fn trigger_periodically(mut self, period: Duration) -> Self {
        if period.is_zero() {
            return self.invalid("trigger_periodically needs a period above zero".into());
        }
        self.triggers.push(TriggerSpec::Periodically(period));
        self
    }

    /// A custom trigger: `decide(&mut state, events)` sees the events of one window as
    /// they arrive, in runs (at most one batch, cut where an `every(n)` falls), and
    /// returns a [`Decision`]: take the run ([`Continue`](Decision::Continue)), cut it
    /// and fire ([`Fire`](Decision::Fire)), or — as Flow's triggers can — put other events
    /// in its place ([`ContinueWith`](Decision::ContinueWith)) and fire between events
    /// taken and events handed back to be seen again ([`FireWith`](Decision::FireWith)).
    /// `init` makes the state of each new window. With several custom triggers, each
    /// sees the run in turn; one that puts other events in its place decides for the run
    /// (those after it do not see it).
    ///
    /// ```
    /// use flowstage::window::{Decision, Window};
    /// // Fire when the running sum of a window reaches 100 or more.
    /// let window = Window::<u64>::global().trigger(|| 0u64, |sum, events| {
    ///     for (i, e) in events.iter().enumerate() {
    ///         *sum += e;
    ///         if *sum >= 100 {
    ///             *sum = 0;
    ///             return Decision::Fire { at: i + 1, name: "hundred".into() };
    ///         }
    ///     }
    ///     Decision::Continue
    /// });
    /// # let _ = window;
    /// ```
    ///
    /// Count-based sliding windows by punctuation — windows of 2 events sliding by 1: the
    /// event that completes a pair fires it and is handed back to open the next.
    ///
    /// ```
    /// use flowstage::flow::{Flow, Partition, TriggerName};
    /// use flowstage::window::{Decision, Window};
    /// let pairs = Window::global().trigger(|| 0usize, |seen: &mut usize, run: &[char]| {
    ///     let need = 2 - *seen; // events still missing from the current pair
    ///     if run.len() < need {
    ///         *seen += run.len();
    ///         return Decision::Continue;
    ///     }
    ///     *seen = 0; // `pos` is counted again when it comes back
    ///     Decision::FireWith {
    ///         pre: run[..need].to_vec(),
    ///         name: "pair".into(),
    ///         pos: run[need - 1..].to_vec(),
    ///     }
    /// });
    /// let windows: Vec<Vec<char>> = Flow::from_iter("abcabc".chars())
    ///     .partition(Partition::new().stages(1).window(pairs))
    ///     .reduce(Vec::new, |c, mut window: Vec<char>| { window.push(c); window })
    ///     // Emit each pair and start the next afresh; the lone last event is no pair.
    ///     .on_trigger(|window, _, trigger| match trigger.name {
    ///         TriggerName::Custom(_) => (vec![window], Vec::new()),
    ///         _ => (Vec::new(), Vec::new()),
    ///     })
    ///     .collect()?;
    /// let expected: Vec<Vec<char>> = ["ab", "bc", "ca", "ab", "bc"]
    ///     .iter()
    ///     .map(|pair| pair.chars().collect())
    ///     .collect();
    /// assert_eq!(windows, expected); // never a lone `a` or `c`
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn trigger<S, I, F>(mut self, init: I, decide: F) -> Self
    where
        S: Send + 'static,
        I: Fn() -> S + Send + Sync + 'static,
        F: Fn(&mut S, &[T]) -> Decision<T> + Send + Sync + 'static,
    {
        let decide = Arc::new(decide);
        self.triggers.push(TriggerSpec::Custom(Arc::new(move || {
            Box::new(CustomFn {
                state: init(),
                f: decide.clone(),
            })
        })));
        self
    }

    /// Fires [`TriggerName::Message`] for every open window when `handle` is fired.
    pub fn trigger_on(mut self, handle: &TriggerHandle) -> Self {
        self.triggers.push(TriggerSpec::Message(handle.clone()));
        self
    }

    /// Keeps a fixed window open for `lateness` of processing time after the watermark
    /// passed it: it fires [`TriggerName::Watermark`] at the watermark, takes late events
    /// meanwhile, and fires `Done` when the lateness ends (or at the end of input).
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        if !matches!(self.kind, Kind::Fixed { .. }) {
            let kind = self.kind_name();
            return self.invalid(format!(
                "allowed_lateness applies to fixed windows only, not to a {kind} window"
            ));
        }
        self.lateness = Some(lateness);
        self
    }

    /// A producer that sent nothing for `timeout` (processing time) no longer holds the
    /// watermark back, until it sends again.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        if timeout.is_zero() {
            return self.invalid("idle_timeout must be above zero".into());
        }
        self.idle_timeout = Some(timeout);
        self
    }

    /// Fixed and sliding windows: the empty windows between two windows with events fire
    /// too — entered, then closed like the others (`Done`, or `Watermark` and `Done` with
    /// allowed lateness), so that a reduce emits its initial state for them and a series
    /// of windows has no holes — as long as a gap holds at most `max_gap` of them. A longer
    /// gap (a jump in event time rather than a quiet period) fires none of its empty
    /// windows: what the stage does stays bounded by its input, whatever the timestamps.
    /// Without it (the default) only windows with events fire.
    ///
    /// ```
    /// use flowstage::flow::{Flow, Partition};
    /// use flowstage::window::Window;
    /// use std::time::Duration;
    /// let count = |window: Window<i64>| {
    ///     Flow::from_iter(vec![5i64, 35, 1_000_000_000])
    ///         .partition(Partition::new().stages(1).window(window))
    ///         .reduce(|| 0u64, |_, n| n + 1)
    ///         .emit_state()
    ///         .collect::<Vec<u64>>()
    /// };
    /// let ten_ms = || Window::fixed(Duration::from_millis(10), |t: &i64| *t);
    /// assert_eq!(count(ten_ms())?, [1, 1, 1]);
    /// // Windows 10 and 20 are empty; the 99 999 996 before the last event are too many.
    /// assert_eq!(count(ten_ms().fire_empty(1000))?, [1, 0, 0, 1, 1]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn fire_empty(mut self, max_gap: u64) -> Self {
        if !matches!(self.kind, Kind::Fixed { .. } | Kind::Sliding { .. }) {
            let kind = self.kind_name();
            return self.invalid(format!(
                "fire_empty applies to fixed and sliding windows, not to a {kind} window"
            ));
        }
        self.fire_empty = Some(max_gap);
        self
    }

    /// Sends late events (those for windows already closed) to `late`.
    pub fn late_events(mut self, late: &LateEvents<T>) -> Self {
        self.late = Some(late.clone());
        self
    }
}

impl<T> Window<T> {
    /// The kind's name, as triggers report it.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Global => "global",
            Kind::Fixed { .. } => "fixed",
            Kind::Sliding { .. } => "sliding",
            Kind::Session { .. } => "session",
            Kind::Periodic(_) => "periodic",
            Kind::Count(_) => "count",
        }
    }

    /// Checks the settings as a whole.
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(error) = &self.error {
            return Err(FlowError::Config(error.clone()));
        }
        if matches!(self.kind, Kind::Session { .. }) && !self.triggers.is_empty() {
            return Err(FlowError::Config(
                "session windows take only the Done trigger: their events are reduced when \
                 the session closes"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether this window is the plain global window, which needs no windowing at all.
    pub(crate) fn is_plain_global(&self) -> bool {
        matches!(self.kind, Kind::Global) && self.triggers.is_empty()
    }
}

/// The window setting of a layer: none (the global window, no triggers), or a
/// [`Window`]. Lets [`Partition`](crate::flow::Partition) options without a window serve
/// any event type.
pub trait LayerWindow<T>: Send {
    /// The window, if any.
    #[doc(hidden)]
    fn into_window(self) -> Option<Window<T>>;
}

/// No window setting: the global window without triggers.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoWindow;

impl<T> LayerWindow<T> for NoWindow {
    fn into_window(self) -> Option<Window<T>> {
        None
    }
}

impl<T: Send + 'static> LayerWindow<T> for Window<T> {
    fn into_window(self) -> Option<Window<T>> {
        if self.is_plain_global() && self.error.is_none() {
            None
        } else {
            Some(self)
        }
    }
}
