//! Load: 8 producer threads emit N events each into a capped spool that delivers to two
//! webhooks, both taken down and brought back (connections refused, open ones shut)
//! every flap interval. Checks, and prints:
//! - memory stays bounded: the process's peak RSS (receivers and producers included);
//! - every event is committed (the default overflow policy blocks), each receiver sees
//!   its events in seq order, re-sent only within an in-flight batch;
//! - what a receiver never got is what the caps evicted before it was delivered, and
//!   that is metered (`evicted_unsent`): nothing else is lost.
//!
//! `cargo test` runs a small load; the README's figures come from
//! `cargo test --release --test load -- --events 1000000 --flap-ms 2000`
//! (caps default to a quarter of the events and `DEFAULT_MAX_BYTES`; `--max-events` and
//! `--max-bytes` change them).

mod common;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::http::{Reply, Request, Server};
use common::{arg, wait_until};
use eventspool::{Backoff, Event, Spool, WebhookSink};
use serde::Deserialize;
use serde_json::json;

const PRODUCERS: u64 = 8;
const BATCH: usize = 100;

/// What one receiver saw, checked as it arrives (nothing per event is kept).
#[derive(Default)]
struct Seen {
    /// Highest seq received.
    high: u64,
    /// Distinct events received.
    unique: u64,
    /// Seqs jumped over (never received): must have been evicted by the caps.
    skipped: u64,
    duplicates: u64,
    violations: Vec<String>,
}

impl Seen {
    fn record(&mut self, seqs: &[u64]) {
        for pair in seqs.windows(2) {
            if pair[1] <= pair[0] {
                self.violations
                    .push(format!("out of order in one request: {pair:?}"));
            }
        }
        for &seq in seqs {
            if seq > self.high {
                self.skipped += seq - self.high - 1;
                self.unique += 1;
                self.high = seq;
            } else {
                self.duplicates += 1;
                if seq + BATCH as u64 <= self.high {
                    self.violations.push(format!(
                        "seq {seq} again after {}: older than the batch in flight",
                        self.high
                    ));
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct Seq {
    seq: u64,
}

fn receiver(seen: Arc<Mutex<Seen>>) -> Server {
    let server = Server::with_script(move |request: &Request| {
        match serde_json::from_slice::<Vec<Seq>>(&request.body) {
            Ok(events) => {
                let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
                seen.lock().unwrap().record(&seqs);
                Reply::ok()
            }
            Err(e) => {
                seen.lock()
                    .unwrap()
                    .violations
                    .push(format!("bad body: {e}"));
                Reply::status(400)
            }
        }
    });
    server.keep_requests(false);
    server
}

/// Peak resident set size of this process, from /proc (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> ExitCode {
    let per_producer: u64 = arg("--events")
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let flap = Duration::from_millis(arg("--flap-ms").and_then(|s| s.parse().ok()).unwrap_or(300));
    let total = PRODUCERS * per_producer;
    let max_events: u64 = arg("--max-events")
        .and_then(|s| s.parse().ok())
        .unwrap_or(total / 4);
    let max_bytes: u64 = arg("--max-bytes")
        .and_then(|s| s.parse().ok())
        .unwrap_or(eventspool::DEFAULT_MAX_BYTES);
    println!(
        "load: {PRODUCERS} producers x {per_producer} events, caps {max_events} events and \
         {} MiB, sinks flapping every {flap:?}",
        max_bytes >> 20
    );

    let dir = tempfile::tempdir().unwrap();
    let seen: Vec<Arc<Mutex<Seen>>> = (0..2).map(|_| Arc::default()).collect();
    let mut servers: Vec<Server> = seen.iter().map(|s| receiver(s.clone())).collect();
    let mut builder = Spool::builder(dir.path().join("events.db"))
        .max_events(max_events)
        .max_bytes(max_bytes);
    for (i, server) in servers.iter().enumerate() {
        builder = builder.sink(
            WebhookSink::new(format!("hook-{i}"), server.url())
                .batch(BATCH)
                .max_retries(None)
                .timeout(Duration::from_secs(5))
                .backoff(Backoff::exponential(
                    Duration::from_millis(10),
                    Duration::from_millis(200),
                )),
        );
    }
    let spool = builder.open().unwrap();

    // Both receivers go down and come back every `flap` until the producers are done.
    let producing = Arc::new(AtomicBool::new(true));
    let flapper = {
        let producing = producing.clone();
        thread::spawn(move || {
            let mut flaps = 0u64;
            while producing.load(Ordering::SeqCst) {
                thread::sleep(flap); // the load's pace, not a synchronisation
                let down = flaps.is_multiple_of(2); // even flaps take them down
                for server in &mut servers {
                    if down { server.down() } else { server.up() }
                }
                flaps += 1;
            }
            if !flaps.is_multiple_of(2) {
                servers.iter_mut().for_each(Server::up);
            }
            (servers, flaps)
        })
    };

    let started = Instant::now();
    let pad = "x".repeat(160);
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (spool, pad) = (spool.clone(), pad.clone());
            thread::spawn(move || {
                for n in 0..per_producer {
                    let data = json!({ "producer": p, "n": n, "pad": pad });
                    spool.emit(Event::new("load.test", data)).unwrap();
                }
            })
        })
        .collect();
    for producer in producers {
        producer.join().unwrap();
    }
    spool.flush(Duration::from_secs(120)).unwrap();
    let produced_in = started.elapsed();
    producing.store(false, Ordering::SeqCst);
    let (_servers, flaps) = flapper.join().unwrap();

    wait_until(
        Duration::from_secs(60 + total / 10_000),
        "the sinks caught up",
        || spool.metrics().sinks.iter().all(|s| s.lag == 0),
    );
    let elapsed = started.elapsed();
    let m = spool.metrics();
    let mut violations = Vec::new();
    if m.emitted != total || m.committed != total {
        violations.push(format!(
            "emitted {} committed {} of {total}",
            m.emitted, m.committed
        ));
    }
    let last_seq = spool.last_seq().unwrap();
    println!(
        "load: {total} events committed in {:.1} s ({:.0}/s), all delivered after {:.1} s; \
         {flaps} flaps; evicted by the cap {}; peak RSS {:.0} MiB",
        produced_in.as_secs_f64(),
        total as f64 / produced_in.as_secs_f64(),
        elapsed.as_secs_f64(),
        m.evicted,
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    for (sink, seen) in m.sinks.iter().zip(&seen) {
        let seen = seen.lock().unwrap();
        println!(
            "load: {}: received {} distinct, {} duplicates, {} never received (evicted_unsent {}), \
             {} failed attempts",
            sink.name,
            seen.unique,
            seen.duplicates,
            seen.skipped,
            sink.evicted_unsent,
            sink.failures_retryable
        );
        let missing = last_seq - seen.high;
        if seen.unique + seen.skipped + missing != last_seq || missing > 0 {
            violations.push(format!(
                "{}: received up to {} of {last_seq}",
                sink.name, seen.high
            ));
        }
        // The sinks retry forever, so every event a receiver got was delivered in the
        // end (an event evicted while in flight counts as delivered, not as unsent).
        if seen.skipped != sink.evicted_unsent {
            violations.push(format!(
                "{}: {} events never received, {} metered as evicted_unsent",
                sink.name, seen.skipped, sink.evicted_unsent
            ));
        }
        violations.extend(
            seen.violations
                .iter()
                .map(|v| format!("{}: {v}", sink.name)),
        );
    }
    spool.close(Duration::from_secs(30)).unwrap();
    println!("load: violations {}", violations.len());
    for v in violations.iter().take(20) {
        eprintln!("  {v}");
    }
    if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
