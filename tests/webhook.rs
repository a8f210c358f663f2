//! Webhook behaviour a receiver or an operator sees, against real HTTP receivers on
//! 127.0.0.1: retries and how long they wait (`Retry-After`), dead letters, timeouts,
//! resets, redirects, signatures, payload shapes, type filters, configuration, what the
//! library writes of a URL, TLS against plain HTTP, and what `close` reports.

mod common;

use std::time::Duration;

use common::delivery::*;
use common::http::{Reply, Server};
use common::*;
use eventspool::{Backoff, Content, Error, Event, Spool, SpoolConfig, WebhookSink, verify};

/// `Retry-After` may lengthen a wait, never shorten it below the backoff's: with
/// `Retry-After: 0` (or a date in the past) five attempts still take the backoff's time.
#[test]
fn retry_after_zero_or_in_the_past_does_not_skip_the_backoff() -> TestResult {
    for asked in ["0", "Sun, 06 Nov 1994 08:49:37 GMT"] {
        let (_dir, path) = temp_spool();
        let server = Server::with_script(move |_| Reply::with_header(503, "retry-after", asked));
        let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_millis(100));
        let spool = Spool::builder(&path)
            .sink(quick("s", &server).backoff(backoff).max_retries(Some(4)))
            .open()?;
        spool.append(numbered(0))?;
        wait_until(T, "dead-lettered", || {
            !spool.dead_letters("s", 1).unwrap().is_empty()
        });
        let requests = server.requests();
        assert_eq!(requests.len(), 5, "Retry-After: {asked}");
        // Four full-jitter waits of up to 100 ms: under 10 ms in all has odds of 4e-6.
        let took = requests[4].at - requests[0].at;
        assert!(
            took >= Duration::from_millis(10),
            "Retry-After: {asked}: {took:?}"
        );
    }
    Ok(())
}

/// The path and query of a webhook URL often hold its token: errors, dead letters,
/// logs, the error hook and `Debug` show scheme, host and port only.
#[test]
fn a_token_in_the_url_is_never_written_anywhere() -> TestResult {
    capture_logs();
    let secret = "T0KEN-in-the-path";
    let (_dir, path) = temp_spool();
    let refusing = Server::with_script(|_| Reply::status(400));
    let mut down = Server::start();
    down.down();
    let url = |server: &Server| format!("http://{}/hooks/{secret}?token={secret}", server.addr());
    let hooked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = hooked.clone();
    let spool = Spool::builder(&path)
        .on_error(move |e| seen.lock().unwrap().push(e.to_string()))
        .sink(quick_url("refused", url(&refusing)))
        .sink(quick_url("down", url(&down)).max_retries(Some(1)))
        .open()?;
    spool.append(numbered(0))?;
    // The dead letters are committed after the sinks count them: wait for the file's.
    wait_until(T, "both sinks gave up", || {
        spool.metrics().dead_letters == 2
    });
    let mut written: Vec<String> = hooked.lock().unwrap().clone();
    written.extend(logged(""));
    for name in ["refused", "down"] {
        let dead = &spool.dead_letters(name, 1)?[0];
        written.push(dead.last_error.clone());
        written.extend(sink_metrics(&spool, name).last_error);
    }
    written.push(format!("{:?}", quick_url("debug", url(&refusing))));
    let config: SpoolConfig = serde_json::from_value(serde_json::json!({
        "path": path, "sinks": [{"name": "c", "url": url(&refusing)}]
    }))?;
    written.push(format!("{config:?}"));
    let host = refusing.addr().to_string();
    assert!(
        written.iter().any(|w| w.contains(&host)),
        "the host is shown: {written:#?}"
    );
    for w in &written {
        assert!(!w.contains(secret), "a URL's token was written: {w}");
    }
    Ok(())
}

fn quick_url(name: &str, url: String) -> WebhookSink {
    common::delivery::quick_at(name, url)
}

