//! One worker thread per sink: deliver what its reader thread read after the cursor,
//! and on success move the cursor; on failure back off and retry; when retries run
//! out, or on a permanent failure, dead-letter the batch and move on.
//!
//! The reader reads ahead on a thread of its own, so reading the next events overlaps
//! the request in flight (reading 100 events back costs about half as much as posting
//! them to a local receiver).
//!
//! The cursor is committed before the next batch is sent, so a crash replays at most
//! the batch that was in flight; with [`Sink::commit_every`] `n` > 1, after every `n`
//! batches of a backlog (kept in [`Pending`] meanwhile) and whenever the worker has
//! nothing more to send. The worker commits it itself, on the writer's
//! connection ([`Db::ack`]; through the writer under `Durability::Full`, see
//! [`acks_directly`]); the writer deletes what every consumer acknowledged when it is
//! idle or commits new events.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, after, bounded, never, select};

use crate::config::Durability;
use crate::error::{Error, Result};
use crate::event::{SeqNo, StoredEvent};
use crate::sink::{Backoff, DeliveryError, Sink};
use crate::spool::Shared;
use crate::store::{self, Corrupt, Decoded, Op, ReaderPool, seq_of};
use crate::writer::{self, COLLECT_AT, Db, Msg};

/// The most events a reader reads per query (a batch's worth when batches are
/// larger); it holds one such read ready for the worker, beside what the worker holds.
/// Small, so a read ends within the request it overlaps: on 2 vCPUs, draining in
/// batches of 100, reads of 512 on the reader thread slowed the requests beside them as
/// much as they saved (317k-343k events/s; the same reads on the worker's thread:
/// 315k-334k), reads of 100 did not (439k-482k).
const READ_AHEAD: usize = 100;
/// The most rows a sink's reader reads per query.
fn read_limit(batch_size: usize) -> usize {
    READ_AHEAD.max(batch_size)
}

/// Batches of delivered events waiting for the reader to free them, at most.
const GIVEN_BACK: usize = 4;
/// The wait before a worker tries again after it could not read the spool or record
/// its progress.
const PROGRESS_RETRY: Duration = Duration::from_secs(1);

/// An event a sink gave up on, with why.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The event as it was stored.
    pub event: StoredEvent,
    /// Delivery attempts made.
    pub attempts: u32,
    /// The last HTTP status, if there was a response.
    pub last_status: Option<u16>,
    /// The last error.
    pub last_error: String,
    /// When the sink gave up, in ms since the epoch.
    pub failed_at_ms: i64,
    /// Marked for redelivery by `requeue_dead_letters`, not yet delivered.
    pub requeued: bool,
}

