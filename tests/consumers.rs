//! Consumer groups: subscribe, ack, seek, replay, positions across restarts, deletion.

mod common;

use std::time::Duration;

use common::*;
use eventspool::{ConsumerKind, Error, SeekPosition, Spool, Subscription};

const T: Duration = Duration::from_secs(10);

fn read_n(sub: &mut Subscription, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| sub.next_timeout(T).unwrap().expect("an event in time").seq)
        .collect()
}

fn spool_with(path: &std::path::Path, n: u64) -> Result<Spool, Error> {
    let spool = Spool::open(path)?;
    spool.append_batch((0..n).map(numbered).collect())?;
    Ok(spool)
}

#[test]
fn seq_numbers_are_sequential_and_last_seq_follows() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::open(&path)?;
    assert_eq!(spool.last_seq()?, 0);
    assert_eq!(
        spool.append_batch((0..3).map(numbered).collect())?,
        [1, 2, 3]
    );
    assert_eq!(spool.last_seq()?, 3);
    Ok(())
}

#[test]
fn subscribe_from_beginning_latest_and_after() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = spool_with(&path, 5)?;
    let mut from_start = spool.subscribe("a", SeekPosition::Beginning)?;
    assert_eq!(read_n(&mut from_start, 5), [1, 2, 3, 4, 5]);
    let mut latest = spool.subscribe("b", SeekPosition::Latest)?;
    assert_eq!(
        latest.try_next()?,
        None,
        "only events committed after the call"
    );
    let mut after = spool.subscribe("c", SeekPosition::After(3))?;
    assert_eq!(read_n(&mut after, 2), [4, 5]);
    spool.append(numbered(5))?;
    assert_eq!(read_n(&mut latest, 1), [6]);
    assert_eq!(read_n(&mut from_start, 1), [6]);
    assert!(matches!(
        spool.subscribe("d", SeekPosition::After(99)),
        Err(Error::Consumer(_))
    ));
    Ok(())
}

#[test]
fn a_new_consumer_starts_at_the_beginning_and_consumers_are_independent() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = spool_with(&path, 4)?;
    let mut a = spool.subscribe("a", SeekPosition::LastAcknowledged)?;
    let mut b = spool.subscribe("b", SeekPosition::LastAcknowledged)?;
    assert_eq!(read_n(&mut a, 4), [1, 2, 3, 4]);
    a.ack(4)?;
    assert_eq!(read_n(&mut b, 2), [1, 2], "b reads at its own pace");
    b.ack(1)?;
    let positions: Vec<(String, u64, u64)> = spool
        .consumers()?
        .into_iter()
        .map(|c| (c.name, c.position, c.lag))
        .collect();
    assert_eq!(positions, [("a".into(), 4, 0), ("b".into(), 1, 3)]);
    Ok(())
}

#[test]
fn ack_advances_and_the_position_survives_a_restart() -> TestResult {
    let (_dir, path) = temp_spool();
    {
        let spool = spool_with(&path, 10)?;
        let mut sub = spool.subscribe("billing", SeekPosition::LastAcknowledged)?;
        assert_eq!(read_n(&mut sub, 6), [1, 2, 3, 4, 5, 6]);
        sub.ack(4)?; // read 6, handled 4
        assert_eq!(sub.position(), 4);
        spool.close(T)?;
    }
    let spool = Spool::open(&path)?;
    let mut sub = spool.subscribe("billing", SeekPosition::LastAcknowledged)?;
    assert_eq!(
        read_n(&mut sub, 6),
        [5, 6, 7, 8, 9, 10],
        "resumes after the last ack"
    );
    Ok(())
}

#[test]
fn seek_repositions_and_agrees_with_subscribe() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = spool_with(&path, 10)?;
    assert_eq!(spool.seek("x", SeekPosition::After(7))?, 7);
    let via_seek = read_n(
        &mut spool.subscribe("x", SeekPosition::LastAcknowledged)?,
        3,
    );
    let via_subscribe = read_n(&mut spool.subscribe("y", SeekPosition::After(7))?, 3);
    assert_eq!(via_seek, [8, 9, 10]);
    assert_eq!(via_seek, via_subscribe);

    {
        let mut sub = spool.subscribe("x", SeekPosition::LastAcknowledged)?;
        assert_eq!(read_n(&mut sub, 3), [8, 9, 10]);
        sub.ack(10)?;
    }
    // Replay: seek back to the beginning, even behind the last ack.
    assert_eq!(spool.seek("x", SeekPosition::Beginning)?, 0);
    let mut sub = spool.subscribe("x", SeekPosition::LastAcknowledged)?;
    assert_eq!(read_n(&mut sub, 2), [1, 2]);
    drop(sub);
    assert_eq!(spool.seek("x", SeekPosition::Latest)?, 10);
    let mut sub = spool.subscribe("x", SeekPosition::LastAcknowledged)?;
    assert_eq!(sub.try_next()?, None);
    Ok(())
}

