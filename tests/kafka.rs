//! The Kafka sink against a Kafka-protocol broker started here: librdkafka's mock
//! cluster, which speaks the Kafka protocol on 127.0.0.1 (Produce with idempotent
//! producer ids and sequence checks, Metadata, ListOffsets, Fetch) and needs neither
//! Java nor a download. Records are read back with a plain consumer, not the sink:
//! each event once, in seq order within its partition, through `kill -9` of the
//! delivering process and the broker going down and up.
#![cfg(feature = "kafka")]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use eventspool::{Backoff, Event, KafkaSink, Spool};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const T: Duration = Duration::from_secs(60);

type Cluster = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// A one-broker cluster with `topic` in `partitions` partitions.
fn cluster(topic: &str, partitions: i32) -> Cluster {
    let cluster = MockCluster::new(1).expect("a mock cluster");
    cluster.create_topic(topic, partitions, 1).expect("topic");
    cluster
}

/// One record as read back.
#[derive(Debug, Clone)]
struct Record {
    partition: i32,
    key: Option<String>,
    seq: u64,
    id: String,
    n: u64,
}

fn consumer(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// How many records the topic's partitions hold.
fn stored(bootstrap: &str, topic: &str) -> u64 {
    let consumer = consumer(bootstrap);
    let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return 0;
    };
    let partitions = metadata
        .topics()
        .first()
        .map_or(0, |t| t.partitions().len());
    (0..partitions as i32)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .map_or(0, |(low, high)| (high - low) as u64)
        })
        .sum()
}

/// Every record of `topic`, partition by partition, in offset order.
fn records(bootstrap: &str, topic: &str) -> Vec<Record> {
    let total = stored(bootstrap, topic);
    let consumer = consumer(bootstrap);
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .expect("metadata");
    let mut assignment = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, p.id(), Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + T;
    while (out.len() as u64) < total {
        assert!(Instant::now() < deadline, "read {} of {total}", out.len());
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.expect("a record");
        let header = |name: &str| {
            let headers = message.headers().expect("headers");
            let h = headers.iter().find(|h| h.key == name).expect(name);
            String::from_utf8(h.value.expect("a value").to_vec()).expect("UTF-8")
        };
        let data: serde_json::Value =
            serde_json::from_slice(message.payload().expect("a value")).expect("JSON data");
        out.push(Record {
            partition: message.partition(),
            key: message
                .key()
                .map(|k| String::from_utf8(k.to_vec()).expect("UTF-8")),
            seq: header("seq").parse().expect("a seq"),
            id: header("id"),
            n: data["n"].as_u64().expect("n"),
        });
    }
    out.sort_by_key(|r| r.partition); // stable: offset order kept within each
    out
}

/// Each of `0..n` once; within each partition, in seq order; and the seq of each is
/// `first_seq + n`.
fn assert_exactly_once(records: &[Record], n: u64, first_seq: u64) {
    let mut numbers: Vec<u64> = records.iter().map(|r| r.n).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..n).collect::<Vec<_>>(), "each event once");
    let mut last: BTreeMap<i32, u64> = BTreeMap::new();
    for record in records {
        assert_eq!(record.seq, first_seq + record.n);
        let before = last.insert(record.partition, record.seq).unwrap_or(0);
        assert!(
            before < record.seq,
            "in seq order within partition {}",
            record.partition
        );
    }
}

fn sink(bootstrap: &str) -> KafkaSink {
    KafkaSink::new("kafka", bootstrap, "events")
        .max_retries(None)
        .timeout(Duration::from_secs(5))
        .backoff(Backoff::exponential(
            Duration::from_millis(5),
            Duration::from_millis(100),
        ))
}

/// Event `n`, with a key from a few subjects, or none for every fifth.
fn keyed(n: u64) -> Event {
    let event = numbered(n);
    match n % 5 {
        0 => event,
        k => event.subject(format!("account-{k}")),
    }
}

#[test]
fn ten_thousand_events_land_once_each_in_order_per_partition() -> TestResult {
    let cluster = cluster("events", 3);
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir()?;
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&bootstrap))
        .open()?;
    for n in 0..10_000 {
        spool.emit(keyed(n).id(format!("event-{n}")))?;
    }
    wait_until(T, "10 000 delivered", || {
        spool.metrics().sinks[0].delivered == 10_000
    });
    let records = records(&bootstrap, "events");
    assert_exactly_once(&records, 10_000, 1);
    assert_eq!(spool.metrics().sinks[0].already_delivered, 0);
    // Keyed events stay in one partition each; keyless ones spread over all.
    for record in &records {
        if let Some(key) = &record.key {
            let same: Vec<i32> = records
                .iter()
                .filter(|r| r.key.as_ref() == Some(key))
                .map(|r| r.partition)
                .collect();
            assert!(same.iter().all(|&p| p == same[0]), "{key}");
        }
    }
    let keyless: std::collections::BTreeSet<i32> = records
        .iter()
        .filter(|r| r.key.is_none())
        .map(|r| r.partition)
        .collect();
    assert_eq!(keyless.len(), 3, "keyless events use every partition");
    assert!(
        records.iter().all(|r| r.id == format!("event-{}", r.n)),
        "each record's id header is its event's id"
    );
    spool.close(T)?;
    Ok(())
}

