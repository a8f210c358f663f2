//! [`KafkaSink`] (feature `kafka`): events into Kafka topics through librdkafka's
//! idempotent producer, each exactly once per partition, in seq order.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use crate::error::DeliveryError;
use crate::event::StoredEvent;
use crate::sink::Sink;
use crate::sink::broker::{self, Settings};
use crate::sink::template::Template;

mod ends;
mod partition;

use ends::{SEQ_HEADER, TopicEnds};
use partition::partition_of;

/// Default for [`KafkaSink::batch`]: 100 records per `deliver`.
pub const DEFAULT_KAFKA_BATCH: usize = 100;
/// Default for [`KafkaSink::timeout`]: 30 s for a batch's delivery reports (and for
/// reading where the topic's partitions end when a session starts).
pub const DEFAULT_KAFKA_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`KafkaSink::in_flight`]: the next batches are produced while the
/// delivery reports of the ones before come back (within librdkafka's 5 requests in
/// flight for an idempotent producer).
pub const DEFAULT_KAFKA_IN_FLIGHT: usize = 8;

/// Producer settings the sink sets itself: exactly once rests on them.
const OWNED_SETTINGS: [&str; 7] = [
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "enable.gapless.guarantee",
];

/// How an event's record key is made.
type KeyFn = dyn Fn(&StoredEvent) -> Option<String> + Send + Sync;

/// Forwards events to Kafka with librdkafka's idempotent producer (the `rdkafka`
/// crate without its async parts).
///
/// Each event becomes a record whose value is the event's `data` (JSON text), whose
/// key is its subject (or [`key_with`](KafkaSink::key_with)), whose timestamp is the
/// event's, and whose headers are `id`, `seq`, `type`, and `subject` / `source` when
/// set. The sink picks the partition itself, as Kafka's clients do (murmur2 of the
/// key; keyless events spread by seq), so that it knows where every event lands.
///
/// **Exactly once, in seq order per partition.** Within one producer's life the
/// idempotent producer keeps each partition in order without gaps or duplicates
/// (`enable.idempotence`, `acks=all`, no message timeout, gapless guarantee). Across
/// restarts and failures, the sink reads the `seq` header of the last record in each
/// partition of a topic before its first send to it, and skips the events of a batch
/// that are already there (counted in `already_delivered`). That asks of you: nothing
/// else writes to the topic (one spool per topic), its partitions are not added to
/// while events may be re-sent, and retention does not delete a partition's last
/// record while the spool still has events for it. One window remains, which only
/// Kafka transactions would close: a produce request a killed program had already
/// sent that the broker appends after the new session read the partition's end.
///
/// Settings given to [`setting`](KafkaSink::setting) pass through to librdkafka
/// (security, compression, `linger.ms`...), apart from those exactly once rests on.
/// A batch waits for every delivery report; an error drops the producer (purging
/// what it still holds), and the next attempt starts a new one.
///
/// ```
/// use eventspool::KafkaSink;
///
/// let sink = KafkaSink::new("orders", "127.0.0.1:9092", "events.{type}")
///     .setting("compression.type", "lz4")
///     .batch(500);
/// ```
pub struct KafkaSink {
    name: String,
    bootstrap: String,
    topic: Result<Template, String>,
    librdkafka: BTreeMap<String, String>,
    key: Option<Box<KeyFn>>,
    settings: Settings,
    in_flight: usize,
    session: Option<Session>,
    already_delivered: u64,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("name", &self.name)
            .field("bootstrap", &self.bootstrap)
            .field("topic", &self.topic)
            // Only the names: values may be passwords.
            .field("settings", &self.librdkafka.keys().collect::<Vec<_>>())
            .field("batch", &self.settings.batch)
            .field("in_flight", &self.in_flight)
            .field("connected", &self.session.is_some())
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// A sink named `name` (its cursor's key) producing to `topic` (`{type}` in it
    /// stands for the event's type) through the brokers `bootstrap`
    /// (`host:port[,host:port...]`). Checked at `open`.
    pub fn new(name: impl Into<String>, bootstrap: impl Into<String>, topic: &str) -> Self {
        KafkaSink {
            name: name.into(),
            bootstrap: bootstrap.into(),
            topic: Template::new(topic),
            librdkafka: BTreeMap::new(),
            key: None,
            settings: Settings::new(DEFAULT_KAFKA_BATCH, DEFAULT_KAFKA_TIMEOUT),
            in_flight: DEFAULT_KAFKA_IN_FLIGHT,
            session: None,
            already_delivered: 0,
        }
    }

