//! One commit: the transaction that inserts a batch, applies the consumer operations,
//! deletes what every consumer acknowledged and evicts the oldest beyond the caps; then
//! the waiters are answered.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::Instant;

use rusqlite::Connection;

use crate::error::{Error, Result, StorageError};
use crate::event::{Event, SeqNo};
use crate::reply::{Reply, Wakeups};
use crate::store::{self, DeadLetterBook, Op};

use super::{RETRY_MAX, RETRY_MIN, Retry, Writer};

/// Acknowledged events are deleted once this many are waiting (in transactions of their
/// own, after the commit that made them so), else when the writer is idle: deleting
/// after every single acknowledgement would cost a transaction per delivery.
pub(crate) const COLLECT_AT: u64 = 512;

/// At most this many are deleted per transaction, and more only while no message
/// waits: a sink's next acknowledgement waits for one short deletion, not for the
/// whole backlog.
pub(super) const COLLECT_CHUNK: u64 = 1024;

/// What is stored after a commit.
pub(super) struct Kept {
    pub(super) first_seq: SeqNo,
    pub(super) stored_bytes: u64,
    /// The dead letters after the transaction's operations.
    pub(super) dead: DeadLetterBook,
    /// Events evicted by the caps (not those every consumer had acknowledged).
    pub(super) evicted: u64,
    /// What each operation yielded, in order.
    pub(super) results: Vec<u64>,
    /// Per consumer, evicted events it had not acknowledged.
    pub(super) unsent: Vec<Unsent>,
    /// Events every consumer acknowledged are left to delete when the writer is idle
    /// (or, after a [`COLLECT_CHUNK`], at the next chance) ...
    pub(super) collectable: bool,
    /// ... or right after the waiters were answered: [`COLLECT_AT`] or more wait.
    pub(super) collect_due: bool,
}

/// One transaction: insert the batch, apply the consumer operations, delete what every
/// consumer acknowledged (when `collect`, or to stay within the caps; else it is marked
/// for later), evict the oldest beyond the caps, save the state.
pub(super) fn commit_batch(
    conn: &mut Connection,
    batch: &[Event],
    first: SeqNo,
    ops: &[(Op, Reply<Result<u64>>)],
    mut kept: Kept,
    caps: Caps,
    collect: bool,
) -> rusqlite::Result<Kept> {
    let Caps {
        max_events,
        max_bytes,
    } = caps;
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
                kept.stored_bytes -= store::delete_before(&tx, to)?.bytes;
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
        let bytes = store::bytes_before(&tx, evict_to)?.bytes;
        if kept.stored_bytes - bytes > max_bytes {
            evict_to =
                store::keep_from_for_bytes(&tx, evict_to, kept.stored_bytes - bytes - max_bytes)?;
        }
    }
    if evict_to > kept.first_seq {
        for behind in store::consumers_behind(&tx, evict_to)? {
            kept.unsent.push(Unsent {
                events: evict_to - (behind.acked + 1).max(kept.first_seq),
                consumer: behind.consumer,
            });
        }
        let deleted = store::delete_before(&tx, evict_to)?;
        kept.evicted = deleted.count;
        kept.stored_bytes -= deleted.bytes;
        kept.first_seq = evict_to;
    }
    if !batch.is_empty() || kept.first_seq != stored_first {
        store::save_state(&tx, end - 1, kept.stored_bytes)?;
    }
    tx.commit()?;
    Ok(kept)
}

impl Writer {
    pub(super) fn commit(&mut self) {
        self.commit_with(false);
    }

    /// Deletes what every consumer acknowledged (and nothing else), [`COLLECT_CHUNK`]
    /// events per transaction, until done or a message or a consumer
    /// ([`Db::commit_cursor`]) waits.
    pub(super) fn collect(&mut self) {
        while std::mem::take(&mut self.gc_pending) {
            self.commit_with(true);
            if !self.rx.is_empty() || self.db.waiting.load(SeqCst) > 0 {
                break;
            }
        }
    }

    pub(super) fn commit_with(&mut self, collect: bool) {
        let db = self.db.clone();
        let mut db = db.lock();
        if let Some(gone) = self.file_gone(&mut db) {
            drop(db);
            let path = self.path.clone();
            self.failed(&|| gone.error(&path));
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
        let caps = Caps {
            max_events: self.max_events,
            max_bytes: self.max_bytes,
        };
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
                let e = StorageError::new(e);
                self.failed(&|| Error::Commit(e.clone()));
            }
        }
    }

    /// Records what a commit of `n` events left stored, in the writer and in the
    /// counters, while the connection is still locked (see [`Db::commit_cursor`]). Returns the
    /// first seq given.
    pub(super) fn stored(&mut self, n: u64, kept: &Kept) -> SeqNo {
        let first = self.next_seq;
        self.next_seq += n;
        self.first_seq = kept.first_seq;
        self.stored_bytes = kept.stored_bytes;
        let c = &self.shared.counters;
        c.first_stored.store(self.first_seq, Relaxed);
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
        for unsent in &kept.unsent {
            self.shared.evicted_unsent(&unsent.consumer, unsent.events);
        }
        first
    }

    pub(super) fn committed(&mut self, n: u64, first: SeqNo, kept: Kept) {
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

        self.unchecked.batches += 1;
        self.unchecked.events += n;
        self.keep_wal_short();
        // In a transaction of its own, once everyone is answered: a sink's next request
        // goes out while the deletion runs, instead of after it.
        if kept.collect_due {
            self.collect();
        }
    }

    /// A commit failed with what `error` makes (one for each caller told).
    pub(super) fn failed(&mut self, error: &dyn Fn() -> Error) {
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
                .map_or(RETRY_MIN, |r| (r.delay * 2).min(RETRY_MAX));
            self.retry = Some(Retry {
                at: Instant::now() + delay,
                delay,
            });
            log::error!(
                "spool commit failed, keeping {} events and retrying in {delay:?}: {e}",
                self.batch.len()
            );
            self.shared.report(&e);
        }
    }
}

/// The caps on stored events.
#[derive(Debug, Clone, Copy)]
pub(super) struct Caps {
    pub(super) max_events: u64,
    pub(super) max_bytes: u64,
}

/// Events the caps evicted before `consumer` had them.
#[derive(Debug)]
pub(super) struct Unsent {
    pub(super) consumer: String,
    pub(super) events: u64,
}
