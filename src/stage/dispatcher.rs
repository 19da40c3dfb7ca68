//! Dispatchers decide which subscriber gets which event.
//!
//! - [`Dispatcher::demand`] (the default): each batch goes to the subscriber with the most
//!   outstanding demand.
//! - [`Dispatcher::broadcast`]: every event to every subscriber (each may filter with a
//!   [`selector`](crate::stage::SubscribeOptions::selector)); the producer is asked for the
//!   minimum demand over subscribers.
//! - [`Dispatcher::partition_by_key`] / [`Dispatcher::partition_with`]: a fixed-seed hash of
//!   a key, or a user function, picks exactly one subscriber (or drops the event).
//!
//! Dispatchers are the only code that sends events, and they send through
//! [`Outlet::send`], which takes a permit cut from the subscriber's credit: no dispatcher can
//! send beyond demand. Dynamic dispatch happens once per batch (the boxed dispatcher); the
//! per-event key and hash functions are monomorphised inside it.

use std::collections::VecDeque;
use std::hash::Hash;

use super::link::Outlet;
use crate::error::StageError;

/// Seeds of the hash of the bytes a key writes (strings): fixed, so a key lands on the
/// same partition in every run and on every machine.
const PARTITION_SEEDS: [u64; 4] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
];

/// The fixed-seed hash used by partitioning: a key's integers (`u8` to `u128`, `usize`,
/// the signed ones, `char`, `bool`) cost one multiply each, its bytes (a `str`, a slice
/// of bytes) one fixed-seed `ahash`. Only the hash's high bits decide a partition (see
/// [`partition_of`]), and those of `x · φ·2⁶⁴` spread any run of integers evenly (a
/// Fibonacci hash). The same on both backends and every machine: the cluster routes
/// with it too.
///
/// ```
/// use flowstage::stage::partition_hash;
/// assert_eq!(partition_hash(&"word"), partition_hash(&"word"));
/// // An integer key: one multiply.
/// assert_eq!(partition_hash(&7u64), 7u64.wrapping_mul(0x9e37_79b9_7f4a_7c15));
/// ```
#[inline]
pub fn partition_hash<K: Hash + ?Sized>(key: &K) -> u64 {
    let mut hasher = RouteHasher(0);
    key.hash(&mut hasher);
    hasher.0
}

/// ⌊2⁶⁴ / φ⌋, odd: the multiplier of a Fibonacci hash.
const FIBONACCI: u64 = 0x9e37_79b9_7f4a_7c15;

/// The hasher of [`partition_hash`]. Each integer written is folded in with one multiply
/// (the state, rotated so that earlier fields do not cancel later ones, xor the value);
/// bytes are hashed by `ahash` under fixed seeds first, then folded the same way. A key
/// of one integer starts from zero: its hash is the integer times [`FIBONACCI`].
struct RouteHasher(u64);

impl RouteHasher {
    #[inline(always)]
    fn fold(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(26) ^ value).wrapping_mul(FIBONACCI);
    }
}

impl std::hash::Hasher for RouteHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Built at compile time: no lazy initialisation to check on every event.
        static BYTES: ahash::RandomState = ahash::RandomState::with_seeds(
            PARTITION_SEEDS[0],
            PARTITION_SEEDS[1],
            PARTITION_SEEDS[2],
            PARTITION_SEEDS[3],
        );
        self.fold(BYTES.hash_one(bytes));
    }

    #[inline]
    fn write_u8(&mut self, value: u8) {
        self.fold(u64::from(value));
    }

    #[inline]
    fn write_u16(&mut self, value: u16) {
        self.fold(u64::from(value));
    }

    #[inline]
    fn write_u32(&mut self, value: u32) {
        self.fold(u64::from(value));
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.fold(value);
    }

    #[inline]
    fn write_u128(&mut self, value: u128) {
        self.fold(value as u64);
        self.fold((value >> 64) as u64);
    }

    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.fold(value as u64);
    }
}

