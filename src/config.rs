//! [`SpoolConfig`], the operator-facing configuration, and its policies.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
#[cfg(feature = "kafka")]
use crate::sink::kafka::KafkaSink;
#[cfg(feature = "nats")]
use crate::sink::nats::NatsSink;
use crate::sink::order::{Concurrency, DEFAULT_WINDOW, Order};
use crate::sink::payload::Content;
#[cfg(feature = "redis")]
use crate::sink::redis::RedisSink;
use crate::sink::webhook::{DEFAULT_WEBHOOK_TIMEOUT, WebhookSink};
use crate::sink::{Backoff, DEFAULT_BACKOFF, DEFAULT_MAX_RETRIES};

/// Default for [`SpoolConfig::max_events`]: unbounded (only `max_bytes` applies).
pub const DEFAULT_MAX_EVENTS: u64 = u64::MAX;
/// Default for [`SpoolConfig::max_bytes`]: 1 GiB of stored events.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// Default for [`SpoolConfig::max_event_bytes`]: 1 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: u64 = 1 << 20;
/// Default for [`SpoolConfig::batch_size`]: 1024 events per transaction.
pub const DEFAULT_BATCH_SIZE: usize = 1024;
/// Default for [`SpoolConfig::flush_interval_ms`]: 0, commit as soon as the queue is drained.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::ZERO;
/// Default for [`SpoolConfig::channel_capacity`]: 65 536 messages.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 65_536;
/// Largest [`SpoolConfig::batch_size`]: 1 048 576 events per transaction.
pub const MAX_BATCH_SIZE: usize = 1 << 20;
/// Largest [`SpoolConfig::channel_capacity`]: 4 194 304 messages (the channel is
/// allocated whole when the spool opens, ~0.6 GB at this size).
pub const MAX_CHANNEL_CAPACITY: usize = 1 << 22;
/// Default for [`SpoolConfig::reader_wait_ms`]: a read waits up to 30 s for a pooled
/// connection.
pub const DEFAULT_READER_WAIT: Duration = Duration::from_secs(30);
/// Default for [`SpoolConfig::reader_pool_size`]: 4 reader connections.
pub const DEFAULT_READER_POOL_SIZE: u32 = 4;

/// What `emit` does when the channel to the writer is full.
///
/// In a config file: `"block"`, `"drop_newest"`, `"reject"` or `{"block_for_ms": 250}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Wait until there is room (the default).
    #[default]
    Block,
    /// Wait up to this long, then fail with [`Error::Full`], which gives the event back.
    #[serde(rename = "block_for_ms", deserialize_with = "millis")]
    BlockFor(Duration),
    /// Drop the event, count it in `dropped_overflow`, log once per burst; never blocks.
    DropNewest,
    /// Fail at once with [`Error::Full`], which gives the event back.
    Reject,
}

/// How hard a commit pushes the data to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// `synchronous = NORMAL` in WAL mode: a commit survives a crash of the process
    /// (`kill -9`), the last commits may be lost on power loss. The default.
    #[default]
    Normal,
    /// `synchronous = FULL`: every commit is fsynced, surviving power loss.
    Full,
}

impl Durability {
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        }
    }
}

