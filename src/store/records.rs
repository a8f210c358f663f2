//! The records the store keeps and the changes the writer applies to them: consumers
//! and their positions, dead letters, and rows that cannot be decoded.

use std::ops::RangeInclusive;

use crate::error::Error;
use crate::event::{SeqNo, StoredEvent};

/// Where a consumer reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekPosition {
    /// The oldest stored event.
    Beginning,
    /// The event after the consumer's last acknowledgement (for a new consumer:
    /// `Beginning`).
    LastAcknowledged,
    /// Only events committed after the call.
    Latest,
    /// The events with `seq` greater than this.
    After(SeqNo),
}

/// What a registered consumer is. Sinks and consumers share one namespace: a name
/// that is a sink of the spool cannot be used through the consumer APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConsumerKind {
    /// A sink the spool was opened with: only its deliveries move its cursor.
    Sink,
    /// A sink recorded in the file that this spool was not opened with. It holds back
    /// the deletion of what it has not had until it is added again, or removed with
    /// [`Spool::remove_consumer`](crate::Spool::remove_consumer).
    RetiredSink,
    /// A consumer group, read with [`Subscription`](crate::Subscription)s and moved with `seek` / `ack`.
    Subscriber,
    /// A sink replayed by [`Spool::drain_to`](crate::Spool::drain_to).
    Drain,
}

impl ConsumerKind {
    /// How the kind is written in the file (a retired sink is a sink there).
    pub(crate) fn stored(self) -> &'static str {
        match self {
            ConsumerKind::Sink | ConsumerKind::RetiredSink => "sink",
            ConsumerKind::Subscriber => "subscriber",
            ConsumerKind::Drain => "drain",
        }
    }

    /// The kind written as `stored`; anything unknown reads as a subscriber.
    pub(crate) fn from_stored(stored: &str) -> ConsumerKind {
        match stored {
            "sink" => ConsumerKind::Sink,
            "drain" => ConsumerKind::Drain,
            _ => ConsumerKind::Subscriber,
        }
    }
}

impl std::fmt::Display for ConsumerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConsumerKind::Sink => "sink",
            ConsumerKind::RetiredSink => "retired sink",
            ConsumerKind::Subscriber => "subscriber",
            ConsumerKind::Drain => "drain",
        })
    }
}

/// What `Spool::consumers` reports of one consumer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ConsumerInfo {
    /// The consumer's name.
    pub name: String,
    /// What it is.
    pub kind: ConsumerKind,
    /// The last `seq` it acknowledged.
    pub position: SeqNo,
    /// Stored events after its position.
    pub lag: u64,
    /// Age of the oldest stored event it has not acknowledged, in ms (0 if none).
    pub oldest_unacked_age_ms: u64,
}

/// An event a sink gave up on, with why.
#[derive(Debug, Clone, serde::Serialize)]
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

/// Where a newly registered consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartAt {
    /// With the oldest stored event.
    Oldest,
    /// With the next event committed.
    Next,
}

/// A change to consumers or dead letters, applied by the writer in its transaction.
#[derive(Debug)]
pub(crate) enum Op {
    /// Registers a consumer if it is new, else makes it of `kind` (keeping its cursor);
    /// yields its cursor.
    Register {
        consumer: String,
        kind: ConsumerKind,
        start: StartAt,
    },
    /// Moves a cursor forward (never back). `from` is set by a sink's worker: the first
    /// seq of the range `from..=seq` it handled; what of it the caps evicted while it
    /// was in flight was counted as evicted unsent, and the op yields how many, for the
    /// worker to take back (it counts them as delivered or filtered).
    Ack {
        consumer: String,
        seq: SeqNo,
        from: Option<SeqNo>,
    },
    /// Records events a sink gave up on, copying them so deletion can go on: from
    /// `held` (the worker's copies of `seqs`, in order), or from the file for a row that
    /// could not be decoded (`held` empty). When they came from the stream, moves the
    /// cursor past the range `ack` (yielding, as `Ack` does, how many of it the caps
    /// evicted meanwhile).
    DeadLetter {
        sink: String,
        seqs: Vec<SeqNo>,
        held: Vec<StoredEvent>,
        attempts: u32,
        status: Option<u16>,
        error: String,
        ack: Option<RangeInclusive<SeqNo>>,
    },
    /// Sets a consumer's position, registering it as a subscriber if new (at the oldest
    /// stored event for `LastAcknowledged`), in one step; yields the position.
    Seek { consumer: String, to: SeekPosition },
    /// Unregisters a consumer; yields 1 if it existed. (The spool refuses its sinks.)
    Remove { consumer: String },
    /// Marks a sink's dead letters for redelivery; yields how many.
    Requeue { sink: String },
    /// Removes redelivered dead letters.
    Redelivered { sink: String, seqs: Vec<SeqNo> },
    /// Removes a sink's dead letters that failed at or before `failed_before` (ms since
    /// the epoch; all of them when `None`); yields how many.
    Purge {
        sink: String,
        failed_before: Option<i64>,
    },
}

