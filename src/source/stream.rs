//! A source over an async stream.

use futures::{FutureExt, Stream, StreamExt};

use super::{BoxedProducer, Source};
use crate::error::{Result, StageError};
use crate::stage::{Produced, Producer};

/// Any `futures::Stream`, read by one producer; see
/// [`Flow::from_stream`](crate::flow::Flow::from_stream). The stream need not be `Unpin`
/// (an `async_stream`, a stream holding futures): it is pinned on the heap once.
#[derive(Debug)]
pub struct StreamSource<S>(pub(crate) S);

impl<S> Source for StreamSource<S>
where
    S: Stream + Send + 'static,
    S::Item: Send + 'static,
{
    type Item = S::Item;

    fn into_producers(self) -> Result<Vec<BoxedProducer<S::Item>>> {
        Ok(vec![BoxedProducer::new(StreamProducer(Box::pin(self.0)))])
    }
}

/// A producer that answers demand from a stream: it waits for the first item, then takes
/// whatever else is ready without waiting, up to the demand. The stream is polled in
/// place, so it must be `Unpin`: pin one that is not with `Box::pin`.
#[derive(Debug)]
pub struct StreamProducer<S>(pub S);

impl<S> Producer for StreamProducer<S>
where
    S: Stream + Send + Unpin + 'static,
    S::Item: Send + 'static,
{
    type Item = S::Item;

    async fn handle_demand(
        &mut self,
        demand: usize,
    ) -> std::result::Result<Produced<S::Item>, StageError> {
        let Some(first) = self.0.next().await else {
            return Ok(Produced::Finished(Vec::new()));
        };
        let mut events = Vec::with_capacity(demand.min(1024));
        events.push(first);
        while events.len() < demand {
            match self.0.next().now_or_never() {
                Some(Some(item)) => events.push(item),
                Some(None) => return Ok(Produced::Finished(events)),
                None => break,
            }
        }
        Ok(Produced::Events(events))
    }
}