/// The partition, among `partitions`, of a key whose [`partition_hash`] is `hash`: the
/// hash scaled to `0..partitions` by a multiply and a shift (its high bits decide), not a
/// division — a 64-bit `%` per event costs tens of cycles on a hot path.
///
/// ```
/// use flowstage::stage::{partition_hash, partition_of};
/// let p = partition_of(partition_hash(&"word"), 4);
/// assert!(p < 4);
/// assert_eq!(p, partition_of(partition_hash(&"word"), 4));
/// ```
#[inline]
pub fn partition_of(hash: u64, partitions: usize) -> usize {
    ((u128::from(hash) * partitions as u128) >> 64) as usize
}

/// Pushes `event` onto queue `partition` of `queues` (`None`: the route dropped it on
/// purpose). A partition out of range is the stage's error. The one place both routers
/// queue an event: the partition dispatcher, and a source stage that routes in its own
/// loop (`flow::partition::Routed`).
#[inline(always)]
pub(crate) fn queue_routed<T>(
    queues: &mut [Vec<T>],
    partition: Option<usize>,
    event: T,
) -> Result<(), StageError> {
    let Some(p) = partition else {
        return Ok(());
    };
    // One check serves as both the range check and the bounds check.
    let partitions = queues.len();
    match queues.get_mut(p) {
        Some(queue) => {
            queue.push(event);
            Ok(())
        }
        None => Err(out_of_range(p, partitions)),
    }
}

/// The error of a route outside the partitions: out of the routing loop, so that the
/// loop does not keep `p` and the partition count aside for it at every event.
#[cold]
#[inline(never)]
fn out_of_range(p: usize, partitions: usize) -> StageError {
    format!("partition function returned {p}, but there are {partitions} partitions").into()
}

/// Every part's events, in order, as one batch (the parts left empty).
fn concat<T>(parts: &mut [Vec<T>]) -> Vec<T> {
    let mut events = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for part in parts {
        events.append(part);
    }
    events
}

/// Makes a stage's dispatcher from its outlets, once they are all known. `'a`: what its
/// closures borrow (`'static` but for the flow layer's scoped runs).
pub(crate) type BuildDispatch<'a, T> =
    Box<dyn FnOnce(Vec<Outlet<T>>) -> Box<dyn Dispatch<T> + 'a> + Send + 'a>;

/// A dispatcher whose closures may borrow for `'a`: what [`Dispatcher`] is for `'static`,
/// and what the flow layer builds for a run that borrows (see `stage::scoped`).
pub(crate) struct ScopedDispatcher<'a, T> {
    pub(crate) kind: &'static str,
    pub(crate) build: BuildDispatch<'a, T>,
}

impl<'a, T: Send + 'static> ScopedDispatcher<'a, T> {
    pub(crate) fn demand() -> Self {
        ScopedDispatcher {
            kind: "demand",
            build: Box::new(|outlets| Box::new(DemandDispatch { outlets })),
        }
    }

    pub(crate) fn broadcast() -> Self
    where
        T: Clone,
    {
        ScopedDispatcher {
            kind: "broadcast",
            build: Box::new(|outlets| Box::new(BroadcastDispatch { outlets })),
        }
    }

    pub(crate) fn partition_with(
        route: impl Fn(&T, usize) -> Option<usize> + Send + Sync + 'a,
    ) -> Self {
        ScopedDispatcher {
            kind: "partition",
            build: Box::new(move |outlets| Box::new(PartitionDispatch::new(outlets, route))),
        }
    }
}

/// The dispatcher of a producer or producer-consumer, chosen in its options.
///
/// ```
/// use flowstage::stage::Dispatcher;
/// let by_parity = Dispatcher::partition_with(|n: &u64, _partitions| Some((n % 2) as usize));
/// let by_key = Dispatcher::partition_by_key(|word: &String| word.clone());
/// let everyone = Dispatcher::<u64>::broadcast();
/// # let _ = (by_parity, by_key, everyone);
/// ```
pub struct Dispatcher<T> {
    pub(crate) scoped: ScopedDispatcher<'static, T>,
}

impl<T> std::fmt::Debug for Dispatcher<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("kind", &self.scoped.kind)
            .finish()
    }
}

impl<T: Send + 'static> Default for Dispatcher<T> {
    fn default() -> Self {
        Self::demand()
    }
}

