//! `bench --kafka` (feature `kafka`): the Kafka sink against a raw librdkafka producer
//! doing the same batches, on librdkafka's mock cluster (in this process), alternating
//! rounds; medians of 5.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use eventspool::{Backoff, DEFAULT_KAFKA_IN_FLIGHT, KafkaSink};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};

use super::{backlog_through as through, median, payload, rate};

const BATCH: usize = 100;

/// Counts delivery reports for the raw producer.
struct Reports(Sender<bool>);

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let _ = self.0.send(result.is_ok());
    }
}

/// How the raw producer writes.
#[derive(Clone, Copy, PartialEq)]
enum Raw {
    /// `BATCH` records, then their delivery reports, and again.
    Batches,
    /// The same, each record with the headers the sink adds (`id`, `seq`, `type`).
    SameRecords,
    /// The same records, as many batches awaiting their reports at a time as the
    /// sink lets be ([`DEFAULT_KAFKA_IN_FLIGHT`]).
    InFlight,
    /// Every record sent before any report is awaited.
    Pipelined,
}

/// Events/s of a raw idempotent producer.
fn raw(bootstrap: &str, topic: &str, n: u64, how: Raw) -> f64 {
    let wait = how != Raw::Pipelined;
    let (sender, reports): (Sender<bool>, Receiver<bool>) = crossbeam_channel::unbounded();
    let producer: ThreadedProducer<Reports> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", if wait { "0" } else { "5" })
        .create_with_context(Reports(sender))
        .unwrap();
    // Started: connected, with its producer id (the sink's time includes its own start).
    let warm: BaseRecord<(), str> = BaseRecord::to("warm").payload("{}");
    producer.send(warm).map_err(|(e, _)| e).unwrap();
    assert!(reports.recv().unwrap());
    let bodies: Vec<String> = (0..n).map(payload).collect();
    let start = Instant::now();
    let mut received = 0;
    for (c, chunk) in bodies.chunks(BATCH).enumerate() {
        for (i, body) in chunk.iter().enumerate() {
            let mut record: BaseRecord<(), str> = BaseRecord::to(topic).payload(body.as_str());
            if matches!(how, Raw::SameRecords | Raw::InFlight) {
                let seq = (c * BATCH + i + 1).to_string();
                let headers = OwnedHeaders::new_with_capacity(3)
                    .insert(Header {
                        key: "id",
                        value: Some("01JF3Z8Q5XKQ4V7R2M9N6B1C0D"),
                    })
                    .insert(Header {
                        key: "seq",
                        value: Some(&seq),
                    })
                    .insert(Header {
                        key: "type",
                        value: Some("bench.event"),
                    });
                record = record.headers(headers).partition(0);
            }
            while let Err((_, back)) = producer.send(record) {
                record = back; // queue full
                producer.poll(Duration::from_millis(1));
            }
        }
        let keep = match how {
            Raw::InFlight => BATCH * (DEFAULT_KAFKA_IN_FLIGHT - 1),
            _ => 0,
        };
        let sent = c * BATCH + chunk.len();
        while wait && received + keep < sent {
            assert!(reports.recv().unwrap());
            received += 1;
        }
    }
    for _ in received..n as usize {
        assert!(reports.recv().unwrap());
    }
    rate(n, start.elapsed())
}

pub(crate) fn run(dir: &std::path::Path, n: u64) {
    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    cluster.create_topic("warm", 1, 1).unwrap();
    let (mut raws, mut same, mut piped, mut sinks) = (vec![], vec![], vec![], vec![]);
    let mut two = vec![];
    for round in 0..5 {
        for topic in ["raw", "same", "two", "piped", "sink"] {
            cluster
                .create_topic(&format!("{topic}{round}"), 1, 1)
                .unwrap();
        }
        raws.push(raw(&bootstrap, &format!("raw{round}"), n, Raw::Batches));
        same.push(raw(
            &bootstrap,
            &format!("same{round}"),
            n,
            Raw::SameRecords,
        ));
        two.push(raw(&bootstrap, &format!("two{round}"), n, Raw::InFlight));
        let sink = KafkaSink::new("kafka", &bootstrap, &format!("sink{round}"))
            .batch(BATCH)
            .backoff(Backoff::exponential(
                Duration::from_millis(5),
                Duration::from_millis(100),
            ));
        sinks.push(through(dir, &format!("kafka{round}"), sink, n));
        piped.push(raw(&bootstrap, &format!("piped{round}"), n, Raw::Pipelined));
    }
    let (raw, same) = (median(&mut raws), median(&mut same));
    let (piped, sink) = (median(&mut piped), median(&mut sinks));
    let two = median(&mut two);
    println!(
        "| {n} events of 256 B JSON, {BATCH} per batch, librdkafka's mock cluster (median of 5) | events/s | vs raw |"
    );
    println!("|---|---:|---:|");
    println!(
        "| raw idempotent producer: {BATCH} records, then their delivery reports (baseline) | {raw:.0} | 1.00× |"
    );
    println!(
        "| raw idempotent producer, the same records as the sink (its `id`, `seq`, `type` headers) | {same:.0} | {:.2}× |",
        same / raw
    );
    println!(
        "| raw idempotent producer, the same records, {DEFAULT_KAFKA_IN_FLIGHT} batches awaiting reports at a time (as the sink) | {two:.0} | {:.2}× |",
        two / raw
    );
    println!(
        "| `KafkaSink`, a backlog from open until delivered (headers, partition by key, ends read at start, {DEFAULT_KAFKA_IN_FLIGHT} batches in flight) | {sink:.0} | {:.2}× ({:.2}× the same records) |",
        sink / raw,
        sink / same
    );
    println!(
        "| raw idempotent producer, every record sent before any report is awaited | {piped:.0} | {:.2}× |",
        piped / raw
    );
}
