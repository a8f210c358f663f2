//! The NATS JetStream sink against a real `nats-server -js` started here (its store on
//! disk): every event in the stream exactly once, in seq order, through `kill -9` of
//! the delivering process and a restart of the server. Messages are read back through
//! JetStream's API on a connection of the tests' own.
#![cfg(feature = "nats")]

mod common;

use std::time::Duration;

use common::brokers::Broker;
use common::nats::Nats;
use common::*;
use eventspool::{Backoff, NatsSink, Spool};

const T: Duration = Duration::from_secs(60);

fn sink(url: &str) -> NatsSink {
    NatsSink::new("nats", url, "events.{type}")
        .batch(100)
        .max_retries(None)
        .backoff(Backoff::exponential(
            Duration::from_millis(5),
            Duration::from_millis(100),
        ))
}

/// A server with the stream `EVENTS` on `events.>`.
fn server(dir: &std::path::Path) -> (Broker, Nats) {
    let broker = Broker::nats(dir);
    let mut nats = Nats::connect(broker.port).expect("connect");
    let created = nats.create_stream("EVENTS", &["events.>"]).expect("create");
    assert!(created.get("error").is_none(), "{created}");
    (broker, nats)
}

/// Each of `0..n` once, in order, as the events' data and seqs from `first_seq`.
fn assert_exactly_once(nats: &mut Nats, n: u64, first_seq: u64) {
    let stored = nats.messages("EVENTS").expect("read back");
    let numbers: Vec<u64> = stored
        .iter()
        .map(|m| m.event["data"]["n"].as_u64().expect("n"))
        .collect();
    assert_eq!(
        numbers,
        (0..n).collect::<Vec<_>>(),
        "each event once, in order"
    );
    for (i, m) in stored.iter().enumerate() {
        assert_eq!(m.event["seq"].as_u64(), Some(first_seq + i as u64));
        assert_eq!(m.subject, "events.test.numbered");
    }
}

#[test]
fn ten_thousand_events_land_in_the_stream_once_each_in_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (broker, mut nats) = server(dir.path());
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&broker.nats_url()))
        .open()?;
    for n in 0..10_000 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "10 000 delivered", || {
        spool.metrics().sinks[0].delivered == 10_000
    });
    assert_exactly_once(&mut nats, 10_000, 1);
    assert_eq!(spool.metrics().sinks[0].already_delivered, 0);
    spool.close(T)?;
    Ok(())
}

#[test]
fn no_stream_is_retried_with_a_clear_error_until_one_is_made() -> TestResult {
    let dir = tempfile::tempdir()?;
    let broker = Broker::nats(dir.path());
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&broker.nats_url()))
        .open()?;
    spool.append(numbered(0))?;
    wait_until(T, "a failure", || {
        spool.metrics().sinks[0].failures_retryable > 0
    });
    let error = spool.metrics().sinks[0]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(
        error.contains("no JetStream stream takes this subject"),
        "{error}"
    );
    let mut nats = Nats::connect(broker.port)?;
    nats.create_stream("EVENTS", &["events.>"])?;
    wait_until(T, "delivered once the stream exists", || {
        spool.metrics().sinks[0].delivered == 1
    });
    assert_exactly_once(&mut nats, 1, 1);
    spool.close(T)?;
    Ok(())
}

#[test]
fn kill_9_while_delivering_then_restart_each_event_once_and_resends_counted() -> TestResult {
    // The child commits its cursor every 20 batches, so the kill leaves some it missed.
    common::child_if_asked(|url| sink(url).commit_every(20), 20_000);
    let dir = tempfile::tempdir()?;
    let (broker, mut nats) = server(dir.path());
    let url = broker.nats_url();
    let seen = common::kill_9_and_restart(
        "kill_9_while_delivering_then_restart_each_event_once_and_resends_counted",
        &dir.path().join("events.db"),
        &url,
        sink(&url),
        20_000,
        || nats.count("EVENTS"),
    );
    assert_exactly_once(&mut nats, 20_000, 1);
    assert_eq!(
        seen.counted,
        seen.in_stream - seen.cursor,
        "every re-send was recognised and counted: {seen:?}"
    );
    assert!(
        seen.counted > 0,
        "the kill left batches the cursor did not cover: {seen:?}"
    );
    Ok(())
}