/// An https URL pointed at a plain-HTTP server says so, not "unexpected end of file".
#[test]
fn https_to_a_plain_http_server_says_what_is_wrong() -> TestResult {
    let (_dir, path) = temp_spool();
    let server = Server::start();
    let url = format!("https://{}/hook", server.addr());
    let spool = Spool::builder(&path)
        .sink(quick_url("tls", url).max_retries(Some(0)))
        .open()?;
    spool.append(numbered(0))?;
    wait_until(T, "dead-lettered", || {
        !spool.dead_letters("tls", 1).unwrap().is_empty()
    });
    let error = &spool.dead_letters("tls", 1)?[0].last_error;
    assert!(
        error.contains("TLS") && error.contains("plain HTTP"),
        "{error}"
    );
    Ok(())
}

/// `close` says which sinks it left behind and how much, and logs it; a clean one
/// reports nothing left.
#[test]
fn close_reports_what_the_sinks_left_undelivered() -> TestResult {
    capture_logs();
    let (_dir, path) = temp_spool();
    let mut server = Server::start();
    server.down();
    let spool = Spool::builder(&path)
        .sink(quick("behind", &server).max_retries(None))
        .open()?;
    spool.append_batch((0..10).map(numbered).collect())?;
    let report = spool.close(Duration::from_millis(200))?;
    assert!(!report.is_complete());
    let behind: Vec<(String, u64)> = report
        .undelivered
        .iter()
        .map(|s| (s.sink.clone(), s.events))
        .collect();
    assert_eq!(behind, [("behind".to_owned(), 10)]);
    assert!(
        logged("behind").iter().any(|l| l.contains("10")),
        "{:?}",
        logged("")
    );
    drop(spool);

    server.up();
    let spool = Spool::builder(&path)
        .sink(quick("behind", &server))
        .open()?;
    let report = spool.close(T)?;
    assert!(report.is_complete(), "{report:?}");
    Ok(())
}

#[test]
fn retryable_answers_are_retried_and_metered() -> TestResult {
    let (_dir, path) = temp_spool();
    let answers = std::sync::Mutex::new(vec![500, 500, 200].into_iter());
    let server =
        Server::with_script(move |_| Reply::status(answers.lock().unwrap().next().unwrap_or(200)));
    let spool = Spool::builder(&path).sink(quick("s", &server)).open()?;
    spool.emit(numbered(0))?;
    let requests = server.wait_requests(3, T);
    wait_until(T, "the delivery is recorded", || {
        sink_metrics(&spool, "s").delivered == 1
    });
    let ids: Vec<_> = requests
        .iter()
        .map(|r| r.header("webhook-id").unwrap().to_owned())
        .collect();
    assert!(
        ids.iter().all(|id| id == &ids[0]),
        "retries carry the same id"
    );
    let m = sink_metrics(&spool, "s");
    assert_eq!(
        (m.delivered, m.attempts, m.retries, m.failures_retryable),
        (1, 3, 2, 2)
    );
    assert_eq!(
        m.last_error.as_deref().map(|e| e.contains("HTTP 500")),
        Some(true)
    );
    Ok(())
}

/// The time between the first two requests, when the first is answered with `first`.
fn gap_after(first: Reply, backoff_max: Duration) -> Result<Duration, Error> {
    let (_dir, path) = temp_spool();
    let answered = std::sync::atomic::AtomicBool::new(false);
    let server = Server::with_script(move |_| {
        if answered.swap(true, std::sync::atomic::Ordering::SeqCst) {
            Reply::ok()
        } else {
            first.clone()
        }
    });
    let backoff = Backoff::exponential(Duration::from_millis(1), backoff_max);
    let spool = Spool::builder(&path)
        .sink(quick("s", &server).backoff(backoff))
        .open()?;
    spool.emit(numbered(0))?;
    let requests = server.wait_requests(2, T);
    Ok(requests[1].at - requests[0].at)
}

#[test]
fn retry_after_is_honoured_up_to_the_backoff_maximum() -> TestResult {
    let asked = Reply::with_header(429, "retry-after", "1");
    let gap = gap_after(asked, Duration::from_secs(5))?;
    assert!(gap >= Duration::from_millis(950), "waited only {gap:?}");
    assert!(gap < Duration::from_secs(3), "waited {gap:?}");

    let too_long = Reply::with_header(503, "retry-after", "3600");
    let gap = gap_after(too_long, Duration::from_millis(200))?;
    assert!(gap >= Duration::from_millis(190), "waited only {gap:?}");
    assert!(
        gap < Duration::from_secs(2),
        "capped by the backoff maximum: {gap:?}"
    );
    Ok(())
}

