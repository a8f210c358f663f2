//! The benchmark harness: `cargo run --release --example bench [-- --quick]`
//! (`--ingest`, `--delivery`, `--consume`, `--open`, `--concurrency` or `--capi` for only
//! those figures; `--features redis,nats -- --brokers` for the broker sinks, against
//! `redis-server` and `nats-server` it starts; `--features kafka -- --kafka` for the
//! Kafka sink, on librdkafka's mock cluster; `--features encryption -- --encryption` for
//! the cost of encryption at rest).
//!
//! Every figure is printed next to a baseline measured in the same run (raw rusqlite
//! batched inserts, and a naive autocommit-per-event loop), because the machines this
//! runs on are shared and noisy: compare ratios, not absolute numbers.

#[path = "support/receiver.rs"]
mod support;

#[allow(dead_code)] // the tests use more of it
#[path = "../tests/common/capi.rs"]
mod capi;

#[cfg(all(feature = "redis", feature = "nats"))]
#[path = "bench/brokers.rs"]
mod brokers;

#[cfg(feature = "kafka")]
#[path = "bench/kafka.rs"]
mod kafka;

#[cfg(feature = "encryption")]
#[path = "bench/encryption.rs"]
mod encryption;

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventspool::{Backoff, Concurrency, Event, Order, Spool, StoredEvent, WebhookSink};
use rusqlite::{Connection, params};

const EVENT_BYTES: usize = 256;

struct Scale {
    baseline: u64,
    naive: u64,
    emit: u64,
    append: [(usize, u64); 3],
    latency_rounds: usize,
    rss_events: u64,
    deliver_single: u64,
    deliver_batched: u64,
    e2e_events: u64,
    consume: u64,
    open_events: u64,
    /// Events for each concurrent-delivery row (the serial one gets 1/32 of them).
    concurrent: u64,
}

const FULL: Scale = Scale {
    baseline: 1_000_000,
    naive: 20_000,
    emit: 1_000_000,
    append: [(1, 20_000), (8, 100_000), (64, 300_000)],
    latency_rounds: 8,
    rss_events: 5_000_000,
    deliver_single: 20_000,
    deliver_batched: 500_000,
    e2e_events: 5_000,
    consume: 1_000_000,
    open_events: 10_000_000,
    concurrent: 6_400,
};

const QUICK: Scale = Scale {
    baseline: 100_000,
    naive: 5_000,
    emit: 100_000,
    append: [(1, 5_000), (8, 20_000), (64, 50_000)],
    latency_rounds: 2,
    rss_events: 200_000,
    deliver_single: 3_000,
    deliver_batched: 50_000,
    e2e_events: 1_000,
    consume: 100_000,
    open_events: 200_000,
    concurrent: 1_600,
};

/// 256 bytes of JSON.
pub(crate) fn payload(n: u64) -> String {
    let head = format!("{{\"n\":{n},\"pad\":\"");
    let pad = EVENT_BYTES - head.len() - 2;
    format!("{head}{}\"}}", "x".repeat(pad))
}

fn event(n: u64) -> Event {
    Event::from_json("bench.event", payload(n))
}

