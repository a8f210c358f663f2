//! Opening and closing a spool: starting the writer and the sink workers, and
//! stopping them in order within a deadline ([`CloseReport`]).

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};

use crate::delivery::{self, Control, Worker, WorkerParts};
use crate::error::{Error, Result};
use crate::metrics::SinkCounters;
use crate::reply::{self, Reply};
use crate::shared::Shared;
use crate::store::{self, ConsumerKind, Op, ReaderPool, StartAt};
use crate::time::deadline;
use crate::writer::{Checkpointer, Msg, Writer};

use super::{Inner, Spool, SpoolBuilder};

/// How long `Drop` waits for a spool that was not closed: to commit what is queued and
/// for the sinks to deliver it (see [`Spool::close`]). A sink that cannot deliver holds
/// the dropping thread this long: call `close` with a timeout of your choice instead.
pub const DEFAULT_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What `close` tears down, once.
pub(super) struct Lifecycle {
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
    /// Records the metrics on a timer (feature `metrics`).
    #[cfg(feature = "metrics")]
    recorder: Option<super::recorder::Recorder>,
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

impl Spool {
    pub(super) fn start(builder: SpoolBuilder) -> Result<Spool> {
        let SpoolBuilder {
            config,
            filter,
            on_error,
            sinks,
            #[cfg(feature = "metrics")]
            record_every,
            #[cfg(feature = "encryption")]
            key,
        } = builder;
        config.validate()?;
        crate::sink::check_all(sinks.iter().map(|s| &**s))?;
        #[cfg(feature = "metrics")]
        if record_every.is_some_and(|every| every.is_zero()) {
            return Err(Error::InvalidConfig(
                "record_metrics needs an interval above zero".into(),
            ));
        }
        let path = config.path.clone();
        store::make_parent(&path)?;
        let lock = store::lock(&path)?;
        #[cfg(feature = "encryption")]
        let keying = match key.map_or_else(
            || config.encryption.as_ref().map(|e| e.key()).transpose(),
            |k| Ok(Some(k)),
        )? {
            Some(key) => store::Keying::new(&key, &store::header_of(&path)?)?,
            None => store::Keying::plain(),
        };
        #[cfg(not(feature = "encryption"))]
        let keying = store::Keying::plain();
        let opened = store::open_writer(&config, &keying)?;
        let pool = ReaderPool::new(
            &path,
            keying.clone(),
            config.reader_pool_size.saturating_add(sinks.len() as u32),
            Duration::from_millis(config.reader_wait_ms),
        )?;
        let (tx, rx) = bounded(config.channel_capacity);
        let (stop_tx, stop_rx) = bounded(0);
        let shared = Arc::new(Shared::new(
            on_error,
            sinks
                .iter()
                .map(|s| Arc::new(SinkCounters::new(s.name())))
                .collect(),
            reply::caller_yields(config.durability),
        ));
        let spool_id = opened.state.spool_id.clone();
        let checkpointer = Checkpointer::start(store::open_checkpointer(&path, &keying)?)?;
        let writer = Writer::new(
            lock,
            opened.conn,
            checkpointer,
            &opened.state,
            &config,
            rx,
            stop_rx,
            shared.clone(),
            keying.clone(),
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
                db: db.clone(),
                acks_directly: delivery::acks_directly(config.durability),
                encrypted: keying.is_encrypted(),
                lifecycle: Mutex::new(Lifecycle {
                    writer: Some(handle),
                    stop: Some(stop_tx),
                    workers: Vec::new(),
                    stop_workers: Some(stop_workers),
                    draining: control.draining.clone(),
                    report: CloseReport::default(),
                    #[cfg(feature = "metrics")]
                    recorder: None,
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
        #[cfg(feature = "metrics")]
        if let Some(every) = record_every {
            let inner = &spool.inner;
            let recorder = super::recorder::Recorder::start(
                every,
                inner.shared.clone(),
                inner.tx.clone(),
                inner.pool.clone(),
            )?;
            inner.lock_lifecycle().recorder = Some(recorder);
        }
        spool.warn_of_retired_sinks();
        Ok(spool)
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
}

impl Inner {
    fn lock_lifecycle(&self) -> std::sync::MutexGuard<'_, Lifecycle> {
        self.lifecycle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Closing, in order: refuse new events; commit everything in flight; give the
    /// sinks until the deadline to catch up, then stop them; stop the writer.
    pub(super) fn close(&self, timeout: Duration) -> Result<CloseReport> {
        let deadline = deadline(timeout);
        let mut lifecycle = self.lock_lifecycle();
        let Some(writer) = lifecycle.writer.take() else {
            return Ok(lifecycle.report.clone());
        };
        self.shared.close();
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

        #[cfg(feature = "metrics")]
        if let Some(recorder) = lifecycle.recorder.take() {
            recorder.stop();
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
            return Err(Error::Timeout { waited: timeout });
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