#[test]
fn a_permanent_error_dead_letters_at_once_and_requeue_delivers_it() -> TestResult {
    let (_dir, path) = temp_spool();
    let server = Server::with_script(|r| {
        if r.json()["data"]["n"] == 0 {
            Reply::status(400)
        } else {
            Reply::ok()
        }
    });
    let spool = Spool::builder(&path).sink(quick("s", &server)).open()?;
    for n in 0..3 {
        spool.emit(numbered(n))?;
    }
    assert_eq!(wait_delivered(&server, 2), [2, 3], "the sink moved on");
    assert_eq!(server.requests().len(), 3, "a 400 is not retried");
    let dead = spool.dead_letters("s", 10)?;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].event.seq, dead[0].attempts, dead[0].last_status),
        (1, 1, Some(400))
    );
    assert!(
        dead[0].last_error.contains("HTTP 400"),
        "{}",
        dead[0].last_error
    );
    wait_until(T, "the sink counted both deliveries", || {
        sink_metrics(&spool, "s").delivered == 2
    });
    let m = sink_metrics(&spool, "s");
    assert_eq!(
        (m.dead_lettered, m.failures_permanent, m.delivered),
        (1, 1, 2)
    );

    server.set_script(|_| Reply::ok());
    assert_eq!(spool.requeue_dead_letters("s")?, 1);
    assert_eq!(wait_delivered(&server, 3), [2, 3, 1]);
    wait_until(T, "the dead letter is gone", || {
        spool.dead_letters("s", 10).unwrap().is_empty()
    });
    Ok(())
}

#[test]
fn retries_run_out_into_the_dead_letters() -> TestResult {
    let (_dir, path) = temp_spool();
    let server = Server::with_script(|_| Reply::status(503));
    let spool = Spool::builder(&path)
        .sink(quick("s", &server).max_retries(Some(2)))
        .open()?;
    spool.emit(numbered(0))?;
    wait_until(T, "dead-lettered", || {
        !spool.dead_letters("s", 1).unwrap().is_empty()
    });
    let dead = &spool.dead_letters("s", 1)?[0];
    assert_eq!((dead.attempts, dead.last_status), (3, Some(503)));
    assert_eq!(server.requests().len(), 3);
    Ok(())
}

/// A receiver that never answers its first request, then answers 200.
fn hangs_once() -> Server {
    let hung = std::sync::atomic::AtomicBool::new(false);
    Server::with_script(move |_| {
        if hung.swap(true, std::sync::atomic::Ordering::SeqCst) {
            Reply::ok()
        } else {
            Reply::Hang
        }
    })
}

#[test]
fn a_receiver_that_never_answers_times_out_and_is_retried() -> TestResult {
    let (_dir, path) = temp_spool();
    let server = hangs_once();
    let sink = quick("s", &server).timeout(Duration::from_millis(300));
    let spool = Spool::builder(&path).sink(sink).open()?;
    spool.emit(numbered(0))?;
    assert_eq!(wait_delivered(&server, 1), [1]);
    let m = sink_metrics(&spool, "s");
    assert_eq!((m.failures_retryable, m.retries), (1, 1), "{m:?}");
    assert!(m.last_error.unwrap().to_lowercase().contains("timeout"));
    Ok(())
}

#[test]
fn host_names_are_resolved_and_the_timeout_still_holds() -> TestResult {
    // The sink resolves on its own thread (ureq would start one per request to time
    // the lookup out); a name must still be looked up, and a hung receiver still
    // time out.
    let (_dir, path) = temp_spool();
    let server = hangs_once();
    let url = server.url().replace("127.0.0.1", "localhost");
    let sink = quick_at("s", url).timeout(Duration::from_millis(300));
    let spool = Spool::builder(&path).sink(sink).open()?;
    for n in 0..3 {
        spool.emit(numbered(n))?;
    }
    assert_eq!(wait_delivered(&server, 3), [1, 2, 3]);
    let m = sink_metrics(&spool, "s");
    assert_eq!(m.failures_retryable, 1, "{m:?}");
    Ok(())
}