#[test]
fn replay_then_live() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = spool_with(&path, 3)?;
    let mut sub = spool.subscribe("live", SeekPosition::Beginning)?;
    assert_eq!(read_n(&mut sub, 3), [1, 2, 3]);
    assert_eq!(
        sub.next_timeout(Duration::from_millis(20))?,
        None,
        "caught up"
    );
    let producer = {
        let spool = spool.clone();
        std::thread::spawn(move || spool.emit(numbered(3)))
    };
    assert_eq!(read_n(&mut sub, 1), [4], "woken by the commit");
    producer.join().unwrap()?;
    Ok(())
}

#[test]
fn no_lost_wake_up_with_a_concurrent_producer_and_consumer() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::open(&path)?;
    let mut sub = spool.subscribe("c", SeekPosition::LastAcknowledged)?;
    let consumer = std::thread::spawn(move || {
        let mut seen = Vec::with_capacity(10_000);
        while seen.len() < 10_000 {
            let e = sub.next_timeout(T).unwrap().expect("no wake-up lost");
            seen.push(number_of(&e));
            if seen.len() % 100 == 0 {
                sub.ack(e.seq).unwrap();
            }
        }
        seen
    });
    for n in 0..10_000 {
        spool.emit(numbered(n))?;
    }
    let seen = consumer.join().unwrap();
    assert_eq!(
        seen,
        (0..10_000).collect::<Vec<_>>(),
        "every event once, in order"
    );
    Ok(())
}

#[test]
fn acks_must_move_forward_within_what_was_read() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = spool_with(&path, 5)?;
    let mut sub = spool.subscribe("c", SeekPosition::LastAcknowledged)?;
    read_n(&mut sub, 3);
    let ahead = sub.ack(4).unwrap_err();
    assert!(
        ahead.to_string().contains("ahead of what it has read"),
        "{ahead}"
    );
    sub.ack(3)?;
    let back = sub.ack(2).unwrap_err();
    assert!(back.to_string().contains("goes back"), "{back}");
    sub.ack(3)?; // the same position again is fine
    // Through the spool, for the same consumer: the same rules.
    assert!(matches!(spool.ack("c", 1), Err(Error::Consumer(_))));
    assert!(matches!(spool.ack("c", 5), Err(Error::Consumer(_))));
    assert!(matches!(spool.ack("nobody", 1), Err(Error::Consumer(_))));
    Ok(())
}

#[test]
fn one_open_subscription_per_consumer() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = spool_with(&path, 1)?;
    let sub = spool.subscribe("c", SeekPosition::LastAcknowledged)?;
    let err = spool
        .subscribe("c", SeekPosition::LastAcknowledged)
        .unwrap_err();
    assert!(
        err.to_string().contains("already has an open subscription"),
        "{err}"
    );
    assert!(spool.seek("c", SeekPosition::Beginning).is_err());
    assert!(spool.remove_consumer("c").is_err());
    drop(sub);
    spool.subscribe("c", SeekPosition::LastAcknowledged)?;
    Ok(())
}

#[test]
fn events_are_deleted_only_when_every_consumer_acked_and_removal_releases() -> TestResult {
    // Acknowledging 2000 events (more than the writer deletes per transaction) deletes them in a
    // transaction of their own right after the ack's.
    let (_dir, path) = temp_spool();
    let spool = Spool::open(&path)?;
    let mut fast = spool.subscribe("fast", SeekPosition::LastAcknowledged)?;
    spool.append_batch((0..2000).map(numbered).collect())?;
    read_n(&mut fast, 2000);
    fast.ack(2000)?;
    wait_until(T, "the only consumer acknowledged everything", || {
        spool.len().unwrap() == 0
    });

    let slow = spool.subscribe("slow", SeekPosition::LastAcknowledged)?;
    spool.append_batch((0..2000).map(numbered).collect())?;
    read_n(&mut fast, 2000);
    fast.ack(4000)?;
    assert_eq!(
        spool.len()?,
        2000,
        "slow acknowledged nothing: everything stays"
    );
    drop(slow);
    assert!(spool.remove_consumer("slow")?);
    assert!(!spool.remove_consumer("slow")?);
    wait_until(T, "the removed consumer's events are released", || {
        spool.len().unwrap() == 0
    });
    assert_eq!(spool.last_seq()?, 4000);
    Ok(())
}

