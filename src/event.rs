//! Events as the caller builds them ([`Event`]) and as the spool returns them ([`StoredEvent`]).

use std::fmt;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, Result};

/// A sequence number: assigned by the spool at commit, strictly increasing, never reused.
/// The first event of a new spool gets 1.
pub type SeqNo = u64;

/// An event as handed to [`Spool::emit`](crate::Spool::emit) or
/// [`Spool::append`](crate::Spool::append).
///
/// The data is serialized to JSON when the event is built, on the caller's thread;
/// an error there is reported by `emit`/`append`.
///
/// ```
/// use eventspool::Event;
/// use serde_json::json;
///
/// let event = Event::new("order.created", json!({"id": 42}))
///     .subject("order/42")
///     .source("shop");
/// assert_eq!(event.event_type, "order.created");
/// assert_eq!(event.data_json(), Some(r#"{"id":42}"#));
/// ```
#[derive(Clone)]
pub struct Event {
    /// The event type, such as `order.created`. Must not be empty.
    pub event_type: String,
    /// What the event is about, such as `order/42`.
    pub subject: Option<String>,
    /// Who produced the event, such as a service name.
    pub source: Option<String>,
    /// A caller-chosen unique id. When `None`, the spool derives one from the spool
    /// file's random id and the `seq` (`"<spool id>-<seq>"`), unique across files.
    pub id: Option<String>,
    /// Milliseconds since the Unix epoch. When `None`, `emit`/`append` set the current time.
    pub timestamp_ms: Option<i64>,
    data: Data,
}

#[derive(Clone)]
enum Data {
    /// Produced by serde_json: known to be valid JSON.
    Json(String),
    /// Handed over as text: validated by `emit`/`append`.
    Unchecked(String),
    /// Serialization failed; the message is reported by `emit`/`append`.
    Invalid(String),
}

impl Event {
    /// Builds an event whose data is `data` serialized to JSON.
    pub fn new(event_type: impl Into<String>, data: impl Serialize) -> Self {
        let data = match serde_json::to_string(&data) {
            Ok(json) => Data::Json(json),
            Err(e) => Data::Invalid(e.to_string()),
        };
        Self::with_data(event_type.into(), data)
    }

    /// Builds an event from JSON text (for example bytes received over FFI). The text is
    /// checked to be one valid JSON value by `emit`/`append`.
    pub fn from_json(event_type: impl Into<String>, json: impl Into<String>) -> Self {
        Self::with_data(event_type.into(), Data::Unchecked(json.into()))
    }

    fn with_data(event_type: String, data: Data) -> Self {
        Event {
            event_type,
            subject: None,
            source: None,
            id: None,
            timestamp_ms: None,
            data,
        }
    }

