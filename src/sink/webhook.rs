//! [`WebhookSink`]: HTTP POST delivery on ureq, with Standard Webhooks signatures.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::event::{StoredEvent, matches_any};
use crate::sink::http_date::parse_retry_after;
use crate::sink::order::{Concurrency, DEFAULT_WINDOW, Order};
use crate::sink::payload::{Body, CloudEvent, Content, encode};
use crate::sink::signing::SigningSecret;
use crate::sink::{
    Backoff, DEFAULT_BACKOFF, DEFAULT_MAX_RETRIES, DeliveryError, MAX_SINK_BATCH, Sink, key_of,
};

/// Default for [`WebhookSink::timeout`]: 10 s for the whole request.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a response body read (the rest is discarded with the connection).
const MAX_RESPONSE_BYTES: u64 = 64 << 10;
/// Each write and read of a request waits at most this share of its timeout (see
/// `WebhookSink::agent`).
const PER_IO: f64 = 0.999;

/// Delivers events by HTTP POST to a URL: one event per request as a JSON object, or
/// with [`batch`](WebhookSink::batch) > 1 a JSON array of up to that many (an array
/// even when one event is ready).
///
/// Every request carries `content-type`, `webhook-id` (the first event's id),
/// `webhook-timestamp`, `eventspool-seq` (`first-last`), with a secret
/// `webhook-signature` (Standard Webhooks), and the headers you add. A 2xx
/// acknowledges the request. Connection errors, timeouts, 408, 429 and 5xx are
/// retried (honouring `Retry-After` up to the backoff maximum); other 4xx and every
/// 3xx (redirects are not followed) are permanent: the events are dead-lettered.
///
/// Setters never fail; [`Spool`](crate::Spool) checks the settings when it opens.
///
/// ```
/// use std::time::Duration;
/// use eventspool::{Backoff, Content, WebhookSink};
///
/// let sink = WebhookSink::new("audit", "https://example.test/hook")
///     .timeout(Duration::from_secs(10))
///     .max_retries(Some(20))
///     .backoff(Backoff::exponential(Duration::from_millis(100), Duration::from_secs(60)))
///     .content(Content::Full)
///     .batch(1)
///     .signing_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
///     .header("authorization", "Bearer token")
///     .event_types(["order.*"]);
/// assert!(!format!("{sink:?}").contains("MfKQ9r8"), "secrets stay out of Debug");
/// ```
#[derive(Clone)]
pub struct WebhookSink {
    name: String,
    url: String,
    /// The URL as the library writes it anywhere (see [`shown_url`]).
    shown: String,
    timeout: Duration,
    max_retries: Option<u32>,
    backoff: Backoff,
    content: Content,
    batch: usize,
    commit_every: usize,
    cloudevents: bool,
    secret: Option<Result<SigningSecret, String>>,
    headers: Vec<(String, String)>,
    event_types: Vec<String>,
    agent: Option<ureq::Agent>,
    order: Order,
    concurrency: Concurrency,
    window: usize,
    max_age: Option<Duration>,
    rate_limit: Option<f64>,
    key_by: Option<KeyFn>,
}

/// A [`WebhookSink::key_by`] function.
type KeyFn = Arc<dyn Fn(&StoredEvent) -> String + Send + Sync>;

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            .field("url", &self.shown)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("backoff", &self.backoff)
            .field("content", &self.content)
            .field("batch", &self.batch)
            .field("commit_every", &self.commit_every)
            .field("cloudevents", &self.cloudevents)
            .field("signed", &self.secret.is_some())
            .field("header_names", &header_names)
            .field("event_types", &self.event_types)
            .field("order", &self.order)
            .field("concurrency", &self.concurrency)
            .field("window", &self.window)
            .field("max_age", &self.max_age)
            .field("rate_limit", &self.rate_limit)
            .field("key_by", &self.key_by.is_some())
            .finish()
    }
}

