//! What travels between two stages: batches of events downstream, demand upstream.
//!
//! Every stage has one inbox. Events arrive there in batches from the stage's producers,
//! and demand arrives there from its consumers. The inbox is an unbounded channel, but what
//! can be in it is bounded by the protocol: events only travel under credit (at most
//! `max_demand` per subscription), and demand messages at most one per handled chunk.

use std::sync::Arc;

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