impl<T: Send + 'static> Dispatcher<T> {
    /// Each batch to the subscriber with the most outstanding demand.
    pub fn demand() -> Self {
        Dispatcher {
            scoped: ScopedDispatcher::demand(),
        }
    }

    /// Every event to every subscriber; upstream demand is the minimum over subscribers.
    pub fn broadcast() -> Self
    where
        T: Clone,
    {
        Dispatcher {
            scoped: ScopedDispatcher::broadcast(),
        }
    }

    /// Each event to partition `partition_of(partition_hash(key(event)), partitions)`; one
    /// partition per subscriber.
    pub fn partition_by_key<K: Hash>(key: impl Fn(&T) -> K + Send + Sync + 'static) -> Self {
        Self::partition_with(move |event, partitions| {
            Some(partition_of(partition_hash(&key(event)), partitions))
        })
    }

    /// Each event to the partition `route(event, partitions)` returns, or nowhere for
    /// `None` (the event is dropped on purpose and not counted as lost). An index out of
    /// range fails the stage.
    pub fn partition_with(
        route: impl Fn(&T, usize) -> Option<usize> + Send + Sync + 'static,
    ) -> Self {
        Dispatcher {
            scoped: ScopedDispatcher::partition_with(route),
        }
    }
}

/// The runtime's view of a dispatcher, called once per batch.
pub(crate) trait Dispatch<T>: Send {
    fn outlets(&mut self) -> &mut [Outlet<T>];
    fn outlets_ref(&self) -> &[Outlet<T>];

    /// Subscriber `sub` asked for `n` more.
    fn ask(&mut self, sub: usize, n: usize) {
        if let Some(outlet) = self.outlets().get_mut(sub) {
            outlet.grant(n);
        }
    }

    /// Subscriber `sub` is gone.
    fn cancel(&mut self, sub: usize) {
        if let Some(outlet) = self.outlets().get_mut(sub) {
            outlet.close();
        }
    }

    /// How many more events the producer should make now.
    fn demand(&self) -> usize;

    /// Sends what credit allows; returns the events it could not send, in order.
    fn dispatch(&mut self, events: Vec<T>) -> Result<Vec<T>, StageError>;

    /// Lends the partition queues to a producer that routes itself without waiting (see
    /// [`Producer::routes_without_waiting`](super::Producer::routes_without_waiting)):
    /// each empty `Vec` of `routed` swaps with its partition's queue, which
    /// [`absorb`](Dispatch::absorb) then swaps back. The default lends nothing.
    fn lend(&mut self, routed: &mut [Vec<T>]) {
        let _ = routed;
    }

    /// Takes the events a producer routed itself, one `Vec` per partition (see
    /// [`Producer::routed`](super::Producer::routed)), leaving them empty; returns what it
    /// could not send, in order, as [`dispatch`](Dispatch::dispatch) does. The default
    /// dispatches them as one batch; the partition dispatcher queues each where it was
    /// routed.
    fn absorb(&mut self, routed: &mut [Vec<T>]) -> Result<Vec<T>, StageError> {
        self.dispatch(concat(routed))
    }

    /// Events held inside the dispatcher (partition queues).
    fn pending(&self) -> usize {
        0
    }

    /// Sends held events that credit now allows — with `all` false, only to subscribers
    /// whose whole credit they fill (more are being made) — and returns how many were
    /// dropped because their subscriber had gone.
    fn flush(&mut self, all: bool) -> usize {
        let _ = all;
        0
    }

    fn all_closed(&self) -> bool {
        self.outlets_ref().iter().all(|outlet| !outlet.is_open())
    }

    /// Credit held over all subscribers (for metrics).
    fn credit(&self) -> usize {
        self.outlets_ref().iter().map(Outlet::credit).sum()
    }
}

struct DemandDispatch<T> {
    outlets: Vec<Outlet<T>>,
}

impl<T: Send> Dispatch<T> for DemandDispatch<T> {
    fn outlets(&mut self) -> &mut [Outlet<T>] {
        &mut self.outlets
    }