/// The spool's settings, deserializable so operators can keep them in a TOML or JSON
/// file. Every field but `path` has a default (the `DEFAULT_*` constants).
///
/// ```
/// let config: eventspool::SpoolConfig = serde_json::from_str(r#"{
///     "path": "data/events.db",
///     "max_events": 1000000,
///     "overflow": {"block_for_ms": 250},
///     "durability": "full"
/// }"#).unwrap();
/// assert_eq!(config.batch_size, eventspool::DEFAULT_BATCH_SIZE);
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// The spool file. Parent directories are created.
    pub path: PathBuf,
    /// Most events kept; the oldest are evicted (and counted) beyond it.
    #[serde(default = "default_max_events")]
    pub max_events: u64,
    /// Most bytes of events kept (data, type, id, subject, source; not SQLite's own
    /// overhead); the oldest are evicted (and counted) beyond it.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Most bytes of dead letters kept, across sinks (counted as `max_bytes` counts);
    /// the oldest are evicted (and counted in `dead_letters_evicted`) beyond it, or
    /// beyond `max_events` of them. `None` (the default) is `max_bytes`.
    #[serde(default)]
    pub max_dead_letter_bytes: Option<u64>,
    /// Largest single event accepted, in the same bytes as `max_bytes`.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: u64,
    /// Hard ceiling on the database file's size. A commit that would grow the file
    /// past it fails like a full disk: the batch is kept and retried. `None` (the
    /// default) leaves the file to the disk.
    #[serde(default)]
    pub max_file_bytes: Option<u64>,
    /// Most events committed in one transaction.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// How long the writer may wait for more events to fill a batch, in milliseconds.
    /// Durable waiters (`append`, `flush`, `close`) are never held back by it.
    #[serde(default)]
    pub flush_interval_ms: u64,
    /// Capacity of the channel between callers and the writer, in messages.
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: usize,
    /// What `emit` does when the channel is full.
    #[serde(default)]
    pub overflow: Overflow,
    /// How hard commits push to the disk.
    #[serde(default)]
    pub durability: Durability,
    /// Number of pooled reader connections for queries.
    #[serde(default = "default_reader_pool_size")]
    pub reader_pool_size: u32,
    /// How long a read waits for a pooled connection when all are in use, in ms, before
    /// it fails with [`crate::Error::Timeout`].
    #[serde(default = "default_reader_wait_ms")]
    pub reader_wait_ms: u64,
    /// Open what the file holds even when commits were lost with its write-ahead log
    /// after a crash (see [`crate::Error::WalLost`]): the loss is
    /// logged, and every `seq` the lost commits may have used is skipped (an upper
    /// bound read from `<path>-shm`), so none is given to another event. For unattended
    /// programs under `Durability::Normal`, where a power loss can cause it and nobody
    /// is there to act on the error. Defaults to false: refuse to open.
    #[serde(default)]
    pub accept_lost_wal: bool,
    /// Webhooks to deliver to.
    #[serde(default)]
    pub sinks: Vec<WebhookConfig>,
    /// Redis streams to forward to (feature `redis`).
    #[cfg(feature = "redis")]
    #[serde(default)]
    pub redis: Vec<RedisConfig>,
    /// NATS JetStream subjects to forward to (feature `nats`).
    #[cfg(feature = "nats")]
    #[serde(default)]
    pub nats: Vec<NatsConfig>,
    /// Kafka topics to forward to (feature `kafka`).
    #[cfg(feature = "kafka")]
    #[serde(default)]
    pub kafka: Vec<KafkaConfig>,
    /// Where the key of an encrypted spool comes from (feature `encryption`); never
    /// the key itself.
    #[cfg(feature = "encryption")]
    #[serde(default)]
    pub encryption: Option<EncryptionConfig>,
}

/// Where the key of an encrypted spool comes from, in a [`SpoolConfig`] (feature
/// `encryption`): an environment variable or a file, never the key itself.
///
/// ```
/// let config: eventspool::SpoolConfig = toml::from_str(r#"
///     path = "events.db"
///     [encryption]
///     key_file = "/run/secrets/spool-key"
///     format = "hex"
/// "#).unwrap();
/// assert!(config.encryption.is_some());
/// ```
#[cfg(feature = "encryption")]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// The environment variable that holds the key.
    #[serde(default)]
    pub key_env: Option<String>,
    /// The file that holds the key (one trailing line break is ignored).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// What the key is: a passphrase (the default) or 64 hex digits of a raw key.
    #[serde(default)]
    pub format: KeyFormat,
}

/// How an [`EncryptionConfig`]'s key is written.
#[cfg(feature = "encryption")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyFormat {
    /// A passphrase ([`EncryptionKey::passphrase`](crate::EncryptionKey::passphrase)).
    #[default]
    Passphrase,
    /// A raw key as 64 hexadecimal digits ([`EncryptionKey::from_hex`](crate::EncryptionKey::from_hex)).
    Hex,
}

