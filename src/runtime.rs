//! The tokio runtime behind blocking entry points.

use std::num::NonZeroUsize;

/// The number of stages per layer and of runtime workers by default: the machine's
/// available parallelism.
pub fn default_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// A multi-threaded runtime with one worker per core, time enabled.
pub(crate) fn build() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(default_parallelism())
        .thread_name("flowstage")
        .enable_all()
        .build()
}