    fn outlets_ref(&self) -> &[Outlet<T>] {
        &self.outlets
    }

    fn demand(&self) -> usize {
        self.credit()
    }

    fn dispatch(&mut self, mut events: Vec<T>) -> Result<Vec<T>, StageError> {
        while !events.is_empty() {
            let Some(outlet) = self
                .outlets
                .iter_mut()
                .filter(|outlet| outlet.credit() > 0)
                .max_by_key(|outlet| outlet.credit())
            else {
                break;
            };
            let permit = outlet.take(events.len());
            if permit.len() == events.len() {
                outlet.send(permit, std::mem::take(&mut events));
            } else {
                let rest = events.split_off(permit.len());
                outlet.send(permit, std::mem::replace(&mut events, rest));
            }
        }
        Ok(events)
    }
}

struct BroadcastDispatch<T> {
    outlets: Vec<Outlet<T>>,
}

impl<T: Clone + Send> Dispatch<T> for BroadcastDispatch<T> {
    fn outlets(&mut self) -> &mut [Outlet<T>] {
        &mut self.outlets
    }

    fn outlets_ref(&self) -> &[Outlet<T>] {
        &self.outlets
    }

    fn demand(&self) -> usize {
        self.outlets
            .iter()
            .filter(|outlet| outlet.is_open())
            .map(Outlet::credit)
            .min()
            .unwrap_or(0)
    }

    fn dispatch(&mut self, mut events: Vec<T>) -> Result<Vec<T>, StageError> {
        let n = self.demand().min(events.len());
        if n == 0 {
            return Ok(events);
        }
        let rest = events.split_off(n);
        let open: Vec<usize> = (0..self.outlets.len())
            .filter(|&i| self.outlets[i].is_open())
            .collect();
        for (position, &i) in open.iter().enumerate() {
            let outlet = &mut self.outlets[i];
            let permit = outlet.take(n);
            let batch: Vec<T> = match &outlet.selector {
                Some(selector) => events.iter().filter(|e| selector(e)).cloned().collect(),
                None if position + 1 == open.len() => std::mem::take(&mut events),
                None => events.clone(),
            };
            // Events a selector filtered out never reach the consumer, so its demand
            // accounting never sees them: give their credit back (GenStage re-asks the
            // discarded count on the subscriber's behalf), or the subscription stalls.
            let discarded = n - batch.len();
            outlet.send(permit, batch);
            outlet.grant(discarded);
        }
        Ok(rest)
    }
}

struct PartitionDispatch<T, F> {
    outlets: Vec<Outlet<T>>,
    /// Events routed to a partition whose subscriber has no credit yet; at most a bound per
    /// partition before the producer is asked for nothing more. Plain `Vec`s: a push is
    /// cheaper than a ring buffer's, and a queue that goes whole (the usual case) leaves
    /// as the batch itself, without a copy.
    queues: Vec<Vec<T>>,
    /// Per partition, a burst of more than twice its subscriber's credit (a combiner's
    /// whole map, a file block's words), cut once into batches of `max_demand`, sent one
    /// by one before its queue. (Sending the front of a `Vec` moves everything behind
    /// it: a burst of `n` events sent `k` at a time moved `n²/2k` of them.)
    backlogs: Vec<VecDeque<Vec<T>>>,
    route: F,
}

impl<T, F> PartitionDispatch<T, F> {
    fn new(mut outlets: Vec<Outlet<T>>, route: F) -> Self {
        // Subscribers may name their partition; the runtime checked the indices are 0..n.
        outlets.sort_by_key(|outlet| outlet.partition);
        let queues = outlets.iter().map(|_| Vec::new()).collect();
        let backlogs = outlets.iter().map(|_| VecDeque::new()).collect();
        PartitionDispatch {
            outlets,
            queues,
            backlogs,
            route,
        }
    }
}

impl<T: Send, F: Fn(&T, usize) -> Option<usize> + Send> Dispatch<T> for PartitionDispatch<T, F> {
    fn outlets(&mut self) -> &mut [Outlet<T>] {
        &mut self.outlets
    }

    fn outlets_ref(&self) -> &[Outlet<T>] {
        &self.outlets
    }

