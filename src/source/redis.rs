//! Redis Streams with consumer groups as a source (feature `redis`).
//!
//! Demand maps to `XREADGROUP GROUP g c COUNT n BLOCK t STREAMS s >`: the stage asks for
//! `n`, Redis gives at most `n`, and waits at most `t` for them. An entry is
//! acknowledged (`XACK`) only by a sink at the end of the flow
//! ([`RedisAck`](crate::sink::RedisAck), [`RedisStreamSink`](crate::sink::RedisStreamSink)),
//! once the flow has fully processed it — Broadway's end-to-end acknowledgement. Entries
//! that a consumer read and never acknowledged (it crashed, or the broker went down) stay
//! pending in the group under the consumer's name. Nothing is lost:
//! - a consumer that starts again under the same name first reads its own pending list
//!   again (`XREADGROUP ... STREAMS s 0`), then new entries (counted in
//!   [`RedisCounters::recovered`]);
//! - every consumer takes over the pending entries of *other* consumers idle longer than
//!   [`claim_idle`](RedisStreamSource::claim_idle) (`XPENDING ... IDLE`, then `XCLAIM`),
//!   so several processes can share a stream and one that never comes back loses nothing
//!   (counted in [`RedisCounters::reclaimed`]).
//!
//! A source never takes over its own pending entries: they are in flight in its own run,
//! and taking them again would process them twice. Delivery is at least once: a recovered
//! or reclaimed entry may have been processed before.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};

use super::redis_url::RedisUrl;
use super::{BoxedProducer, Source};
use crate::error::{FlowError, Result, StageError};
use crate::stage::{Produced, Producer};

/// Which entry of which stream, read by which group: what a sink acknowledges.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryId {
    /// The stream's key.
    pub stream: Arc<str>,
    /// The consumer group that read the entry.
    pub group: Arc<str>,
    /// The entry's ID (`1700000000000-0`).
    pub id: String,
}

/// One entry of a stream.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    /// Where it is, for acknowledging it.
    pub id: EntryId,
    /// Its fields.
    pub fields: HashMap<String, Vec<u8>>,
}

impl StreamEntry {
    /// A field's bytes.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields.get(name).map(Vec::as_slice)
    }

    /// A field as text, if it is UTF-8.
    pub fn text(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(self.field(name)?).ok()
    }
}

/// What a Redis source did, shared by its producers, to read during or after a run.
#[derive(Debug, Default)]
pub struct RedisCounters {
    read: AtomicU64,
    recovered: AtomicU64,
    reclaimed: AtomicU64,
}

impl RedisCounters {
    /// New entries read with `XREADGROUP ... >`.
    pub fn read(&self) -> u64 {
        self.read.load(Relaxed)
    }

    /// Entries of this consumer's own pending list, read again when the source started:
    /// read by an earlier run under the same consumer name and never acknowledged (it
    /// crashed, or the broker went down). Each may be a duplicate, processed before.
    pub fn recovered(&self) -> u64 {
        self.recovered.load(Relaxed)
    }

    /// Pending entries of other (stopped) consumers taken over with `XCLAIM`: each may be
    /// a duplicate, processed before by the consumer that stopped.
    pub fn reclaimed(&self) -> u64 {
        self.reclaimed.load(Relaxed)
    }
}

