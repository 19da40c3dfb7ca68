//! Sources: where a flow's events come from.
//!
//! Anything that implements [`Source`] can start a flow
//! ([`Flow::from_source`](crate::flow::Flow::from_source)). A source becomes one or more
//! producers of the stage layer — one per parallel reader. The crate's own sources
//! (iterators, several iterators, rayon parallel iterators, async streams, user
//! producers) are in this module, one per file; users implement [`Source`] for their own
//! systems.

// `unsafe` is forbidden in every module here but `mmap`, the one that maps files.
#[forbid(unsafe_code)]
mod chunk;
#[cfg(feature = "csv")]
#[forbid(unsafe_code)]
mod csv;
#[forbid(unsafe_code)]
mod file;
#[forbid(unsafe_code)]
mod input;
#[forbid(unsafe_code)]
mod iter;
#[cfg(feature = "json")]
#[forbid(unsafe_code)]
mod json;
#[forbid(unsafe_code)]
mod lines;
mod mmap;
#[forbid(unsafe_code)]
mod par_iter;
#[cfg(any(feature = "csv", feature = "json"))]
#[forbid(unsafe_code)]
mod parsed;
#[forbid(unsafe_code)]
mod poll;
#[cfg(feature = "progress")]
#[forbid(unsafe_code)]
mod progress;
#[forbid(unsafe_code)]
mod reader;
#[cfg(feature = "redis")]
#[forbid(unsafe_code)]
pub(crate) mod redis;
#[cfg(feature = "redis")]
#[forbid(unsafe_code)]
pub(crate) mod redis_url;
#[forbid(unsafe_code)]
mod stages;
#[forbid(unsafe_code)]
mod stream;
#[forbid(unsafe_code)]
mod word;

use std::future::Future;
use std::pin::Pin;

pub use chunk::{Chunk, Delimiter, IntoWords, Words, is_word_separator};
#[cfg(feature = "csv")]
pub use csv::CsvSource;
pub use file::{DEFAULT_BLOCK_SIZE, FileCounters, FileSource};
pub use iter::{IterSource, ItersSource};
#[cfg(feature = "json")]
pub use json::JsonLinesSource;
pub use lines::LinesSource;
pub use par_iter::ParIterSource;
#[cfg(any(feature = "csv", feature = "json"))]
pub use parsed::{BadRecord, Bare, Locate, Located};
pub use poll::{ChannelSource, PollSource};
pub use reader::{ReaderSource, stdin};
#[cfg(feature = "redis")]
pub use redis::{EntryId, RedisCounters, RedisStreamSource, StreamEntry};
pub use stages::StagesSource;
pub use stream::{StreamProducer, StreamSource};
pub use word::Word;

use crate::error::{Result, StageError};
use crate::stage::{Produced, Producer};

/// Something a flow can read from: it splits into producers, one per parallel reader.
///
/// ```
/// use flowstage::source::{BoxedProducer, Source};
/// use flowstage::stage::from_iter;
///
/// /// Numbers `0..n`, read by two producers (evens and odds).
/// struct TwoReaders(u64);
///
/// impl Source for TwoReaders {
///     type Item = u64;
///     fn into_producers(self) -> flowstage::Result<Vec<BoxedProducer<u64>>> {
///         Ok(vec![
///             BoxedProducer::new(from_iter((0..self.0).step_by(2))),
///             BoxedProducer::new(from_iter((1..self.0).step_by(2))),
///         ])
///     }
/// }
///
/// let mut all: Vec<u64> = flowstage::flow::Flow::from_source(TwoReaders(10)).collect()?;
/// all.sort();
/// assert_eq!(all, (0..10).collect::<Vec<_>>());
/// # Ok::<(), flowstage::FlowError>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a flow source",
    label = "not a `Source`",
    note = "`Flow::from_source` takes a `flowstage::source::Source`; for an iterator write \
            `Flow::from_iter`, for a stream `Flow::from_stream`, for producer stages \
            `Flow::from_stages`"
)]
pub trait Source: Send + 'static {
    /// The events the source emits.
    type Item: Send + 'static;

    /// Splits the source into its producers (at least one). Errors here (a missing file,
    /// an empty list) end the run before any stage starts.
    fn into_producers(self) -> Result<Vec<BoxedProducer<Self::Item>>>;

    /// How long the runtime waits before asking a producer that had nothing to give
    /// again (see [`ProducerOptions::retry_interval`](crate::stage::ProducerOptions));
    /// `None`, the default, keeps the runtime's.
    fn retry_interval(&self) -> Option<std::time::Duration> {
        None
    }

    /// The counters of the source's error policy, for a parsing source that has one
    /// (the CSV and JSON-lines sources): the run's [`Report`](crate::stage::Report) lists
    /// them under the returned name. The default has none.
    fn error_counters(
        &self,
    ) -> Option<(&'static str, std::sync::Arc<crate::stage::ErrorCounters>)> {
        None
    }

    /// Adds what the source's error policy needs to the run being built: its counters in
    /// the report (from [`error_counters`](Source::error_counters), the default) and, for
    /// a policy that sends dead letters to a consumer, that consumer's stages. The crate's
    /// parsing sources override it; other sources keep the default.
    #[doc(hidden)]
    fn add_error_stages(&self, pipeline: &mut crate::stage::Pipeline) -> Result<()> {
        if let Some((operator, counters)) = self.error_counters() {
            pipeline.error_counters(operator, counters);
        }
        Ok(())
    }

    /// The share of worker `worker` (of `workers`, over every process) of this source,
    /// for a [`cluster`](crate::cluster) run where every worker builds the same source:
    /// one entry per share, the same number on every worker, `Some` for the shares this
    /// worker reads. The crate's iterator, file, CSV and JSON-lines sources share
    /// themselves out; the default has one share, read by worker 0 (in process 0) — all of
    /// the source's producers in turn — and the other workers drop their copy of the
    /// source unread.
    ///
    /// ```
    /// use flowstage::source::{BoxedProducer, Source};
    /// use flowstage::stage::from_iter;
    ///
    /// /// Numbers `0..n` in two halves; on a cluster, worker `w` of `W` reads the halves
    /// /// `h` with `h % W == w`.
    /// struct Halves(u64);
    ///
    /// impl Halves {
    ///     fn halves(&self) -> Vec<BoxedProducer<u64>> {
    ///         let n = self.0;
    ///         vec![BoxedProducer::new(from_iter(0..n / 2)), BoxedProducer::new(from_iter(n / 2..n))]
    ///     }
    /// }
    ///
    /// impl Source for Halves {
    ///     type Item = u64;
    ///     fn into_producers(self) -> flowstage::Result<Vec<BoxedProducer<u64>>> {
    ///         Ok(self.halves())
    ///     }
    ///     fn into_worker_producers(
    ///         self,
    ///         worker: usize,
    ///         workers: usize,
    ///     ) -> flowstage::Result<Vec<Option<BoxedProducer<u64>>>> {
    ///         Ok(self.halves().into_iter().enumerate()
    ///             .map(|(h, p)| (h % workers == worker).then_some(p))
    ///             .collect())
    ///     }
    /// }
    ///
    /// let shares = Halves(10).into_worker_producers(1, 2)?;
    /// assert!(shares[0].is_none() && shares[1].is_some());
    /// # Ok::<(), flowstage::FlowError>(())
    /// ```
    #[cfg(feature = "timely")]
    fn into_worker_producers(
        self,
        worker: usize,
        workers: usize,
    ) -> Result<Vec<Option<BoxedProducer<Self::Item>>>>
    where
        Self: Sized,
    {
        let _ = workers;
        if worker != 0 {
            return Ok(vec![None]);
        }
        let mut producers = self.into_producers()?;
        Ok(vec![Some(if producers.len() == 1 {
            producers.remove(0)
        } else {
            BoxedProducer::new(InTurn { producers, next: 0 })
        })])
    }
}

