//! Scale-out: the same flows, run on a [timely-dataflow](https://docs.rs/timely) cluster
//! of processes and machines over TCP (feature `timely`).
//!
//! Every process runs the same program. A flow is built with the usual
//! [`Flow`](crate::flow::Flow) builder — by a closure, once per worker — and run with
//! [`collect`] (the output gathered at worker 0), [`for_each`] (each worker its own
//! output) or [`run`] (side effects; the run's [`Report`](crate::stage::Report) in
//! process 0). A [`ClusterConfig`] says which process this is, where the others are
//! (`host:port` per process, or a host file), how many worker threads each runs, and the
//! secret they share.
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
//! ([`ClusterPlan`]), and the work inside each operator is the same
//! [`Logic`](crate::flow::Logic) value the local runtime runs in a stage. Each worker
//! takes its share of every source (for a file, CSV or JSON-lines source: the byte ranges
//! `i` with `i % W == w`; for `from_iters`: the iterators `i % W == w`; for `from_iter`:
//! the elements `i % W == w`; for a Redis stream: a consumer of the group per worker).
//! Stateless operators fuse into the operator before them. Every node that makes a new
//! layer locally becomes a timely exchange into a layer operator: `partition`, joins
//! (both sides by the key hash), `shuffle` and `merge` (round robin) into one partition
//! per worker of the cluster, with the same key hash as locally; `batch`, `departition`
//! and `take_sort` (one stage locally) into one operator on worker 0.
//!
//! # Operators
//!
//! Everything the local runtime runs, with the same results:
//!
//! | | |
//! |---|---|
//! | sources | `from_iter`, `from_iters`, files, lines, CSV, JSON lines, Redis streams (shared out by worker, above); every other source (`from_stream`, `from_channel`, `from_poll`, `from_stages`, `from_par_iter`, readers, stdin, a user's [`Source`](crate::source::Source) without [`into_worker_producers`](crate::source::Source::into_worker_producers)): read whole by worker 0, in process 0, and spread by the first exchange after it |
//! | fused | `map`, `filter`, `reject`, `filter_map`, `flat_map`, `inspect`, `map_values`, `map_batch`, `uniq`/`uniq_by` (per worker and window, as locally per stage), `try_map`/`try_flat_map` with every [`ErrorPolicy`](crate::flow::ErrorPolicy) |
//! | layers | `partition`, `shuffle`, `merge`, `bounded_join`, `window_join` (every mode), `batch`, `departition`, `take_sort` |
//! | reduce | `reduce`, `reduce_mut`, `emit_and_reduce`, `group_by`, `group_by_key`, `on_trigger`, `emit_*`, `reduce_by_key`, `count_by_key` (their combiner fused into the sources' operators) |
//! | windows | every kind — `global`, `fixed`, `sliding`, `session`, `count`, `periodic` — every trigger (`trigger_every`, `trigger_periodically`, custom, [`TriggerHandle`](crate::window::TriggerHandle)), `allowed_lateness`, `idle_timeout`, `fire_empty`, late events to [`late_events`](crate::window::Window::late_events) |
//!
//! Nothing is [`Unsupported`](crate::FlowError::Unsupported). What differs, and why:
//!
//! - Each `partition`, `shuffle`, `merge` and join has one partition per worker of the
//!   cluster: its `stages`, `max_demand` and `min_demand` settings are not used (timely
//!   moves events in batches of its own; [`epoch_events`](ClusterConfig::epoch_events)
//!   and [`max_epochs_ahead`](ClusterConfig::max_epochs_ahead) bound what is in flight).
//! - A source without worker shares runs on worker 0 with the operators fused after it,
//!   as locally its one producer stage does; put a `shuffle` after it to spread a costly
//!   chain.
//! - A dead-letter consumer and a [`TriggerHandle`](crate::window::TriggerHandle) belong
//!   to the process that built them: each worker runs the consumer its flow was built
//!   with (as stages on a thread of its own, fed through the same bounded channel as
//!   locally, so a slow consumer slows the worker), and dead letters reach the consumer
//!   of the worker where the error happened (their counts are summed in the
//!   [`Report`](crate::stage::Report) of [`run`] and [`for_each`]); a handle fires the windows of its own process's workers
//!   (fire it in every process to fire them all). Each worker's processing-time clock
//!   (periodic windows, `trigger_periodically`, `allowed_lateness`) starts with it.
//! - Lateness depends on timing, not on arrival order (below).
//! - The [`Report`](crate::stage::Report)'s `busy` is each operator instance's time in
//!   its own activations; `waiting_for_demand` is, for a source, the time backpressure
//!   held it back (the cluster more than `max_epochs_ahead` epochs behind it) and zero for
//!   a layer: timely hands a layer its input whenever it has some, there is no demand.
//!
//! Events that cross an exchange (and the output of [`collect`]) must be serde
//! serializable ([`Wire`]): a compile-time error otherwise.
//!
//! # Windows and frontiers
//!
//! Timestamps are `(window, epoch)` pairs ([`Time`]), ordered lexicographically. For a
//! layer with an event-time window, its sources send what they read at their capability
//! and then move it to the largest *granule* start they have read — the window size for
//! fixed windows, the greatest common divisor of size and slide for sliding ones, the gap
//! for sessions: every window starts and ends on one. That is their watermark, the
//! "latest event seen" the local runtime tracks per producer. Timely's frontier at the
//! layer's input is then the smallest watermark over every source on every worker that
//! can still send, including events in flight. The layer runs the local runtime's window
//! engine with that frontier as its watermark: a window closes once the frontier has
//! passed its last millisecond — exactly when no earlier event can arrive anywhere in the
//! cluster — and at the end of input every open window fires, oldest first.
//!
//! Differences from the local runtime: a window closes when *every* source share of the
//! cluster has moved past it (locally: every producer of the stage, as far as the events
//! it sent that stage show), and events in flight hold it open too. Events in order
//! within each source share are never late, and then results equal the local runtime's
//! (as the tests check). An event older than its share's watermark is sent at the
//! watermark: it is late if its window has closed by the time it arrives, which depends
//! on timing (locally on the arrival order at the stage). With
//! [`idle_timeout`](crate::window::Window::idle_timeout), a share that read nothing for
//! that long stops holding windows back — for the rest of the run (a timely capability
//! never moves back), where locally a producer holds them again once it sends; when every
//! share is released, a layer takes the latest event time it received as its watermark,
//! as locally. A layer behind an unwindowed layer closes its windows at the end of input
//! (its frontier carries no event time).
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
//! `(window, epoch)`, so a source also waits for sources at earlier windows.) A bounded
//! join's left side paces itself on its own progress, and its right side starts reading
//! once the left side is complete everywhere, as locally. A producer that has nothing to
//! give yet (a quiet stream) waits as a task of its worker's runtime: the worker's other
//! operators run meanwhile.
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
//! - An error in user code ends the run with the same `StageFailed` error as locally, and
//!   a panic with the same `StagePanicked`, naming the operator and its partition (the
//!   worker); the other workers of the process stop with it, and the other processes as
//!   above.
//! - What to do when a process dies: the others end with `FlowError::Cluster` naming it;
//!   the run is lost (a cluster run is not resumable). Start every process again, with
//!   the same hosts and secret.
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
mod exchange;
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