    /// A librdkafka setting (`security.protocol`, `sasl.password`, `compression.type`,
    /// `linger.ms`...), given to the producer and to the consumer that reads where
    /// partitions end. Those exactly once rests on (`enable.idempotence`, `acks`,
    /// `message.timeout.ms`...) are refused at `open`.
    pub fn setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.librdkafka.insert(key.into(), value.into());
        self
    }

    /// How many batches of [`batch`](KafkaSink::batch) records may wait for their
    /// delivery reports at once (the idempotent producer keeps them in order); 1 waits
    /// for each batch before the next. Defaults to [`DEFAULT_KAFKA_IN_FLIGHT`].
    pub fn in_flight(mut self, n: usize) -> Self {
        self.in_flight = n;
        self
    }

    /// The record key of each event; `None` for no key. Defaults to the subject.
    pub fn key_with<F>(mut self, key: F) -> Self
    where
        F: Fn(&StoredEvent) -> Option<String> + Send + Sync + 'static,
    {
        self.key = Some(Box::new(key));
        self
    }

    broker::setters!(
        unit: "Records",
        batch: DEFAULT_KAFKA_BATCH,
        timeout: DEFAULT_KAFKA_TIMEOUT,
        bounds: "a batch's delivery reports (and reading where a topic's partitions end)"
    );

    /// The settings of the producer.
    fn producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        // A batch is sent whole and then awaited: waiting for more records gains nothing.
        config.set("linger.ms", "0");
        for (key, value) in &self.librdkafka {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // No timeout, so no gap: a batch's own deadline purges instead.
            .set("message.timeout.ms", "0")
            .set("enable.gapless.guarantee", "true");
        config
    }

    /// The settings of the consumer that reads where partitions end.
    fn consumer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.librdkafka {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", format!("eventspool-{}", self.name))
            .set("enable.auto.commit", "false")
            // The producer's settings are meant for the producer: no warning for each.
            .set_log_level(rdkafka::config::RDKafkaLogLevel::Error);
        config
    }

    fn start(&self) -> Result<Session, DeliveryError> {
        let failed = |what: &str, e: KafkaError| {
            DeliveryError::retryable(format!("kafka at {}: {what}: {e}", self.bootstrap))
        };
        // A report per record in flight, and at most `in_flight` batches are in flight.
        let (sender, reports) = crossbeam_channel::bounded(
            self.settings
                .batch
                .max(1)
                .saturating_mul(self.in_flight.max(1)),
        );
        let producer = self
            .producer_config()
            .create_with_context(Reports { sender })
            .map_err(|e| failed("creating the producer", e))?;
        let consumer = self
            .consumer_config()
            .create()
            .map_err(|e| failed("creating the consumer", e))?;
        Ok(Session {
            producer,
            consumer,
            reports,
            topics: HashMap::new(),
        })
    }

    fn key_of<'a>(&self, event: &'a StoredEvent) -> Option<Cow<'a, str>> {
        match &self.key {
            Some(key) => key(event).map(Cow::Owned),
            None => event.subject.as_deref().map(Cow::Borrowed),
        }
    }

    /// Sends the events of `events` not already in their partitions, and waits for
    /// every delivery report.
    fn send(
        &mut self,
        session: &mut Session,
        template: &Template,
        events: &[StoredEvent],
        deadline: Instant,
    ) -> Result<(), DeliveryError> {
        let mut sent: Vec<Sent> = Vec::with_capacity(events.len());
        // The topics of the batch (mostly one), which `Sent` points into.
        let mut topics: Vec<String> = Vec::new();
        let mut skipped: Vec<usize> = Vec::new();
        let mut tally = Tally::default();
        // The first event that cannot be sent: the ones before it still are.
        let mut stop = None;
        for (index, event) in events.iter().enumerate() {
            let topic = template.render(event);
            if !session.topics.contains_key(topic.as_ref()) {
                match ends::read(&session.consumer, &self.bootstrap, &topic, deadline) {
                    Ok(ends) => session.topics.insert(topic.clone().into_owned(), ends),
                    // A topic's failure is the whole batch's, not this event's.
                    Err(e) => {
                        stop = Some(e);
                        break;
                    }
                };
            }
            let ends = &session.topics[topic.as_ref()];
            let key = self.key_of(event);
            let key_bytes = key.as_deref().map(str::as_bytes);
            let partition = partition_of(key_bytes, event.seq, ends.partitions());
            if event.seq <= ends.last[partition as usize] {
                skipped.push(index);
                continue;
            }
            if let Err(e) =
                session.produce(event, &topic, key.as_deref(), partition, index, deadline)
            {
                let context = format!("kafka at {}: seq {}", self.bootstrap, event.seq);
                stop = Some(classify(&e, &context).with_delivered(index));
                break;
            }
            let slot = match topics.iter().position(|t| *t == topic) {
                Some(slot) => slot,
                None => {
                    topics.push(topic.into_owned());
                    topics.len() - 1
                }
            };
            sent.push(Sent {
                topic: slot,
                partition,
                seq: event.seq,
            });
            // A window produced: wait until at most `in_flight - 1` others are unreported.
            let unreported = self.settings.batch.max(1) * (self.in_flight.max(1) - 1);
            if sent.len().is_multiple_of(self.settings.batch.max(1)) && sent.len() > unreported {
                session.collect(
                    &mut tally,
                    sent.len() - unreported,
                    deadline,
                    &self.bootstrap,
                )?;
                if tally.first_failure.is_some() {
                    break;
                }
            }
        }
        session.collect(&mut tally, sent.len(), deadline, &self.bootstrap)?;
        // Every report is in: the events before the first failure were delivered.
        let outcome = match tally.result(events, &self.bootstrap) {
            Ok(()) => stop.map_or(Ok(()), Err),
            Err(e) => Err(e),
        };
        let delivered = outcome
            .as_ref()
            .err()
            .map_or(usize::MAX, |e| e.delivered().unwrap_or(0));
        self.already_delivered += skipped.iter().filter(|&&i| i < delivered).count() as u64;
        outcome?;
        for record in &sent {
            if let Some(ends) = session.topics.get_mut(&topics[record.topic]) {
                let last = &mut ends.last[record.partition as usize];
                *last = (*last).max(record.seq);
            }
        }
        Ok(())
    }
}