/// A sink's live counters.
#[derive(Debug, Default)]
pub(crate) struct SinkCounters {
    pub(crate) name: String,
    delivered: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    failures_retryable: AtomicU64,
    failures_permanent: AtomicU64,
    dead_lettered: AtomicU64,
    pub(crate) evicted_unsent: AtomicU64,
    filtered: AtomicU64,
    cursor: AtomicU64,
    backoff_ms: AtomicU64,
    /// Timestamp of the oldest event being delivered; 0 when caught up.
    oldest_pending_ms: AtomicI64,
    /// Where the time goes, in ns: reading the file (mostly on the reader thread), in
    /// `deliver`, waiting for its progress to commit.
    read_ns: AtomicU64,
    deliver_ns: AtomicU64,
    commit_ns: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl SinkCounters {
    pub(crate) fn new(name: &str) -> Self {
        SinkCounters {
            name: name.to_owned(),
            ..SinkCounters::default()
        }
    }

    /// A snapshot; `first_seq..=last_seq` is what the file holds.
    pub(crate) fn snapshot(&self, first_seq: SeqNo, last_seq: SeqNo) -> SinkMetrics {
        let r = |c: &AtomicU64| c.load(Relaxed);
        let read_to = r(&self.cursor).max(first_seq.saturating_sub(1));
        let oldest = self.oldest_pending_ms.load(Relaxed);
        SinkMetrics {
            name: self.name.clone(),
            delivered: r(&self.delivered),
            attempts: r(&self.attempts),
            retries: r(&self.retries),
            failures_retryable: r(&self.failures_retryable),
            failures_permanent: r(&self.failures_permanent),
            dead_lettered: r(&self.dead_lettered),
            evicted_unsent: r(&self.evicted_unsent),
            filtered: r(&self.filtered),
            cursor: r(&self.cursor),
            lag: last_seq.saturating_sub(read_to),
            oldest_undelivered_age_ms: crate::time::age_ms(oldest),
            backoff_ms: r(&self.backoff_ms),
            read_us: r(&self.read_ns) / 1000,
            deliver_us: r(&self.deliver_ns) / 1000,
            commit_us: r(&self.commit_ns) / 1000,
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }
}

/// One sink's counters at one moment.
///
/// They balance: every event committed after the sink was registered is `delivered`,
/// `dead_lettered`, `evicted_unsent`, `filtered`, or still in `lag`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SinkMetrics {
    /// The sink's name.
    pub name: String,
    /// Events acknowledged by the sink.
    pub delivered: u64,
    /// `deliver` calls.
    pub attempts: u64,
    /// Attempts that repeated a failed one.
    pub retries: u64,
    /// Failures that were retried (or would have been).
    pub failures_retryable: u64,
    /// Failures no retry could fix.
    pub failures_permanent: u64,
    /// Events moved to the dead letters.
    pub dead_lettered: u64,
    /// Events evicted by the caps before the sink had them. One evicted while its
    /// batch was in flight counts as what became of that batch (delivered,
    /// dead-lettered or filtered), not here.
    pub evicted_unsent: u64,
    /// Events skipped because the sink does not accept their type.
    pub filtered: u64,
    /// The last seq the sink acknowledged (or skipped).
    pub cursor: SeqNo,
    /// Stored events the sink has not had yet.
    pub lag: u64,
    /// Age of the oldest event being delivered, in ms (0 when caught up).
    pub oldest_undelivered_age_ms: u64,
    /// The wait before the next retry, in ms (0 when not backing off).
    pub backoff_ms: u64,
    /// Time spent reading events from the file, in µs: by the sink's reader thread,
    /// beside the requests in flight (requeued dead letters by the worker).
    pub read_us: u64,
    /// Time spent in the sink's `deliver` (for a webhook: encoding the body and the
    /// HTTP exchange), in µs.
    pub deliver_us: u64,
    /// Time the worker spent committing its progress, in µs: its cursor (on the
    /// writer's connection, waiting for it while the writer commits or deletes), dead
    /// letters (through the writer). The next request waits for it, so that a crash
    /// replays at most the batch in flight (see [`Sink::commit_every`]).
    pub commit_us: u64,
    /// The last delivery error.
    pub last_error: Option<String>,
}

/// What the worker shares with `close`.
#[derive(Debug, Clone)]
pub(crate) struct Control {
    /// Disconnected when the workers must stop at once.
    pub(crate) stop: Receiver<()>,
    /// Set by `close`: exit once caught up.
    pub(crate) draining: Arc<AtomicBool>,
}

/// Events acknowledged by the sink whose cursor commit is put off: `from..=to`, whole
/// (a gap the caps made between two reads is committed apart: the acknowledgement
/// counts what the caps evicted of its range), over `requests` requests.
#[derive(Debug, Clone, Copy)]
struct Pending {
    from: SeqNo,
    to: SeqNo,
    requests: usize,
}

/// The events of one delivery: from the stream after the cursor (`ack_to` is the last
/// seq read, filtered ones included), or requeued dead letters (`ack_to` is `None`).
struct Batch {
    events: Vec<StoredEvent>,
    ack_to: Option<SeqNo>,
    /// The first seq the batch covers (filtered events included).
    from: SeqNo,
}

pub(crate) struct Worker {
    sink: Box<dyn Sink>,
    name: String,
    tx: Sender<Msg>,
    db: Arc<Db>,
    acks_directly: bool,
    /// Events and commits acknowledged on the writer's connection since the writer
    /// was last told ([`Msg::Acked`]).
    untold: (u64, u32),
    pool: ReaderPool,
    spool_id: String,
    shared: Arc<Shared>,
    counters: Arc<SinkCounters>,
    reader: Reader,
    control: Control,
    cursor: SeqNo,
    /// Rows after the cursor from the reader, not yet delivered.
    ahead: VecDeque<Decoded>,
    /// The reader's last chunk was short: it had read all there was.
    caught_up: bool,
    /// The reader has ended: caught up while the spool closes, or told to stop.
    reader_ended: bool,
    /// A batch delivered again because its outcome could not be committed.
    again: Option<Batch>,
    /// Acknowledged and not committed yet (see [`Sink::commit_every`]).
    pending: Option<Pending>,
    commit_every: usize,
    /// The requeue generation last checked for requeued dead letters.
    requeues_seen: u64,
    batch_size: usize,
    max_retries: Option<u32>,
    backoff: Backoff,
    rng: u64,
}

/// Whether sink workers commit their cursor themselves ([`Db::ack`]) rather than
/// through the writer: under [`Durability::Normal`] yes, sparing two thread wake-ups
/// per request. Under [`Durability::Full`] every commit waits for an `fsync`, and an
/// acknowledgement that joins the writer's next transaction shares its `fsync`, where
/// one of its own would take the connection from the writer for as long. Measured on
/// 2 vCPUs, a sink (one event per request) beside `append` callers, 5 s, 2 alternated
/// runs: under `Full` with 1 caller, through the writer 2.4k-2.8k appends/s and
/// 1.5k-1.6k deliveries/s, directly 2.0k-2.3k and 1.0k; with 8 callers 17.4k and
/// 1.5k-1.6k, directly 14.2k-14.6k and 0.9k-1.2k. Under `Normal`, with 8 callers:
/// through the writer 51k-78k and 4.8k, directly 56k-82k and 5.5k-6.5k.
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

impl Worker {
    /// A worker for `sink`, with its reader thread started.
    pub(crate) fn new(
        sink: Box<dyn Sink>,
        cursor: SeqNo,
        counters: Arc<SinkCounters>,
        doorbell: Receiver<()>,
        parts: WorkerParts,
    ) -> Result<Self> {
        counters.cursor.store(cursor, Relaxed);
        let mut seed = std::collections::hash_map::RandomState::new().build_hasher();
        seed.write(sink.name().as_bytes());
        let batch_size = sink.batch_size().max(1);
        let reader = Reader::start(ReadLoop {
            name: sink.name().to_owned(),
            pool: parts.pool.clone(),
            spool_id: parts.spool_id.clone(),
            after: cursor,
            limit: read_limit(batch_size),
            doorbell,
            stop: parts.control.stop.clone(),
            draining: parts.control.draining.clone(),
            counters: counters.clone(),
            shared: parts.shared.clone(),
        })?;
        Ok(Worker {
            name: sink.name().to_owned(),
            batch_size,
            max_retries: sink.max_retries(),
            backoff: sink.backoff(),
            commit_every: sink.commit_every().max(1),
            sink,
            tx: parts.tx,
            db: parts.db,
            acks_directly: parts.acks_directly,
            untold: (0, 0),
            pool: parts.pool,
            spool_id: parts.spool_id,
            shared: parts.shared,
            counters,
            reader,
            control: parts.control,
            cursor,
            ahead: VecDeque::new(),
            caught_up: false,
            reader_ended: false,
            again: None,
            pending: None,
            requeues_seen: u64::MAX, // look for requeued dead letters at start

            rng: seed.finish() | 1,
        })
    }

