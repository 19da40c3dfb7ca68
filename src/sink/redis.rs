//! Redis Streams as sinks (feature `redis`): acknowledging what a flow has processed, and
//! writing results to a stream and acknowledging their inputs in one transaction.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::error::StageError;
use crate::source::EntryId;
use crate::source::redis::{broker_error, connect};
use crate::source::redis_url::RedisUrl;
use crate::stage::{Consumer, ConsumerContext};

/// Acknowledges (`XACK`) the entries that reach it, one command per stream and group per
/// batch: put it at the end of a flow over a
/// [`RedisStreamSource`](crate::source::RedisStreamSource), so an entry is acknowledged
/// only once the flow has fully processed it. See the source's example. The address's
/// password never shows, in errors or in `Debug`.
#[derive(Debug)]
pub struct RedisAck {
    url: RedisUrl,
    timeout: Duration,
    connection: Option<MultiplexedConnection>,
}

impl RedisAck {
    /// Acknowledges on the broker at `url`.
    pub fn new(url: &str) -> Self {
        RedisAck {
            url: RedisUrl::new(url),
            timeout: Duration::from_secs(5),
            connection: None,
        }
    }

    /// Connection and response timeout (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

async fn connection(
    slot: &mut Option<MultiplexedConnection>,
    url: &RedisUrl,
    timeout: Duration,
) -> Result<MultiplexedConnection, StageError> {
    if let Some(connection) = slot {
        return Ok(connection.clone());
    }
    let connection = connect(url, timeout).await?;
    *slot = Some(connection.clone());
    Ok(connection)
}

/// `XACK` commands for `ids`, one per (stream, group).
fn acks<'a>(pipe: &mut redis::Pipeline, ids: impl IntoIterator<Item = &'a EntryId>) {
    let mut by_stream: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
    for id in ids {
        by_stream
            .entry((&id.stream, &id.group))
            .or_default()
            .push(&id.id);
    }
    for ((stream, group), ids) in by_stream {
        pipe.cmd("XACK").arg(stream).arg(group).arg(ids).ignore();
    }
}

impl Consumer for RedisAck {
    type Item = EntryId;

    async fn handle_events(
        &mut self,
        ids: Vec<EntryId>,
        _context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        let mut connection = connection(&mut self.connection, &self.url, self.timeout).await?;
        let mut pipe = redis::pipe();
        acks(&mut pipe, &ids);
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(|e| broker_error(&self.url, "XACK", e))
    }
}

/// A record for [`RedisStreamSink`]: fields to add to the output stream, and the input
/// entry it came from, acknowledged in the same transaction.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The new entry's fields.
    pub fields: Vec<(String, Vec<u8>)>,
    /// The input entry to acknowledge with it, if any.
    pub ack: Option<EntryId>,
}

/// Appends each [`Outgoing`] to a stream (`XADD`) and acknowledges its input (`XACK`),
/// one `MULTI`/`EXEC` transaction per batch: a result is written if and only if its
/// input is acknowledged. The address's password never shows, in errors or in `Debug`.
///
/// ```no_run
/// use flowstage::flow::Flow;
/// use flowstage::sink::{Outgoing, RedisStreamSink};
/// use flowstage::source::RedisStreamSource;
///
/// let url = "redis://127.0.0.1:6379";
/// Flow::from_source(RedisStreamSource::new(url, "orders", "enrich", "worker-1"))
///     .map(|entry| Outgoing {
///         fields: vec![("total".into(), entry.field("amount").unwrap_or_default().to_vec())],
///         ack: Some(entry.id),
///     })
///     .run_into(RedisStreamSink::new(url, "totals"))?;
/// # Ok::<(), flowstage::FlowError>(())
/// ```
#[derive(Debug)]
pub struct RedisStreamSink {
    url: RedisUrl,
    stream: String,
    timeout: Duration,
    connection: Option<MultiplexedConnection>,
}

impl RedisStreamSink {
    /// Appends to `stream` at `url`.
    pub fn new(url: &str, stream: &str) -> Self {
        RedisStreamSink {
            url: RedisUrl::new(url),
            stream: stream.to_string(),
            timeout: Duration::from_secs(5),
            connection: None,
        }
    }

    /// Connection and response timeout (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Consumer for RedisStreamSink {
    type Item = Outgoing;

    async fn handle_events(
        &mut self,
        records: Vec<Outgoing>,
        _context: &mut ConsumerContext,
    ) -> Result<(), StageError> {
        let mut connection = connection(&mut self.connection, &self.url, self.timeout).await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for record in &records {
            let command = pipe.cmd("XADD").arg(&self.stream).arg("*");
            for (name, value) in &record.fields {
                command.arg(name).arg(value.as_slice());
            }
            command.ignore();
        }
        acks(&mut pipe, records.iter().filter_map(|r| r.ack.as_ref()));
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(|e| broker_error(&self.url, "XADD/XACK", e))
    }
}
