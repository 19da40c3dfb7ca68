//! A source over a rayon parallel iterator.
//!
//! rayon pushes items from its own threads; the flow pulls on demand. The bridge is a
//! bounded channel of batches: rayon's workers fill batches and block when the channel is
//! full (backpressure), and the flow's producers — one per core, sharing the channel —
//! take batches as their consumers ask.
//!
//! A panic inside the rayon job (in the user's closures) is caught there and handed to
//! the producer that reads next, which panics with it in its stage: the run ends with
//! `FlowError::StagePanicked` naming that stage, as for a panic anywhere else. (Uncaught,
//! a panic in a `rayon::spawn` job aborts the process.)

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

/// What the rayon job sends: a batch, or the payload of a panic that ended it.
type Message<T> = std::result::Result<Vec<T>, Box<dyn std::any::Any + Send>>;

type Shared<T> = Arc<Mutex<mpsc::Receiver<Message<T>>>>;

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
        let (tx, rx) = mpsc::channel::<Message<I::Item>>(self.readers.max(1) * 2);
        let iter = self.iter;
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            rayon::spawn(move || {
                let panicked = tx.clone();
                let job = std::panic::AssertUnwindSafe(move || drive(iter, tx));
                if let Err(payload) = std::panic::catch_unwind(job) {
                    // The readers see it after every batch sent before it.
                    let _ = panicked.blocking_send(Err(payload));
                }
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

/// Runs `iter` to its end (or until the flow is gone), sending its items in batches.
fn drive<I: ParallelIterator>(iter: I, tx: mpsc::Sender<Message<I::Item>>) {
    // Set when a send finds the flow gone (its output dropped, or it failed): `while_some`
    // then stops the whole job, which would otherwise hold rayon's pool until the iterator
    // is exhausted — forever, for an unbounded one. Written once; a stale read costs at
    // most a few items, so `Relaxed`.
    let gone = Arc::new(AtomicBool::new(false));
    let (sender, stop) = (tx.clone(), gone.clone());
    let leftovers = iter
        .map(move |item| (!gone.load(Ordering::Relaxed)).then_some(item))
        .while_some()
        .fold(Vec::new, move |mut batch, item| {
            batch.push(item);
            if batch.len() >= BATCH
                && sender
                    .blocking_send(Ok(std::mem::take(&mut batch)))
                    .is_err()
            {
                stop.store(true, Ordering::Relaxed);
            }
            batch
        });
    leftovers.for_each(|batch| {
        if !batch.is_empty() {
            let _ = tx.blocking_send(Ok(batch));
        }
    });
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
            Some(Ok(batch)) => Ok(Produced::Events(batch)),
            // The user's closure panicked on a rayon thread: panic here, in this stage, so
            // that the run ends naming it.
            Some(Err(payload)) => std::panic::resume_unwind(payload),
            None => Ok(Produced::Finished(Vec::new())),
        }
    }
}
