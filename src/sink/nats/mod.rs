//! [`NatsSink`] (feature `nats`): events into NATS JetStream, each exactly once, fenced
//! by the stream's sequence; on a blocking client of our own ([`client`]) and what it
//! reads of the stream ([`stream`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use crate::error::DeliveryError;
use crate::event::StoredEvent;
use crate::sink::Sink;
use crate::sink::broker::{self, Settings};
use crate::sink::template::Template;

mod client;
mod stream;

use client::{Ack, Client, Publish, Server};
use stream::{Fence, WRONG_LAST_SEQUENCE};

/// Default for [`NatsSink::batch`]: 100 publishes per round trip.
pub const DEFAULT_NATS_BATCH: usize = 100;
/// Default for [`NatsSink::timeout`]: 10 s to connect, and for a batch's
/// acknowledgements.
pub const DEFAULT_NATS_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`NatsSink::in_flight`]: the next round trip's publishes go out while
/// the acknowledgements of the one before come back.
pub const DEFAULT_NATS_IN_FLIGHT: usize = 2;

/// Forwards events to NATS JetStream, each **exactly once, in seq order**, with no
/// time limit: every publish names the stream's sequence it must follow
/// (`Nats-Expected-Last-Sequence`), which JetStream checks before it stores anything.
/// When a connection starts, the sink reads the stream's last sequence and the event
/// its last message holds; events up to that one are there already (a batch re-sent
/// after a crash or a failure) and are skipped, counted in `already_delivered`. A
/// publish that a killed process left in flight, or anything else stored since, makes
/// the next publish refused rather than stored twice; the sink then reads the stream
/// again. This asks one thing of the user: **one spool per stream** (a stream whose
/// last message is not a spool's event is refused: dead-lettered with that reason).
/// The payload is the event as JSON, as a webhook gets it (`id`, `seq`, `type`,
/// `source`, `subject`, `timestamp_ms`, `data`).
///
/// Publishes are pipelined: [`batch`](NatsSink::batch) of them go out in one write and
/// [`in_flight`](NatsSink::in_flight) such writes wait for their acknowledgements at
/// once; the fence keeps a refused message from being overtaken by the ones after it.
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
    in_flight: usize,
    session: Option<Session>,
    already_delivered: u64,
}

/// A connection and what it has read of the streams it publishes to.
struct Session {
    client: Client,
    /// The index in `fences` of each subject's stream.
    stream_of: HashMap<String, usize>,
    fences: Vec<Fence>,
}

impl Session {
    /// The index in `fences` of the stream that takes `subject`, its fence read when
    /// first needed.
    fn fence(&mut self, subject: &str) -> Result<usize, DeliveryError> {
        if let Some(&i) = self.stream_of.get(subject) {
            return Ok(i);
        }
        let Some(stream) = stream::stream_of(&mut self.client, subject)? else {
            return Err(no_stream(subject));
        };
        let i = match self.fences.iter().position(|f| f.stream == stream) {
            Some(i) => i,
            None => {
                self.fences.push(stream::fence(&mut self.client, &stream)?);
                self.fences.len() - 1
            }
        };
        self.stream_of.insert(subject.to_owned(), i);
        Ok(i)
    }
}

fn no_stream(subject: &str) -> DeliveryError {
    DeliveryError::retryable(format!(
        "{subject}: no JetStream stream takes this subject (no responders): create one"
    ))
    .with_status(503)
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("name", &self.name)
            .field("server", &self.server)
            .field("subject", &self.subject)
            .field("batch", &self.settings.batch)
            .field("in_flight", &self.in_flight)
            .field("connected", &self.session.is_some())
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
            in_flight: DEFAULT_NATS_IN_FLIGHT,
            session: None,
            already_delivered: 0,
        }
    }

    broker::setters!(
        unit: "Publishes",
        batch: DEFAULT_NATS_BATCH,
        timeout: DEFAULT_NATS_TIMEOUT,
        bounds: "connecting, and waiting for a batch's acknowledgements,"
    );

    /// How many round trips of [`batch`](NatsSink::batch) publishes may wait for their
    /// acknowledgements at once; 1 waits for each before the next. Defaults to
    /// [`DEFAULT_NATS_IN_FLIGHT`].
    pub fn in_flight(mut self, n: usize) -> Self {
        self.in_flight = n;
        self
    }

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