/// Events/s through `sink` (the broker benches): `n` events committed first (the
/// sink's cursor registered before them), then the time from opening the spool with
/// the sink until it has delivered them all.
#[cfg(any(all(feature = "redis", feature = "nats"), feature = "kafka"))]
pub(crate) fn backlog_through(
    dir: &std::path::Path,
    name: &str,
    sink: impl eventspool::Sink + 'static,
    n: u64,
) -> f64 {
    let path = dir.join(format!("{name}.db"));
    let spool = Spool::builder(&path).max_bytes(u64::MAX).open().unwrap();
    spool
        .seek(sink.name(), eventspool::SeekPosition::LastAcknowledged)
        .unwrap();
    for body in (0..n).map(payload) {
        spool.emit(Event::from_json("bench.event", body)).unwrap();
    }
    spool.close(Duration::from_secs(60)).unwrap();
    let start = Instant::now();
    let spool = Spool::builder(&path)
        .max_bytes(u64::MAX)
        .sink(sink)
        .open()
        .unwrap();
    let deadline = start + Duration::from_secs(600);
    while spool.metrics().sinks[0].delivered < n {
        assert!(Instant::now() < deadline, "delivered in time");
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = start.elapsed();
    spool.close(Duration::from_secs(10)).unwrap();
    rate(n, took)
}

pub(crate) fn rate(n: u64, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

fn raw_conn(dir: &std::path::Path, name: &str) -> Connection {
    let conn = Connection::open(dir.join(name)).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.execute_batch(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, type TEXT NOT NULL, ts INTEGER NOT NULL,
         data TEXT NOT NULL)",
    )
    .unwrap();
    conn
}

/// Raw rusqlite: prepared INSERT, 1000 rows per transaction, WAL + NORMAL.
fn raw_baseline(dir: &std::path::Path, name: &str, n: u64) -> f64 {
    let mut conn = raw_conn(dir, name);
    let bodies: Vec<String> = (0..n).map(payload).collect();
    let start = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let tx = conn.transaction().unwrap();
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO events (seq, type, ts, data) VALUES (?1, ?2, ?3, ?4)")
                .unwrap();
            for &i in chunk {
                stmt.execute(params![i as i64 + 1, "bench.event", 0, bodies[i as usize]])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    rate(n, start.elapsed())
}

/// Naive: one autocommit INSERT per event.
fn naive_baseline(dir: &std::path::Path, n: u64) -> f64 {
    let conn = raw_conn(dir, "naive.db");
    let start = Instant::now();
    for i in 0..n {
        conn.execute(
            "INSERT INTO events (seq, type, ts, data) VALUES (?1, ?2, ?3, ?4)",
            params![i as i64 + 1, "bench.event", 0, payload(i)],
        )
        .unwrap();
    }
    rate(n, start.elapsed())
}

fn open(dir: &std::path::Path, name: &str) -> Spool {
    Spool::builder(dir.join(name))
        .max_bytes(u64::MAX)
        .open()
        .unwrap()
}

/// `emit` from one thread until `flush` returns. The JSON texts are made before the
/// clock starts, as the raw baseline's are; building and validating the events is timed.
fn emit_throughput(dir: &std::path::Path, name: &str, n: u64) -> f64 {
    let spool = open(dir, name);
    let bodies: Vec<String> = (0..n).map(payload).collect();
    let start = Instant::now();
    for body in bodies {
        spool.emit(Event::from_json("bench.event", body)).unwrap();
    }
    spool.flush(Duration::from_secs(600)).unwrap();
    rate(n, start.elapsed())
}

fn append_throughput(dir: &std::path::Path, threads: usize, n: u64) -> (f64, f64) {
    let spool = Arc::new(open(dir, &format!("append{threads}.db")));
    let per = n / threads as u64;
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let spool = spool.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    spool.append(event(t as u64 * per + i)).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let took = start.elapsed();
    (
        rate(per * threads as u64, took),
        spool.metrics().mean_batch_size,
    )
}

/// `emit` call latency on the caller's thread, while the channel has room.
fn emit_latency(dir: &std::path::Path, rounds: usize) -> (u64, u64, u64) {
    let spool = open(dir, "latency.db");
    let per_round = 50_000u64; // below the channel capacity: there is always room
    let mut samples = Vec::with_capacity(rounds * per_round as usize);
    for r in 0..rounds as u64 {
        let events: Vec<Event> = (0..per_round).map(|i| event(r * per_round + i)).collect();
        for e in events {
            let t = Instant::now();
            spool.emit(e).unwrap();
            samples.push(t.elapsed().as_nanos() as u64);
        }
        spool.flush(Duration::from_secs(60)).unwrap();
    }
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    (pct(0.50), pct(0.99), pct(0.999))
}

/// A stored event as a sink sees it, with 256 bytes of JSON data.
fn stored(seq: u64) -> StoredEvent {
    StoredEvent {
        id: format!("bench-{seq}"),
        seq,
        event_type: "bench.event".into(),
        source: None,
        subject: None,
        timestamp_ms: 0,
        data: serde_json::value::RawValue::from_string(payload(seq)).unwrap(),
    }
}

/// A WAL database (synchronous NORMAL, like a spool's) holding one cursor row, for the
/// raw loop that records its progress.
fn cursor_conn(dir: &std::path::Path, name: &str) -> Connection {
    let conn = Connection::open(dir.join(name)).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    conn.execute_batch(
        "CREATE TABLE cursors (name TEXT PRIMARY KEY, acked INTEGER NOT NULL);
         INSERT INTO cursors VALUES ('bench', 0);",
    )
    .unwrap();
    conn
}

/// Raw ureq: the same bodies and headers a webhook sink sends, posted in a loop by one
/// keep-alive agent (the baseline for delivery). With `cursor`, each request is followed
/// by a one-row UPDATE committed there (and a checkpoint every 1024, so the WAL starts
/// over): the least a spool that keeps its cursor in SQLite does per request, when a
/// crash may replay only the request in flight.
fn raw_ureq(url: &str, events: u64, batch: u64, cursor: Option<&Connection>) -> f64 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let requests: Vec<(String, Vec<u8>)> = (0..events / batch)
        .map(|r| {
            let (first, last) = (r * batch + 1, (r + 1) * batch);
            let items: Vec<StoredEvent> = (first..=last).map(stored).collect();
            let body = if batch == 1 {
                serde_json::to_vec(&items[0]).unwrap()
            } else {
                serde_json::to_vec(&items).unwrap()
            };
            (format!("{first}-{last}"), body)
        })
        .collect();
    let start = Instant::now();
    for (i, (range, body)) in requests.iter().enumerate() {
        let mut response = agent
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", "bench")
            .header("webhook-timestamp", "0")
            .header("eventspool-seq", range)
            .send(&body[..])
            .unwrap();
        assert!(response.status().is_success());
        let _ = response.body_mut().read_to_vec();
        if let Some(conn) = cursor {
            conn.prepare_cached("UPDATE cursors SET acked = ?1 WHERE name = 'bench'")
                .unwrap()
                .execute([((i as u64 + 1) * batch) as i64])
                .unwrap();
            if i % 1024 == 1023 {
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    .unwrap();
            }
        }
    }
    rate(events, start.elapsed())
}

/// The webhook sink called directly in a loop, without a spool: what the sink itself
/// costs next to raw ureq; the spool adds reading the file and the durable cursor.
fn direct_sink(url: &str, events: u64, batch: u64) -> f64 {
    let mut sink = bench_sink(url, batch as usize, 1);
    let batches: Vec<Vec<StoredEvent>> = (0..events / batch)
        .map(|r| (r * batch + 1..=(r + 1) * batch).map(stored).collect())
        .collect();
    let start = Instant::now();
    for events in &batches {
        eventspool::Sink::deliver(&mut sink, events).unwrap();
    }
    rate(events, start.elapsed())
}

fn bench_sink(url: &str, batch: usize, commit_every: usize) -> WebhookSink {
    WebhookSink::new("bench", url)
        .batch(batch)
        .commit_every(commit_every)
        .max_retries(None)
        .backoff(Backoff::exponential(
            Duration::from_millis(1),
            Duration::from_millis(10),
        ))
}

fn wait_for(receiver: &support::Receiver, events: u64) {
    while receiver.events() < events {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Delivery through the spool: `events` are stored while the receiver is down; the
/// clock runs from the moment it comes up until it has them all. Also returns where the
/// worker's time went per request: reading, delivering, committing the cursor.
fn spool_delivery(
    dir: &std::path::Path,
    name: &str,
    events: u64,
    batch: usize,
    commit_every: usize,
) -> (f64, [f64; 3]) {
    spool_delivery_with(dir, name, events, |url| {
        bench_sink(url, batch, commit_every)
    })
}

/// [`spool_delivery`] through the sink `make` returns for the receiver's URL.
fn spool_delivery_with(
    dir: &std::path::Path,
    name: &str,
    events: u64,
    make: impl Fn(&str) -> WebhookSink,
) -> (f64, [f64; 3]) {
    let receiver = support::Receiver::start("127.0.0.1:0", None, false).unwrap();
    let (addr, url) = (receiver.addr.to_string(), receiver.url());
    receiver.stop();
    let spool = Spool::builder(dir.join(name))
        .max_bytes(u64::MAX)
        .sink(make(&url))
        .open()
        .unwrap();
    for i in 0..events {
        spool.emit(event(i)).unwrap();
    }
    spool.flush(Duration::from_secs(60)).unwrap();
    let start = Instant::now();
    let receiver = support::Receiver::start(&addr, None, false).unwrap();
    wait_for(&receiver, events);
    let r = rate(events, start.elapsed());
    let m = spool.metrics().sinks.remove(0);
    let per_request = |us: u64| us as f64 / m.attempts.max(1) as f64;
    let steps = [m.read_us, m.deliver_us, m.commit_us].map(per_request);
    spool.close(Duration::from_secs(10)).unwrap();
    receiver.stop();
    (r, steps)
}

/// End-to-end latency, `emit` to receipt, at 1000 events/s, one event per request.
fn e2e_latency(dir: &std::path::Path, events: u64) -> (Duration, Duration) {
    let receiver = support::Receiver::start("127.0.0.1:0", None, false).unwrap();
    let spool = Spool::builder(dir.join("e2e.db"))
        .sink(bench_sink(&receiver.url(), 1, 1))
        .open()
        .unwrap();
    let start = Instant::now();
    let mut emitted = Vec::with_capacity(events as usize);
    for i in 0..events {
        let due = start + Duration::from_millis(i);
        while Instant::now() < due {
            std::thread::sleep(due - Instant::now());
        }
        emitted.push(Instant::now());
        spool.emit(event(i)).unwrap();
    }
    wait_for(&receiver, events);
    let mut latencies: Vec<Duration> = receiver
        .log
        .lock()
        .unwrap()
        .deliveries
        .iter()
        .map(|d| d.at - emitted[d.first as usize - 1])
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    (pct(0.50), pct(0.99))
}

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Raw SQLite: read 1000 rows by seq, then delete them, in a loop.
fn raw_read_delete(dir: &std::path::Path, name: &str, n: u64) -> f64 {
    let mut conn = raw_conn(dir, name);
    {
        let tx = conn.transaction().unwrap();
        let mut stmt = tx
            .prepare("INSERT INTO events (seq, type, ts, data) VALUES (?1, 'bench.event', 0, ?2)")
            .unwrap();
        for i in 0..n {
            stmt.execute(params![i as i64 + 1, payload(i)]).unwrap();
        }
        drop(stmt);
        tx.commit().unwrap();
    }
    let start = Instant::now();
    let (mut after, mut read) = (0i64, 0u64);
    loop {
        let rows: Vec<(i64, String)> = conn
            .prepare_cached("SELECT seq, data FROM events WHERE seq > ?1 ORDER BY seq LIMIT 1000")
            .unwrap()
            .query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let Some(&(last, _)) = rows.last() else { break };
        read += rows.len() as u64;
        conn.execute("DELETE FROM events WHERE seq <= ?1", [last])
            .unwrap();
        after = last;
    }
    assert_eq!(read, n);
    rate(n, start.elapsed())
}

/// Raw SQLite, one event at a time: SELECT the oldest row, DELETE it (autocommit) — what
/// a naive per-event drain does (the baseline for per-event sinks).
fn raw_per_event(dir: &std::path::Path, name: &str, n: u64) -> f64 {
    let conn = raw_conn(dir, name);
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        conn.execute_batch("BEGIN").unwrap();
        for &i in chunk {
            conn.execute(
                "INSERT INTO events (seq, type, ts, data) VALUES (?1, 'bench.event', 0, ?2)",
                params![i as i64 + 1, payload(i)],
            )
            .unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
    }
    let start = Instant::now();
    let mut read = 0u64;
    loop {
        let row: Option<(i64, String)> = conn
            .prepare_cached("SELECT seq, data FROM events ORDER BY seq LIMIT 1")
            .unwrap()
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .ok();
        let Some((seq, _)) = row else { break };
        conn.prepare_cached("DELETE FROM events WHERE seq = ?1")
            .unwrap()
            .execute([seq])
            .unwrap();
        read += 1;
    }
    assert_eq!(read, n);
    rate(n, start.elapsed())
}

/// A sink that takes every event, one per call.
struct Count(u64);

impl eventspool::Sink for Count {
    fn name(&self) -> &str {
        "count"
    }
    fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), eventspool::DeliveryError> {
        self.0 += events.len() as u64;
        Ok(())
    }
}

/// `drain_to` a sink with the trait's default batch (1) and `commit_every` (1).
fn drain_per_event(dir: &std::path::Path, name: &str, n: u64) -> f64 {
    let spool = open(dir, name);
    spool.append_batch(Vec::new()).unwrap();
    // Registered first, so it holds back every event.
    assert_eq!(spool.drain_to(&mut Count(0)).unwrap(), 0);
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        spool
            .append_batch(chunk.iter().map(|&i| event(i)).collect())
            .unwrap();
    }
    let mut sink = Count(0);
    let start = Instant::now();
    assert_eq!(spool.drain_to(&mut sink).unwrap() as u64, n);
    rate(n, start.elapsed())
}

/// A consumer group reading everything stored and acking every 1000 events.
fn consume(dir: &std::path::Path, name: &str, n: u64) -> f64 {
    let spool = open(dir, name);
    for i in 0..n {
        spool.emit(event(i)).unwrap();
    }
    spool.flush(Duration::from_secs(600)).unwrap();
    let start = Instant::now();
    let mut sub = spool
        .subscribe("bench", eventspool::SeekPosition::Beginning)
        .unwrap();
    let mut read = 0u64;
    while let Some(e) = sub.try_next().unwrap() {
        read += 1;
        if read.is_multiple_of(1000) || read == n {
            sub.ack(e.seq).unwrap();
        }
    }
    assert_eq!(read, n);
    rate(n, start.elapsed())
}

/// Stores `events` events in a fresh process and reports its memory.
fn rss_child(events: u64) {
    let dir = tempfile::tempdir().unwrap();
    let spool = open(dir.path(), "rss.db");
    let before = rss_kib("VmRSS:");
    let start = Instant::now();
    for i in 0..events {
        spool.emit(event(i)).unwrap();
    }
    spool.flush(Duration::from_secs(600)).unwrap();
    let took = start.elapsed();
    let stored = spool.metrics().stored_events;
    println!(
        "{stored} events stored in {:.1} s ({:.0}/s), in a process of their own: RSS {} MiB before, {} MiB after, peak (VmHWM) {} MiB",
        took.as_secs_f64(),
        rate(events, took),
        before / 1024,
        rss_kib("VmRSS:") / 1024,
        rss_kib("VmHWM:") / 1024
    );
}

/// Delivery throughput next to a raw ureq loop posting the same bodies, and the same
/// loop committing a cursor after each request, alternated three times; the medians are
/// printed.
/// The `commit_every` of the delivery rows that put off the cursor commit.
const COMMIT_EVERY: usize = 8;

fn delivery(d: &std::path::Path, s: &Scale) {
    println!();
    println!(
        "| delivery to a local receiver (median of 3) | events/s | vs raw ureq | vs raw ureq + cursor |"
    );
    println!("|---|---:|---:|---:|");
    let mut notes = Vec::new();
    for (batch, n, name) in [
        (1, s.deliver_single, "one event per request"),
        (100, s.deliver_batched, "batches of 100"),
    ] {
        // Alternated like the raw baseline and `emit` above.
        let (mut raws, mut floors, mut directs, mut ours, mut relaxed) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..3 {
            let receiver = support::Receiver::start("127.0.0.1:0", None, false).unwrap();
            raws.push(raw_ureq(&receiver.url(), n, batch, None));
            let cursor = cursor_conn(d, &format!("cursor{batch}-{round}.db"));
            floors.push(raw_ureq(&receiver.url(), n, batch, Some(&cursor)));
            directs.push(direct_sink(&receiver.url(), n, batch));
            receiver.stop();
            let file = format!("deliver{batch}-{round}.db");
            let (rate, steps) = spool_delivery(d, &file, n, batch as usize, 1);
            ours.push(rate);
            let file = format!("deliver{batch}-{round}-every.db");
            relaxed.push(spool_delivery(d, &file, n, batch as usize, COMMIT_EVERY).0);
            let [read, deliver, commit] = steps;
            notes.push(format!(
                "{name}, round {}: {rate:.0}/s; per request {read:.0} µs reading (on the reader thread, beside the request), {deliver:.0} µs in the sink, {commit:.0} µs committing the cursor",
                round + 1
            ));
        }
        let (raw, floor) = (median(&mut raws), median(&mut floors));
        let (direct, ours) = (median(&mut directs), median(&mut ours));
        let relaxed = median(&mut relaxed);
        println!("| raw ureq, {name} (baseline) | {raw:.0} | 1.00× | – |");
        println!(
            "| raw ureq + a cursor committed after each request, {name} | {floor:.0} | {:.2}× | 1.00× |",
            floor / raw
        );
        println!(
            "| webhook sink called directly, {name} | {direct:.0} | {:.2}× | – |",
            direct / raw
        );
        println!(
            "| spool → webhook sink, {name} | {ours:.0} | {:.2}× | {:.2}× |",
            ours / raw,
            ours / floor
        );
        println!(
            "| spool → webhook sink, {name}, `commit_every({COMMIT_EVERY})` | {relaxed:.0} | {:.2}× | {:.2}× |",
            relaxed / raw,
            relaxed / floor
        );
    }
    println!();
    for note in notes {
        println!("- {note}");
    }
    let (p50, p99) = e2e_latency(d, s.e2e_events);
    println!();
    println!("end-to-end latency, `emit` to receipt at 1000 events/s: p50 {p50:?}, p99 {p99:?}");
}

/// A subscription reading stored events next to raw SQLite reading and deleting them,
/// alternated three times; the medians are printed.
fn consuming(d: &std::path::Path, s: &Scale) {
    let (mut raws, mut ours) = (Vec::new(), Vec::new());
    for round in 0..3 {
        raws.push(raw_read_delete(
            d,
            &format!("consume-raw{round}.db"),
            s.consume,
        ));
        ours.push(consume(d, &format!("consume{round}.db"), s.consume));
    }
    let (raw, ours) = (median(&mut raws), median(&mut ours));
    println!(
        "| consuming {} stored events (median of 3) | events/s | vs raw |",
        s.consume
    );
    println!("|---|---:|---:|");
    println!("| raw SQLite: read 1000 by seq, delete them (baseline) | {raw:.0} | 1.00× |");
    println!(
        "| subscription, ack every 1000 | {ours:.0} | {:.2}× |",
        ours / raw
    );
    let n = s.consume / 10;
    let (mut raws, mut ours, mut hooks) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..3 {
        raws.push(raw_per_event(d, &format!("per-event-raw{round}.db"), n));
        ours.push(drain_per_event(d, &format!("per-event{round}.db"), n));
        let file = format!("per-event-hook{round}.db");
        hooks.push(
            spool_delivery_with(d, &file, n / 2, |url| {
                bench_sink(url, 1, 1)
                    .order(Order::Unordered)
                    .concurrency(Concurrency::Fixed(8))
            })
            .0,
        );
    }
    let (raw, ours, hook) = (median(&mut raws), median(&mut ours), median(&mut hooks));
    println!();
    println!("| one event at a time, {n} events (median of 3) | events/s | vs raw |");
    println!("|---|---:|---:|");
    println!(
        "| raw SQLite: SELECT the oldest, DELETE it, per event (baseline) | {raw:.0} | 1.00× |"
    );
    println!(
        "| `drain_to`, batch 1, cursor committed after each event | {ours:.0} | {:.2}× |",
        ours / raw
    );
    println!(
        "| spool → webhook sink to a local receiver, one event per request, `Unordered`, `Fixed(8)` | {hook:.0} | {:.2}× |",
        hook / raw
    );
}

/// Raw ureq from `threads` threads, each with its own keep-alive agent, posting one
/// event per request: the baseline for concurrent delivery.
fn raw_threads(url: &str, threads: u64, events: u64) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let url = url.to_owned();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                for i in (t..events).step_by(threads as usize) {
                    let body = serde_json::to_vec(&stored(i + 1)).unwrap();
                    let mut response = agent
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("eventspool-seq", format!("{0}-{0}", i + 1))
                        .send(&body[..])
                        .unwrap();
                    let _ = response.body_mut().read_to_vec();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    rate(events, start.elapsed())
}

/// Delivery through a spool to a receiver that answers after 20 ms, one event per
/// request: `events` are stored while it is down; the clock runs from the moment it
/// comes up until it has them all.
fn slow_delivery(
    dir: &std::path::Path,
    name: &str,
    events: u64,
    sink: WebhookSink,
    addr: &str,
) -> f64 {
    let spool = Spool::builder(dir.join(name))
        .max_bytes(u64::MAX)
        .sink(sink)
        .open()
        .unwrap();
    spool
        .append_batch(
            (0..events)
                .map(|i| event(i).subject(format!("key-{}", i % 1024)))
                .collect(),
        )
        .unwrap();
    let start = Instant::now();
    let receiver = support::Receiver::start_slow(addr, Duration::from_millis(20)).unwrap();
    wait_for(&receiver, events);
    let r = rate(events, start.elapsed());
    spool.close(Duration::from_secs(10)).unwrap();
    receiver.stop();
    r
}

/// Concurrent delivery to a receiver 20 ms away, one event per request.
fn concurrency(d: &std::path::Path, s: &Scale) {
    let receiver = support::Receiver::start_slow("127.0.0.1:0", Duration::from_millis(20)).unwrap();
    let (addr, url) = (receiver.addr.to_string(), receiver.url());
    let raw = raw_threads(&url, 32, s.concurrent);
    receiver.stop();
    let sink = || {
        bench_sink(&url, 1, 1).backoff(Backoff::exponential(
            Duration::from_millis(1),
            Duration::from_millis(20),
        ))
    };
    let fixed = |n| Concurrency::Fixed(n);
    let total = slow_delivery(d, "c-total.db", s.concurrent / 32, sink(), &addr);
    let per_key = slow_delivery(
        d,
        "c-key.db",
        s.concurrent,
        sink().order(Order::PerKey).concurrency(fixed(32)),
        &addr,
    );
    let unordered = slow_delivery(
        d,
        "c-any.db",
        s.concurrent,
        sink().order(Order::Unordered).concurrency(fixed(32)),
        &addr,
    );
    let adaptive = slow_delivery(
        d,
        "c-adaptive.db",
        s.concurrent,
        sink()
            .order(Order::PerKey)
            .concurrency(Concurrency::Adaptive { max: 64 }),
        &addr,
    );
    let best_fixed = per_key.max(unordered);
    println!(
        "| delivery to a receiver 20 ms away, one event per request | events/s | vs raw | vs best fixed |"
    );
    println!("|---|---:|---:|---:|");
    println!("| raw ureq, 32 threads (baseline) | {raw:.0} | 1.00× | – |");
    println!(
        "| `Order::Total`, one in flight (the default) | {total:.0} | {:.3}× | – |",
        total / raw
    );
    println!(
        "| `Order::PerKey`, `Fixed(32)`, 1 024 keys | {per_key:.0} | {:.2}× | – |",
        per_key / raw
    );
    println!(
        "| `Order::Unordered`, `Fixed(32)` | {unordered:.0} | {:.2}× | – |",
        unordered / raw
    );
    println!(
        "| `Order::PerKey`, `Adaptive {{ max: 64 }}` | {adaptive:.0} | {:.2}× | {:.2}× |",
        adaptive / raw,
        adaptive / best_fixed
    );
}

/// Opening a spool of `n` events, warm (the file in the page cache): `Spool::open`
/// against the raw baseline of opening the file with rusqlite and reading its last
/// seq, alternated five times, medians in ms.
fn opening(d: &std::path::Path, s: &Scale) {
    let path = d.join("open.db");
    let spool = open(d, "open.db");
    let mut n = 0;
    while n < s.open_events {
        let k = (s.open_events - n).min(10_000);
        spool.append_batch((n..n + k).map(event).collect()).unwrap();
        n += k;
    }
    spool.close(Duration::from_secs(600)).unwrap();
    drop(spool);
    let bytes = std::fs::metadata(&path).unwrap().len();
    let (mut raws, mut ours) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let start = Instant::now();
        let conn = Connection::open(&path).unwrap();
        let last: i64 = conn
            .query_row("SELECT max(seq) FROM events", [], |r| r.get(0))
            .unwrap();
        assert_eq!(last as u64, s.open_events);
        drop(conn);
        raws.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        let spool = Spool::open(&path).unwrap();
        ours.push(start.elapsed().as_secs_f64() * 1e3);
        spool.close(Duration::from_secs(60)).unwrap();
    }
    let (raw, ours) = (median(&mut raws), median(&mut ours));
    println!(
        "| opening a spool of {} events ({} MB), warm (median of 5) | ms | vs raw |",
        s.open_events,
        bytes >> 20
    );
    println!("|---|---:|---:|");
    println!("| raw rusqlite: open, read max(seq) (baseline) | {raw:.2} | 1.00× |");
    println!("| `Spool::open` | {ours:.2} | {:.2}× |", ours / raw);
}

