//! The webhook receivers of the examples: the one the quickstart and the bench run
//! (`examples/support/receiver.rs`) and the standalone one users copy
//! (`examples/receiver.rs`). Each serves several sinks at once and refuses requests
//! whose signature does not verify.

#![allow(clippy::duplicate_mod)] // the receiver brings its own copy of common/http.rs

mod common;
#[path = "../examples/support/receiver.rs"]
mod receiver;
#[allow(dead_code)] // its `main`
#[path = "../examples/receiver.rs"]
mod standalone;

use std::time::Duration;

use common::{TestResult, numbered, temp_spool, wait_until};
use eventspool::{Backoff, SigningSecret, Spool, WebhookSink};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Eight sinks connect at once and keep their connections open. No request may wait
/// for a connection to be let go (on tiny_http, which it ran on before, some waited
/// until the sink's timeout ended them: a failed attempt each).
#[test]
fn several_sinks_at_once_are_answered_without_waiting_for_each_other() -> TestResult {
    let (_dir, path) = temp_spool();
    let receiver = receiver::Receiver::start("127.0.0.1:0", None, false).expect("receiver");
    let mut builder = Spool::builder(&path);
    for i in 0..8 {
        builder = builder.sink(
            WebhookSink::new(format!("hook-{i}"), receiver.url())
                .timeout(Duration::from_secs(5))
                .max_retries(None),
        );
    }
    let spool = builder.open()?;
    for n in 0..500 {
        spool.emit(numbered(n))?;
    }
    // The receiver counts an event before the sink has its answer: wait for both.
    wait_until(Duration::from_secs(120), "every sink delivered", || {
        receiver.events() == 8 * 500 && spool.metrics().sinks.iter().all(|s| s.delivered == 500)
    });
    for sink in spool.metrics().sinks {
        assert_eq!(sink.delivered, 500, "{}", sink.name);
        assert_eq!(sink.attempts, 500, "{}: no attempt failed", sink.name);
    }
    spool.close(Duration::from_secs(10))?;
    Ok(())
}

#[test]
fn a_request_signed_with_another_secret_is_refused() -> TestResult {
    let (_dir, path) = temp_spool();
    let secret = SigningSecret::parse(SECRET)?;
    let receiver = receiver::Receiver::start("127.0.0.1:0", Some(secret), false).expect("receiver");
    let sink = |name: &str, secret: &str| {
        WebhookSink::new(name, receiver.url())
            .signing_secret(secret)
            .max_retries(Some(0))
            .backoff(Backoff::exponential(
                Duration::from_millis(1),
                Duration::from_millis(1),
            ))
    };
    let spool = Spool::builder(&path)
        .sink(sink("right", SECRET))
        .sink(sink("wrong", "whsec_c2VjcmV0LW5vdC10aGUtcmlnaHQtb25l"))
        .open()?;
    spool.emit(numbered(1))?;
    wait_until(Duration::from_secs(30), "a dead letter", || {
        spool.dead_letters("wrong", 10).is_ok_and(|d| !d.is_empty())
    });
    wait_until(Duration::from_secs(30), "a delivery", || {
        spool.metrics().sinks[0].delivered == 1
    });
    let log = receiver.log.lock().unwrap();
    assert_eq!((log.events, log.bad_signatures), (1, 1));
    drop(log);
    let wrong = spool.dead_letters("wrong", 10)?;
    assert_eq!(wrong.len(), 1);
    assert_eq!(wrong[0].last_status, Some(401));
    assert!(spool.dead_letters("right", 10)?.is_empty());
    spool.close(Duration::from_secs(10))?;
    Ok(())
}

/// The standalone receiver example: four signed sinks at once get everything through,
/// a sink with another secret is refused (401) and dead-letters.
#[test]
fn the_standalone_receiver_verifies_and_serves_sinks_at_once() -> TestResult {
    let (_dir, path) = temp_spool();
    let secret = SigningSecret::generate()?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/webhook", listener.local_addr()?);
    let verifier = eventspool::Verifier::new(secret.clone());
    std::thread::spawn(move || standalone::serve(listener, verifier, false));
    let mut builder = Spool::builder(&path);
    for i in 0..4 {
        builder = builder.sink(
            WebhookSink::new(format!("signed-{i}"), &url)
                .signing_secret(&secret.to_whsec())
                .max_retries(None),
        );
    }
    let stranger = SigningSecret::generate()?.to_whsec();
    let spool = builder
        .sink(
            WebhookSink::new("stranger", &url)
                .signing_secret(&stranger)
                .backoff(Backoff::exponential(
                    Duration::from_millis(1),
                    Duration::from_millis(5),
                )),
        )
        .open()?;
    spool.append_batch((0..200).map(numbered).collect())?;
    wait_until(
        Duration::from_secs(60),
        "every signed sink delivered",
        || {
            let m = spool.metrics();
            m.sinks[..4].iter().all(|s| s.delivered == 200) && m.dead_letters == 200
        },
    );
    let dead = spool.dead_letters("stranger", 1)?;
    assert_eq!(dead[0].last_status, Some(401));
    Ok(())
}
