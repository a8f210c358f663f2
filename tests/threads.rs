//! Threads left behind: once `close` returns, none of the spool's threads remains
//! (a program that opens spools in a loop, or unloads the library, must not collect
//! them). Alone in its binary, so the count is this test's own.

mod common;

use std::time::Duration;

use common::http::Server;
use common::*;
use eventspool::{EventQuery, SeekPosition, Spool, WebhookSink};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

fn names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

#[test]
fn no_thread_of_a_spool_remains_after_close() -> TestResult {
    let server = Server::start();
    let (_dir, path) = temp_spool();
    let before = threads();
    for n in 0..50 {
        let spool = Spool::builder(&path)
            .sink(WebhookSink::new("hook", server.url()))
            .open()?;
        spool.append(numbered(n))?;
        let mut sub = spool.subscribe("reader", SeekPosition::LastAcknowledged)?;
        sub.try_next()?;
        spool.query(&EventQuery::new())?;
        drop(sub);
        spool.close(Duration::from_secs(10))?;
        assert_eq!(threads(), before, "after close #{n}: {:?}", names());
        // Queries still work on a closed spool, and start no thread either.
        assert_eq!(spool.last_seq()?, n + 1);
        assert_eq!(
            threads(),
            before,
            "after a query on a closed spool: {:?}",
            names()
        );
        drop(spool);
    }
    // A concurrent sink starts request threads as it needs them and gives them back
    // when idle: a writer, a checkpointer, a worker and a reader stay.
    let spool = Spool::builder(&path)
        .sink(
            WebhookSink::new("fan-out", server.url())
                .order(eventspool::Order::Unordered)
                .concurrency(eventspool::Concurrency::Fixed(8)),
        )
        .open()?;
    spool.append_batch((0..400).map(numbered).collect())?;
    wait_until(Duration::from_secs(60), "the events are delivered", || {
        spool.metrics().sinks[0].delivered == 400
    });
    assert!(threads() > before + 4, "request threads ran: {:?}", names());
    wait_until(
        Duration::from_secs(30),
        "the request threads end when idle",
        || threads() == before + 4,
    );
    spool.close(Duration::from_secs(10))?;
    assert_eq!(threads(), before, "after close: {:?}", names());
    drop(spool);
    // Spools never closed, only dropped: the same.
    for n in 50..60 {
        let spool = Spool::open(&path)?;
        spool.append(numbered(n))?;
        drop(spool);
        assert_eq!(threads(), before, "after drop #{n}: {:?}", names());
    }
    Ok(())
}
