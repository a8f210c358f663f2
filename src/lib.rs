//! # eventspool
//!
//! An embedded, crash-safe **store-and-forward spool for events**, for programs without
//! an async runtime. The application hands events over on its own thread; a writer
//! thread batch-commits them to one SQLite file (WAL) with strictly increasing sequence
//! numbers; worker threads deliver them in order, at least once, to webhooks and other
//! [`Sink`]s; the same file answers queries and serves consumer groups
//! ([`Subscription`]). Everything survives `kill -9` and restarts.
//!
//! ```text
//!  spool/ (caller threads)    writer/ (writer thread)        delivery/ (2 threads a sink)
//!  ───────────────────────    ───────────────────────        ────────────────────────────
//!  emit(event)  ─┐  bounded   take all that is queued        reader.rs reads after the
//!  append(event) ├─ crossbeam▶ (≤ batch_size), one SQLite ──▶ cursor; worker.rs delivers
//!  flush()      ─┘  channel   transaction (commit.rs):       through sink/ (webhook.rs,
//!    validate + serialize on  seq, caps, cursors; answer     your Sink); 2xx: commit the
//!    the caller's thread      waiters, wake consumers;       cursor (writer/db.rs); else
//!                             checkpoint.rs keeps the WAL    backoff, dead letters
//!                             short on a thread of its own
//!
//!  store/: the file — sql.rs (every statement), file.rs (lock, identity), pool.rs
//!    (readers for len, query, subscriptions, dead letters), records.rs (what it stores)
//!  subscribe.rs: consumer groups    shared.rs: what the threads share with the handle
//!  metrics.rs: counters and snapshots    error.rs, event.rs, config.rs, time.rs: below all
//!  inspect.rs: reading a file beside its owner, check and repair (the CLI's ground)
//!  capi/ (feature `capi`): the C API over spool/ and subscribe.rs, above everything
//! ```
//!
//! ## A tour
//!
//! ```
//! use std::time::Duration;
//! use eventspool::{Event, EventQuery, SeekPosition, Spool};
//! use serde_json::json;
//!
//! let dir = tempfile::tempdir().expect("temp dir");
//! let path = dir.path().join("events.db");
//! let spool = Spool::builder(&path).max_events(1_000_000).open()?;
//!
//! // Returns at once: validated and encoded here, committed by the writer thread.
//! spool.emit(Event::new("order.created", json!({"id": 42})).subject("order/42"))?;
//! // Returns once committed, with the event's sequence number.
//! let seq = spool.append(Event::new("order.paid", json!({"id": 42})))?;
//! spool.flush(Duration::from_secs(1))?;
//!
//! let paid = spool.query(&EventQuery::new().event_types(["order.paid"]))?;
//! assert_eq!(paid[0].seq, seq);
//! spool.close(Duration::from_secs(5))?;
//!
//! // Reopen: everything committed is still there, and seq goes on from where it was.
//! let spool = Spool::open(&path)?;
//! assert_eq!(spool.len()?, 2);
//! assert_eq!(spool.append(Event::new("order.shipped", json!({"id": 42})))?, 3);
//!
//! // A consumer group: read at your own pace, ack durably, resume after a restart.
//! let mut billing = spool.subscribe("billing", SeekPosition::LastAcknowledged)?;
//! let first = billing.next_timeout(Duration::from_secs(1))?.expect("stored events");
//! billing.ack(first.seq)?;
//! # Ok::<(), eventspool::Error>(())
//! ```
//!
//! Webhooks are added on the builder with [`WebhookSink`] (one request in flight, or
//! many with [`Order::PerKey`] / [`Order::Unordered`]); see `examples/quickstart.rs` for
//! delivery through a receiver outage, and `examples/receiver.rs` with
//! `examples/send.rs` for a receiver that checks signatures.
//!
//! C, C++ and Python programs use the same spool through the C API (feature `capi`,
//! module `capi`, header `src/capi/eventspool.h`); `examples/c/` and
//! `examples/python/` show both.
//!
//! The [`guide`] holds the rest: every guarantee with the test that holds it, how the
//! whole is tortured and fuzzed, and the performance figures with their commands.
//!
//! ## Guarantees
//! - `append` returning `Ok(seq)` means committed; `emit` never loses an event
//!   silently: what is not committed is counted (`dropped_overflow`, `evicted`,
//!   `rejected`, `abandoned` in [`MetricsSnapshot`]).
//! - `seq` is strictly increasing and never reused, across restarts and deletions.
//! - One file, one owner: a second open fails with [`Error::Locked`].
//! - Each sink gets events in `seq` order, at least once; a crash replays at most the
//!   batch in flight (or, with [`WebhookSink::commit_every`]`(n)`, the last `n`). An
//!   event is deleted once every sink and consumer acknowledged it.
//! - Bad input gets an [`enum@Error`], never a panic, and never touches what is stored.
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]