    fn ask(&mut self, sub: usize, n: usize) {
        // `sub` is the subscription order; partitions were sorted, so look it up.
        if let Some(outlet) = self.outlets.iter_mut().find(|o| o.sub_index() == sub) {
            outlet.grant(n);
        }
    }

    fn cancel(&mut self, sub: usize) {
        if let Some(outlet) = self.outlets.iter_mut().find(|o| o.sub_index() == sub) {
            outlet.close();
        }
    }

    fn demand(&self) -> usize {
        // Enough events to fill the largest gap between a partition's credit and its
        // queue, if keys spread evenly: `open × largest gap`. (The sum of the gaps makes
        // a partition that just got credit wait for a run of ever smaller productions,
        // each bringing it half of what it lacks when the others are full.) Other
        // queues may go past their credit meanwhile; they stay bounded below.
        let (mut open, mut gap) = (0, 0);
        for ((outlet, queue), backlog) in self.outlets.iter().zip(&self.queues).zip(&self.backlogs)
        {
            if !outlet.is_open() {
                continue;
            }
            // A full queue means its consumer is behind: ask for nothing until it drains,
            // so skewed keys cannot grow memory without bound.
            let waiting = queue.len() + backlog.iter().map(Vec::len).sum::<usize>();
            if waiting >= outlet.max_demand {
                return 0;
            }
            open += 1;
            gap = gap.max(outlet.credit().saturating_sub(waiting));
        }
        gap.saturating_mul(open)
    }

    fn dispatch(&mut self, events: Vec<T>) -> Result<Vec<T>, StageError> {
        let partitions = self.outlets.len();
        for event in events {
            queue_routed(&mut self.queues, (self.route)(&event, partitions), event)?;
        }
        Ok(Vec::new())
    }

    fn lend(&mut self, routed: &mut [Vec<T>]) {
        if routed.len() != self.queues.len() {
            return;
        }
        for (queue, part) in self.queues.iter_mut().zip(routed) {
            if part.is_empty() {
                std::mem::swap(queue, part);
            }
        }
    }

    fn absorb(&mut self, routed: &mut [Vec<T>]) -> Result<Vec<T>, StageError> {
        if routed.len() != self.queues.len() {
            // Routed for another number of partitions (not what the flow layer builds):
            // route them again here.
            return self.dispatch(concat(routed));
        }
        for (queue, part) in self.queues.iter_mut().zip(routed) {
            if queue.is_empty() {
                // The queue was lent (the routed `Vec` is the queue, grown), or went whole
                // at the last flush: the routed `Vec` becomes the queue, and the queue's
                // empty allocation goes back to the producer.
                std::mem::swap(queue, part);
            } else {
                queue.append(part);
            }
        }
        Ok(Vec::new())
    }

    fn pending(&self) -> usize {
        let backlogs: usize = self.backlogs.iter().flatten().map(Vec::len).sum();
        self.queues.iter().map(Vec::len).sum::<usize>() + backlogs
    }

