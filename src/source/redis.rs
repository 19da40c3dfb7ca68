//! Redis Streams with consumer groups as a source (feature `redis`).
//!
//! Demand maps to `XREADGROUP GROUP g c COUNT n BLOCK t STREAMS s >`: the stage asks for
//! `n`, Redis gives at most `n`, and waits at most `t` for them. An entry is
//! acknowledged (`XACK`) only by a sink at the end of the flow
//! ([`RedisAck`](crate::sink::RedisAck), [`RedisStreamSink`](crate::sink::RedisStreamSink)),
//! once the flow has fully processed it — Broadway's end-to-end acknowledgement. Entries
//! that a consumer read and never acknowledged (it crashed) stay pending in the group;
//! every consumer reclaims pending entries idle longer than
//! [`claim_idle`](RedisStreamSource::claim_idle) with `XAUTOCLAIM`, so several processes
//! can share a stream and a crashed one loses nothing. Delivery is at least once: a
//! reclaimed entry may have been processed before (counted in
//! [`RedisCounters::reclaimed`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

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
    reclaimed: AtomicU64,
}

impl RedisCounters {
    /// New entries read with `XREADGROUP`.
    pub fn read(&self) -> u64 {
        self.read.load(Relaxed)
    }

    /// Pending entries of other (stopped) consumers taken over with `XAUTOCLAIM`: each
    /// may be a duplicate, processed before by the consumer that stopped.
    pub fn reclaimed(&self) -> u64 {
        self.reclaimed.load(Relaxed)
    }
}

/// A Redis stream read by one consumer of a consumer group (the group is created, with
/// the stream, if missing, and then reads the stream from its first entry). Demand maps to `XREADGROUP ... COUNT n BLOCK t`. Entries are
/// acknowledged by a sink at the end of the flow ([`RedisAck`](crate::sink::RedisAck),
/// [`RedisStreamSink`](crate::sink::RedisStreamSink)) once fully processed; pending
/// entries of a consumer idle for [`claim_idle`](Self::claim_idle) are reclaimed with
/// `XAUTOCLAIM` (at-least-once: see [`RedisCounters::reclaimed`]). A flow must carry
/// every entry's [`EntryId`] to the sink — an entry dropped on the way (a `filter`)
/// is never acknowledged and comes back after `claim_idle`. `tests/redis.rs` runs it
/// against a real server.
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
    url: String,
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
            url: url.to_string(),
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

    /// How long one `XREADGROUP` waits for entries (`BLOCK`; default 100 ms).
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block;
        self
    }

    /// Pending entries idle this long belong to a consumer presumed dead and are
    /// reclaimed (default 30 s: longer than the flow ever takes to process an entry).
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

    /// Connection and response timeout (beyond `block`); default 5 s. A broker that does
    /// not answer within it ends the run with [`FlowError::Broker`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The most entries one read asks for (`COUNT`, at most the demand; default 1000).
    pub fn max_count(mut self, max_count: usize) -> Self {
        self.max_count = max_count.max(1);
        self
    }

    /// The source's counters (shared by its producers).
    pub fn counters(&self) -> Arc<RedisCounters> {
        self.counters.clone()
    }
}

impl Source for RedisStreamSource {
    type Item = StreamEntry;

    fn into_producers(self) -> Result<Vec<BoxedProducer<StreamEntry>>> {
        redis::Client::open(self.url.as_str()).map_err(|e| FlowError::Broker {
            url: self.url.clone(),
            message: format!("invalid address: {e}"),
        })?;
        Ok(vec![BoxedProducer::new(RedisReader {
            source: self,
            connection: None,
            cursor: "0-0".to_string(),
            next_claim: Instant::now(),
            idle_since: None,
        })])
    }

    fn retry_interval(&self) -> Option<Duration> {
        // An empty read has already waited `block`: ask again at once.
        Some(Duration::from_millis(1))
    }
}

/// The error of a broker command, naming the broker.
pub(crate) fn broker_error(url: &str, what: &str, error: redis::RedisError) -> StageError {
    Box::new(FlowError::Broker {
        url: url.to_string(),
        message: format!("{what}: {error}"),
    })
}

/// A connection with timeouts, so a broker that is down or gone is an error, not a hang.
pub(crate) async fn connect(
    url: &str,
    timeout: Duration,
) -> std::result::Result<MultiplexedConnection, StageError> {
    let client = redis::Client::open(url).map_err(|e| broker_error(url, "invalid address", e))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| broker_error(url, "cannot connect", e))
}

struct RedisReader {
    source: RedisStreamSource,
    connection: Option<MultiplexedConnection>,
    /// Where the next `XAUTOCLAIM` scan of the pending entries goes on from.
    cursor: String,
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

    /// Takes over pending entries of consumers idle for `claim_idle`; one scan of the
    /// pending list per `claim_idle / 2`, in steps of at most `count`.
    async fn reclaim(
        &mut self,
        connection: &mut MultiplexedConnection,
        count: usize,
    ) -> std::result::Result<Vec<StreamEntry>, StageError> {
        if Instant::now() < self.next_claim {
            return Ok(Vec::new());
        }
        let source = &self.source;
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&*source.stream)
            .arg(&*source.group)
            .arg(&source.consumer)
            .arg(source.claim_idle.as_millis() as u64)
            .arg(&self.cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(connection)
            .await
            .map_err(|e| broker_error(&source.url, "XAUTOCLAIM", e))?;
        self.cursor = reply.next_stream_id;
        if self.cursor == "0-0" {
            // The whole pending list was scanned: look again later.
            self.next_claim = Instant::now() + self.source.claim_idle / 2;
        }
        let claimed = self.entries(reply.claimed);
        self.source
            .counters
            .reclaimed
            .fetch_add(claimed.len() as u64, Relaxed);
        Ok(claimed)
    }
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
        let claimed = self.reclaim(&mut connection, count).await?;
        if !claimed.is_empty() {
            self.idle_since = None;
            return Ok(Produced::Events(claimed));
        }
        let source = &self.source;
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&*source.group)
            .arg(&source.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(source.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&*source.stream)
            .arg(">")
            .query_async(&mut connection)
            .await
            .map_err(|e| broker_error(&source.url, "XREADGROUP", e))?;
        let ids: Vec<StreamId> = reply
            .map(|reply| reply.keys.into_iter().flat_map(|key| key.ids).collect())
            .unwrap_or_default();
        let entries = self.entries(ids);
        self.source
            .counters
            .read
            .fetch_add(entries.len() as u64, Relaxed);
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