    pub(crate) fn run(mut self) {
        self.work();
        // What was acknowledged is committed before the worker goes (a crash would
        // replay it otherwise).
        if let Err(e) = self.flush() {
            log::error!("sink {}: cannot record progress at exit: {e}", self.name);
        }
    }

    fn work(&mut self) {
        loop {
            if self.stopped() {
                return;
            }
            let batch = match self.next_batch() {
                Ok(batch) => batch,
                Err(e) => {
                    log::error!("sink {}: cannot take its next batch: {e}", self.name);
                    self.shared.report(&e);
                    if self.pause(PROGRESS_RETRY) {
                        return;
                    }
                    continue;
                }
            };
            match batch {
                Some(batch) => {
                    if !self.deliver(batch) {
                        return;
                    }
                }
                None => {
                    // Nothing more in hand: what was acknowledged is committed now.
                    if let Err(e) = self.flush() {
                        log::error!("sink {}: cannot record progress: {e}", self.name);
                        self.shared.report(&e);
                        if self.pause(PROGRESS_RETRY) {
                            return;
                        }
                        continue;
                    }
                    if self.caught_up || self.reader_ended {
                        self.counters.oldest_pending_ms.store(0, Relaxed);
                        self.tell_writer();
                        if self.reader_ended {
                            return;
                        }
                    }
                    select! {
                        recv(self.reader.rows) -> rows => self.received(rows.ok()),
                        recv(self.control.stop) -> _ => return,
                    }
                }
            }
        }
    }

