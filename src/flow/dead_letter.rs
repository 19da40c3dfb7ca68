//! Dead letters into a consumer of their own.
//!
//! [`ErrorPolicy::dead_letter`](super::ErrorPolicy::dead_letter) takes any
//! [`Consumer`] of [`DeadLetter`]s (a `CsvSink`, a `JsonLinesSink`, a blocking sink that
//! owns a database connection, ...). When the flow is compiled, the policy adds two
//! stages to the run: a producer that takes the letters out of a bounded channel under
//! its consumer's demand, and the consumer. Every stage running the fallible operator
//! holds a sender; a stage whose letters find the channel full waits (after its batch)
//! until there is room, so a slow dead-letter consumer slows the stages that make
//! letters instead of letting them pile up. When those stages have finished, the senders
//! are gone, the producer finishes, and the consumer's `handle_done` runs (a file sink
//! flushes) before the run ends.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::fallible::DeadLetter;
use crate::error::{Result, StageError};
use crate::stage::{
    Consumer, ConsumerOptions, ErrorCounters, Pipeline, Produced, Producer, ProducerOptions,
    SubscribeOptions,
};

/// Work a stage has to wait for after a batch before it takes more input: letters on
/// their way to a dead-letter consumer whose channel was full. See
/// [`Logic::side_output`](super::Logic::side_output).
pub type SideOutput = Pin<Box<dyn Future<Output = std::result::Result<(), StageError>> + Send>>;

/// Batches of letters in the channel at once (per operator, whatever the stage count):
/// enough that a consumer never waits for a sender, few enough to bound the memory.
const CHANNEL_BATCHES: usize = 4;

/// The stages a dead-letter policy adds to a run, until the run is compiled.
type Install = Box<dyn FnOnce(&mut Pipeline, &str) -> Result<()> + Send>;

/// The sending side of a dead-letter consumer, shared by the operator's stages.
pub(crate) struct Letterbox<T> {
    tx: mpsc::Sender<Vec<DeadLetter<T>>>,
    /// Takes the consumer and the receiver into the pipeline; `None` once done.
    install: Arc<Mutex<Option<Install>>>,
}

impl<T> Clone for Letterbox<T> {
    fn clone(&self) -> Self {
        Letterbox {
            tx: self.tx.clone(),
            install: self.install.clone(),
        }
    }
}

impl<T: Send + 'static> Letterbox<T> {
    pub(crate) fn new<C>(consumer: C) -> Self
    where
        C: Consumer<Item = DeadLetter<T>> + 'static,
    {
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let install: Install = Box::new(move |pipeline: &mut Pipeline, operator: &str| {
            let letters = pipeline.producer_with(
                LetterSource {
                    rx,
                    ready: VecDeque::new(),
                },
                ProducerOptions::new().name(format!("dead-letters[{operator}]")),
            );
            let sink = pipeline.consumer_with(
                consumer,
                ConsumerOptions::new().name(format!("dead-letter-sink[{operator}]")),
            );
            pipeline.subscribe(&sink, &letters, SubscribeOptions::new())?;
            Ok(())
        });
        Letterbox {
            tx,
            install: Arc::new(Mutex::new(Some(install))),
        }
    }
}

impl<T> Letterbox<T> {
    /// Adds the letter stages to `pipeline` (once: later calls do nothing, so a policy
    /// shared by several operators has one consumer).
    pub(crate) fn install(&self, pipeline: &mut Pipeline, operator: &str) -> Result<()> {
        let install = self
            .install
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match install {
            Some(install) => install(pipeline, operator),
            None => Ok(()),
        }
    }

    /// Sends `letters` now if the channel has room (and none of this stage's letters
    /// wait before them: `behind`); otherwise returns the wait, which counts them once
    /// sent.
    pub(crate) fn send(
        &self,
        letters: Vec<DeadLetter<T>>,
        operator: &'static str,
        counters: &Arc<ErrorCounters>,
        behind: bool,
    ) -> Option<SideOutput>
    where
        T: Send + 'static,
    {
        let count = letters.len() as u64;
        let wait = |letters| -> Option<SideOutput> {
            let (tx, counters) = (self.tx.clone(), counters.clone());
            Some(Box::pin(async move {
                tx.send(letters).await.map_err(|_| stopped(operator))?;
                counters.add_dead_lettered(count);
                Ok(())
            }))
        };
        if behind {
            return wait(letters);
        }
        match self.tx.try_send(letters) {
            Ok(()) => {
                counters.add_dead_lettered(count);
                None
            }
            Err(mpsc::error::TrySendError::Full(letters)) => wait(letters),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Some(Box::pin(std::future::ready(Err(stopped(operator)))))
            }
        }
    }
}

fn stopped(operator: &str) -> StageError {
    // The consumer's own error, if it failed, is what the run reports.
    format!("{operator}: the dead-letter consumer has stopped").into()
}

/// The producer of the letters: takes what the operator's stages sent, at most the
/// demand at a time, and finishes when every sender is gone.
struct LetterSource<T> {
    rx: mpsc::Receiver<Vec<DeadLetter<T>>>,
    ready: VecDeque<DeadLetter<T>>,
}

impl<T: Send + 'static> Producer for LetterSource<T> {
    type Item = DeadLetter<T>;

    async fn handle_demand(
        &mut self,
        demand: usize,
    ) -> std::result::Result<Produced<DeadLetter<T>>, StageError> {
        let mut finished = false;
        if self.ready.is_empty() {
            match self.rx.recv().await {
                Some(letters) => self.ready.extend(letters),
                None => finished = true,
            }
        }
        // Whatever else has arrived, without waiting.
        while !finished && self.ready.len() < demand {
            match self.rx.try_recv() {
                Ok(letters) => self.ready.extend(letters),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => finished = true,
            }
        }
        let take = demand.min(self.ready.len());
        let out: Vec<_> = self.ready.drain(..take).collect();
        Ok(if finished && self.ready.is_empty() {
            Produced::Finished(out)
        } else {
            Produced::Events(out)
        })
    }
}
