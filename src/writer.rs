//! The writer thread, which owns the writer connection and lends it to consumers that
//! acknowledge events ([`Db`]).
//!
//! It blocks on the first message, drains what is already queued (up to `batch_size`
//! events) into one transaction, assigns `seq`, enforces the caps in the same
//! transaction, then answers the durable waiters (`append`, `flush`, `close`) that
//! were queued behind the data. A failed commit keeps the emitted events (up to the
//! channel capacity) and retries them with backoff; `append` callers get the error.
//! Checkpoints run on a thread of their own ([`Checkpointer`]); the writer only keeps
//! the WAL bounded.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, never, select};
use rusqlite::Connection;

use crate::config::SpoolConfig;
use crate::error::{Error, Result};
use crate::event::{Event, SeqNo};
use crate::metrics::Counters;
use crate::reply::{Reply, Wakeups, reply};
use crate::spool::Shared;
use crate::store::{self, DeadLetterBook, Op, StoreState};

/// What callers send to the writer, in one ordered channel.
pub(crate) enum Msg {
    /// An event from `emit`.
    Emit(Event),
    /// Events from `append`/`append_batch`; the reply carries the seq of the last one.
    Append(Vec<Event>, Reply<Result<SeqNo>>),
    /// Answered once everything sent before it is committed.
    Flush(Reply<()>),
    /// Like `Flush`, once no event is in flight any more; the writer then serves only
    /// consumer operations until `Stop`.
    Close(Reply<()>),
    /// Commits what is pending and ends the writer; the reply is an error if the file
    /// was found deleted or replaced (and what it held saved, see [`Error::FileGone`]).
    Stop(Reply<Result<()>>),
    /// A change to consumers or dead letters, committed with the next batch; the reply
    /// carries what [`store::apply`] yields.
    Op(Op, Reply<Result<u64>>),
    /// A consumer committed this many acknowledgements itself ([`Db::ack`]): what they
    /// made deletable is deleted once the writer is idle (or by its next commits), and
    /// they count toward the next checkpoint.
    Acked(u32),
}

/// The writer connection. The writer thread commits on it, and so do sink workers when
/// they move their cursor ([`Db::ack`], under `Durability::Normal`: see
/// [`crate::delivery::acks_directly`]), on their own thread, instead of waking the
/// writer and waiting to be woken: each of those wake-ups costs tens of microseconds on
/// a VM (a sleeping virtual CPU), as much as the commit. Whoever holds the lock has the
/// connection; it is still the only one that writes, so a commit never meets SQLite's
/// busy handler.
pub(crate) struct Db {
    state: Mutex<DbState>,
    path: PathBuf,
    /// Sink workers waiting for the lock in [`Db::ack`]: the writer stops deleting for
    /// them between chunks (see `collect`).
    waiting: AtomicUsize,
}

struct DbState {
    /// Taken when the writer ends (its connection closes before the file is unlocked).
    conn: Option<Connection>,
    /// Whether the writer's last look found the file deleted or replaced (see
    /// [`Writer::file_gone`]).
    missing: bool,
    /// Set the first time it was: where what it held was saved.
    rescued: Option<Option<PathBuf>>,
    /// Acknowledgements committed by [`Db::ack`] since it last considered a checkpoint,
    /// and the last seq committed then.
    acks: (u64, SeqNo),
}

impl Db {
    fn lock(&self) -> MutexGuard<'_, DbState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves `consumer`'s cursor to `seq` (acknowledging `from..=seq`) in one statement
    /// that commits on its own (`BEGIN` and `COMMIT` around it cost 2-3 µs of the ~27 µs
    /// an acknowledgement took), on the calling thread; returns how many of those the
    /// caps evicted first (see [`Op::Ack`]). The writer updates `counters` with the lock
    /// held, so they describe what is stored. Every [`ACK_CHECKPOINT`] calls it may copy
    /// the WAL into the database as well.
    pub(crate) fn ack(
        &self,
        consumer: &str,
        seq: SeqNo,
        from: SeqNo,
        counters: &Counters,
    ) -> Result<u64> {
        self.waiting.fetch_add(1, SeqCst);
        let mut db = self.lock();
        self.waiting.fetch_sub(1, SeqCst);
        if db.missing {
            return Err(Error::FileGone {
                path: self.path.clone(),
                rescued: db.rescued.clone().flatten(),
            });
        }
        let state = &mut *db;
        let conn = state.conn.as_ref().ok_or(Error::Closed)?;
        let first_seq = counters.first_seq();
        store::ack(conn, consumer, seq).map_err(|e| {
            counters.commit_errors.fetch_add(1, Relaxed);
            Error::Commit(Arc::new(e))
        })?;
        state.acks.0 += 1;
        if state.acks.0 >= ACK_CHECKPOINT {
            let last_seq = counters.last_seq.load(Relaxed);
            // Busy when the checkpointer's pass is running: that one will do.
            if last_seq == state.acks.1
                && let Err(e) = store::checkpoint(conn)
            {
                log::debug!("checkpoint after acknowledgements failed: {e}");
            }
            state.acks = (0, last_seq);
        }
        Ok(store::evicted_in(from, seq, first_seq))
    }
}