    fn stopped(&self) -> bool {
        self.control.stop.try_recv() == Err(TryRecvError::Disconnected)
    }

    /// Waits `wait` unless told to stop; returns true when told to stop.
    fn pause(&self, wait: Duration) -> bool {
        select! {
            recv(self.control.stop) -> _ => true,
            default(wait) => false,
        }
    }

    /// The next batch to deliver, from what is in hand; `None` when there is none.
    fn next_batch(&mut self) -> Result<Option<Batch>> {
        if let Some(batch) = self.again.take() {
            return Ok(Some(batch));
        }
        let generation = self.shared.requeues.load(Relaxed);
        while generation != self.requeues_seen {
            let started = Instant::now();
            let requeued = {
                let conn = self.pool.get()?;
                store::requeued(&conn, &self.spool_id, &self.name, self.batch_size)?
            };
            spent(&self.counters.read_ns, started);
            if requeued.is_empty() {
                self.requeues_seen = generation;
            }
            let mut events = Vec::with_capacity(requeued.len());
            for row in requeued {
                match row {
                    Ok(event) => events.push(event),
                    // A damaged dead letter cannot be delivered: it stays dead.
                    Err(corrupt) => {
                        self.commit(corrupt.quarantine(&self.name, false))?;
                    }
                }
            }
            if !events.is_empty() {
                let from = events[0].seq;
                return Ok(Some(Batch {
                    events,
                    ack_to: None,
                    from,
                }));
            }
        }
        loop {
            // What the caps evicted since it was read ahead is not delivered.
            let first_stored = self.shared.counters.first_seq();
            while self.ahead.front().is_some_and(|r| seq_of(r) < first_stored) {
                self.ahead.pop_front();
            }
            self.top_up();
            let mut events = Vec::new();
            let (mut first, mut last) = (None, None);
            while events.len() < self.batch_size {
                // A damaged row ends the batch; on its own it is quarantined.
                if events.is_empty()
                    && let Some(Err(corrupt)) = self.ahead.front()
                {
                    let corrupt = corrupt.clone();
                    self.quarantine(&corrupt)?;
                    self.ahead.pop_front();
                    (first, last) = (None, None);
                    continue;
                }
                // A gap (the caps evicted between two reads) ends the batch too: a batch
                // covers `from..=ack_to` whole, which is what its acknowledgement counts.
                if let (Some(l), Some(next)) = (last, self.ahead.front())
                    && seq_of(next) != l + 1
                {
                    break;
                }
                match self.ahead.pop_front() {
                    Some(Ok(event)) => {
                        first = first.or(Some(event.seq));
                        last = Some(event.seq);
                        if self.accepts_guarded(&event.event_type) {
                            events.push(event);
                        } else {
                            self.counters.filtered.fetch_add(1, Relaxed);
                        }
                    }
                    Some(Err(corrupt)) => {
                        self.ahead.push_front(Err(corrupt));
                        break;
                    }
                    None => break,
                }
            }
            let (Some(first), Some(last)) = (first, last) else {
                return Ok(None);
            };
            if !events.is_empty() {
                return Ok(Some(Batch {
                    events,
                    ack_to: Some(last),
                    from: first,
                }));
            }
            self.acknowledge(first, last)?;
            self.advance(last);
        }
    }