#[test]
fn keys_land_where_librdkafkas_murmur2_partitioner_puts_them() -> TestResult {
    let cluster = cluster("events", 7);
    cluster.create_topic("theirs", 7, 1)?;
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir()?;
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&bootstrap).key_with(|e| Some(format!("k{}", number_of(e)))))
        .open()?;
    for n in 0..50 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "50 delivered", || {
        spool.metrics().sinks[0].delivered == 50
    });
    spool.close(T)?;
    let ours = records(&bootstrap, "events");
    // The same keys through a plain producer that lets librdkafka (murmur2, as the
    // Java client) choose.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("partitioner", "murmur2")
        .create()?;
    for n in 0..50u64 {
        let key = format!("k{n}");
        producer
            .send(BaseRecord::to("theirs").key(&key).payload("{}"))
            .map_err(|(e, _)| e)?;
    }
    producer.flush(T)?;
    let consumer = consumer(&bootstrap);
    let mut assignment = TopicPartitionList::new();
    for p in 0..7 {
        assignment.add_partition_offset("theirs", p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut matched = 0;
    let deadline = Instant::now() + T;
    while matched < 50 {
        assert!(Instant::now() < deadline, "read {matched} of 50");
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let key = String::from_utf8(message.key().expect("key").to_vec())?;
        let ours = ours
            .iter()
            .find(|r| r.key.as_deref() == Some(key.as_str()))
            .expect("the same key");
        assert_eq!(ours.partition, message.partition(), "{key}");
        matched += 1;
    }
    Ok(())
}

#[test]
fn kill_9_while_delivering_then_restart_each_event_once_and_resends_counted() -> TestResult {
    // The child commits its cursor every 20 batches, so the kill leaves some it missed.
    common::child_if_asked(|bootstrap| sink(bootstrap).commit_every(20), 20_000);
    let cluster = cluster("events", 2);
    // Slow enough that the child is still delivering when it is killed.
    cluster.broker_round_trip_time(1, Duration::from_millis(5))?;
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir()?;
    let seen = common::kill_9_and_restart(
        "kill_9_while_delivering_then_restart_each_event_once_and_resends_counted",
        &dir.path().join("events.db"),
        &bootstrap,
        sink(&bootstrap),
        20_000,
        || stored(&bootstrap, "events"),
    );
    assert_exactly_once(&records(&bootstrap, "events"), 20_000, 1);
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
fn the_broker_down_mid_stream_delivery_resumes_nothing_lost_nothing_twice() -> TestResult {
    let cluster = cluster("events", 2);
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir()?;
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&bootstrap).timeout(Duration::from_millis(500)))
        .open()?;
    for n in 0..3_000 {
        spool.emit(keyed(n))?;
    }
    wait_until(T, "some delivered", || {
        stored(&bootstrap, "events") >= 1_000
    });
    cluster.broker_down(1)?;
    for n in 3_000..6_000 {
        spool.emit(keyed(n))?;
    }
    wait_until(T, "a failure seen while the broker is down", || {
        spool.metrics().sinks[0].failures_retryable > 0
    });
    let error = spool.metrics().sinks[0]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(
        error.contains(&bootstrap),
        "the error names the brokers: {error}"
    );
    cluster.broker_up(1)?;
    wait_until(T, "all 6 000 delivered", || {
        spool.metrics().sinks[0].delivered >= 6_000 && spool.metrics().sinks[0].lag == 0
    });
    assert_exactly_once(&records(&bootstrap, "events"), 6_000, 1);
    spool.close(T)?;
    Ok(())
}

#[test]
fn a_missing_topic_and_an_unknown_host_are_clear_last_errors_and_retried() -> TestResult {
    let cluster = cluster("other", 1);
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir()?;
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&bootstrap))
        .sink(
            KafkaSink::new("nowhere", "no-such-host.invalid:9092", "events")
                .timeout(Duration::from_millis(300))
                .max_retries(None),
        )
        .open()?;
    spool.append(numbered(0))?;
    wait_until(T, "both failed", || {
        spool
            .metrics()
            .sinks
            .iter()
            .all(|s| s.failures_retryable > 0)
    });
    let metrics = spool.metrics();
    let missing = metrics.sinks[0].last_error.clone().unwrap_or_default();
    assert!(
        missing.contains("topic events") && missing.contains("Unknown topic"),
        "{missing}"
    );
    let unknown = metrics.sinks[1].last_error.clone().unwrap_or_default();
    assert!(unknown.contains("no-such-host.invalid:9092"), "{unknown}");
    // Once the topic exists, the retries get through.
    cluster.create_topic("events", 1, 1)?;
    wait_until(T, "delivered", || spool.metrics().sinks[0].delivered == 1);
    assert_exactly_once(&records(&bootstrap, "events"), 1, 1);
    spool.close(Duration::from_millis(100)).ok();
    Ok(())
}

