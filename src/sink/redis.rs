//! [`RedisSink`] (feature `redis`): events into Redis Streams with `XADD`, each exactly
//! once, in seq order, by entry ids made of the event's seq.

use std::time::Duration;

use crate::error::DeliveryError;
use crate::event::StoredEvent;
use crate::sink::Sink;
use crate::sink::broker::{self, Settings};
use crate::sink::template::Template;
use crate::sink::webhook::shown_url;

/// Default for [`RedisSink::batch`]: 100 events per round trip.
pub const DEFAULT_REDIS_BATCH: usize = 100;
/// Default for [`RedisSink::timeout`]: 10 s to connect, and for each round trip.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(10);

/// Forwards events to Redis Streams with `XADD`, on Redis's blocking client.
///
/// Each event becomes an entry whose id is `<seq>-1` and whose fields are `id`,
/// `type`, `timestamp_ms`, `data` (the JSON text), and `subject` / `source` when set.
/// Because ids must grow, a re-sent event (the batch in flight at a crash, or one
/// retried after a failure) is refused by Redis as not newer than the stream's last
/// entry: the sink counts it in `already_delivered` and goes on, so **each event is in
/// the stream exactly once, in seq order**, whatever crashes or outages happen on
/// either side. That asks one thing of you: nothing else adds to the stream (one
/// spool per stream key; with a key per type, one spool per key), and the stream is
/// not deleted while events may still be re-sent. The entry ids are seqs, not times.
///
/// A batch goes in one round trip as one transaction (`MULTI`, its `XADD`s, `EXEC`):
/// Redis checks its memory and its role before running any of it, so a full memory or
/// a read-only replica refuses the whole batch (retried), and no later entry can land
/// ahead of a refused one; inside, only re-sends (counted) and refusals that hold for
/// the whole stream (a key of another type) can fail. One batch is in flight at a time,
/// in seq order ([`Order::Total`](crate::Order::Total)).
///
/// ```
/// use eventspool::RedisSink;
///
/// let sink = RedisSink::new("orders", "redis://127.0.0.1:6379/0", "events.{type}")
///     .batch(500)
///     .max_len(1_000_000); // MAXLEN ~ trimming
/// ```
pub struct RedisSink {
    name: String,
    url: String,
    shown: String,
    stream: Result<Template, String>,
    settings: Settings,
    max_len: Option<u64>,
    connection: Option<redis::Connection>,
    already_delivered: u64,
}

