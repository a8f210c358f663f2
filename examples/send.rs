//! Sends a few events to a webhook through a spool, and says what became of them: the
//! other half of `cargo run --example receiver`.
//!
//! ```sh
//! cargo run --example send -- --url http://127.0.0.1:8080/webhook --secret whsec_<base64>
//! ```
//! Options: `--count N` (default 10), `--secret` (unsigned without it).

use std::time::Duration;

use eventspool::{Event, Spool, WebhookSink};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        let at = args.iter().position(|a| a == name)?;
        args.get(at + 1).cloned()
    };
    let url = value("--url").unwrap_or_else(|| "http://127.0.0.1:8080/webhook".into());
    let count: u64 = value("--count").map_or(Ok(10), |n| n.parse())?;
    let mut sink = WebhookSink::new("send", url.clone()).max_retries(Some(3));
    if let Some(secret) = value("--secret") {
        sink = sink.signing_secret(&secret);
    }
    let dir = tempfile::tempdir()?;
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(sink)
        .open()?;
    for n in 0..count {
        let event = Event::new("example.sent", json!({ "n": n }));
        spool.emit(event.subject(format!("example/{n}")))?;
    }
    let report = spool.close(Duration::from_secs(10))?;
    let m = spool.metrics();
    let sent = &m.sinks[0];
    println!(
        "{count} events to {url}: {} delivered, {} dead-lettered{}",
        sent.delivered,
        sent.dead_lettered,
        sent.last_error
            .as_deref()
            .map_or(String::new(), |e| format!(" (last error: {e})"))
    );
    for behind in &report.undelivered {
        println!("{} events left undelivered at close", behind.events);
    }
    Ok(())
}
