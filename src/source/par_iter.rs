//! A source over a rayon parallel iterator.
//!
//! rayon pushes items from its own threads; the flow pulls on demand. The bridge is a
//! bounded channel of batches: rayon's workers fill batches and block when the channel is
//! full (backpressure), and the flow's producers — one per core, sharing the channel —
//! take batches as their consumers ask.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::iter::ParallelIterator;
use tokio::sync::{Mutex, mpsc};

use super::{BoxedProducer, Source};
use crate::error::{Result, StageError};
use crate::stage::{Produced, Producer};

/// Events per batch on the rayon side.
const BATCH: usize = 1024;

/// A rayon parallel iterator; see [`Flow::from_par_iter`](crate::flow::Flow::from_par_iter).
#[derive(Debug)]
pub struct ParIterSource<I> {
    pub(crate) iter: I,
    pub(crate) readers: usize,
}

type Shared<T> = Arc<Mutex<mpsc::Receiver<Vec<T>>>>;

/// The rayon job, taken by whichever producer is asked first.
type StartJob = Arc<std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>>;

struct ParIterProducer<T> {
    batches: Shared<T>,
    /// Starts the rayon job on the first demand, so nothing runs before the flow does.
    start: Option<StartJob>,
}

impl<I> Source for ParIterSource<I>
where
    I: ParallelIterator + 'static,
{
    type Item = I::Item;

    fn into_producers(self) -> Result<Vec<BoxedProducer<I::Item>>> {
        let (tx, rx) = mpsc::channel::<Vec<I::Item>>(self.readers.max(1) * 2);
        let iter = self.iter;
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            rayon::spawn(move || {
                // Set when a send finds the flow gone (its output dropped, or it failed):
                // `while_some` then stops the whole job, which would otherwise hold rayon's
                // pool until the iterator is exhausted — forever, for an unbounded one.
                // Written once; a stale read costs at most a few items, so `Relaxed`.
                let gone = Arc::new(AtomicBool::new(false));
                let (sender, stop) = (tx.clone(), gone.clone());
                let leftovers = iter
                    .map(move |item| (!gone.load(Ordering::Relaxed)).then_some(item))
                    .while_some()
                    .fold(Vec::new, move |mut batch, item| {
                        batch.push(item);
                        if batch.len() >= BATCH
                            && sender.blocking_send(std::mem::take(&mut batch)).is_err()
                        {
                            stop.store(true, Ordering::Relaxed);
                        }
                        batch
                    });
                leftovers.for_each(|batch| {
                    if !batch.is_empty() {
                        let _ = tx.blocking_send(batch);
                    }
                });
            });
        });
        let start = Arc::new(std::sync::Mutex::new(Some(job)));
        let batches: Shared<I::Item> = Arc::new(Mutex::new(rx));
        Ok((0..self.readers.max(1))
            .map(|_| {
                BoxedProducer::new(ParIterProducer {
                    batches: batches.clone(),
                    start: Some(start.clone()),
                })
            })
            .collect())
    }
}

impl<T: Send + 'static> Producer for ParIterProducer<T> {
    type Item = T;

    async fn handle_demand(
        &mut self,
        _demand: usize,
    ) -> std::result::Result<Produced<T>, StageError> {
        if let Some(start) = self.start.take() {
            let job = start.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(job) = job {
                job();
            }
        }
        // A batch may exceed the demand by less than one batch; the surplus waits in the
        // stage's buffer.
        match self.batches.lock().await.recv().await {
            Some(batch) => Ok(Produced::Events(batch)),
            None => Ok(Produced::Finished(Vec::new())),
        }
    }
}
