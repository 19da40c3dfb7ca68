//! Demand accounting: what a consumer asks for, and the credit a producer holds.
//!
//! The consumer side ([`Inflow`]) implements GenStage's automatic demand: ask `max_demand`
//! on subscribe, hand events to the stage in chunks of at most `max_demand - min_demand`, and
//! after each chunk, once outstanding demand is `<= min_demand`, ask for
//! `max_demand - outstanding`.
//!
//! The producer side ([`Credit`]) is the mirror image: a subscription's credit is the demand
//! received and not yet used. Events can only leave through a [`Permit`] taken from credit,
//! so a producer cannot send beyond demand — the type makes over-sending impossible, the way
//! a bounded channel's permits do.

use crate::error::{FlowError, Result};

/// A broadcast subscriber's filter.
pub(crate) type Selector<T> = Box<dyn Fn(&T) -> bool + Send + Sync>;

/// Default `max_demand` of a subscription.
pub const DEFAULT_MAX_DEMAND: usize = 1000;

/// Whether a consumer's demand is sent by the runtime or by the consumer itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DemandMode {
    /// The runtime asks `max_demand` on subscribe and re-asks after each handled chunk.
    #[default]
    Automatic,
    /// The consumer asks with [`ConsumerContext::ask`](crate::stage::ConsumerContext::ask);
    /// the runtime never asks on its own.
    Manual,
}

/// What a consumer does when one of its producers finishes (GenStage's `cancel` option).
///
/// A failing stage always ends the whole run with a [`FlowError`]; the modes differ in how
/// normal completion travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cancel {
    /// The consumer finishes as soon as this producer finishes (after draining what it sent).
    Permanent,
    /// The subscription is removed; the consumer finishes once all its subscriptions are gone.
    #[default]
    Transient,
    /// Like `Transient` for normal completion; in addition, if this producer *fails* and
    /// every subscription to it is temporary, its failure does not end the run: the
    /// subscription is dropped, the failure is recorded in the run's
    /// [`Report`](crate::stage::Report), and the consumer goes on.
    Temporary,
}

/// Options of one subscription (consumer to producer).
///
/// ```
/// use flowstage::stage::SubscribeOptions;
/// let options = SubscribeOptions::<u64>::new().max_demand(100).min_demand(20);
/// assert_eq!(options.chunk_size(), 80);
/// ```
pub struct SubscribeOptions<T> {
    pub(crate) max_demand: usize,
    pub(crate) min_demand: Option<usize>,
    pub(crate) mode: DemandMode,
    pub(crate) cancel: Cancel,
    pub(crate) partition: Option<usize>,
    pub(crate) selector: Option<Selector<T>>,
    pub(crate) deferred: bool,
}

impl<T> std::fmt::Debug for SubscribeOptions<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscribeOptions")
            .field("max_demand", &self.max_demand)
            .field("min_demand", &self.min())
            .field("mode", &self.mode)
            .field("cancel", &self.cancel)
            .field("partition", &self.partition)
            .field("selector", &self.selector.is_some())
            .field("deferred", &self.deferred)
            .finish()
    }
}

impl<T> Default for SubscribeOptions<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> SubscribeOptions<T> {
    /// Defaults: `max_demand` 1000, `min_demand` half of it, automatic demand, transient.
    pub fn new() -> Self {
        SubscribeOptions {
            max_demand: DEFAULT_MAX_DEMAND,
            min_demand: None,
            mode: DemandMode::Automatic,
            cancel: Cancel::Transient,
            partition: None,
            selector: None,
            deferred: false,
        }
    }

    /// The most events this consumer has asked for and not received at any time.
    pub fn max_demand(mut self, max_demand: usize) -> Self {
        self.max_demand = max_demand;
        self
    }

    /// Outstanding demand at or below which the consumer asks for more (default `max / 2`).
    pub fn min_demand(mut self, min_demand: usize) -> Self {
        self.min_demand = Some(min_demand);
        self
    }

    /// Automatic (default) or manual demand.
    pub fn mode(mut self, mode: DemandMode) -> Self {
        self.mode = mode;
        self
    }

    /// What the consumer does when this producer finishes.
    pub fn cancel(mut self, cancel: Cancel) -> Self {
        self.cancel = cancel;
        self
    }

    /// The partition this consumer takes from a partition dispatcher (default: the order
    /// of subscription).
    pub fn partition(mut self, partition: usize) -> Self {
        self.partition = Some(partition);
        self
    }

    /// For a broadcast dispatcher: only events for which `selector` is true reach this
    /// consumer (the others do not use up its demand: their credit is given back, as
    /// GenStage does).
    pub fn selector(mut self, selector: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        self.selector = Some(Box::new(selector));
        self
    }

    /// Holds this subscription's first demand until every subscription of the consumer
    /// that is not deferred has ended: the consumer reads those inputs to their end before
    /// this one sends it anything. A hash join builds its table from one input this way
    /// before the other probes it, so the probing side is never held in memory. (With
    /// only deferred subscriptions, they start at once.)
    ///
    /// ```
    /// use flowstage::stage::{Pipeline, SubscribeOptions, consumer_fn, from_iter};
    /// use std::sync::{Arc, Mutex};
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let mut pipeline = Pipeline::new();
    /// let probe = pipeline.producer(from_iter(vec!["probe"; 3]));
    /// let table = pipeline.producer(from_iter(vec!["table"; 3]));
    /// let record = seen.clone();
    /// let sink = pipeline.consumer(consumer_fn(move |batch: Vec<&str>| {
    ///     record.lock().unwrap().extend(batch)
    /// }));
    /// pipeline.subscribe(&sink, &probe, SubscribeOptions::new().max_demand(1).deferred())?;
    /// pipeline.subscribe(&sink, &table, SubscribeOptions::new().max_demand(1))?;
    /// pipeline.run()?;
    /// assert_eq!(*seen.lock().unwrap(), ["table", "table", "table", "probe", "probe", "probe"]);
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    pub fn deferred(mut self) -> Self {
        self.deferred = true;
        self
    }

