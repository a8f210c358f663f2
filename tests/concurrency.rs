//! Concurrent delivery against real receivers on 127.0.0.1: per-key order with many
//! requests in flight, unordered delivery, the window a failing key fills, `max_age`,
//! `rate_limit`, and adaptive concurrency against a receiver that sheds load.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::delivery::{T, quick, sink_metrics};
use common::http::{Reply, Request, Server};
use common::*;
use eventspool::{Concurrency, Error, Event, Order, Spool, WebhookSink};
use serde_json::json;

/// The seq and subject a one-event request carried.
fn seq_and_key(r: &Request) -> (u64, String) {
    let body = r.json();
    let key = body["subject"].as_str().unwrap_or_default().to_owned();
    (body["seq"].as_u64().expect("seq"), key)
}

fn keyed(n: u64, keys: u64) -> Event {
    Event::new("test.keyed", json!({ "n": n })).subject(format!("key-{}", n % keys))
}

/// Answers at random 200 / 500 / 429 after a random 0-3 ms (each request keeps the
/// answer it was given, delay included).
fn random_receiver(seed: u64) -> Server {
    let mut rng = Rng(seed | 1);
    Server::with_script(move |_| {
        let delay = Duration::from_micros(rng.below(3000));
        let status = match rng.below(100) {
            0..85 => 200,
            85..93 => 500,
            _ => 429,
        };
        Reply::Delayed(delay, status)
    })
}

#[test]
fn per_key_keeps_each_keys_order_and_runs_keys_side_by_side() -> TestResult {
    let (_dir, path) = temp_spool();
    let server = random_receiver(clock_seed());
    let spool = Spool::builder(&path)
        .sink(
            quick("keys", &server)
                .order(Order::PerKey)
                .concurrency(Concurrency::Fixed(16))
                .max_retries(None),
        )
        .open()?;
    let n = 10_000;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        spool.append_batch(chunk.iter().map(|&i| keyed(i, 100)).collect())?;
    }
    wait_until(T, "every event delivered", || {
        sink_metrics(&spool, "keys").delivered == n
    });
    let requests = server.requests();
    let acknowledged: BTreeSet<u64> = requests
        .iter()
        .filter(|r| matches!(r.reply, Reply::Delayed(_, 200)))
        .map(|r| seq_and_key(r).0)
        .collect();
    assert_eq!(acknowledged.len() as u64, n, "every event arrived");
    // Per key: first arrivals in seq order, and a request only after the last one of
    // its key was answered (it cannot have been before its delay ended).
    let mut last: HashMap<String, (u64, std::time::Instant)> = HashMap::new();
    for r in &requests {
        let (seq, key) = seq_and_key(r);
        let Reply::Delayed(delay, _) = r.reply else {
            panic!("{:?}", r.reply)
        };
        if let Some(&(before, answered)) = last.get(&key) {
            assert!(seq >= before, "{key}: seq {seq} after {before}");
            assert!(
                r.at >= answered,
                "{key}: seq {seq} went out before {before} was answered"
            );
        }
        last.insert(key, (seq, r.at + delay));
    }
    let most = server.most_at_once();
    assert!((2..=16).contains(&most), "{most} requests at once");
    let m = sink_metrics(&spool, "keys");
    assert_eq!((m.dead_lettered, m.lag), (0, 0), "{m:?}");
    Ok(())
}

#[test]
fn unordered_runs_up_to_its_concurrency() -> TestResult {
    let (_dir, path) = temp_spool();
    let server = Server::with_script(|r| {
        Reply::Delayed(Duration::from_micros(500 + seq_and_key(r).0 % 2000), 200)
    });
    let spool = Spool::builder(&path)
        .sink(
            quick("any", &server)
                .order(Order::Unordered)
                .concurrency(Concurrency::Fixed(8)),
        )
        .open()?;
    spool.append_batch((0..2000).map(numbered).collect())?;
    wait_until(T, "every event delivered", || {
        sink_metrics(&spool, "any").delivered == 2000
    });
    let seqs: BTreeSet<u64> = server.requests().iter().map(|r| seq_and_key(r).0).collect();
    assert_eq!(seqs, (1..=2000).collect());
    let most = server.most_at_once();
    assert!((2..=8).contains(&most), "{most} requests at once");
    wait_until(T, "the cursor reaches the last event", || {
        sink_metrics(&spool, "any").cursor == 2000
    });
    Ok(())
}

