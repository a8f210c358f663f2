//! [`NatsSink`] (feature `nats`): events into NATS JetStream, each exactly once, by
//! the `Nats-Msg-Id` header JetStream de-duplicates on; on a blocking client of our own
//! ([`client`]).

use std::borrow::Cow;
use std::time::Duration;

use crate::error::DeliveryError;
use crate::event::StoredEvent;
use crate::sink::Sink;
use crate::sink::broker::{self, Settings};
use crate::sink::template::Template;

mod client;

use client::{Ack, Client, Publish, Server};

/// Default for [`NatsSink::batch`]: 100 publishes per round trip.
pub const DEFAULT_NATS_BATCH: usize = 100;
/// Default for [`NatsSink::timeout`]: 10 s to connect, and for a batch's
/// acknowledgements.
pub const DEFAULT_NATS_TIMEOUT: Duration = Duration::from_secs(10);

/// JetStream's error code for a message whose `Nats-Expected-Last-Msg-Id` is not the
/// stream's last: the one before it failed, and a retry of both mends it.
const WRONG_LAST_MSG_ID: u32 = 10070;

/// Forwards events to NATS JetStream: each event is published to its subject with the
/// event's id in `Nats-Msg-Id`, and its publish acknowledgement awaited. JetStream
/// drops a message whose id it saw within the stream's duplicate window (2 minutes by
/// default) and acknowledges it as a duplicate: the sink counts those in
/// `already_delivered`, so a batch re-sent after a crash, or after a failure, lands
/// **exactly once, in seq order** — as long as it comes back within that window (set
/// `duplicate_window` on the stream to how long your outages may last). The payload is
/// the event as JSON, as a webhook gets it (`id`, `seq`, `type`, `source`, `subject`,
/// `timestamp_ms`, `data`).
///
/// A batch is published in one write and its acknowledgements read together; within
/// it, each message on the same subject as the one before names that one in
/// `Nats-Expected-Last-Msg-Id`, so a refused message cannot be overtaken by the next.
/// That id is the stream's last, whatever its subject: nothing else should publish to
/// the stream (one spool per stream, as for Redis).
/// No stream on the subject (no responders) and JetStream being unavailable are
/// retried; other refusals dead-letter the batch. User and password, or a token, come
/// in the URL; TLS (rustls, feature `tls`) when the URL is `tls://` or the server
/// requires it, trusting the web's roots or [`tls_ca`](NatsSink::tls_ca).
///
/// ```
/// use eventspool::NatsSink;
///
/// let sink = NatsSink::new("orders", "nats://127.0.0.1:4222", "events.{type}").batch(200);
/// ```
pub struct NatsSink {
    name: String,
    server: Result<Server, String>,
    subject: Result<Template, String>,
    settings: Settings,
    client: Option<Client>,
    already_delivered: u64,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("name", &self.name)
            .field("server", &self.server)
            .field("subject", &self.subject)
            .field("batch", &self.settings.batch)
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl NatsSink {
    /// A sink named `name` (its cursor's key) publishing to `subject` (`{type}` in it
    /// stands for the event's type) on the server at `url`
    /// (`nats://[user:password@|token@]host[:port]`). Checked at `open`.
    pub fn new(name: impl Into<String>, url: &str, subject: &str) -> Self {
        NatsSink {
            name: name.into(),
            server: Server::parse(url),
            subject: Template::new(subject),
            settings: Settings::new(DEFAULT_NATS_BATCH, DEFAULT_NATS_TIMEOUT),
            client: None,
            already_delivered: 0,
        }
    }

    broker::setters!(
        unit: "Publishes",
        batch: DEFAULT_NATS_BATCH,
        timeout: DEFAULT_NATS_TIMEOUT,
        bounds: "connecting, and waiting for a batch's acknowledgements,"
    );

    /// Trusts the certificates in this PEM file (a private CA) for TLS instead of the
    /// web's roots. TLS is used when the URL is `tls://` or the server requires it;
    /// it needs the `tls` feature (on by default).
    pub fn tls_ca(mut self, file: impl Into<std::path::PathBuf>) -> Self {
        if let Ok(server) = &mut self.server {
            server.ca_file = Some(file.into());
        }
        self
    }
}

/// Why `subject` cannot be published to, if it cannot: empty tokens, wildcards, spaces.
fn bad_subject(subject: &str) -> Option<&'static str> {
    if subject.split('.').any(str::is_empty) {
        return Some("it has an empty token");
    }
    if subject.contains(['*', '>']) {
        return Some("it has a wildcard");
    }
    if subject.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Some("it has white space");
    }
    None
}

