//! What travels between two stages: batches of events downstream, demand upstream.
//!
//! Every stage has one inbox. Events arrive there in batches from the stage's producers,
//! and demand arrives there from its consumers. The inbox is an unbounded channel, but what
//! can be in it is bounded by the protocol: events only travel under credit (at most
//! `max_demand` per subscription), and demand messages at most one per handled chunk.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc::UnboundedSender;

use super::demand::{Cancel, Credit, Permit, Selector};
use super::metrics::StageMetrics;

/// A message in a stage's inbox.
#[derive(Debug)]
pub(crate) enum Msg<I> {
    /// A batch from upstream subscription `from` (an index into the receiver's inflows).
    Events { from: usize, events: Vec<I> },
    /// Upstream subscription `from` finished normally; nothing more comes from it.
    Done { from: usize },
    /// Upstream subscription `from` failed; nothing more comes from it.
    Failed { from: usize },
    /// Downstream subscription `sub` (an index into the receiver's outlets) asks for `n`.
    Ask { sub: usize, n: usize },
    /// Downstream subscription `sub` is gone.
    Cancel { sub: usize },
}

/// The upstream half of a subscription as a consumer sees it: where to send demand.
/// Type-erased because the consumer does not know its producer's input type.
pub(crate) trait Control: Send + Sync {
    fn ask(&self, sub: usize, n: usize);
    fn cancel(&self, sub: usize);
}

impl<I: Send> Control for UnboundedSender<Msg<I>> {
    fn ask(&self, sub: usize, n: usize) {
        // A closed inbox means the producer has ended; its end reaches us on its own.
        let _ = self.send(Msg::Ask { sub, n });
    }

    fn cancel(&self, sub: usize) {
        let _ = self.send(Msg::Cancel { sub });
    }
}

/// Emptied batch allocations a consumer stage hands back to the producers that send to it,
/// which fill them again instead of allocating. A batch is allocated by the producer's
/// thread and freed by the consumer's: freed that way a batch at a time, the allocator
/// (glibc's per-thread arenas) gives the memory back to the system and faults it in again
/// for the next batch — on a keyed windowed sum, a page fault every few hundred events.
///
/// Bounded: the buffers kept hold room for at most twice the `max_demand` of the stage's
/// subscriptions together (each subscription adds its share when it is made), about what
/// can be in flight to the stage anyway.
pub(crate) struct Spares<T> {
    pool: Mutex<Pool<T>>,
    /// Buffers taken back out (for tests of the runtime's recycling).
    #[cfg(test)]
    pub(crate) reused: std::sync::atomic::AtomicUsize,
}

struct Pool<T> {
    buffers: Vec<Vec<T>>,
    /// Their capacities, summed (events).
    held: usize,
    /// The most `held` may be.
    budget: usize,
}

impl<T> Spares<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Spares {
            pool: Mutex::new(Pool {
                buffers: Vec::new(),
                held: 0,
                budget: 0,
            }),
            #[cfg(test)]
            reused: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool<T>> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A subscription with this `max_demand` was made: room for twice as many.
    pub(crate) fn allow(&self, max_demand: usize) {
        let mut pool = self.pool();
        pool.budget = pool.budget.saturating_add(max_demand.saturating_mul(2));
    }

    /// Keeps `buffer`'s allocation (emptied) for a later batch, if the budget allows.
    pub(crate) fn put(&self, mut buffer: Vec<T>) {
        let capacity = buffer.capacity();
        if capacity == 0 {
            return;
        }
        buffer.clear();
        let mut pool = self.pool();
        if pool.held + capacity <= pool.budget {
            pool.held += capacity;
            pool.buffers.push(buffer);
        }
    }

    /// An empty buffer with room for `capacity` events: a spare if there is one.
    pub(crate) fn take(&self, capacity: usize) -> Vec<T> {
        let spare = {
            let mut pool = self.pool();
            let spare = pool.buffers.pop();
            if let Some(buffer) = &spare {
                pool.held -= buffer.capacity();
            }
            spare
        };
        match spare {
            Some(mut buffer) => {
                #[cfg(test)]
                self.reused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Exact: capacities follow what is asked for. (`reserve` may double a short
                // spare past the request; the next request, made from that capacity, then
                // doubles another: a ratchet without end.)
                buffer.reserve_exact(capacity);
                buffer
            }
            None => Vec::with_capacity(capacity),
        }
    }
}

/// The downstream half of a subscription as a producer sees it.
pub(crate) struct Outlet<T> {
    tx: UnboundedSender<Msg<T>>,
    /// This subscription's index among the consumer's inflows.
    from: usize,
    /// This subscription's index among the producer's outlets.
    sub: usize,
    credit: Credit,
    open: bool,
    pub(crate) max_demand: usize,
    pub(crate) partition: Option<usize>,
    pub(crate) selector: Option<Selector<T>>,
    /// The consumer's spare batches, for this outlet's next ones.
    spares: Arc<Spares<T>>,
    metrics: Arc<StageMetrics>,
}

impl<T> std::fmt::Debug for Outlet<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outlet")
            .field("from", &self.from)
            .field("credit", &self.credit)
            .field("open", &self.open)
            .finish()
    }
}

