//! What the NATS sink learns of a JetStream stream when a connection starts: which
//! stream takes a subject, its last sequence (the fence every publish names), and the
//! event its last message holds (what is there already, to skip). All through
//! JetStream's JSON API on the sink's own connection.

use base64::Engine;
use serde::Deserialize;

use super::client::{AckError, Client, Incoming};
use crate::error::DeliveryError;

/// JetStream's error code for a publish whose `Nats-Expected-Last-Sequence` is not the
/// stream's last: something else was stored since the fence was read.
pub(crate) const WRONG_LAST_SEQUENCE: u32 = 10071;
/// JetStream's error code for a message that is not in the stream (deleted).
const NO_MESSAGE: u32 = 10037;

/// One stream as this connection knows it.
#[derive(Debug)]
pub(crate) struct Fence {
    pub(crate) stream: String,
    /// The sequence of the stream's last message: the next publish must follow it.
    pub(crate) last_seq: u64,
    /// The event the stream's last message holds, if it has one.
    pub(crate) last_event: Option<LastEvent>,
}

/// The spool event a stream's last message holds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct LastEvent {
    pub(crate) seq: u64,
    pub(crate) id: String,
}

#[derive(Deserialize)]
struct Names {
    #[serde(default)]
    streams: Option<Vec<String>>,
    #[serde(default)]
    error: Option<AckError>,
}

#[derive(Deserialize)]
struct Info {
    #[serde(default)]
    state: Option<State>,
    #[serde(default)]
    error: Option<AckError>,
}

#[derive(Deserialize)]
struct State {
    #[serde(default)]
    messages: u64,
    #[serde(default)]
    last_seq: u64,
}

#[derive(Deserialize)]
struct Got {
    #[serde(default)]
    message: Option<StoredMessage>,
    #[serde(default)]
    error: Option<AckError>,
}

#[derive(Deserialize)]
struct StoredMessage {
    #[serde(default)]
    data: String,
}

/// A failure of the connection, as a retryable delivery error.
fn lost(e: std::io::Error) -> DeliveryError {
    DeliveryError::retryable(format!("JetStream API: {e}"))
}

/// Sends an API request and reads its JSON reply; no responders means JetStream is off.
fn ask<T: serde::de::DeserializeOwned>(
    client: &mut Client,
    subject: &str,
    body: &[u8],
) -> Result<T, DeliveryError> {
    let reply: Incoming = client.request(subject, body).map_err(lost)?;
    if reply.no_responders() {
        return Err(DeliveryError::retryable(
            "JetStream does not answer (no responders): is the server started with -js?",
        )
        .with_status(503));
    }
    serde_json::from_slice(&reply.payload).map_err(|e| {
        DeliveryError::retryable(format!(
            "{subject}: not a JetStream reply ({e}): {}",
            String::from_utf8_lossy(&reply.payload)
        ))
    })
}

fn refused(what: &str, e: &AckError) -> DeliveryError {
    let why = format!(
        "{what}: JetStream said {}/{}: {}",
        e.code, e.err_code, e.description
    );
    match e.code {
        408 | 429 | 500..=599 => DeliveryError::retryable(why),
        _ => DeliveryError::permanent(why),
    }
}

/// The stream that takes `subject`, if one does.
pub(crate) fn stream_of(
    client: &mut Client,
    subject: &str,
) -> Result<Option<String>, DeliveryError> {
    let body = serde_json::json!({ "subject": subject }).to_string();
    let names: Names = ask(client, "$JS.API.STREAM.NAMES", body.as_bytes())?;
    if let Some(e) = names.error {
        return Err(refused("listing the streams", &e));
    }
    Ok(names.streams.and_then(|s| s.into_iter().next()))
}

/// Reads `stream`'s fence: its last sequence and the event its last message holds.
/// A last message that is not a spool's event is refused: the fence can only keep
/// order and count re-sends in a stream that one spool writes.
pub(crate) fn fence(client: &mut Client, stream: &str) -> Result<Fence, DeliveryError> {
    let info: Info = ask(client, &format!("$JS.API.STREAM.INFO.{stream}"), b"")?;
    if let Some(e) = info.error {
        return Err(refused(&format!("stream {stream}"), &e));
    }
    let state = info.state.unwrap_or(State {
        messages: 0,
        last_seq: 0,
    });
    let mut fence = Fence {
        stream: stream.to_owned(),
        last_seq: state.last_seq,
        last_event: None,
    };
    if state.messages == 0 {
        return Ok(fence);
    }
    fence.last_event = event_at(client, stream, state.last_seq)?;
    Ok(fence)
}

/// The spool event stream `stream` holds at `seq`; `None` if the message was deleted.
/// A message that is not a spool's event is refused: one spool per stream.
pub(crate) fn event_at(
    client: &mut Client,
    stream: &str,
    seq: u64,
) -> Result<Option<LastEvent>, DeliveryError> {
    let body = serde_json::json!({ "seq": seq }).to_string();
    let got: Got = ask(
        client,
        &format!("$JS.API.STREAM.MSG.GET.{stream}"),
        body.as_bytes(),
    )?;
    match (got.message, got.error) {
        (Some(message), _) => {
            let foreign = || {
                DeliveryError::permanent(format!(
                    "stream {stream}: its message {seq} is not an event of a spool: \
                     one spool per stream"
                ))
            };
            let data = base64::engine::general_purpose::STANDARD
                .decode(message.data)
                .map_err(|_| foreign())?;
            serde_json::from_slice(&data)
                .map(Some)
                .map_err(|_| foreign())
        }
        (None, Some(e)) if e.err_code == NO_MESSAGE => Ok(None),
        (None, Some(e)) => Err(refused(&format!("stream {stream}"), &e)),
        (None, None) => Ok(None),
    }
}
