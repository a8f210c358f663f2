//! Counters kept in atomics, and [`MetricsSnapshot`], a plain copy of them.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use crate::event::{SeqNo, lag};

/// Keeps a hot counter on its own cache line so producers and the writer do not
/// contend on the same line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded(pub(crate) AtomicU64);

impl std::ops::Deref for Padded {
    type Target = AtomicU64;
    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

/// The live counters, shared by the handle and the threads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Written by callers (every `emit`/`append` event).
    pub(crate) emitted: Padded,
    pub(crate) filtered: Padded,
    pub(crate) dropped_overflow: AtomicU64,
    pub(crate) rejected: AtomicU64,
    /// Written by the writer.
    pub(crate) committed: Padded,
    pub(crate) evicted: AtomicU64,
    pub(crate) commit_errors: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) pending_retry: AtomicU64,
    pub(crate) stored_events: AtomicU64,
    /// The lowest stored seq, kept by the writer itself: deriving it from `last_seq`
    /// and `stored_events`, two loads the writer changes one after the other, could
    /// read a new count with an old last seq.
    pub(crate) first_stored: AtomicU64,
    pub(crate) stored_bytes: AtomicU64,
    pub(crate) last_seq: AtomicU64,
    pub(crate) dead_letters: AtomicU64,
    pub(crate) dead_letter_bytes: AtomicU64,
    pub(crate) dead_letters_evicted: AtomicU64,
}

impl Counters {
    /// The lowest stored seq (one past `last_seq` when nothing is stored).
    pub(crate) fn first_seq(&self) -> u64 {
        self.first_stored.load(Ordering::Relaxed)
    }

    /// Events handed over that have reached a final count (all but the in-flight ones).
    pub(crate) fn settled(&self) -> u64 {
        let r = |c: &AtomicU64| c.load(Ordering::SeqCst);
        r(&self.committed)
            + r(&self.filtered)
            + r(&self.dropped_overflow)
            + r(&self.rejected)
            + r(&self.abandoned)
    }

    pub(crate) fn snapshot(&self, channel_depth: usize) -> MetricsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let batches = r(&self.batches);
        let committed = r(&self.committed);
        MetricsSnapshot {
            emitted: r(&self.emitted),
            committed,
            filtered: r(&self.filtered),
            dropped_overflow: r(&self.dropped_overflow),
            rejected: r(&self.rejected),
            abandoned: r(&self.abandoned),
            evicted: r(&self.evicted),
            commit_errors: r(&self.commit_errors),
            pending_retry: r(&self.pending_retry),
            stored_events: r(&self.stored_events),
            stored_bytes: r(&self.stored_bytes),
            last_seq: r(&self.last_seq),
            dead_letters: r(&self.dead_letters),
            dead_letter_bytes: r(&self.dead_letter_bytes),
            dead_letters_evicted: r(&self.dead_letters_evicted),
            channel_depth: channel_depth as u64,
            batches,
            mean_batch_size: if batches == 0 {
                0.0
            } else {
                committed as f64 / batches as f64
            },
            sinks: Vec::new(),
            consumers: Vec::new(),
        }
    }
}

/// A copy of the spool's counters at one moment.
///
/// The counters balance: `emitted = committed + filtered + dropped_overflow + rejected
/// + abandoned + in flight`, where in flight is what sits in the channel or in the
/// writer's current batch (0 after [`Spool::flush`](crate::Spool::flush) returns).
///
/// Serializes (serde) with its field names, as the C API's `eventspool_metrics_json` does.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Events handed to `emit`, `append` or `append_batch`.
    pub emitted: u64,
    /// Events committed to the file.
    pub committed: u64,
    /// Events dropped by the filter.
    pub filtered: u64,
    /// Events dropped because the channel was full under `Overflow::DropNewest`.
    pub dropped_overflow: u64,
    /// Events refused with an error: invalid, `Overflow::Reject`/`BlockFor`, after
    /// close, or an `append` whose commit failed.
    pub rejected: u64,
    /// Events still uncommitted when `close` timed out.
    pub abandoned: u64,
    /// Stored events evicted by `max_events` / `max_bytes`.
    pub evicted: u64,
    /// Commits that failed (each is retried).
    pub commit_errors: u64,
    /// Emitted events held by the writer for a retry after a failed commit.
    pub pending_retry: u64,
    /// Events in the file.
    pub stored_events: u64,
    /// Bytes of events in the file (as counted for `max_bytes`).
    pub stored_bytes: u64,
    /// Highest `seq` assigned.
    pub last_seq: u64,
    /// Dead letters kept, across sinks.
    pub dead_letters: u64,
    /// Bytes of the dead letters kept (as counted for `max_dead_letter_bytes`).
    pub dead_letter_bytes: u64,
    /// Dead letters evicted by their caps since the spool opened (oldest first).
    pub dead_letters_evicted: u64,
    /// Messages waiting in the channel to the writer.
    pub channel_depth: u64,
    /// Transactions committed with events.
    pub batches: u64,
    /// `committed / batches`.
    pub mean_batch_size: f64,
    /// One entry per sink.
    pub sinks: Vec<SinkMetrics>,
    /// One entry per registered consumer that is not a sink of this spool (open
    /// subscription or not).
    pub consumers: Vec<ConsumerMetrics>,
}