/// A record of the batch, as sent.
struct Sent {
    /// Its topic, in the batch's list.
    topic: usize,
    partition: i32,
    seq: u64,
}

/// A producer and what it knows of the topics it writes to. Dropping it purges what
/// the producer still holds.
struct Session {
    producer: ThreadedProducer<Reports>,
    consumer: BaseConsumer,
    reports: Receiver<Report>,
    topics: HashMap<String, TopicEnds>,
}

/// The delivery report of one record: its index in the batch, and the failure if any.
struct Report {
    index: usize,
    failure: Option<KafkaError>,
}

/// Hands the delivery reports, which arrive on the producer's thread, to `deliver`.
struct Reports {
    sender: Sender<Report>,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        let failure = result.as_ref().err().map(|(e, _)| e.clone());
        // Never blocks librdkafka's thread: there is room for every record in flight, and
        // once `deliver` has gone (a dropped session) the reports are not wanted.
        let _ = self.sender.try_send(Report { index, failure });
    }
}

impl Session {
    /// Queues one record; when librdkafka's queue is full, waits for a report first.
    fn produce(
        &mut self,
        event: &StoredEvent,
        topic: &str,
        key: Option<&str>,
        partition: i32,
        index: usize,
        deadline: Instant,
    ) -> Result<(), KafkaError> {
        let seq = event.seq.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header {
                key: "id",
                value: Some(&event.id),
            })
            .insert(Header {
                key: SEQ_HEADER,
                value: Some(&seq),
            })
            .insert(Header {
                key: "type",
                value: Some(&event.event_type),
            });
        if let Some(subject) = &event.subject {
            headers = headers.insert(Header {
                key: "subject",
                value: Some(subject),
            });
        }
        if let Some(source) = &event.source {
            headers = headers.insert(Header {
                key: "source",
                value: Some(source),
            });
        }
        let mut record = BaseRecord::with_opaque_to(topic, index)
            .partition(partition)
            .payload(event.data.get())
            .timestamp(event.timestamp_ms)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                // The batch is larger than librdkafka's queue: its thread empties it.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    record = back;
                    self.producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Waits until `tally` has `until` reports.
    fn collect(
        &self,
        tally: &mut Tally,
        until: usize,
        deadline: Instant,
        bootstrap: &str,
    ) -> Result<(), DeliveryError> {
        while tally.received < until {
            let report = match self.reports.recv_deadline(deadline) {
                Ok(report) => report,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    return Err(DeliveryError::retryable(format!(
                        "kafka at {bootstrap}: no delivery report within the timeout"
                    )));
                }
            };
            tally.received += 1;
            if let Some(e) = report.failure
                && tally
                    .first_failure
                    .as_ref()
                    .is_none_or(|(i, _)| report.index < *i)
            {
                tally.first_failure = Some((report.index, e));
            }
        }
        Ok(())
    }
}