#[test]
fn a_subscription_ends_when_the_spool_closes() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = spool_with(&path, 2)?;
    let sub = spool.subscribe("c", SeekPosition::LastAcknowledged)?;
    let reader = std::thread::spawn(move || sub.map(|e| e.unwrap().seq).collect::<Vec<_>>());
    wait_until(T, "the reader is waiting for more", || {
        spool
            .metrics()
            .consumers
            .first()
            .is_some_and(|c| c.read == 2)
    });
    spool.close(T)?;
    assert_eq!(
        reader.join().unwrap(),
        [1, 2],
        "the iterator ended at close"
    );
    Ok(())
}

#[test]
fn consumer_metrics_report_position_lag_and_age() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = spool_with(&path, 5)?;
    let mut sub = spool.subscribe("c", SeekPosition::LastAcknowledged)?;
    read_n(&mut sub, 3);
    sub.ack(2)?;
    let m = &spool.metrics().consumers[0];
    assert_eq!((m.name.as_str(), m.position, m.read, m.lag), ("c", 2, 3, 3));
    assert!(
        spool
            .metrics()
            .to_prometheus()
            .contains("eventspool_consumer_lag{consumer=\"c\"} 3")
    );
    Ok(())
}

#[test]
fn the_position_survives_kill_9() -> TestResult {
    if let Ok(path) = std::env::var("EVENTSPOOL_CONSUMER_CHILD") {
        // Child: read and ack one event at a time, reporting each ack on stdout.
        let spool = Spool::open(&path)?;
        let mut sub = spool.subscribe("c", SeekPosition::LastAcknowledged)?;
        while let Some(e) = sub.next() {
            let seq = e?.seq;
            sub.ack(seq)?;
            println!("acked {seq}");
        }
        return Ok(());
    }
    let (_dir, path) = temp_spool();
    spool_with(&path, 5_000)?.close(T)?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--exact", "the_position_survives_kill_9", "--nocapture"])
        .env("EVENTSPOOL_CONSUMER_CHILD", &path)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut last_acked = 0;
    let mut line = String::new();
    while last_acked < 300 {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line)? > 0,
            "child ended early"
        );
        if let Some(seq) = line.trim().strip_prefix("acked ") {
            last_acked = seq.parse()?;
        }
    }
    child.kill()?; // SIGKILL
    child.wait()?;
    let spool = Spool::open(&path)?;
    let position = spool.consumers()?[0].position;
    assert!(
        position >= last_acked,
        "position {position} lost an ack ({last_acked})"
    );
    let mut sub = spool.subscribe("c", SeekPosition::LastAcknowledged)?;
    assert_eq!(
        read_n(&mut sub, 1),
        [position + 1],
        "resumes right after the position"
    );
    Ok(())
}

