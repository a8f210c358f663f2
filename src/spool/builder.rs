//! [`SpoolBuilder`]: the settings of a spool before it opens.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Durability, Overflow, SpoolConfig};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::shared::ErrorHook;
use crate::sink::Sink;

use super::Spool;

pub(super) type Filter = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

/// Configures and opens a [`Spool`]. Every setter has a default (see [`SpoolConfig`]);
/// values are checked by [`open`](SpoolBuilder::open), setters never panic.
///
/// ```
/// use std::time::Duration;
/// use eventspool::{Durability, Overflow, Spool};
///
/// let dir = tempfile::tempdir().expect("temp dir");
/// let spool = Spool::builder(dir.path().join("events.db"))
///     .max_events(1_000_000)
///     .max_bytes(512 << 20)
///     .batch_size(1024)
///     .channel_capacity(65_536)
///     .overflow(Overflow::Block)
///     .durability(Durability::Normal)
///     .filter(|e| e.event_type != "debug")
///     .on_error(|err| log::error!("spool: {err}"))
///     .open()?;
/// spool.close(Duration::from_secs(5))?;
/// # Ok::<(), eventspool::Error>(())
/// ```
#[must_use = "a builder does nothing until `open` is called"]
pub struct SpoolBuilder {
    pub(super) config: SpoolConfig,
    pub(super) filter: Option<Filter>,
    pub(super) on_error: Option<ErrorHook>,
    pub(super) sinks: Vec<Box<dyn Sink>>,
    /// How often to record the metrics through the `metrics` facade, if at all.
    #[cfg(feature = "metrics")]
    pub(super) record_every: Option<Duration>,
    /// The key of an encrypted spool, given here rather than through the config.
    #[cfg(feature = "encryption")]
    pub(super) key: Option<crate::EncryptionKey>,
}