/// Several producers read as one, in turn (a source without worker shares on the
/// cluster, read by one worker).
#[cfg(feature = "timely")]
struct InTurn<T> {
    producers: Vec<BoxedProducer<T>>,
    next: usize,
}

#[cfg(feature = "timely")]
impl<T: Send + 'static> Producer for InTurn<T> {
    type Item = T;

    async fn handle_demand(
        &mut self,
        demand: usize,
    ) -> std::result::Result<Produced<T>, StageError> {
        // One producer per call: each answer is one producer's batch, in its order.
        if self.producers.is_empty() {
            return Ok(Produced::Finished(Vec::new()));
        }
        let at = self.next % self.producers.len();
        let produced = self.producers[at].handle_demand(demand).await?;
        Ok(match produced {
            Produced::Events(events) => {
                self.next = at + 1;
                Produced::Events(events)
            }
            Produced::Finished(events) => {
                drop(self.producers.remove(at));
                self.next = at;
                if self.producers.is_empty() {
                    Produced::Finished(events)
                } else {
                    Produced::Events(events)
                }
            }
        })
    }
}

/// Shares out `producers` over `workers`: producer `i` goes to worker `i % workers`.
#[cfg(feature = "timely")]
pub(crate) fn share<T>(
    producers: Vec<BoxedProducer<T>>,
    worker: usize,
    workers: usize,
) -> Vec<Option<BoxedProducer<T>>> {
    producers
        .into_iter()
        .enumerate()
        .map(|(i, producer)| (i % workers.max(1) == worker).then_some(producer))
        .collect()
}

type HandleDemand<'a, T> =
    Pin<Box<dyn Future<Output = std::result::Result<Produced<T>, StageError>> + Send + 'a>>;

/// The object-safe form of [`Producer`].
trait DynProducer<T>: Send {
    fn handle_demand_boxed(&mut self, demand: usize) -> HandleDemand<'_, T>;
}

impl<P: Producer> DynProducer<P::Item> for P {
    fn handle_demand_boxed(&mut self, demand: usize) -> HandleDemand<'_, P::Item> {
        Box::pin(self.handle_demand(demand))
    }
}

/// A producer of any type, boxed: what a [`Source`] splits into. The box costs one dynamic
/// call (and one small allocation) per batch, never per event.
pub struct BoxedProducer<T>(Box<dyn DynProducer<T>>);

impl<T> std::fmt::Debug for BoxedProducer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxedProducer")
    }
}

impl<T: Send + 'static> BoxedProducer<T> {
    /// Boxes `producer`.
    pub fn new(producer: impl Producer<Item = T> + 'static) -> Self {
        BoxedProducer(Box::new(producer))
    }
}

impl<T: Send + 'static> Producer for BoxedProducer<T> {
    type Item = T;

    fn handle_demand(
        &mut self,
        demand: usize,
    ) -> impl Future<Output = std::result::Result<Produced<T>, StageError>> + Send {
        self.0.handle_demand_boxed(demand)
    }
}
