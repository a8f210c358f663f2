//! A sink's reader thread: reads the events after the cursor ahead of the worker, so
//! reading overlaps the request in flight, and frees what the worker delivered.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::SeqCst;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, after, bounded, never, select};

use crate::error::{Error, Result};
use crate::event::{SeqNo, StoredEvent};
use crate::metrics::SinkCounters;
use crate::shared::Shared;
use crate::store::{self, Decoded, ReaderPool, seq_of};

use super::{PROGRESS_RETRY, spent};

/// The most events a reader reads per query (a batch's worth when batches are
/// larger); it holds one such read ready for the worker, beside what the worker holds.
/// Small, so a read ends within the request it overlaps ([`crate::guide::performance`]).
pub(super) const READ_AHEAD: usize = 100;

/// The most rows a sink's reader reads per query.
pub(super) fn read_limit(batch_size: usize) -> usize {
    READ_AHEAD.max(batch_size)
}

/// Batches of delivered events waiting for the reader to free them, at most.
pub(super) const GIVEN_BACK: usize = 4;

/// A sink's reader thread, seen from its worker: the rows it read, in order, in chunks
/// of up to [`READ_AHEAD`] (a short one when it read all there was, maybe none: then it
/// waits for the doorbell, and sends what it reads next). It ends when the
/// worker drops it, when the workers are stopped, or once it read nothing while the
/// spool closes (its channel then disconnects: nothing more will come).
pub(super) struct Reader {
    pub(super) rows: Receiver<Vec<Decoded>>,
    /// Delivered events, handed back to be freed where they were allocated ...
    back: Sender<Vec<StoredEvent>>,
    /// ... [`READ_AHEAD`] or more at a time, so one-event batches do not wake the
    /// reader for every request.
    used: Vec<StoredEvent>,
    /// Dropped to end the thread.
    bye: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    pub(super) fn start(read: ReadLoop) -> Result<Reader> {
        // One chunk waits for the worker while the next is read: memory stays bounded
        // whatever the backlog.
        let (rows_tx, rows) = bounded(1);
        let (back, back_rx) = bounded(GIVEN_BACK);
        let (bye, bye_rx) = bounded(0);
        let thread = thread::Builder::new()
            .name(format!("eventspool-read-{}", read.name))
            .spawn(move || read.run(&rows_tx, &back_rx, &bye_rx))
            .map_err(|e| Error::io("cannot spawn a sink's reader thread", e))?;
        Ok(Reader {
            rows,
            back,
            used: Vec::new(),
            bye: Some(bye),
            thread: Some(thread),
        })
    }

    /// Hands delivered events back to the reader to free (or frees them here when it
    /// has not taken the last ones yet): freeing on the thread that allocated them is
    /// cheaper, and off the worker's path between two requests.
    pub(super) fn give_back(&mut self, events: Vec<StoredEvent>) {
        if self.used.is_empty() {
            self.used = events;
        } else {
            self.used.extend(events);
        }
        if self.used.len() >= READ_AHEAD {
            let _ = self.back.try_send(std::mem::take(&mut self.used));
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        drop(self.bye.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The reader thread's state.
pub(super) struct ReadLoop {
    pub(super) name: String,
    pub(super) pool: ReaderPool,
    pub(super) spool_id: String,
    /// The last seq read.
    pub(super) after: SeqNo,
    pub(super) limit: usize,
    pub(super) doorbell: Receiver<()>,
    pub(super) stop: Receiver<()>,
    pub(super) draining: Arc<AtomicBool>,
    pub(super) counters: Arc<SinkCounters>,
    pub(super) shared: Arc<Shared>,
}

impl ReadLoop {
    /// Reads and sends chunks to `rows`, and frees what comes back on `back`, until
    /// `bye` disconnects (or see [`Reader`]).
    pub(super) fn run(
        mut self,
        rows: &Sender<Vec<Decoded>>,
        back: &Receiver<Vec<StoredEvent>>,
        bye: &Receiver<()>,
    ) {
        loop {
            // `close` commits what is in flight before it sets `draining`: a read that
            // starts after it is set and comes back short has read the last event.
            let draining = self.draining.load(SeqCst);
            let started = Instant::now();
            let read = self
                .pool
                .read(|conn| store::read_after(conn, &self.spool_id, self.after, self.limit));
            spent(&self.counters.read_ns, started);
            let chunk = match read {
                Ok(chunk) => chunk,
                Err(e) => {
                    log::error!("sink {}: cannot read the spool: {e}", self.name);
                    self.shared.report(&e);
                    if self.wait(back, bye, Some(PROGRESS_RETRY)) {
                        return;
                    }
                    continue;
                }
            };
            if chunk.is_empty() && draining {
                return;
            }
            let caught_up = chunk.len() < self.limit;
            if let Some(last) = chunk.last() {
                self.after = seq_of(last);
            }
            if !self.hand_over(rows, back, bye, chunk)
                || caught_up && (draining || self.wait(back, bye, None))
            {
                return;
            }
        }
    }

    /// Waits for the doorbell (rung after every commit with new events, and by
    /// `close` and `requeue_dead_letters`), or `timeout`. Returns true when told to end.
    pub(super) fn wait(
        &self,
        back: &Receiver<Vec<StoredEvent>>,
        bye: &Receiver<()>,
        timeout: Option<Duration>,
    ) -> bool {
        let timer = timeout.map_or_else(never, after);
        loop {
            select! {
                recv(self.doorbell) -> _ => return false,
                recv(timer) -> _ => return false,
                recv(back) -> events => if events.is_err() { return true },
                recv(self.stop) -> _ => return true,
                recv(bye) -> _ => return true,
            }
        }
    }

    /// Sends `chunk` to the worker once it has taken the last one, freeing what it
    /// gives back meanwhile. Returns false when told to end.
    pub(super) fn hand_over(
        &self,
        rows: &Sender<Vec<Decoded>>,
        back: &Receiver<Vec<StoredEvent>>,
        bye: &Receiver<()>,
        chunk: Vec<Decoded>,
    ) -> bool {
        loop {
            select! {
                send(rows, chunk) -> sent => return sent.is_ok(),
                recv(back) -> events => if events.is_err() { return false },
                recv(self.stop) -> _ => return false,
                recv(bye) -> _ => return false,
            }
        }
    }
}