/// A Redis stream read by one consumer of a consumer group (the group is created, with
/// the stream, if missing, and then reads the stream from its first entry).
///
/// The source first reads again the consumer's own pending entries (left by an earlier
/// run under the same name that never acknowledged them), then new entries: demand maps
/// to `XREADGROUP ... COUNT n BLOCK t`. Entries are acknowledged by a sink at the end of
/// the flow ([`RedisAck`](crate::sink::RedisAck),
/// [`RedisStreamSink`](crate::sink::RedisStreamSink)) once fully processed; pending
/// entries of *other* consumers idle for [`claim_idle`](Self::claim_idle) are taken over
/// (at-least-once: see [`RedisCounters`]). A consumer name must be used by one running
/// source at a time. A flow must carry every entry's [`EntryId`] to the sink — an entry
/// dropped on the way (a `filter`) is never acknowledged: it comes back when the consumer
/// starts again, or to another consumer after `claim_idle`.
///
/// Settings are checked when the flow starts: a zero `block`, `claim_idle`, `timeout` or
/// `max_count` is a [`FlowError::Config`]. The address's password never shows: not in
/// errors ([`FlowError::Broker`]), not in `Debug`. `tests/redis.rs` runs it against a
/// real server.
///
/// ```no_run
/// use flowstage::flow::Flow;
/// use flowstage::sink::RedisAck;
/// use flowstage::source::RedisStreamSource;
/// use std::time::Duration;
///
/// let orders = RedisStreamSource::new("redis://127.0.0.1:6379", "orders", "loaders", "loader-1")
///     .claim_idle(Duration::from_secs(30));
/// Flow::from_source(orders)
///     .map(|entry| {
///         // ... process entry.fields ...
///         entry.id // acknowledged once the sink has it
///     })
///     .run_into(RedisAck::new("redis://127.0.0.1:6379"))?;
/// # Ok::<(), flowstage::FlowError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RedisStreamSource {
    url: RedisUrl,
    stream: Arc<str>,
    group: Arc<str>,
    consumer: String,
    block: Duration,
    claim_idle: Duration,
    stop_when_idle: Option<Duration>,
    timeout: Duration,
    max_count: usize,
    counters: Arc<RedisCounters>,
}

impl RedisStreamSource {
    /// Reads `stream` at `url` as `consumer` of `group`.
    pub fn new(url: &str, stream: &str, group: &str, consumer: &str) -> Self {
        RedisStreamSource {
            url: RedisUrl::new(url),
            stream: Arc::from(stream),
            group: Arc::from(group),
            consumer: consumer.to_string(),
            block: Duration::from_millis(100),
            claim_idle: Duration::from_secs(30),
            stop_when_idle: None,
            timeout: Duration::from_secs(5),
            max_count: 1000,
            counters: Arc::default(),
        }
    }

    /// How long one `XREADGROUP` waits for new entries (`BLOCK`; default 100 ms). At
    /// least 1 ms: Redis counts it in whole milliseconds, and `BLOCK 0` would wait
    /// forever.
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// Pending entries of another consumer idle this long belong to a consumer presumed
    /// dead and are taken over (default 30 s: longer than the flow ever takes to process
    /// an entry; a shorter one lets a slow but live consumer's entries be processed twice).
    /// Never zero, which would take over the entries every live consumer is processing.
    /// The source never takes over its own entries: they are in flight in its run.
    pub fn claim_idle(mut self, claim_idle: Duration) -> Self {
        self.claim_idle = claim_idle;
        self
    }

    /// End the source once the stream has had nothing new (and nothing to reclaim) for
    /// this long — for batch jobs and tests. By default the source never ends.
    pub fn stop_when_idle(mut self, idle: Duration) -> Self {
        self.stop_when_idle = Some(idle);
        self
    }

    /// Connection and response timeout (beyond `block`); default 5 s, never zero. A broker
    /// that does not answer within it ends the run with [`FlowError::Broker`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The most entries one read asks for (`COUNT`, at most the demand; default 1000,
    /// never zero).
    pub fn max_count(mut self, max_count: usize) -> Self {
        self.max_count = max_count;
        self
    }

    /// The source's counters (shared by its producers).
    pub fn counters(&self) -> Arc<RedisCounters> {
        self.counters.clone()
    }

