//! Webhook behaviour a receiver or an operator sees: how long retries wait, what the
//! library writes about a URL, what it says when TLS meets plain HTTP.

mod common;

use std::time::Duration;

use common::delivery::{T, quick, sink_metrics};
use common::http::{Reply, Server};
use common::*;
use eventspool::{Backoff, Spool, SpoolConfig, WebhookSink};

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