#[test]
fn the_server_restarted_mid_stream_delivery_resumes_nothing_lost_nothing_twice() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (mut broker, nats) = server(dir.path());
    drop(nats);
    let url = broker.nats_url();
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&url))
        .open()?;
    for n in 0..3_000 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "some delivered", || {
        spool.metrics().sinks[0].delivered >= 1_000
    });
    broker.stop();
    for n in 3_000..6_000 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "a failure seen while the server is down", || {
        spool.metrics().sinks[0].failures_retryable > 0
    });
    broker.start();
    wait_until(T, "all 6 000 delivered", || {
        let sink = &spool.metrics().sinks[0];
        sink.delivered >= 6_000 && sink.lag == 0
    });
    let mut nats = Nats::connect(broker.port)?;
    assert_exactly_once(&mut nats, 6_000, 1);
    spool.close(T)?;
    Ok(())
}

#[test]
fn a_message_stored_behind_the_sinks_back_is_refused_by_the_fence_then_skipped() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (broker, mut nats) = server(dir.path());
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&broker.nats_url()))
        .open()?;
    for n in 0..100 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "100 delivered", || {
        spool.metrics().sinks[0].delivered == 100
    });
    // What a killed process's last write would store after the sink read the stream:
    // event 101 as the sink sends it, fenced as that process saw the stream.
    let zombie = serde_json::json!({"id": "zombie-101", "seq": 101, "type": "test.numbered",
        "source": null, "subject": null, "timestamp_ms": 0, "data": {"n": 100}});
    let ack = nats.publish(
        "events.test.numbered",
        zombie.to_string().as_bytes(),
        Some(100),
    )?;
    assert_eq!(ack["seq"], 101, "{ack}");
    // In one commit, so the sink publishes them in one pipeline: its first is refused,
    // the others land after the copy.
    let mut rest = vec![numbered(100).id("zombie-101")];
    rest.extend((101..200).map(numbered));
    spool.append_batch(rest)?;
    wait_until(T, "200 delivered", || {
        spool.metrics().sinks[0].delivered == 200
    });
    assert_exactly_once(&mut nats, 200, 1);
    let sink = &spool.metrics().sinks[0];
    assert!(
        sink.failures_retryable > 0,
        "the sink's publish after it was refused"
    );
    assert!(
        sink.already_delivered >= 1,
        "the event the stream had, recognised: {sink:?}"
    );
    assert_eq!(sink.dead_lettered, 0);
    spool.close(T)?;
    Ok(())
}

#[test]
fn a_message_of_another_publisher_between_the_sinks_is_not_skipped_over() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (broker, mut nats) = server(dir.path());
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&broker.nats_url()))
        .open()?;
    for n in 0..100 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "100 delivered", || {
        spool.metrics().sinks[0].delivered == 100
    });
    let ack = nats.publish("events.other", b"not an event", Some(100))?;
    assert_eq!(ack["seq"], 101, "{ack}");
    // One pipeline: the first is refused, the others land after the foreign message.
    spool.append_batch((100..200).map(numbered).collect())?;
    wait_until(T, "the rest delivered, the displaced event dead", || {
        let sink = &spool.metrics().sinks[0];
        sink.lag == 0 && spool.dead_letters("nats", 1_000).map_or(0, |d| d.len()) == 1
    });
    let dead = spool.dead_letters("nats", 1_000)?;
    assert_eq!(dead[0].event.seq, 101, "only the displaced event is dead");
    assert!(
        dead[0].last_error.contains("one spool per stream"),
        "{:?}",
        dead[0].last_error
    );
    let seqs: Vec<u64> = nats
        .messages("EVENTS")?
        .iter()
        .filter_map(|m| m.event["seq"].as_u64())
        .collect();
    let want: Vec<u64> = (1..=200).filter(|&s| s != 101).collect();
    assert_eq!(
        seqs, want,
        "every other event once, in order; 101 not skipped over"
    );
    spool.close(T)?;
    Ok(())
}