    /// `XREADGROUP GROUP g c COUNT n [BLOCK t] STREAMS s id`: `>` for new entries, an ID
    /// for the consumer's own pending entries after it.
    fn read_group(&self, count: usize, block: Option<Duration>, id: &str) -> redis::Cmd {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&*self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            // At least 1 ms (checked at the start): never `BLOCK 0`, which waits forever.
            command.arg("BLOCK").arg(block.as_millis() as u64);
        }
        command.arg("STREAMS").arg(&*self.stream).arg(id);
        command
    }

    /// The settings Redis cannot honour, or would honour differently than written.
    fn check(&self) -> Result<()> {
        let invalid = |what: &str| Err(FlowError::Config(format!("RedisStreamSource: {what}")));
        if self.block < Duration::from_millis(1) {
            return invalid(
                "block must be at least 1 ms (Redis counts BLOCK in whole milliseconds, and \
                 BLOCK 0 waits forever)",
            );
        }
        if self.claim_idle.is_zero() {
            return invalid(
                "claim_idle must be more than zero (every pending entry is idle for zero \
                 time: live consumers' entries would be taken over and processed twice)",
            );
        }
        if self.timeout.is_zero() {
            return invalid("timeout must be more than zero");
        }
        if self.max_count == 0 {
            return invalid("max_count must be at least 1");
        }
        Ok(())
    }
}

impl Source for RedisStreamSource {
    type Item = StreamEntry;

    fn into_producers(self) -> Result<Vec<BoxedProducer<StreamEntry>>> {
        self.check()?;
        redis::Client::open(self.url.full()).map_err(|e| FlowError::Broker {
            url: self.url.redacted().to_string(),
            message: self.url.scrub(&format!("invalid address: {e}")),
        })?;
        Ok(vec![BoxedProducer::new(RedisReader {
            source: self,
            connection: None,
            reading: Reading::OwnPending("0".to_string()),
            claim_after: None,
            next_claim: Instant::now(),
            idle_since: None,
        })])
    }

    /// On the cluster, one consumer of the group per worker, named `{consumer}-{worker}`:
    /// the broker shares the stream's entries out between them.
    #[cfg(feature = "timely")]
    fn into_worker_producers(
        mut self,
        worker: usize,
        workers: usize,
    ) -> Result<Vec<Option<BoxedProducer<StreamEntry>>>> {
        self.consumer = format!("{}-{worker}", self.consumer);
        let mut own = self.into_producers()?.into_iter();
        Ok((0..workers)
            .map(|share| if share == worker { own.next() } else { None })
            .collect())
    }

    fn retry_interval(&self) -> Option<Duration> {
        // An empty read has already waited `block`: ask again at once.
        Some(Duration::from_millis(1))
    }
}

/// The error of a broker command, naming the broker (without its password).
pub(crate) fn broker_error(url: &RedisUrl, what: &str, error: redis::RedisError) -> StageError {
    Box::new(FlowError::Broker {
        url: url.redacted().to_string(),
        message: url.scrub(&format!("{what}: {error}")),
    })
}

/// A connection with timeouts, so a broker that is down or gone is an error, not a hang.
pub(crate) async fn connect(
    url: &RedisUrl,
    timeout: Duration,
) -> std::result::Result<MultiplexedConnection, StageError> {
    let client =
        redis::Client::open(url.full()).map_err(|e| broker_error(url, "invalid address", e))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| broker_error(url, "cannot connect", e))
}

/// Which entries the next read asks for.
enum Reading {
    /// The consumer's own pending entries with IDs after this one (`XREADGROUP ... 0`):
    /// what an earlier run under the same name read and never acknowledged.
    OwnPending(String),
    /// New entries (`XREADGROUP ... >`).
    New,
}

struct RedisReader {
    source: RedisStreamSource,
    connection: Option<MultiplexedConnection>,
    reading: Reading,
    /// Where the current scan of the group's pending list goes on from (after this ID);
    /// `None`: from the start.
    claim_after: Option<String>,
    next_claim: Instant,
    idle_since: Option<Instant>,
}

