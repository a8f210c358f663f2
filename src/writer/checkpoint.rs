//! Keeping the WAL short: [`Checkpointer`] copies it into the database on a thread of
//! its own; the writer asks for passes and empties the WAL when it grew past its limit.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::store::{self};

use super::Writer;

/// A checkpoint (copying the WAL into the database, with an fsync; on the checkpointer's
/// thread, while the writer goes on) is asked for after this many events were committed
/// since the last one ...
pub(super) const CHECKPOINT_EVENTS: u64 = 8192;

/// ... or this many batches ...
pub(super) const CHECKPOINT_BATCHES: u32 = 256;

/// ... or when the writer has been idle this long with a WAL to copy (deleting what
/// every consumer acknowledged first).
pub(super) const CHECKPOINT_IDLE: Duration = Duration::from_millis(50);

/// The WAL restarts from its beginning only when a commit finds it wholly copied, which
/// a steady stream of commits may never do while the checkpointer copies beside it: past
/// `max_bytes` (within these bounds) the writer empties it itself.
pub(super) const WAL_LIMIT_MIN: u64 = 4 << 20;
/// ... and at most this (twice the size SQLite keeps after a checkpoint).
pub(super) const WAL_LIMIT_MAX: u64 = 2 * store::JOURNAL_SIZE_LIMIT as u64;

/// How long the writer waits, when emptying the WAL, for readers of older snapshots
/// (after the background pass in progress, if any, is over).
pub(super) const WAL_WAIT: Duration = Duration::from_secs(1);

/// Copies the WAL into the database on a connection and thread of its own, so the
/// writer goes on committing meanwhile: the copy is most of a checkpoint's cost.
pub(crate) struct Checkpointer {
    pub(super) requests: Option<Sender<()>>,
    pub(super) thread: Option<JoinHandle<()>>,
    /// The checkpointer's connection, held through each pass. SQLite lets one
    /// checkpoint run at a time and answers another with SQLITE_BUSY at once, without
    /// waiting: the writer takes this first so a pass in progress is waited for, not
    /// mistaken for a reader holding an old snapshot (and to replace the connection
    /// when the file's key changes).
    pub(super) turn: Arc<Mutex<Connection>>,
}

impl Checkpointer {
    pub(crate) fn start(conn: Connection) -> Result<Checkpointer> {
        // One request waiting is enough: the pass it starts covers every later commit.
        let (requests, asked) = crossbeam_channel::bounded::<()>(1);
        let turn = Arc::new(Mutex::new(conn));
        let mine = turn.clone();
        let thread = std::thread::Builder::new()
            .name("eventspool-checkpoint".into())
            .spawn(move || {
                for () in asked {
                    let conn = mine.lock().unwrap_or_else(PoisonError::into_inner);
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

    pub(super) fn request(&self) {
        if let Some(requests) = &self.requests {
            let _ = requests.try_send(());
        }
    }

    /// Empties the WAL on the writer's `conn` (see [`store::checkpoint_truncate`]) once
    /// the pass in progress, if any, is over.
    pub(super) fn truncate(&self, conn: &Connection, wait: Duration) -> rusqlite::Result<bool> {
        let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        store::checkpoint_truncate(conn, wait)
    }

    #[cfg(feature = "encryption")]
    /// Re-encrypts the file under `keying` on the writer's `conn` (see
    /// [`store::rekey`]) with no pass running, and keys the checkpointer's connection
    /// anew.
    pub(super) fn rekey(
        &self,
        conn: &Connection,
        path: &std::path::Path,
        keying: &store::Keying,
    ) -> Result<()> {
        let mut turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
        if !store::rekey(conn, keying, WAL_WAIT).map_err(Error::storage)? {
            log::warn!("the WAL was not emptied after changing the key; it empties later");
        }
        *turn = store::open_checkpointer(path, keying)?;
        Ok(())
    }
}

impl Checkpointer {
    /// Ends the thread, once the pass in progress is over; its connection closes.
    pub(super) fn stop(&mut self) {
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

impl Writer {
    #[cfg(feature = "encryption")]
    /// Re-encrypts the file under `keying` ([`Msg::Rekey`](super::msg::Msg::Rekey)).
    pub(super) fn rekey(&mut self, keying: &store::Keying) -> Result<()> {
        let db = self.db.clone();
        let db = db.lock();
        let Some(conn) = db.conn.as_ref() else {
            return Err(Error::Closed);
        };
        self.checkpointer.rekey(conn, &self.path, keying)?;
        self.keying = keying.clone();
        Ok(())
    }

    pub(super) fn checkpoint(&mut self) {
        self.unchecked = Default::default();
        self.checkpointer.request();
    }

    /// Asks for a checkpoint when enough was committed since the last one, and empties
    /// the WAL when it grew past its limit anyway.
    pub(super) fn keep_wal_short(&mut self) {
        if self.unchecked.batches >= CHECKPOINT_BATCHES
            || self.unchecked.events >= CHECKPOINT_EVENTS
        {
            self.checkpoint();
        }
        self.bound_wal();
    }

    /// Empties the WAL when it grew past the limit (a `stat` per commit). When that does
    /// not succeed within [`WAL_WAIT`], the next attempt waits until the WAL doubled, so
    /// a reader that holds an old snapshot stalls the writer a few times, not at every
    /// commit.
    pub(super) fn bound_wal(&mut self) {
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
}