impl std::fmt::Debug for RedisSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSink")
            .field("name", &self.name)
            .field("url", &self.shown)
            .field("stream", &self.stream)
            .field("batch", &self.settings.batch)
            .field("max_len", &self.max_len)
            .field("connected", &self.connection.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisSink {
    /// A sink named `name` (its cursor's key) adding to the stream `stream` (`{type}`
    /// in it stands for the event's type) on the server at `url`
    /// (`redis://[user:password@]host:port/db`). Checked at `open`.
    pub fn new(name: impl Into<String>, url: impl Into<String>, stream: &str) -> Self {
        let url = url.into();
        RedisSink {
            name: name.into(),
            shown: shown_url(&url),
            url,
            stream: Template::new(stream),
            settings: Settings::new(DEFAULT_REDIS_BATCH, DEFAULT_REDIS_TIMEOUT),
            max_len: None,
            connection: None,
            already_delivered: 0,
        }
    }

    broker::setters!(
        unit: "Events",
        batch: DEFAULT_REDIS_BATCH,
        timeout: DEFAULT_REDIS_TIMEOUT,
        bounds: "connecting, and each round trip,"
    );

    /// Trims each stream to about `n` entries as it adds (`MAXLEN ~ n`). Defaults to
    /// no trimming.
    pub fn max_len(mut self, n: u64) -> Self {
        self.max_len = Some(n);
        self
    }

    /// A new connection, with the timeout on every read and write.
    fn connect(&self) -> Result<redis::Connection, DeliveryError> {
        let failed = |e: redis::RedisError| {
            DeliveryError::retryable(format!("connecting to {}: {e}", self.shown))
        };
        let client = redis::Client::open(self.url.as_str()).map_err(failed)?;
        let timeout = crate::time::bounded(self.settings.timeout);
        let connection = client
            .get_connection_with_timeout(timeout)
            .map_err(failed)?;
        connection.set_read_timeout(Some(timeout)).map_err(failed)?;
        connection
            .set_write_timeout(Some(timeout))
            .map_err(failed)?;
        Ok(connection)
    }
}

/// Adds the field/value pairs of an event's entry to the `XADD` last begun in
/// `transaction` (borrowed: the pipeline copies them once).
fn add_fields(transaction: &mut redis::Pipeline, event: &StoredEvent) {
    let optional = [("subject", &event.subject), ("source", &event.source)];
    transaction
        .arg("id")
        .arg(event.id.as_str())
        .arg("type")
        .arg(event.event_type.as_str())
        .arg("timestamp_ms")
        .arg(event.timestamp_ms)
        .arg("data")
        .arg(event.data.get());
    for (field, value) in optional {
        if let Some(value) = value {
            transaction.arg(field).arg(value.as_str());
        }
    }
}

/// At most the first 300 bytes of an error: a refused transaction lists every entry.
fn brief(e: &redis::RedisError) -> String {
    let text = e.to_string();
    match text.char_indices().nth(300) {
        Some((cut, _)) => format!("{}… ({} bytes more)", &text[..cut], text.len() - cut),
        None => text,
    }
}

/// Whether Redis refusing an entry may pass: full memory, a loading or read-only
/// server, a busy script elsewhere. A wrong type at the key, a refused permission or a
/// bad argument will not.
fn retryable(message: &str) -> bool {
    [
        "OOM",
        "LOADING",
        "READONLY",
        "BUSY",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
    ]
    .iter()
    .any(|code| message.starts_with(code))
}

impl Sink for RedisSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
        let stream = self.stream.clone().map_err(DeliveryError::permanent)?;
        // Kept only when the round trip succeeds: after a failure, a new one.
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.connect()?,
        };
        let mut transaction = redis::pipe();
        transaction.atomic().ignore_errors();
        for event in events {
            transaction.cmd("XADD").arg(stream.render(event).as_ref());
            if let Some(n) = self.max_len {
                transaction.arg("MAXLEN").arg("~").arg(n);
            }
            transaction.arg(format!("{}-1", event.seq));
            add_fields(&mut transaction, event);
        }
        let shown = &self.shown;
        // A refusal of the whole transaction (EXECABORT: full memory, a read-only
        // replica...) comes back here; what remains are refusals of single entries.
        let results: Vec<redis::RedisResult<redis::Value>> = transaction
            .query(&mut connection)
            .map_err(|e| DeliveryError::retryable(format!("XADD to {shown}: {}", brief(&e))))?;
        self.connection = Some(connection);
        let mut again = 0;
        for (event, result) in events.iter().zip(&results) {
            let Err(e) = result else { continue };
            let error = e.to_string();
            if error.contains("equal or smaller") {
                again += 1;
                continue;
            }
            let message = format!(
                "XADD to {shown}, stream {}: seq {} refused: {error}",
                stream.render(event),
                event.seq
            );
            return match retryable(&error) {
                true => Err(DeliveryError::retryable(message)),
                false => Err(DeliveryError::permanent(message)),
            };
        }
        self.already_delivered += again;
        Ok(())
    }

    broker::sink_methods!();

    fn check(&self) -> Result<(), String> {
        let name = &self.name;
        if let Err(e) = &self.stream {
            return Err(format!("sink {name}: {e}"));
        }
        if let Err(e) = redis::Client::open(self.url.as_str()) {
            return Err(format!(
                "sink {name}: invalid Redis URL {}: {e}",
                self.shown
            ));
        }
        self.settings.check(name)
    }
}