#[test]
fn a_stream_another_publisher_wrote_is_refused_one_spool_per_stream() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (broker, mut nats) = server(dir.path());
    let ack = nats.publish("events.other", b"not an event", None)?;
    assert_eq!(ack["seq"], 1, "{ack}");
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&broker.nats_url()))
        .open()?;
    spool.append(numbered(0))?;
    wait_until(T, "dead-lettered", || {
        spool.dead_letters("nats", 10).map_or(0, |d| d.len()) == 1
    });
    let dead = spool.dead_letters("nats", 10)?;
    assert!(
        dead[0].last_error.contains("one spool per stream"),
        "{:?}",
        dead[0].last_error
    );
    assert_eq!(nats.count("EVENTS"), 1, "nothing of the spool's was stored");
    spool.close(T)?;
    Ok(())
}

#[test]
fn configured_from_toml_like_the_webhooks() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (broker, mut nats) = server(dir.path());
    let text = format!(
        "path = {:?}\n[[nats]]\nname = \"orders\"\nurl = {:?}\nsubject = \"events.{{type}}\"\nbatch = 7\nin_flight = 3\n",
        dir.path().join("events.db"),
        broker.nats_url()
    );
    let config: eventspool::SpoolConfig = toml::from_str(&text)?;
    let spool = Spool::from_config(&config)?;
    for n in 0..20 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "20 delivered", || {
        spool.metrics().sinks[0].delivered == 20
    });
    assert_exactly_once(&mut nats, 20, 1);
    spool.close(T)?;
    let mut bad = config.clone();
    bad.nats[0].url = "http://not-nats".into();
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("invalid NATS URL")
    );
    bad.nats[0].url = broker.nats_url();
    bad.nats[0].in_flight = 0;
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("in_flight must be at least 1")
    );
    bad.nats[0].in_flight = 1;
    bad.nats[0].subject = "events.*".into();
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("not a subject")
    );
    Ok(())
}

#[test]
fn over_tls_to_a_server_that_requires_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let files = common::brokers::tls_files(dir.path());
    let broker = Broker::nats_tls(dir.path(), &files);
    let mut nats = Nats::connect_tls(broker.port, &files.ca)?;
    nats.create_stream("EVENTS", &["events.>"])?;
    let url = format!("tls://localhost:{}", broker.port);
    // Without the CA the server's certificate is not trusted: retried, with the reason.
    let spool = Spool::builder(dir.path().join("untrusted.db"))
        .sink(sink(&url))
        .open()?;
    spool.append(numbered(0))?;
    wait_until(T, "a TLS failure", || {
        spool.metrics().sinks[0].failures_retryable > 0
    });
    let error = spool.metrics().sinks[0]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(error.contains("certificate"), "{error}");
    spool.close(Duration::from_millis(100))?;

    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&url).tls_ca(&files.ca))
        .open()?;
    for n in 0..500 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "500 delivered over TLS", || {
        spool.metrics().sinks[0].delivered == 500
    });
    assert_exactly_once(&mut nats, 500, 1);
    spool.close(T)?;
    Ok(())
}

#[test]
fn a_wrong_password_and_an_unknown_host_are_clear_last_errors_and_retried() -> TestResult {
    let dir = tempfile::tempdir()?;
    let broker = Broker::nats(dir.path()).with_args(&["--user", "app", "--pass", "s3cret"]);
    let mut nats = Nats::connect_as(broker.port, "app", "s3cret")?;
    nats.create_stream("EVENTS", &["events.>"])?;
    let cases = [
        (
            format!("nats://app:hunter2@127.0.0.1:{}", broker.port),
            "Authorization Violation",
        ),
        (
            "nats://no-such-host.invalid:4222".to_owned(),
            "no-such-host.invalid",
        ),
    ];
    for (i, (url, says)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("failing{i}.db"));
        assert_retried_saying(&path, sink(url), says, "hunter2")?;
    }
    let url = format!("nats://app:s3cret@127.0.0.1:{}", broker.port);
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&url))
        .open()?;
    for n in 0..10 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "10 delivered with the right password", || {
        spool.metrics().sinks[0].delivered == 10
    });
    assert_exactly_once(&mut nats, 10, 1);
    spool.close(T)?;
    Ok(())
}