impl MetricsSnapshot {
    /// Renders the snapshot in the Prometheus text exposition format, with
    /// `eventspool_` names.
    ///
    /// ```
    /// let text = eventspool::MetricsSnapshot::default().to_prometheus();
    /// assert!(text.contains("eventspool_committed_total 0"));
    /// ```
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut last = "";
        self.samples(&mut |sample| {
            let name = sample.name;
            if name != last {
                let kind = match sample.kind {
                    Kind::Counter => "counter",
                    Kind::Gauge => "gauge",
                };
                let _ = writeln!(out, "# HELP eventspool_{name} {}", sample.help);
                let _ = writeln!(out, "# TYPE eventspool_{name} {kind}");
                last = name;
            }
            let _ = match sample.label {
                Some((key, value)) => writeln!(
                    out,
                    "eventspool_{name}{{{key}=\"{}\"}} {}",
                    label(value),
                    sample.value
                ),
                None => writeln!(out, "eventspool_{name} {}", sample.value),
            };
        });
        out
    }

    /// Records every counter and gauge through the [`metrics`](https://docs.rs/metrics)
    /// facade (feature `metrics`), named as [`to_prometheus`](Self::to_prometheus) names
    /// them (`eventspool_committed_total`, `eventspool_sink_lag{sink="audit"}`), so any
    /// `metrics` exporter shows them. [`SpoolBuilder::record_metrics`] calls it on a
    /// timer.
    ///
    /// [`SpoolBuilder::record_metrics`]: crate::SpoolBuilder::record_metrics
    #[cfg(feature = "metrics")]
    pub fn record(&self) {
        self.samples(&mut |sample| {
            let name = format!("eventspool_{}", sample.name);
            let labels: Vec<metrics::Label> = sample
                .label
                .map(|(key, value)| metrics::Label::new(key, value.to_owned()))
                .into_iter()
                .collect();
            match sample.kind {
                Kind::Counter => metrics::counter!(name, labels).absolute(sample.value as u64),
                Kind::Gauge => metrics::gauge!(name, labels).set(sample.value),
            }
        });
    }

    /// Every value of the snapshot, metric by metric (the labelled ones item by item).
    fn samples<'a>(&'a self, each: &mut dyn FnMut(Sample<'a>)) {
        let counters = [
            ("emitted_total", "Events handed to the spool.", self.emitted),
            ("committed_total", "Events committed.", self.committed),
            (
                "filtered_total",
                "Events dropped by the filter.",
                self.filtered,
            ),
            (
                "dropped_overflow_total",
                "Events dropped on a full channel.",
                self.dropped_overflow,
            ),
            (
                "rejected_total",
                "Events refused with an error.",
                self.rejected,
            ),
            (
                "abandoned_total",
                "Events uncommitted when close timed out.",
                self.abandoned,
            ),
            ("evicted_total", "Events evicted by the caps.", self.evicted),
            ("commit_errors_total", "Failed commits.", self.commit_errors),
            (
                "dead_letters_evicted_total",
                "Dead letters evicted by their caps.",
                self.dead_letters_evicted,
            ),
            ("batches_total", "Committed batches.", self.batches),
        ];
        for (name, help, value) in counters {
            each(Sample::plain(name, help, Kind::Counter, value as f64));
        }
        let gauges = [
            (
                "pending_retry",
                "Events held for a commit retry.",
                self.pending_retry as f64,
            ),
            (
                "stored_events",
                "Events in the file.",
                self.stored_events as f64,
            ),
            (
                "stored_bytes",
                "Bytes of events in the file.",
                self.stored_bytes as f64,
            ),
            (
                "last_seq",
                "Highest sequence number assigned.",
                self.last_seq as f64,
            ),
            (
                "dead_letters",
                "Dead letters kept.",
                self.dead_letters as f64,
            ),
            (
                "dead_letter_bytes",
                "Bytes of the dead letters kept.",
                self.dead_letter_bytes as f64,
            ),
            (
                "channel_depth",
                "Messages queued for the writer.",
                self.channel_depth as f64,
            ),
            (
                "mean_batch_size",
                "Mean events per batch.",
                self.mean_batch_size,
            ),
        ];
        for (name, help, value) in gauges {
            each(Sample::plain(name, help, Kind::Gauge, value));
        }
        let per_consumer: [Series<ConsumerMetrics>; 4] = [
            Series::gauge("consumer_position", "Last seq acknowledged.", |c| {
                c.position
            }),
            Series::gauge("consumer_lag", "Stored events after the position.", |c| {
                c.lag
            }),
            Series::counter(
                "consumer_evicted_total",
                "Events the caps evicted before the consumer acknowledged them.",
                |c| c.evicted,
            ),
            Series::gauge(
                "consumer_oldest_unacked_age_ms",
                "Age of the oldest event read and not acknowledged.",
                |c| c.oldest_unacked_age_ms,
            ),
        ];
        labelled(
            each,
            "consumer",
            &self.consumers,
            |c| &c.name,
            &per_consumer,
        );
        let per_sink: [Series<SinkMetrics>; 21] = [
            Series::counter(
                "sink_delivered_total",
                "Events acknowledged by the sink.",
                |s| s.delivered,
            ),
            Series::counter("sink_attempts_total", "Delivery attempts.", |s| s.attempts),
            Series::counter("sink_retries_total", "Repeated attempts.", |s| s.retries),
            Series::counter(
                "sink_failures_retryable_total",
                "Retryable failures.",
                |s| s.failures_retryable,
            ),
            Series::counter(
                "sink_failures_permanent_total",
                "Permanent failures.",
                |s| s.failures_permanent,
            ),
            Series::counter("sink_dead_lettered_total", "Events dead-lettered.", |s| {
                s.dead_lettered
            }),
            Series::counter(
                "sink_evicted_unsent_total",
                "Events evicted before delivery.",
                |s| s.evicted_unsent,
            ),
            Series::counter("sink_filtered_total", "Events skipped by type.", |s| {
                s.filtered
            }),
            Series::gauge("sink_lag", "Stored events not yet delivered.", |s| s.lag),
            Series::gauge(
                "sink_oldest_undelivered_age_ms",
                "Age of the oldest event in delivery.",
                |s| s.oldest_undelivered_age_ms,
            ),
            Series::gauge("sink_backoff_ms", "Wait before the next retry.", |s| {
                s.backoff_ms
            }),
            Series::counter(
                "sink_read_us_total",
                "Time spent reading events from the file, in microseconds.",
                |s| s.read_us,
            ),
            Series::counter(
                "sink_deliver_us_total",
                "Time spent delivering (encoding and sending), in microseconds.",
                |s| s.deliver_us,
            ),
            Series::counter(
                "sink_commit_us_total",
                "Time spent committing progress, in microseconds.",
                |s| s.commit_us,
            ),
            Series::gauge("sink_in_flight", "Requests in flight.", |s| s.in_flight),
            Series::gauge(
                "sink_concurrency_limit",
                "Requests that may be in flight.",
                |s| s.concurrency_limit,
            ),
            Series::gauge(
                "sink_rtt_us",
                "Moving average of request round trips, in microseconds.",
                |s| s.rtt_us,
            ),
            Series::counter(
                "sink_expired_total",
                "Events dead-lettered as older than max_age.",
                |s| s.expired,
            ),
            Series::counter(
                "sink_window_full_waits_total",
                "Times the window above the durable cursor was full.",
                |s| s.window_full_waits,
            ),
            Series::counter(
                "sink_rate_limit_waits_total",
                "Requests that waited for the rate limit.",
                |s| s.rate_limit_waits,
            ),
            Series::counter(
                "sink_already_delivered_total",
                "Re-sent events the destination recognised as delivered before.",
                |s| s.already_delivered,
            ),
        ];
        labelled(each, "sink", &self.sinks, |s| &s.name, &per_sink);
    }
}

