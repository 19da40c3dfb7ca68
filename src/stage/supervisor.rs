//! Concurrent supervised workers: ConsumerSupervisor's role.
//!
//! A [`Supervisor`] is a consumer that runs one worker per event, at most `max` at once,
//! and restarts failed workers by policy. A worker keeps its concurrency slot across its
//! restarts, so the number of workers running never exceeds `max` — also while restarting
//! (GenStage #190, #191 are about that overshoot).

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Consumer, ConsumerContext, SubscribeOptions};
use crate::error::{StageError, panic_message};

/// When a failed worker is started again on the same event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restart {
    /// Restarted after any failure (an `Err` or a panic) until it succeeds.
    Permanent,
    /// Restarted after a panic; an `Err` is an outcome the worker chose, counted and final.
    #[default]
    Transient,
    /// Never restarted; a failure is counted and the event is given up.
    Temporary,
}

/// Options of a [`Supervisor`].
///
/// ```
/// use flowstage::stage::{Restart, SupervisorOptions};
/// use std::time::Duration;
/// let options = SupervisorOptions::new(8)
///     .restart(Restart::Permanent)
///     .max_restarts(5, Duration::from_secs(1));
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    max: usize,
    restart: Restart,
    max_restarts: usize,
    max_window: Duration,
}

impl SupervisorOptions {
    /// At most `max` workers at once; transient restarts, at most 3 restarts in 5
    /// seconds. `max` 0 is an error when the supervisor first gets events (its
    /// [`subscribe_options`](Supervisor::subscribe_options) already fail to subscribe):
    /// no worker could ever run.
    pub fn new(max: usize) -> Self {
        SupervisorOptions {
            max,
            restart: Restart::Transient,
            max_restarts: 3,
            max_window: Duration::from_secs(5),
        }
    }

    /// The restart policy.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// More than `max_restarts` restarts within `window` fail the supervisor's stage.
    pub fn max_restarts(mut self, max_restarts: usize, window: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.max_window = window;
        self
    }
}

/// Counters of a supervisor, readable while it runs.
#[derive(Debug, Default)]
pub struct SupervisorCounters {
    failures: AtomicU64,
    restarts: AtomicU64,
    given_up: AtomicU64,
}

impl SupervisorCounters {
    /// Worker failures (errors and panics).
    pub fn failures(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    /// Workers started again after a failure.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Relaxed)
    }

    /// Events whose worker failed and was not restarted.
    pub fn given_up(&self) -> u64 {
        self.given_up.load(Relaxed)
    }
}

/// A consumer running one worker per event, at most `max` at once, with restarts.
///
/// Subscribe it with [`Supervisor::subscribe_options`] so its demand matches its
/// concurrency, as ConsumerSupervisor does.
///
/// ```
/// use flowstage::stage::{Pipeline, Supervisor, SupervisorOptions, from_iter};
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
///
/// let total = Arc::new(AtomicU64::new(0));
/// let sum = total.clone();
/// let supervisor = Supervisor::new(SupervisorOptions::new(4), move |n: u64| {
///     let sum = sum.clone();
///     async move {
///         sum.fetch_add(n, Ordering::Relaxed);
///         Ok(())
///     }
/// });
/// let subscribe = supervisor.subscribe_options();
/// let mut pipeline = Pipeline::new();
/// let numbers = pipeline.producer(from_iter(1..=100u64));
/// let workers = pipeline.consumer(supervisor);
/// pipeline.subscribe(&workers, &numbers, subscribe)?;
/// pipeline.run()?;
/// assert_eq!(total.load(Ordering::Relaxed), 5050);
/// # Ok::<(), flowstage::FlowError>(())
/// ```
pub struct Supervisor<T, F> {
    worker: Arc<F>,
    options: SupervisorOptions,
    slots: Arc<Semaphore>,
    workers: JoinSet<Result<(), StageError>>,
    restart_log: Arc<Mutex<VecDeque<Instant>>>,
    /// Set by a worker that failed for good, so the stage fails even with no events coming.
    fatal: tokio::sync::watch::Sender<Option<String>>,
    counters: Arc<SupervisorCounters>,
    _events: std::marker::PhantomData<fn(T)>,
}

impl<T, F> std::fmt::Debug for Supervisor<T, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("options", &self.options)
            .field("running", &self.workers.len())
            .finish()
    }
}

