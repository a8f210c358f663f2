//! One sink's retry policy, step by step: an attempt to deliver a batch either succeeds,
//! gives up (permanent failure, or retries run out), or asks for a wait before the next.
//! The worker (one request at a time) and the request threads of a concurrent sink both
//! drive it; what they do while waiting is theirs.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{DeliveryError, Error};
use crate::event::StoredEvent;
use crate::metrics::SinkCounters;
use crate::shared::Shared;
use crate::sink::{Backoff, Sink};

use super::{caught, spent};

/// What one attempt came to.
pub(super) enum Step {
    /// The sink acknowledged the batch.
    Delivered,
    /// No retry will help, or retries ran out: the batch goes to the dead letters.
    GiveUp(DeliveryError),
    /// Try again after this wait (the error is the one that failed).
    Wait(Duration, DeliveryError),
}

/// A sink's retry policy and the state of its jitter.
pub(super) struct Retrier {
    name: String,
    max_retries: Option<u32>,
    backoff: Backoff,
    rng: u64,
    counters: Arc<SinkCounters>,
    shared: Arc<Shared>,
}

impl Retrier {
    pub(super) fn new(sink: &dyn Sink, counters: Arc<SinkCounters>, shared: Arc<Shared>) -> Self {
        let mut seed = std::collections::hash_map::RandomState::new().build_hasher();
        seed.write(sink.name().as_bytes());
        Retrier {
            name: sink.name().to_owned(),
            max_retries: sink.max_retries(),
            backoff: sink.backoff(),
            rng: seed.finish() | 1,
            counters,
            shared,
        }
    }

    /// The same policy with a jitter of its own (for another request thread).
    pub(super) fn fork(&mut self) -> Self {
        Retrier {
            name: self.name.clone(),
            max_retries: self.max_retries,
            backoff: self.backoff,
            rng: self.next_random() | 1,
            counters: self.counters.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Attempts `events` once through `sink`, after `retries` failed attempts, and says
    /// what comes next; counts the attempt. `rtt` gets the attempt's duration.
    pub(super) fn attempt(
        &mut self,
        sink: &mut dyn Sink,
        events: &[StoredEvent],
        retries: u32,
        rtt: &mut Duration,
    ) -> Step {
        let c = self.counters.clone();
        c.attempts.fetch_add(1, Relaxed);
        let started = Instant::now();
        let delivered = match caught(|| sink.deliver(events)) {
            Ok(delivered) => delivered,
            Err(panic) => Err(panicked(&self.shared, "deliver", &panic)),
        };
        *rtt = started.elapsed();
        spent(&c.deliver_ns, started);
        let error = match delivered {
            Ok(()) => {
                c.backoff_ms.store(0, Relaxed);
                c.delivered.fetch_add(events.len() as u64, Relaxed);
                let again = caught(|| sink.take_already_delivered()).unwrap_or(0);
                c.already_delivered.fetch_add(again, Relaxed);
                return Step::Delivered;
            }
            Err(e) => e,
        };
        if error.is_retryable() {
            c.failures_retryable.fetch_add(1, Relaxed);
        } else {
            c.failures_permanent.fetch_add(1, Relaxed);
        }
        *c.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(error.to_string());
        if !error.is_retryable() || self.max_retries.is_some_and(|max| retries >= max) {
            c.backoff_ms.store(0, Relaxed);
            return Step::GiveUp(error);
        }
        c.retries.fetch_add(1, Relaxed);
        let drawn = self.jitter(self.backoff.ceiling(retries + 1));
        let wait = self.backoff.wait(drawn, error.retry_after_hint());
        c.backoff_ms.store(crate::time::millis(wait), Relaxed);
        log::warn!(
            "sink {}: delivery of seq {}.. failed (retry {} in {wait:?}): {error}",
            self.name,
            events[0].seq,
            retries + 1
        );
        Step::Wait(wait, error)
    }

    /// A random duration in `[0, ceiling]` (full jitter).
    fn jitter(&mut self, ceiling: Duration) -> Duration {
        let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(self.next_random() % nanos.saturating_add(1))
    }

    /// xorshift64.
    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

/// Reports a panic in a sink's `method` to the `on_error` hook; returns it as a
/// retryable error (a sink that panics on one event dead-letters it and goes on).
pub(super) fn panicked(shared: &Shared, method: &str, panic: &str) -> DeliveryError {
    let error = DeliveryError::retryable(format!("the sink panicked in {method}: {panic}"));
    shared.report(&Error::Delivery {
        delivered: 0,
        source: Box::new(error.clone()),
    });
    error
}