#[test]
fn reset_connections_are_retried() -> TestResult {
    let (_dir, path) = temp_spool();
    let resets = std::sync::atomic::AtomicU32::new(0);
    let server = Server::with_script(move |_| {
        if resets.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            Reply::Reset
        } else {
            Reply::ok()
        }
    });
    let spool = Spool::builder(&path).sink(quick("s", &server)).open()?;
    spool.emit(numbered(0))?;
    assert_eq!(wait_delivered(&server, 1), [1]);
    assert_eq!(sink_metrics(&spool, "s").failures_retryable, 2);
    Ok(())
}

#[test]
fn redirects_are_not_followed() -> TestResult {
    let (_dir, path) = temp_spool();
    let elsewhere = Server::start();
    let target = elsewhere.url();
    let server = Server::with_script(move |_| Reply::with_header(302, "location", &target));
    let spool = Spool::builder(&path).sink(quick("s", &server)).open()?;
    spool.emit(numbered(0))?;
    wait_until(T, "dead-lettered", || {
        !spool.dead_letters("s", 1).unwrap().is_empty()
    });
    assert_eq!(spool.dead_letters("s", 1)?[0].last_status, Some(302));
    assert!(
        elsewhere.requests().is_empty(),
        "the redirect was not followed"
    );
    assert_eq!(server.requests().len(), 1, "a redirect is permanent");
    Ok(())
}

#[test]
fn requests_are_signed_and_carry_their_ids() -> TestResult {
    use base64::Engine;
    use hmac::Mac;
    let (_dir, path) = temp_spool();
    let server = Server::start();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let spool = Spool::builder(&path)
        .sink(
            quick("s", &server)
                .signing_secret(secret)
                .header("x-tenant", "7"),
        )
        .open()?;
    spool.emit(numbered(0).id("evt-1"))?;
    let r = &server.wait_requests(1, T)[0];
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("webhook-id"), Some("evt-1"));
    assert_eq!(r.header("eventspool-seq"), Some("1-1"));
    assert_eq!(r.header("x-tenant"), Some("7"));
    let (id, ts, sig) = (
        r.header("webhook-id").unwrap(),
        r.header("webhook-timestamp").unwrap(),
        r.header("webhook-signature").unwrap(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    assert!(ts.parse::<u64>()?.abs_diff(now) < 60);

    let key = eventspool::SigningSecret::parse(secret)?;
    assert!(verify(&key, id, ts, &r.body, sig));
    let wrong = eventspool::SigningSecret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")?;
    assert!(
        !verify(&wrong, id, ts, &r.body, sig),
        "a wrong secret is rejected"
    );
    assert!(
        !verify(&key, id, ts, b"{}", sig),
        "a changed body is rejected"
    );

    // Independently: HMAC-SHA256 over "id.timestamp.body" with the decoded key.
    let b64 = base64::engine::general_purpose::STANDARD;
    let raw_key = b64.decode(&secret["whsec_".len()..])?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&raw_key)?;
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(&r.body);
    assert_eq!(
        sig,
        format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
    );

    let body = r.json();
    assert_eq!(body["id"], "evt-1");
    assert_eq!(body["seq"], 1);
    assert_eq!(body["type"], "test.numbered");
    assert_eq!(body["data"]["n"], 0);
    Ok(())
}