    /// Reads an event written as one JSON object: `{"type": "order.paid", "data": {...}}`
    /// with optional `subject`, `source`, `id` and `timestamp_ms` (other fields, such
    /// as the `seq` of an exported [`StoredEvent`], are ignored; no `data` is `null`).
    /// It is the line format of the `eventspool` command's `export`, `import` and
    /// `forward`, and of the C API's `eventspool_emit_event`.
    ///
    /// ```
    /// let e = eventspool::Event::from_json_line(r#"{"type":"a","data":[1],"id":"x-1"}"#)?;
    /// assert_eq!((e.event_type.as_str(), e.id.as_deref()), ("a", Some("x-1")));
    /// assert!(eventspool::Event::from_json_line(r#"{"type":"a","data":{x}}"#).is_err());
    /// # Ok::<(), eventspool::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidEvent`] when the text is not such an object. (The type and data
    /// are checked further by `emit` / `append`.)
    pub fn from_json_line(text: &str) -> Result<Event> {
        #[derive(Deserialize)]
        struct Line<'a> {
            #[serde(rename = "type")]
            event_type: String,
            #[serde(default, borrow)]
            data: Option<&'a RawValue>,
            #[serde(default)]
            subject: Option<String>,
            #[serde(default)]
            source: Option<String>,
            #[serde(default)]
            id: Option<String>,
            #[serde(default)]
            timestamp_ms: Option<i64>,
        }
        let line: Line<'_> = serde_json::from_str(text)
            .map_err(|e| Error::InvalidEvent(format!("not an event: {e}")))?;
        // Reading the line checked the data is JSON: `emit` need not parse it again.
        let data = Data::Json(line.data.map_or("null", RawValue::get).to_owned());
        let mut event = Event::with_data(line.event_type, data);
        event.subject = line.subject;
        event.source = line.source;
        event.id = line.id;
        event.timestamp_ms = line.timestamp_ms;
        Ok(event)
    }

    /// Sets the subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the source.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Sets the id (receivers de-duplicate on it).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the timestamp in milliseconds since the Unix epoch.
    pub fn timestamp_ms(mut self, ms: i64) -> Self {
        self.timestamp_ms = Some(ms);
        self
    }

    /// The data as JSON text, or `None` if it could not be serialized.
    pub fn data_json(&self) -> Option<&str> {
        match &self.data {
            Data::Json(s) | Data::Unchecked(s) => Some(s),
            Data::Invalid(_) => None,
        }
    }

    /// Validates the event on the caller's thread and fills in the timestamp.
    /// Returns the size the event counts for against the caps.
    pub(crate) fn prepare(&mut self, max_event_bytes: u64) -> Result<u64> {
        if self.event_type.is_empty() {
            return Err(Error::InvalidEvent("event type must not be empty".into()));
        }
        match &mut self.data {
            Data::Json(_) => {}
            Data::Unchecked(text) => {
                if let Err(e) = serde_json::from_str::<IgnoredAny>(text) {
                    return Err(Error::InvalidEvent(format!("data is not valid JSON: {e}")));
                }
                self.data = Data::Json(std::mem::take(text));
            }
            Data::Invalid(msg) => {
                return Err(Error::InvalidEvent(format!(
                    "data does not serialize to JSON: {msg}"
                )));
            }
        }
        let size = self.size();
        if size > max_event_bytes {
            return Err(Error::InvalidEvent(format!(
                "event of {size} bytes is larger than the limit of {max_event_bytes} bytes"
            )));
        }
        if self.timestamp_ms.is_none() {
            self.timestamp_ms = Some(crate::time::now_ms());
        }
        Ok(size)
    }

    /// The bytes this event counts for against `max_bytes` (see [`size_of`]).
    pub(crate) fn size(&self) -> u64 {
        let data = self.data_json().unwrap_or_default();
        let optional = [
            self.id.as_deref(),
            self.subject.as_deref(),
            self.source.as_deref(),
        ];
        size_of(data, &self.event_type, optional)
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("event_type", &self.event_type)
            .field("subject", &self.subject)
            .field("source", &self.source)
            .field("id", &self.id)
            .field("timestamp_ms", &self.timestamp_ms)
            .field("data", &self.data_json())
            .finish()
    }
}

/// An event as stored in the spool, with its `seq` and `id`.
///
/// Serializes to the webhook body: `id`, `seq`, `type`, `source`, `subject`,
/// `timestamp_ms`, `data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The event id: the caller's, or `"<spool id>-<seq>"`.
    pub id: String,
    /// The sequence number.
    pub seq: SeqNo,
    /// The event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The source, if any.
    pub source: Option<String>,
    /// The subject, if any.
    pub subject: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The data, as the JSON text that was stored.
    pub data: Box<RawValue>,
}

/// Events are equal when every field is, the data compared as stored JSON text.
impl PartialEq for StoredEvent {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
            && self.id == other.id
            && self.event_type == other.event_type
            && self.source == other.source
            && self.subject == other.subject
            && self.timestamp_ms == other.timestamp_ms
            && self.data.get() == other.data.get()
    }
}