impl WebhookSink {
    /// A webhook named `name` (the key of its cursor) posting to `url`.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        let url = url.into();
        WebhookSink {
            name: name.into(),
            shown: shown_url(&url),
            url,
            timeout: DEFAULT_WEBHOOK_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            backoff: DEFAULT_BACKOFF,
            content: Content::Full,
            batch: 1,
            commit_every: 1,
            cloudevents: false,
            secret: None,
            headers: Vec::new(),
            event_types: Vec::new(),
            agent: None,
            order: Order::Total,
            concurrency: Concurrency::Fixed(1),
            window: DEFAULT_WINDOW,
            max_age: None,
            rate_limit: None,
            key_by: None,
        }
    }

    /// Time allowed for a whole request (connect, send, response); each single write
    /// or read gets at most 99.9% of it. Defaults to 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Retries before dead-lettering; `None` retries forever. Defaults to `Some(20)`.
    pub fn max_retries(mut self, retries: Option<u32>) -> Self {
        self.max_retries = retries;
        self
    }

    /// Wait between retries. Defaults to [`DEFAULT_BACKOFF`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// What is posted of each event. Defaults to [`Content::Full`].
    pub fn content(mut self, content: Content) -> Self {
        self.content = content;
        self
    }

    /// Events per request; more than 1 posts a JSON array. Defaults to 1.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }

    /// Commits the cursor after every `n` acknowledged requests instead of after each
    /// one; a crash then replays at most the last `n` requests. See
    /// [`Sink::commit_every`]. Defaults to 1.
    ///
    /// ```
    /// use eventspool::WebhookSink;
    ///
    /// // A backlog goes out 100 events a request, committed every 8 requests: a crash
    /// // sends at most 800 events again.
    /// let sink = WebhookSink::new("bulk", "http://127.0.0.1:8080/hook")
    ///     .batch(100)
    ///     .commit_every(8);
    /// ```
    pub fn commit_every(mut self, n: usize) -> Self {
        self.commit_every = n;
        self
    }

    /// Posts CloudEvents 1.0 structured JSON (`application/cloudevents+json`, or
    /// `application/cloudevents-batch+json` for batches) instead. Defaults to false.
    pub fn cloudevents(mut self, on: bool) -> Self {
        self.cloudevents = on;
        self
    }

    /// Signs requests (Standard Webhooks): `whsec_<base64>`, or any other text as raw
    /// key bytes. Defaults to unsigned.
    pub fn signing_secret(mut self, secret: &str) -> Self {
        // Kept as the bare message: `check` prefixes it with the sink's name.
        self.secret = Some(SigningSecret::parse(secret).map_err(|e| match e {
            crate::error::Error::InvalidConfig(msg) => msg,
            other => other.to_string(),
        }));
        self
    }

    /// Adds a header to every request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Only events of these types (a trailing `*` matches a prefix). Defaults to all.
    pub fn event_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.event_types = types.into_iter().map(Into::into).collect();
        self
    }

    /// In what order events go out. Defaults to [`Order::Total`]: one request in
    /// flight, each after the last. With [`Order::PerKey`] (the key is the subject, or
    /// what [`key_by`](WebhookSink::key_by) says) or [`Order::Unordered`], up to
    /// [`concurrency`](WebhookSink::concurrency) requests run side by side.
    ///
    /// ```
    /// use eventspool::{Concurrency, Order, WebhookSink};
    ///
    /// // 32 requests in flight, each order's events in seq order, one at a time.
    /// let sink = WebhookSink::new("orders", "https://example.test/hook")
    ///     .order(Order::PerKey)
    ///     .concurrency(Concurrency::Fixed(32))
    ///     .key_by(|e| e.subject.clone().unwrap_or_default());
    /// ```
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// How many requests may be in flight (with an order other than `Total`).
    /// Defaults to `Fixed(1)`.
    pub fn concurrency(mut self, concurrency: Concurrency) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// Under [`Order::PerKey`], the key of an event. Defaults to its subject.
    pub fn key_by(mut self, key: impl Fn(&StoredEvent) -> String + Send + Sync + 'static) -> Self {
        self.key_by = Some(Arc::new(key));
        self
    }

    /// The most events dispatched above the durable cursor: what a crash may replay.
    /// Defaults to [`DEFAULT_WINDOW`].
    pub fn window(mut self, events: usize) -> Self {
        self.window = events;
        self
    }

    /// Events older than this when their turn comes are dead-lettered as `expired`
    /// instead of sent. Defaults to none.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// At most this many requests per second. Defaults to none.
    pub fn rate_limit(mut self, per_second: f64) -> Self {
        self.rate_limit = Some(per_second);
        self
    }

    fn agent(&mut self) -> &ureq::Agent {
        let timeout = crate::time::bounded(self.timeout);
        // ureq sets a socket's timeout again whenever it differs from the last one set:
        // with only the request's deadline that is before every write and read, as the
        // time left shrinks (3 system calls a request). Capped a little below it, each
        // write and read gets the same timeout, set once per connection.
        let per_io = timeout.mul_f64(PER_IO);
        self.agent.get_or_insert_with(|| {
            let config = ureq::Agent::config_builder()
                .timeout_global(Some(timeout))
                .timeout_per_read(Some(per_io))
                .timeout_per_write(Some(per_io))
                .http_status_as_error(false)
                .max_redirects(0)
                .user_agent(concat!("eventspool/", env!("CARGO_PKG_VERSION")))
                .build();
            ureq::Agent::with_parts(config, DefaultConnector::new(), InlineResolver::default())
        })
    }

    /// The request body and its content type. A sink with `batch > 1` always posts an
    /// array, even of one event, so its receiver sees one shape.
    fn body(&self, events: &[StoredEvent]) -> (Vec<u8>, &'static str) {
        let array = self.batch > 1;
        let encoded = if self.cloudevents {
            let items: Vec<CloudEvent<'_>> = events
                .iter()
                .map(|e| CloudEvent::new(e, self.content))
                .collect();
            encode(&items, array)
        } else {
            let items: Vec<Body<'_>> = events.iter().map(|e| Body::new(e, self.content)).collect();
            encode(&items, array)
        };
        let content_type = match (self.cloudevents, array) {
            (false, _) => "application/json",
            (true, false) => "application/cloudevents+json",
            (true, true) => "application/cloudevents-batch+json",
        };
        (encoded, content_type)
    }
}

