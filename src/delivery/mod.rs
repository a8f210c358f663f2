//! One worker thread per sink: deliver what its reader thread read after the cursor,
//! and on success move the cursor; on failure back off and retry; when retries run
//! out, or on a permanent failure, dead-letter the batch and move on.
//!
//! The reader reads ahead on a thread of its own, so reading the next events overlaps
//! the request in flight.
//!
//! The cursor is committed before the next batch is sent, so a crash replays at most
//! the batch that was in flight; with [`Sink::commit_every`] `n` > 1, after every `n`
//! batches of a backlog (kept in [`Pending`] meanwhile) and whenever the worker has
//! nothing more to send. The worker commits it itself, on the writer's
//! connection ([`Db::commit_cursor`]; through the writer under `Durability::Full`, see
//! [`acks_directly`]); the writer deletes what every consumer acknowledged when it is
//! idle or commits new events.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::config::Durability;
use crate::shared::Shared;
use crate::store::ReaderPool;
use crate::writer::{Db, Msg};

mod attempt;
mod dispatch;
mod limit;
mod reader;
mod worker;

pub(crate) use worker::Worker;

/// The wait before a worker tries again after it could not read the spool or record
/// its progress.
const PROGRESS_RETRY: Duration = Duration::from_secs(1);

/// What the worker shares with `close`.
#[derive(Debug, Clone)]
pub(crate) struct Control {
    /// Disconnected when the workers must stop at once.
    pub(crate) stop: Receiver<()>,
    /// Set by `close`: exit once caught up.
    pub(crate) draining: Arc<AtomicBool>,
}

/// Whether sink workers commit their cursor themselves ([`Db::commit_cursor`]) rather than
/// through the writer: under [`Durability::Normal`] yes, sparing two thread wake-ups
/// per request. Under [`Durability::Full`] every commit waits for an `fsync`, and an
/// acknowledgement that joins the writer's next transaction shares its `fsync`
/// ([`crate::guide::performance`]).
pub(crate) fn acks_directly(durability: Durability) -> bool {
    durability == Durability::Normal
}

/// Everything a worker needs from the spool.
pub(crate) struct WorkerParts {
    pub(crate) tx: Sender<Msg>,
    pub(crate) db: Arc<Db>,
    /// See [`acks_directly`].
    pub(crate) acks_directly: bool,
    pub(crate) pool: ReaderPool,
    pub(crate) spool_id: String,
    pub(crate) shared: Arc<Shared>,
    pub(crate) control: Control,
}

/// Adds the time since `started` to `counter` (in ns).
fn spent(counter: &AtomicU64, started: Instant) {
    counter.fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
}

/// Runs `f`, turning a panic into its message: a bug in a user's sink must not end the
/// worker thread.
fn caught<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into())
    })
}
