//! What the handle offers consumers: consumer groups (subscribe, seek, ack, remove),
//! `drain_to`, and the dead letters of sinks.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::event::SeqNo;
use crate::shared::{Shared, SubState};
use crate::sink::Sink;
use crate::store::{
    self, ConsumerInfo, ConsumerKind, DeadLetter, Op, ReaderPool, SeekPosition, StartAt,
};
use crate::subscribe::{Reservation, SubParts, Subscription};
use crate::writer::CursorCommits;

use super::Spool;

impl Spool {
    /// Opens a [`Subscription`] for the consumer `name`, registering it durably if new
    /// (it then holds back the deletion of events it has not acknowledged; the caps
    /// still apply). `position` other than `LastAcknowledged` first moves the
    /// consumer's position exactly as [`seek`](Spool::seek) does.
    ///
    /// # Errors
    /// [`Error::Consumer`] if the name is empty, belongs to a sink, already has an open
    /// subscription, or `After(n)` is past the last event; [`Error::Closed`].
    pub fn subscribe(&self, name: &str, position: SeekPosition) -> Result<Subscription> {
        self.check_consumer(name)?;
        self.check_seek(name, position)?;
        let inner = &*self.inner;
        // Held from the checks to the commit: nothing else may use the name meanwhile.
        let reserved = Reservation::take(&inner.shared, name)?;
        let cursor = inner.call(Op::Seek {
            consumer: name.to_owned(),
            to: position,
        })?;
        Ok(Subscription::new(
            reserved,
            cursor,
            SubParts {
                tx: inner.tx.clone(),
                pool: inner.pool.clone(),
                spool_id: inner.spool_id.clone(),
                shared: inner.shared.clone(),
            },
        ))
    }

    /// Moves the consumer `name` to `position` (see [`SeekPosition`]; it may move back
    /// to replay) and returns its new position, the last `seq` counted as acknowledged.
    /// The next `subscribe(name, LastAcknowledged)` reads the event after it. A name
    /// not yet known is registered as a subscriber: from then on it holds back the
    /// deletion of what it has not acknowledged (the caps still apply), until
    /// [`remove_consumer`](Spool::remove_consumer); [`consumers`](Spool::consumers) lists it.
    ///
    /// ```
    /// use eventspool::{Event, SeekPosition, Spool};
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let spool = Spool::open(dir.path().join("events.db"))?;
    /// spool.append_batch((1..=5).map(|n| Event::new("n", n)).collect())?;
    /// // Skip to what follows seq 3 (a new name is registered on the way).
    /// assert_eq!(spool.seek("report", SeekPosition::After(3))?, 3);
    /// let mut sub = spool.subscribe("report", SeekPosition::LastAcknowledged)?;
    /// assert_eq!(sub.try_next()?.map(|e| e.seq), Some(4));
    /// drop(sub);
    /// // Back to the start, to replay everything stored.
    /// assert_eq!(spool.seek("report", SeekPosition::Beginning)?, 0);
    /// # Ok::<(), eventspool::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Consumer`] if `name` has an open subscription (whose reads would not
    /// follow), belongs to a sink, or `After(n)` is past the last event;
    /// [`Error::Closed`].
    pub fn seek(&self, name: &str, position: SeekPosition) -> Result<SeqNo> {
        self.check_consumer(name)?;
        self.check_seek(name, position)?;
        self.inner.call(Op::Seek {
            consumer: name.to_owned(),
            to: position,
        })
    }