/// Whether a metric only goes up (from the spool's open) or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One value of one metric: what `to_prometheus` prints on a line and `record` hands
/// to the facade.
struct Sample<'a> {
    /// The name after `eventspool_`.
    name: &'static str,
    help: &'static str,
    kind: Kind,
    /// The label that tells the items of a labelled metric apart.
    label: Option<(&'static str, &'a str)>,
    value: f64,
}

impl Sample<'_> {
    fn plain(name: &'static str, help: &'static str, kind: Kind, value: f64) -> Self {
        Sample {
            name,
            help,
            kind,
            label: None,
            value,
        }
    }
}

/// A metric with one value per item (sink or consumer), labelled with its name.
struct Series<T> {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    value: fn(&T) -> u64,
}

impl<T> Series<T> {
    fn counter(name: &'static str, help: &'static str, value: fn(&T) -> u64) -> Self {
        Series {
            name,
            help,
            kind: Kind::Counter,
            value,
        }
    }

    fn gauge(name: &'static str, help: &'static str, value: fn(&T) -> u64) -> Self {
        Series {
            name,
            help,
            kind: Kind::Gauge,
            value,
        }
    }
}

/// Each series for every item, labelled `key="<item name>"`; nothing without items.
fn labelled<'a, T>(
    each: &mut dyn FnMut(Sample<'a>),
    key: &'static str,
    items: &'a [T],
    name_of: fn(&T) -> &str,
    metrics: &[Series<T>],
) {
    for series in metrics {
        for item in items {
            each(Sample {
                name: series.name,
                help: series.help,
                kind: series.kind,
                label: Some((key, name_of(item))),
                value: (series.value)(item) as f64,
            });
        }
    }
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sink's live counters.
#[derive(Debug, Default)]
pub(crate) struct SinkCounters {
    pub(crate) name: String,
    pub(crate) delivered: AtomicU64,
    pub(crate) attempts: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) failures_retryable: AtomicU64,
    pub(crate) failures_permanent: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) evicted_unsent: AtomicU64,
    pub(crate) filtered: AtomicU64,
    pub(crate) cursor: AtomicU64,
    pub(crate) backoff_ms: AtomicU64,
    /// Timestamp of the oldest event being delivered; 0 when caught up.
    pub(crate) oldest_pending_ms: AtomicI64,
    /// Where the time goes, in ns: reading the file (mostly on the reader thread), in
    /// `deliver`, waiting for its progress to commit.
    pub(crate) read_ns: AtomicU64,
    pub(crate) deliver_ns: AtomicU64,
    pub(crate) commit_ns: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
    /// Of a concurrent sink (see [`SinkMetrics`]).
    pub(crate) in_flight: AtomicU64,
    pub(crate) concurrency_limit: AtomicU64,
    pub(crate) rtt_us: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) window_full_waits: AtomicU64,
    pub(crate) rate_limit_waits: AtomicU64,
    pub(crate) already_delivered: AtomicU64,
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
            lag: lag(r(&self.cursor), first_seq, last_seq),
            oldest_undelivered_age_ms: crate::time::age_ms(oldest),
            backoff_ms: r(&self.backoff_ms),
            read_us: r(&self.read_ns) / 1000,
            deliver_us: r(&self.deliver_ns) / 1000,
            commit_us: r(&self.commit_ns) / 1000,
            in_flight: r(&self.in_flight),
            concurrency_limit: r(&self.concurrency_limit),
            rtt_us: r(&self.rtt_us),
            expired: r(&self.expired),
            window_full_waits: r(&self.window_full_waits),
            rate_limit_waits: r(&self.rate_limit_waits),
            already_delivered: r(&self.already_delivered),
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
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
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
    /// replays at most the batch in flight (see [`Sink::commit_every`](crate::Sink::commit_every)).
    pub commit_us: u64,
    /// Requests in flight now.
    pub in_flight: u64,
    /// How many requests may be in flight now (1 for `Order::Total`; adaptive
    /// concurrency moves it).
    pub concurrency_limit: u64,
    /// The moving average of request round trips, in µs (concurrent sinks).
    pub rtt_us: u64,
    /// Events dead-lettered because they were older than `max_age` when their turn
    /// came (also counted in `dead_lettered`).
    pub expired: u64,
    /// Times the window was full: a slow or failing key held the durable cursor and
    /// nothing more could be dispatched.
    pub window_full_waits: u64,
    /// Requests that waited for the rate limit.
    pub rate_limit_waits: u64,
    /// Events the destination already had when they were delivered again (re-sends
    /// after a crash or a failed attempt that it recognised by their seq or id), among
    /// `delivered`. Only sinks that can tell count them (the broker sinks).
    pub already_delivered: u64,
    /// The last delivery error.
    pub last_error: Option<String>,
}

/// A registered consumer's counters (subscribers, `drain_to` sinks, retired sinks;
/// sinks of the spool are in [`SinkMetrics`]), in
/// [`MetricsSnapshot`](crate::MetricsSnapshot), whether a subscription is open or not.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ConsumerMetrics {
    /// The consumer's name.
    pub name: String,
    /// Whether a subscription of it is open now.
    pub open: bool,
    /// The last `seq` it acknowledged.
    pub position: SeqNo,
    /// The last `seq` it has read (its position when no subscription is open).
    pub read: SeqNo,
    /// Events the caps evicted before it acknowledged them, since the spool opened.
    pub evicted: u64,
    /// Stored events after its position.
    pub lag: u64,
    /// Age of the oldest event read and not acknowledged since the last ack that
    /// covered everything read, in ms (0 when everything read is acknowledged).
    pub oldest_unacked_age_ms: u64,
}
