//! A destination of your own: a `Sink` that appends events to a JSON-lines file, in
//! batches, synced to disk before it acknowledges them.
//!
//! ```sh
//! cargo run --example custom_sink                 # writes under the temp dir
//! cargo run --example custom_sink -- /tmp/audit.jsonl
//! ```
//!
//! The spool hands the sink its events in `seq` order on a thread of its own. `Ok`
//! acknowledges the whole batch (the sink's cursor moves past it, durably); an error
//! acknowledges none, and the batch comes again after a backoff. So a crash between
//! the write and the acknowledgement can repeat a batch: the lines carry each event's
//! id, for whoever reads the file to skip what it has seen. (A sink that knows which
//! event failed says so with `DeliveryError::with_delivered(n)`: the first `n` are
//! acknowledged, and a permanent failure dead-letters that one event alone.)

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use eventspool::{DeliveryError, Event, Sink, Spool, StoredEvent};
use serde_json::json;

struct JsonLines {
    path: PathBuf,
    file: Option<File>,
}

impl JsonLines {
    fn append(&mut self, events: &[StoredEvent]) -> std::io::Result<()> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.file = Some(file);
        }
        let file = self.file.as_mut().expect("opened above");
        let mut out = BufWriter::new(&mut *file);
        for e in events {
            serde_json::to_writer(&mut out, e)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        drop(out);
        file.sync_data()
    }
}

impl Sink for JsonLines {
    fn name(&self) -> &str {
        "audit-file"
    }

    fn deliver(&mut self, events: &[StoredEvent]) -> Result<(), DeliveryError> {
        self.append(events).map_err(|e| {
            // A full disk or a vanished directory may be fixed by someone: retry, and
            // reopen the file then.
            self.file = None;
            DeliveryError::retryable(format!("cannot write {}: {e}", self.path.display()))
        })
    }

    /// One `fsync` per 500 events, not per event.
    fn batch_size(&self) -> usize {
        500
    }

    /// Keep trying: an audit log must not skip events.
    fn max_retries(&self) -> Option<u32> {
        None
    }

    fn accepts(&self, event_type: &str) -> bool {
        event_type.starts_with("audit.")
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    // The lines go where you say (the first argument), else to ./audit.jsonl, which
    // stays after the example ends; the spool itself lives in a temporary directory.
    let target = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("audit.jsonl"), PathBuf::from);
    let _ = std::fs::remove_file(&target); // a new spool: the file starts over too
    let spool = Spool::builder(dir.path().join("events.db"))
        .sink(JsonLines {
            path: target.clone(),
            file: None,
        })
        .open()?;

    for i in 0..2_000 {
        let kind = if i % 2 == 0 {
            "audit.login"
        } else {
            "metrics.tick"
        };
        spool.emit(Event::new(kind, json!({ "n": i })))?;
    }
    // `close` gives the sink until the timeout to catch up.
    spool.close(Duration::from_secs(10))?;

    let m = spool.metrics();
    let sink = &m.sinks[0];
    let lines = std::fs::read_to_string(&target)?.lines().count();
    println!(
        "{} events committed; sink {}: {} delivered, {} filtered (not audit.*), {} in {}",
        m.committed,
        sink.name,
        sink.delivered,
        sink.filtered,
        lines,
        target.display()
    );
    Ok(())
}