impl StoredEvent {
    /// Deserializes the data into `T`.
    ///
    /// # Errors
    /// [`Error::InvalidEvent`] if the data does not match `T`.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(self.data.get())
            .map_err(|e| Error::InvalidEvent(format!("data of event {}: {e}", self.seq)))
    }

    /// The bytes the event counts for against the caps, as when it was stored (with
    /// the id it is delivered with).
    pub(crate) fn size(&self) -> u64 {
        let optional = [
            Some(&*self.id),
            self.subject.as_deref(),
            self.source.as_deref(),
        ];
        size_of(self.data.get(), &self.event_type, optional)
    }
}

/// How many stored events are after `position`, when `first..=last` is stored (the
/// first is `last + 1` when none is): a consumer's lag.
pub(crate) fn lag(position: SeqNo, first: SeqNo, last: SeqNo) -> u64 {
    last.saturating_sub(position.max(first.saturating_sub(1)))
}

/// The bytes an event counts for against the caps: data, type, id, subject, source.
fn size_of(data: &str, event_type: &str, optional: [Option<&str>; 3]) -> u64 {
    let optional: usize = optional.iter().map(|s| s.map_or(0, str::len)).sum();
    (data.len() + event_type.len() + optional) as u64
}

/// Default for [`EventQuery::limit`]: 1000 events.
pub const DEFAULT_QUERY_LIMIT: usize = 1000;

/// A query over the stored events: every condition set must hold; results come in
/// `seq` order. It deserializes (serde) from its field names, each optional, as the C
/// API's `eventspool_query` takes it: `{"event_types": ["order.*"], "limit": 100}`.
///
/// ```
/// use eventspool::EventQuery;
///
/// let q = EventQuery::new()
///     .event_types(["order.*", "invoice.paid"])
///     .since_ms(1_700_000_000_000)
///     .limit(100);
/// assert_eq!(q.limit, 100);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct EventQuery {
    /// Only events with `timestamp_ms >= since_ms`.
    pub since_ms: Option<i64>,
    /// Only events with `timestamp_ms < until_ms`.
    pub until_ms: Option<i64>,
    /// Only events whose type is one of these. A pattern ending in `*` matches every
    /// type that starts with what precedes it (`order.*`). Empty: every type.
    pub event_types: Vec<String>,
    /// Only events with this subject.
    pub subject: Option<String>,
    /// Only events with this source.
    pub source: Option<String>,
    /// Only events with `seq > after_seq`.
    pub after_seq: Option<SeqNo>,
    /// At most this many events. Defaults to [`DEFAULT_QUERY_LIMIT`].
    pub limit: usize,
}

impl Default for EventQuery {
    fn default() -> Self {
        Self::new()
    }
}

impl EventQuery {
    /// A query that matches every event, up to [`DEFAULT_QUERY_LIMIT`].
    pub fn new() -> Self {
        EventQuery {
            since_ms: None,
            until_ms: None,
            event_types: Vec::new(),
            subject: None,
            source: None,
            after_seq: None,
            limit: DEFAULT_QUERY_LIMIT,
        }
    }

    /// Only events at or after this time (ms since the epoch).
    pub fn since_ms(mut self, ms: i64) -> Self {
        self.since_ms = Some(ms);
        self
    }

    /// Only events before this time (ms since the epoch).
    pub fn until_ms(mut self, ms: i64) -> Self {
        self.until_ms = Some(ms);
        self
    }

    /// Only events of these types (a trailing `*` matches a prefix).
    pub fn event_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.event_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// Only events with this subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Only events with this source.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Only events after this `seq` (exclusive).
    pub fn after_seq(mut self, seq: SeqNo) -> Self {
        self.after_seq = Some(seq);
        self
    }

    /// At most this many events.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

/// Whether `event_type` matches `pattern`: equal, or for a pattern ending in `*`,
/// starting with what precedes the `*`.
/// Whether `event_type` matches one of `patterns` (see [`type_matches`]); no patterns
/// match every type.
pub(crate) fn matches_any(patterns: &[String], event_type: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| type_matches(p, event_type))
}

pub(crate) fn type_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}