    fn flush(&mut self, all: bool) -> usize {
        let mut dropped = 0;
        let partitions = self.outlets.iter_mut().zip(&mut self.queues);
        for ((outlet, queue), backlog) in partitions.zip(&mut self.backlogs) {
            if !outlet.is_open() {
                dropped += queue.len() + backlog.iter().map(Vec::len).sum::<usize>();
                queue.clear();
                backlog.clear();
                continue;
            }
            // A burst goes first, batch by batch while the credit lasts; the queue waits
            // behind it.
            while let Some(front) = backlog.front_mut() {
                let permit = outlet.take(front.len());
                if permit.len() == 0 {
                    break;
                }
                let batch = if permit.len() == front.len() {
                    backlog.pop_front().unwrap_or_default()
                } else {
                    // Credit for less than a batch: its front goes, the rest of that one
                    // batch moves up (at most `max_demand`).
                    front.drain(..permit.len()).collect()
                };
                outlet.send(permit, batch);
            }
            if !backlog.is_empty() {
                continue;
            }
            if queue.is_empty() {
                continue;
            }
            if !all && queue.len() < outlet.credit() {
                // More events are being made: send when they fill the credit, in one
                // batch rather than in the pieces each production brings.
                continue;
            }
            let permit = outlet.take(queue.len());
            if permit.len() == 0 {
                continue;
            }
            // The queue keeps its capacity: it refills to about the same size, and growing
            // it again from empty costs a dozen reallocations per batch. Its new
            // allocation is one the subscriber handed back when it can be.
            let capacity = queue.capacity();
            let batch = if permit.len() == queue.len() {
                std::mem::replace(queue, outlet.buffer(capacity))
            } else if queue.len() - permit.len() <= permit.len() {
                // The usual partial send: the producer made about the credit of every
                // partition, and the hash gave this one a few more. The few move into a
                // fresh queue and the front leaves in the old allocation: the copy is the
                // shorter part, not the batch.
                let mut rest = outlet.buffer(capacity);
                rest.extend(queue.drain(permit.len()..));
                std::mem::replace(queue, rest)
            } else {
                // Credit for less than half: a burst. Its front goes now; the rest is cut
                // into batches of `max_demand` from the back, so each event moves once.
                let room = capacity.min(outlet.max_demand);
                let mut burst = std::mem::replace(queue, outlet.buffer(room));
                let size = outlet.max_demand.max(1);
                let mut cuts = Vec::new();
                while burst.len() > permit.len() {
                    let behind_front = burst.len() - permit.len();
                    let cut = permit.len() + (behind_front - 1) / size * size;
                    cuts.push(burst.split_off(cut));
                }
                backlog.extend(cuts.into_iter().rev());
                burst
            };
            outlet.send(permit, batch);
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest partition's share of `keys` over `partitions`, relative to a fair
    /// share (1.0 is perfectly even).
    fn skew<K: Hash>(keys: impl Iterator<Item = K>, partitions: usize) -> f64 {
        let mut counts = vec![0usize; partitions];
        let mut total = 0;
        for key in keys {
            counts[partition_of(partition_hash(&key), partitions)] += 1;
            total += 1;
        }
        let largest = counts.into_iter().max().unwrap_or(0);
        largest as f64 * partitions as f64 / total as f64
    }

    #[test]
    fn an_integer_key_costs_one_multiply() {
        for key in [0u64, 1, 7, 1 << 40, u64::MAX] {
            assert_eq!(partition_hash(&key), key.wrapping_mul(FIBONACCI));
        }
        // The narrower and signed integers widen first; `usize` is a `u64`.
        assert_eq!(partition_hash(&7u32), 7u64.wrapping_mul(FIBONACCI));
        assert_eq!(
            partition_hash(&-1i32),
            u64::from(u32::MAX).wrapping_mul(FIBONACCI)
        );
        assert_eq!(partition_hash(&7usize), partition_hash(&7u64));
    }

    #[test]
    fn keys_spread_evenly_whatever_their_pattern() {
        for partitions in [2, 3, 4, 7, 16, 64] {
            let cases: [(&str, f64); 6] = [
                ("0..100k", skew(0u32..100_000, partitions)),
                (
                    "multiples of 1024",
                    skew((0u64..100_000).map(|k| k << 10), partitions),
                ),
                (
                    "high bits only",
                    skew((0u64..100_000).map(|k| k << 40), partitions),
                ),
                ("negative", skew(-100_000i64..0, partitions)),
                (
                    "pairs",
                    skew((0u32..100_000).map(|k| (k % 317, k / 317)), partitions),
                ),
                (
                    "words",
                    skew((0..100_000).map(|k| format!("w{k}")), partitions),
                ),
            ];
            for (name, skew) in cases {
                assert!(skew < 1.1, "{name} over {partitions}: skew {skew:.3}");
            }
        }
    }

    #[test]
    fn fields_in_another_order_hash_apart() {
        assert_ne!(partition_hash(&(1u32, 2u32)), partition_hash(&(2u32, 1u32)));
        assert_ne!(partition_hash(&(0u64, 5u64)), partition_hash(&(5u64, 0u64)));
        assert_ne!(partition_hash(&"ab"), partition_hash(&"ba"));
    }
}