impl<T, F, Fut> Supervisor<T, F>
where
    T: Clone + Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), StageError>> + Send + 'static,
{
    /// A supervisor that runs `worker(event)` for each event.
    pub fn new(options: SupervisorOptions, worker: F) -> Self {
        Supervisor {
            worker: Arc::new(worker),
            slots: Arc::new(Semaphore::new(options.max)),
            options,
            workers: JoinSet::new(),
            restart_log: Arc::new(Mutex::new(VecDeque::new())),
            fatal: tokio::sync::watch::Sender::new(None),
            counters: Arc::new(SupervisorCounters::default()),
            _events: std::marker::PhantomData,
        }
    }

    /// Subscription options whose demand matches the concurrency: `max_demand = max`.
    pub fn subscribe_options(&self) -> SubscribeOptions<T> {
        let max = self.options.max;
        SubscribeOptions::new().max_demand(max).min_demand(max / 2)
    }

    /// The supervisor's counters (shared; readable during the run).
    pub fn counters(&self) -> Arc<SupervisorCounters> {
        self.counters.clone()
    }

    /// Ends with the first fatal worker failure, if any has happened.
    fn reap(&mut self) -> Result<(), StageError> {
        while let Some(joined) = self.workers.try_join_next() {
            joined.map_err(|e| StageError::from(e.to_string()))??;
        }
        Ok(())
    }

    fn spawn(&mut self, event: T, slot: tokio::sync::OwnedSemaphorePermit) {
        let worker = self.worker.clone();
        let restart = self.options.restart;
        let log = self.restart_log.clone();
        let fatal = self.fatal.clone();
        let counters = self.counters.clone();
        let (max_restarts, window) = (self.options.max_restarts, self.options.max_window);
        self.workers.spawn(async move {
            // The slot is held across restarts: a restart never adds concurrency.
            let _slot = slot;
            loop {
                // `worker(..)` is called inside the caught future: a panic in the worker
                // function itself (before its future exists) is a worker failure too.
                let attempt = {
                    let (worker, event) = (&worker, event.clone());
                    async move { worker(event).await }
                };
                let outcome = AssertUnwindSafe(attempt).catch_unwind().await;
                let (panicked, message) = match outcome {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(error)) => (false, error.to_string()),
                    Err(panic) => (true, panic_message(panic.as_ref())),
                };
                counters.failures.fetch_add(1, Relaxed);
                let again = match restart {
                    Restart::Permanent => true,
                    Restart::Transient => panicked,
                    Restart::Temporary => false,
                };
                if !again {
                    counters.given_up.fetch_add(1, Relaxed);
                    return Ok(());
                }
                let recent = {
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    let now = Instant::now();
                    while log
                        .front()
                        .is_some_and(|&at| now.duration_since(at) > window)
                    {
                        log.pop_front();
                    }
                    log.push_back(now);
                    log.len()
                };
                if recent > max_restarts {
                    let message = format!(
                        "worker failed {recent} times within {window:?} \
                         (max_restarts {max_restarts}); last failure: {message}"
                    );
                    fatal.send_replace(Some(message.clone()));
                    return Err(message.into());
                }
                crate::observe::restarted(&message);
                counters.restarts.fetch_add(1, Relaxed);
            }
        });
    }
}

impl<T, F, Fut> Consumer for Supervisor<T, F>
where
    T: Clone + Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), StageError>> + Send + 'static,
{
    type Item = T;

    async fn handle_events(
        &mut self,
        events: Vec<T>,
        _context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        if self.options.max == 0 {
            // Waiting for a worker slot would wait forever.
            return Err("invalid supervisor: max (concurrent workers) must be at least 1".into());
        }
        for event in events {
            self.reap()?;
            let slot = self
                .slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| StageError::from(e.to_string()))?;
            self.spawn(event, slot);
        }
        self.reap()
    }

    async fn handle_done(&mut self) -> Result<(), StageError> {
        while let Some(joined) = self.workers.join_next().await {
            joined.map_err(|e| StageError::from(e.to_string()))??;
        }
        Ok(())
    }

    fn failed(&self) -> impl Future<Output = StageError> + Send {
        let mut fatal = self.fatal.subscribe();
        async move {
            let message = fatal
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|message| message.clone());
            match message {
                Some(message) => StageError::from(message),
                // The supervisor is gone: nothing can fail any more.
                None => std::future::pending().await,
            }
        }
    }
}