impl RedisReader {
    async fn connection(&mut self) -> std::result::Result<MultiplexedConnection, StageError> {
        if let Some(connection) = &self.connection {
            return Ok(connection.clone());
        }
        let source = &self.source;
        // Blocking reads wait `block` on top of the answer time.
        let mut connection = connect(&source.url, source.timeout + source.block).await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&*source.stream)
            .arg(&*source.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await;
        match created {
            Err(error) if error.code() != Some("BUSYGROUP") => {
                return Err(broker_error(&source.url, "XGROUP CREATE", error));
            }
            _ => {}
        }
        self.connection = Some(connection.clone());
        Ok(connection)
    }

    fn entries(&self, ids: Vec<StreamId>) -> Vec<StreamEntry> {
        ids.into_iter()
            .map(|entry| StreamEntry {
                id: EntryId {
                    stream: self.source.stream.clone(),
                    group: self.source.group.clone(),
                    id: entry.id,
                },
                fields: entry
                    .map
                    .into_iter()
                    .map(|(name, value)| (name, bytes(value)))
                    .collect(),
            })
            .collect()
    }

    /// The next `count` of the consumer's own pending entries; once there are none left,
    /// the source goes on with new entries.
    async fn recover(
        &mut self,
        connection: &mut MultiplexedConnection,
        count: usize,
    ) -> std::result::Result<Vec<StreamEntry>, StageError> {
        let Reading::OwnPending(after) = &self.reading else {
            return Ok(Vec::new());
        };
        let source = &self.source;
        // An ID instead of `>` reads the consumer's pending list; it never blocks.
        let reply: Option<StreamReadReply> = source
            .read_group(count, None, after)
            .query_async(connection)
            .await
            .map_err(|e| broker_error(&source.url, "XREADGROUP (own pending entries)", e))?;
        let ids = stream_ids(reply);
        let Some(last) = ids.last() else {
            self.reading = Reading::New;
            return Ok(Vec::new());
        };
        self.reading = Reading::OwnPending(last.id.clone());
        // An entry deleted from the stream (`XDEL`, `XTRIM`) after it was read comes back
        // without fields (an entry always has one): nothing to process, so it is
        // acknowledged here rather than left pending for ever.
        let (deleted, live): (Vec<StreamId>, Vec<StreamId>) =
            ids.into_iter().partition(|id| id.map.is_empty());
        if !deleted.is_empty() {
            redis::cmd("XACK")
                .arg(&*source.stream)
                .arg(&*source.group)
                .arg(deleted.iter().map(|id| id.id.as_str()).collect::<Vec<_>>())
                .query_async::<()>(connection)
                .await
                .map_err(|e| broker_error(&source.url, "XACK (deleted entries)", e))?;
        }
        let recovered = self.entries(live);
        self.source
            .counters
            .recovered
            .fetch_add(recovered.len() as u64, Relaxed);
        Ok(recovered)
    }

