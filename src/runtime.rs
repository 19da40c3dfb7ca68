//! The tokio runtime behind blocking entry points.

use std::num::NonZeroUsize;

/// The number of stages per layer and of runtime workers by default: the machine's
/// available parallelism.
pub fn default_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

static SHARED: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();

/// The metrics of the runtime blocking entry points (`Flow::collect`, `Flow::run`,
/// `Pipeline::run`, ...) run on — its workers, its live tasks — or `None` before the first
/// blocking run started it. A finished run leaves no task of its own alive there.
///
/// ```
/// use flowstage::flow::Flow;
/// let squares: Vec<u64> = Flow::from_iter(1..=3u64).map(|x| x * x).collect()?;
/// assert_eq!(squares, [1, 4, 9]);
/// let metrics = flowstage::runtime_metrics().expect("collect started the runtime");
/// assert_eq!(metrics.num_workers(), flowstage::default_parallelism());
/// # Ok::<(), flowstage::FlowError>(())
/// ```
pub fn runtime_metrics() -> Option<tokio::runtime::RuntimeMetrics> {
    SHARED.get().map(tokio::runtime::Runtime::metrics)
}

/// The runtime blocking entry points (`Pipeline::run`, `Flow::collect`, ...) run on: one
/// per process, started on first use, one worker per core — as rayon keeps one pool.
/// A runtime per run cost thread start-up every time and, measured on the literal word
/// count over 500 MB in one process, ~20% in allocator churn across fresh threads.
pub(crate) fn shared() -> crate::Result<&'static tokio::runtime::Runtime> {
    if let Some(runtime) = SHARED.get() {
        return Ok(runtime);
    }
    let runtime = build()?;
    // Two threads may race to start it: one wins, the other's runtime is dropped unused.
    Ok(SHARED.get_or_init(|| runtime))
}

/// A multi-threaded runtime with one worker per core, time enabled; failing to start one
/// is the one [`FlowError::Runtime`](crate::FlowError::Runtime).
pub(crate) fn build() -> crate::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(default_parallelism())
        .thread_name("flowstage")
        .enable_all()
        .build()
        .map_err(crate::FlowError::Runtime)
}