/// Sends `op` to the writer and waits until it is committed, yielding first up to
/// `yields` times (for application threads: see [`crate::reply::caller_yields`]; sink
/// workers sleep at once: their yields cost the receiver they share the CPUs with more
/// than they save).
pub(crate) fn call(tx: &Sender<Msg>, op: Op, yields: u32) -> Result<u64> {
    let (reply, done) = reply();
    tx.send(Msg::Op(op, reply)).map_err(|_| Error::Closed)?;
    done.wait_yielding(yields).unwrap_or(Err(Error::Closed))
}

const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long the writer waits for the `append` callers it just answered to come back
/// with their next event, so concurrent callers share one transaction.
const GROUP_WAIT: Duration = Duration::from_micros(250);
/// How often the writer re-checks the counters while waiting for in-flight events at close.
const SETTLE_POLL: Duration = Duration::from_millis(1);
/// How often an idle writer checks that its file is still there (a busy one checks at
/// every commit): a file deleted while idle is saved back within this time.
const FILE_CHECK: Duration = Duration::from_secs(1);
/// A checkpoint (copying the WAL into the database, with an fsync; on the checkpointer's
/// thread, while the writer goes on) is asked for after this many events were committed
/// since the last one ...
const CHECKPOINT_EVENTS: u64 = 8192;
/// ... or this many batches ...
const CHECKPOINT_BATCHES: u32 = 256;
/// ... or when the writer has been idle this long with a WAL to copy (deleting what
/// every consumer acknowledged first).
const CHECKPOINT_IDLE: Duration = Duration::from_millis(50);
/// Every this many acknowledgements committed by sink workers ([`Db::ack`]), the one
/// that commits the last copies the WAL into the database itself, holding the
/// connection so nothing commits in between: the next commit then starts the WAL over
/// from its beginning. The checkpointer's passes run beside a steady stream of
/// acknowledgements and never end with all of it copied, so the WAL grew by a page per
/// acknowledgement up to the writer's limit, each commit extending the file (a
/// single-event drain of 20 000 events, alternated runs: 19-20 µs per acknowledgement
/// vs 23-24 µs, 7.9k-8.6k events/s vs 7.6k-8.0k; the WAL peaked at 4.6-9 MB vs 89 MB).
/// It costs that worker one pass per 1024 requests (1.4 ms at most in such runs). Only
/// when no event was committed meanwhile: then the pass copies little more than the
/// acknowledgements' page, where events coming in could leave megabytes to copy with
/// the writer waiting for the connection (while they come in, the writer's own limit
/// bounds the WAL).
const ACK_CHECKPOINT: u64 = 1024;
/// Acknowledged events are deleted once this many are waiting (in transactions of their
/// own, after the commit that made them so), else when the writer is idle: deleting
/// after every single acknowledgement would cost a transaction per delivery.
pub(crate) const COLLECT_AT: u64 = 512;
/// At most this many are deleted per transaction, and more only while no message
/// waits: a sink's next acknowledgement waits for one short deletion, not for the
/// whole backlog.
const COLLECT_CHUNK: u64 = 1024;
/// The WAL restarts from its beginning only when a commit finds it wholly copied, which
/// a steady stream of commits may never do while the checkpointer copies beside it: past
/// `max_bytes` (within these bounds) the writer empties it itself.
const WAL_LIMIT: (u64, u64) = (4 << 20, 2 * store::JOURNAL_SIZE_LIMIT as u64);
/// How long the writer waits, when emptying the WAL, for readers of older snapshots
/// (after the background pass in progress, if any, is over).
const WAL_WAIT: Duration = Duration::from_secs(1);

