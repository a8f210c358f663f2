//! The README's main job: `cargo run --example quickstart`.
//!
//! A spool file under a temp dir delivers to a local webhook receiver that verifies
//! signatures. Events are emitted with a live progress line; the receiver goes down for
//! a few seconds (events pile up in the spool), comes back, and gets every event, in
//! order. Then the spool is closed and reopened to show the file kept its place.

#[path = "support/receiver.rs"]
mod support;

use std::time::{Duration, Instant};

use eventspool::{Backoff, Event, EventQuery, SigningSecret, Spool, WebhookSink};
use serde_json::json;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const EVENTS: u64 = 20_000;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("error")).init();
    let dir = tempfile::Builder::new()
        .prefix("eventspool-quickstart")
        .tempdir()?;
    let path = dir.path().join("events.db");

    let secret = || SigningSecret::parse(SECRET).map(Some);
    let receiver = support::Receiver::start("127.0.0.1:0", secret()?, false)?;
    let (addr, log) = (receiver.addr, receiver.log.clone());
    let sink = || {
        WebhookSink::new("receiver", format!("http://{addr}/webhook"))
            .signing_secret(SECRET)
            .timeout(Duration::from_secs(1))
            .batch(50)
            .max_retries(None)
            .backoff(Backoff::exponential(
                Duration::from_millis(50),
                Duration::from_millis(500),
            ))
    };
    let spool = Spool::builder(&path)
        .max_events(1_000_000)
        .sink(sink())
        .open()?;
    println!(
        "spool file {} delivering to {}",
        path.display(),
        receiver.url()
    );

    // A live line on a terminal; a line every half second otherwise.
    let live = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let last_line = std::cell::Cell::new(Instant::now() - Duration::from_secs(1));
    let progress = |spool: &Spool, note: &str| {
        if !live && last_line.get().elapsed() < Duration::from_millis(500) {
            return;
        }
        last_line.set(Instant::now());
        let m = spool.metrics();
        let s = &m.sinks[0];
        let line = format!(
            "  emitted {:>6}  committed {:>6}  delivered {:>6}  lag {:>6}  retries {:>3}  {note:<28}",
            m.emitted, m.committed, s.delivered, s.lag, s.retries
        );
        if live {
            print!("\r{line}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        } else {
            println!("{line}");
        }
    };

    let started = Instant::now();
    let mut receiver = Some(receiver);
    for i in 0..EVENTS {
        let kind = if i % 10 == 0 {
            "order.paid"
        } else {
            "order.created"
        };
        spool.emit(Event::new(kind, json!({ "order": i })).subject(format!("order/{i}")))?;
        if i == EVENTS / 4
            && let Some(up) = receiver.take()
        {
            up.stop(); // the receiver goes down
        }
        if i % 200 == 0 {
            let note = if receiver.is_some() {
                "receiver up"
            } else {
                "receiver DOWN, spooling"
            };
            progress(&spool, note);
            std::thread::sleep(Duration::from_millis(15)); // a steady stream, ~3 s in all
        }
    }
    spool.flush(Duration::from_secs(5))?;
    while started.elapsed() < Duration::from_secs(4) {
        progress(&spool, "receiver DOWN, spooling");
        std::thread::sleep(Duration::from_millis(100));
    }
    let receiver = support::Receiver::start_with_log(&addr.to_string(), secret()?, false, log)?;
    while spool.metrics().sinks[0].lag > 0 {
        progress(&spool, "receiver back, catching up");
        std::thread::sleep(Duration::from_millis(50));
    }
    progress(&spool, "caught up");
    println!();

    let log = receiver.log.lock().unwrap();
    let mut next = 1;
    for d in &log.deliveries {
        // At least once: a batch may repeat after a failure, never out of order.
        assert!(
            d.first <= next && d.last >= next - 1,
            "out of order at seq {}",
            d.first
        );
        next = next.max(d.last + 1);
    }
    println!(
        "receiver got seq 1..={} in order ({} requests, {} bad signatures) in {:.1} s",
        next - 1,
        log.deliveries.len(),
        log.bad_signatures,
        started.elapsed().as_secs_f64()
    );
    drop(log);
    // Delivered events are deleted once the writer is idle (not while a sink catches up).
    let idle = Instant::now();
    while spool.metrics().stored_events > 0 && idle.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let m = spool.metrics();
    println!(
        "spool: committed {} in {} transactions (mean {:.0}); stored {} events {:.0} ms after the last delivery (delivered ones are deleted when the writer is idle)",
        m.committed,
        m.batches,
        m.mean_batch_size,
        m.stored_events,
        idle.elapsed().as_secs_f64() * 1000.0
    );
    for line in m
        .to_prometheus()
        .lines()
        .filter(|l| l.starts_with("eventspool_sink_"))
    {
        println!("  {line}");
    }

    spool.close(Duration::from_secs(5))?;
    let spool = Spool::open(&path)?;
    let seq = spool.append(Event::new("audit.restart", json!({})))?;
    println!(
        "reopened: last seq was {}, the next append got seq {seq}; query finds it: {}",
        seq - 1,
        spool
            .query(&EventQuery::new().event_types(["audit.*"]))?
            .len()
    );
    spool.close(Duration::from_secs(5))?;
    receiver.stop();
    Ok(())
}
