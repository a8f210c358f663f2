//! A sink's worker thread: takes batches from what its reader read, delivers them, and
//! records the outcome: the cursor moves on success; on failure it backs off and
//! retries; when retries run out, or on a permanent failure, the batch is dead-lettered.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, select};

use crate::error::{DeliveryError, Error, Result};
use crate::event::{SeqNo, StoredEvent};
use crate::metrics::SinkCounters;
use crate::shared::Shared;
use crate::sink::Sink;
use crate::sink::order::Order;
use crate::store::{self, Corrupt, Decoded, Op, ReaderPool, seq_of};
use crate::writer::{self, CursorCommits, Msg};

use super::attempt::{Retrier, Step, panicked};
use super::reader::{ReadLoop, Reader, read_limit};
use super::{Control, PROGRESS_RETRY, WorkerParts, caught, spent};

/// Events acknowledged by the sink whose cursor commit is put off: `from..=to`, whole
/// (a gap the caps made between two reads is committed apart: the acknowledgement
/// counts what the caps evicted of its range), over `requests` requests.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    from: SeqNo,
    to: SeqNo,
    requests: usize,
}

/// The events of one delivery: from the stream after the cursor (`ack_to` is the last
/// seq read, filtered ones included), or requeued dead letters (`ack_to` is `None`).
pub(super) struct Batch {
    events: Vec<StoredEvent>,
    ack_to: Option<SeqNo>,
    /// The first seq the batch covers (filtered events included).
    from: SeqNo,
}

impl Batch {
    /// Keeps the first `n` events here and returns the rest (`None`, and nothing split,
    /// unless both parts have events): each covers its own part of the seqs, filtered
    /// ones included.
    fn split_off(&mut self, n: usize) -> Option<Batch> {
        if n == 0 || n >= self.events.len() {
            return None;
        }
        let events = self.events.split_off(n);
        let last = self.events[n - 1].seq;
        let from = match self.ack_to {
            Some(_) => last + 1,
            None => events[0].seq,
        };
        let rest = Batch {
            events,
            ack_to: self.ack_to,
            from,
        };
        if self.ack_to.is_some() {
            self.ack_to = Some(last);
        }
        Some(rest)
    }

    /// `rest`, which came after this batch, joined back to it.
    fn append(&mut self, rest: Batch) {
        self.events.extend(rest.events);
        if self.ack_to.is_some() {
            self.ack_to = rest.ack_to;
        }
    }
}