/// A key the receiver refuses holds only its own events, until the window above it is
/// full; once its retries run out it is dead-lettered and everything goes on.
#[test]
fn a_failing_key_holds_the_others_only_once_the_window_is_full() -> TestResult {
    let (_dir, path) = temp_spool();
    let server = Server::with_script(|r| match seq_and_key(r).1.as_str() {
        "bad" => Reply::status(500),
        _ => Reply::ok(),
    });
    let backoff =
        eventspool::Backoff::exponential(Duration::from_millis(50), Duration::from_millis(50));
    let spool = Spool::builder(&path)
        .sink(
            quick("held", &server)
                .order(Order::PerKey)
                .concurrency(Concurrency::Fixed(4))
                .window(50)
                .backoff(backoff)
                .max_retries(Some(4))
                .timeout(Duration::from_secs(5)),
        )
        .open()?;
    spool.append(Event::new("test.keyed", json!({"n": 0})).subject("bad"))?;
    spool.append_batch((1..200).map(|i| keyed(i, 10)).collect())?;
    wait_until(T, "the bad event is dead-lettered", || {
        !spool.dead_letters("held", 1).unwrap().is_empty()
    });
    wait_until(T, "every good event delivered", || {
        sink_metrics(&spool, "held").delivered == 199
    });
    let requests = server.requests();
    let last_bad = requests
        .iter()
        .rposition(|r| seq_and_key(r).1 == "bad")
        .expect("the bad event was sent");
    let before: Vec<u64> = requests[..last_bad]
        .iter()
        .map(|r| seq_and_key(r).0)
        .filter(|&s| s != 1)
        .collect();
    // seq 1 is the bad event: the window lets seqs 2..=50 out meanwhile, not 51.
    assert_eq!(before.iter().max(), Some(&50), "{before:?}");
    assert_eq!(before.len(), 49, "the other keys went on meanwhile");
    assert_eq!(
        requests
            .iter()
            .filter(|r| seq_and_key(r).1 == "bad")
            .count(),
        5
    );
    let m = sink_metrics(&spool, "held");
    assert!(m.window_full_waits >= 1, "{m:?}");
    assert_eq!(m.dead_lettered, 1);
    wait_until(
        T,
        "the cursor moves past the dead letter to the end",
        || sink_metrics(&spool, "held").cursor == 200,
    );
    Ok(())
}

#[test]
fn events_past_max_age_are_dead_lettered_as_expired() -> TestResult {
    let (_dir, path) = temp_spool();
    let server = Server::start();
    let spool = Spool::builder(&path)
        .sink(
            quick("fresh", &server)
                .order(Order::Unordered)
                .concurrency(Concurrency::Fixed(2))
                .max_age(Duration::from_secs(60)),
        )
        .open()?;
    let hour_ago = eventspool_now_ms() - 3_600_000;
    for n in 0..6 {
        let event = numbered(n);
        spool.append(if n % 2 == 0 {
            event.timestamp_ms(hour_ago)
        } else {
            event
        })?;
    }
    wait_until(T, "the stale ones are dead-lettered", || {
        spool.metrics().dead_letters == 3
    });
    wait_until(T, "the fresh ones are delivered", || {
        sink_metrics(&spool, "fresh").delivered == 3
    });
    let dead = spool.dead_letters("fresh", 10)?;
    let dead_seqs: Vec<u64> = dead.iter().map(|d| d.event.seq).collect();
    assert_eq!(dead_seqs, [1, 3, 5]);
    assert!(
        dead.iter().all(|d| d.last_error.starts_with("expired")),
        "{dead:?}"
    );
    let m = sink_metrics(&spool, "fresh");
    assert_eq!((m.expired, m.dead_lettered, m.delivered), (3, 3, 3));
    let sent: BTreeSet<u64> = server.requests().iter().map(|r| seq_and_key(r).0).collect();
    assert_eq!(sent, [2, 4, 6].into());
    assert!(
        spool
            .metrics()
            .to_prometheus()
            .contains("eventspool_sink_expired_total{sink=\"fresh\"} 3")
    );
    Ok(())
}

fn eventspool_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

#[test]
fn rate_limit_spaces_requests_out() -> TestResult {
    let (_dir, path) = temp_spool();
    let server = Server::start();
    let spool = Spool::builder(&path)
        .sink(
            quick("paced", &server)
                .order(Order::Unordered)
                .concurrency(Concurrency::Fixed(4))
                .rate_limit(200.0),
        )
        .open()?;
    spool.append_batch((0..400).map(numbered).collect())?;
    let requests = server.wait_requests(400, T);
    // A bucket of 4 (the concurrency), then 200 a second: 396 more take 1.98 s.
    let took = requests[399].at - requests[0].at;
    assert!(
        took >= Duration::from_millis(1900),
        "400 requests in {took:?}"
    );
    assert!(sink_metrics(&spool, "paced").rate_limit_waits > 0);
    Ok(())
}

