//! Consumer groups: [`Subscription`]s that read the spool at their own pace, each with
//! a durable position (the last acknowledged `seq`), like a consumer group on a broker
//! but in one file and with blocking calls.
//!
//! Semantics of positions, shared by [`Spool::seek`](crate::Spool::seek) and
//! [`Spool::subscribe`](crate::Spool::subscribe):
//! - A consumer's *position* is the last `seq` it acknowledged; it reads from the event
//!   after it. A new consumer's position is just before the oldest stored event.
//! - `seek(name, pos)` sets the position: `Beginning` to just before the oldest stored
//!   event (replay everything), `Latest` to the last committed `seq` (skip to new
//!   events), `After(n)` to `n` (the next event read is the first with `seq > n`).
//!   `LastAcknowledged` leaves it where it is. Seeking may move backwards.
//! - `subscribe(name, pos)` is exactly `seek(name, pos)` followed by reading from the
//!   position, so `subscribe(name, After(n))` and `seek(name, After(n))` then
//!   `subscribe(name, LastAcknowledged)` read the same events.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::error::{Error, Result};
use crate::event::{SeqNo, StoredEvent};
use crate::shared::{Shared, SubState};
use crate::store::{self, Decoded, Op, ReaderPool};
use crate::writer::{self, Msg};

/// Most events a subscription reads ahead in one query.
const READ_AHEAD: usize = 512;

/// A blocking reader of the spool for one consumer: it first replays stored events
/// after the consumer's position, then waits for new ones (woken by every commit).
///
/// It is an `Iterator<Item = Result<StoredEvent>>` that ends when the spool closes.
/// Reading does not acknowledge: call [`ack`](Subscription::ack) with the last `seq`
/// handled; after a restart the consumer resumes after its last ack. Only one
/// subscription per consumer name may be open at a time; dropping it frees the name.
/// A consumer group here is one reader with a durable position, not a set of readers
/// sharing the load as on Kafka: to spread the work, hand the events read to threads
/// of your own, or deliver through a sink with concurrency
/// ([`Order::PerKey`](crate::Order::PerKey)).
///
/// ```
/// use std::time::Duration;
/// use eventspool::{Event, SeekPosition, Spool};
///
/// let dir = tempfile::tempdir().expect("temp dir");
/// let spool = Spool::open(dir.path().join("events.db"))?;
/// spool.append_batch(vec![Event::new("a", 1), Event::new("b", 2)])?;
/// let mut sub = spool.subscribe("billing", SeekPosition::LastAcknowledged)?;
/// let first = sub.next_timeout(Duration::from_secs(1))?.expect("an event");
/// sub.ack(first.seq)?;
/// assert_eq!(sub.try_next()?.map(|e| e.seq), Some(2));
/// assert_eq!(sub.try_next()?, None);
/// # Ok::<(), eventspool::Error>(())
/// ```
pub struct Subscription {
    name: String,
    state: Arc<SubState>,
    buffer: VecDeque<Decoded>,
    doorbell: Receiver<()>,
    tx: Sender<Msg>,
    pool: ReaderPool,
    spool_id: String,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.name)
            .field("position", &self.state.acked.load(Relaxed))
            .field("read", &self.state.read.load(Relaxed))
            .finish_non_exhaustive()
    }
}

/// Everything a subscription needs from the spool.
pub(crate) struct SubParts {
    pub(crate) tx: Sender<Msg>,
    pub(crate) pool: ReaderPool,
    pub(crate) spool_id: String,
    pub(crate) shared: Arc<Shared>,
}

/// A consumer name taken for a subscription while it opens, so that no other
/// subscription, seek or removal can use it meanwhile; given back when dropped unless
/// the subscription opened.
pub(crate) struct Reservation {
    shared: Arc<Shared>,
    name: String,
    state: Option<Arc<SubState>>,
}

