//! [`Db`]: the writer connection, which sink workers borrow to commit their cursor.

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Mutex, MutexGuard, PoisonError};

use rusqlite::Connection;

use crate::error::{Error, Result, StorageError};
use crate::event::SeqNo;
use crate::metrics::Counters;
use crate::store::{self};

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
pub(super) const ACK_CHECKPOINT: u64 = 1024;

/// The writer connection. The writer thread commits on it, and so do sink workers when
/// they move their cursor ([`Db::ack`], under `Durability::Normal`: see
/// [`crate::delivery::acks_directly`]), on their own thread, instead of waking the
/// writer and waiting to be woken: each of those wake-ups costs tens of microseconds on
/// a VM (a sleeping virtual CPU), as much as the commit. Whoever holds the lock has the
/// connection; it is still the only one that writes, so a commit never meets SQLite's
/// busy handler.
pub(crate) struct Db {
    pub(super) state: Mutex<DbState>,
    pub(super) path: PathBuf,
    /// Sink workers waiting for the lock in [`Db::ack`]: the writer stops deleting for
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
    pub(super) rescued: Option<Option<PathBuf>>,
    /// Acknowledgements committed by [`Db::ack`] since it last considered a checkpoint,
    /// and the last seq committed then.
    pub(super) acks: (u64, SeqNo),
}

impl Db {
    pub(super) fn lock(&self) -> MutexGuard<'_, DbState> {
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
            Error::Commit(StorageError::new(e))
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