/// Copies the WAL into the database on a connection and thread of its own, so the
/// writer goes on committing meanwhile: the copy is most of a checkpoint's cost.
pub(crate) struct Checkpointer {
    requests: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Held through each pass. SQLite lets one checkpoint run at a time and answers
    /// another with SQLITE_BUSY at once, without waiting: the writer takes this first
    /// so a pass in progress is waited for, not mistaken for a reader holding an old
    /// snapshot.
    turn: Arc<Mutex<()>>,
}

impl Checkpointer {
    pub(crate) fn start(conn: Connection) -> Result<Checkpointer> {
        // One request waiting is enough: the pass it starts covers every later commit.
        let (requests, asked) = crossbeam_channel::bounded::<()>(1);
        let turn = Arc::new(Mutex::new(()));
        let mine = turn.clone();
        let thread = std::thread::Builder::new()
            .name("eventspool-checkpoint".into())
            .spawn(move || {
                for () in asked {
                    let _turn = mine.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Err(e) = store::checkpoint(&conn) {
                        log::debug!("checkpoint failed: {e}");
                    }
                }
            })
            .map_err(|e| Error::io("cannot spawn the checkpoint thread", e))?;
        Ok(Checkpointer {
            requests: Some(requests),
            thread: Some(thread),
            turn,
        })
    }

    fn request(&self) {
        if let Some(requests) = &self.requests {
            let _ = requests.try_send(());
        }
    }

    /// Empties the WAL on the writer's `conn` (see [`store::checkpoint_truncate`]) once
    /// the pass in progress, if any, is over.
    fn truncate(&self, conn: &Connection, wait: Duration) -> rusqlite::Result<bool> {
        let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        store::checkpoint_truncate(conn, wait)
    }
}

impl Checkpointer {
    /// Ends the thread, once the pass in progress is over; its connection closes.
    fn stop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `append` events in the current batch: `batch[start..start + len]`.
struct Waiter {
    start: usize,
    len: usize,
    reply: Reply<Result<SeqNo>>,
}

pub(crate) struct Writer {
    checkpointer: Checkpointer,
    db: Arc<Db>,
    path: PathBuf,
    /// The file's identity at open (see [`store::file_id`]).
    file_id: Option<(u64, u64)>,
    rx: Receiver<Msg>,
    stop: Receiver<()>,
    shared: Arc<Shared>,
    max_events: u64,
    max_bytes: u64,
    /// See [`WAL_LIMIT`].
    wal_limit: u64,
    /// The WAL size at which the writer empties it next: `wal_limit`, or more after an
    /// attempt failed (a reader held on to an old snapshot past the busy timeout).
    wal_next: u64,
    batch_size: usize,
    flush_interval: Duration,
    /// Most events held across failed commits (the channel capacity).
    pending_cap: usize,
    next_seq: SeqNo,
    first_seq: SeqNo,
    stored_bytes: u64,
    dead: DeadLetterBook,
    batch: Vec<Event>,
    appends: Vec<Waiter>,
    flushes: Vec<Reply<()>>,
    ops: Vec<(Op, Reply<Result<u64>>)>,
    closing: Option<Reply<()>>,
    stopping: Option<Reply<Result<()>>>,
    /// Set after a failed commit: when to try again, and the delay used.
    retry: Option<(Instant, Duration)>,
    evicting: bool,
    /// `append` callers answered by the last commit: as many are expected back.
    expected_waiters: usize,
    /// Batches and events committed since the last checkpoint.
    unchecked: (u32, u64),
    /// Some acknowledged events wait to be deleted.
    gc_pending: bool,
    /// The OS lock that makes this spool the file's owner; released when the writer
    /// ends, after its connections closed (see `drop`).
    lock: File,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        lock: File,
        conn: Connection,
        checkpointer: Checkpointer,
        state: &StoreState,
        config: &SpoolConfig,
        rx: Receiver<Msg>,
        stop: Receiver<()>,
        shared: Arc<Shared>,
    ) -> Self {
        let c = &shared.counters;
        c.last_seq.store(state.last_seq, Relaxed);
        c.stored_events
            .store(state.last_seq + 1 - state.first_seq, Relaxed);
        c.stored_bytes.store(state.stored_bytes, Relaxed);
        c.dead_letters.store(state.dead_letters, Relaxed);
        c.dead_letter_bytes.store(state.dead_letter_bytes, Relaxed);
        Writer {
            lock,
            checkpointer,
            file_id: store::file_id(&config.path),
            path: config.path.clone(),
            db: Arc::new(Db {
                state: Mutex::new(DbState {
                    conn: Some(conn),
                    missing: false,
                    rescued: None,
                    acks: (0, state.last_seq),
                }),
                path: config.path.clone(),
                waiting: AtomicUsize::new(0),
            }),
            rx,
            stop,
            max_events: config.max_events,
            max_bytes: config.max_bytes,
            wal_limit: config.max_bytes.clamp(WAL_LIMIT.0, WAL_LIMIT.1),
            wal_next: config.max_bytes.clamp(WAL_LIMIT.0, WAL_LIMIT.1),
            batch_size: config.batch_size,
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            pending_cap: config.channel_capacity.max(config.batch_size),
            next_seq: state.last_seq + 1,
            first_seq: state.first_seq,
            stored_bytes: state.stored_bytes,
            dead: DeadLetterBook {
                count: state.dead_letters,
                bytes: state.dead_letter_bytes,
                evicted: 0,
                max_count: config.max_events,
                max_bytes: config.dead_letter_limit(),
            },
            batch: Vec::with_capacity(config.batch_size.min(4096)),
            appends: Vec::new(),
            flushes: Vec::new(),
            ops: Vec::new(),
            closing: None,
            stopping: None,
            retry: None,
            evicting: false,
            unchecked: (0, 0),
            gc_pending: false,
            expected_waiters: 0,
            shared,
        }
    }