    /// Takes over pending entries of other consumers idle for `claim_idle`; one scan of
    /// the pending list per `claim_idle / 2`, in steps of at most `count`. Entries of this
    /// consumer are passed over: they are in flight in this run (or were recovered by it).
    async fn reclaim(
        &mut self,
        connection: &mut MultiplexedConnection,
        count: usize,
    ) -> std::result::Result<Vec<StreamEntry>, StageError> {
        if Instant::now() < self.next_claim {
            return Ok(Vec::new());
        }
        let source = &self.source;
        let min_idle = source.claim_idle.as_millis() as u64;
        let start = match &self.claim_after {
            Some(id) => format!("({id}"),
            None => "-".to_string(),
        };
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&*source.stream)
            .arg(&*source.group)
            .arg("IDLE")
            .arg(min_idle)
            .arg(start)
            .arg("+")
            .arg(count)
            .query_async(connection)
            .await
            .map_err(|e| broker_error(&source.url, "XPENDING", e))?;
        if pending.ids.len() < count {
            // The whole pending list was scanned: look again later.
            self.claim_after = None;
            self.next_claim = Instant::now() + source.claim_idle / 2;
        } else {
            self.claim_after = pending.ids.last().map(|p| p.id.clone());
        }
        let theirs: Vec<&str> = pending
            .ids
            .iter()
            .filter(|p| p.consumer != source.consumer)
            .map(|p| p.id.as_str())
            .collect();
        if theirs.is_empty() {
            return Ok(Vec::new());
        }
        // `XCLAIM` checks the idle time again: of consumers racing for an entry, one wins.
        let reply: StreamClaimReply = redis::cmd("XCLAIM")
            .arg(&*source.stream)
            .arg(&*source.group)
            .arg(&source.consumer)
            .arg(min_idle)
            .arg(theirs)
            .query_async(connection)
            .await
            .map_err(|e| broker_error(&source.url, "XCLAIM", e))?;
        // Entries deleted from the stream meanwhile come back without fields (or not at all).
        let live = reply
            .ids
            .into_iter()
            .filter(|id| !id.map.is_empty())
            .collect();
        let claimed = self.entries(live);
        self.source
            .counters
            .reclaimed
            .fetch_add(claimed.len() as u64, Relaxed);
        Ok(claimed)
    }

    /// At most `count` new entries, waiting at most `block` for them.
    async fn read_new(
        &mut self,
        connection: &mut MultiplexedConnection,
        count: usize,
    ) -> std::result::Result<Vec<StreamEntry>, StageError> {
        let source = &self.source;
        let reply: Option<StreamReadReply> = source
            .read_group(count, Some(source.block), ">")
            .query_async(connection)
            .await
            .map_err(|e| broker_error(&source.url, "XREADGROUP", e))?;
        let entries = self.entries(stream_ids(reply));
        self.source
            .counters
            .read
            .fetch_add(entries.len() as u64, Relaxed);
        Ok(entries)
    }
}

/// The entries of a one-stream `XREADGROUP` reply (none for a nil reply: nothing came
/// within `BLOCK`).
fn stream_ids(reply: Option<StreamReadReply>) -> Vec<StreamId> {
    reply
        .map(|reply| reply.keys.into_iter().flat_map(|key| key.ids).collect())
        .unwrap_or_default()
}

/// A field's value as bytes.
fn bytes(value: redis::Value) -> Vec<u8> {
    match value {
        redis::Value::BulkString(bytes) => bytes,
        redis::Value::SimpleString(text) => text.into_bytes(),
        redis::Value::Int(n) => n.to_string().into_bytes(),
        other => format!("{other:?}").into_bytes(),
    }
}

impl Producer for RedisReader {
    type Item = StreamEntry;

    async fn handle_demand(
        &mut self,
        demand: usize,
    ) -> std::result::Result<Produced<StreamEntry>, StageError> {
        let mut connection = self.connection().await?;
        let count = demand.clamp(1, self.source.max_count);
        if matches!(self.reading, Reading::OwnPending(_)) {
            let recovered = self.recover(&mut connection, count).await?;
            if !recovered.is_empty() {
                self.idle_since = None;
                return Ok(Produced::Events(recovered));
            }
            if matches!(self.reading, Reading::OwnPending(_)) {
                // A batch of deleted entries only: go on with the pending list.
                return Ok(Produced::Events(Vec::new()));
            }
        }
        let claimed = self.reclaim(&mut connection, count).await?;
        if !claimed.is_empty() {
            self.idle_since = None;
            return Ok(Produced::Events(claimed));
        }
        let entries = self.read_new(&mut connection, count).await?;
        if !entries.is_empty() {
            self.idle_since = None;
            return Ok(Produced::Events(entries));
        }
        let idle_since = *self.idle_since.get_or_insert_with(Instant::now);
        match self.source.stop_when_idle {
            Some(idle) if idle_since.elapsed() >= idle => Ok(Produced::Finished(Vec::new())),
            _ => Ok(Produced::Events(Vec::new())),
        }
    }
}