/// Whether JetStream refusing a message may pass: unavailable, too busy, or one
/// before it failed.
fn retryable(code: u16, err_code: u32) -> bool {
    err_code == WRONG_LAST_MSG_ID || matches!(code, 408 | 429 | 500..=599)
}

impl Sink for NatsSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
        let template = self
            .subject
            .as_ref()
            .map_err(|e| DeliveryError::permanent(e.clone()))?;
        let server = self
            .server
            .as_ref()
            .map_err(|e| DeliveryError::permanent(e.clone()))?;
        let subjects: Vec<Cow<'_, str>> = events.iter().map(|e| template.render(e)).collect();
        for (event, subject) in events.iter().zip(&subjects) {
            if let Some(why) = bad_subject(subject) {
                return Err(DeliveryError::permanent(format!(
                    "seq {}: cannot publish to {subject:?}: {why}",
                    event.seq
                )));
            }
        }
        let payloads: Vec<Vec<u8>> = events
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<_, _>>()
            .map_err(|e| DeliveryError::permanent(format!("events do not encode: {e}")))?;
        let failed = |e: std::io::Error| DeliveryError::retryable(format!("{server:?}: {e}"));
        let mut client = match self.client.take() {
            Some(client) => client,
            None => Client::connect(
                server,
                &self.name,
                crate::time::bounded(self.settings.timeout),
            )
            .map_err(failed)?,
        };
        let mut messages = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            if payloads[i].len() > client.max_payload() {
                return Err(DeliveryError::permanent(format!(
                    "seq {}: {} bytes, more than the server's max_payload of {}",
                    event.seq,
                    payloads[i].len(),
                    client.max_payload()
                )));
            }
            let previous = i.checked_sub(1).filter(|&p| subjects[p] == subjects[i]);
            messages.push(Publish {
                subject: &subjects[i],
                msg_id: &event.id,
                expect_last: previous.map(|p| events[p].id.as_str()),
                payload: &payloads[i],
            });
        }
        let acks = client.publish_all(&messages).map_err(failed)?;
        self.client = Some(client);
        let mut again = 0;
        for (ack, (event, subject)) in acks.iter().zip(events.iter().zip(&subjects)) {
            let refused = |why: String| format!("seq {} to {subject}: {why}", event.seq);
            match ack {
                Ack::Stored { duplicate } => again += u64::from(*duplicate),
                Ack::NoResponders => {
                    return Err(DeliveryError::retryable(refused(
                        "no JetStream stream takes this subject (no responders): create one".into(),
                    ))
                    .with_status(503));
                }
                Ack::Refused {
                    code,
                    err_code,
                    description,
                } => {
                    let why = refused(format!(
                        "JetStream refused it ({code}/{err_code}): {description}"
                    ));
                    return Err(match retryable(*code, *err_code) {
                        true => DeliveryError::retryable(why),
                        false => DeliveryError::permanent(why),
                    });
                }
            }
        }
        self.already_delivered += again;
        Ok(())
    }

    broker::sink_methods!();

    fn check(&self) -> Result<(), String> {
        let name = &self.name;
        match &self.server {
            Err(e) => return Err(format!("sink {name}: invalid NATS URL: {e}")),
            Ok(server) if server.tls && !cfg!(feature = "tls") => {
                return Err(format!(
                    "sink {name}: tls:// needs the `tls` feature, which this build leaves out"
                ));
            }
            Ok(_) => {}
        }
        match &self.subject {
            Err(e) => return Err(format!("sink {name}: {e}")),
            Ok(t) if bad_subject(&t.as_str().replace("{type}", "t")).is_some() => {
                return Err(format!(
                    "sink {name}: {:?} is not a subject one can publish to",
                    t.as_str()
                ));
            }
            Ok(_) => {}
        }
        self.settings.check(name)
    }
}
