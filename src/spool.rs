//! [`Spool`], the handle applications hold, and [`SpoolBuilder`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender, TrySendError, bounded};

use crate::config::{Durability, Overflow, SpoolConfig};
use crate::delivery::{self, Control, DeadLetter, SinkCounters, Worker, WorkerParts};
use crate::error::{Error, Result};
use crate::event::{Event, EventQuery, SeqNo, StoredEvent};
use crate::metrics::{Counters, MetricsSnapshot};
use crate::reply::{self, Gone, Reply};
use crate::sink::Sink;
use crate::store::{self, Op, ReaderPool, StartAt};
use crate::subscribe::{
    ConsumerInfo, ConsumerKind, Reservation, SeekPosition, SubParts, SubState, Subscription,
};
use crate::time::deadline;
use crate::writer::{self, Checkpointer, Msg, Writer};

/// How long `Drop` waits for a spool that was not closed: to commit what is queued and
/// for the sinks to deliver it (see [`Spool::close`]). A sink that cannot deliver holds
/// the dropping thread this long: call `close` with a timeout of your choice instead.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

type Filter = Arc<dyn Fn(&Event) -> bool + Send + Sync>;
type ErrorHook = Arc<dyn Fn(&Error) + Send + Sync>;

/// What the handle shares with the worker threads.
pub(crate) struct Shared {
    pub(crate) counters: Counters,
    on_error: Option<ErrorHook>,
    /// One doorbell per consumer thread, rung after every commit with new events.
    doorbells: Mutex<Vec<Sender<()>>>,
    /// The counters of each sink, in the order the sinks were added.
    pub(crate) sinks: Vec<Arc<SinkCounters>>,
    /// Bumped by every `requeue_dead_letters`, so workers look for requeued events.
    pub(crate) requeues: AtomicU64,
    /// Set when `close` begins: no more events are accepted, subscriptions end.
    closed: AtomicBool,
    /// The open subscriptions, by consumer name.
    pub(crate) subscriptions: Mutex<HashMap<String, Arc<SubState>>>,
    /// How often application threads yield before they sleep waiting for the writer.
    pub(crate) caller_yields: u32,
}

impl Shared {
    /// Wakes every consumer thread waiting for new events (and forgets the doorbells
    /// of subscriptions that were dropped).
    pub(crate) fn ring(&self) {
        let mut bells = self
            .doorbells
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        bells.retain(|bell| !matches!(bell.try_send(()), Err(TrySendError::Disconnected(_))));
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// A doorbell rung after every commit with new events.
    pub(crate) fn doorbell(&self) -> crossbeam_channel::Receiver<()> {
        let (tx, rx) = bounded(1);
        self.doorbells
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        rx
    }

    /// Whether `name` is one of this spool's sinks.
    pub(crate) fn is_sink(&self, name: &str) -> bool {
        self.sinks.iter().any(|s| s.name == name)
    }

    /// Counts events the caps evicted before `consumer` had them.
    pub(crate) fn evicted_unsent(&self, consumer: &str, n: u64) {
        if let Some(sink) = self.sinks.iter().find(|s| s.name == consumer) {
            sink.evicted_unsent.fetch_add(n, Relaxed);
        }
    }

    /// Hands a failure no caller sees to the user's `on_error` hook. A panic in the
    /// hook is logged and goes no further: it must not end the writer or a worker.
    pub(crate) fn report(&self, error: &Error) {
        if let Some(hook) = &self.on_error
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(error))).is_err()
        {
            log::error!("the on_error hook panicked on: {error}");
        }
    }
}

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
    config: SpoolConfig,
    filter: Option<Filter>,
    on_error: Option<ErrorHook>,
    sinks: Vec<Box<dyn Sink>>,
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

    /// Pooled reader connections for queries. Defaults to 4.
    pub fn reader_pool_size(mut self, n: u32) -> Self {
        self.config.reader_pool_size = n;
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

    /// Validates the settings, takes ownership of the file and starts the writer.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`]; [`Error::Locked`] if another `Spool` owns the file;
    /// [`Error::NotASpool`], [`Error::NewerSchema`], [`Error::Corrupt`] for a file
    /// that cannot be used, [`Error::WalLost`] after a crash whose WAL was removed (the
    /// file is left untouched in each case); [`Error::Io`] (a read-only directory, for
    /// one) / [`Error::Sqlite`].
    pub fn open(self) -> Result<Spool> {
        Spool::start(self)
    }
}

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
}