impl Reservation {
    /// Takes `name`.
    ///
    /// # Errors
    /// [`Error::Consumer`] if it has an open subscription.
    pub(crate) fn take(shared: &Arc<Shared>, name: &str) -> Result<Reservation> {
        let mut active = shared
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if active.contains_key(name) {
            return Err(already_open(name));
        }
        let state = Arc::new(SubState::default());
        active.insert(name.to_owned(), state.clone());
        Ok(Reservation {
            shared: shared.clone(),
            name: name.to_owned(),
            state: Some(state),
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.state.is_some() {
            self.shared
                .subscriptions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.name);
        }
    }
}

/// The error for a second subscription, or a seek or removal, of a name in use.
pub(crate) fn already_open(name: &str) -> Error {
    Error::Consumer(format!("{name}: already has an open subscription"))
}

impl Subscription {
    /// Opens the subscription `reserved` at `position` (its cursor after any seek).
    pub(crate) fn new(mut reserved: Reservation, position: SeqNo, parts: SubParts) -> Self {
        let state = reserved
            .state
            .take()
            .expect("a reservation holds its state");
        state.read.store(position, SeqCst);
        state.acked.store(position, SeqCst);
        Subscription {
            doorbell: parts.shared.doorbell(),
            name: std::mem::take(&mut reserved.name),
            state,
            buffer: VecDeque::new(),
            tx: parts.tx,
            pool: parts.pool,
            spool_id: parts.spool_id,
            shared: parts.shared,
        }
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last `seq` acknowledged.
    pub fn position(&self) -> SeqNo {
        self.state.acked.load(SeqCst)
    }

    /// The next event without waiting: `Ok(None)` when none is stored yet.
    ///
    /// # Errors
    /// [`Error::Closed`] once the spool is closed; [`Error::CorruptEvent`] for a stored
    /// event whose bytes were damaged (once: the next call reads on); read errors.
    pub fn try_next(&mut self) -> Result<Option<StoredEvent>> {
        if self.shared.is_closed() {
            return Err(Error::Closed);
        }
        if self.buffer.is_empty() {
            let after = self.state.read.load(SeqCst);
            let spool_id = &self.spool_id;
            let rows = (self.pool).read(|c| store::read_after(c, spool_id, after, READ_AHEAD))?;
            self.buffer = rows.into();
        }
        let event = match self.buffer.pop_front() {
            None => return Ok(None),
            Some(Ok(event)) => event,
            Some(Err(corrupt)) => {
                // Reported once; reading goes on after it (ack past it to skip it).
                self.state.read.store(corrupt.seq, SeqCst);
                return Err(corrupt.error());
            }
        };
        self.state.read.store(event.seq, SeqCst);
        let _ = self.state.unacked_since_ms.compare_exchange(
            0,
            event.timestamp_ms.max(1),
            Relaxed,
            Relaxed,
        );
        Ok(Some(event))
    }

    /// The next event, waiting up to `timeout` for one to be committed: `Ok(None)` on
    /// timeout.
    ///
    /// # Errors
    /// As [`try_next`](Subscription::try_next).
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<StoredEvent>> {
        let deadline = crate::time::deadline(timeout);
        loop {
            if let Some(event) = self.try_next()? {
                return Ok(Some(event));
            }
            // A commit after the read above rings the bell: no wake-up is lost.
            match self.doorbell.recv_deadline(deadline) {
                Ok(()) => {}
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => return Err(Error::Closed),
            }
        }
    }

    /// Durably records that everything up to `seq` was handled; returns once committed.
    ///
    /// # Errors
    /// [`Error::Consumer`] if `seq` is before the position (backwards) or after the last
    /// event read (ahead); [`Error::Closed`]; [`Error::Commit`].
    pub fn ack(&self, seq: SeqNo) -> Result<()> {
        self.state.check_ack(&self.name, seq)?;
        writer::call(
            &self.tx,
            Op::Ack {
                consumer: self.name.clone(),
                seq,
                from: None,
            },
            self.shared.caller_yields,
        )?;
        self.state.acked(seq);
        Ok(())
    }
}

impl Iterator for Subscription {
    type Item = Result<StoredEvent>;

    /// Blocks until an event is committed; `None` once the spool is closed.
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next_timeout(Duration::from_secs(3600)) {
                Ok(Some(event)) => return Some(Ok(event)),
                Ok(None) => continue,
                Err(Error::Closed) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.name);
    }
}
