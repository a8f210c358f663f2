//! Destinations for stored events: the [`Sink`] trait and its errors.

use std::time::Duration;

use crate::error::{DeliveryError, Error, Result as SpoolResult};
use crate::event::StoredEvent;
use order::{Concurrency, DEFAULT_WINDOW, Order};

#[cfg(any(feature = "redis", feature = "nats", feature = "kafka"))]
pub(crate) mod broker;
pub(crate) mod http_date;
#[cfg(feature = "kafka")]
pub(crate) mod kafka;
#[cfg(feature = "nats")]
pub(crate) mod nats;
pub(crate) mod order;
pub(crate) mod payload;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod signing;
#[cfg(any(feature = "redis", feature = "nats", feature = "kafka"))]
pub(crate) mod template;
pub(crate) mod webhook;

/// Default for [`Sink::max_retries`]: 20 retries, then the events are dead-lettered.
pub const DEFAULT_MAX_RETRIES: Option<u32> = Some(20);
/// Default for [`Sink::backoff`]: exponential from 100 ms to 60 s, with full jitter.
pub const DEFAULT_BACKOFF: Backoff = Backoff {
    min: Duration::from_millis(100),
    max: Duration::from_secs(60),
};
/// Default of `commit_every` for the broker sinks (Redis, NATS, Kafka): the cursor is committed
/// every 8 round trips. The broker recognises what a crash makes the sink send again,
/// so a longer replay costs only traffic, while a commit per batch is a write to the
/// spool file per round trip ([`guide::performance`](crate::guide::performance)).
pub const DEFAULT_BROKER_COMMIT_EVERY: usize = 8;

/// Largest [`Sink::batch_size`] a spool accepts: 100 000 events per `deliver` call (a
/// sink's worker holds up to two batches in memory).
pub const MAX_SINK_BATCH: usize = 100_000;

/// A destination the spool delivers stored events to, in `seq` order.
///
/// `deliver` gets a batch of up to [`batch_size`](Sink::batch_size) events; returning
/// `Ok` acknowledges all of them (the spool then advances the sink's cursor). An error
/// acknowledges none: the whole batch is delivered again, so receivers de-duplicate
/// on [`StoredEvent::id`].
///
/// ```
/// use eventspool::{DeliveryError, Sink, StoredEvent};
///
/// struct Stdout;
///
/// impl Sink for Stdout {
///     fn name(&self) -> &str {
///         "stdout"
///     }
///     fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
///         for e in events {
///             println!("{} {} {}", e.seq, e.event_type, e.data);
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Sink: Send {
    /// The sink's name: the key of its durable cursor in the spool file.
    fn name(&self) -> &str;

    /// Delivers `events` (never empty, in `seq` order). A panic here counts as a
    /// retryable failure of the attempt (and is reported to the `on_error` hook): the
    /// worker goes on, so an event the sink always panics on is dead-lettered.
    ///
    /// # Errors
    /// A [`DeliveryError`] saying whether a retry may succeed.
    fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError>;

    /// The most events handed to one `deliver` call, at most [`MAX_SINK_BATCH`].
    /// Defaults to 1.
    fn batch_size(&self) -> usize {
        1
    }

    /// After how many acknowledged requests the sink's cursor is committed. Defaults
    /// to 1: committed before the next request goes out, so a crash replays only the
    /// request in flight. With `n` > 1 a backlog is delivered with a commit every `n`
    /// requests instead (each commit is a write to the spool file, tens of
    /// microseconds: most of a request to a receiver on the same machine), and a crash
    /// replays at most the last `n` requests. The cursor is committed at once when the
    /// sink has nothing more to send, before it waits to retry, when events are
    /// dead-lettered, and at close. 0 counts as 1.
    fn commit_every(&self) -> usize {
        1
    }

    /// Retries after a retryable failure before the events are dead-lettered; `None`
    /// retries forever. Defaults to [`DEFAULT_MAX_RETRIES`].
    fn max_retries(&self) -> Option<u32> {
        DEFAULT_MAX_RETRIES
    }

    /// The wait between retries. Defaults to [`DEFAULT_BACKOFF`].
    fn backoff(&self) -> Backoff {
        DEFAULT_BACKOFF
    }

    /// Whether events of this type go to the sink; the others are skipped (counted in
    /// the sink's `filtered`). Defaults to every type. A panic here counts as yes (and
    /// is reported to the `on_error` hook).
    fn accepts(&self, event_type: &str) -> bool {
        let _ = event_type;
        true
    }

    /// In what order events go out: [`Order::Total`] (the default) keeps one request
    /// in flight; [`Order::PerKey`] and [`Order::Unordered`] let
    /// [`concurrency`](Sink::concurrency) requests run side by side, on threads of
    /// their own, each with a sink made by [`try_clone`](Sink::try_clone).
    fn order(&self) -> Order {
        Order::Total
    }

    /// How many requests may be in flight. Defaults to `Fixed(1)`; more needs an
    /// order other than `Total` and a sink that [`try_clone`](Sink::try_clone)s.
    fn concurrency(&self) -> Concurrency {
        Concurrency::Fixed(1)
    }

    /// With concurrency: the most events dispatched above the durable cursor (the
    /// lowest seq not yet done), which is what a crash may replay. A key that keeps
    /// failing holds the window until its retries end. Defaults to [`DEFAULT_WINDOW`].
    fn window(&self) -> usize {
        DEFAULT_WINDOW
    }

    /// With concurrency: an event older than this when its turn comes is not sent but
    /// dead-lettered as `expired` (counted in `expired`). Defaults to none.
    fn max_age(&self) -> Option<Duration> {
        None
    }

    /// With concurrency: at most this many requests per second (a token bucket, bursts
    /// up to the concurrency). Defaults to none.
    fn rate_limit(&self) -> Option<f64> {
        None
    }

    /// Under [`Order::PerKey`], the key of an event: events with equal keys go out in
    /// order, one at a time. Defaults to a hash of the subject (events without one
    /// share a key).
    fn key(&self, event: &StoredEvent) -> u64 {
        key_of(event.subject.as_deref().unwrap_or_default())
    }

    /// How many events of the last successful `deliver` the destination already had:
    /// re-sends it recognised (by an explicit stream id, a message id, an idempotent
    /// producer), counted in the sink's `already_delivered`; taking it resets it.
    /// Defaults to 0 (a sink that cannot tell).
    fn take_already_delivered(&mut self) -> u64 {
        0
    }

    /// Another sink like this one, for a request thread of its own; `None` (the
    /// default) if it cannot be copied, which limits it to one request in flight.
    fn try_clone(&self) -> Option<Box<dyn Sink>> {
        None
    }

    /// Checked when the spool opens: a misconfigured sink is refused with
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) and this message.
    /// Defaults to `Ok`.
    ///
    /// # Errors
    /// What is wrong with the sink's configuration.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A key for [`Sink::key`]: a hash of `text` (stable within a process).
