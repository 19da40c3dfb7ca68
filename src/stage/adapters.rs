//! Stages from plain iterators and synchronous closures, for when a trait impl is more
//! than the job needs.

use super::{Consumer, ConsumerContext, Produced, Producer, ProducerConsumer};
use crate::error::StageError;

/// A producer over an iterator; see [`from_iter`].
#[derive(Debug)]
pub struct IterProducer<I> {
    iter: I,
}

/// A producer that emits the items of `iter`, as many as asked each time, and finishes
/// when the iterator ends.
///
/// ```
/// use flowstage::stage::{Produced, Producer, from_iter};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let mut producer = from_iter(0..3);
/// assert_eq!(producer.handle_demand(2).await.unwrap(), Produced::Events(vec![0, 1]));
/// assert_eq!(producer.handle_demand(2).await.unwrap(), Produced::Finished(vec![2]));
/// # });
/// ```
pub fn from_iter<I>(iter: I) -> IterProducer<I::IntoIter>
where
    I: IntoIterator,
    I::IntoIter: Send + 'static,
    I::Item: Send + 'static,
{
    IterProducer {
        iter: iter.into_iter(),
    }
}

impl<I> Producer for IterProducer<I>
where
    I: Iterator + Send + 'static,
    I::Item: Send + 'static,
{
    type Item = I::Item;

    async fn handle_demand(&mut self, demand: usize) -> Result<Produced<I::Item>, StageError> {
        let events: Vec<I::Item> = self.iter.by_ref().take(demand).collect();
        // Fewer than asked means the iterator ended; exactly as many may also be the end,
        // which the next call finds out (returning `Finished` with no events).
        Ok(if events.len() < demand {
            Produced::Finished(events)
        } else {
            Produced::Events(events)
        })
    }
}

/// A polling producer from a closure; see [`poll_fn`].
#[derive(Debug)]
pub struct PollFn<F> {
    poll: F,
}

/// A producer that calls `poll(demand)` when there is demand — the shape of a producer
/// polling an external system that is often empty. Returning `Produced::Events(vec![])`
/// is fine: the runtime asks again after the retry interval.
///
/// ```
/// use flowstage::stage::{Produced, poll_fn};
/// let mut next = 0;
/// let producer = poll_fn(move |demand: usize| {
///     let events: Vec<u32> = (next..(next + demand as u32).min(10)).collect();
///     next += events.len() as u32;
///     if next == 10 { Produced::Finished(events) } else { Produced::Events(events) }
/// });
/// # let _ = producer;
/// ```
pub fn poll_fn<T, F>(poll: F) -> PollFn<F>
where
    F: FnMut(usize) -> Produced<T> + Send + 'static,
    T: Send + 'static,
{
    PollFn { poll }
}

impl<T, F> Producer for PollFn<F>
where
    F: FnMut(usize) -> Produced<T> + Send + 'static,
    T: Send + 'static,
{
    type Item = T;

    async fn handle_demand(&mut self, demand: usize) -> Result<Produced<T>, StageError> {
        Ok((self.poll)(demand))
    }
}

/// A consumer from a closure; see [`consumer_fn`].
#[derive(Debug)]
pub struct ConsumerFn<F, T> {
    handle: F,
    _events: std::marker::PhantomData<fn(T)>,
}

/// A consumer that calls `handle` with each chunk of events.
///
/// ```
/// use flowstage::stage::consumer_fn;
/// let printer = consumer_fn(|batch: Vec<u32>| println!("{batch:?}"));
/// # let _ = printer;
/// ```
pub fn consumer_fn<T, F>(handle: F) -> ConsumerFn<F, T>
where
    F: FnMut(Vec<T>) + Send + 'static,
    T: Send + 'static,
{
    ConsumerFn {
        handle,
        _events: std::marker::PhantomData,
    }
}

impl<T, F> Consumer for ConsumerFn<F, T>
where
    F: FnMut(Vec<T>) + Send + 'static,
    T: Send + 'static,
{
    type Item = T;

    async fn handle_events(
        &mut self,
        events: Vec<T>,
        _context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        (self.handle)(events);
        Ok(())
    }
}

/// A producer-consumer from a closure; see [`producer_consumer_fn`].
#[derive(Debug)]
pub struct ProducerConsumerFn<F, I, O> {
    handle: F,
    _events: std::marker::PhantomData<fn(I) -> O>,
}

/// A producer-consumer that maps each chunk of input to a batch of output.
///
/// ```
/// use flowstage::stage::producer_consumer_fn;
/// let evens = producer_consumer_fn(|batch: Vec<u32>| {
///     batch.into_iter().filter(|n| n % 2 == 0).collect::<Vec<_>>()
/// });
/// # let _ = evens;
/// ```
pub fn producer_consumer_fn<I, O, F>(handle: F) -> ProducerConsumerFn<F, I, O>
where
    F: FnMut(Vec<I>) -> Vec<O> + Send + 'static,
    I: Send + 'static,
    O: Send + 'static,
{
    ProducerConsumerFn {
        handle,
        _events: std::marker::PhantomData,
    }
}

impl<I, O, F> ProducerConsumer for ProducerConsumerFn<F, I, O>
where
    F: FnMut(Vec<I>) -> Vec<O> + Send + 'static,
    I: Send + 'static,
    O: Send + 'static,
{
    type In = I;
    type Out = O;

    async fn handle_events(
        &mut self,
        events: Vec<I>,
        _context: &mut ConsumerContext,
    ) -> Result<Vec<O>, StageError> {
        Ok((self.handle)(events))
    }
}