pub(crate) struct Worker {
    pub(super) sink: Box<dyn Sink>,
    pub(super) name: String,
    pub(super) tx: Sender<Msg>,
    /// Its cursor commits (on the writer's connection, or through the writer).
    pub(super) commits: CursorCommits,
    pub(super) pool: ReaderPool,
    pub(super) spool_id: String,
    pub(super) shared: Arc<Shared>,
    pub(super) counters: Arc<SinkCounters>,
    pub(super) reader: Reader,
    pub(super) control: Control,
    pub(super) cursor: SeqNo,
    /// Rows after the cursor from the reader, not yet delivered.
    pub(super) ahead: VecDeque<Decoded>,
    /// The reader's last chunk was short: it had read all there was.
    pub(super) caught_up: bool,
    /// The reader has ended: caught up while the spool closes, or told to stop.
    pub(super) reader_ended: bool,
    /// A batch delivered again because its outcome could not be committed.
    pub(super) again: Option<Batch>,
    /// Acknowledged and not committed yet (see [`Sink::commit_every`]).
    pub(super) pending: Option<Pending>,
    pub(super) commit_every: usize,
    /// The requeue generation last checked for requeued dead letters.
    pub(super) requeues_seen: u64,
    pub(super) batch_size: usize,
    pub(super) retrier: Retrier,
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
        counters.concurrency_limit.store(1, Relaxed);
        let retrier = Retrier::new(&*sink, counters.clone(), parts.shared.clone());
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
            retrier,
            commit_every: sink.commit_every().max(1),
            sink,
            commits: CursorCommits::new(parts.db, parts.tx.clone(), parts.acks_directly),
            tx: parts.tx,
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
        })
    }

    pub(crate) fn run(mut self) {
        if self.sink.order() == Order::Total {
            self.work();
        } else {
            self.work_concurrently();
        }
        // What was acknowledged is committed before the worker goes (a crash would
        // replay it otherwise).
        if let Err(e) = self.commit() {
            log::error!("sink {}: cannot record progress at exit: {e}", self.name);
        }
    }

    pub(super) fn work(&mut self) {
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
                    if let Err(e) = self.commit() {
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

    pub(super) fn stopped(&self) -> bool {
        self.control.stop.try_recv() == Err(TryRecvError::Disconnected)
    }

    /// Waits `wait` unless told to stop; returns true when told to stop.
    pub(super) fn pause(&self, wait: Duration) -> bool {
        select! {
            recv(self.control.stop) -> _ => true,
            default(wait) => false,
        }
    }

    /// The next batch to deliver, from what is in hand; `None` when there is none.
    pub(super) fn next_batch(&mut self) -> Result<Option<Batch>> {
        if let Some(batch) = self.requeued_batch()? {
            return Ok(Some(batch));
        }
        self.stream_batch()
    }

    /// A batch delivered again because its outcome could not be committed, or of
    /// requeued dead letters (in seq order, before anything else); `None` when there is
    /// neither.
    pub(super) fn requeued_batch(&mut self) -> Result<Option<Batch>> {
        if let Some(batch) = self.again.take() {
            return Ok(Some(batch));
        }
        let generation = self.shared.requeues.load(Relaxed);
        while generation != self.requeues_seen {
            let started = Instant::now();
            let requeued = {
                (self.pool)
                    .read(|c| store::requeued(c, &self.spool_id, &self.name, self.batch_size))?
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
                        self.commit_op(corrupt.quarantine(&self.name, false))?;
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
        Ok(None)
    }

    /// The next batch from the stream after the cursor; `None` when there is none.
    fn stream_batch(&mut self) -> Result<Option<Batch>> {
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
    pub(super) fn top_up(&mut self) {
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
    pub(super) fn received(&mut self, rows: Option<Vec<Decoded>>) {
        match rows {
            Some(rows) => {
                self.caught_up = rows.len() < read_limit(self.batch_size);
                self.ahead.extend(rows);
            }
            None => self.reader_ended = true,
        }
    }

    /// Dead-letters a row that cannot be decoded, so it does not block the sink.
    pub(super) fn quarantine(&mut self, corrupt: &Corrupt) -> Result<()> {
        self.shared.report(&corrupt.error());
        let evicted = self.commit_op(corrupt.quarantine(&self.name, true))?;
        self.counted_twice(evicted);
        self.counters.dead_lettered.fetch_add(1, Relaxed);
        self.advance(corrupt.seq);
        Ok(())
    }

    /// Takes back from `evicted_unsent` events the caps evicted while this worker had
    /// them in hand: it counts them itself (delivered, dead-lettered or filtered).
    pub(super) fn counted_twice(&self, evicted: u64) {
        // Only this worker moves its cursor, so `evicted` was counted there; saturating
        // all the same: a counter must never wrap.
        let _ = (self.counters.evicted_unsent)
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(evicted)));
    }

    pub(super) fn advance(&mut self, seq: SeqNo) {
        self.cursor = seq;
        self.counters.cursor.store(seq, Relaxed);
    }

    /// Commits `op` through the writer, after what is pending (an op that moves the
    /// cursor must come after it).
    pub(super) fn commit_op(&mut self, op: Op) -> Result<u64> {
        self.commit()?;
        self.commit_through_writer(op)
    }

    /// Commits `op` through the writer: sends it and waits until it is committed.
    pub(super) fn commit_through_writer(&self, op: Op) -> Result<u64> {
        let started = Instant::now();
        let committed = writer::call(&self.tx, op, 0);
        spent(&self.counters.commit_ns, started);
        committed
    }

    /// Records that the sink acknowledged `from..=to` (the events after the cursor),
    /// committing it with what is pending once [`Sink::commit_every`] requests are.
    pub(super) fn acknowledge(&mut self, from: SeqNo, to: SeqNo) -> Result<()> {
        match &mut self.pending {
            Some(p) if from <= p.to + 1 => {
                p.to = p.to.max(to);
                p.requests += 1;
            }
            _ => {
                self.commit()?;
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
            self.commit()?;
        }
        Ok(())
    }

    /// Commits the cursor past what is pending (acknowledged, not yet committed).
    pub(super) fn commit(&mut self) -> Result<()> {
        let Some(p) = self.pending else {
            return Ok(());
        };
        let evicted = self.commit_cursor(p.from, p.to)?;
        self.pending = None;
        self.counted_twice(evicted);
        Ok(())
    }

    /// Commits the cursor past `from..=to`, on this thread (see [`Db::commit_cursor`])
    /// unless [`acks_directly`](super::acks_directly) says otherwise; returns how many
    /// of them the caps evicted first. Every [`COLLECT_AT`] events the writer is told: it
    /// counts the commits toward the next checkpoint and, once idle, deletes what every
    /// consumer has acknowledged (not while the sink works through a backlog: the
    /// deletion would take the CPU and the connection from it).
    pub(super) fn commit_cursor(&mut self, from: SeqNo, to: SeqNo) -> Result<u64> {
        let started = Instant::now();
        let committed = (self.commits).commit(&self.name, from, to, &self.shared.counters);
        spent(&self.counters.commit_ns, started);
        committed
    }

    /// Tells the writer of the cursor commits made on its connection.
    pub(super) fn tell_writer(&mut self) {
        self.commits.tell_writer();
    }

    /// Delivers one batch until it is acknowledged or dead-lettered. Returns false when
    /// told to stop first.
    pub(super) fn deliver(&mut self, mut batch: Batch) -> bool {
        self.counters
            .oldest_pending_ms
            .store(batch.events[0].timestamp_ms.max(1), Relaxed);
        let mut retries = 0u32;
        let mut rtt = Duration::ZERO;
        loop {
            let step = (self.retrier).attempt(&mut *self.sink, &batch.events, retries, &mut rtt);
            let named = match &step {
                Step::Delivered => false,
                Step::GiveUp(e) | Step::Wait(_, e) => self.deliver_head(&mut batch, e.delivered()),
            };
            match step {
                Step::Delivered => return self.settle(batch, None, retries),
                // The sink named the event that cannot go: it alone is dead-lettered.
                Step::GiveUp(error) if named && !error.is_retryable() => {
                    let rest = batch.split_off(1);
                    let dead = batch;
                    if !self.settle(dead, Some(error), retries) {
                        return false;
                    }
                    match (rest, self.again.take()) {
                        (None, again) => {
                            self.again = again;
                            return true;
                        }
                        // Its outcome was not committed: all of it again, in order.
                        (Some(rest), Some(mut again)) => {
                            again.append(rest);
                            self.again = Some(again);
                            return true;
                        }
                        (Some(rest), None) => {
                            batch = rest;
                            retries = 0;
                        }
                    }
                }
                Step::GiveUp(error) => return self.settle(batch, Some(error), retries),
                Step::Wait(wait, _) => {
                    retries += 1;
                    // What was acknowledged before is committed first: an outage can last.
                    if let Err(e) = self.commit() {
                        log::error!("sink {}: cannot record progress: {e}", self.name);
                        self.shared.report(&e);
                    }
                    if self.pause(wait) {
                        return false;
                    }
                }
            }
        }
    }

    /// The sink delivered the first `delivered` events of `batch` before it failed:
    /// acknowledges them and leaves the rest in `batch`. Returns whether the failure now
    /// concerns the batch's first event: false when the sink did not say, or when
    /// acknowledging failed (the batch then stays whole, delivered again at least once).
    fn deliver_head(&mut self, batch: &mut Batch, delivered: Option<usize>) -> bool {
        let Some(n) = delivered.map(|n| n.min(batch.events.len().saturating_sub(1))) else {
            return false;
        };
        let Some(rest) = batch.split_off(n) else {
            return true; // none delivered: the failure concerns the first
        };
        let acknowledged = match batch.ack_to {
            Some(to) => self.acknowledge(batch.from, to).map(|()| 0),
            None => self.commit_op(Op::Redelivered {
                sink: self.name.clone(),
                seqs: batch.events.iter().map(|e| e.seq).collect(),
            }),
        };
        match acknowledged {
            Ok(evicted) => {
                self.counted_twice(evicted);
                let c = &self.counters;
                c.delivered.fetch_add(n as u64, Relaxed);
                let again = caught(|| self.sink.take_already_delivered()).unwrap_or(0);
                c.already_delivered.fetch_add(again, Relaxed);
                if let Some(to) = batch.ack_to {
                    self.advance(to);
                }
                let head = std::mem::replace(batch, rest);
                self.reader.give_back(head.events);
                true
            }
            Err(e) => {
                log::error!("sink {}: cannot record progress: {e}", self.name);
                self.shared.report(&e);
                batch.append(rest);
                false
            }
        }
    }

    /// Asks the sink whether it takes `event_type`; a panic in it counts as yes (the
    /// event goes to `deliver`, which may refuse it), reported to the `on_error` hook.
    pub(super) fn accepts_guarded(&self, event_type: &str) -> bool {
        let sink = &self.sink;
        caught(|| sink.accepts(event_type)).unwrap_or_else(|panic| {
            panicked(&self.shared, "accepts", &panic);
            true
        })
    }

    /// Records the outcome of `batch`: acknowledged when `failure` is `None` (see
    /// [`ack`](Worker::ack)), else given up (through the writer). Returns false when
    /// told to stop while waiting after a failed commit.
    pub(super) fn settle(
        &mut self,
        batch: Batch,
        failure: Option<DeliveryError>,
        retries: u32,
    ) -> bool {
        if let Some(e) = &failure {
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
            (None, None) => self.commit_op(Op::Redelivered {
                sink: self.name.clone(),
                seqs: seqs(),
            }),
            (Some(e), ack_to) => self.commit_op(Op::DeadLetter {
                sink: self.name.clone(),
                seqs: seqs(),
                held: batch.events.clone(),
                attempts: retries + 1,
                status: e.status(),
                error: e.to_string(),
                ack: ack_to.map(|to| batch.from..=to),
            }),
        };
        match committed {
            Ok(evicted) => {
                self.counted_twice(evicted);
                // Counted once committed: a batch whose commit failed comes back.
                if failure.is_some() {
                    (self.counters.dead_lettered).fetch_add(batch.events.len() as u64, Relaxed);
                }
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
}