    /// The effective `min_demand`.
    pub fn min(&self) -> usize {
        self.min_demand.unwrap_or(self.max_demand / 2)
    }

    /// The largest chunk of events handed to the consumer at once: `max - min`.
    pub fn chunk_size(&self) -> usize {
        self.max_demand.saturating_sub(self.min()).max(1)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        validate_demand(self.max_demand, self.min())
    }
}

/// Checks `max >= 1` and `min < max`.
pub(crate) fn validate_demand(max: usize, min: usize) -> Result<()> {
    if max == 0 {
        return Err(FlowError::Config("max_demand must be at least 1".into()));
    }
    if min >= max {
        return Err(FlowError::Config(format!(
            "min_demand ({min}) must be less than max_demand ({max})"
        )));
    }
    Ok(())
}

/// The consumer's view of one subscription: outstanding demand and when to ask again.
#[derive(Debug, Clone)]
pub(crate) struct Inflow {
    max: usize,
    min: usize,
    mode: DemandMode,
    /// Asked for and not yet handled.
    outstanding: usize,
}

impl Inflow {
    pub(crate) fn new(max: usize, min: usize, mode: DemandMode) -> Self {
        Inflow {
            max,
            min,
            mode,
            outstanding: 0,
        }
    }

    /// The first ask, on subscribe (automatic mode only).
    pub(crate) fn initial_ask(&mut self) -> usize {
        match self.mode {
            DemandMode::Automatic => {
                self.outstanding = self.max;
                self.max
            }
            DemandMode::Manual => 0,
        }
    }

    /// The largest chunk to hand to the stage at once.
    pub(crate) fn chunk_size(&self) -> usize {
        (self.max - self.min).max(1)
    }

    /// `handled` events of this subscription were handled; returns how many to ask for now.
    pub(crate) fn handled(&mut self, handled: usize) -> usize {
        self.outstanding = self.outstanding.saturating_sub(handled);
        if self.mode == DemandMode::Automatic && self.outstanding <= self.min {
            let ask = self.max - self.outstanding;
            self.outstanding = self.max;
            ask
        } else {
            0
        }
    }

    /// A manual ask (counted so automatic bookkeeping stays right if modes mix).
    pub(crate) fn asked(&mut self, n: usize) {
        self.outstanding += n;
    }
}

/// The producer's credit towards one subscriber: demand received and not yet used.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Credit(usize);

/// The right to send up to `len()` events to one subscriber; only [`Credit::take`] makes one.
#[derive(Debug)]
#[must_use]
pub(crate) struct Permit(usize);

impl Permit {
    pub(crate) fn len(&self) -> usize {
        self.0
    }
}

impl Credit {
    pub(crate) fn grant(&mut self, n: usize) {
        self.0 = self.0.saturating_add(n);
    }

    pub(crate) fn available(&self) -> usize {
        self.0
    }

    /// Takes up to `n` events' worth of credit.
    pub(crate) fn take(&mut self, n: usize) -> Permit {
        let n = n.min(self.0);
        self.0 -= n;
        Permit(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays a counter producer into a consumer and returns the chunk sizes the consumer
    /// sees, with the producer answering each ask separately.
    fn chunks(max: usize, min: usize, total: usize) -> Vec<usize> {
        let mut inflow = Inflow::new(max, min, DemandMode::Automatic);
        let mut asks = std::collections::VecDeque::from([inflow.initial_ask()]);
        let mut seen = Vec::new();
        let mut sent = 0;
        while let Some(ask) = asks.pop_front() {
            let batch = ask.min(total - sent);
            sent += batch;
            let mut left = batch;
            while left > 0 {
                let chunk = left.min(inflow.chunk_size());
                seen.push(chunk);
                left -= chunk;
                let again = inflow.handled(chunk);
                if again > 0 {
                    asks.push_back(again);
                }
            }
            if sent == total {
                break;
            }
        }
        seen
    }

    #[test]
    fn default_demand_gives_halves() {
        assert_eq!(chunks(1000, 500, 2000), vec![500; 4]);
    }

    #[test]
    fn max_100_min_80_gives_twenties() {
        assert!(chunks(100, 80, 400).iter().all(|&c| c == 20));
    }

    #[test]
    fn max_100_min_20_gives_80_20_80() {
        assert_eq!(chunks(100, 20, 280)[..5], [80, 20, 80, 80, 20]);
    }

    #[test]
    fn max_1_min_0_one_at_a_time() {
        assert_eq!(chunks(1, 0, 5), vec![1; 5]);
    }

    #[test]
    fn credit_never_permits_more_than_granted() {
        let mut credit = Credit::default();
        credit.grant(5);
        assert_eq!(credit.take(10).len(), 5);
        assert_eq!(credit.take(1).len(), 0);
    }

    #[test]
    fn invalid_demand_is_a_config_error() {
        assert!(validate_demand(0, 0).is_err());
        assert!(validate_demand(10, 10).is_err());
        assert!(validate_demand(10, 9).is_ok());
    }
}
