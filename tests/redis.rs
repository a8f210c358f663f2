//! The Redis Streams sink against a real `redis-server` started here: every event in
//! the stream exactly once, in seq order, through `kill -9` of the delivering process
//! and a restart of the server. Entries are read back with the redis crate's own
//! commands, not through the sink.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::brokers::Broker;
use common::*;
use eventspool::{Backoff, RedisSink, Spool};

const T: Duration = Duration::from_secs(60);

/// One entry as read back: its id and the `n` of its event's data.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    id: String,
    n: u64,
}

/// Every entry of `stream`, in stream order.
fn entries(url: &str, stream: &str) -> Vec<Entry> {
    let client = redis::Client::open(url).expect("url");
    let mut conn = client.get_connection().expect("connect");
    let rows: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("XRANGE");
    rows.into_iter()
        .map(|(id, fields)| {
            let data = fields
                .chunks(2)
                .find(|kv| kv[0] == "data")
                .map(|kv| kv[1].clone())
                .expect("a data field");
            let value: serde_json::Value = serde_json::from_str(&data).expect("JSON data");
            Entry {
                id,
                n: value["n"].as_u64().expect("n"),
            }
        })
        .collect()
}

fn stream_len(url: &str, stream: &str) -> u64 {
    redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("XLEN").arg(stream).query(&mut c))
        .unwrap_or(0)
}

fn sink(url: &str) -> RedisSink {
    RedisSink::new("redis", url, "events")
        .batch(100)
        .max_retries(None)
        .backoff(Backoff::exponential(
            Duration::from_millis(5),
            Duration::from_millis(100),
        ))
}

/// Each of `0..n` once, in order, with ids `<seq>-1` from `first_seq`.
fn assert_exactly_once(entries: &[Entry], n: u64, first_seq: u64) {
    let numbers: Vec<u64> = entries.iter().map(|e| e.n).collect();
    assert_eq!(
        numbers,
        (0..n).collect::<Vec<_>>(),
        "each event once, in order"
    );
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry.id, format!("{}-1", first_seq + i as u64));
    }
}

#[test]
fn ten_thousand_events_land_in_the_stream_once_each_in_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let broker = Broker::redis(dir.path());
    let path = dir.path().join("events.db");
    let spool = Spool::builder(&path)
        .sink(sink(&broker.redis_url()))
        .open()?;
    for n in 0..10_000 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "10 000 delivered", || {
        spool.metrics().sinks[0].delivered == 10_000
    });
    assert_exactly_once(&entries(&broker.redis_url(), "events"), 10_000, 1);
    assert_eq!(spool.metrics().sinks[0].already_delivered, 0);
    spool.close(T)?;
    Ok(())
}

#[test]
fn a_stream_per_type_and_trimming() -> TestResult {
    let dir = tempfile::tempdir()?;
    let broker = Broker::redis(dir.path());
    let url = broker.redis_url();
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(RedisSink::new("redis", &url, "ev.{type}").max_len(10))
        .open()?;
    for n in 0..300 {
        let kind = if n % 2 == 0 { "even" } else { "odd" };
        spool.emit(eventspool::Event::new(kind, serde_json::json!({"n": n})))?;
    }
    wait_until(T, "300 delivered", || {
        spool.metrics().sinks[0].delivered == 300
    });
    let even = entries(&url, "ev.even");
    assert!(even.iter().all(|e| e.n % 2 == 0));
    assert!(entries(&url, "ev.odd").iter().all(|e| e.n % 2 == 1));
    // MAXLEN ~ trims whole nodes: about 10, never all 150.
    assert!(
        even.len() < 150 && even.last().map(|e| e.n) == Some(298),
        "{}",
        even.len()
    );
    spool.close(T)?;
    Ok(())
}

#[test]
fn a_refusal_that_will_not_pass_is_dead_lettered_with_redis_words() -> TestResult {
    let dir = tempfile::tempdir()?;
    let broker = Broker::redis(dir.path());
    let url = broker.redis_url();
    let client = redis::Client::open(url.as_str())?;
    let _: () = redis::cmd("SET")
        .arg("taken")
        .arg("a string")
        .query(&mut client.get_connection()?)?;
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(RedisSink::new("redis", &url, "taken"))
        .open()?;
    spool.append(numbered(0))?;
    wait_until(T, "dead-lettered", || {
        spool.dead_letters("redis", 10).is_ok_and(|d| !d.is_empty())
    });
    let letter = &spool.dead_letters("redis", 10)?[0];
    assert!(
        letter.last_error.contains("WRONGTYPE"),
        "{}",
        letter.last_error
    );
    spool.close(T)?;
    Ok(())
}