/// The dead letters kept, across sinks, and their caps. The writer owns it; a
/// transaction changes a copy that replaces it once committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeadLetterBook {
    pub(crate) count: u64,
    pub(crate) bytes: u64,
    /// Dead letters the caps evicted (since open).
    pub(crate) evicted: u64,
    pub(crate) max_count: u64,
    pub(crate) max_bytes: u64,
}

/// What the writer needs to know about the file when it starts.
#[derive(Debug)]
pub(crate) struct StoreState {
    pub(crate) spool_id: String,
    /// Highest `seq` ever assigned (0 for a new spool).
    pub(crate) last_seq: SeqNo,
    /// Lowest stored `seq`, or `last_seq + 1` when nothing is stored.
    pub(crate) first_seq: SeqNo,
    pub(crate) stored_bytes: u64,
    pub(crate) dead_letters: u64,
    pub(crate) dead_letter_bytes: u64,
}

/// A stored row that cannot be decoded into an event (its bytes were damaged).
#[derive(Debug, Clone)]
pub(crate) struct Corrupt {
    pub(crate) seq: SeqNo,
    pub(crate) reason: String,
}

impl Corrupt {
    /// Moves the row to `sink`'s dead letters (it was never delivered); when it was
    /// read from the stream (`from_stream`), also moves the cursor past it, so the sink
    /// goes on. Logs it.
    pub(crate) fn quarantine(&self, sink: &str, from_stream: bool) -> Op {
        log::error!(
            "sink {sink}: quarantining seq {}: {}",
            self.seq,
            self.reason
        );
        Op::DeadLetter {
            sink: sink.to_owned(),
            seqs: vec![self.seq],
            held: Vec::new(),
            attempts: 0,
            status: None,
            error: format!("corrupt row, not delivered: {}", self.reason),
            ack: from_stream.then_some(self.seq..=self.seq),
        }
    }

    pub(crate) fn error(&self) -> Error {
        Error::CorruptEvent {
            seq: self.seq,
            reason: self.reason.clone(),
        }
    }
}

/// A row read for a consumer: the event, or why it cannot be decoded.
pub(crate) type Decoded = std::result::Result<StoredEvent, Corrupt>;

/// The seq of a decoded row.
pub(crate) fn seq_of(row: &Decoded) -> SeqNo {
    match row {
        Ok(event) => event.seq,
        Err(corrupt) => corrupt.seq,
    }
}

/// How many of `from..=to` are gone before `first_seq`: evicted by the caps (events a
/// consumer has not acknowledged are never deleted otherwise).
pub(crate) fn evicted_in(from: SeqNo, to: SeqNo, first_seq: SeqNo) -> u64 {
    (to + 1).min(first_seq).saturating_sub(from)
}

/// A count of events and their bytes (as the caps count them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rows {
    pub(crate) count: u64,
    pub(crate) bytes: u64,
}

/// What is stored: the lowest stored seq (`None` when nothing is) and the highest seq
/// ever assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) first: Option<SeqNo>,
    pub(crate) last: SeqNo,
}

/// A consumer that has not acknowledged everything an eviction removes.
#[derive(Debug)]
pub(crate) struct Behind {
    pub(crate) consumer: String,
    pub(crate) acked: SeqNo,
}

/// What the tables hold, counted row by row (see `sql::tally`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) events: u64,
    pub(crate) event_bytes: u64,
    pub(crate) dead_letters: u64,
    pub(crate) dead_letter_bytes: u64,
    /// The timestamps of the lowest and highest stored seq.
    pub(crate) oldest_ms: Option<i64>,
    pub(crate) newest_ms: Option<i64>,
}

/// The size of the file in pages, as SQLite counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pages {
    pub(crate) size: u64,
    pub(crate) count: u64,
    pub(crate) free: u64,
}

/// The dead letters of one sink, summed up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct DeadLetterSummary {
    /// The sink (or consumer) they belong to.
    pub sink: String,
    /// How many.
    pub count: u64,
    /// Their bytes, as the caps count them.
    pub bytes: u64,
    /// How many are marked for redelivery.
    pub requeued: u64,
    /// When the oldest failed, in ms since the epoch.
    pub oldest_failed_at_ms: Option<i64>,
}