/// Resolves the host on the worker's thread: ureq's own resolver, when a timeout covers
/// resolution, starts a thread per request, which costs more than a whole request to a
/// receiver nearby ([`crate::guide::performance`]). The system resolver has timeouts of its
/// own, and an IP address is not looked up at all.
#[derive(Debug, Default)]
struct InlineResolver(DefaultResolver);

impl Resolver for InlineResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        self.0.resolve(uri, config, NextTimeout::default())
    }
}

/// What the library writes of a URL: scheme, host and port. The path and query of a
/// webhook URL often carry its token (Slack, Discord and Teams put it in the path).
pub(crate) fn shown_url(url: &str) -> String {
    let Ok(uri) = url.parse::<Uri>() else {
        return "<invalid URL>".into();
    };
    let scheme = uri.scheme_str().unwrap_or("?");
    match (uri.host(), uri.port_u16()) {
        (Some(host), Some(port)) => format!("{scheme}://{host}:{port}"),
        (Some(host), None) => format!("{scheme}://{host}"),
        (None, _) => format!("{scheme}://"),
    }
}

impl WebhookSink {
    /// A request that got no response, as a retryable error that names the URL as
    /// [`shown_url`] does (ureq's message may hold the whole URL).
    fn failed(&self, error: &ureq::Error, https: bool) -> DeliveryError {
        let message = error.to_string().replace(&self.url, &self.shown);
        // rustls reads a plain-HTTP answer to its hello as the connection ending.
        let plain = https
            && match error {
                ureq::Error::Io(e) => e.kind() == std::io::ErrorKind::UnexpectedEof,
                #[cfg(feature = "tls")]
                ureq::Error::Rustls(_) => true,
                _ => false,
            };
        let hint = if plain {
            " (the TLS handshake failed: is the server speaking plain HTTP? use an http:// URL)"
        } else {
            ""
        };
        DeliveryError::retryable(format!("POST {}: {message}{hint}", self.shown))
    }
}

impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
        let (body, content_type) = self.body(events);
        let (first, last) = (&events[0], &events[events.len() - 1]);
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_string();
        let signature = match &self.secret {
            Some(Ok(secret)) => Some(secret.sign(&first.id, &timestamp, &body)),
            _ => None,
        };
        let seq_range = format!("{}-{}", first.seq, last.seq);
        let url = self.url.clone();
        let https = url.starts_with("https:");
        let mut request = self
            .agent()
            .post(&url)
            .header("content-type", content_type)
            .header("webhook-id", &first.id)
            .header("webhook-timestamp", &timestamp)
            .header("eventspool-seq", &seq_range);
        if let Some(signature) = signature {
            request = request.header("webhook-signature", signature);
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let mut response = request
            .send(&body[..])
            .map_err(|e| self.failed(&e, https))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // Read (a bounded amount of) the body so the connection can be reused.
        let _ = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec();
        classify(status, retry_after, &self.shown)
    }

    fn batch_size(&self) -> usize {
        self.batch
    }

    fn order(&self) -> Order {
        self.order
    }

    fn concurrency(&self) -> Concurrency {
        self.concurrency
    }

    fn window(&self) -> usize {
        self.window
    }

    fn max_age(&self) -> Option<Duration> {
        self.max_age
    }

    fn rate_limit(&self) -> Option<f64> {
        self.rate_limit
    }

    fn key(&self, event: &StoredEvent) -> u64 {
        match &self.key_by {
            Some(key) => key_of(&key(event)),
            None => key_of(event.subject.as_deref().unwrap_or_default()),
        }
    }

    fn try_clone(&self) -> Option<Box<dyn Sink>> {
        Some(Box::new(self.clone()))
    }

    fn commit_every(&self) -> usize {
        self.commit_every
    }

    fn max_retries(&self) -> Option<u32> {
        self.max_retries
    }

    fn backoff(&self) -> Backoff {
        self.backoff
    }

    fn accepts(&self, event_type: &str) -> bool {
        matches_any(&self.event_types, event_type)
    }

    fn check(&self) -> Result<(), String> {
        let name = &self.name;
        let uri: ureq::http::Uri = self
            .url
            .parse()
            .map_err(|e| format!("sink {name}: invalid URL: {e}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(format!(
                "sink {name}: URL must be http:// or https:// with a host, not {}",
                self.shown
            ));
        }
        if !cfg!(feature = "tls") && uri.scheme_str() == Some("https") {
            return Err(format!(
                "sink {name}: https needs the `tls` feature, which this build leaves out: {}",
                self.shown
            ));
        }
        if !(1..=MAX_SINK_BATCH).contains(&self.batch) {
            return Err(format!("sink {name}: batch must be 1 to {MAX_SINK_BATCH}"));
        }
        if self.commit_every == 0 {
            return Err(format!("sink {name}: commit_every must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(format!("sink {name}: timeout must be more than zero"));
        }
        if let Some(Err(e)) = &self.secret {
            return Err(format!("sink {name}: {e}"));
        }
        for (header, value) in &self.headers {
            ureq::http::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| format!("sink {name}: invalid header name {header:?}"))?;
            ureq::http::HeaderValue::from_str(value)
                .map_err(|_| format!("sink {name}: invalid value for header {header}"))?;
        }
        self.backoff
            .check()
            .map_err(|e| format!("sink {name}: {e}"))
    }
}

/// Maps an HTTP status to the delivery rules.
fn classify(status: u16, retry_after: Option<Duration>, url: &str) -> Result<(), DeliveryError> {
    let message = format!("POST {url}: HTTP {status}");
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(DeliveryError::Retryable {
            message,
            retry_after,
            status: Some(status),
            delivered: None,
        }),
        300..=399 => Err(DeliveryError::permanent(format!(
            "{message} (redirects are not followed)"
        ))
        .with_status(status)),
        _ => Err(DeliveryError::permanent(message).with_status(status)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_needs_the_tls_feature_and_says_so() {
        let https = WebhookSink::new("hook", "https://example.test/hook").check();
        if cfg!(feature = "tls") {
            assert!(https.is_ok(), "{https:?}");
        } else {
            let message = https.unwrap_err();
            assert!(
                message.contains("https needs the `tls` feature"),
                "{message}"
            );
        }
        assert!(
            WebhookSink::new("hook", "http://example.test/hook")
                .check()
                .is_ok()
        );
    }

    #[test]
    fn statuses_follow_the_delivery_rules() {
        assert!(classify(204, None, "u").is_ok());
        for retryable in [408, 429, 500, 503] {
            assert!(classify(retryable, None, "u").unwrap_err().is_retryable());
        }
        for permanent in [301, 302, 400, 401, 404, 410] {
            let e = classify(permanent, None, "u").unwrap_err();
            assert!(!e.is_retryable());
            assert_eq!(e.status(), Some(permanent));
        }
    }

    #[test]
    fn retry_after_lengthens_the_backoff_never_shortens_it() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
        let ms = Duration::from_millis;
        assert_eq!(b.wait(ms(70), None), ms(70));
        assert_eq!(b.wait(ms(70), Some(Duration::ZERO)), ms(70));
        assert_eq!(b.wait(ms(70), Some(ms(500))), ms(500));
        assert_eq!(b.wait(ms(70), Some(Duration::MAX)), ms(1000));
    }

    #[test]
    fn backoff_ceiling_doubles_up_to_max() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings: Vec<u128> = (1..=6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(500), Duration::from_secs(1));
    }
}
