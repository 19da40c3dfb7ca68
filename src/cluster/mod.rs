//! Scale-out: the same flows, run on a [timely-dataflow](https://docs.rs/timely) cluster
//! of processes and machines over TCP (feature `timely`).
//!
//! Every process runs the same program. A flow is built with the usual
//! [`Flow`](crate::flow::Flow) builder — by a closure, once per worker — and run with
//! [`collect`] (the output gathered at worker 0) or [`for_each`] (each worker its own
//! output). A [`ClusterConfig`] says which process this is, where the others are
//! (`host:port` per process, or a host file) and how many worker threads each runs.
//!
//! ```
//! use flowstage::cluster::{self, ClusterConfig};
//! use flowstage::flow::{Flow, Partition};
//! use flowstage::window::Window;
//! use std::collections::HashMap;
//! use std::time::Duration;
//!
//! // Sum per key and 10 ms window of (timestamp, key, value) events, on 2 workers.
//! let build = || {
//!     let events = (0..100i64).map(|t| (t, t % 3, 1u64));
//!     let window = Window::fixed(Duration::from_millis(10), |e: &(i64, i64, u64)| e.0);
//!     Flow::from_iter(events.collect::<Vec<_>>())
//!         .partition(Partition::by_key(|e: &(i64, i64, u64)| e.1).window(window))
//!         .reduce(HashMap::new, |(_, key, value), mut sums: HashMap<i64, u64>| {
//!             *sums.entry(key).or_default() += value;
//!             sums
//!         })
//! };
//! let sums = cluster::collect(&ClusterConfig::local(2), build)?.unwrap_or_default();
//! assert_eq!(sums.iter().map(|(_, n)| n).sum::<u64>(), 100);
//! assert_eq!(sums.len(), 30); // 10 windows × 3 keys
//! # Ok::<(), flowstage::FlowError>(())
//! ```
//!
//! # How a flow maps onto timely
//!
//! The logical plan is the local runtime's; only its materialisation differs
//! ([`ClusterPlan`]). Each worker takes its share of every source (for a file: the byte
//! ranges `i` with `i % W == w`; for `from_iters`: the iterators `i % W == w`; for
//! `from_iter`: the elements `i % W == w`). Stateless operators fuse into the operator
//! before them and run the same [`Logic`](crate::flow::Logic) as locally. `partition` and
//! `shuffle` become a timely exchange into one partition per worker of the cluster, with
//! the same key hash as locally (`shuffle` deals events round robin), and the layer's
//! reduce keeps per-worker state.
//!
//! # Operators
//!
//! | supported | not supported (an [`Unsupported`](crate::FlowError::Unsupported) error when the flow is built) |
//! |---|---|
//! | `from_iter`, `from_iters`, [`FileSource`](crate::source::FileSource), [`LinesSource`](crate::source::LinesSource), sources implementing [`Source::into_worker_producers`](crate::source::Source::into_worker_producers) | `from_stream`, `from_channel`, `from_poll`, `from_stages`, `from_par_iter`, CSV/JSON/Redis/reader sources |
//! | `map`, `filter`, `reject`, `filter_map`, `flat_map`, `inspect`, `map_values`, `map_batch` | `try_map`, `try_flat_map`, `batch`, `uniq`, `uniq_by` |
//! | `partition`, `shuffle`, with the global window or a [`fixed`](crate::window::Window::fixed) window (and `late_events`) | `merge`, joins, `departition`, `take_sort`; other window kinds, triggers, `allowed_lateness`, `idle_timeout` |
//! | `reduce`, `emit_and_reduce`, `group_by`, `group_by_key`, `on_trigger`, `emit_*`; `reduce_by_key` and `count_by_key` (their combiner fused into the sources' operators, as locally) | |
//!
//! Events that cross a partition (and the output of [`collect`]) must be serde
//! serializable ([`Wire`]): a compile-time error otherwise.
//!
//! # Windows and frontiers
//!
//! Timestamps are `(window, epoch)` pairs ([`Time`]), ordered lexicographically. A source
//! emits each event at its fixed window's start (never below its capability) and keeps
//! its capability at the largest window it has read: that is its watermark, the same
//! "latest window seen" the local runtime tracks per producer. Timely's frontier at a
//! layer's input is then the smallest watermark over every source on every worker that
//! can still send, including events in flight; the layer fires a window's `Done` once the
//! frontier has passed it — exactly when no earlier data can arrive anywhere in the
//! cluster — and at the end of input every open window fires, oldest first. An event for
//! a window that already fired is late: dropped, or kept by
//! [`late_events`](crate::window::Window::late_events).
//!
//! Differences from the local runtime: a window closes only when *every* source share on
//! every worker has moved past it (locally: every producer of the stage), and events in
//! flight hold it open too. Events in order within each source share are never late, and
//! then results equal the local runtime's (as the tests check). An event older than its
//! own share's watermark is sent at the watermark: it is late if its window has fired by
//! the time it arrives, which depends on timing (locally it depends on the arrival order
//! at the stage); lateness is counted per event, not reproduced exactly. Each worker fires only the windows it
//! received events for (locally a stage also fires the empty windows between them). Per-
//! stage triggers, `allowed_lateness` and `idle_timeout` (processing time) are not
//! supported: a silent source holds windows open until it sends or ends.
//!
//! # Backpressure
//!
//! A source reads at most [`epoch_events`](ClusterConfig::epoch_events) events per
//! epoch and advances its capability one epoch per read. Before reading, it checks the
//! run's probe (placed after the output): while anything at an epoch more than
//! [`max_epochs_ahead`](ClusterConfig::max_epochs_ahead) (`K`) before its own is still
//! in flight anywhere in the cluster, it waits. So each source has at most `K + 1`
//! epochs (`(K + 1) · epoch_events` events read) not yet through the dataflow, and memory
//! stays bounded whatever the input's length. (With windows the comparison is on
//! `(window, epoch)`, so a source also waits for sources at earlier windows.)
//!
//! # Failures
//!
//! - A process that cannot reach every peer within
//!   [`connect_timeout`](ClusterConfig::connect_timeout) gets
//!   [`FlowError::Cluster`](crate::FlowError::Cluster), naming the processes it waited
//!   for and the connections it dropped meanwhile. (flowstage makes the connections
//!   itself, then hands them to timely: timely's own set-up retries forever, polls once a
//!   second, and fails on the first connection that is not a peer.)
//! - During start-up, a connection that is not one of the cluster's processes — one that
//!   closes, stays silent past [`handshake_timeout`](ClusterConfig::handshake_timeout),
//!   speaks another protocol or cannot prove the secret — is dropped, and accepting goes
//!   on: it never fails the run nor holds up the real peers.
//! - A peer that dies (its connection breaks) makes every other process end its run with
//!   `FlowError::Cluster` at once; a peer that leaves early and cleanly (its run failed on
//!   its side) does so after [`peer_timeout`](ClusterConfig::peer_timeout).
//! - An error in user code ends the run with the same `StageFailed` error as locally,
//!   naming the operator and worker; a panic with `FlowError::Cluster`; the other workers
//!   of the process stop with it, and the other processes as above.
//! - A peer that hangs without closing its connection is not detected.
//! - Once the run is complete everywhere (timely's frontier is empty), the result stands:
//!   a process waits at most `peer_timeout` for its network threads to flush and end,
//!   and a peer that dies then does not turn it into an error.
//!
//! # Security
//!
//! A run of several processes needs a shared [`secret`](ClusterConfig::secret) (or
//! [`ENV_SECRET`]). Every connection starts with a challenge–response handshake: each
//! side proves it holds the secret with keyed BLAKE3 over fresh random nonces from both
//! sides, the host list and both processes' indices; the secret itself never crosses the
//! network, and a recorded handshake cannot be replayed. So knowing the host list (or
//! being able to connect to the ports) is not enough to join a cluster or to pose as one
//! of its processes, and a process of another cluster is never taken for a peer.
//!
//! What it does not do: the events exchanged afterwards travel unencrypted and are not
//! authenticated per message, so someone who can read or rewrite the traffic between the
//! machines (on the path, not merely able to connect) can see or alter it. Run a cluster
//! on a private network, or tunnel it (WireGuard, an SSH tunnel, a VPN). Events are
//! decoded only from peers that proved the secret.

mod batch;
mod config;
mod connect;
mod emit;
mod execute;
mod handshake;
mod layer;
mod plan;
mod report;
mod source;
mod window;
mod wire;

pub use config::{ClusterConfig, ENV_HOSTFILE, ENV_HOSTS, ENV_INDEX, ENV_SECRET, ENV_THREADS};
pub use execute::{collect, for_each, run};
#[doc(hidden)]
pub use plan::{ClusterCompiler, ClusterStream, EventTime, Stamp};
pub use plan::{ClusterPlan, Time, Wire};