impl fmt::Debug for SpoolBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpoolBuilder")
            .field("config", &self.config)
            .field("filter", &self.filter.is_some())
            .field("on_error", &self.on_error.is_some())
            .field(
                "sinks",
                &self.sinks.iter().map(|s| s.name()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SpoolBuilder {
    /// A builder with an operator's settings (see [`SpoolConfig`]), its webhooks
    /// included, to which code can still add what a file cannot hold: a
    /// [`filter`](SpoolBuilder::filter), an [`on_error`](SpoolBuilder::on_error) hook,
    /// sinks of its own.
    ///
    /// ```
    /// use std::time::Duration;
    /// use eventspool::{SpoolBuilder, SpoolConfig};
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let text = format!(
    ///     r#"
    ///     path = "{}"
    ///     max_bytes = 536870912
    ///     durability = "full"
    ///     overflow = {{ block_for_ms = 250 }}
    ///
    ///     [[sinks]]
    ///     name = "audit"
    ///     url = "http://127.0.0.1:9/hook"
    ///     batch = 100
    ///     event_types = ["order.*"]
    ///     "#,
    ///     dir.path().join("events.db").display()
    /// );
    /// let config: SpoolConfig = toml::from_str(&text).expect("a valid config");
    /// let spool = SpoolBuilder::from_config(&config)
    ///     .on_error(|err| eprintln!("spool: {err}"))
    ///     .filter(|e| e.event_type != "debug")
    ///     .open()?;
    /// assert_eq!(spool.synchronous(), "full");
    /// spool.close(Duration::from_secs(1))?;
    /// # Ok::<(), eventspool::Error>(())
    /// ```
    pub fn from_config(config: &SpoolConfig) -> Self {
        let mut builder = Spool::builder(&config.path);
        builder.config = config.clone();
        builder.sinks.extend(config.configured_sinks());
        builder
    }

    /// Most events kept; the oldest are evicted beyond it. Defaults to unbounded.
    pub fn max_events(mut self, n: u64) -> Self {
        self.config.max_events = n;
        self
    }

    /// Most bytes of events kept; the oldest are evicted beyond it. Defaults to 1 GiB.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.config.max_bytes = n;
        self
    }

    /// Most bytes of dead letters kept, across sinks; the oldest are evicted beyond it
    /// (or beyond `max_events` of them), counted in `dead_letters_evicted`. Defaults to
    /// `max_bytes`.
    pub fn max_dead_letter_bytes(mut self, n: u64) -> Self {
        self.config.max_dead_letter_bytes = Some(n);
        self
    }

    /// Largest event accepted. Defaults to 1 MiB.
    pub fn max_event_bytes(mut self, n: u64) -> Self {
        self.config.max_event_bytes = n;
        self
    }

    /// Opens after a crash even when commits were lost with the write-ahead log
    /// (see [`SpoolConfig::accept_lost_wal`]). Defaults to false.
    pub fn accept_lost_wal(mut self, accept: bool) -> Self {
        self.config.accept_lost_wal = accept;
        self
    }

    /// Hard ceiling on the file size: beyond it commits fail as on a full disk and are
    /// retried. Defaults to none.
    pub fn max_file_bytes(mut self, n: u64) -> Self {
        self.config.max_file_bytes = Some(n);
        self
    }

    /// Most events per transaction. Defaults to 1024.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.config.batch_size = n;
        self
    }

    /// How long the writer may wait to fill a batch; durable waiters are never held
    /// back by it. Defaults to zero (commit as soon as the queue is drained).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.config.flush_interval_ms = crate::time::millis(interval);
        self
    }

    /// Capacity of the channel to the writer, in messages. Defaults to 65 536.
    pub fn channel_capacity(mut self, n: usize) -> Self {
        self.config.channel_capacity = n;
        self
    }

    /// What `emit` does on a full channel. Defaults to [`Overflow::Block`].
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.config.overflow = overflow;
        self
    }

    /// How hard commits push to the disk. Defaults to [`Durability::Normal`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.config.durability = durability;
        self
    }

    /// Pooled reader connections for queries and subscriptions (each sink gets one more
    /// of its own). A read waits for a free one up to [`reader_wait`](Self::reader_wait),
    /// then fails with [`Error::Timeout`](crate::Error::Timeout): raise this if many
    /// threads read at once. Defaults to 4.
    pub fn reader_pool_size(mut self, n: u32) -> Self {
        self.config.reader_pool_size = n;
        self
    }

    /// How long a read waits for a pooled connection when all are in use. Defaults to
    /// 30 s ([`DEFAULT_READER_WAIT`](crate::DEFAULT_READER_WAIT)).
    pub fn reader_wait(mut self, wait: Duration) -> Self {
        self.config.reader_wait_ms = crate::time::millis(wait);
        self
    }

    /// Drops events for which `keep` returns false before they reach the writer
    /// (counted in `filtered`). It runs on the caller's thread inside `emit`/`append`:
    /// keep it cheap. Defaults to none.
    pub fn filter(mut self, keep: impl Fn(&Event) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(keep));
        self
    }

    /// Called from the worker threads for failures no caller sees: a failed commit of
    /// emitted events, the spool file found deleted, a damaged row quarantined, a
    /// sink's dead letters or panics, a sink that cannot read or record its progress.
    /// It runs on the writer and sink threads: it must not block for long, nor call
    /// what waits for the writer (`append`, `flush`, `close`, a subscription's `ack`):
    /// called on the writer's thread, those would wait for themselves. A panic in it
    /// is logged and goes no further. Defaults to none (failures are still logged).
    pub fn on_error(mut self, hook: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(hook));
        self
    }

    /// Adds a sink: a worker thread delivers every event committed from now on to it,
    /// in order, at least once (see [`Sink`] and [`WebhookSink`](crate::WebhookSink)).
    /// A sink added for the first time starts with the next event committed; a known
    /// name resumes from its cursor in the file.
    pub fn sink(mut self, sink: impl Sink + 'static) -> Self {
        self.sinks.push(Box::new(sink));
        self
    }

    /// Records the spool's counters and gauges through the [`metrics`](https://docs.rs/metrics)
    /// facade every `every`, and once more at close, on a thread of its own (feature
    /// `metrics`); the names are those of
    /// [`MetricsSnapshot::to_prometheus`](crate::MetricsSnapshot::to_prometheus).
    /// Defaults to never: call [`MetricsSnapshot::record`](crate::MetricsSnapshot::record)
    /// yourself instead, if you like.
    #[cfg(feature = "metrics")]
    pub fn record_metrics(mut self, every: Duration) -> Self {
        self.record_every = Some(every);
        self
    }

    /// Validates the settings, takes ownership of the file and starts the writer.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`]; [`Error::Locked`] if another `Spool` owns the file;
    /// [`Error::NotASpool`], [`Error::NewerSchema`], [`Error::Corrupt`] for a file
    /// that cannot be used, [`Error::WalLost`] after a crash whose WAL was removed (the
    /// file is left untouched in each case); [`Error::Io`] (a read-only directory, for
    /// one) / [`Error::Storage`].
    pub fn open(self) -> Result<Spool> {
        Spool::start(self)
    }

    /// Encrypts the spool file with `key` (feature `encryption`, SQLCipher): a new file
    /// is created encrypted; an existing one must have been encrypted with this key.
    /// Every connection is keyed before any other statement; the database and its WAL
    /// hold no plaintext. Overrides `encryption` in the config. A wrong key, no key for
    /// an encrypted file, or a key for a plain one is [`Error::WrongKey`] at `open`.
    #[cfg(feature = "encryption")]
    pub fn encryption_key(mut self, key: crate::EncryptionKey) -> Self {
        self.key = Some(key);
        self
    }
}
