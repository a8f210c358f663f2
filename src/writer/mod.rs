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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError, never, select};
use rusqlite::Connection;

use crate::config::SpoolConfig;
use crate::error::Result;
use crate::event::{Event, SeqNo};
use crate::reply::Reply;
use crate::shared::Shared;
use crate::store::{self, DeadLetterBook, Op, StoreState};

mod checkpoint;
mod commit;
mod db;
mod file_gone;
mod msg;

pub(crate) use checkpoint::Checkpointer;
use checkpoint::*;
use db::*;
pub(crate) use db::{CursorCommits, Db};
pub(crate) use msg::{Msg, call};

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
/// A failed commit's retry: when, and the delay that led to it (doubled next time).
#[derive(Debug, Clone, Copy)]
struct Retry {
    at: Instant,
    delay: Duration,
}

/// Batches and events committed since the last checkpoint.
#[derive(Debug, Clone, Copy, Default)]
struct Unchecked {
    batches: u32,
    events: u64,
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
    /// What keys the file, for a copy of it (see [`store::rescue`]).
    keying: store::Keying,
    /// The file's identity at open (see [`store::file_id`]).
    file_id: Option<store::FileId>,
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
    retry: Option<Retry>,
    evicting: bool,
    /// `append` callers answered by the last commit: as many are expected back.
    expected_waiters: usize,
    /// Batches and events committed since the last checkpoint.
    unchecked: Unchecked,
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
        keying: store::Keying,
    ) -> Self {
        let c = &shared.counters;
        c.last_seq.store(state.last_seq, Relaxed);
        c.first_stored.store(state.first_seq, Relaxed);
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
            keying,
            db: Arc::new(Db {
                state: Mutex::new(DbState {
                    conn: Some(conn),
                    missing: false,
                    gone: None,
                    acks: AckCheckpoint {
                        acks: 0,
                        last_seq: state.last_seq,
                    },
                }),
                path: config.path.clone(),
                waiting: AtomicUsize::new(0),
            }),
            rx,
            stop,
            max_events: config.max_events,
            max_bytes: config.max_bytes,
            wal_limit: config.max_bytes.clamp(WAL_LIMIT_MIN, WAL_LIMIT_MAX),
            wal_next: config.max_bytes.clamp(WAL_LIMIT_MIN, WAL_LIMIT_MAX),
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
            unchecked: Unchecked::default(),
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
                reply.send(gone.map_or(Ok(()), |gone| Err(gone.error(&self.path))));
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
            let idle_checkpoint =
                self.retry.is_none() && (self.unchecked.batches > 0 || self.gc_pending);
            let wait = match (self.retry, &self.closing) {
                (Some(retry), _) => retry.at.saturating_duration_since(Instant::now()),
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
            let retry_later = self.retry.is_some_and(|r| Instant::now() < r.at);
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
            #[cfg(feature = "encryption")]
            Msg::Rekey(keying, reply) => reply.send(self.rekey(&keying)),
            Msg::Acked(commits) => {
                self.unchecked.batches += commits;
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