pub fn key_of(text: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(text)
}

/// Checks the sinks of one spool: names unique, and each one as [`check_one`] does.
pub(crate) fn check_all<'a>(sinks: impl IntoIterator<Item = &'a dyn Sink>) -> SpoolResult<()> {
    let mut names = std::collections::HashSet::new();
    for sink in sinks {
        check_one(sink)?;
        if !names.insert(sink.name()) {
            return Err(Error::InvalidConfig(format!(
                "two sinks are named {:?}",
                sink.name()
            )));
        }
    }
    Ok(())
}

/// Checks one sink: a name, a batch size within [`MAX_SINK_BATCH`], and its own
/// [`Sink::check`].
pub(crate) fn check_one<S: Sink + ?Sized>(sink: &S) -> SpoolResult<()> {
    let name = sink.name();
    if name.is_empty() {
        return Err(Error::InvalidConfig("sink name must not be empty".into()));
    }
    sink.check().map_err(Error::InvalidConfig)?;
    let bad = |msg: String| Err(Error::InvalidConfig(format!("sink {name}: {msg}")));
    if !(1..=MAX_SINK_BATCH).contains(&sink.batch_size()) {
        return bad(format!("batch_size must be 1 to {MAX_SINK_BATCH}"));
    }
    let concurrency = sink.concurrency().max();
    if concurrency == 0 {
        return bad("concurrency must be at least 1".into());
    }
    if concurrency > 1 && sink.order() == Order::Total {
        return bad(format!(
            "concurrency {concurrency} needs Order::PerKey or Order::Unordered: \
             Order::Total keeps one request in flight, so that each goes after the last"
        ));
    }
    if sink.order() != Order::Total && sink.try_clone().is_none() {
        return bad("its order needs a sink that try_clone()s (one per request in flight)".into());
    }
    if sink.window() == 0 {
        return bad("window must be at least 1".into());
    }
    if sink
        .rate_limit()
        .is_some_and(|r| !(r > 0.0 && r.is_finite()))
    {
        return bad("rate_limit must be a positive number of requests per second".into());
    }
    Ok(())
}

/// Exponential backoff with full jitter: before retry `n` (from 1) the worker waits a
/// random time between zero and `min(max, min × 2^(n-1))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// Backoff growing from `min` to at most `max`.
    pub const fn exponential(min: Duration, max: Duration) -> Self {
        Backoff { min, max }
    }

    /// The first retry's ceiling.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The longest wait, also the cap on a receiver's `Retry-After`.
    pub fn max(&self) -> Duration {
        self.max
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if self.min.is_zero() || self.max < self.min {
            return Err(format!(
                "backoff needs 0 < min <= max, got {:?}..{:?}",
                self.min, self.max
            ));
        }
        Ok(())
    }

    /// The wait before a retry: what the backoff `drawn`, lengthened (never shortened:
    /// `Retry-After: 0` or a date in the past would make a hot loop) to what the
    /// receiver `asked`, at most [`max`](Backoff::max).
    pub(crate) fn wait(&self, drawn: Duration, asked: Option<Duration>) -> Duration {
        asked.map_or(drawn, |asked| asked.max(drawn)).min(self.max)
    }

    /// The ceiling before retry `retry` (1-based).
    pub(crate) fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1).min(31))
            .unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }
}