/// What `close` tears down, once.
struct Lifecycle {
    writer: Option<JoinHandle<()>>,
    /// Dropped to tell the writer to give up (close timed out).
    stop: Option<Sender<()>>,
    workers: Vec<JoinHandle<()>>,
    /// Dropped to tell the sink workers to stop at once.
    stop_workers: Option<Sender<()>>,
    /// Set to tell the sink workers to stop once caught up.
    draining: Arc<AtomicBool>,
    /// What the first `close` reported, for the later ones.
    report: CloseReport,
}

/// What a successful [`Spool::close`] left for the next start: the sinks that had not
/// caught up by its deadline. Their events stay in the file and go out after the next
/// open with those sinks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseReport {
    /// One entry per sink with events after its cursor, in the order the sinks were
    /// added.
    pub undelivered: Vec<Undelivered>,
}

impl CloseReport {
    /// True when every sink had delivered everything committed.
    pub fn is_complete(&self) -> bool {
        self.undelivered.is_empty()
    }
}

/// A sink that had not caught up when the spool closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Undelivered {
    /// The sink's name.
    pub sink: String,
    /// Stored events after its cursor (those it skips by type included).
    pub events: u64,
    /// The last delivery error, if there was one.
    pub last_error: Option<String>,
}

/// How long a timed-out `close` waits for the writer to give up before leaving it to
/// finish on its own (it may be inside a SQLite call that cannot be interrupted).
const ABANDON_GRACE: Duration = Duration::from_millis(200);

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
        }
    }

    /// Opens the spool an operator configured (in JSON, TOML or anything serde reads).
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
        let mut builder = Spool::builder(&config.path);
        builder.config = config.clone();
        for webhook in &config.sinks {
            builder = builder.sink(webhook.to_sink());
        }
        builder.open()
    }

    fn start(builder: SpoolBuilder) -> Result<Spool> {
        let SpoolBuilder {
            config,
            filter,
            on_error,
            sinks,
        } = builder;
        config.validate()?;
        crate::sink::check_all(sinks.iter().map(|s| &**s))?;
        let path = config.path.clone();
        store::make_parent(&path)?;
        let lock = store::lock(&path)?;
        let opened = store::open_writer(&config)?;
        let pool = ReaderPool::new(
            &path,
            config.reader_pool_size.saturating_add(sinks.len() as u32),
        )?;
        let (tx, rx) = bounded(config.channel_capacity);
        let (stop_tx, stop_rx) = bounded(0);
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            on_error,
            doorbells: Mutex::new(Vec::new()),
            sinks: sinks
                .iter()
                .map(|s| Arc::new(SinkCounters::new(s.name())))
                .collect(),
            requeues: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            subscriptions: Mutex::new(HashMap::new()),
            caller_yields: reply::caller_yields(config.durability),
        });
        let spool_id = opened.state.spool_id.clone();
        let checkpointer = Checkpointer::start(store::open_checkpointer(&path)?)?;
        let writer = Writer::new(
            lock,
            opened.conn,
            checkpointer,
            &opened.state,
            &config,
            rx,
            stop_rx,
            shared.clone(),
        );
        let db = writer.db();
        let handle = thread::Builder::new()
            .name("eventspool-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::io("cannot spawn the writer thread", e))?;
        let (stop_workers, stop_workers_rx) = bounded(0);
        let control = Control {
            stop: stop_workers_rx,
            draining: Arc::new(AtomicBool::new(false)),
        };
        let spool = Spool {
            inner: Arc::new(Inner {
                tx,
                shared,
                pool,
                path,
                spool_id,
                journal_mode: opened.journal_mode,
                synchronous: opened.synchronous,
                overflow: config.overflow,
                event_limit: config.event_limit(),
                filter,
                dropping: AtomicBool::new(false),
                lifecycle: Mutex::new(Lifecycle {
                    writer: Some(handle),
                    stop: Some(stop_tx),
                    workers: Vec::new(),
                    stop_workers: Some(stop_workers),
                    draining: control.draining.clone(),
                    report: CloseReport::default(),
                }),
            }),
        };
        // On an error below, dropping `spool` closes what was started.
        for (sink, counters) in sinks.into_iter().zip(spool.inner.shared.sinks.clone()) {
            let name = sink.name().to_owned();
            let cursor = spool.inner.call(Op::Register {
                consumer: name.clone(),
                kind: ConsumerKind::Sink,
                start: StartAt::Next,
            })?;
            let parts = WorkerParts {
                tx: spool.inner.tx.clone(),
                db: db.clone(),
                acks_directly: delivery::acks_directly(config.durability),
                pool: spool.inner.pool.clone(),
                spool_id: spool.inner.spool_id.clone(),
                shared: spool.inner.shared.clone(),
                control: control.clone(),
            };
            let worker = Worker::new(sink, cursor, counters, spool.inner.shared.doorbell(), parts)?;
            let handle = thread::Builder::new()
                .name(format!("eventspool-sink-{name}"))
                .spawn(move || worker.run())
                .map_err(|e| Error::io("cannot spawn a sink thread", e))?;
            spool.inner.lock_lifecycle().workers.push(handle);
        }
        spool.warn_of_retired_sinks();
        Ok(spool)
    }

    /// Hands an event to the writer and returns at once; it is committed shortly
    /// after (see [`flush`](Spool::flush)). Validation and JSON encoding happen here,
    /// on the caller's thread; the writer is reached by one channel send. When the
    /// channel is full, the [`Overflow`] policy decides.
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
            Err(SendTimeoutError::Timeout(_)) => return Err(Error::Timeout),
            Err(SendTimeoutError::Disconnected(_)) => return Err(Error::Closed),
        }
        match done.wait_until(deadline, self.inner.shared.caller_yields) {
            Ok(()) => Ok(()),
            Err(Gone::Late) => Err(Error::Timeout),
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
    /// returns, no thread of the spool is left.
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
    /// [`Error::Sqlite`] if the file cannot be read; [`Error::Timeout`] if every reader connection stayed busy for 30 s.
    pub fn len(&self) -> Result<u64> {
        let (first, last) = store::bounds(&*self.inner.pool.get()?)?;
        Ok(first.map_or(0, |f| last + 1 - f))
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
        Ok(store::bounds(&*self.inner.pool.get()?)?.1)
    }

    /// Runs a query on a pooled reader connection; it never waits for the writer.
    ///
    /// # Errors
    /// As [`len`](Spool::len).
    pub fn query(&self, query: &EventQuery) -> Result<Vec<StoredEvent>> {
        store::query(&*self.inner.pool.get()?, &self.inner.spool_id, query)
    }

    /// Replays stored events through `sink` on the caller's thread, in `seq` order,
    /// from its cursor (named by [`Sink::name`]) to the newest event, advancing the
    /// cursor durably past every batch the sink acknowledged. A name seen for the
    /// first time starts with the oldest stored event. The cursor is a consumer like
    /// any other: events it has not acknowledged are kept (the caps still apply).
    ///
    /// Returns how many events were delivered.
    ///
    /// ```
    /// use eventspool::{DeliveryError, Event, Sink, Spool, StoredEvent};
    ///
    /// struct Collect(Vec<u64>);
    /// impl Sink for Collect {
    ///     fn name(&self) -> &str { "collect" }
    ///     fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
    ///         self.0.extend(events.iter().map(|e| e.seq));
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let spool = Spool::open(dir.path().join("events.db"))?;
    /// spool.append_batch(vec![Event::new("a", 1), Event::new("b", 2)])?;
    /// let mut sink = Collect(Vec::new());
    /// assert_eq!(spool.drain_to(&mut sink)?, 2);
    /// assert_eq!(spool.drain_to(&mut sink)?, 0, "the cursor moved past both");
    /// assert_eq!(sink.0, [1, 2]);
    /// # Ok::<(), eventspool::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Delivery`] at the first failure, with the count delivered before it
    /// (the failed batch stays for the next call); [`Error::Closed`]; read errors.
    pub fn drain_to<S: Sink + ?Sized>(&self, sink: &mut S) -> Result<usize> {
        crate::sink::check_one(sink)?;
        let name = sink.name().to_owned();
        self.check_consumer(&name)?;
        let mut cursor = self.inner.call(Op::Register {
            consumer: name.clone(),
            kind: ConsumerKind::Drain,
            start: StartAt::Oldest,
        })?;
        let batch = sink.batch_size().max(1);
        let mut delivered = 0;
        loop {
            let rows = {
                let conn = self.inner.pool.get()?;
                store::read_after(&conn, &self.inner.spool_id, cursor, batch)?
            };
            // Deliver the events before the first damaged row; quarantine that row.
            let good = rows.iter().take_while(|r| r.is_ok()).count();
            if good == 0 {
                let Some(Err(corrupt)) = rows.into_iter().next() else {
                    return Ok(delivered);
                };
                log::error!(
                    "drain {name}: quarantining seq {}: {}",
                    corrupt.seq,
                    corrupt.reason
                );
                self.inner.call(corrupt.quarantine(&name, true))?;
                cursor = corrupt.seq;
                continue;
            }
            let last = store::seq_of(&rows[good - 1]);
            let events: Vec<StoredEvent> = (rows.into_iter().take(good).flatten())
                .filter(|e| sink.accepts(&e.event_type))
                .collect();
            if !events.is_empty()
                && let Err(e) = sink.deliver(&events)
            {
                return Err(Error::Delivery {
                    delivered,
                    source: Box::new(e),
                });
            }
            self.inner.call(Op::Ack {
                consumer: name.clone(),
                seq: last,
                from: None,
            })?;
            cursor = last;
            delivered += events.len();
        }
    }

    /// Up to `limit` events `sink` gave up on, in seq order, with attempts and the
    /// last error.
    ///
    /// ```
    /// use std::time::Duration;
    /// use eventspool::{DeliveryError, Event, Sink, Spool, StoredEvent};
    ///
    /// struct Picky;
    /// impl Sink for Picky {
    ///     fn name(&self) -> &str { "picky" }
    ///     fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
    ///         match events[0].event_type.as_str() {
    ///             "bad" => Err(DeliveryError::permanent("no, thanks").with_status(422)),
    ///             _ => Ok(()),
    ///         }
    ///     }
    /// }
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let spool = Spool::builder(dir.path().join("events.db")).sink(Picky).open()?;
    /// spool.emit(Event::new("good", 1))?;
    /// spool.emit(Event::new("bad", 2))?;
    /// spool.close(Duration::from_secs(5))?; // lets the sink catch up
    /// let dead = spool.dead_letters("picky", 10)?;
    /// assert_eq!(dead.len(), 1);
    /// assert_eq!((dead[0].event.seq, dead[0].last_status), (2, Some(422)));
    /// # Ok::<(), eventspool::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`len`](Spool::len).
    pub fn dead_letters(&self, sink: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        store::dead_letters(&*self.inner.pool.get()?, &self.inner.spool_id, sink, limit)
    }

    /// Puts `sink`'s dead letters back in line: its worker delivers them (in seq order)
    /// before going on with new events; those that fail again return to the dead
    /// letters. Returns how many were requeued.
    ///
    /// # Errors
    /// [`Error::Closed`]; [`Error::Commit`].
    pub fn requeue_dead_letters(&self, sink: &str) -> Result<u64> {
        let n = self.inner.call(Op::Requeue {
            sink: sink.to_owned(),
        })?;
        self.inner.shared.requeues.fetch_add(1, SeqCst);
        self.inner.shared.ring();
        Ok(n)
    }

    /// Deletes all of `sink`'s dead letters; returns how many. (They are also kept
    /// within a cap of their own: see [`SpoolBuilder::max_dead_letter_bytes`].)
    ///
    /// # Errors
    /// [`Error::Closed`]; [`Error::Commit`].
    pub fn purge_dead_letters(&self, sink: &str) -> Result<u64> {
        self.inner.call(Op::Purge {
            sink: sink.to_owned(),
            failed_before: None,
        })
    }

    /// Deletes `sink`'s dead letters that failed `age` ago or earlier; returns how many.
    ///
    /// ```
    /// use std::time::Duration;
    /// use eventspool::Spool;
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let spool = Spool::open(dir.path().join("events.db"))?;
    /// // Those older than a week go; the rest stay to be looked at or requeued.
    /// let purged = spool.purge_dead_letters_older_than("audit", Duration::from_secs(7 * 86_400))?;
    /// assert_eq!(purged, 0);
    /// # Ok::<(), eventspool::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`purge_dead_letters`](Spool::purge_dead_letters).
    pub fn purge_dead_letters_older_than(&self, sink: &str, age: Duration) -> Result<u64> {
        let age = i64::try_from(crate::time::millis(age)).unwrap_or(i64::MAX);
        self.inner.call(Op::Purge {
            sink: sink.to_owned(),
            failed_before: Some(crate::time::now_ms().saturating_sub(age)),
        })
    }

    /// A copy of the counters, with one entry per sink and per open subscription.
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
        let shared = &self.inner.shared;
        let mut snapshot = shared.counters.snapshot(self.inner.tx.len());
        let (first, last) = (
            snapshot.last_seq + 1 - snapshot.stored_events,
            snapshot.last_seq,
        );
        snapshot.sinks = shared
            .sinks
            .iter()
            .map(|s| s.snapshot(first, last))
            .collect();
        let subscriptions = shared
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        snapshot.consumers = subscriptions
            .iter()
            .map(|(name, state)| state.metrics(name, first, last))
            .collect();
        snapshot.consumers.sort_by(|a, b| a.name.cmp(&b.name));
        snapshot
    }

    /// Opens a [`Subscription`] for the consumer `name`, registering it durably if new
    /// (it then holds back the deletion of events it has not acknowledged; the caps
    /// still apply). `position` other than `LastAcknowledged` first moves the
    /// consumer's position exactly as [`seek`](Spool::seek) does.
    ///
    /// # Errors
    /// [`Error::Consumer`] if the name is empty, belongs to a sink, already has an open
    /// subscription, or `After(n)` is past the last event; [`Error::Closed`].
    pub fn subscribe(&self, name: &str, position: SeekPosition) -> Result<Subscription> {
        self.check_consumer(name)?;
        self.check_seek(name, position)?;
        let inner = &*self.inner;
        // Held from the checks to the commit: nothing else may use the name meanwhile.
        let reserved = Reservation::take(&inner.shared, name)?;
        let cursor = inner.call(Op::Seek {
            consumer: name.to_owned(),
            to: position,
        })?;
        Ok(Subscription::new(
            reserved,
            cursor,
            SubParts {
                tx: inner.tx.clone(),
                pool: inner.pool.clone(),
                spool_id: inner.spool_id.clone(),
                shared: inner.shared.clone(),
            },
        ))
    }

    /// Moves the consumer `name` to `position` (see [`SeekPosition`]; it may move back
    /// to replay) and returns its new position, the last `seq` counted as acknowledged.
    /// The next `subscribe(name, LastAcknowledged)` reads the event after it. A name
    /// not yet known is registered as a subscriber.
    ///
    /// ```
    /// use eventspool::{Event, SeekPosition, Spool};
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let spool = Spool::open(dir.path().join("events.db"))?;
    /// spool.append_batch((1..=5).map(|n| Event::new("n", n)).collect())?;
    /// // Skip to what follows seq 3 (a new name is registered on the way).
    /// assert_eq!(spool.seek("report", SeekPosition::After(3))?, 3);
    /// let mut sub = spool.subscribe("report", SeekPosition::LastAcknowledged)?;
    /// assert_eq!(sub.try_next()?.map(|e| e.seq), Some(4));
    /// drop(sub);
    /// // Back to the start, to replay everything stored.
    /// assert_eq!(spool.seek("report", SeekPosition::Beginning)?, 0);
    /// # Ok::<(), eventspool::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Consumer`] if `name` has an open subscription (whose reads would not
    /// follow), belongs to a sink, or `After(n)` is past the last event;
    /// [`Error::Closed`].
    pub fn seek(&self, name: &str, position: SeekPosition) -> Result<SeqNo> {
        self.check_consumer(name)?;
        self.check_seek(name, position)?;
        self.inner.call(Op::Seek {
            consumer: name.to_owned(),
            to: position,
        })
    }

    /// Acknowledges everything up to `seq` for the consumer `name` (as
    /// [`Subscription::ack`] does, for a consumer read elsewhere).
    ///
    /// # Errors
    /// [`Error::Consumer`] if the consumer is unknown, `seq` is before its position, or
    /// after what its open subscription has read (without one: after the last event);
    /// [`Error::Closed`]; [`Error::Commit`].
    pub fn ack(&self, name: &str, seq: SeqNo) -> Result<()> {
        self.check_name(name)?;
        let state = self.subscription_state(name);
        match &state {
            Some(state) => state.check_ack(name, seq)?,
            None => {
                let conn = self.inner.pool.get()?;
                let Some(position) = store::cursor(&conn, name)? else {
                    return Err(Error::Consumer(format!("no consumer is named {name}")));
                };
                let last = store::bounds(&conn)?.1;
                if seq < position || seq > last {
                    return Err(Error::Consumer(format!(
                        "consumer {name}: ack of seq {seq} is outside {position}..={last}"
                    )));
                }
            }
        }
        self.inner.call(Op::Ack {
            consumer: name.to_owned(),
            seq,
            from: None,
        })?;
        if let Some(state) = state {
            state.acked(seq);
        }
        Ok(())
    }

    /// Every registered consumer (subscribers, sinks, `drain_to` sinks) with its
    /// position and lag.
    ///
    /// # Errors
    /// As [`len`](Spool::len).
    pub fn consumers(&self) -> Result<Vec<ConsumerInfo>> {
        let mut consumers = store::consumers(&*self.inner.pool.get()?)?;
        for c in &mut consumers {
            if c.kind == ConsumerKind::Sink && !self.inner.shared.is_sink(&c.name) {
                c.kind = ConsumerKind::RetiredSink;
            }
        }
        Ok(consumers)
    }

    /// Logs a warning naming each retired sink (see [`ConsumerKind::RetiredSink`])
    /// that holds events back.
    fn warn_of_retired_sinks(&self) {
        let consumers = match self.consumers() {
            Ok(consumers) => consumers,
            Err(e) => {
                return log::warn!("cannot list the consumers to look for retired sinks: {e}");
            }
        };
        for c in consumers {
            if c.kind == ConsumerKind::RetiredSink && c.lag > 0 {
                log::warn!(
                    "spool {}: sink {} is no longer configured but holds back the deletion of \
                     {} events; add it again, or remove_consumer({:?}) if it is gone for good",
                    self.inner.path.display(),
                    c.name,
                    c.lag,
                    c.name
                );
            }
        }
    }

    /// Unregisters the consumer `name`, releasing the events it held back. Returns
    /// false if there was no such consumer.
    ///
    /// # Errors
    /// [`Error::Consumer`] if it has an open subscription or is a sink of this spool;
    /// [`Error::Closed`].
    pub fn remove_consumer(&self, name: &str) -> Result<bool> {
        self.check_consumer(name)?;
        Ok(self.inner.call(Op::Remove {
            consumer: name.to_owned(),
        })? > 0)
    }

    fn subscription_state(&self, name: &str) -> Option<Arc<SubState>> {
        let subscriptions = self.inner.shared.subscriptions.lock();
        subscriptions
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// A consumer name that `seek`/`subscribe`/`remove_consumer`/`drain_to` may use:
    /// see [`check_name`](Spool::check_name), and no open subscription.
    fn check_consumer(&self, name: &str) -> Result<()> {
        self.check_name(name)?;
        if self.subscription_state(name).is_some() {
            return Err(crate::subscribe::already_open(name));
        }
        Ok(())
    }

    /// A name the consumer APIs may use at all: not empty, not a sink of this spool
    /// (one namespace: only a sink's deliveries move its cursor).
    fn check_name(&self, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::Consumer("consumer name must not be empty".into()));
        }
        if self.inner.shared.is_sink(name) {
            return Err(Error::Consumer(format!(
                "{name} is a sink of this spool: only its deliveries move its cursor"
            )));
        }
        Ok(())
    }

    /// Refuses `After(n)` past the last event (the last seq only grows, so a position
    /// checked here is still valid when the writer applies it).
    fn check_seek(&self, name: &str, position: SeekPosition) -> Result<()> {
        if let SeekPosition::After(n) = position {
            let last = self.last_seq()?;
            if n > last {
                return Err(Error::Consumer(format!(
                    "consumer {name}: cannot seek after seq {n}, the last is {last}"
                )));
            }
        }
        Ok(())
    }

    /// The journal mode in force on the writer connection: `"wal"`.
    pub fn journal_mode(&self) -> &str {
        &self.inner.journal_mode
    }

    /// The `synchronous` setting in force on the writer connection: `"normal"` or
    /// `"full"` (see [`Durability`]).
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

    fn lock_lifecycle(&self) -> std::sync::MutexGuard<'_, Lifecycle> {
        self.lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Closing, in order: refuse new events; commit everything in flight; give the
    /// sinks until the deadline to catch up, then stop them; stop the writer.
    fn close(&self, timeout: Duration) -> Result<CloseReport> {
        let deadline = deadline(timeout);
        let mut lifecycle = self.lock_lifecycle();
        let Some(writer) = lifecycle.writer.take() else {
            return Ok(lifecycle.report.clone());
        };
        self.shared.closed.store(true, SeqCst);
        let committed = request(&self.tx, Msg::Close, deadline).is_some();

        lifecycle.draining.store(true, SeqCst);
        self.shared.ring();
        let workers = std::mem::take(&mut lifecycle.workers);
        if !committed || !wait_finished(&workers, deadline) {
            drop(lifecycle.stop_workers.take());
            wait_finished(&workers, Instant::now() + ABANDON_GRACE);
        }
        for worker in workers.into_iter().filter(|w| w.is_finished()) {
            if worker.join().is_err() {
                log::error!("an eventspool sink thread panicked");
            }
        }

        // Readers first: the writer's connection, closing last, removes the WAL.
        self.pool.close_idle();
        let stopped = if committed {
            request(
                &self.tx,
                Msg::Stop,
                deadline.max(Instant::now() + ABANDON_GRACE),
            )
        } else {
            None
        };
        if stopped.is_none() {
            drop(lifecycle.stop.take());
        }
        wait_finished(
            std::slice::from_ref(&writer),
            Instant::now() + ABANDON_GRACE,
        );
        // The writer owns the file lock: the file stays locked until it has exited.
        if writer.is_finished() && writer.join().is_err() {
            log::error!("eventspool writer thread panicked");
        }
        if !committed {
            return Err(Error::Timeout);
        }
        stopped.unwrap_or(Ok(()))?;
        lifecycle.report = self.undelivered();
        Ok(lifecycle.report.clone())
    }

    /// The sinks with events after their cursor, logged as a warning.
    fn undelivered(&self) -> CloseReport {
        let c = &self.shared.counters;
        let (first, last) = (c.first_seq(), c.last_seq.load(SeqCst));
        let undelivered: Vec<Undelivered> = (self.shared.sinks.iter())
            .map(|s| s.snapshot(first, last))
            .filter(|m| m.lag > 0)
            .map(|m| Undelivered {
                sink: m.name,
                events: m.lag,
                last_error: m.last_error,
            })
            .collect();
        for u in &undelivered {
            log::warn!(
                "spool {} closed before sink {} caught up: {} events kept for the next start{}",
                self.path.display(),
                u.sink,
                u.events,
                u.last_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" (last error: {e})"))
            );
        }
        CloseReport { undelivered }
    }
}

/// Sends a message that carries a reply channel and waits for the reply until `deadline`.
fn request<T>(tx: &Sender<Msg>, msg: fn(Reply<T>) -> Msg, deadline: Instant) -> Option<T> {
    let (reply, done) = reply::reply();
    tx.send_deadline(msg(reply), deadline).ok()?;
    done.wait_until(deadline, 0).ok()
}

/// Waits until every thread finished or `deadline` passed; true if they all finished.
fn wait_finished(threads: &[JoinHandle<()>], deadline: Instant) -> bool {
    loop {
        if threads.iter().all(JoinHandle::is_finished) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.close(DEFAULT_CLOSE_TIMEOUT) {
            log::error!("closing spool {} on drop: {e}", self.path.display());
        }
    }
}