/// How long `n` calls took on the caller's thread, and until `flush` returned.
#[derive(Debug, Clone, Copy)]
struct Timed {
    calls: Duration,
    until_flush: Duration,
}

/// Runs the C bench program (`examples/c/bench.c`) for `n` calls of `mode`.
fn c_bench(program: &std::path::Path, path: &std::path::Path, n: u64, mode: &str) -> Timed {
    let out = std::process::Command::new(program)
        .arg(path)
        .arg(n.to_string())
        .arg(mode)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let ns = |i: usize| Duration::from_nanos(words[i].parse().unwrap());
    Timed {
        calls: ns(4),
        until_flush: ns(8),
    }
}

/// The Rust side of [`c_bench`]: the same bodies, made before the clock starts.
fn rust_bench(path: &std::path::Path, n: u64, mode: &str) -> Timed {
    let spool = Spool::builder(path)
        .max_bytes(u64::MAX)
        .channel_capacity(1 << 20)
        .open()
        .unwrap();
    let bodies: Vec<String> = (0..n).map(payload).collect();
    let start = Instant::now();
    match mode {
        // As C hands them over: borrowed, so emit copies them.
        "emit-borrowed" => {
            for body in &bodies {
                spool
                    .emit(Event::from_json("bench.event", body.as_str()))
                    .unwrap();
            }
        }
        "append" => {
            for body in bodies {
                spool.append(Event::from_json("bench.event", body)).unwrap();
            }
        }
        _ => {
            for body in bodies {
                spool.emit(Event::from_json("bench.event", body)).unwrap();
            }
        }
    }
    let calls = start.elapsed();
    spool.flush(Duration::from_secs(600)).unwrap();
    Timed {
        calls,
        until_flush: start.elapsed(),
    }
}

