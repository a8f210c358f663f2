//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod http;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use eventspool::{Event, EventQuery, Spool, StoredEvent};
use serde_json::json;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Polls `cond` until it holds or `timeout` passes; fails with `what` on timeout.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::yield_now();
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A temp dir and a spool path inside it.
pub fn temp_spool() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("events.db");
    (dir, path)
}

/// An event whose data records `n`.
pub fn numbered(n: u64) -> Event {
    Event::new("test.numbered", json!({ "n": n }))
}

/// Every stored event, in seq order.
pub fn all_events(spool: &Spool) -> Vec<StoredEvent> {
    spool
        .query(&EventQuery::new().limit(usize::MAX))
        .expect("query")
}

/// The `n` recorded by [`numbered`].
pub fn number_of(event: &StoredEvent) -> u64 {
    event.data_as::<serde_json::Value>().expect("json")["n"]
        .as_u64()
        .expect("n")
}