/// Whether JetStream refusing a message may pass: unavailable, too busy, or the
/// stream moved on since its fence was read (the next connection reads it again).
fn retryable(code: u16, err_code: u32) -> bool {
    err_code == WRONG_LAST_SEQUENCE || matches!(code, 408 | 429 | 500..=599)
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
        let payloads: Vec<Vec<u8>> = events
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<_, _>>()
            .map_err(|e| DeliveryError::permanent(format!("events do not encode: {e}")))?;
        let mut session = match self.session.take() {
            Some(session) => session,
            None => Session {
                client: Client::connect(
                    server,
                    &self.name,
                    crate::time::bounded(self.settings.timeout),
                )
                .map_err(|e| DeliveryError::retryable(format!("{server:?}: {e}")))?,
                stream_of: HashMap::new(),
                fences: Vec::new(),
            },
        };
        // Any failure ends the session: the next one reads the fences again.
        let mut already = 0;
        let published = self.publish(
            &mut session,
            server,
            events,
            &subjects,
            &payloads,
            &mut already,
        );
        self.already_delivered += already;
        published?;
        self.session = Some(session);
        Ok(())
    }

    broker::sink_methods!(in_flight: in_flight);

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
        if self.in_flight == 0 {
            return Err(format!("sink {name}: in_flight must be at least 1"));
        }
        self.settings.check(name)
    }
}

