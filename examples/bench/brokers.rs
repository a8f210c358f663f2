//! `bench --brokers` (features `redis` and `nats`): the broker sinks against a raw
//! client doing the same pipelined writes, on servers the bench starts, alternating
//! rounds; medians of 3.

use std::time::{Duration, Instant};

use eventspool::{Backoff, NatsSink, RedisSink};

#[allow(dead_code)] // the tests use more of it
#[path = "../../tests/common/brokers.rs"]
mod servers;

#[allow(dead_code)] // the tests use more of it
#[path = "../../tests/common/nats.rs"]
mod nats_client;

use super::{backlog_through as through, median, payload, rate};

const BATCH: usize = 100;

/// Polls `done` until it holds (the servers module waits with it).
fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Events/s of `XADD` pipelined `BATCH` at a time with the redis crate, each entry with
/// the fields the sink writes (`id`, `type`, `timestamp_ms`, `data`).
fn raw_redis(url: &str, key: &str, n: u64) -> f64 {
    let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
    let bodies: Vec<String> = (0..n).map(payload).collect();
    let start = Instant::now();
    for chunk in bodies.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for body in chunk {
            pipe.cmd("XADD")
                .arg(key)
                .arg("*")
                .arg("id")
                .arg("01JF3Z8Q5XKQ4V7R2M9N6B1C0D")
                .arg("type")
                .arg("bench.event")
                .arg("timestamp_ms")
                .arg(1_796_000_000_000i64)
                .arg("data")
                .arg(body)
                .ignore();
        }
        let () = pipe.query(&mut conn).unwrap();
    }
    rate(n, start.elapsed())
}

/// Events/s of JetStream publishes, `BATCH` to a write, acknowledgements read with at
/// most `in_flight` writes unacknowledged; each message the event's JSON, as the sink
/// sends it.
fn raw_nats(port: u16, subject: &str, n: u64, with_ids: bool, in_flight: usize) -> f64 {
    let mut nats = nats_client::Nats::connect(port).unwrap();
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let data: serde_json::Value = serde_json::from_str(&payload(i)).unwrap();
            let event = serde_json::json!({"id": format!("raw-{i}"), "seq": i + 1,
                "type": "bench.event", "source": null, "subject": null,
                "timestamp_ms": 1_796_000_000_000i64, "data": data});
            serde_json::to_vec(&event).unwrap()
        })
        .collect();
    let ids: Vec<String> = (0..n).map(|i| format!("{subject}-{i}")).collect();
    let start = Instant::now();
    nats.publish_windows(
        subject,
        &bodies,
        with_ids.then_some(&ids[..]),
        BATCH,
        in_flight,
    )
    .unwrap();
    rate(n, start.elapsed())
}

fn backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(5), Duration::from_millis(100))
}

pub(crate) fn run(dir: &std::path::Path, n: u64) {
    let redis = servers::Broker::redis(dir);
    let nats = servers::Broker::nats(dir);
    let mut client = nats_client::Nats::connect(nats.port).unwrap();
    // The raw client's messages in a stream of their own: the sink's stream is its own.
    client.create_stream("RAW", &["raw.>"]).unwrap();
    let (mut raw_r, mut sink_r, mut raw_n, mut sink_n) = (vec![], vec![], vec![], vec![]);
    let (mut raw_ids, mut raw_two) = (vec![], vec![]);
    for round in 0..3 {
        raw_r.push(raw_redis(&redis.redis_url(), &format!("raw{round}"), n));
        let sink = RedisSink::new("redis", redis.redis_url(), &format!("sink{round}"))
            .batch(BATCH)
            .backoff(backoff());
        sink_r.push(through(dir, &format!("redis{round}"), sink, n));
        raw_n.push(raw_nats(
            nats.port,
            &format!("raw.plain{round}"),
            n,
            false,
            1,
        ));
        raw_ids.push(raw_nats(nats.port, &format!("raw.ids{round}"), n, true, 1));
        raw_two.push(raw_nats(nats.port, &format!("raw.two{round}"), n, false, 2));
        let subject = format!("sink{round}");
        client
            .create_stream(&format!("SINK{round}"), &[&subject])
            .unwrap();
        let sink = NatsSink::new("nats", &nats.nats_url(), &subject)
            .batch(BATCH)
            .backoff(backoff());
        sink_n.push(through(dir, &format!("nats{round}"), sink, n));
    }
    let (raw_r, sink_r) = (median(&mut raw_r), median(&mut sink_r));
    let (raw_n, sink_n) = (median(&mut raw_n), median(&mut sink_n));
    let (raw_ids, raw_two) = (median(&mut raw_ids), median(&mut raw_two));
    println!(
        "| {n} events of 256 B JSON, {BATCH} per round trip (median of 3) | events/s | vs raw |"
    );
    println!("|---|---:|---:|");
    println!(
        "| raw redis crate: `XADD` pipelined, the sink's fields (baseline) | {raw_r:.0} | 1.00× |"
    );
    println!(
        "| `RedisSink`, a backlog from open until delivered (`MULTI`/`EXEC` per batch, ids from seq) | {sink_r:.0} | {:.2}× |",
        sink_r / raw_r
    );
    println!(
        "| raw NATS client: JetStream publishes pipelined, acks read before the next write (baseline) | {raw_n:.0} | 1.00× |"
    );
    println!(
        "| raw NATS client, the same with `Nats-Msg-Id` on each message | {raw_ids:.0} | {:.2}× |",
        raw_ids / raw_n
    );
    println!(
        "| raw NATS client, 2 writes unacknowledged at a time (as the sink) | {raw_two:.0} | {:.2}× |",
        raw_two / raw_n
    );
    println!(
        "| `NatsSink`, a backlog from open until delivered (fenced by `Nats-Expected-Last-Sequence`, 2 round trips in flight) | {sink_n:.0} | {:.2}× |",
        sink_n / raw_n
    );
}