    /// The connection, for consumers that commit their acknowledgements themselves.
    pub(crate) fn db(&self) -> Arc<Db> {
        self.db.clone()
    }

    pub(crate) fn run(mut self) {
        while self.gather() {
            if self.batch.is_empty() && self.ops.is_empty() {
                // Only control messages: nothing is pending, so they are satisfied.
                self.answer_flushes();
                // Consumers' own commits ([`Msg::Acked`]) grow the WAL as well.
                self.keep_wal_short();
            } else {
                self.commit();
            }
            if self.closing.is_some()
                && self.batch.is_empty()
                && self.settled()
                && let Some(reply) = self.closing.take()
            {
                reply.send(());
            }
            if let Some(reply) = self.stopping.take() {
                // The last chance to save a file deleted while idle: once the connections
                // close, an unlinked file is gone with everything in it.
                let gone = self.check_file();
                if gone.is_none() {
                    // Consumers' own acknowledgements may have made more deletable.
                    self.gc_pending = true;
                    self.collect();
                    // Everything into the database file and the WAL emptied: the file
                    // stands alone once the connections close (see `Spool::close`).
                    if let Some(conn) = &self.db.lock().conn
                        && let Err(e) = self.checkpointer.truncate(conn, WAL_WAIT)
                    {
                        log::warn!("cannot empty the WAL at close: {e}");
                    }
                }
                reply.send(gone.map_or(Ok(()), |rescued| {
                    Err(Error::FileGone {
                        path: self.path.clone(),
                        rescued,
                    })
                }));
                return;
            }
        }
        self.abandon();
    }

    /// Waits for work and collects a batch. Returns false when the writer must stop
    /// without finishing (close timed out).
    fn gather(&mut self) -> bool {
        loop {
            if self.stop.try_recv() == Err(TryRecvError::Disconnected) {
                return false;
            }
            let accepting = self.batch.len() < self.pending_cap;
            let rx = if accepting { self.rx.clone() } else { never() };
            let idle_checkpoint = self.retry.is_none() && (self.unchecked.0 > 0 || self.gc_pending);
            let wait = match (self.retry, &self.closing) {
                (Some((at, _)), _) => at.saturating_duration_since(Instant::now()),
                (None, Some(_)) => SETTLE_POLL,
                (None, None) if idle_checkpoint => CHECKPOINT_IDLE,
                (None, None) => FILE_CHECK,
            };
            let first = select! {
                recv(rx) -> m => m.ok(),
                recv(self.stop) -> _ => return false,
                default(wait) => None,
            };
            match first {
                Some(msg) => self.take(msg),
                None if idle_checkpoint && self.closing.is_none() => {
                    self.collect();
                    self.checkpoint();
                }
                None if self.retry.is_none() && self.closing.is_none() => {
                    let _ = self.check_file();
                }
                None => {}
            }
            if accepting {
                self.drain_queued();
            }
            // While a retry is due later, keep collecting unless a waiter wants an answer.
            let retry_later = self.retry.is_some_and(|(at, _)| Instant::now() < at);
            if !retry_later || !self.no_waiters() {
                return true;
            }
        }
    }