#[cfg(feature = "encryption")]
impl EncryptionConfig {
    /// Reads the key from where it says.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when neither or both places are named, the variable is
    /// not set, or the key is malformed; [`Error::Io`] when the file cannot be read.
    /// No message repeats the key.
    pub fn key(&self) -> Result<crate::EncryptionKey> {
        let text = zeroize::Zeroizing::new(match (&self.key_env, &self.key_file) {
            (Some(var), None) => std::env::var(var).map_err(|_| {
                Error::InvalidConfig(format!(
                    "encryption: the environment variable {var} is not set (or not UTF-8)"
                ))
            })?,
            (None, Some(file)) => std::fs::read_to_string(file).map_err(|e| {
                Error::io(
                    format!("encryption: cannot read the key file {}", file.display()),
                    e,
                )
            })?,
            _ => {
                return Err(Error::InvalidConfig(
                    "encryption: name exactly one of key_env and key_file".into(),
                ));
            }
        });
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        match self.format {
            KeyFormat::Passphrase => Ok(crate::EncryptionKey::passphrase(text)),
            KeyFormat::Hex => crate::EncryptionKey::from_hex(text),
        }
    }
}

/// A Kafka sink in a [`SpoolConfig`] (feature `kafka`); every field but `name`,
/// `bootstrap` and `topic` has the default of the matching [`KafkaSink`] setter.
///
/// ```
/// let config: eventspool::SpoolConfig = toml::from_str(r#"
///     path = "events.db"
///     [[kafka]]
///     name = "orders"
///     bootstrap = "127.0.0.1:9092"
///     topic = "events.{type}"
///     settings = { "security.protocol" = "sasl_plaintext", "sasl.password" = "secret" }
/// "#).unwrap();
/// assert_eq!(config.kafka[0].batch, eventspool::DEFAULT_KAFKA_BATCH);
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[cfg(feature = "kafka")]
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// The sink's name (the key of its cursor).
    pub name: String,
    /// The brokers to start from: `host:port[,host:port...]`.
    pub bootstrap: String,
    /// The topic; `{type}` in it stands for the event's type.
    pub topic: String,
    /// librdkafka settings passed through (see [`KafkaSink::setting`]). Their values
    /// are never shown.
    #[serde(default)]
    pub settings: std::collections::BTreeMap<String, String>,
    /// Records per batch.
    #[serde(default = "default_kafka_batch")]
    pub batch: usize,
    /// Batches whose delivery reports may be awaited at once.
    #[serde(default = "default_kafka_in_flight")]
    pub in_flight: usize,
    /// Batches per cursor commit.
    #[serde(default = "default_broker_commit_every")]
    pub commit_every: usize,
    /// How long a batch may wait for its delivery reports, in ms.
    #[serde(default = "default_kafka_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries before dead-lettering; `null` retries forever.
    #[serde(default = "default_max_retries")]
    pub max_retries: Option<u32>,
    /// First backoff ceiling in ms.
    #[serde(default = "default_backoff_min_ms")]
    pub backoff_min_ms: u64,
    /// Longest backoff in ms.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Only these event types (a trailing `*` matches a prefix); empty: all.
    #[serde(default)]
    pub event_types: Vec<String>,
}

#[cfg(feature = "kafka")]
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("name", &self.name)
            .field("bootstrap", &self.bootstrap)
            .field("topic", &self.topic)
            .field("settings", &self.settings.keys().collect::<Vec<_>>())
            .field("batch", &self.batch)
            .field("in_flight", &self.in_flight)
            .field("commit_every", &self.commit_every)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_retries", &self.max_retries)
            .field("event_types", &self.event_types)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "kafka")]
impl KafkaConfig {
    /// The [`KafkaSink`] this entry describes.
    pub fn to_sink(&self) -> KafkaSink {
        let mut sink =
            KafkaSink::new(&self.name, &self.bootstrap, &self.topic).in_flight(self.in_flight);
        for (key, value) in &self.settings {
            sink = sink.setting(key, value);
        }
        sink.with_settings(broker_settings(
            self.batch,
            self.commit_every,
            self.timeout_ms,
            self.max_retries,
            (self.backoff_min_ms, self.backoff_max_ms),
            &self.event_types,
        ))
    }
}

#[cfg(feature = "kafka")]
fn default_kafka_batch() -> usize {
    crate::sink::kafka::DEFAULT_KAFKA_BATCH
}
#[cfg(feature = "kafka")]
fn default_kafka_in_flight() -> usize {
    crate::sink::kafka::DEFAULT_KAFKA_IN_FLIGHT
}
#[cfg(feature = "kafka")]
fn default_kafka_timeout_ms() -> u64 {
    crate::time::millis(crate::sink::kafka::DEFAULT_KAFKA_TIMEOUT)
}

