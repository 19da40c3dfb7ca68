//! Sources for systems outside the flow: a tokio channel, and a polling function for
//! external systems that are often empty.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{BoxedProducer, Source};
use crate::error::{Result, StageError};
use crate::stage::{Produced, Producer};

/// The receiving end of a bounded tokio channel, read by one producer; see
/// [`Flow::from_channel`](crate::flow::Flow::from_channel). The flow ends when every
/// sender is dropped. While the flow is slow, the channel fills and senders wait in
/// `send().await`: backpressure reaches whoever feeds the channel.
#[derive(Debug)]
pub struct ChannelSource<T>(pub(crate) mpsc::Receiver<T>);

impl<T: Send + 'static> Source for ChannelSource<T> {
    type Item = T;

    fn into_producers(self) -> Result<Vec<BoxedProducer<T>>> {
        Ok(vec![BoxedProducer::new(ChannelProducer(self.0))])
    }
}

struct ChannelProducer<T>(mpsc::Receiver<T>);

impl<T: Send + 'static> Producer for ChannelProducer<T> {
    type Item = T;

    async fn handle_demand(
        &mut self,
        demand: usize,
    ) -> std::result::Result<Produced<T>, StageError> {
        // Wait for the first event, then take whatever else is already there.
        let mut events = Vec::with_capacity(demand.min(1024));
        if self.0.recv_many(&mut events, demand.max(1)).await == 0 {
            return Ok(Produced::Finished(events));
        }
        Ok(Produced::Events(events))
    }
}

/// A function polled for events, for an external system that is often empty (a queue
/// table, an HTTP endpoint); see [`Flow::from_poll`](crate::flow::Flow::from_poll).
///
/// `poll(demand)` returns what is there now: `Produced::Events(vec![])` when there is
/// nothing is fine — the runtime keeps the demand and polls again after the interval
/// (the no-stall rule: the flow never forgets to ask) — and `Produced::Finished` ends
/// the source.
pub struct PollSource<F> {
    pub(crate) poll: F,
    pub(crate) interval: Duration,
}

impl<F> std::fmt::Debug for PollSource<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollSource")
            .field("interval", &self.interval)
            .finish()
    }
}

impl<T, F> Source for PollSource<F>
where
    T: Send + 'static,
    F: FnMut(usize) -> Produced<T> + Send + 'static,
{
    type Item = T;

    fn into_producers(self) -> Result<Vec<BoxedProducer<T>>> {
        Ok(vec![BoxedProducer::new(crate::stage::poll_fn(self.poll))])
    }

    fn retry_interval(&self) -> Option<Duration> {
        Some(self.interval)
    }
}