/// Alternates Rust and C `rounds` times; the median of each pair's C/Rust ratio of
/// `measure` (a rate: higher is better), with the medians of the rates themselves.
fn alternate(
    rounds: usize,
    mut rust: impl FnMut(usize) -> f64,
    mut c: impl FnMut(usize) -> f64,
) -> (f64, f64, f64) {
    let (mut rs, mut cs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (r, c) = (rust(round), c(round));
        ratios.push(c / r);
        rs.push(r);
        cs.push(c);
    }
    (median(&mut rs), median(&mut cs), median(&mut ratios))
}

/// `emit` through the Python wrapper (ctypes) until `flush` returns: events/s.
fn python_bench(library: &std::path::Path, path: &std::path::Path, n: u64) -> f64 {
    let script = format!(
        "import sys, time; sys.path.insert(0, 'examples/python'); import eventspool\n\
         s = eventspool.Spool(sys.argv[1], {{'max_bytes': 2**64 - 1}})\n\
         data = [{{'n': i, 'pad': 'x' * 230}} for i in range({n})]\n\
         t = time.perf_counter()\n\
         for d in data: s.emit('bench.event', d)\n\
         s.flush()\n\
         print(time.perf_counter() - t); s.close()"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .arg(path)
        .env("EVENTSPOOL_LIB", library)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    n as f64 / secs
}

/// The library's file stripped of symbols and debug info, in KiB.
fn stripped_kib(library: &std::path::Path, dir: &std::path::Path, name: &str) -> u64 {
    let copy = dir.join(name);
    let status = std::process::Command::new("strip")
        .arg("-o")
        .arg(&copy)
        .arg(library)
        .status()
        .unwrap();
    assert!(status.success(), "strip failed");
    std::fs::metadata(copy).unwrap().len() / 1024
}

/// The C API against the same calls from Rust, alternating, and the library's size
/// with and without TLS.
fn c_api(d: &std::path::Path, s: &Scale) {
    let library = capi::build(&["--release"]);
    let program = d.join("c-bench");
    let source = capi::root().join("examples/c/bench.c");
    capi::compile(&library, &[source], &program, &["-O2"]);
    let file = |kind: &str, round: usize| d.join(format!("{kind}{round}.db"));
    // Below the channel's capacity: the calls never wait for the writer.
    let calls = s.emit / 2;
    let per_call = |t: Timed| calls as f64 / t.calls.as_secs_f64();
    let (rust_calls, c_calls, calls_ratio) = alternate(
        7,
        |r| per_call(rust_bench(&file("rust-calls", r), calls, "emit")),
        |r| per_call(c_bench(&program, &file("c-calls", r), calls, "emit")),
    );
    let (rust_borrowed, _, borrowed_ratio) = alternate(
        7,
        |r| {
            per_call(rust_bench(
                &file("rust-borrowed", r),
                calls,
                "emit-borrowed",
            ))
        },
        |r| per_call(c_bench(&program, &file("c-calls2", r), calls, "emit")),
    );
    let flushed = |n: u64| move |t: Timed| n as f64 / t.until_flush.as_secs_f64();
    let (rust_emit, c_emit, emit_ratio) = alternate(
        5,
        |r| flushed(s.emit)(rust_bench(&file("rust-emit", r), s.emit, "emit")),
        |r| flushed(s.emit)(c_bench(&program, &file("c-emit", r), s.emit, "emit")),
    );
    let appends = s.append[0].1;
    let (rust_append, c_append, append_ratio) = alternate(
        5,
        |r| flushed(appends)(rust_bench(&file("rust-append", r), appends, "append")),
        |r| flushed(appends)(c_bench(&program, &file("c-append", r), appends, "append")),
    );
    let python = python_bench(&library.shared, &d.join("python.db"), s.emit / 10);
    println!(
        "| 1 thread, Rust and C alternating | Rust events/s | C events/s | C / Rust (median of pairs) |"
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| `emit` calls, {calls} events (room in the channel; 7 pairs) | {rust_calls:.0} | {c_calls:.0} | {calls_ratio:.2}× |"
    );
    println!(
        "| `emit` calls, Rust borrowing the JSON as C does (it is copied), 7 pairs | {rust_borrowed:.0} | | {borrowed_ratio:.2}× |"
    );
    println!(
        "| `emit` until `flush`, {} events (5 pairs) | {rust_emit:.0} | {c_emit:.0} | {emit_ratio:.2}× |",
        s.emit
    );
    println!(
        "| `append`, {appends} events (5 pairs) | {rust_append:.0} | {c_append:.0} | {append_ratio:.2}× |"
    );
    println!(
        "| Python `Spool.emit` until `flush` (ctypes, `json.dumps` included), {} events | | {python:.0} | {:.2}× |",
        s.emit / 10,
        python / rust_emit
    );
    let with_tls = stripped_kib(&library.shared, d, "with-tls.so");
    let without = capi::build(&["--release", "--no-default-features"]);
    let without_tls = stripped_kib(&without.shared, d, "without-tls.so");
    capi::build(&["--release"]); // leave target/release/ as the default build has it
    println!();
    println!(
        "Stripped `libeventspool.so`: {with_tls} KiB with the default features, \
         {without_tls} KiB without `tls` (`--no-default-features --features capi`)"
    );
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--rss-child") {
        return rss_child(args[i + 1].parse().unwrap());
    }
    let quick = args.iter().any(|a| a == "--quick");
    // `--delivery`: only the delivery figures, end-to-end latency included (for
    // comparing changes to the workers);
    // `--ingest`: only the emit and append figures (for changes to the writer);
    // `--consume`: only the subscription figures.
    let delivery_only = args.iter().any(|a| a == "--delivery");
    let consume_only = args.iter().any(|a| a == "--consume");
    let ingest_only = args.iter().any(|a| a == "--ingest");
    let open_only = args.iter().any(|a| a == "--open");
    let concurrency_only = args.iter().any(|a| a == "--concurrency");
    let capi_only = args.iter().any(|a| a == "--capi");
    let s = if quick { QUICK } else { FULL };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    println!(
        "eventspool bench ({} events of {EVENT_BYTES} B JSON{})",
        s.emit,
        if quick { ", --quick" } else { "" }
    );
    println!();

    // The raw baseline and `emit` alternate three times; the medians are reported, so a
    // burst of load from elsewhere on the machine skews one round, not the figures.
    if delivery_only {
        return delivery(d, &s);
    }
    if consume_only {
        return consuming(d, &s);
    }
    if open_only {
        return opening(d, &s);
    }
    if concurrency_only {
        return concurrency(d, &s);
    }
    if capi_only {
        return c_api(d, &s);
    }
    if args.iter().any(|a| a == "--brokers") {
        #[cfg(all(feature = "redis", feature = "nats"))]
        return brokers::run(d, s.deliver_batched / 5);
        #[cfg(not(all(feature = "redis", feature = "nats")))]
        panic!(
            "--brokers needs the broker sinks: cargo run --release --example bench --features redis,nats -- --brokers"
        );
    }
    if args.iter().any(|a| a == "--encryption") {
        #[cfg(feature = "encryption")]
        return encryption::run(d, 1_000_000);
        #[cfg(not(feature = "encryption"))]
        panic!(
            "--encryption needs the feature: cargo run --release --example bench --features encryption -- --encryption"
        );
    }
    if args.iter().any(|a| a == "--kafka") {
        #[cfg(feature = "kafka")]
        // More than the other brokers: the sink's time includes its producer's start.
        return kafka::run(d, s.deliver_batched * 3 / 5);
        #[cfg(not(feature = "kafka"))]
        panic!(
            "--kafka needs the Kafka sink: cargo run --release --example bench --features kafka -- --kafka"
        );
    }
    let (mut bases, mut emits) = (Vec::new(), Vec::new());
    for round in 0..3 {
        bases.push(raw_baseline(d, &format!("raw{round}.db"), s.baseline));
        emits.push(emit_throughput(d, &format!("emit{round}.db"), s.emit));
    }
    let (base, emit) = (median(&mut bases), median(&mut emits));
    let naive = naive_baseline(d, s.naive);
    println!("| measure | events/s | vs raw baseline | vs naive |");
    println!("|---|---:|---:|---:|");
    println!(
        "| raw rusqlite, 1000-row transactions (baseline, median of 3) | {base:.0} | 1.00× | {:.1}× |",
        base / naive
    );
    println!(
        "| naive autocommit per event (second baseline) | {naive:.0} | {:.2}× | 1.0× |",
        naive / base
    );
    println!(
        "| `emit`, 1 thread, until `flush` returns (median of 3) | {emit:.0} | {:.2}× | {:.1}× |",
        emit / base,
        emit / naive
    );
    for (threads, n) in s.append {
        let (r, batch) = append_throughput(d, threads, n);
        println!(
            "| `append`, {threads} thread{} (mean batch {batch:.1}) | {r:.0} | {:.2}× | {:.1}× |",
            if threads == 1 { "" } else { "s" },
            r / base,
            r / naive
        );
    }
    let (p50, p99, p999) = emit_latency(d, s.latency_rounds);
    println!();
    println!(
        "`emit` latency on the caller's thread (channel has room): p50 {p50} ns, p99 {p99} ns, p99.9 {p999} ns"
    );
    if ingest_only {
        return;
    }

    delivery(d, &s);
    println!();
    consuming(d, &s);
    println!();
    opening(d, &s);
    println!();
    concurrency(d, &s);
    println!();

    // Peak RSS in a process of its own, so the baselines' buffers above do not count.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--rss-child", &s.rss_events.to_string()])
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
}
