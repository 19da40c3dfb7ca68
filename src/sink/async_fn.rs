//! An async sink from a closure.

use std::future::Future;
use std::marker::PhantomData;

use crate::error::StageError;
use crate::stage::{Consumer, ConsumerContext};

/// A sink that awaits `write(batch)` for each batch; see [`async_fn`].
pub struct AsyncFn<F, T> {
    write: F,
    _events: PhantomData<fn(T)>,
}

impl<F, T> std::fmt::Debug for AsyncFn<F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncFn")
    }
}

/// A sink for [`Flow::run_into`](crate::flow::Flow::run_into) that awaits
/// `write(batch)` for each batch — an HTTP call, a database write. While it awaits, the
/// flow asks for nothing more: a slow `write` slows the sources, and nothing piles up
/// in between. An `Err` ends the run.
///
/// ```
/// use flowstage::flow::Flow;
/// use flowstage::sink::async_fn;
/// use std::sync::{Arc, Mutex};
///
/// let written = Arc::new(Mutex::new(Vec::new()));
/// let into = written.clone();
/// Flow::from_iter(1..=5u32).run_into(async_fn(move |batch: Vec<u32>| {
///     let into = into.clone();
///     async move {
///         tokio::time::sleep(std::time::Duration::from_millis(1)).await; // the remote write
///         into.lock().unwrap().extend(batch);
///         Ok(())
///     }
/// }))?;
/// assert_eq!(*written.lock().unwrap(), [1, 2, 3, 4, 5]);
/// # Ok::<(), flowstage::FlowError>(())
/// ```
pub fn async_fn<T, F, Fut>(write: F) -> AsyncFn<F, T>
where
    T: Send + 'static,
    F: FnMut(Vec<T>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), StageError>> + Send,
{
    AsyncFn {
        write,
        _events: PhantomData,
    }
}

impl<T, F, Fut> Consumer for AsyncFn<F, T>
where
    T: Send + 'static,
    F: FnMut(Vec<T>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), StageError>> + Send,
{
    type Item = T;

    async fn handle_events(
        &mut self,
        events: Vec<T>,
        _context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        (self.write)(events).await
    }
}