/// One namespace: a name that is a sink of this spool cannot be subscribed, sought,
/// acknowledged, drained or removed through the consumer APIs, whatever kind the file
/// had recorded for it before; its events wait for it.
#[test]
fn a_sinks_cursor_cannot_be_moved_through_the_consumer_apis() -> TestResult {
    use common::delivery::wait_delivered;
    use common::http::Server;
    let (_dir, path) = temp_spool();
    // Run 1: "billing" is a consumer group, at the latest event.
    let spool = spool_with(&path, 3)?;
    spool.seek("billing", SeekPosition::Latest)?;
    spool.close(T)?;
    drop(spool);

    // Run 2: "billing" is a sink whose receiver is down.
    let mut server = Server::start();
    server.down();
    let url = server.url();
    let sink = || common::delivery::quick_at("billing", url.clone()).max_retries(None);
    let spool = Spool::builder(&path).sink(sink()).open()?;
    spool.append_batch((3..53).map(numbered).collect())?;
    let refused = |what: &str, result: Result<(), Error>| match result {
        Err(Error::Consumer(msg)) => assert!(msg.contains("billing"), "{what}: {msg}"),
        other => panic!("{what} on a sink's name: {other:?}"),
    };
    refused(
        "subscribe",
        spool
            .subscribe("billing", SeekPosition::LastAcknowledged)
            .map(drop),
    );
    refused(
        "seek",
        spool.seek("billing", SeekPosition::Latest).map(drop),
    );
    refused("ack", spool.ack("billing", 53));
    refused(
        "remove_consumer",
        spool.remove_consumer("billing").map(drop),
    );
    refused(
        "drain_to",
        spool
            .drain_to(&mut common::sinks::Collect::new("billing"))
            .map(drop),
    );
    let kinds: Vec<_> = spool
        .consumers()?
        .into_iter()
        .map(|c| (c.name, c.kind))
        .collect();
    assert_eq!(kinds, [("billing".to_owned(), ConsumerKind::Sink)]);
    let _ = spool.close(Duration::from_millis(100));
    drop(spool);

    // Run 3: the receiver is back and gets all 50.
    server.up();
    let spool = Spool::builder(&path).sink(sink()).open()?;
    assert_eq!(wait_delivered(&server, 50), (4..=53).collect::<Vec<_>>());
    wait_until(T, "the deliveries are counted", || {
        spool.metrics().sinks[0].delivered == 50
    });
    let m = spool.metrics().sinks.remove(0);
    assert_eq!(m.evicted_unsent, 0, "{m:?}");
    Ok(())
}

/// A sink dropped from the configuration is listed as retired, named in a warning at
/// open while it holds events back, and can be sought or removed.
#[test]
fn a_retired_sink_can_be_removed_and_releases_its_events() -> TestResult {
    capture_logs();
    let (_dir, path) = temp_spool();
    let mut server = common::http::Server::start();
    server.down();
    let spool = Spool::builder(&path)
        .sink(common::delivery::quick("old-hook", &server).max_retries(None))
        .open()?;
    spool.append_batch((0..10).map(numbered).collect())?;
    let _ = spool.close(Duration::from_millis(100));
    drop(spool);

    let spool = Spool::open(&path)?;
    assert!(
        logged("old-hook").iter().any(|l| l.contains("10")),
        "open names the retired sink and what it holds back: {:?}",
        logged("old-hook")
    );
    let kinds: Vec<_> = spool.consumers()?.into_iter().map(|c| c.kind).collect();
    assert_eq!(kinds, [ConsumerKind::RetiredSink]);
    let mut live = spool.subscribe("live", SeekPosition::Beginning)?;
    let seqs = read_n(&mut live, 10);
    live.ack(seqs[9])?;
    assert_eq!(spool.len()?, 10, "the retired sink still holds them");
    assert_eq!(spool.seek("old-hook", SeekPosition::After(5))?, 5);
    assert!(spool.remove_consumer("old-hook")?);
    wait_until(T, "what only the retired sink held is deleted", || {
        spool.len().unwrap() == 0
    });
    Ok(())
}

/// A subscribe that fails leaves nothing registered.
#[test]
fn a_failed_subscribe_registers_nothing() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = spool_with(&path, 10)?;
    assert!(matches!(
        spool.subscribe("typo", SeekPosition::After(1000)),
        Err(Error::Consumer(_))
    ));
    assert!(matches!(
        spool.subscribe("", SeekPosition::Beginning),
        Err(Error::Consumer(_))
    ));
    assert!(matches!(
        spool.seek("typo", SeekPosition::After(u64::MAX)),
        Err(Error::Consumer(_))
    ));
    assert_eq!(spool.consumers()?, []);
    Ok(())
}

/// `metrics()` shows every registered consumer, open subscription or not, with what
/// the caps evicted before it acknowledged it.
#[test]
fn metrics_cover_every_consumer_and_what_the_caps_took_from_it() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::builder(&path).max_events(5).open()?;
    spool.seek("reporting", SeekPosition::Beginning)?; // registered, never subscribed
    let _open = spool.subscribe("live", SeekPosition::Beginning)?;
    spool.append_batch((0..10).map(numbered).collect())?;
    let m = spool.metrics();
    let names: Vec<(&str, bool, u64, u64)> = m
        .consumers
        .iter()
        .map(|c| (c.name.as_str(), c.open, c.lag, c.evicted))
        .collect();
    assert_eq!(names, [("live", true, 5, 5), ("reporting", false, 5, 5)]);
    assert!(
        m.to_prometheus()
            .contains("eventspool_consumer_evicted_total{consumer=\"reporting\"} 5")
    );
    Ok(())
}
