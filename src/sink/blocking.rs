//! A sink that owns its state and does its work on tokio's blocking pool.

use std::marker::PhantomData;

use crate::error::StageError;
use crate::flow::Batch;
use crate::stage::{Consumer, ConsumerContext};

/// What a blocking sink's closure returns.
pub type BlockingResult = Result<(), StageError>;

type Done<S> = Box<dyn FnOnce(S) -> BlockingResult + Send>;

/// A sink whose closure runs on tokio's blocking pool with its state; see [`blocking`].
pub struct Blocking<S, F, T> {
    /// The state and the closure, moved to the blocking thread for each batch and back.
    parts: Option<(S, F)>,
    done: Option<Done<S>>,
    _events: PhantomData<fn(T)>,
}

impl<S, F, T> std::fmt::Debug for Blocking<S, F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blocking")
    }
}

/// A sink for blocking work — a SQLite connection, a synchronous client, a file written
/// with `std::io` — that owns its `state` and runs `write(&mut state, batch)` for each
/// batch on tokio's blocking pool (`spawn_blocking`), never on the threads that run the
/// stages. The state is moved, not shared: no `Arc<Mutex<_>>`, and a `Send` value that is
/// not `Sync` (a `rusqlite::Connection`) is fine. While a batch is written the sink asks
/// for nothing more, so a slow write slows the sources. An `Err` (or a panic) ends the
/// run, naming the sink's stage.
///
/// Run it with [`Flow::run_into`](crate::flow::Flow::run_into), or give it to
/// [`ErrorPolicy::dead_letter`](crate::flow::ErrorPolicy::dead_letter). After
/// [`batch(size, timeout)`](crate::flow::Flow::batch), the events are batches: use
/// [`blocking_batches`], whose closure gets one batch at a time.
///
/// ```
/// use flowstage::flow::Flow;
/// use flowstage::sink;
/// use std::io::Write;
///
/// # let path = std::env::temp_dir().join(format!("flowstage-doc-blocking-{}.txt", std::process::id()));
/// let file = std::fs::File::create(&path)?;
/// let writer = sink::blocking(std::io::BufWriter::new(file), |out, lines: Vec<String>| {
///     for line in lines {
///         writeln!(out, "{line}")?;
///     }
///     Ok(())
/// })
/// .on_done(|mut out| Ok(out.flush()?)); // on the blocking pool too, once at the end
/// Flow::from_iter(1..=3u32).map(|n| n.to_string()).run_into(writer)?;
/// assert_eq!(std::fs::read_to_string(&path)?, "1\n2\n3\n");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn blocking<S, T, F>(state: S, write: F) -> Blocking<S, F, T>
where
    S: Send + 'static,
    T: Send + 'static,
    F: FnMut(&mut S, Vec<T>) -> BlockingResult + Send + 'static,
{
    Blocking {
        parts: Some((state, write)),
        done: None,
        _events: PhantomData,
    }
}

/// A blocking sink for the batches of [`batch(size, timeout)`](crate::flow::Flow::batch):
/// `write(&mut state, batch)` runs once per batch (one transaction per batch, say), on
/// tokio's blocking pool; otherwise as [`blocking`].
///
/// ```
/// use flowstage::flow::Flow;
/// use flowstage::sink;
/// use std::time::Duration;
///
/// let (tx, rx) = std::sync::mpsc::channel();
/// let sizes = sink::blocking_batches(Vec::new(), |sizes: &mut Vec<usize>, batch: Vec<u32>| {
///     sizes.push(batch.len()); // e.g. one INSERT transaction per batch
///     Ok(())
/// })
/// .on_done(move |sizes| Ok(tx.send(sizes)?));
/// Flow::from_iter(0..10u32).batch(4, Duration::from_secs(1)).run_into(sizes)?;
/// assert_eq!(rx.recv()?, [4, 4, 2]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[allow(clippy::type_complexity)] // the closure adapter's type is only ever inferred
pub fn blocking_batches<S, T, F>(
    state: S,
    mut write: F,
) -> Blocking<S, impl FnMut(&mut S, Vec<Batch<T>>) -> BlockingResult + Send + 'static, Batch<T>>
where
    S: Send + 'static,
    T: Send + 'static,
    F: FnMut(&mut S, Vec<T>) -> BlockingResult + Send + 'static,
{
    blocking(state, move |state: &mut S, batches: Vec<Batch<T>>| {
        batches
            .into_iter()
            .try_for_each(|batch| write(&mut *state, batch.into_inner()))
    })
}

impl<S, F, T> Blocking<S, F, T> {
    /// Calls `done(state)` once, on the blocking pool, after the last batch (a commit, a
    /// flush, handing the state back over a channel). Its `Err` ends the run.
    pub fn on_done<D>(mut self, done: D) -> Self
    where
        D: FnOnce(S) -> BlockingResult + Send + 'static,
    {
        self.done = Some(Box::new(done));
        self
    }
}

/// Runs `work` on the blocking pool; a panic in it becomes the stage's error.
pub(crate) async fn off_workers<R, W>(work: W) -> Result<R, StageError>
where
    R: Send + 'static,
    W: FnOnce() -> R + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| match error.try_into_panic() {
            Ok(panic) => format!("panicked: {}", crate::error::panic_message(&*panic)).into(),
            Err(error) => StageError::from(format!("the blocking task was cancelled: {error}")),
        })
}

impl<S, F, T> Consumer for Blocking<S, F, T>
where
    S: Send + 'static,
    T: Send + 'static,
    F: FnMut(&mut S, Vec<T>) -> BlockingResult + Send + 'static,
{
    type Item = T;

    async fn handle_events(
        &mut self,
        events: Vec<T>,
        _context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        let Some((mut state, mut write)) = self.parts.take() else {
            return Err("the blocking sink failed before".into());
        };
        let (parts, result) = off_workers(move || {
            let result = write(&mut state, events);
            ((state, write), result)
        })
        .await?;
        self.parts = Some(parts);
        result
    }

    async fn handle_done(&mut self) -> Result<(), StageError> {
        match (self.parts.take(), self.done.take()) {
            (Some((state, _)), Some(done)) => off_workers(move || done(state)).await?,
            _ => Ok(()),
        }
    }
}
