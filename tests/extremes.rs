//! Extreme values through every API that takes them: `Duration::MAX` as a timeout,
//! `u64::MAX` and `i64` bounds as seqs and times, `usize::MAX` as sizes. Each gets an
//! answer or a clear error, never a panic, and nothing stored is lost.

mod common;

use std::time::Duration;

use common::delivery::{quick, wait_delivered};
use common::http::{Reply, Server};
use common::*;
use eventspool::{
    Backoff, Error, Event, EventQuery, Overflow, SeekPosition, Spool, SpoolConfig, WebhookSink,
};

const T: Duration = Duration::from_secs(60);

#[test]
fn duration_max_is_forever_wherever_a_timeout_is_taken() -> TestResult {
    let (_dir, path) = temp_spool();
    let server = Server::start();
    let spool = Spool::builder(&path)
        .flush_interval(Duration::MAX)
        .overflow(Overflow::BlockFor(Duration::MAX))
        .sink(
            WebhookSink::new("forever", server.url())
                .timeout(Duration::MAX)
                .backoff(Backoff::exponential(Duration::MAX, Duration::MAX)),
        )
        .open()?;
    spool.emit(numbered(0))?;
    spool.flush(Duration::MAX)?;
    assert_eq!(spool.append(numbered(1))?, 2);
    assert_eq!(wait_delivered(&server, 2), [1, 2]);

    let mut sub = spool.subscribe("reader", SeekPosition::Beginning)?;
    assert_eq!(sub.next_timeout(Duration::MAX)?.map(|e| e.seq), Some(1));
    let producer = {
        let spool = spool.clone();
        std::thread::spawn(move || spool.append(numbered(2)))
    };
    assert_eq!(sub.next_timeout(Duration::MAX)?.map(|e| e.seq), Some(2));
    assert_eq!(sub.next_timeout(Duration::MAX)?.map(|e| e.seq), Some(3));
    producer.join().expect("producer")?;
    drop(sub);

    spool.close(Duration::MAX)?;
    assert!(matches!(spool.emit(numbered(3)), Err(Error::Closed)));
    spool.close(Duration::MAX)?;
    drop(spool);
    let spool = Spool::open(&path)?;
    assert_eq!(spool.last_seq()?, 3, "closed cleanly: the file opens again");
    Ok(())
}

/// A retry that would wait forever is still interrupted by `close`.
#[test]
fn close_interrupts_a_backoff_of_duration_max() -> TestResult {
    let (_dir, path) = temp_spool();
    let server = Server::with_script(|_| Reply::status(503));
    let spool = Spool::builder(&path)
        .sink(quick("stuck", &server).backoff(Backoff::exponential(Duration::MAX, Duration::MAX)))
        .open()?;
    spool.append(numbered(0))?;
    server.wait_requests(1, T);
    let started = std::time::Instant::now();
    let _ = spool.close(Duration::from_millis(200))?;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn seqs_and_times_at_their_bounds() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::open(&path)?;
    spool.append_batch(vec![
        numbered(0).timestamp_ms(i64::MIN),
        numbered(1).timestamp_ms(i64::MAX),
        numbered(2),
    ])?;
    let seqs =
        |q: EventQuery| -> Vec<u64> { spool.query(&q).unwrap().iter().map(|e| e.seq).collect() };
    for after in [u64::MAX, 1 << 63, i64::MAX as u64, 3] {
        assert_eq!(
            seqs(EventQuery::new().after_seq(after)),
            [0u64; 0],
            "after {after}"
        );
    }
    assert_eq!(seqs(EventQuery::new().after_seq(0)), [1, 2, 3]);
    // `until_ms` is exclusive: the event at i64::MAX is after it.
    let all_times = EventQuery::new().since_ms(i64::MIN).until_ms(i64::MAX);
    assert_eq!(seqs(all_times), [1, 3]);
    assert_eq!(seqs(EventQuery::new().limit(usize::MAX)), [1, 2, 3]);
    assert_eq!(seqs(EventQuery::new().limit(0)), [0u64; 0]);

    for position in [SeekPosition::After(u64::MAX), SeekPosition::After(1 << 63)] {
        assert!(matches!(spool.seek("c", position), Err(Error::Consumer(_))));
    }
    spool.seek("c", SeekPosition::Beginning)?;
    assert!(matches!(spool.ack("c", u64::MAX), Err(Error::Consumer(_))));
    let info = &spool.consumers()?[0];
    assert_eq!(info.lag, 3);
    assert!(
        info.oldest_unacked_age_ms > 0,
        "an event from the far past: {info:?}"
    );
    assert_eq!(spool.dead_letters("none", usize::MAX)?.len(), 0);
    let mut sub = spool.subscribe("c", SeekPosition::LastAcknowledged)?;
    for _ in 0..3 {
        sub.try_next()?;
    }
    let m = spool.metrics();
    assert!(m.consumers[0].oldest_unacked_age_ms > 0, "{m:?}");
    drop(sub);
    assert_eq!(spool.len()?, 3, "nothing stored was lost");
    Ok(())
}

#[test]
fn sizes_at_their_bounds_are_taken_or_refused_clearly() -> TestResult {
    let (_dir, path) = temp_spool();
    // Caps at their largest are no caps.
    let spool = Spool::builder(&path)
        .max_events(u64::MAX)
        .max_bytes(u64::MAX)
        .max_event_bytes(u64::MAX)
        .max_file_bytes(u64::MAX)
        .reader_pool_size(u32::MAX)
        .open()?;
    spool.append(numbered(0))?;
    spool.close(T)?;
    drop(spool);
    // Sizes that would allocate without bound up front are refused.
    for (what, builder) in [
        ("batch_size", Spool::builder(&path).batch_size(usize::MAX)),
        (
            "channel_capacity",
            Spool::builder(&path).channel_capacity(usize::MAX),
        ),
        (
            "batch",
            Spool::builder(&path)
                .sink(WebhookSink::new("w", "http://127.0.0.1:9/").batch(usize::MAX)),
        ),
    ] {
        match builder.open() {
            Err(Error::InvalidConfig(msg)) => assert!(msg.contains(what), "{what}: {msg}"),
            other => panic!("{what} = MAX: {other:?}"),
        }
    }
    let mut config = SpoolConfig::new(&path);
    config.batch_size = usize::MAX;
    assert!(matches!(config.validate(), Err(Error::InvalidConfig(_))));
    let spool = Spool::open(&path)?;
    assert_eq!(spool.len()?, 1, "nothing stored was lost");
    assert_eq!(spool.append(Event::new("t", 1))?, 2);
    Ok(())
}
