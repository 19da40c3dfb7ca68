//! Sources over iterators.

use super::{BoxedProducer, Source};
use crate::error::{FlowError, Result};
use crate::stage::from_iter;

/// One iterator, read by one producer; see [`Flow::from_iter`](crate::flow::Flow::from_iter).
#[derive(Debug)]
pub struct IterSource<I>(pub(crate) I);

impl<I> Source for IterSource<I>
where
    I: Iterator + Send + 'static,
    I::Item: Send + 'static,
{
    type Item = I::Item;

    fn into_producers(self) -> Result<Vec<BoxedProducer<I::Item>>> {
        Ok(vec![BoxedProducer::new(from_iter(self.0))])
    }

    /// Worker `w` of `W` reads the elements `i` with `i % W == w` (every worker iterates
    /// its own copy of the iterator and skips the others').
    #[cfg(feature = "timely")]
    fn into_worker_producers(
        self,
        worker: usize,
        workers: usize,
    ) -> Result<Vec<Option<BoxedProducer<I::Item>>>> {
        let workers = workers.max(1);
        let mut mine = Some(self.0.skip(worker).step_by(workers));
        Ok((0..workers)
            .map(|w| {
                if w == worker {
                    mine.take().map(|iter| BoxedProducer::new(from_iter(iter)))
                } else {
                    None
                }
            })
            .collect())
    }
}

/// Several iterators, one producer each; see
/// [`Flow::from_iters`](crate::flow::Flow::from_iters).
#[derive(Debug)]
pub struct ItersSource<I>(pub(crate) Vec<I>);

impl<I> Source for ItersSource<I>
where
    I: Iterator + Send + 'static,
    I::Item: Send + 'static,
{
    type Item = I::Item;

    fn into_producers(self) -> Result<Vec<BoxedProducer<I::Item>>> {
        if self.0.is_empty() {
            return Err(FlowError::Config(
                "from_iters needs at least one iterator".into(),
            ));
        }
        Ok(self
            .0
            .into_iter()
            .map(|iter| BoxedProducer::new(from_iter(iter)))
            .collect())
    }

    /// Iterator `i` goes to worker `i % W`.
    #[cfg(feature = "timely")]
    fn into_worker_producers(
        self,
        worker: usize,
        workers: usize,
    ) -> Result<Vec<Option<BoxedProducer<I::Item>>>> {
        Ok(super::share(self.into_producers()?, worker, workers))
    }
}
