//! # flowstage
//!
//! Flow and GenStage for Rust: data-parallel pipelines of stages that exchange events in
//! batches under demand-driven backpressure.
//!
//! The [`stage`] module is the engine, usable on its own: producers, producer-consumers and
//! consumers; subscriptions with `max_demand`/`min_demand`; demand, broadcast and partition
//! dispatchers; supervised concurrent workers. A producer never sends more than it was
//! asked for, memory stays bounded by the demand and buffer settings, and a producer that
//! has nothing to give right now cannot stall the pipeline.
//!
//! ```
//! use flowstage::stage::{Pipeline, SubscribeOptions, consumer_fn, from_iter};
//! use std::sync::{Arc, Mutex};
//!
//! let total = Arc::new(Mutex::new(0u64));
//! let sum = total.clone();
//! let mut pipeline = Pipeline::new();
//! let numbers = pipeline.producer(from_iter(1..=100u64));
//! let adder = pipeline.consumer(consumer_fn(move |batch: Vec<u64>| {
//!     *sum.lock().unwrap() += batch.iter().sum::<u64>();
//! }));
//! pipeline.subscribe(&adder, &numbers, SubscribeOptions::new().max_demand(10))?;
//! pipeline.run()?;
//! assert_eq!(*total.lock().unwrap(), 5050);
//! # Ok::<(), flowstage::FlowError>(())
//! ```

#![deny(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod error;
pub mod flow;
mod runtime;
pub mod sink;
pub mod source;
pub mod stage;

/// Test support for `tests/loom.rs` (only with `--cfg flowstage_loom`); not public API.
#[cfg(flowstage_loom)]
#[doc(hidden)]
#[path = "loom_support.rs"]
pub mod __loom;

pub use error::{FlowError, Result, StageError, StageInfo, StageKind};
pub use runtime::default_parallelism;
