//! # flowstage
//!
//! Flow and GenStage for Rust: lazy, data-parallel queries compiled onto stages that
//! exchange events in batches under demand-driven backpressure.
//!
//! ## A tour
//!
//! A [`Flow`](flow::Flow) starts from a source and reads like an iterator. Nothing runs
//! until a terminal such as `collect`:
//!
//! ```
//! use flowstage::flow::Flow;
//! let squares: Vec<u64> = Flow::from_iter(1..=4u64).map(|x| x * x).collect()?;
//! assert_eq!(squares, [1, 4, 9, 16]);
//! # Ok::<(), flowstage::FlowError>(())
//! ```
//!
//! Stateless operators (`map`, `filter`, `flat_map`, ...) are *fused* into the stage
//! before them: one pass per batch, closures inlined like iterator adaptors. To read in
//! parallel, give the flow one source per reader:
//!
//! ```
//! use flowstage::flow::Flow;
//! let mut evens: Vec<u64> = Flow::from_iters(vec![0..50u64, 50..100])
//!     .filter(|x| x % 2 == 0)
//!     .collect()?;
//! evens.sort();
//! assert_eq!(evens.len(), 50);
//! # Ok::<(), flowstage::FlowError>(())
//! ```
//!
//! `partition` starts a new layer of stages; each event goes to the stage its key hashes
//! to, so a per-stage `reduce` sees every event of its keys — a word count:
//!
//! ```
//! use flowstage::flow::{Flow, Partition};
//! use std::collections::HashMap;
//!
//! let lines = vec!["a rose is a rose", "is a rose"];
//! let mut counts: Vec<(String, u64)> = Flow::from_iter(lines)
//!     .flat_map(|line: &str| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
//!     .partition(Partition::new().stages(2))
//!     .reduce(HashMap::new, |word, mut counts: HashMap<String, u64>| {
//!         *counts.entry(word).or_default() += 1;
//!         counts
//!     })
//!     .collect()?;
//! counts.sort();
//! assert_eq!(counts, [("a".into(), 3), ("is".into(), 2), ("rose".into(), 3)]);
//! # Ok::<(), flowstage::FlowError>(())
//! ```
//!
//! Underneath is the [`stage`] layer, usable on its own: producers, producer-consumers
//! and consumers; subscriptions with `max_demand`/`min_demand`; demand, broadcast and
//! partition dispatchers; supervised concurrent workers. A producer never sends more than
//! it was asked for, memory stays bounded by the demand and buffer settings, a producer
//! with nothing to give cannot stall the pipeline, and a panic or error in any stage ends
//! the run with a [`FlowError`] naming the stage.
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
// `unsafe` is forbidden in every module but `source`, where only `source::mmap` (mapping
// a file: the `unsafe` opt-in `FileSource::mmap`) allows it.
#![deny(unsafe_code)]

#[cfg(feature = "timely")]
#[forbid(unsafe_code)]
pub mod cluster;
#[forbid(unsafe_code)]
pub mod corpus;
#[forbid(unsafe_code)]
pub mod error;
#[forbid(unsafe_code)]
pub mod flow;
#[forbid(unsafe_code)]
mod runtime;
#[forbid(unsafe_code)]
pub mod sink;
pub mod source;
#[forbid(unsafe_code)]
pub mod stage;
#[forbid(unsafe_code)]
pub mod window;

/// Test support for `tests/loom.rs` (only with `--cfg flowstage_loom`); not public API.
#[cfg(flowstage_loom)]
#[doc(hidden)]
#[path = "loom_support.rs"]
pub mod __loom;

pub use error::{FlowError, IoOperation, Result, StageError, StageInfo, StageKind};
pub use runtime::{default_parallelism, runtime_metrics};
