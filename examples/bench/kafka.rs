//! `bench --kafka` (feature `kafka`): the Kafka sink against a raw librdkafka producer
//! doing the same batches, on librdkafka's mock cluster (in this process), alternating
//! rounds; medians of 3.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use eventspool::{Backoff, KafkaSink};
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
    let bodies: Vec<String> = (0..n).map(payload).collect();
    let start = Instant::now();
    for (c, chunk) in bodies.chunks(BATCH).enumerate() {
        for (i, body) in chunk.iter().enumerate() {
            let mut record: BaseRecord<(), str> = BaseRecord::to(topic).payload(body.as_str());
            if how == Raw::SameRecords {
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
        if wait {
            for _ in chunk {
                assert!(reports.recv().unwrap());
            }
        }
    }
    if !wait {
        for _ in 0..n {
            assert!(reports.recv().unwrap());
        }
    }
    rate(n, start.elapsed())
}

pub(crate) fn run(dir: &std::path::Path, n: u64) {
    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let (mut raws, mut same, mut piped, mut sinks) = (vec![], vec![], vec![], vec![]);
    for round in 0..3 {
        for topic in ["raw", "same", "piped", "sink"] {
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
    println!(
        "| {n} events of 256 B JSON, {BATCH} per batch, librdkafka's mock cluster (median of 3) | events/s | vs raw |"
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
        "| `KafkaSink`, a backlog from open until delivered (headers, partition by key, ends read at start) | {sink:.0} | {:.2}× ({:.2}× the same records) |",
        sink / raw,
        sink / same
    );
    println!(
        "| raw idempotent producer, every record sent before any report is awaited | {piped:.0} | {:.2}× |",
        piped / raw
    );
}
