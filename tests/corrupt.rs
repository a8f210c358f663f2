//! A stored row whose bytes were damaged: sinks quarantine it to their dead letters and
//! go on, subscriptions report it once and read on, queries fail with a clear error.

mod common;

use std::time::Duration;

use common::http::{Reply, Server};
use common::sinks::Collect;
use common::*;
use eventspool::{Backoff, Error, EventQuery, SeekPosition, Spool, WebhookSink};

const T: Duration = Duration::from_secs(20);

/// Stores events 0..3 (seq 1..=3), then damages the data of seq 2 behind the spool's back.
fn spool_with_a_damaged_row(path: &std::path::Path) -> TestResult {
    let spool = Spool::open(path)?;
    spool.append_batch((0..3).map(numbered).collect())?;
    spool.close(T)?;
    rusqlite::Connection::open(path)?.execute(
        "UPDATE events SET data = '{\"n\": 1, broken' WHERE seq = 2",
        [],
    )?;
    Ok(())
}

fn sink(server: &Server) -> WebhookSink {
    WebhookSink::new("hook", server.url()).backoff(Backoff::exponential(
        Duration::from_millis(5),
        Duration::from_millis(50),
    ))
}

#[test]
fn a_sink_quarantines_a_damaged_row_and_goes_on() -> TestResult {
    let (_dir, path) = temp_spool();
    let mut server = Server::with_script(|_| Reply::ok());
    server.down();
    {
        // The sink registers, then the events wait in the file while the receiver is down.
        let spool = Spool::builder(&path).sink(sink(&server)).open()?;
        spool.append_batch((0..3).map(numbered).collect())?;
        spool.close(Duration::from_millis(200))?;
    }
    rusqlite::Connection::open(&path)?
        .execute("UPDATE events SET data = 'not json' WHERE seq = 2", [])?;
    server.up();
    let spool = Spool::builder(&path).sink(sink(&server)).open()?;
    wait_until(T, "the sink caught up", || {
        spool.metrics().sinks[0].lag == 0
    });
    let got: Vec<u64> = server
        .requests()
        .iter()
        .map(|r| r.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        got,
        [1, 3],
        "the damaged row was not sent, the sink went on"
    );
    let dead = spool.dead_letters("hook", 10)?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event.seq, 2);
    assert!(
        dead[0].last_error.contains("corrupt row"),
        "{}",
        dead[0].last_error
    );
    assert_eq!(
        dead[0].event.data.get(),
        "\"not json\"",
        "the bytes, shown as a string"
    );
    assert_eq!(spool.metrics().sinks[0].dead_lettered, 1);

    // Requeued, it still cannot be delivered: it stays dead and blocks nothing.
    assert_eq!(spool.requeue_dead_letters("hook")?, 1);
    spool.append(numbered(3))?;
    wait_until(T, "the next event is delivered", || {
        server.requests().len() == 3
    });
    wait_until(T, "the damaged row is dead again", || {
        spool
            .dead_letters("hook", 10)
            .unwrap()
            .iter()
            .all(|d| !d.requeued)
    });
    assert_eq!(server.requests().len(), 3);
    Ok(())
}

#[test]
fn a_subscription_reports_a_damaged_row_once_and_reads_on() -> TestResult {
    let (_dir, path) = temp_spool();
    spool_with_a_damaged_row(&path)?;
    let spool = Spool::open(&path)?;
    let mut sub = spool.subscribe("c", SeekPosition::Beginning)?;
    assert_eq!(sub.next_timeout(T)?.map(|e| e.seq), Some(1));
    match sub.next_timeout(T) {
        Err(Error::CorruptEvent { seq: 2, reason }) => assert!(reason.contains("JSON"), "{reason}"),
        other => panic!("expected the damaged row to be reported, got {other:?}"),
    }
    assert_eq!(sub.next_timeout(T)?.map(|e| e.seq), Some(3));
    sub.ack(3)?;
    Ok(())
}

#[test]
fn drain_to_quarantines_a_damaged_row() -> TestResult {
    let (_dir, path) = temp_spool();
    spool_with_a_damaged_row(&path)?;
    let spool = Spool::open(&path)?;
    let mut sink = Collect {
        batch: 10,
        ..Collect::new("collect")
    };
    assert_eq!(spool.drain_to(&mut sink)?, 2);
    assert_eq!(sink.seqs(), [1, 3]);
    assert_eq!(spool.dead_letters("collect", 10)?[0].event.seq, 2);
    Ok(())
}

#[test]
fn a_query_over_a_damaged_row_fails_clearly() -> TestResult {
    let (_dir, path) = temp_spool();
    spool_with_a_damaged_row(&path)?;
    let spool = Spool::open(&path)?;
    let err = spool.query(&EventQuery::new()).unwrap_err();
    assert!(err.to_string().contains("not valid JSON"), "{err}");
    assert_eq!(spool.query(&EventQuery::new().after_seq(2))?.len(), 1);
    Ok(())
}