    /// Takes what is already queued, up to `batch_size` more events; with a flush
    /// interval, waits that long for more unless a waiter is in the batch.
    fn drain_queued(&mut self) {
        let limit = self.batch.len() + self.batch_size;
        while self.batch.len() < limit {
            match self.rx.try_recv() {
                Ok(msg) => self.take(msg),
                Err(_) => break,
            }
        }
        if self.retry.is_some() {
            return;
        }
        // Group commit: several callers were answered last time; give them a moment
        // to return, so they share this transaction instead of one each.
        if self.expected_waiters > 1 && !self.appends.is_empty() {
            let deadline = Instant::now() + GROUP_WAIT;
            while self.batch.len() < limit && self.appends.len() < self.expected_waiters {
                match self.rx.recv_deadline(deadline) {
                    Ok(msg) => self.take(msg),
                    Err(_) => break,
                }
            }
        }
        if !self.flush_interval.is_zero() {
            let deadline = crate::time::deadline(self.flush_interval);
            while self.batch.len() < limit && self.no_waiters() {
                match self.rx.recv_deadline(deadline) {
                    Ok(msg) => self.take(msg),
                    Err(_) => break,
                }
            }
        }
    }

    fn no_waiters(&self) -> bool {
        self.appends.is_empty()
            && self.flushes.is_empty()
            && self.ops.is_empty()
            && self.closing.is_none()
            && self.stopping.is_none()
    }

    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Emit(event) => self.batch.push(event),
            Msg::Append(events, reply) => {
                let start = self.batch.len();
                let len = events.len();
                self.batch.extend(events);
                self.appends.push(Waiter { start, len, reply });
            }
            Msg::Flush(reply) => self.flushes.push(reply),
            Msg::Close(reply) => self.closing = Some(reply),
            Msg::Stop(reply) => self.stopping = Some(reply),
            Msg::Op(op, reply) => self.ops.push((op, reply)),
            Msg::Acked(commits) => {
                self.unchecked.0 += commits;
                self.gc_pending = true;
            }
        }
    }

    fn answer_flushes(&mut self) {
        for reply in self.flushes.drain(..) {
            reply.send(());
        }
    }

    /// True when every event handed to the spool has reached a final count.
    fn settled(&self) -> bool {
        let c = &self.shared.counters;
        c.emitted.load(SeqCst) == c.settled()
    }

    fn commit(&mut self) {
        self.commit_with(false);
    }

    /// Deletes what every consumer acknowledged (and nothing else), [`COLLECT_CHUNK`]
    /// events per transaction, until done or a message or a consumer
    /// ([`Db::ack`]) waits.
    fn collect(&mut self) {
        while std::mem::take(&mut self.gc_pending) {
            self.commit_with(true);
            if !self.rx.is_empty() || self.db.waiting.load(SeqCst) > 0 {
                break;
            }
        }
    }

    fn commit_with(&mut self, collect: bool) {
        let db = self.db.clone();
        let mut db = db.lock();
        if let Some(rescued) = self.file_gone(&mut db) {
            drop(db);
            let path = self.path.clone();
            self.failed(&|| Error::FileGone {
                path: path.clone(),
                rescued: rescued.clone(),
            });
            return;
        }
        let Some(conn) = db.conn.as_mut() else {
            drop(db);
            self.failed(&|| Error::Closed);
            return;
        };
        let n = self.batch.len() as u64;
        let added: u64 = self.batch.iter().map(Event::size).sum();
        let before = Kept {
            first_seq: self.first_seq,
            stored_bytes: self.stored_bytes + added,
            evicted: 0,
            results: Vec::new(),
            unsent: Vec::new(),
            collectable: false,
            collect_due: false,
            dead: self.dead,
        };
        let caps = (self.max_events, self.max_bytes);
        match commit_batch(
            conn,
            &self.batch,
            self.next_seq,
            &self.ops,
            before,
            caps,
            collect,
        ) {
            Ok(kept) => {
                let first = self.stored(n, &kept);
                drop(db);
                self.committed(n, first, kept);
            }
            Err(e) => {
                drop(db);
                let e = Arc::new(e);
                self.failed(&|| Error::Commit(e.clone()));
            }
        }
    }

    /// [`file_gone`](Writer::file_gone), taking the connection's lock.
    fn check_file(&mut self) -> Option<Option<PathBuf>> {
        let db = self.db.clone();
        let mut db = db.lock();
        self.file_gone(&mut db)
    }

    /// A `stat` per commit notices the file deleted or replaced under the writer: its
    /// commits would reach a file nobody can open again. The first time, what the
    /// connection still holds is saved (see [`store::rescue`]). Returns where to, while
    /// the file is gone; a file moved back in place is written again.
    fn file_gone(&mut self, db: &mut DbState) -> Option<Option<PathBuf>> {
        db.missing = store::file_id(&self.path) != self.file_id;
        if !db.missing {
            return None;
        }
        if db.rescued.is_none()
            && let Some(conn) = db.conn.as_ref()
        {
            log::error!(
                "spool file {} was deleted or replaced while open; saving what it held",
                self.path.display()
            );
            // Empty the WAL first: it stays at `<path>-wal`, where SQLite would apply its
            // frames to a new file at `path`.
            let emptied = self
                .checkpointer
                .truncate(conn, WAL_WAIT)
                .unwrap_or_else(|e| {
                    log::error!("cannot empty the WAL of {}: {e}", self.path.display());
                    false
                });
            // Its directory may have gone with it (and the lock file in it). Without
            // the lock, `path` may be someone else's: saved beside it then.
            let owned = store::make_parent(&self.path)
                .and_then(|()| self.keep_lock())
                .inspect_err(|e| log::error!("cannot save {} in place: {e}", self.path.display()))
                .is_ok();
            let rescued = store::rescue(conn, &self.path, emptied && owned);
            // Callers learn of it at their next commit; the hook, also when none comes.
            self.shared.report(&Error::FileGone {
                path: self.path.clone(),
                rescued: rescued.clone(),
            });
            db.rescued = Some(rescued);
        }
        Some(db.rescued.clone().flatten())
    }

    /// Takes the lock file again if it went with the file's directory: until this
    /// writer's connections close, nobody else may open a file at `path`, because
    /// SQLite removes `<path>-wal` and `<path>-shm` by name when the last of them
    /// closes, and those would then be the newcomer's.
    fn keep_lock(&mut self) -> Result<()> {
        if !store::is_at(&self.lock, &store::beside(&self.path, ".lock")) {
            self.lock = store::lock(&self.path)?;
        }
        Ok(())
    }

    /// Records what a commit of `n` events left stored, in the writer and in the
    /// counters, while the connection is still locked (see [`Db::ack`]). Returns the
    /// first seq given.
    fn stored(&mut self, n: u64, kept: &Kept) -> SeqNo {
        let first = self.next_seq;
        self.next_seq += n;
        self.first_seq = kept.first_seq;
        self.stored_bytes = kept.stored_bytes;
        let c = &self.shared.counters;
        c.last_seq.store(self.next_seq - 1, Relaxed);
        c.stored_events
            .store(self.next_seq - self.first_seq, Relaxed);
        c.stored_bytes.store(self.stored_bytes, Relaxed);
        c.evicted.fetch_add(kept.evicted, Relaxed);
        c.dead_letters_evicted
            .fetch_add(kept.dead.evicted - self.dead.evicted, Relaxed);
        self.dead = kept.dead;
        c.dead_letters.store(self.dead.count, Relaxed);
        c.dead_letter_bytes.store(self.dead.bytes, Relaxed);
        for (consumer, unsent) in &kept.unsent {
            self.shared.evicted_unsent(consumer, *unsent);
        }
        first
    }

    fn committed(&mut self, n: u64, first: SeqNo, kept: Kept) {
        self.gc_pending = kept.collectable;
        let evicted = kept.evicted;
        let c = &self.shared.counters;
        c.batches.fetch_add(u64::from(n > 0), Relaxed);
        c.pending_retry.store(0, Relaxed);
        c.committed.fetch_add(n, SeqCst);
        for ((_, reply), result) in self.ops.drain(..).zip(kept.results) {
            reply.send(Ok(result));
        }
        if n > 0 {
            self.shared.ring();
        }
        if evicted > 0 && !self.evicting {
            log::warn!("spool is at its cap: evicting the oldest events ({evicted} in this batch)");
        }
        self.evicting = evicted > 0;
        if self.retry.take().is_some() {
            log::info!("spool commits again after failures");
        }
        self.expected_waiters = self.appends.len();
        let wakeups = Wakeups::new(self.appends.iter().map(|w| &w.reply));
        for w in self.appends.drain(..) {
            w.reply
                .send_quietly(Ok(first + (w.start + w.len) as u64 - 1), wakeups.clone());
        }
        wakeups.release();
        self.batch.clear();
        self.answer_flushes();

        self.unchecked.0 += 1;
        self.unchecked.1 += n;
        self.keep_wal_short();
        // In a transaction of its own, once everyone is answered: a sink's next request
        // goes out while the deletion runs, instead of after it.
        if kept.collect_due {
            self.collect();
        }
    }

    fn checkpoint(&mut self) {
        self.unchecked = (0, 0);
        self.checkpointer.request();
    }

    /// Asks for a checkpoint when enough was committed since the last one, and empties
    /// the WAL when it grew past its limit anyway.
    fn keep_wal_short(&mut self) {
        if self.unchecked.0 >= CHECKPOINT_BATCHES || self.unchecked.1 >= CHECKPOINT_EVENTS {
            self.checkpoint();
        }
        self.bound_wal();
    }

    /// Empties the WAL when it grew past the limit (a `stat` per commit). When that does
    /// not succeed within [`WAL_WAIT`], the next attempt waits until the WAL doubled, so
    /// a reader that holds an old snapshot stalls the writer a few times, not at every
    /// commit.
    fn bound_wal(&mut self) {
        let size = store::wal_bytes(&self.path);
        if size <= self.wal_next {
            return;
        }
        let db = self.db.clone();
        let db = db.lock();
        let Some(conn) = db.conn.as_ref() else {
            return;
        };
        match self.checkpointer.truncate(conn, WAL_WAIT) {
            Ok(true) => self.wal_next = self.wal_limit,
            outcome => {
                self.wal_next = size * 2;
                log::warn!(
                    "cannot empty the WAL at {size} bytes ({}); a reader may hold an old snapshot",
                    match outcome {
                        Err(e) => e.to_string(),
                        Ok(_) => "busy".into(),
                    }
                );
            }
        }
    }

    /// A commit failed with what `error` makes (one for each caller told).
    fn failed(&mut self, error: &dyn Fn() -> Error) {
        let c = &self.shared.counters;
        c.commit_errors.fetch_add(1, Relaxed);
        let e = error();
        for (_, reply) in self.ops.drain(..) {
            reply.send(Err(error()));
        }
        // `append` callers learn of the failure and own the retry: their events go.
        for w in self.appends.drain(..).rev() {
            self.batch.drain(w.start..w.start + w.len);
            c.rejected.fetch_add(w.len as u64, SeqCst);
            w.reply.send(Err(error()));
        }
        c.pending_retry.store(self.batch.len() as u64, Relaxed);
        if self.batch.is_empty() {
            log::warn!("spool commit failed; the append callers were told: {e}");
            self.retry = None;
        } else {
            let delay = self
                .retry
                .map_or(RETRY_MIN, |(_, d)| (d * 2).min(RETRY_MAX));
            self.retry = Some((Instant::now() + delay, delay));
            log::error!(
                "spool commit failed, keeping {} events and retrying in {delay:?}: {e}",
                self.batch.len()
            );
            self.shared.report(&e);
        }
    }

    /// Close timed out: count what will never be committed, then let go of the channel.
    fn abandon(&mut self) {
        let c = &self.shared.counters;
        let mut lost = self.batch.len() as u64;
        self.batch.clear();
        self.appends.clear();
        let deadline = Instant::now() + Duration::from_millis(100);
        loop {
            while let Ok(msg) = self.rx.try_recv() {
                lost += match msg {
                    Msg::Emit(_) => 1,
                    Msg::Append(events, _) => events.len() as u64,
                    _ => 0,
                };
            }
            c.abandoned.fetch_add(std::mem::take(&mut lost), SeqCst);
            if self.settled() || Instant::now() >= deadline {
                break;
            }
            std::thread::yield_now();
        }
        c.pending_retry.store(0, Relaxed);
        log::error!(
            "spool closed before everything was committed: {} events abandoned",
            c.abandoned.load(Relaxed)
        );
    }
}