    /// Tops up the rows in hand to a whole batch with what the reader has read. While
    /// it is reading more (its last chunk was full) it is waited for, so a backlog goes
    /// out in whole batches; once it had read all there was, a batch goes out with what
    /// there is.
    fn top_up(&mut self) {
        while self.ahead.len() < self.batch_size && !self.reader_ended {
            let rows = if self.caught_up {
                match self.reader.rows.try_recv() {
                    Ok(rows) => Some(rows),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => None,
                }
            } else {
                select! {
                    recv(self.reader.rows) -> rows => rows.ok(),
                    recv(self.control.stop) -> _ => break,
                }
            };
            self.received(rows);
        }
    }

    /// Takes a chunk from the reader (`None` when it has ended).
    fn received(&mut self, rows: Option<Vec<Decoded>>) {
        match rows {
            Some(rows) => {
                self.caught_up = rows.len() < read_limit(self.batch_size);
                self.ahead.extend(rows);
            }
            None => self.reader_ended = true,
        }
    }

    /// Dead-letters a row that cannot be decoded, so it does not block the sink.
    fn quarantine(&mut self, corrupt: &Corrupt) -> Result<()> {
        log::error!(
            "sink {}: quarantining seq {}: {}",
            self.name,
            corrupt.seq,
            corrupt.reason
        );
        self.shared.report(&corrupt.error());
        let evicted = self.commit(corrupt.quarantine(&self.name, true))?;
        self.counted_twice(evicted);
        self.counters.dead_lettered.fetch_add(1, Relaxed);
        self.advance(corrupt.seq);
        Ok(())
    }

