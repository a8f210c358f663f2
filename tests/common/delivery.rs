//! What the webhook tests share: quick sinks and waits on what a receiver acknowledged.

use std::time::Duration;

use eventspool::{Backoff, Spool, WebhookSink};

use super::http::{Reply, Request, Server};
use super::wait_until;

/// Generous: a deadline only matters when something is wrong, and CI machines are busy.
pub const T: Duration = Duration::from_secs(120);

/// Short backoff so retries happen within a test.
pub fn quick(name: &str, server: &Server) -> WebhookSink {
    quick_at(name, server.url())
}

pub fn quick_at(name: &str, url: String) -> WebhookSink {
    WebhookSink::new(name, url)
        .backoff(Backoff::exponential(
            Duration::from_millis(5),
            Duration::from_millis(100),
        ))
        .timeout(Duration::from_secs(5))
}

/// The seqs a request carried (an object, or an array for batches).
pub fn seqs_of(request: &Request) -> Vec<u64> {
    match request.json() {
        serde_json::Value::Array(items) => {
            items.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
        }
        event => vec![event["seq"].as_u64().unwrap()],
    }
}

/// Every seq acknowledged with a 2xx, in the order the receiver got them.
pub fn delivered(server: &Server) -> Vec<u64> {
    acknowledged(&server.requests())
}

pub fn acknowledged(requests: &[Request]) -> Vec<u64> {
    requests
        .iter()
        .filter(|r| matches!(r.reply, Reply::Status(200..=299, _)))
        .flat_map(seqs_of)
        .collect()
}

/// Waits for `n` acknowledged events, reading only the requests that are new at each
/// look (10 000 requests read whole every 200 µs starved the spool under test).
pub fn wait_delivered(server: &Server, n: usize) -> Vec<u64> {
    let (mut seen, mut got) = (0, Vec::new());
    wait_until(T, &format!("{n} events delivered"), || {
        let new = server.requests_after(seen);
        seen += new.len();
        got.extend(acknowledged(&new));
        got.len() >= n
    });
    got
}

pub fn sink_metrics(spool: &Spool, name: &str) -> eventspool::SinkMetrics {
    spool
        .metrics()
        .sinks
        .into_iter()
        .find(|s| s.name == name)
        .expect("sink")
}