impl Drop for Writer {
    /// Closes the connections before the lock file (a field, dropped after this): until
    /// then nobody else may open the file. The checkpointer's closes first, then the
    /// writer's; a consumer that commits on it after this is told the spool is closed.
    fn drop(&mut self) {
        self.checkpointer.stop();
        self.db.lock().conn = None;
    }
}

/// What is stored after a commit.
struct Kept {
    first_seq: SeqNo,
    stored_bytes: u64,
    /// The dead letters after the transaction's operations.
    dead: DeadLetterBook,
    /// Events evicted by the caps (not those every consumer had acknowledged).
    evicted: u64,
    /// What each operation yielded, in order.
    results: Vec<u64>,
    /// Per consumer, evicted events it had not acknowledged.
    unsent: Vec<(String, u64)>,
    /// Events every consumer acknowledged are left to delete when the writer is idle
    /// (or, after a [`COLLECT_CHUNK`], at the next chance) ...
    collectable: bool,
    /// ... or right after the waiters were answered: [`COLLECT_AT`] or more wait.
    collect_due: bool,
}

/// One transaction: insert the batch, apply the consumer operations, delete what every
/// consumer acknowledged (when `collect`, or to stay within the caps; else it is marked
/// for later), evict the oldest beyond the caps, save the state.
fn commit_batch(
    conn: &mut Connection,
    batch: &[Event],
    first: SeqNo,
    ops: &[(Op, Reply<Result<u64>>)],
    mut kept: Kept,
    (max_events, max_bytes): (u64, u64),
    collect: bool,
) -> rusqlite::Result<Kept> {
    let tx = conn.transaction()?;
    store::insert(&tx, first, batch)?;
    let end = first + batch.len() as u64; // one past the last seq
    let stored_first = kept.first_seq;
    for (op, _) in ops {
        kept.results.push(store::apply(
            &tx,
            op,
            kept.first_seq,
            end - 1,
            &mut kept.dead,
        )?);
    }
    if let Some(acked) = store::min_acked(&tx)? {
        let consumed_to = (acked + 1).min(end);
        let over_caps = end - kept.first_seq > max_events || kept.stored_bytes > max_bytes;
        if consumed_to > kept.first_seq {
            if collect || over_caps {
                let to = if over_caps {
                    consumed_to
                } else {
                    consumed_to.min(kept.first_seq + COLLECT_CHUNK)
                };
                kept.stored_bytes -= store::delete_before(&tx, to)?.1;
                kept.first_seq = to;
                kept.collectable = to < consumed_to;
            } else {
                kept.collectable = true;
                kept.collect_due = consumed_to - kept.first_seq >= COLLECT_AT;
            }
        }
    }
    let mut evict_to = kept.first_seq;
    if end - evict_to > max_events {
        evict_to = end - max_events;
    }
    if kept.stored_bytes > max_bytes {
        // Bytes still to free once the count cap has evicted up to `evict_to`.
        let (_, bytes) = store::bytes_before(&tx, evict_to)?;
        if kept.stored_bytes - bytes > max_bytes {
            evict_to =
                store::keep_from_for_bytes(&tx, evict_to, kept.stored_bytes - bytes - max_bytes)?;
        }
    }
    if evict_to > kept.first_seq {
        for (consumer, acked) in store::consumers_behind(&tx, evict_to)? {
            kept.unsent
                .push((consumer, evict_to - (acked + 1).max(kept.first_seq)));
        }
        let (count, bytes) = store::delete_before(&tx, evict_to)?;
        kept.evicted = count;
        kept.stored_bytes -= bytes;
        kept.first_seq = evict_to;
    }
    if !batch.is_empty() || kept.first_seq != stored_first {
        store::save_state(&tx, end - 1, kept.stored_bytes)?;
    }
    tx.commit()?;
    Ok(kept)
}