    /// Takes back from `evicted_unsent` events the caps evicted while this worker had
    /// them in hand: it counts them itself (delivered, dead-lettered or filtered).
    fn counted_twice(&self, evicted: u64) {
        // Only this worker moves its cursor, so `evicted` was counted there; saturating
        // all the same: a counter must never wrap.
        let _ = (self.counters.evicted_unsent)
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(evicted)));
    }

    fn advance(&mut self, seq: SeqNo) {
        self.cursor = seq;
        self.counters.cursor.store(seq, Relaxed);
    }

    /// Sends `op` to the writer, after committing what is pending (an op that moves
    /// the cursor must come after it).
    fn commit(&mut self, op: Op) -> Result<u64> {
        self.flush()?;
        self.send(op)
    }

    /// Sends `op` to the writer and waits until it is committed.
    fn send(&self, op: Op) -> Result<u64> {
        let started = Instant::now();
        let committed = writer::call(&self.tx, op, 0);
        spent(&self.counters.commit_ns, started);
        committed
    }

    /// Records that the sink acknowledged `from..=to` (the events after the cursor),
    /// committing it with what is pending once [`Sink::commit_every`] requests are.
    fn acknowledge(&mut self, from: SeqNo, to: SeqNo) -> Result<()> {
        match &mut self.pending {
            Some(p) if from <= p.to + 1 => {
                p.to = p.to.max(to);
                p.requests += 1;
            }
            _ => {
                self.flush()?;
                self.pending = Some(Pending {
                    from,
                    to,
                    requests: 1,
                });
            }
        }
        if self
            .pending
            .is_some_and(|p| p.requests >= self.commit_every)
        {
            self.flush()?;
        }
        Ok(())
    }

    /// Commits what is pending, if anything.
    fn flush(&mut self) -> Result<()> {
        let Some(p) = self.pending else {
            return Ok(());
        };
        let evicted = self.ack(p.from, p.to)?;
        self.pending = None;
        self.counted_twice(evicted);
        Ok(())
    }

    /// Acknowledges `from..=to`, on this thread (see [`Db::ack`]) unless
    /// [`acks_directly`] says otherwise; returns how many of them the caps evicted
    /// first. Every [`COLLECT_AT`] events the writer is told: it
    /// counts the commits toward the next checkpoint and, once idle, deletes what every
    /// consumer has acknowledged (not while the sink works through a backlog: the
    /// deletion would take the CPU and the connection from it).
    fn ack(&mut self, from: SeqNo, to: SeqNo) -> Result<u64> {
        if !self.acks_directly {
            return self.send(Op::Ack {
                consumer: self.name.clone(),
                seq: to,
                from: Some(from),
            });
        }
        let started = Instant::now();
        let acked = self.db.ack(&self.name, to, from, &self.shared.counters);
        spent(&self.counters.commit_ns, started);
        let evicted = acked?;
        self.untold.0 += to + 1 - from;
        self.untold.1 += 1;
        if self.untold.0 >= COLLECT_AT {
            self.tell_writer();
        }
        Ok(evicted)
    }

    /// Tells the writer of the acknowledgements committed since it was last told. When
    /// its channel is full it is busy committing, which deletes them as well.
    fn tell_writer(&mut self) {
        if self.untold.1 > 0 {
            let _ = self.tx.try_send(Msg::Acked(self.untold.1));
            self.untold = (0, 0);
        }
    }

    /// Delivers one batch until it is acknowledged or dead-lettered. Returns false when
    /// told to stop first.
    fn deliver(&mut self, batch: Batch) -> bool {
        let c = self.counters.clone();
        c.oldest_pending_ms
            .store(batch.events[0].timestamp_ms.max(1), Relaxed);
        let mut retries = 0u32;
        loop {
            c.attempts.fetch_add(1, Relaxed);
            let started = Instant::now();
            let delivered = self.deliver_guarded(&batch.events);
            spent(&c.deliver_ns, started);
            let error = match delivered {
                Ok(()) => {
                    c.backoff_ms.store(0, Relaxed);
                    c.delivered.fetch_add(batch.events.len() as u64, Relaxed);
                    return self.settle(batch, None, retries);
                }
                Err(e) => e,
            };
            if error.is_retryable() {
                c.failures_retryable.fetch_add(1, Relaxed);
            } else {
                c.failures_permanent.fetch_add(1, Relaxed);
            }
            *c.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
            let give_up =
                !error.is_retryable() || self.max_retries.is_some_and(|max| retries >= max);
            if give_up {
                c.backoff_ms.store(0, Relaxed);
                return self.settle(batch, Some(error), retries);
            }
            retries += 1;
            c.retries.fetch_add(1, Relaxed);
            let drawn = self.jitter(self.backoff.ceiling(retries));
            let wait = self.backoff.wait(drawn, error.retry_after_hint());
            c.backoff_ms.store(crate::time::millis(wait), Relaxed);
            log::warn!(
                "sink {}: delivery of seq {}.. failed (retry {retries} in {wait:?}): {error}",
                self.name,
                batch.events[0].seq
            );
            // What was acknowledged before is committed first: an outage can last.
            if let Err(e) = self.flush() {
                log::error!("sink {}: cannot record progress: {e}", self.name);
                self.shared.report(&e);
            }
            if self.pause(wait) {
                return false;
            }
        }
    }

    /// Calls the sink; a panic in it is a failed attempt (retryable, so a sink that
    /// panics on one event dead-letters that event and goes on), not the end of the
    /// worker, and is reported to the `on_error` hook.
    fn deliver_guarded(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
        let sink = &mut self.sink;
        match caught(|| sink.deliver(events)) {
            Ok(delivered) => delivered,
            Err(panic) => Err(self.panicked("deliver", &panic)),
        }
    }

    /// Asks the sink whether it takes `event_type`; a panic in it counts as yes (the
    /// event goes to `deliver`, which may refuse it), reported to the `on_error` hook.
    fn accepts_guarded(&self, event_type: &str) -> bool {
        let sink = &self.sink;
        caught(|| sink.accepts(event_type)).unwrap_or_else(|panic| {
            self.panicked("accepts", &panic);
            true
        })
    }

    /// Reports a panic in the sink's `method`; returns it as a retryable error.
    fn panicked(&self, method: &str, panic: &str) -> DeliveryError {
        let error = DeliveryError::retryable(format!("the sink panicked in {method}: {panic}"));
        self.shared.report(&Error::Delivery {
            delivered: 0,
            source: Box::new(error.clone()),
        });
        error
    }

    /// Records the outcome of `batch`: acknowledged when `failure` is `None` (see
    /// [`ack`](Worker::ack)), else given up (through the writer). Returns false when
    /// told to stop while waiting after a failed commit.
    fn settle(&mut self, batch: Batch, failure: Option<DeliveryError>, retries: u32) -> bool {
        if let Some(e) = &failure {
            self.counters
                .dead_lettered
                .fetch_add(batch.events.len() as u64, Relaxed);
            log::error!(
                "sink {}: gave up on seq {}..={} after {} attempts: {e}",
                self.name,
                batch.events[0].seq,
                batch.events[batch.events.len() - 1].seq,
                retries + 1
            );
            self.shared.report(&Error::Delivery {
                delivered: 0,
                source: Box::new(e.clone()),
            });
        }
        let seqs = || batch.events.iter().map(|e| e.seq).collect::<Vec<_>>();
        let committed = match (&failure, batch.ack_to) {
            (None, Some(to)) => self.acknowledge(batch.from, to).map(|()| 0),
            (None, None) => self.commit(Op::Redelivered {
                sink: self.name.clone(),
                seqs: seqs(),
            }),
            (Some(e), ack_to) => self.commit(Op::DeadLetter {
                sink: self.name.clone(),
                seqs: seqs(),
                held: batch.events.clone(),
                attempts: retries + 1,
                status: e.status(),
                error: e.to_string(),
                ack: ack_to.map(|to| (batch.from, to)),
            }),
        };
        match committed {
            Ok(evicted) => {
                self.counted_twice(evicted);
                if let Some(seq) = batch.ack_to {
                    self.advance(seq);
                }
                self.reader.give_back(batch.events);
                true
            }
            // The cursor did not move: the batch is delivered again (at least once)
            // before anything after it; after a pause, so a writer that cannot commit
            // (full disk, file gone) is not raced.
            Err(e) => {
                log::error!("sink {}: cannot record progress: {e}", self.name);
                self.shared.report(&e);
                self.again = Some(batch);
                !self.pause(PROGRESS_RETRY)
            }
        }
    }

    /// A random duration in `[0, ceiling]` (full jitter), from a per-worker xorshift.
    fn jitter(&mut self, ceiling: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(self.rng % nanos.saturating_add(1))
    }
}