/// How a subscription is described before the stages start.
pub(crate) struct OutletSpec<T> {
    pub(crate) tx: UnboundedSender<Msg<T>>,
    pub(crate) from: usize,
    pub(crate) max_demand: usize,
    pub(crate) cancel: Cancel,
    pub(crate) partition: Option<usize>,
    pub(crate) selector: Option<Selector<T>>,
    pub(crate) spares: Arc<Spares<T>>,
}

impl<T> OutletSpec<T> {
    pub(crate) fn into_outlet(self, sub: usize, metrics: Arc<StageMetrics>) -> Outlet<T> {
        Outlet {
            tx: self.tx,
            from: self.from,
            sub,
            credit: Credit::default(),
            open: true,
            max_demand: self.max_demand,
            partition: self.partition,
            selector: self.selector,
            spares: self.spares,
            metrics,
        }
    }
}

impl<T> Outlet<T> {
    pub(crate) fn sub_index(&self) -> usize {
        self.sub
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    /// Credit left, 0 once closed.
    pub(crate) fn credit(&self) -> usize {
        if self.open {
            self.credit.available()
        } else {
            0
        }
    }

    pub(crate) fn grant(&mut self, n: usize) {
        if self.open {
            self.credit.grant(n);
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Permit {
        self.credit.take(n)
    }

    /// An empty buffer for a batch to this subscriber, with room for `capacity` events:
    /// one the subscriber handed back if it did.
    pub(crate) fn buffer(&self, capacity: usize) -> Vec<T> {
        self.spares.take(capacity)
    }

    pub(crate) fn close(&mut self) {
        self.open = false;
        let _ = self.credit.take(usize::MAX);
    }

    /// Sends `events` under `permit`, at most `permit.len()` of them (dispatchers cut
    /// batches to their permit; the truncation is the backstop that makes over-sending
    /// impossible). Events never leave a producer any other way.
    pub(crate) fn send(&mut self, permit: Permit, mut events: Vec<T>) {
        debug_assert!(
            events.len() <= permit.len(),
            "a batch larger than its permit"
        );
        events.truncate(permit.len());
        if events.is_empty() {
            return;
        }
        self.metrics.add_out(events.len());
        if self
            .tx
            .send(Msg::Events {
                from: self.from,
                events,
            })
            .is_err()
        {
            // The consumer is gone (it finished or failed); it will not ask again.
            self.close();
        }
    }

    pub(crate) fn finish(&mut self) {
        let _ = self.tx.send(Msg::Done { from: self.from });
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::Spares;

    #[test]
    fn a_spare_is_taken_back_emptied_in_its_own_allocation() {
        let spares = Spares::new();
        spares.allow(100);
        let mut batch: Vec<u64> = Vec::with_capacity(64);
        batch.extend(0..10);
        let address = batch.as_ptr();
        spares.put(batch);
        let again = spares.take(32);
        assert_eq!(again.as_ptr(), address);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), 64);
        // None left: a new allocation, of the size asked for.
        assert_eq!(spares.take(16).capacity(), 16);
    }

    #[test]
    fn spares_hold_at_most_twice_the_demand_of_the_subscriptions() {
        let spares = Spares::new();
        spares.allow(50);
        spares.allow(50);
        for _ in 0..5 {
            spares.put(Vec::<u8>::with_capacity(60));
        }
        // 200 events of room: three buffers of 60 fit, the next two do not.
        let kept = (0..5).filter(|_| spares.take(0).capacity() == 60).count();
        assert_eq!(kept, 3);
    }

    #[test]
    fn a_short_spare_grows_to_exactly_what_is_asked() {
        let spares = Spares::new();
        spares.allow(1000);
        spares.put(Vec::<u8>::with_capacity(100));
        assert_eq!(spares.take(300).capacity(), 300);
    }
}
