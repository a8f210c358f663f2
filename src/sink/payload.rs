//! What a webhook posts: each event as JSON, plain or CloudEvents 1.0.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::event::StoredEvent;

use super::http_date::rfc3339_ms;

/// What a webhook posts of each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    /// The whole event: `id`, `seq`, `type`, `source`, `subject`, `timestamp_ms`, `data`.
    #[default]
    Full,
    /// The event without `data`.
    Summary,
}

pub(super) fn encode<T: Serialize>(items: &[T], array: bool) -> Vec<u8> {
    // Serializing plain structs of strings, numbers and raw JSON cannot fail.
    if array {
        serde_json::to_vec(items).expect("serializable body")
    } else {
        serde_json::to_vec(&items[0]).expect("serializable body")
    }
}

/// The plain JSON body of one event.
#[derive(Serialize)]
pub(super) struct Body<'a> {
    id: &'a str,
    seq: u64,
    #[serde(rename = "type")]
    event_type: &'a str,
    source: Option<&'a str>,
    subject: Option<&'a str>,
    timestamp_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
}

impl<'a> Body<'a> {
    pub(super) fn new(e: &'a StoredEvent, content: Content) -> Self {
        Body {
            id: &e.id,
            seq: e.seq,
            event_type: &e.event_type,
            source: e.source.as_deref(),
            subject: e.subject.as_deref(),
            timestamp_ms: e.timestamp_ms,
            data: (content == Content::Full).then_some(&*e.data),
        }
    }
}

/// A CloudEvents 1.0 structured-mode event; `seq` travels as the `sequence` extension.
#[derive(Serialize)]
pub(super) struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    time: String,
    sequence: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    datacontenttype: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a RawValue>,
}

impl<'a> CloudEvent<'a> {
    pub(super) fn new(e: &'a StoredEvent, content: Content) -> Self {
        let full = content == Content::Full;
        CloudEvent {
            specversion: "1.0",
            id: &e.id,
            source: e.source.as_deref().unwrap_or("eventspool"),
            event_type: &e.event_type,
            subject: e.subject.as_deref(),
            time: rfc3339_ms(e.timestamp_ms),
            sequence: e.seq.to_string(),
            datacontenttype: full.then_some("application/json"),
            data: full.then_some(&*e.data),
        }
    }
}