/// The delivery reports of a batch so far.
#[derive(Default)]
struct Tally {
    received: usize,
    /// The first failure, in batch order: the batch's.
    first_failure: Option<(usize, KafkaError)>,
}

impl Tally {
    fn result(self, events: &[StoredEvent], bootstrap: &str) -> Result<(), DeliveryError> {
        match self.first_failure {
            None => Ok(()),
            Some((index, e)) => Err(classify(
                &e,
                &format!("kafka at {bootstrap}: seq {}", events[index].seq),
            )
            .with_delivered(index)),
        }
    }
}

/// Failures a retry will not mend dead-letter the batch; the others are retried.
fn classify(e: &KafkaError, context: &str) -> DeliveryError {
    use RDKafkaErrorCode as Code;
    let message = format!("{context}: {e}");
    match e.rdkafka_error_code() {
        Some(
            Code::MessageSizeTooLarge
            | Code::InvalidMessageSize
            | Code::InvalidRecord
            | Code::MessageBatchTooLarge
            | Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::InvalidTopic
            | Code::InvalidTimestamp,
        ) => DeliveryError::permanent(message),
        _ => DeliveryError::retryable(message),
    }
}

impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
        let template = match &self.topic {
            Ok(template) => template.clone(),
            Err(e) => return Err(DeliveryError::permanent(e.clone())),
        };
        let deadline = Instant::now() + crate::time::bounded(self.settings.timeout);
        let mut session = match self.session.take() {
            Some(session) => session,
            None => self.start()?,
        };
        // After a failure the session is dropped (its producer purged): the next
        // attempt reads where the partitions end again.
        self.send(&mut session, &template, events, deadline)?;
        self.session = Some(session);
        Ok(())
    }

    broker::sink_methods!(in_flight: in_flight);

    fn check(&self) -> Result<(), String> {
        let name = &self.name;
        if let Err(e) = &self.topic {
            return Err(format!("sink {name}: {e}"));
        }
        if self.bootstrap.trim().is_empty() {
            return Err(format!(
                "sink {name}: the bootstrap servers must not be empty"
            ));
        }
        if let Some(owned) = self
            .librdkafka
            .keys()
            .find(|k| OWNED_SETTINGS.contains(&k.as_str()))
        {
            return Err(format!(
                "sink {name}: the setting {owned} is the sink's own (exactly once rests on it)"
            ));
        }
        // librdkafka checks every name and value here, without connecting.
        if let Err(e) = self.producer_config().create_native_config() {
            return Err(format!("sink {name}: {e}"));
        }
        if self.in_flight == 0 {
            return Err(format!("sink {name}: in_flight must be at least 1"));
        }
        self.settings.check(name)
    }
}
