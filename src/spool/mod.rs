//! [`Spool`], the handle applications hold: events in, reads, metrics; its
//! [`builder`], [`lifecycle`] (open, close) and the [`consumers`] side apart.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};

use crate::config::{Overflow, SpoolConfig};
use crate::error::{Error, Result};
use crate::event::{Event, EventQuery, SeqNo, StoredEvent};
use crate::metrics::{ConsumerMetrics, MetricsSnapshot};
use crate::reply::{self, Gone};
use crate::shared::Shared;
use crate::store::ConsumerKind;
use crate::store::{self, Op, ReaderPool};
use crate::time::deadline;
use crate::writer::{self, Msg};

mod builder;
mod consumers;
#[cfg(feature = "encryption")]
mod encryption;
#[cfg(feature = "encryption")]
pub use encryption::{decrypt_spool, encrypt_spool};
mod lifecycle;
#[cfg(feature = "metrics")]
mod recorder;

use builder::Filter;
pub use builder::SpoolBuilder;
use consumers::consumers_of;
use lifecycle::Lifecycle;
pub use lifecycle::{CloseReport, DEFAULT_CLOSE_TIMEOUT, Undelivered};

/// A crash-safe spool of events in one SQLite file.
///
/// # About threads and cloning
/// `Spool` is `Send + Sync` and cheap to clone (an `Arc` inside): share it between
/// threads by cloning. All clones are the same spool; it closes when
/// [`close`](Spool::close) is called or the last clone is dropped (with a bounded
/// wait of [`DEFAULT_CLOSE_TIMEOUT`]).
///
/// ```
/// use std::time::Duration;
/// use eventspool::{Event, EventQuery, Spool};
/// use serde_json::json;
///
/// let dir = tempfile::tempdir().expect("temp dir");
/// let spool = Spool::open(dir.path().join("events.db"))?;
/// spool.emit(Event::new("order.created", json!({"id": 42})).subject("order/42"))?;
/// let seq = spool.append(Event::new("order.paid", json!({"id": 42})))?;
/// assert_eq!(seq, 2);
/// let events = spool.query(&EventQuery::new().event_types(["order.*"]))?;
/// assert_eq!(events.len(), 2);
/// spool.close(Duration::from_secs(5))?;
/// # Ok::<(), eventspool::Error>(())
/// ```
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    pool: ReaderPool,
    path: PathBuf,
    spool_id: String,
    journal_mode: String,
    synchronous: String,
    overflow: Overflow,
    event_limit: u64,
    filter: Option<Filter>,
    /// Set while `Overflow::DropNewest` is dropping, so a burst is logged once.
    dropping: AtomicBool,
    lifecycle: Mutex<Lifecycle>,
    /// The writer's connection, on which `drain_to` commits its cursor when
    /// [`delivery::acks_directly`](crate::delivery::acks_directly) says so.
    db: Arc<crate::writer::Db>,
    acks_directly: bool,
    /// Whether the file is encrypted (so its key can change).
    #[cfg_attr(not(feature = "encryption"), allow(dead_code))]
    encrypted: bool,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.inner.path)
            .field("closed", &self.inner.shared.is_closed())
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (or creates) the spool at `path` with every default.
    ///
    /// # Errors
    /// As [`SpoolBuilder::open`].
    pub fn open(path: impl Into<PathBuf>) -> Result<Spool> {
        Spool::builder(path).open()
    }

    /// A builder for the spool at `path`.
    pub fn builder(path: impl Into<PathBuf>) -> SpoolBuilder {
        SpoolBuilder {
            config: SpoolConfig::new(path),
            filter: None,
            on_error: None,
            sinks: Vec::new(),
            #[cfg(feature = "metrics")]
            record_every: None,
            #[cfg(feature = "encryption")]
            key: None,
        }
    }

    /// Opens the spool an operator configured (in JSON, TOML or anything serde reads).
    /// To add a filter, an error hook or sinks of your own to a configured spool, start
    /// from [`SpoolBuilder::from_config`] instead.
    ///
    /// ```
    /// use eventspool::{Spool, SpoolConfig};
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let config: SpoolConfig = serde_json::from_value(serde_json::json!({
    ///     "path": dir.path().join("events.db"),
    ///     "max_events": 1_000_000,
    ///     "durability": "full",
    ///     "sinks": [{"name": "audit", "url": "http://127.0.0.1:9/hook", "batch": 100}]
    /// }))
    /// .expect("a valid config");
    /// let spool = Spool::from_config(&config)?;
    /// assert_eq!(spool.synchronous(), "full");
    /// # Ok::<(), eventspool::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`SpoolBuilder::open`].
    pub fn from_config(config: &SpoolConfig) -> Result<Spool> {
        SpoolBuilder::from_config(config).open()
    }

    /// Hands an event to the writer and returns without waiting for the commit; it is
    /// committed shortly after (see [`flush`](Spool::flush)). Validation and JSON
    /// encoding happen here, on the caller's thread; the writer is reached by one
    /// channel send. When the channel is full (the writer is that far behind), the
    /// [`Overflow`] policy decides, and the default, [`Overflow::Block`], waits for room:
    /// choose `BlockFor`, `DropNewest` or `Reject` where the caller must never wait.
    ///
    /// # Errors
    /// [`Error::InvalidEvent`]; [`Error::Full`] (giving the event back) under
    /// `Overflow::Reject` or when `Overflow::BlockFor` runs out; [`Error::Closed`].
    pub fn emit(&self, mut event: Event) -> Result<()> {
        let inner = &*self.inner;
        let c = &inner.shared.counters;
        if !inner.admit(&mut event)? {
            return Ok(());
        }
        let full = match inner.tx.try_send(Msg::Emit(event)) {
            Ok(()) => {
                if inner.dropping.load(Relaxed) && inner.dropping.swap(false, Relaxed) {
                    log::info!("spool channel has room again: no longer dropping events");
                }
                return Ok(());
            }
            Err(TrySendError::Full(msg)) => msg,
            Err(TrySendError::Disconnected(_)) => return inner.refuse(1, Error::Closed),
        };
        match inner.overflow {
            Overflow::Block => match inner.tx.send(full) {
                Ok(()) => Ok(()),
                Err(_) => inner.refuse(1, Error::Closed),
            },
            Overflow::BlockFor(wait) => match inner.tx.send_timeout(full, wait) {
                Ok(()) => Ok(()),
                Err(SendTimeoutError::Timeout(msg)) => inner.refuse(1, full_error(msg)),
                Err(SendTimeoutError::Disconnected(_)) => inner.refuse(1, Error::Closed),
            },
            Overflow::DropNewest => {
                c.dropped_overflow.fetch_add(1, SeqCst);
                if !inner.dropping.swap(true, Relaxed) {
                    log::warn!("spool channel is full: dropping new events (counted)");
                }
                Ok(())
            }
            Overflow::Reject => inner.refuse(1, full_error(full)),
        }
    }

    /// Stores an event and returns its `seq` once it is committed. Concurrent callers
    /// share transactions (group commit).
    ///
    /// # Errors
    /// [`Error::InvalidEvent`]; [`Error::Filtered`] if the filter dropped it;
    /// [`Error::Commit`] if the commit failed and [`Error::FileGone`] if the file was
    /// deleted or replaced (the event is not stored in either case); [`Error::Closed`].
    pub fn append(&self, mut event: Event) -> Result<SeqNo> {
        if !self.inner.admit(&mut event)? {
            return Err(Error::Filtered);
        }
        self.inner.send_durable(vec![event])
    }

    /// Stores events in order, in one transaction, and returns their `seq`s once
    /// committed. Events dropped by the filter get no `seq` and are left out. If any
    /// event is invalid, none is stored.
    ///
    /// ```
    /// use eventspool::{Event, Spool};
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let spool = Spool::open(dir.path().join("events.db"))?;
    /// let seqs = spool.append_batch(vec![Event::new("a", 1), Event::new("b", 2)])?;
    /// assert_eq!(seqs, [1, 2]);
    /// // One bad event and nothing is stored.
    /// assert!(spool.append_batch(vec![Event::new("c", 3), Event::new("", 4)]).is_err());
    /// assert_eq!(spool.len()?, 2);
    /// # Ok::<(), eventspool::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`append`](Spool::append), except that filtered events are not an error.
    pub fn append_batch(&self, mut events: Vec<Event>) -> Result<Vec<SeqNo>> {
        let inner = &*self.inner;
        let n = events.len() as u64;
        inner.shared.counters.emitted.fetch_add(n, SeqCst);
        if inner.shared.is_closed() {
            return inner.refuse(n, Error::Closed);
        }
        for event in &mut events {
            if let Err(e) = event.prepare(inner.event_limit) {
                return inner.refuse(n, e);
            }
        }
        if let Some(keep) = &inner.filter {
            events.retain(|e| keep(e));
            inner
                .shared
                .counters
                .filtered
                .fetch_add(n - events.len() as u64, SeqCst);
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let len = events.len() as u64;
        let last = inner.send_durable(events)?;
        Ok((last + 1 - len..=last).collect())
    }

    /// Returns once everything emitted before the call is committed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use eventspool::{Event, Spool};
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let spool = Spool::open(dir.path().join("events.db"))?;
    /// for n in 0..1000 {
    ///     spool.emit(Event::new("tick", n))?;
    /// }
    /// spool.flush(Duration::from_secs(5))?;
    /// assert_eq!(spool.metrics().committed, 1000);
    /// # Ok::<(), eventspool::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Timeout`] if that takes longer than `timeout` (for example while the
    /// disk is full); [`Error::Closed`].
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        let deadline = deadline(timeout);
        let (reply, done) = reply::reply();
        match self.inner.tx.send_deadline(Msg::Flush(reply), deadline) {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => return Err(Error::Timeout { waited: timeout }),
            Err(SendTimeoutError::Disconnected(_)) => return Err(Error::Closed),
        }
        match done.wait_until(deadline, self.inner.shared.caller_yields) {
            Ok(()) => Ok(()),
            Err(Gone::Late) => Err(Error::Timeout { waited: timeout }),
            Err(Gone::Dropped) => Err(Error::Closed),
        }
    }

    /// Commits everything emitted so far, lets the sinks deliver, stops the threads and
    /// releases the file. Returns what the sinks left undelivered (kept in the file for
    /// the next start; also logged as a warning).
    ///
    /// It waits, all within `timeout`: for the writer to commit what is queued, then
    /// for every sink to deliver everything committed. A sink whose receiver is down or
    /// failing keeps `close` waiting until the timeout (then it is stopped, within
    /// 200 ms more), so `close` with a sink that cannot deliver takes the whole
    /// timeout; a short timeout closes sooner and leaves more for the next start.
    /// `Drop` does the same with [`DEFAULT_CLOSE_TIMEOUT`].
    ///
    /// Idempotent: later calls return the first call's report; `emit`/`append` then
    /// fail with [`Error::Closed`]. Queries keep working on a closed spool. Once it
    /// returns, no thread of the spool is left (unless a sink is inside a request that
    /// outlasts the timeout by more than 200 ms: that thread ends with the request).
    ///
    /// # Errors
    /// [`Error::Timeout`] if not everything was committed in time: the rest is
    /// abandoned and counted in `abandoned`. [`Error::FileGone`] if the file was deleted
    /// or replaced while open (what it held was saved, as that error says).
    pub fn close(&self, timeout: Duration) -> Result<CloseReport> {
        self.inner.close(timeout)
    }

    /// Number of events in the file.
    ///
    /// # Errors
    /// [`Error::Storage`] if the file cannot be read; [`Error::Timeout`] if every reader
    /// connection stayed busy for the reader wait (see [`SpoolBuilder::reader_wait`]).
    pub fn len(&self) -> Result<u64> {
        let stored = self.inner.pool.read(store::bounds)?;
        Ok(stored.first.map_or(0, |f| stored.last + 1 - f))
    }

    /// True when the file holds no event.
    ///
    /// # Errors
    /// As [`len`](Spool::len).
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The highest `seq` ever committed (0 for a new spool); it stays after events are
    /// deleted, and the next event gets a higher one.
    ///
    /// # Errors
    /// As [`len`](Spool::len).
    pub fn last_seq(&self) -> Result<SeqNo> {
        Ok(self.inner.pool.read(store::bounds)?.last)
    }

    /// Runs a query on a pooled reader connection; it never waits for the writer. It
    /// returns at most [`EventQuery::limit`] events, [`DEFAULT_QUERY_LIMIT`](crate::DEFAULT_QUERY_LIMIT) (1 000) unless
    /// set: to read everything, page with `after_seq` set to the last seq of each page.
    ///
    /// ```
    /// use eventspool::{Event, EventQuery, Spool};
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let spool = Spool::open(dir.path().join("events.db"))?;
    /// spool.append_batch((0..2500).map(|n| Event::new("n", n)).collect())?;
    /// let (mut after, mut seen) = (0, 0);
    /// loop {
    ///     let page = spool.query(&EventQuery::new().after_seq(after))?;
    ///     let Some(last) = page.last() else { break };
    ///     after = last.seq;
    ///     seen += page.len();
    /// }
    /// assert_eq!(seen, 2500);
    /// # Ok::<(), eventspool::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`len`](Spool::len).
    pub fn query(&self, query: &EventQuery) -> Result<Vec<StoredEvent>> {
        (self.inner.pool).read(|c| store::query(c, &self.inner.spool_id, query))
    }

    /// A copy of the counters, with one entry per sink and per other registered consumer
    /// (it reads the consumers from the file; the rest is in memory).
    ///
    /// ```
    /// use eventspool::{Event, Spool};
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let spool = Spool::open(dir.path().join("events.db"))?;
    /// spool.append(Event::new("a", 1))?;
    /// let m = spool.metrics();
    /// assert_eq!((m.emitted, m.committed, m.stored_events), (1, 1, 1));
    /// assert!(m.to_prometheus().contains("eventspool_committed_total 1"));
    /// # Ok::<(), eventspool::Error>(())
    /// ```
    pub fn metrics(&self) -> MetricsSnapshot {
        snapshot(&self.inner.shared, &self.inner.tx, &self.inner.pool)
    }

    /// The journal mode in force on the writer connection: `"wal"`.
    pub fn journal_mode(&self) -> &str {
        &self.inner.journal_mode
    }

    /// The `synchronous` setting in force on the writer connection: `"normal"` or
    /// `"full"` (see [`Durability`](crate::Durability)).
    pub fn synchronous(&self) -> &str {
        &self.inner.synchronous
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

fn full_error(msg: Msg) -> Error {
    match msg {
        Msg::Emit(event) => Error::Full(Box::new(event)),
        _ => Error::Closed,
    }
}

impl Inner {
    /// Counts the event(s), then validates and filters on the caller's thread.
    /// Returns false when the filter dropped the event.
    fn admit(&self, event: &mut Event) -> Result<bool> {
        let c = &self.shared.counters;
        // `emitted` is counted before `closed` is read (both SeqCst): a close that
        // happens later sees this event in `emitted` and waits for it.
        c.emitted.fetch_add(1, SeqCst);
        if self.shared.is_closed() {
            return self.refuse(1, Error::Closed);
        }
        if let Err(e) = event.prepare(self.event_limit) {
            return self.refuse(1, e);
        }
        if let Some(keep) = &self.filter
            && !keep(event)
        {
            c.filtered.fetch_add(1, SeqCst);
            return Ok(false);
        }
        Ok(true)
    }

    fn refuse<T>(&self, n: u64, error: Error) -> Result<T> {
        self.shared.counters.rejected.fetch_add(n, SeqCst);
        Err(error)
    }

    /// Sends admitted events to the writer and waits for their commit.
    fn send_durable(&self, events: Vec<Event>) -> Result<SeqNo> {
        let n = events.len() as u64;
        let (reply, done) = reply::reply();
        if self.tx.send(Msg::Append(events, reply)).is_err() {
            return self.refuse(n, Error::Closed);
        }
        // A dropped reply means the writer gave up at close: it counted the events.
        done.wait_yielding(self.shared.caller_yields)
            .unwrap_or(Err(Error::Closed))
    }

    /// Sends a consumer operation to the writer and waits until it is committed.
    fn call(&self, op: Op) -> Result<u64> {
        writer::call(&self.tx, op, self.shared.caller_yields)
    }
}

/// The counters of the spool whose threads share `shared`, for [`Spool::metrics`] and
/// the metrics recorder.
pub(crate) fn snapshot(shared: &Shared, tx: &Sender<Msg>, pool: &ReaderPool) -> MetricsSnapshot {
    let mut snapshot = shared.counters.snapshot(tx.len());
    let (first, last) = (shared.counters.first_seq(), snapshot.last_seq);
    snapshot.sinks = shared
        .sinks
        .iter()
        .map(|s| s.snapshot(first, last))
        .collect();
    // Every registered consumer but the sinks, from the file (a read that fails
    // leaves out the ones without an open subscription), open ones live.
    let registered = consumers_of(shared, pool).unwrap_or_default();
    let subscriptions = shared
        .subscriptions
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let mut consumers: Vec<ConsumerMetrics> = subscriptions
        .iter()
        .map(|(name, state)| state.metrics(name, first, last))
        .collect();
    for c in registered {
        if c.kind != ConsumerKind::Sink && !subscriptions.contains_key(&c.name) {
            consumers.push(ConsumerMetrics {
                name: c.name,
                open: false,
                position: c.position,
                read: c.position,
                evicted: 0,
                lag: c.lag,
                oldest_unacked_age_ms: c.oldest_unacked_age_ms,
            });
        }
    }
    drop(subscriptions);
    for c in &mut consumers {
        c.evicted = shared.evicted_for(&c.name);
    }
    consumers.sort_by(|a, b| a.name.cmp(&b.name));
    snapshot.consumers = consumers;
    snapshot
}