    /// Acknowledges everything up to `seq` for the consumer `name` (as
    /// [`Subscription::ack`] does, for a consumer read elsewhere).
    ///
    /// # Errors
    /// [`Error::Consumer`] if the consumer is unknown, `seq` is before its position, or
    /// after what its open subscription has read (without one: after the last event);
    /// [`Error::Closed`]; [`Error::Commit`].
    pub fn ack(&self, name: &str, seq: SeqNo) -> Result<()> {
        self.check_name(name)?;
        let state = self.subscription_state(name);
        match &state {
            Some(state) => state.check_ack(name, seq)?,
            None => {
                let Some(position) = self.inner.pool.read(|c| store::cursor(c, name))? else {
                    return Err(Error::Consumer(format!("{name}: no such consumer")));
                };
                let last = self.last_seq()?;
                if seq < position || seq > last {
                    return Err(Error::Consumer(format!(
                        "{name}: ack of seq {seq} is outside {position}..={last}"
                    )));
                }
            }
        }
        self.inner.call(Op::Ack {
            consumer: name.to_owned(),
            seq,
            from: None,
        })?;
        if let Some(state) = state {
            state.acked(seq);
        }
        Ok(())
    }

    /// Every registered consumer (subscribers, sinks, `drain_to` sinks) with its
    /// position and lag.
    ///
    /// # Errors
    /// As [`len`](Spool::len).
    pub fn consumers(&self) -> Result<Vec<ConsumerInfo>> {
        consumers_of(&self.inner.shared, &self.inner.pool)
    }

    /// Unregisters the consumer `name`, releasing the events it held back. Returns
    /// false if there was no such consumer.
    ///
    /// # Errors
    /// [`Error::Consumer`] if it has an open subscription or is a sink of this spool;
    /// [`Error::Closed`].
    pub fn remove_consumer(&self, name: &str) -> Result<bool> {
        self.check_consumer(name)?;
        Ok(self.inner.call(Op::Remove {
            consumer: name.to_owned(),
        })? > 0)
    }

    /// Replays stored events through `sink` on the caller's thread, in `seq` order,
    /// from its cursor (named by [`Sink::name`]) to the newest event, advancing the
    /// cursor durably past every batch the sink acknowledged. A name seen for the
    /// first time starts with the oldest stored event. The cursor is a consumer like
    /// any other: events it has not acknowledged are kept (the caps still apply).
    ///
    /// Returns how many events were delivered.
    ///
    /// ```
    /// use eventspool::{DeliveryError, Event, Sink, Spool, StoredEvent};
    ///
    /// struct Collect(Vec<u64>);
    /// impl Sink for Collect {
    ///     fn name(&self) -> &str { "collect" }
    ///     fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
    ///         self.0.extend(events.iter().map(|e| e.seq));
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let spool = Spool::open(dir.path().join("events.db"))?;
    /// spool.append_batch(vec![Event::new("a", 1), Event::new("b", 2)])?;
    /// let mut sink = Collect(Vec::new());
    /// assert_eq!(spool.drain_to(&mut sink)?, 2);
    /// assert_eq!(spool.drain_to(&mut sink)?, 0, "the cursor moved past both");
    /// assert_eq!(sink.0, [1, 2]);
    /// # Ok::<(), eventspool::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Delivery`] at the first failure, with the count delivered before it
    /// (the failed batch stays for the next call); [`Error::Closed`]; read errors.
    pub fn drain_to<S: Sink + ?Sized>(&self, sink: &mut S) -> Result<usize> {
        crate::sink::check_one(sink)?;
        let name = sink.name().to_owned();
        self.check_consumer(&name)?;
        let cursor = self.inner.call(Op::Register {
            consumer: name.clone(),
            kind: ConsumerKind::Drain,
            start: StartAt::Oldest,
        })?;
        let inner = &*self.inner;
        let mut drain = Drain {
            spool: self,
            name,
            committed: cursor,
            acknowledged: cursor,
            batches: 0,
            commit_every: sink.commit_every().max(1),
            commits: CursorCommits::new(inner.db.clone(), inner.tx.clone(), inner.acks_directly),
        };
        let delivered = drain.run(sink);
        // What was acknowledged is committed, whatever ended the drain.
        let committed = drain.commit();
        drain.commits.tell_writer();
        let delivered = delivered?;
        committed?;
        Ok(delivered)
    }