#[test]
fn kill_9_while_delivering_then_restart_each_event_once_and_resends_counted() -> TestResult {
    // The child commits its cursor every 20 batches, so the kill leaves some it missed.
    common::child_if_asked(|url| sink(url).commit_every(20), 20_000);
    let dir = tempfile::tempdir()?;
    let broker = Broker::redis(dir.path());
    let url = broker.redis_url();
    let seen = common::kill_9_and_restart(
        "kill_9_while_delivering_then_restart_each_event_once_and_resends_counted",
        &dir.path().join("events.db"),
        &url,
        sink(&url),
        20_000,
        || stream_len(&url, "events"),
    );
    assert_exactly_once(&entries(&url, "events"), 20_000, 1);
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
    let mut broker = Broker::redis(dir.path());
    let url = broker.redis_url();
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&url))
        .open()?;
    for n in 0..3_000 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "some delivered", || stream_len(&url, "events") >= 1_000);
    broker.stop();
    for n in 3_000..6_000 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "a failure seen while the server is down", || {
        spool.metrics().sinks[0].failures_retryable > 0
    });
    broker.start();
    wait_until(T, "all 6 000 delivered", || {
        spool.metrics().sinks[0].delivered >= 6_000 && spool.metrics().sinks[0].lag == 0
    });
    assert_exactly_once(&entries(&url, "events"), 6_000, 1);
    spool.close(T)?;
    Ok(())
}

#[test]
fn configured_from_toml_like_the_webhooks() -> TestResult {
    let dir = tempfile::tempdir()?;
    let broker = Broker::redis(dir.path());
    let text = format!(
        "path = {:?}\n[[redis]]\nname = \"orders\"\nurl = {:?}\nstream = \"cfg.{{type}}\"\nbatch = 7\n",
        dir.path().join("events.db"),
        broker.redis_url()
    );
    let config: eventspool::SpoolConfig = toml::from_str(&text)?;
    assert!(
        !format!("{config:?}").contains("/0\""),
        "the URL is shown as host and port"
    );
    let spool = Spool::from_config(&config)?;
    for n in 0..20 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "20 delivered", || {
        spool.metrics().sinks[0].delivered == 20
    });
    assert_eq!(entries(&broker.redis_url(), "cfg.test.numbered").len(), 20);
    spool.close(T)?;

    let mut bad = config.clone();
    bad.redis[0].url = "http://not-redis".into();
    let err = bad.validate().unwrap_err();
    assert!(err.to_string().contains("invalid Redis URL"), "{err}");
    bad.redis[0].url = broker.redis_url();
    bad.redis[0].stream = "x.{subject}".into();
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("placeholder")
    );
    Ok(())
}

#[test]
fn a_full_memory_is_retried_and_delivery_resumes_once_in_order() -> TestResult {
    let dir = tempfile::tempdir()?;
    let broker = Broker::redis(dir.path());
    let url = broker.redis_url();
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&url))
        .open()?;
    for n in 0..1_000 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "1 000 delivered", || stream_len(&url, "events") == 1_000);
    let mut conn = redis::Client::open(url.as_str())?.get_connection()?;
    let config = |conn: &mut redis::Connection, value: &str| -> redis::RedisResult<()> {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(value)
            .query(conn)
    };
    config(&mut conn, "1")?; // below what it uses: every write is refused
    for n in 1_000..3_000 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "a refusal for memory", || {
        let sink = &spool.metrics().sinks[0];
        sink.failures_retryable > 0
            && sink
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("OOM") || e.contains("EXECABORT"))
    });
    assert_eq!(
        stream_len(&url, "events"),
        1_000,
        "nothing landed while refused"
    );
    let error = spool.metrics().sinks[0]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(
        error.starts_with("XADD to redis://127.0.0.1:") && error.contains("OOM"),
        "names the server and the reason: {error}"
    );
    assert!(error.len() < 400, "and says it briefly: {error}");
    config(&mut conn, "0")?;
    wait_until(T, "all 3 000 delivered", || {
        spool.metrics().sinks[0].delivered >= 3_000 && spool.metrics().sinks[0].lag == 0
    });
    assert_exactly_once(&entries(&url, "events"), 3_000, 1);
    spool.close(T)?;
    Ok(())
}

#[test]
fn a_wrong_password_and_an_unknown_host_are_clear_last_errors_and_retried() -> TestResult {
    let dir = tempfile::tempdir()?;
    let broker = Broker::redis(dir.path()).with_args(&["--requirepass", "s3cret"]);
    let cases = [
        (
            format!("redis://:hunter2@127.0.0.1:{}/0", broker.port),
            "Password authentication failed",
        ),
        (
            "redis://no-such-host.invalid:6379/0".to_owned(),
            "no-such-host.invalid",
        ),
    ];
    for (i, (url, says)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("failing{i}.db"));
        assert_retried_saying(&path, sink(url), says, "hunter2")?;
    }
    let url = format!("redis://:s3cret@127.0.0.1:{}/0", broker.port);
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&url))
        .open()?;
    for n in 0..10 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "10 delivered with the right password", || {
        spool.metrics().sinks[0].delivered == 10
    });
    assert_exactly_once(&entries(&url, "events"), 10, 1);
    spool.close(T)?;
    Ok(())
}
