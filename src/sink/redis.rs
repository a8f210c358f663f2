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

/// Adds a batch's entries in order, in one round trip, stopping at the first error
/// that is not a re-send: an entry whose id is not above its stream's last was added
/// before (counted, skipped). Stopping keeps a later entry from landing ahead of one
/// that failed, which could then never be added (its id would be below the last).
/// KEYS: the stream of each entry. ARGV: the MAXLEN (or ""), then for each entry its
/// id, its number of field/value arguments, and those.
const ADD_BATCH: &str = r#"
local maxlen = ARGV[1]
local added, again, at = 0, 0, 2
for i = 1, #KEYS do
    local id, n = ARGV[at], tonumber(ARGV[at + 1])
    local command = {'XADD', KEYS[i]}
    if maxlen ~= '' then
        command[#command + 1] = 'MAXLEN'
        command[#command + 1] = '~'
        command[#command + 1] = maxlen
    end
    command[#command + 1] = id
    for j = 1, n do
        command[#command + 1] = ARGV[at + 1 + j]
    end
    at = at + 2 + n
    local reply = redis.pcall(unpack(command))
    if type(reply) == 'table' and reply.err then
        if string.find(reply.err, 'equal or smaller', 1, true) then
            again = again + 1
        else
            return {added, again, reply.err}
        end
    else
        added = added + 1
    end
end
return {added, again, ''}
"#;

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
/// A batch goes in one round trip (a script that adds the entries in order and stops
/// at the first failure), so events go out one batch in flight at a time, in seq
/// order ([`Order::Total`](crate::Order::Total)).
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
    script: redis::Script,
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
            script: redis::Script::new(ADD_BATCH),
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

/// Adds the fields of an event's entry to `invocation`: how many arguments they make,
/// then the field/value pairs (borrowed: the invocation copies them once).
fn add_fields(invocation: &mut redis::ScriptInvocation<'_>, event: &StoredEvent) {
    let optional = [("subject", &event.subject), ("source", &event.source)];
    let present = optional.iter().filter(|(_, v)| v.is_some()).count();
    invocation
        .arg((4 + present) * 2)
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
            invocation.arg(field).arg(value.as_str());
        }
    }
}

/// Whether Redis refusing an entry may pass: full memory, a loading or read-only
/// server, a busy script. A wrong type at the key, a refused permission or a bad
/// argument will not.
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
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(self.max_len.map_or(String::new(), |n| n.to_string()));
        for event in events {
            invocation
                .key(stream.render(event).as_ref())
                .arg(format!("{}-1", event.seq));
            add_fields(&mut invocation, event);
        }
        let shown = &self.shown;
        let (added, again, error): (u64, u64, String) = invocation
            .invoke(&mut connection)
            .map_err(|e| DeliveryError::retryable(format!("XADD to {shown}: {e}")))?;
        self.connection = Some(connection);
        if error.is_empty() {
            self.already_delivered += again;
            return Ok(());
        }
        let message = format!(
            "XADD to {shown}, stream {}: seq {} refused ({added} added before it): {error}",
            stream.as_str(),
            events[(added + again) as usize].seq
        );
        match retryable(&error) {
            true => Err(DeliveryError::retryable(message)),
            false => Err(DeliveryError::permanent(message)),
        }
    }

    fn take_already_delivered(&mut self) -> u64 {
        std::mem::take(&mut self.already_delivered)
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