#[test]
fn a_topic_someone_else_writes_to_is_dead_lettered_with_the_reason() -> TestResult {
    let cluster = cluster("events", 1);
    let bootstrap = cluster.bootstrap_servers();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    producer
        .send(BaseRecord::to("events").key("x").payload("not ours"))
        .map_err(|(e, _)| e)?;
    producer.flush(T)?;
    let dir = tempfile::tempdir()?;
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&bootstrap))
        .open()?;
    spool.append(numbered(0))?;
    wait_until(T, "dead-lettered", || {
        spool.dead_letters("kafka", 10).is_ok_and(|d| !d.is_empty())
    });
    let letter = &spool.dead_letters("kafka", 10)?[0];
    assert!(
        letter.last_error.contains("one spool per topic"),
        "{}",
        letter.last_error
    );
    spool.close(T)?;
    Ok(())
}

#[test]
fn configured_from_toml_and_checked_at_open() -> TestResult {
    let cluster = cluster("cfg.test.numbered", 2);
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir()?;
    let text = format!(
        "path = {:?}\n[[kafka]]\nname = \"orders\"\nbootstrap = {bootstrap:?}\ntopic = \"cfg.{{type}}\"\nbatch = 7\nin_flight = 3\n\
         settings = {{ \"linger.ms\" = \"1\", \"sasl.password\" = \"hunter2\" }}\n",
        dir.path().join("events.db"),
    );
    let config: eventspool::SpoolConfig = toml::from_str(&text)?;
    assert!(
        !format!("{config:?}").contains("hunter2"),
        "no setting's value shown"
    );
    let spool = Spool::from_config(&config)?;
    for n in 0..20 {
        spool.emit(numbered(n))?;
    }
    wait_until(T, "20 delivered", || {
        spool.metrics().sinks[0].delivered == 20
    });
    assert_exactly_once(&records(&bootstrap, "cfg.test.numbered"), 20, 1);
    spool.close(T)?;

    let refused = |change: &dyn Fn(&mut eventspool::KafkaConfig)| {
        let mut bad = config.clone();
        change(&mut bad.kafka[0]);
        bad.validate().unwrap_err().to_string()
    };
    let owned = refused(&|k| {
        k.settings
            .insert("enable.idempotence".into(), "false".into());
    });
    assert!(
        owned.contains("enable.idempotence") && owned.contains("exactly once"),
        "{owned}"
    );
    let unknown = refused(&|k| {
        k.settings.insert("no.such.setting".into(), "1".into());
    });
    assert!(unknown.contains("no.such.setting"), "{unknown}");
    assert!(refused(&|k| k.topic = "x.{subject}".into()).contains("placeholder"));
    assert!(refused(&|k| k.bootstrap = " ".into()).contains("bootstrap"));
    assert!(refused(&|k| k.in_flight = 0).contains("in_flight must be at least 1"));
    Ok(())
}

#[test]
fn a_record_too_large_is_dead_lettered_alone_and_the_others_land_once_in_order() -> TestResult {
    let cluster = cluster("events", 1);
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir()?;
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink(&bootstrap).setting("message.max.bytes", "10000"))
        .open()?;
    // One commit, so one `deliver` call holds them all: the large one in the middle.
    let events = (0..300u64)
        .map(|n| match n {
            150 => Event::new(
                "test.numbered",
                serde_json::json!({ "n": n, "pad": "x".repeat(20_000) }),
            ),
            _ => numbered(n),
        })
        .collect();
    let seqs = spool.append_batch(events)?;
    wait_until(T, "all handled", || {
        let sink = &spool.metrics().sinks[0];
        sink.lag == 0 && sink.dead_lettered == 1
    });
    let dead = spool.dead_letters("kafka", 10)?;
    assert_eq!(dead.len(), 1, "only the large one");
    assert_eq!(dead[0].event.seq, seqs[150]);
    assert!(
        dead[0].last_error.contains("seq 151"),
        "{}",
        dead[0].last_error
    );
    let landed: Vec<u64> = records(&bootstrap, "events").iter().map(|r| r.n).collect();
    let want: Vec<u64> = (0..300).filter(|&n| n != 150).collect();
    assert_eq!(landed, want, "the others once each, in order");
    assert_eq!(spool.metrics().sinks[0].delivered, 299);
    spool.close(T)?;
    Ok(())
}