/// A receiver that serves 8 requests at a time and answers 429 beyond: the adaptive
/// limit settles near 8 and the 429s stay rare.
#[test]
fn adaptive_concurrency_settles_near_what_the_receiver_serves() -> TestResult {
    let (_dir, path) = temp_spool();
    let server = Server::with_script(|_| Reply::Delayed(Duration::from_millis(10), 200));
    server.set_capacity(8);
    let spool = Spool::builder(&path)
        .sink(
            quick("adaptive", &server)
                .order(Order::Unordered)
                .concurrency(Concurrency::Adaptive { max: 64 })
                .max_retries(None),
        )
        .open()?;
    let n = 3000;
    spool.append_batch((0..n).map(numbered).collect())?;
    wait_until(T, "every event delivered", || {
        sink_metrics(&spool, "adaptive").delivered == n
    });
    let requests = server.requests();
    let start = requests[0].at + Duration::from_secs(1);
    let after: Vec<&Request> = requests.iter().filter(|r| r.at >= start).collect();
    let refused = after
        .iter()
        .filter(|r| matches!(r.reply, Reply::Status(429, _)))
        .count();
    assert!(
        refused * 20 < after.len(),
        "{refused} of {} requests refused after the first second",
        after.len()
    );
    let m = sink_metrics(&spool, "adaptive");
    assert!((4..=16).contains(&m.concurrency_limit), "{m:?}");
    assert!(m.rtt_us > 0, "{m:?}");
    Ok(())
}

#[test]
fn total_order_with_more_than_one_in_flight_is_refused_at_open() -> TestResult {
    let (_dir, path) = temp_spool();
    let hook = WebhookSink::new("hook", "http://127.0.0.1:9/").concurrency(Concurrency::Fixed(4));
    match Spool::builder(&path).sink(hook).open() {
        Err(Error::InvalidConfig(msg)) => {
            assert!(
                msg.contains("Order::Total") && msg.contains("PerKey"),
                "{msg}"
            )
        }
        other => panic!("{other:?}"),
    }
    let config: eventspool::SpoolConfig = serde_json::from_value(json!({
        "path": path,
        "sinks": [{"name": "c", "url": "http://127.0.0.1:9/", "order": "per_key",
                   "concurrency": {"adaptive": 64}, "window": 100, "max_age_ms": 60000,
                   "rate_limit": 50.0}]
    }))?;
    config.validate()?;
    let zero = WebhookSink::new("z", "http://127.0.0.1:9/")
        .order(Order::PerKey)
        .concurrency(Concurrency::Fixed(0));
    assert!(matches!(
        Spool::builder(&path).sink(zero).open(),
        Err(Error::InvalidConfig(_))
    ));
    Ok(())
}

/// A sink of the user's own, copied per request thread: shares a log of what it got.
#[derive(Clone)]
struct Shared(std::sync::Arc<std::sync::Mutex<Vec<(String, u64)>>>);

impl eventspool::Sink for Shared {
    fn name(&self) -> &str {
        "own"
    }
    fn deliver(
        &mut self,
        events: &[eventspool::StoredEvent],
    ) -> Result<(), eventspool::DeliveryError> {
        let mut log = self.0.lock().unwrap();
        for e in events {
            log.push((e.subject.clone().unwrap_or_default(), e.seq));
        }
        Ok(())
    }
    fn order(&self) -> Order {
        Order::PerKey
    }
    fn concurrency(&self) -> Concurrency {
        Concurrency::Fixed(4)
    }
    fn try_clone(&self) -> Option<Box<dyn eventspool::Sink>> {
        Some(Box::new(self.clone()))
    }
}

#[test]
fn a_custom_sink_that_clones_is_delivered_to_concurrently() -> TestResult {
    let (_dir, path) = temp_spool();
    let log = Shared(Default::default());
    let spool = Spool::builder(&path).sink(log.clone()).open()?;
    spool.append_batch((0..1000).map(|i| keyed(i, 7)).collect())?;
    wait_until(T, "every event delivered", || {
        log.0.lock().unwrap().len() == 1000
    });
    let mut last: HashMap<String, u64> = HashMap::new();
    for (key, seq) in log.0.lock().unwrap().iter() {
        let before = last.insert(key.clone(), *seq).unwrap_or(0);
        assert!(*seq > before, "{key}: {seq} after {before}");
    }

    /// The same sink, unable to copy itself.
    struct Single;
    impl eventspool::Sink for Single {
        fn name(&self) -> &str {
            "single"
        }
        fn deliver(
            &mut self,
            _: &[eventspool::StoredEvent],
        ) -> Result<(), eventspool::DeliveryError> {
            Ok(())
        }
        fn order(&self) -> Order {
            Order::Unordered
        }
    }
    let (_dir, other) = temp_spool();
    match Spool::builder(&other).sink(Single).open() {
        Err(Error::InvalidConfig(msg)) => assert!(msg.contains("try_clone"), "{msg}"),
        other => panic!("{other:?}"),
    }
    Ok(())
}
