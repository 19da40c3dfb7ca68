//! The tokio runtime behind blocking entry points.

use std::num::NonZeroUsize;

/// The number of stages per layer and of runtime workers by default: the machine's
/// available parallelism.
pub fn default_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// The runtime blocking entry points (`Pipeline::run`, `Flow::collect`, ...) run on: one
/// per process, started on first use, one worker per core — as rayon keeps one pool.
/// A runtime per run cost thread start-up every time and, measured on the literal word
/// count over 500 MB in one process, ~20% in allocator churn across fresh threads.
pub(crate) fn shared() -> std::io::Result<&'static tokio::runtime::Runtime> {
    static SHARED: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    if let Some(runtime) = SHARED.get() {
        return Ok(runtime);
    }
    let runtime = build()?;
    // Two threads may race to start it: one wins, the other's runtime is dropped unused.
    Ok(SHARED.get_or_init(|| runtime))
}

/// A multi-threaded runtime with one worker per core, time enabled.
pub(crate) fn build() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(default_parallelism())
        .thread_name("flowstage")
        .enable_all()
        .build()
}