#[test]
fn payload_shapes_summary_batches_and_cloudevents() -> TestResult {
    let (_dir, path) = temp_spool();
    let (summary, batched, cloud) = (Server::start(), Server::start(), Server::start());
    let spool = Spool::builder(&path)
        .sink(quick("summary", &summary).content(Content::Summary))
        .sink(quick("batched", &batched).batch(3))
        .sink(quick("cloud", &cloud).cloudevents(true))
        .open()?;
    spool.append_batch(
        (0..3)
            .map(|n| numbered(n).subject("s/1").source("tests"))
            .collect(),
    )?;
    let s = &summary.wait_requests(1, T)[0].json();
    assert!(s.get("data").is_none(), "summary leaves data out: {s}");
    assert_eq!(s["subject"], "s/1");
    let b = &batched.wait_requests(1, T)[0];
    assert_eq!(seqs_of(b), [1, 2, 3], "one request with a JSON array");
    assert_eq!(b.header("eventspool-seq"), Some("1-3"));
    let c = &cloud.wait_requests(1, T)[0];
    assert_eq!(
        c.header("content-type"),
        Some("application/cloudevents+json")
    );
    let ce = c.json();
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["source"], "tests");
    assert_eq!(ce["type"], "test.numbered");
    assert_eq!(ce["data"]["n"], 0);
    assert!(ce["time"].as_str().unwrap().ends_with('Z'));
    Ok(())
}

#[test]
fn event_type_filters_skip_and_count() -> TestResult {
    let (_dir, path) = temp_spool();
    let server = Server::start();
    let spool = Spool::builder(&path)
        .sink(quick("orders", &server).event_types(["order.*"]))
        .open()?;
    for (i, t) in [
        "order.created",
        "user.created",
        "order.paid",
        "user.deleted",
    ]
    .iter()
    .enumerate()
    {
        spool.emit(Event::new(*t, i))?;
    }
    spool.emit(Event::new("order.shipped", 9))?;
    assert_eq!(wait_delivered(&server, 3), [1, 3, 5]);
    wait_until(T, "the cursor passed the skipped events", || {
        sink_metrics(&spool, "orders").lag == 0
    });
    let m = sink_metrics(&spool, "orders");
    assert_eq!((m.delivered, m.filtered), (3, 2));
    Ok(())
}

#[test]
fn misconfigured_sinks_are_refused_at_open() -> TestResult {
    let (_dir, path) = temp_spool();
    for (sink, what) in [
        (WebhookSink::new("s", "not a url"), "URL"),
        (WebhookSink::new("s", "ftp://example.test/x"), "http"),
        (
            WebhookSink::new("s", "http://example.test/").batch(0),
            "batch",
        ),
        (
            WebhookSink::new("s", "http://example.test/").commit_every(0),
            "commit_every",
        ),
        (
            WebhookSink::new("s", "http://example.test/").signing_secret("whsec_%%%"),
            "whsec_",
        ),
        (
            WebhookSink::new("s", "http://example.test/").header("bad header", "v"),
            "header",
        ),
        (WebhookSink::new("", "http://example.test/"), "name"),
    ] {
        let err = Spool::builder(&path).sink(sink).open().unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
        assert!(
            err.to_string().contains(what),
            "{err} should mention {what}"
        );
    }
    let twice = Spool::builder(&path)
        .sink(WebhookSink::new("s", "http://example.test/"))
        .sink(WebhookSink::new("s", "http://example.test/"))
        .open()
        .unwrap_err();
    assert!(twice.to_string().contains("two sinks"), "{twice}");
    Ok(())
}

#[test]
fn sinks_come_from_the_operator_config() -> TestResult {
    let (_dir, path) = temp_spool();
    let server = Server::start();
    let config: eventspool::SpoolConfig = serde_json::from_value(serde_json::json!({
        "path": path,
        "sinks": [{"name": "ops", "url": server.url(), "batch": 2, "commit_every": 2, "backoff_min_ms": 5,
                   "headers": {"x-from": "config"}}]
    }))?;
    let spool = Spool::from_config(&config)?;
    spool.append_batch((0..4).map(numbered).collect())?;
    assert_eq!(wait_delivered(&server, 4), [1, 2, 3, 4]);
    assert_eq!(server.requests()[0].header("x-from"), Some("config"));
    // The receiver sees a request just before the worker counts it: wait for the count.
    wait_until(T, "the sink counted every delivery", || {
        sink_metrics(&spool, "ops").delivered == 4
    });
    let text = spool.metrics().to_prometheus();
    assert!(
        text.contains("eventspool_sink_delivered_total{sink=\"ops\"} 4"),
        "{text}"
    );
    Ok(())
}