/// A sink's reader thread, seen from its worker: the rows it read, in order, in chunks
/// of up to [`READ_AHEAD`] (a short one when it read all there was, maybe none: then it
/// waits for the doorbell, and sends what it reads next). It ends when the
/// worker drops it, when the workers are stopped, or once it read nothing while the
/// spool closes (its channel then disconnects: nothing more will come).
struct Reader {
    rows: Receiver<Vec<Decoded>>,
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
    fn start(read: ReadLoop) -> Result<Reader> {
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
    /// has not taken the last ones yet). Freeing on the thread that allocated them is
    /// cheaper, and off the worker's path between two requests: 100 events freed by the
    /// worker took it 20-51 µs.
    fn give_back(&mut self, events: Vec<StoredEvent>) {
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
struct ReadLoop {
    name: String,
    pool: ReaderPool,
    spool_id: String,
    /// The last seq read.
    after: SeqNo,
    limit: usize,
    doorbell: Receiver<()>,
    stop: Receiver<()>,
    draining: Arc<AtomicBool>,
    counters: Arc<SinkCounters>,
    shared: Arc<Shared>,
}

impl ReadLoop {
    /// Reads and sends chunks to `rows`, and frees what comes back on `back`, until
    /// `bye` disconnects (or see [`Reader`]).
    fn run(
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
                .get()
                .and_then(|conn| store::read_after(&conn, &self.spool_id, self.after, self.limit));
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
    fn wait(
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
    fn hand_over(
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
