//! `drain_to`: manual FIFO replay through a user's sink, with a durable cursor.

mod common;

use std::time::Duration;

const T: Duration = Duration::from_secs(10);

use common::*;
use eventspool::{DeliveryError, Error, Sink, Spool, StoredEvent};

/// Records what it receives; fails once when it meets `fail_at`.
struct Flaky {
    name: &'static str,
    seen: Vec<u64>,
    fail_at: Option<u64>,
    batch: usize,
}

impl Flaky {
    fn new(name: &'static str) -> Self {
        Flaky {
            name,
            seen: Vec::new(),
            fail_at: None,
            batch: 1,
        }
    }
}

impl Sink for Flaky {
    fn name(&self) -> &str {
        self.name
    }
    fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
        if let Some(n) = self.fail_at
            && events.iter().any(|e| number_of(e) == n)
        {
            self.fail_at = None;
            return Err(DeliveryError::retryable(format!("receiver down at {n}")));
        }
        self.seen.extend(events.iter().map(number_of));
        Ok(())
    }
    fn batch_size(&self) -> usize {
        self.batch
    }
}

#[test]
fn drain_stops_at_the_first_failure_and_resumes_in_order() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::open(&path)?;
    spool.append_batch((0..10).map(numbered).collect())?;
    let mut sink = Flaky {
        fail_at: Some(5),
        ..Flaky::new("flaky")
    };
    match spool.drain_to(&mut sink) {
        Err(Error::Delivery { delivered, source }) => {
            assert_eq!(delivered, 5);
            assert!(source.is_retryable());
        }
        other => panic!("expected a delivery error, got {other:?}"),
    }
    assert_eq!(sink.seen, [0, 1, 2, 3, 4]);
    assert_eq!(spool.drain_to(&mut sink)?, 5);
    assert_eq!(
        sink.seen,
        (0..10).collect::<Vec<_>>(),
        "each once, in order"
    );
    Ok(())
}

#[test]
fn a_failed_batch_is_delivered_again_whole() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::open(&path)?;
    spool.append_batch((0..10).map(numbered).collect())?;
    let mut sink = Flaky {
        fail_at: Some(5),
        batch: 4,
        ..Flaky::new("batched")
    };
    assert!(spool.drain_to(&mut sink).is_err());
    assert_eq!(
        sink.seen,
        [0, 1, 2, 3],
        "batch 4..8 failed and was not acknowledged"
    );
    assert_eq!(spool.drain_to(&mut sink)?, 6);
    assert_eq!(sink.seen, (0..10).collect::<Vec<_>>());
    Ok(())
}

#[test]
fn the_cursor_survives_a_restart() -> TestResult {
    let (_dir, path) = temp_spool();
    {
        let spool = Spool::open(&path)?;
        spool.append_batch((0..10).map(numbered).collect())?;
        assert_eq!(spool.drain_to(&mut Flaky::new("s"))?, 10);
        spool.append_batch((10..15).map(numbered).collect())?;
    }
    let spool = Spool::open(&path)?;
    let mut sink = Flaky::new("s");
    assert_eq!(
        spool.drain_to(&mut sink)?,
        5,
        "acknowledged events are not resent"
    );
    assert_eq!(sink.seen, [10, 11, 12, 13, 14]);
    Ok(())
}

#[test]
fn events_are_deleted_once_every_consumer_acknowledged_them() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::open(&path)?;
    let mut fast = Flaky::new("fast");
    let mut slow = Flaky {
        fail_at: Some(4),
        ..Flaky::new("slow")
    };
    // Registered before anything is stored: both hold back every later event.
    assert_eq!(spool.drain_to(&mut fast)? + spool.drain_to(&mut slow)?, 0);
    spool.append_batch((0..10).map(numbered).collect())?;
    assert!(spool.drain_to(&mut slow).is_err());
    assert_eq!(spool.drain_to(&mut fast)?, 10);
    // `slow` acknowledged 0..4 (seq 1..=4): only those go (once the writer is idle).
    wait_until(T, "acknowledged events are deleted", || {
        spool.len().unwrap() == 6
    });
    assert_eq!(all_events(&spool)[0].seq, 5);
    assert_eq!(spool.drain_to(&mut slow)?, 6);
    wait_until(T, "acknowledged events are deleted", || {
        spool.len().unwrap() == 0
    });
    assert_eq!(spool.last_seq()?, 10);
    assert_eq!(spool.metrics().evicted, 0, "consumed is not evicted");
    // A consumer registered after the others consumed everything starts with the
    // oldest stored event: there is none left to replay.
    assert_eq!(spool.drain_to(&mut Flaky::new("late"))?, 0);
    spool.close(Duration::from_secs(5))?;
    let spool = Spool::open(&path)?;
    assert_eq!(spool.append(numbered(10))?, 11);
    Ok(())
}

#[test]
fn caps_still_evict_what_a_lagging_consumer_has_not_read() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::builder(&path).max_events(5).open()?;
    spool.append(numbered(0))?;
    let mut lagging = Flaky::new("lagging");
    assert_eq!(spool.drain_to(&mut lagging)?, 1);
    spool.append_batch((1..20).map(numbered).collect())?;
    assert_eq!(spool.len()?, 5);
    assert_eq!(spool.metrics().evicted, 14);
    assert_eq!(spool.drain_to(&mut lagging)?, 5);
    assert_eq!(lagging.seen, [0, 15, 16, 17, 18, 19]);
    Ok(())
}

/// `drain_to` applies the sink's own type filter and configuration check, as a sink
/// added to the builder does: a webhook that takes only `audit.*` never posts the rest,
/// and one with a bad URL is refused before anything is read.
#[test]
fn drain_applies_the_sinks_filter_and_check() -> TestResult {
    use common::http::Server;
    use eventspool::{Event, WebhookSink};
    let (_dir, path) = temp_spool();
    let spool = Spool::open(&path)?;
    for t in ["audit.login", "debug.noise", "audit.logout", "debug.noise"] {
        spool.append(Event::new(t, 1))?;
    }
    let server = Server::start();
    let mut hook = WebhookSink::new("audit-replay", server.url()).event_types(["audit.*"]);
    assert_eq!(spool.drain_to(&mut hook)?, 2);
    let types: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(types, ["audit.login", "audit.logout"]);
    assert_eq!(
        spool.drain_to(&mut hook)?,
        0,
        "the cursor moved past the rest"
    );
    let audit = spool.consumers()?;
    assert_eq!(audit[0].position, 4);

    let mut bad = WebhookSink::new("bad-url", "ftp://example.test/hook");
    match spool.drain_to(&mut bad) {
        Err(Error::InvalidConfig(msg)) => assert!(msg.contains("bad-url"), "{msg}"),
        other => panic!("a sink with a bad URL drained: {other:?}"),
    }
    assert_eq!(
        spool.consumers()?.len(),
        1,
        "the refused sink was not registered"
    );
    Ok(())
}
