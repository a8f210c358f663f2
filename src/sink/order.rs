//! How a sink's deliveries may run side by side: [`Order`], [`Concurrency`], and the
//! window that bounds what a crash replays.

use serde::Deserialize;

/// Default for [`Sink::window`](crate::Sink::window): at most 1024 events are
/// dispatched above a concurrent sink's durable cursor, so a crash replays at most
/// that many.
pub const DEFAULT_WINDOW: usize = 1024;

/// In what order a sink receives events.
///
/// In a config file: `"total"`, `"per_key"` or `"unordered"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// In `seq` order, one request in flight at a time (the default).
    #[default]
    Total,
    /// Events with the same key in `seq` order, never two requests of one key in
    /// flight at once; different keys in parallel. The key is the event's subject
    /// unless the sink says otherwise ([`Sink::key`](crate::Sink::key)); events without
    /// one share a key.
    PerKey,
    /// In any order, as many in flight as the concurrency allows.
    Unordered,
}

/// How many requests a sink may have in flight.
///
/// In a config file: a number (`16`), or `{"adaptive": 64}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Concurrency {
    /// At most this many (the default is 1).
    Fixed(usize),
    /// As many as the receiver takes, found as it goes, up to `max`: one more each
    /// round trip while round-trip times stay flat, half as many on back-pressure
    /// (429, 503, timeouts, connection errors, round trips well above their average).
    Adaptive {
        /// The most it may grow to.
        #[serde(rename = "adaptive")]
        max: usize,
    },
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency::Fixed(1)
    }
}

impl Concurrency {
    /// The most requests it lets in flight.
    pub fn max(&self) -> usize {
        match *self {
            Concurrency::Fixed(n) | Concurrency::Adaptive { max: n } => n,
        }
    }
}