impl NatsSink {
    /// Publishes what of `events` the streams lack, fenced, and adds to `already` those
    /// they had. A failure says how many events before it were delivered: it concerns
    /// the next one (one that cannot be published, or the first the stream refused).
    fn publish(
        &self,
        session: &mut Session,
        server: &Server,
        events: &[StoredEvent],
        subjects: &[Cow<'_, str>],
        payloads: &[Vec<u8>],
        already: &mut u64,
    ) -> Result<(), DeliveryError> {
        let mut messages = Vec::with_capacity(events.len());
        let mut sent: Vec<Sent<'_>> = Vec::with_capacity(events.len());
        let mut skipped: Vec<usize> = Vec::new();
        // The first event that cannot be published: the ones before it still are.
        let mut stop = None;
        for (i, ((event, subject), payload)) in
            events.iter().zip(subjects).zip(payloads).enumerate()
        {
            if let Err(e) = check_event(event, subject, payload, session.client.max_payload()) {
                stop = Some(e.with_delivered(i));
                break;
            }
            match self.place(session, event, subject) {
                Ok(Some(expect_last_seq)) => {
                    messages.push(Publish {
                        subject,
                        expect_last_seq,
                        payload,
                    });
                    sent.push(Sent {
                        index: i,
                        event,
                        subject,
                        fence: session.stream_of[subject.as_ref()],
                        expect_last_seq,
                    });
                }
                Ok(None) => skipped.push(i),
                // A stream's failure is the whole batch's, not this event's.
                Err(e) => {
                    stop = Some(e);
                    break;
                }
            }
        }
        let outcome = self
            .confirm(session, server, &messages, &sent)
            .and_then(|()| stop.map_or(Ok(()), Err));
        let delivered = match &outcome {
            Ok(()) => usize::MAX,
            Err(e) => e.delivered().unwrap_or(0),
        };
        *already += skipped.iter().filter(|&&i| i < delivered).count() as u64;
        outcome
    }

    /// Where `event` goes: the stream sequence its publish must follow, or `None` when
    /// the stream has it already; an error when its stream cannot be written.
    fn place(
        &self,
        session: &mut Session,
        event: &StoredEvent,
        subject: &str,
    ) -> Result<Option<u64>, DeliveryError> {
        let index = session.fence(subject)?;
        let fence = &mut session.fences[index];
        if let Some(last) = &fence.last_event
            && event.seq <= last.seq
        {
            if event.seq == last.seq && event.id != last.id {
                return Err(DeliveryError::permanent(format!(
                    "stream {}: its last message holds seq {} with id {}, not this \
                     spool's {}: one spool per stream",
                    fence.stream, last.seq, last.id, event.id
                )));
            }
            return Ok(None);
        }
        fence.last_seq += 1;
        Ok(Some(fence.last_seq - 1))
    }

    /// Publishes `messages` and reads their acknowledgements; the first refusal is the
    /// batch's failure, saying how many events before it were delivered.
    fn confirm(
        &self,
        session: &mut Session,
        server: &Server,
        messages: &[Publish<'_>],
        sent: &[Sent<'_>],
    ) -> Result<(), DeliveryError> {
        if messages.is_empty() {
            return Ok(());
        }
        let acks = session
            .client
            .publish_pipelined(messages, self.settings.batch, self.in_flight)
            .map_err(|e| DeliveryError::retryable(format!("{server:?}: {e}")))?;
        // The first refusal in each stream, and the batch's first failure.
        let mut refused: Vec<Option<&Sent<'_>>> = vec![None; session.fences.len()];
        let mut failure = None;
        for (ack, sent) in acks.iter().zip(sent) {
            let why = |why: String| format!("seq {} to {}: {why}", sent.event.seq, sent.subject);
            let error = match ack {
                Ack::Stored { .. } => {
                    if let Some(first) = refused[sent.fence].take() {
                        check_displaced(session, first)?;
                    }
                    continue;
                }
                Ack::NoResponders => no_stream(sent.subject),
                Ack::Refused {
                    code,
                    err_code,
                    description,
                } => {
                    let why = why(format!(
                        "JetStream refused it ({code}/{err_code}): {description}"
                    ));
                    match retryable(*code, *err_code) {
                        true => DeliveryError::retryable(why),
                        false => DeliveryError::permanent(why),
                    }
                }
            };
            if failure.is_none() {
                failure = Some(error.with_delivered(sent.index));
            }
            refused[sent.fence].get_or_insert(sent);
        }
        failure.map_or(Ok(()), Err)
    }
}

/// Why `event` cannot be published to `subject`, if it cannot.
fn check_event(
    event: &StoredEvent,
    subject: &str,
    payload: &[u8],
    max_payload: usize,
) -> Result<(), DeliveryError> {
    if let Some(why) = bad_subject(subject) {
        return Err(DeliveryError::permanent(format!(
            "seq {}: cannot publish to {subject:?}: {why}",
            event.seq
        )));
    }
    if payload.len() > max_payload {
        return Err(DeliveryError::permanent(format!(
            "seq {}: {} bytes, more than the server's max_payload of {max_payload}",
            event.seq,
            payload.len(),
        )));
    }
    Ok(())
}

/// A message published in a batch, and the fence it named.
struct Sent<'a> {
    /// Its event's place in the batch.
    index: usize,
    event: &'a StoredEvent,
    subject: &'a str,
    fence: usize,
    expect_last_seq: u64,
}

/// A message after `first` in its stream was stored though `first` was refused:
/// something was stored between them. A killed process's copy of `first` is that
/// (it numbers the stream as this one does); anything else displaced `first`, which
/// must not be skipped later as if it were there.
fn check_displaced(session: &mut Session, first: &Sent<'_>) -> Result<(), DeliveryError> {
    let stream = session.fences[first.fence].stream.clone();
    let at = first.expect_last_seq + 1;
    let displaced = |why: String| {
        DeliveryError::permanent(format!(
            "stream {stream}: {why}, not this spool's seq {}, and later events were stored \
             after it: one spool per stream",
            first.event.seq
        ))
        .with_delivered(first.index)
    };
    match stream::event_at(&mut session.client, &stream, at) {
        Ok(Some(held)) if held.seq == first.event.seq && held.id == first.event.id => Ok(()),
        Ok(Some(held)) => Err(displaced(format!("its message {at} is seq {}", held.seq))),
        Ok(None) => Err(displaced(format!("its message {at} is gone"))),
        Err(e) if !e.is_retryable() => Err(displaced(format!("its message {at} is not an event"))),
        Err(e) => Err(e),
    }
}