    /// Up to `limit` events `sink` gave up on, in seq order, with attempts and the
    /// last error.
    ///
    /// ```
    /// use std::time::Duration;
    /// use eventspool::{DeliveryError, Event, Sink, Spool, StoredEvent};
    ///
    /// struct Picky;
    /// impl Sink for Picky {
    ///     fn name(&self) -> &str { "picky" }
    ///     fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
    ///         match events[0].event_type.as_str() {
    ///             "bad" => Err(DeliveryError::permanent("no, thanks").with_status(422)),
    ///             _ => Ok(()),
    ///         }
    ///     }
    /// }
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let spool = Spool::builder(dir.path().join("events.db")).sink(Picky).open()?;
    /// spool.emit(Event::new("good", 1))?;
    /// spool.emit(Event::new("bad", 2))?;
    /// spool.close(Duration::from_secs(5))?; // lets the sink catch up
    /// let dead = spool.dead_letters("picky", 10)?;
    /// assert_eq!(dead.len(), 1);
    /// assert_eq!((dead[0].event.seq, dead[0].last_status), (2, Some(422)));
    /// # Ok::<(), eventspool::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`len`](Spool::len).
    pub fn dead_letters(&self, sink: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        (self.inner.pool).read(|c| store::dead_letters(c, &self.inner.spool_id, sink, limit))
    }

    /// Puts `sink`'s dead letters back in line: its worker delivers them (in seq order)
    /// before going on with new events; those that fail again return to the dead
    /// letters. Returns how many were requeued.
    ///
    /// # Errors
    /// [`Error::Closed`]; [`Error::Commit`].
    pub fn requeue_dead_letters(&self, sink: &str) -> Result<u64> {
        let n = self.inner.call(Op::Requeue {
            sink: sink.to_owned(),
        })?;
        self.inner.shared.requeues.fetch_add(1, SeqCst);
        self.inner.shared.ring();
        Ok(n)
    }

    /// Deletes all of `sink`'s dead letters; returns how many. (They are also kept
    /// within a cap of their own: see [`SpoolBuilder::max_dead_letter_bytes`](crate::SpoolBuilder::max_dead_letter_bytes).)
    ///
    /// # Errors
    /// [`Error::Closed`]; [`Error::Commit`].
    pub fn purge_dead_letters(&self, sink: &str) -> Result<u64> {
        self.inner.call(Op::Purge {
            sink: sink.to_owned(),
            failed_before: None,
        })
    }

    /// Deletes `sink`'s dead letters that failed `age` ago or earlier; returns how many.
    ///
    /// ```
    /// use std::time::Duration;
    /// use eventspool::Spool;
    ///
    /// let dir = tempfile::tempdir().expect("temp dir");
    /// let spool = Spool::open(dir.path().join("events.db"))?;
    /// // Those older than a week go; the rest stay to be looked at or requeued.
    /// let purged = spool.purge_dead_letters_older_than("audit", Duration::from_secs(7 * 86_400))?;
    /// assert_eq!(purged, 0);
    /// # Ok::<(), eventspool::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`purge_dead_letters`](Spool::purge_dead_letters).
    pub fn purge_dead_letters_older_than(&self, sink: &str, age: Duration) -> Result<u64> {
        let age = i64::try_from(crate::time::millis(age)).unwrap_or(i64::MAX);
        self.inner.call(Op::Purge {
            sink: sink.to_owned(),
            failed_before: Some(crate::time::now_ms().saturating_sub(age)),
        })
    }

    fn subscription_state(&self, name: &str) -> Option<Arc<SubState>> {
        let subscriptions = self.inner.shared.subscriptions.lock();
        subscriptions
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// A consumer name that `seek`/`subscribe`/`remove_consumer`/`drain_to` may use:
    /// see [`check_name`](Spool::check_name), and no open subscription.
    fn check_consumer(&self, name: &str) -> Result<()> {
        self.check_name(name)?;
        if self.subscription_state(name).is_some() {
            return Err(crate::subscribe::already_open(name));
        }
        Ok(())
    }

    /// A name the consumer APIs may use at all: not empty, not a sink of this spool
    /// (one namespace: only a sink's deliveries move its cursor).
    fn check_name(&self, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::Consumer("name must not be empty".into()));
        }
        if self.inner.shared.is_sink(name) {
            return Err(Error::Consumer(format!(
                "{name}: is a sink of this spool; only its deliveries move its cursor"
            )));
        }
        Ok(())
    }

    /// Refuses `After(n)` past the last event (the last seq only grows, so a position
    /// checked here is still valid when the writer applies it).
    fn check_seek(&self, name: &str, position: SeekPosition) -> Result<()> {
        if let SeekPosition::After(n) = position {
            let last = self.last_seq()?;
            if n > last {
                return Err(Error::Consumer(format!(
                    "{name}: cannot seek after seq {n}, the last is {last}"
                )));
            }
        }
        Ok(())
    }
}

