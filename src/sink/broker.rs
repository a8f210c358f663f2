//! What the broker sinks (Redis, NATS, Kafka) share: their delivery settings, the
//! setters that change them and the [`Sink`](super::Sink) methods that read them. The
//! macros write those into each sink's own `impl` blocks, so each keeps its builder
//! API and its documentation names its own defaults.

use std::time::Duration;

use super::{Backoff, DEFAULT_BACKOFF, DEFAULT_BROKER_COMMIT_EVERY, DEFAULT_MAX_RETRIES};

/// Round trips one `deliver` call of a sink with `in_flight` of them pipelined (NATS,
/// Kafka) carries: the pipeline drains at the end of each call (its cursor commit waits
/// for all), so a call holds four times what is in flight.
pub(crate) fn round_trips_per_call(in_flight: usize) -> usize {
    in_flight.max(1).saturating_mul(4)
}

/// How a broker sink delivers: per round trip, per commit, how long, how often again,
/// and which events.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) batch: usize,
    pub(crate) commit_every: usize,
    pub(crate) timeout: Duration,
    pub(crate) max_retries: Option<u32>,
    pub(crate) backoff: Backoff,
    pub(crate) event_types: Vec<String>,
}

impl Settings {
    /// The defaults, with the sink's own batch and timeout.
    pub(crate) fn new(batch: usize, timeout: Duration) -> Settings {
        Settings {
            batch,
            commit_every: DEFAULT_BROKER_COMMIT_EVERY,
            timeout,
            max_retries: DEFAULT_MAX_RETRIES,
            backoff: DEFAULT_BACKOFF,
            event_types: Vec::new(),
        }
    }

    /// What `open` checks of them, for the sink `name`.
    pub(crate) fn check(&self, name: &str) -> Result<(), String> {
        if self.timeout.is_zero() {
            return Err(format!("sink {name}: timeout must be more than zero"));
        }
        self.backoff
            .check()
            .map_err(|e| format!("sink {name}: {e}"))
    }
}

/// The setters of [`Settings`] for a sink with a `settings` field. `$unit` is what a
/// round trip carries, `$batch` and `$timeout` the sink's default constants, `$bounds`
/// what its timeout bounds.
macro_rules! setters {
    (unit: $unit:literal, batch: $batch:ident, timeout: $timeout:ident, bounds: $bounds:literal) => {
        #[doc = concat!(
                    $unit, " per round trip, at most [`MAX_SINK_BATCH`](crate::MAX_SINK_BATCH). ",
                    "Defaults to [`", stringify!($batch), "`]."
                )]
        pub fn batch(mut self, n: usize) -> Self {
            self.settings.batch = n;
            self
        }

        /// After how many round trips the sink's cursor is committed (see
        /// [`Sink::commit_every`](crate::Sink::commit_every)): a crash re-sends at most
        /// that many, which the destination recognises, so committing less often costs
        /// only the re-sending. Defaults to
        /// [`DEFAULT_BROKER_COMMIT_EVERY`](crate::DEFAULT_BROKER_COMMIT_EVERY).
        pub fn commit_every(mut self, n: usize) -> Self {
            self.settings.commit_every = n;
            self
        }

        #[doc = concat!(
                    "How long ", $bounds, " may take. Defaults to [`", stringify!($timeout), "`]."
                )]
        pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
            self.settings.timeout = timeout;
            self
        }

        /// Retries before events are dead-lettered; `None` retries forever. Defaults to
        /// [`DEFAULT_MAX_RETRIES`](crate::DEFAULT_MAX_RETRIES).
        pub fn max_retries(mut self, n: Option<u32>) -> Self {
            self.settings.max_retries = n;
            self
        }

        /// The wait between retries. Defaults to
        /// [`DEFAULT_BACKOFF`](crate::DEFAULT_BACKOFF).
        pub fn backoff(mut self, backoff: crate::Backoff) -> Self {
            self.settings.backoff = backoff;
            self
        }

        /// Only events of these types (a trailing `*` matches a prefix). Defaults to all.
        pub fn event_types<I, S>(mut self, types: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.settings.event_types = types.into_iter().map(Into::into).collect();
            self
        }

        /// All of the settings at once (from a configuration).
        pub(crate) fn with_settings(mut self, settings: crate::sink::broker::Settings) -> Self {
            self.settings = settings;
            self
        }
    };
}

/// The [`Sink`](super::Sink) methods that read [`Settings`] (and the sink's
/// `already_delivered` count), for `impl Sink`; a sink that pipelines round trips names
/// its `in_flight` field, and each `deliver` call carries several round trips.
macro_rules! sink_methods {
    () => {
        crate::sink::broker::sink_methods!(@calls |_sink| 1);
    };
    (in_flight: $in_flight:ident) => {
        crate::sink::broker::sink_methods!(
            @calls |sink| crate::sink::broker::round_trips_per_call(sink.$in_flight)
        );
    };
    (@calls |$sink:ident| $calls:expr) => {
        fn take_already_delivered(&mut self) -> u64 {
            std::mem::take(&mut self.already_delivered)
        }

        fn batch_size(&self) -> usize {
            let $sink = self;
            self.settings
                .batch
                .saturating_mul($calls)
                .min(crate::MAX_SINK_BATCH)
        }

        // Counted in round trips: rounded up to whole calls of `$calls`.
        fn commit_every(&self) -> usize {
            let $sink = self;
            self.settings.commit_every.div_ceil($calls)
        }

        fn max_retries(&self) -> Option<u32> {
            self.settings.max_retries
        }

        fn backoff(&self) -> crate::Backoff {
            self.settings.backoff
        }

        fn accepts(&self, event_type: &str) -> bool {
            crate::event::matches_any(&self.settings.event_types, event_type)
        }
    };
}

pub(crate) use {setters, sink_methods};
