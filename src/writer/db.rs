//! [`Db`]: the writer connection, which sink workers borrow to commit their cursor.

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crossbeam_channel::Sender;

use rusqlite::Connection;

use crate::error::{Error, Result, StorageError};
use crate::event::SeqNo;
use crate::metrics::Counters;
use crate::store::{self, Op};

use super::commit::COLLECT_AT;
use super::msg::{Msg, call};

use super::file_gone::Gone;

/// Every this many cursor commits by sink workers ([`Db::commit_cursor`]), the one that
/// commits the last copies the WAL into the database itself, holding the connection,
/// so the next commit starts the WAL over: the checkpointer's passes, beside a steady
/// stream of commits, never end with all of it copied ([`crate::guide::performance`]). Only
/// when no event came in meanwhile (then the writer's own limit bounds the WAL).
pub(super) const ACK_CHECKPOINT: u64 = 1024;

/// The writer connection. The writer thread commits on it, and so do sink workers when
/// they move their cursor ([`Db::commit_cursor`], under `Durability::Normal`: see
/// [`crate::delivery::acks_directly`]), on their own thread, instead of waking the
/// writer and waiting to be woken: each of those wake-ups costs tens of microseconds on
/// a VM (a sleeping virtual CPU), as much as the commit. Whoever holds the lock has the
/// connection; it is still the only one that writes, so a commit never meets SQLite's
/// busy handler.
pub(crate) struct Db {
    pub(super) state: Mutex<DbState>,
    pub(super) path: PathBuf,
    /// Sink workers waiting for the lock in [`Db::commit_cursor`]: the writer stops deleting for
    /// them between chunks (see `collect`).
    pub(super) waiting: AtomicUsize,
}

pub(super) struct DbState {
    /// Taken when the writer ends (its connection closes before the file is unlocked).
    pub(super) conn: Option<Connection>,
    /// Whether the writer's last look found the file deleted or replaced (see
    /// [`Writer::file_gone`]).
    pub(super) missing: bool,
    /// Set the first time it was: where what it held was saved.
    pub(super) gone: Option<Gone>,
    /// Acknowledgements committed by [`Db::commit_cursor`] since it last considered a checkpoint,
    /// and the last seq committed then.
    pub(super) acks: AckCheckpoint,
}

impl Db {
    pub(super) fn lock(&self) -> MutexGuard<'_, DbState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves `consumer`'s cursor to `seq` (acknowledging `from..=seq`) in one statement
    /// that commits on its own (no `BEGIN`/`COMMIT` around it), on the calling thread; returns how many of those the
    /// caps evicted first (see [`Op::Ack`]). The writer updates `counters` with the lock
    /// held, so they describe what is stored. Every [`ACK_CHECKPOINT`] calls it may copy
    /// the WAL into the database as well.
    pub(crate) fn commit_cursor(
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
            let rescued = db.gone.as_ref().and_then(|g| g.rescued.clone());
            return Err(Error::FileGone {
                path: self.path.clone(),
                rescued,
            });
        }
        let state = &mut *db;
        let conn = state.conn.as_ref().ok_or(Error::Closed)?;
        let first_seq = counters.first_seq();
        store::ack(conn, consumer, seq).map_err(|e| {
            counters.commit_errors.fetch_add(1, Relaxed);
            Error::Commit(StorageError::new(e))
        })?;
        state.acks.acks += 1;
        if state.acks.acks >= ACK_CHECKPOINT {
            let last_seq = counters.last_seq.load(Relaxed);
            // Busy when the checkpointer's pass is running: that one will do.
            if last_seq == state.acks.last_seq
                && let Err(e) = store::checkpoint(conn)
            {
                log::debug!("checkpoint after acknowledgements failed: {e}");
            }
            state.acks = AckCheckpoint { acks: 0, last_seq };
        }
        Ok(store::evicted_in(from, seq, first_seq))
    }
}

/// Acknowledgements committed by [`Db::commit_cursor`] since it last considered a checkpoint, and
/// the last seq committed then (a checkpoint is taken only if no event came in since).
#[derive(Debug, Clone, Copy)]
pub(super) struct AckCheckpoint {
    pub(super) acks: u64,
    pub(super) last_seq: SeqNo,
}

/// Cursor commits a consumer makes: on the writer's connection ([`Db::commit_cursor`])
/// when `directly` (see [`crate::delivery::acks_directly`]), else through the writer.
/// The writer is told of direct ones every [`COLLECT_AT`] events they acknowledged (and
/// by [`tell_writer`](CursorCommits::tell_writer)): it counts them toward the next
/// checkpoint and deletes what every consumer acknowledged.
pub(crate) struct CursorCommits {
    db: Arc<Db>,
    tx: Sender<Msg>,
    directly: bool,
    /// Events and commits made directly that the writer was not told of.
    untold_events: u64,
    untold_commits: u32,
}

impl CursorCommits {
    pub(crate) fn new(db: Arc<Db>, tx: Sender<Msg>, directly: bool) -> Self {
        CursorCommits {
            db,
            tx,
            directly,
            untold_events: 0,
            untold_commits: 0,
        }
    }

    /// Moves `consumer`'s cursor to `to`, acknowledging `from..=to`; returns how many of
    /// those the caps evicted first (see [`Op::Ack`]).
    pub(crate) fn commit(
        &mut self,
        consumer: &str,
        from: SeqNo,
        to: SeqNo,
        counters: &Counters,
    ) -> Result<u64> {
        if !self.directly {
            let ack = Op::Ack {
                consumer: consumer.to_owned(),
                seq: to,
                from: Some(from),
            };
            return call(&self.tx, ack, 0);
        }
        let evicted = self.db.commit_cursor(consumer, to, from, counters)?;
        self.untold_events += to + 1 - from;
        self.untold_commits += 1;
        if self.untold_events >= COLLECT_AT {
            self.tell_writer();
        }
        Ok(evicted)
    }

    /// Tells the writer of the commits made directly since it was last told. When its
    /// channel is full it is busy committing, which deletes them as well.
    pub(crate) fn tell_writer(&mut self) {
        if self.untold_commits > 0 {
            let _ = self.tx.try_send(Msg::Acked(self.untold_commits));
            (self.untold_events, self.untold_commits) = (0, 0);
        }
    }
}
