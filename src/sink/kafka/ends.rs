//! Where a topic's partitions end: the seq of the last event in each, read when a
//! session starts, so that a batch sent again after a crash skips what is there
//! already (Kafka's idempotent producer de-duplicates only within one producer's life).

use std::collections::HashMap;
use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::DeliveryError;

/// The header each record carries its event's seq in.
pub(super) const SEQ_HEADER: &str = "seq";

/// A topic as a session knows it: its partitions and the last seq in each (0: none).
#[derive(Debug)]
pub(super) struct TopicEnds {
    pub(super) last: Vec<u64>,
}

impl TopicEnds {
    pub(super) fn partitions(&self) -> i32 {
        self.last.len() as i32
    }
}

fn remaining(deadline: Instant) -> std::time::Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn failed(place: &str, what: &str, e: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::retryable(format!("{place}: {what}: {e}"))
}

/// Reads the partitions of `topic` and the seq of the last record in each.
pub(super) fn read(
    consumer: &BaseConsumer,
    bootstrap: &str,
    topic: &str,
    deadline: Instant,
) -> Result<TopicEnds, DeliveryError> {
    let place = format!("kafka at {bootstrap}, topic {topic}");
    let place = place.as_str();
    let metadata = consumer
        .fetch_metadata(Some(topic), remaining(deadline))
        .map_err(|e| failed(place, "reading its metadata", e))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(failed(place, "reading its metadata", "not in the answer"));
    };
    if let Some(e) = found.error() {
        let code = rdkafka::types::RDKafkaErrorCode::from(e);
        return Err(failed(place, "not available", code));
    }
    let partitions = found.partitions().len();
    if partitions == 0 {
        return Err(failed(place, "not available", "it has no partitions"));
    }
    let mut last = vec![0; partitions];
    let mut wanted = TopicPartitionList::new();
    let mut pending: HashMap<i32, i64> = HashMap::new();
    for partition in 0..partitions as i32 {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, remaining(deadline))
            .map_err(|e| failed(place, &format!("partition {partition}: its offsets"), e))?;
        if high > low {
            wanted
                .add_partition_offset(topic, partition, Offset::Offset(high - 1))
                .map_err(|e| failed(place, "assigning", e))?;
            pending.insert(partition, high - 1);
        }
    }
    if pending.is_empty() {
        return Ok(TopicEnds { last });
    }
    consumer
        .assign(&wanted)
        .map_err(|e| failed(place, "assigning", e))?;
    let outcome = read_last_records(consumer, place, &mut pending, &mut last, deadline);
    let _ = consumer.unassign();
    outcome.map(|()| TopicEnds { last })
}

fn read_last_records(
    consumer: &BaseConsumer,
    place: &str,
    pending: &mut HashMap<i32, i64>,
    last: &mut [u64],
    deadline: Instant,
) -> Result<(), DeliveryError> {
    while !pending.is_empty() {
        if Instant::now() >= deadline {
            let mut left: Vec<_> = pending.keys().collect();
            left.sort();
            return Err(failed(
                place,
                "reading the last records",
                format!("timed out on partitions {left:?}"),
            ));
        }
        let message = match consumer.poll(remaining(deadline)) {
            None => continue,
            Some(Err(e)) => return Err(failed(place, "reading the last records", e)),
            Some(Ok(message)) => message,
        };
        let partition = message.partition();
        if pending
            .get(&partition)
            .is_none_or(|&offset| message.offset() < offset)
        {
            continue;
        }
        let seq = message
            .headers()
            .and_then(|headers| headers.iter().find(|h| h.key == SEQ_HEADER))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
        let Some(seq) = seq else {
            return Err(DeliveryError::permanent(format!(
                "{place}, partition {partition}: the record at offset {} has no {SEQ_HEADER:?} \
                 header, so something other than this sink writes to the topic (one spool per topic)",
                message.offset()
            )));
        };
        last[partition as usize] = seq;
        pending.remove(&partition);
    }
    Ok(())
}