/// Rows a drain reads per query, at least (a batch's worth when batches are larger).
const DRAIN_READ: usize = 256;

/// One `drain_to` in progress: what it acknowledged and what it committed.
struct Drain<'a> {
    spool: &'a Spool,
    name: String,
    /// The cursor as committed.
    committed: SeqNo,
    /// The last seq the sink acknowledged (or skipped).
    acknowledged: SeqNo,
    /// Batches acknowledged since the last commit.
    batches: usize,
    commit_every: usize,
    commits: CursorCommits,
}

impl Drain<'_> {
    /// Delivers everything after the cursor in batches; returns how many events the sink
    /// took, or the first failure.
    fn run<S: Sink + ?Sized>(&mut self, sink: &mut S) -> Result<usize> {
        let inner = &*self.spool.inner;
        let batch = sink.batch_size().max(1);
        let mut delivered = 0;
        loop {
            let after = self.acknowledged;
            let limit = batch.max(DRAIN_READ);
            let rows =
                (inner.pool).read(|c| store::read_after(c, &inner.spool_id, after, limit))?;
            if rows.is_empty() {
                return Ok(delivered);
            }
            let mut rows = rows.into_iter().peekable();
            while rows.peek().is_some() {
                let mut events = Vec::with_capacity(batch);
                let mut last = None;
                while events.len() < batch {
                    match rows.next_if(|r| r.is_ok()) {
                        Some(Ok(event)) => {
                            last = Some(event.seq);
                            if sink.accepts(&event.event_type) {
                                events.push(event);
                            }
                        }
                        _ => break,
                    }
                }
                if let Some(last) = last {
                    if !events.is_empty()
                        && let Err(e) = sink.deliver(&events)
                    {
                        return Err(Error::Delivery {
                            delivered,
                            source: Box::new(e),
                        });
                    }
                    delivered += events.len();
                    self.acknowledged = last;
                    self.batches += 1;
                    if self.batches >= self.commit_every {
                        self.commit()?;
                    }
                } else if let Some(Err(corrupt)) = rows.next() {
                    // A damaged row: to the dead letters, and the cursor past it.
                    self.commit()?;
                    inner.call(corrupt.quarantine(&self.name, true))?;
                    self.acknowledged = corrupt.seq;
                    self.committed = corrupt.seq;
                }
            }
        }
    }

    /// Commits the cursor at what was acknowledged: on the writer's connection (no
    /// thread round trip per commit) or, under `Durability::Full`, through the writer.
    fn commit(&mut self) -> Result<()> {
        if self.acknowledged == self.committed {
            return Ok(());
        }
        let counters = &self.spool.inner.shared.counters;
        let (from, to) = (self.committed + 1, self.acknowledged);
        self.commits.commit(&self.name, from, to, counters)?;
        self.committed = self.acknowledged;
        self.batches = 0;
        Ok(())
    }
}

/// The consumers registered in the file, a sink that is not one of `shared`'s marked
/// retired.
pub(super) fn consumers_of(shared: &Shared, pool: &ReaderPool) -> Result<Vec<ConsumerInfo>> {
    let mut consumers = pool.read(store::consumers)?;
    for c in &mut consumers {
        if c.kind == ConsumerKind::Sink && !shared.is_sink(&c.name) {
            c.kind = ConsumerKind::RetiredSink;
        }
    }
    Ok(consumers)
}