/// A NATS JetStream sink in a [`SpoolConfig`] (feature `nats`); every field but `name`,
/// `url` and `subject` has the default of the matching [`NatsSink`] setter.
///
/// ```
/// let config: eventspool::SpoolConfig = toml::from_str(r#"
///     path = "events.db"
///     [[nats]]
///     name = "orders"
///     url = "nats://app:secret@127.0.0.1:4222"
///     subject = "events.{type}"
/// "#).unwrap();
/// assert_eq!(config.nats[0].batch, eventspool::DEFAULT_NATS_BATCH);
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[cfg(feature = "nats")]
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// The sink's name (the key of its cursor).
    pub name: String,
    /// `nats://[user:password@|token@]host[:port]`. Only its host and port are ever shown.
    pub url: String,
    /// The subject; `{type}` in it stands for the event's type.
    pub subject: String,
    /// A PEM file of certificates to trust for TLS instead of the web's roots.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Publishes per round trip.
    #[serde(default = "default_nats_batch")]
    pub batch: usize,
    /// Round trips whose acknowledgements may be awaited at once.
    #[serde(default = "default_nats_in_flight")]
    pub in_flight: usize,
    /// Round trips per cursor commit.
    #[serde(default = "default_broker_commit_every")]
    pub commit_every: usize,
    /// Connect and acknowledgement timeout in ms.
    #[serde(default = "default_nats_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries before dead-lettering; `null` retries forever.
    #[serde(default = "default_max_retries")]
    pub max_retries: Option<u32>,
    /// First backoff ceiling in ms.
    #[serde(default = "default_backoff_min_ms")]
    pub backoff_min_ms: u64,
    /// Longest backoff in ms.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Only these event types (a trailing `*` matches a prefix); empty: all.
    #[serde(default)]
    pub event_types: Vec<String>,
}

#[cfg(feature = "nats")]
impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("name", &self.name)
            .field("url", &crate::sink::webhook::shown_url(&self.url))
            .field("subject", &self.subject)
            .field("tls_ca", &self.tls_ca)
            .field("batch", &self.batch)
            .field("in_flight", &self.in_flight)
            .field("commit_every", &self.commit_every)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_retries", &self.max_retries)
            .field("event_types", &self.event_types)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "nats")]
impl NatsConfig {
    /// The [`NatsSink`] this entry describes.
    pub fn to_sink(&self) -> NatsSink {
        let sink = NatsSink::new(&self.name, &self.url, &self.subject).in_flight(self.in_flight);
        let sink = match &self.tls_ca {
            Some(file) => sink.tls_ca(file),
            None => sink,
        };
        sink.with_settings(broker_settings(
            self.batch,
            self.commit_every,
            self.timeout_ms,
            self.max_retries,
            (self.backoff_min_ms, self.backoff_max_ms),
            &self.event_types,
        ))
    }
}

#[cfg(feature = "nats")]
fn default_nats_batch() -> usize {
    crate::sink::nats::DEFAULT_NATS_BATCH
}
#[cfg(feature = "nats")]
fn default_nats_in_flight() -> usize {
    crate::sink::nats::DEFAULT_NATS_IN_FLIGHT
}
#[cfg(feature = "nats")]
fn default_nats_timeout_ms() -> u64 {
    crate::time::millis(crate::sink::nats::DEFAULT_NATS_TIMEOUT)
}

