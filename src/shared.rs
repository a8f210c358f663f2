//! What the handle shares with the threads it starts (writer, sink workers and
//! readers, subscriptions): the counters, the error hook, the doorbells that wake
//! consumers after a commit, and the open subscriptions.

use std::collections::HashMap;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::error::{Error, Result};
use crate::event::{SeqNo, lag};
use crate::metrics::{ConsumerMetrics, Counters, SinkCounters};

/// The user's hook for failures no caller sees.
pub(crate) type ErrorHook = Arc<dyn Fn(&Error) + Send + Sync>;

/// What the handle shares with the worker threads.
pub(crate) struct Shared {
    pub(crate) counters: Counters,
    on_error: Option<ErrorHook>,
    /// One doorbell per consumer thread, rung after every commit with new events.
    doorbells: Mutex<Vec<Sender<()>>>,
    /// The counters of each sink, in the order the sinks were added.
    pub(crate) sinks: Vec<Arc<SinkCounters>>,
    /// Bumped by every `requeue_dead_letters`, so workers look for requeued events.
    pub(crate) requeues: AtomicU64,
    /// Set when `close` begins: no more events are accepted, subscriptions end.
    closed: AtomicBool,
    /// The open subscriptions, by consumer name.
    pub(crate) subscriptions: Mutex<HashMap<String, Arc<SubState>>>,
    /// Per consumer that is not a sink: events the caps evicted before it acknowledged
    /// them.
    evicted: Mutex<HashMap<String, u64>>,
    /// How often application threads yield before they sleep waiting for the writer.
    pub(crate) caller_yields: u32,
}

impl Shared {
    pub(crate) fn new(
        on_error: Option<ErrorHook>,
        sinks: Vec<Arc<SinkCounters>>,
        caller_yields: u32,
    ) -> Self {
        Shared {
            counters: Counters::default(),
            on_error,
            doorbells: Mutex::new(Vec::new()),
            sinks,
            requeues: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            subscriptions: Mutex::new(HashMap::new()),
            evicted: Mutex::new(HashMap::new()),
            caller_yields,
        }
    }

    /// Refuses new events from now on; open subscriptions end.
    pub(crate) fn close(&self) {
        self.closed.store(true, SeqCst);
    }

    /// Wakes every consumer thread waiting for new events (and forgets the doorbells
    /// of subscriptions that were dropped).
    pub(crate) fn ring(&self) {
        let mut bells = self
            .doorbells
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        bells.retain(|bell| !matches!(bell.try_send(()), Err(TrySendError::Disconnected(_))));
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// A doorbell rung after every commit with new events.
    pub(crate) fn doorbell(&self) -> Receiver<()> {
        let (tx, rx) = bounded(1);
        self.doorbells
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        rx
    }

    /// Whether `name` is one of this spool's sinks.
    pub(crate) fn is_sink(&self, name: &str) -> bool {
        self.sinks.iter().any(|s| s.name == name)
    }

    /// Counts events the caps evicted before `consumer` had them.
    pub(crate) fn evicted_unsent(&self, consumer: &str, n: u64) {
        match self.sinks.iter().find(|s| s.name == consumer) {
            Some(sink) => {
                sink.evicted_unsent.fetch_add(n, Relaxed);
            }
            None => {
                let mut evicted = self.evicted.lock().unwrap_or_else(PoisonError::into_inner);
                *evicted.entry(consumer.to_owned()).or_default() += n;
            }
        }
    }

    /// Events the caps evicted before `consumer` (not a sink) acknowledged them.
    pub(crate) fn evicted_for(&self, consumer: &str) -> u64 {
        let evicted = self.evicted.lock().unwrap_or_else(PoisonError::into_inner);
        evicted.get(consumer).copied().unwrap_or(0)
    }

    /// Hands a failure no caller sees to the user's `on_error` hook. A panic in the
    /// hook is logged and goes no further: it must not end the writer or a worker.
    pub(crate) fn report(&self, error: &Error) {
        if let Some(hook) = &self.on_error
            && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(error))).is_err()
        {
            log::error!("the on_error hook panicked on: {error}");
        }
    }
}

/// What an active subscription shares with the spool.
#[derive(Debug, Default)]
pub(crate) struct SubState {
    /// The last seq read.
    pub(crate) read: AtomicU64,
    /// The last seq acknowledged.
    pub(crate) acked: AtomicU64,
    /// When the oldest event read and not acknowledged was stored; 0 when none is.
    pub(crate) unacked_since_ms: AtomicI64,
}

impl SubState {
    pub(crate) fn metrics(&self, name: &str, first_seq: SeqNo, last_seq: SeqNo) -> ConsumerMetrics {
        let acked = self.acked.load(Relaxed);
        let since = self.unacked_since_ms.load(Relaxed);
        ConsumerMetrics {
            name: name.to_owned(),
            open: true,
            position: acked,
            read: self.read.load(Relaxed),
            evicted: 0,
            lag: lag(acked, first_seq, last_seq),
            oldest_unacked_age_ms: crate::time::age_ms(since),
        }
    }

    /// Checks that an ack of `seq` moves forward and stays within what was read.
    pub(crate) fn check_ack(&self, name: &str, seq: SeqNo) -> Result<()> {
        let (acked, read) = (self.acked.load(SeqCst), self.read.load(SeqCst));
        if seq < acked {
            return Err(Error::Consumer(format!(
                "{name}: ack of seq {seq} goes back before its position {acked}"
            )));
        }
        if seq > read {
            return Err(Error::Consumer(format!(
                "{name}: ack of seq {seq} is ahead of what it has read ({read})"
            )));
        }
        Ok(())
    }

    pub(crate) fn acked(&self, seq: SeqNo) {
        self.acked.fetch_max(seq, SeqCst);
        if seq >= self.read.load(SeqCst) {
            self.unacked_since_ms.store(0, Relaxed);
        }
    }
}