#[cfg(feature = "capi")]
pub mod capi;
mod config;
mod delivery;
mod error;
mod event;
pub mod guide;
mod inspect;
mod metrics;
mod reply;
mod shared;
mod sink;
mod spool;
mod store;
mod subscribe;
mod time;
mod writer;

#[cfg(feature = "kafka")]
pub use config::KafkaConfig;
#[cfg(feature = "nats")]
pub use config::NatsConfig;
#[cfg(feature = "redis")]
pub use config::RedisConfig;
pub use config::{
    DEFAULT_BATCH_SIZE, DEFAULT_CHANNEL_CAPACITY, DEFAULT_FLUSH_INTERVAL, DEFAULT_MAX_BYTES,
    DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_EVENTS, DEFAULT_READER_POOL_SIZE, DEFAULT_READER_WAIT,
    Durability, MAX_BATCH_SIZE, MAX_CHANNEL_CAPACITY, Overflow, SpoolConfig, WebhookConfig,
};
#[cfg(feature = "encryption")]
pub use config::{EncryptionConfig, KeyFormat};
pub use error::{DeliveryError, Error, Result, StorageError};
pub use event::{DEFAULT_QUERY_LIMIT, Event, EventQuery, SeqNo, StoredEvent};
#[cfg(feature = "encryption")]
pub use inspect::repair_with_key;
pub use inspect::{CheckReport, Inspector, MovedEvent, Problem, RepairReport, SpoolStat, repair};
pub use metrics::{ConsumerMetrics, MetricsSnapshot, SinkMetrics};
pub use sink::http_date::parse_retry_after;
#[cfg(feature = "kafka")]
pub use sink::kafka::{
    DEFAULT_KAFKA_BATCH, DEFAULT_KAFKA_IN_FLIGHT, DEFAULT_KAFKA_TIMEOUT, KafkaSink,
};
#[cfg(feature = "nats")]
pub use sink::nats::{DEFAULT_NATS_BATCH, DEFAULT_NATS_IN_FLIGHT, DEFAULT_NATS_TIMEOUT, NatsSink};
pub use sink::order::{Concurrency, DEFAULT_WINDOW, Order};
pub use sink::payload::Content;
#[cfg(feature = "redis")]
pub use sink::redis::{DEFAULT_REDIS_BATCH, DEFAULT_REDIS_TIMEOUT, RedisSink};
pub use sink::signing::{DEFAULT_TOLERANCE, SigningSecret, Verifier, VerifyError, verify};
pub use sink::webhook::{DEFAULT_WEBHOOK_TIMEOUT, WebhookSink};
pub use sink::{
    Backoff, DEFAULT_BACKOFF, DEFAULT_BROKER_COMMIT_EVERY, DEFAULT_MAX_RETRIES, MAX_SINK_BATCH,
    Sink, key_of,
};
pub use spool::{CloseReport, DEFAULT_CLOSE_TIMEOUT, Spool, SpoolBuilder, Undelivered};
#[cfg(feature = "encryption")]
pub use spool::{decrypt_spool, encrypt_spool};
#[cfg(feature = "encryption")]
pub use store::EncryptionKey;
pub use store::{ConsumerInfo, ConsumerKind, DeadLetter, DeadLetterSummary, SeekPosition};
pub use subscribe::Subscription;

/// The README's code blocks, run as doc tests: its tour runs as written.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_are_send_and_sync() {
        assert_send_sync::<Spool>();
        assert_send_sync::<Error>();
    }

    #[test]
    fn error_stays_small() {
        assert!(
            std::mem::size_of::<Error>() <= 64,
            "{}",
            std::mem::size_of::<Error>()
        );
    }
}