/// A Redis Streams sink in a [`SpoolConfig`] (feature `redis`); every field but `name`,
/// `url` and `stream` has the default of the matching [`RedisSink`] setter.
///
/// ```
/// let config: eventspool::SpoolConfig = toml::from_str(r#"
///     path = "events.db"
///     [[redis]]
///     name = "orders"
///     url = "redis://127.0.0.1:6379/0"
///     stream = "events.{type}"
///     max_len = 1000000
/// "#).unwrap();
/// assert_eq!(config.redis[0].batch, eventspool::DEFAULT_REDIS_BATCH);
/// ```
#[cfg(feature = "redis")]
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// The sink's name (the key of its cursor).
    pub name: String,
    /// `redis://[user:password@]host:port/db`. Only its host and port are ever shown.
    pub url: String,
    /// The stream key; `{type}` in it stands for the event's type.
    pub stream: String,
    /// Events per round trip.
    #[serde(default = "default_redis_batch")]
    pub batch: usize,
    /// Round trips per cursor commit.
    #[serde(default = "default_broker_commit_every")]
    pub commit_every: usize,
    /// Trim each stream to about this many entries (`MAXLEN ~`).
    #[serde(default)]
    pub max_len: Option<u64>,
    /// Connect and round-trip timeout in ms.
    #[serde(default = "default_redis_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries before dead-lettering; `null` retries forever.
    #[serde(default = "default_max_retries")]
    pub max_retries: Option<u32>,
    /// First backoff ceiling in ms.
    #[serde(default = "default_backoff_min_ms")]
    pub backoff_min_ms: u64,
    /// Longest backoff in ms.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Only these event types (a trailing `*` matches a prefix); empty: all.
    #[serde(default)]
    pub event_types: Vec<String>,
}

#[cfg(feature = "redis")]
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("name", &self.name)
            .field("url", &crate::sink::webhook::shown_url(&self.url))
            .field("stream", &self.stream)
            .field("batch", &self.batch)
            .field("commit_every", &self.commit_every)
            .field("max_len", &self.max_len)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_retries", &self.max_retries)
            .field("event_types", &self.event_types)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "redis")]
impl RedisConfig {
    /// The [`RedisSink`] this entry describes.
    pub fn to_sink(&self) -> RedisSink {
        let mut sink =
            RedisSink::new(&self.name, &self.url, &self.stream).with_settings(broker_settings(
                self.batch,
                self.commit_every,
                self.timeout_ms,
                self.max_retries,
                (self.backoff_min_ms, self.backoff_max_ms),
                &self.event_types,
            ));
        if let Some(n) = self.max_len {
            sink = sink.max_len(n);
        }
        sink
    }
}

#[cfg(feature = "redis")]
fn default_redis_batch() -> usize {
    crate::sink::redis::DEFAULT_REDIS_BATCH
}
#[cfg(feature = "redis")]
fn default_redis_timeout_ms() -> u64 {
    crate::time::millis(crate::sink::redis::DEFAULT_REDIS_TIMEOUT)
}

/// A webhook in a [`SpoolConfig`]; every field but `name` and `url` has the default of
/// the matching [`WebhookSink`] setter.
///
/// ```
/// let config: eventspool::SpoolConfig = serde_json::from_str(r#"{
///     "path": "events.db",
///     "sinks": [{"name": "audit", "url": "https://example.test/hook",
///                "max_retries": null, "batch": 100, "signing_secret": "whsec_c2VjcmV0",
///                "headers": {"authorization": "Bearer t"}, "event_types": ["order.*"]}]
/// }"#).unwrap();
/// assert_eq!(config.sinks[0].max_retries, None);
/// assert!(!format!("{config:?}").contains("c2VjcmV0"), "the secret stays out of Debug");
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The sink's name (the key of its cursor).
    pub name: String,
    /// Where to POST.
    pub url: String,
    /// Whole-request timeout in ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Retries before dead-lettering; `null` retries forever.
    #[serde(default = "default_max_retries")]
    pub max_retries: Option<u32>,
    /// First backoff ceiling in ms.
    #[serde(default = "default_backoff_min_ms")]
    pub backoff_min_ms: u64,
    /// Longest backoff (and `Retry-After` cap) in ms.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// `"full"` or `"summary"`.
    #[serde(default)]
    pub content: Content,
    /// Events per request.
    #[serde(default = "default_webhook_batch")]
    pub batch: usize,
    /// Requests acknowledged per cursor commit (see [`WebhookSink::commit_every`]).
    #[serde(default = "default_commit_every")]
    pub commit_every: usize,
    /// Post CloudEvents 1.0 JSON.
    #[serde(default)]
    pub cloudevents: bool,
    /// Standard Webhooks secret (`whsec_<base64>`, as `SigningSecret::to_whsec` writes
    /// it, or raw text). Never shown by `Debug`.
    #[serde(default)]
    pub signing_secret: Option<String>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Only these event types (a trailing `*` matches a prefix); empty: all.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// `"total"` (the default), `"per_key"` (by subject) or `"unordered"`.
    #[serde(default)]
    pub order: Order,
    /// Requests in flight: a number, or `{"adaptive": max}`. Defaults to 1.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// The most events dispatched above the durable cursor.
    #[serde(default = "default_window")]
    pub window: usize,
    /// Events older than this (in ms) when their turn comes are dead-lettered.
    #[serde(default)]
    pub max_age_ms: Option<u64>,
    /// At most this many requests per second.
    #[serde(default)]
    pub rate_limit: Option<f64>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &crate::sink::webhook::shown_url(&self.url))
            .field("timeout_ms", &self.timeout_ms)
            .field("max_retries", &self.max_retries)
            .field("backoff_min_ms", &self.backoff_min_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .field("content", &self.content)
            .field("batch", &self.batch)
            .field("commit_every", &self.commit_every)
            .field("cloudevents", &self.cloudevents)
            .field("signed", &self.signing_secret.is_some())
            .field("header_names", &self.headers.keys().collect::<Vec<_>>())
            .field("event_types", &self.event_types)
            .field("order", &self.order)
            .field("concurrency", &self.concurrency)
            .field("window", &self.window)
            .field("max_age_ms", &self.max_age_ms)
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

impl WebhookConfig {
    /// The [`WebhookSink`] this entry describes.
    pub fn to_sink(&self) -> WebhookSink {
        let mut sink = WebhookSink::new(&self.name, &self.url)
            .timeout(Duration::from_millis(self.timeout_ms))
            .max_retries(self.max_retries)
            .backoff(Backoff::exponential(
                Duration::from_millis(self.backoff_min_ms),
                Duration::from_millis(self.backoff_max_ms),
            ))
            .content(self.content)
            .batch(self.batch)
            .commit_every(self.commit_every)
            .cloudevents(self.cloudevents)
            .event_types(self.event_types.iter().cloned())
            .order(self.order)
            .concurrency(self.concurrency)
            .window(self.window);
        if let Some(ms) = self.max_age_ms {
            sink = sink.max_age(Duration::from_millis(ms));
        }
        if let Some(per_second) = self.rate_limit {
            sink = sink.rate_limit(per_second);
        }
        if let Some(secret) = &self.signing_secret {
            sink = sink.signing_secret(secret);
        }
        for (name, value) in &self.headers {
            sink = sink.header(name, value);
        }
        sink
    }
}

fn default_timeout_ms() -> u64 {
    DEFAULT_WEBHOOK_TIMEOUT.as_millis() as u64
}
fn default_max_retries() -> Option<u32> {
    DEFAULT_MAX_RETRIES
}
fn default_backoff_min_ms() -> u64 {
    DEFAULT_BACKOFF.min().as_millis() as u64
}
fn default_backoff_max_ms() -> u64 {
    DEFAULT_BACKOFF.max().as_millis() as u64
}
fn default_webhook_batch() -> usize {
    1
}
fn default_commit_every() -> usize {
    1
}
/// The delivery settings of a broker sink's entry (the fields the three share: serde
/// cannot flatten them into a struct that refuses unknown fields).
#[cfg(any(feature = "redis", feature = "nats", feature = "kafka"))]
fn broker_settings(
    batch: usize,
    commit_every: usize,
    timeout_ms: u64,
    max_retries: Option<u32>,
    (backoff_min_ms, backoff_max_ms): (u64, u64),
    event_types: &[String],
) -> crate::sink::broker::Settings {
    crate::sink::broker::Settings {
        batch,
        commit_every,
        timeout: Duration::from_millis(timeout_ms),
        max_retries,
        backoff: Backoff::exponential(
            Duration::from_millis(backoff_min_ms),
            Duration::from_millis(backoff_max_ms),
        ),
        event_types: event_types.to_vec(),
    }
}

#[cfg(any(feature = "redis", feature = "nats", feature = "kafka"))]
fn default_broker_commit_every() -> usize {
    crate::sink::DEFAULT_BROKER_COMMIT_EVERY
}
fn default_window() -> usize {
    DEFAULT_WINDOW
}

fn default_max_events() -> u64 {
    DEFAULT_MAX_EVENTS
}
fn default_max_bytes() -> u64 {
    DEFAULT_MAX_BYTES
}
fn default_max_event_bytes() -> u64 {
    DEFAULT_MAX_EVENT_BYTES
}
fn default_batch_size() -> usize {
    DEFAULT_BATCH_SIZE
}
fn default_channel_capacity() -> usize {
    DEFAULT_CHANNEL_CAPACITY
}
fn default_reader_pool_size() -> u32 {
    DEFAULT_READER_POOL_SIZE
}
fn default_reader_wait_ms() -> u64 {
    crate::time::millis(DEFAULT_READER_WAIT)
}

fn millis<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

impl SpoolConfig {
    /// A configuration with every default, for the spool file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SpoolConfig {
            path: path.into(),
            max_events: DEFAULT_MAX_EVENTS,
            max_bytes: DEFAULT_MAX_BYTES,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_dead_letter_bytes: None,
            max_file_bytes: None,
            batch_size: DEFAULT_BATCH_SIZE,
            flush_interval_ms: DEFAULT_FLUSH_INTERVAL.as_millis() as u64,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            overflow: Overflow::Block,
            durability: Durability::Normal,
            reader_pool_size: DEFAULT_READER_POOL_SIZE,
            reader_wait_ms: default_reader_wait_ms(),
            accept_lost_wal: false,
            sinks: Vec::new(),
            #[cfg(feature = "redis")]
            redis: Vec::new(),
            #[cfg(feature = "nats")]
            nats: Vec::new(),
            #[cfg(feature = "kafka")]
            kafka: Vec::new(),
            #[cfg(feature = "encryption")]
            encryption: None,
        }
    }

    /// Checks every value, the webhooks' too (as `open` does); `open` calls it.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first value out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: &str| Err(Error::InvalidConfig(msg.into()));
        if self.path.as_os_str().is_empty() {
            return bad("path must not be empty");
        }
        if self.max_events == 0 {
            return bad("max_events must be at least 1");
        }
        if self.max_bytes == 0 {
            return bad("max_bytes must be at least 1");
        }
        if self.max_dead_letter_bytes == Some(0) {
            return bad("max_dead_letter_bytes must be at least 1");
        }
        if self.max_event_bytes == 0 {
            return bad("max_event_bytes must be at least 1");
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return bad(&format!("batch_size must be 1 to {MAX_BATCH_SIZE}"));
        }
        if !(1..=MAX_CHANNEL_CAPACITY).contains(&self.channel_capacity) {
            return bad(&format!(
                "channel_capacity must be 1 to {MAX_CHANNEL_CAPACITY}"
            ));
        }
        if self.reader_pool_size == 0 {
            return bad("reader_pool_size must be at least 1");
        }
        if self.max_file_bytes.is_some_and(|b| b < 64 << 10) {
            return bad("max_file_bytes must be at least 64 KiB");
        }
        crate::sink::check_all(self.configured_sinks().iter().map(|s| &**s))
    }

    /// Every sink the configuration describes, webhooks first.
    pub(crate) fn configured_sinks(&self) -> Vec<Box<dyn crate::sink::Sink>> {
        let mut sinks: Vec<Box<dyn crate::sink::Sink>> = Vec::new();
        for webhook in &self.sinks {
            sinks.push(Box::new(webhook.to_sink()));
        }
        #[cfg(feature = "redis")]
        for redis in &self.redis {
            sinks.push(Box::new(redis.to_sink()));
        }
        #[cfg(feature = "nats")]
        for nats in &self.nats {
            sinks.push(Box::new(nats.to_sink()));
        }
        #[cfg(feature = "kafka")]
        for kafka in &self.kafka {
            sinks.push(Box::new(kafka.to_sink()));
        }
        sinks
    }

    /// The cap on dead letters' bytes: `max_dead_letter_bytes`, else `max_bytes`.
    pub(crate) fn dead_letter_limit(&self) -> u64 {
        self.max_dead_letter_bytes.unwrap_or(self.max_bytes)
    }

    /// The largest event `emit` accepts: `max_event_bytes`, and never more than `max_bytes`.
    pub(crate) fn event_limit(&self) -> u64 {
        self.max_event_bytes.min(self.max_bytes)
    }
}
