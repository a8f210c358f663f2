//! The README's main job: `cargo run --example quickstart`.
//!
//! Opens a spool file under a temp dir, emits events, shows them committed and queried,
//! closes and reopens the file, and shows they survived with their sequence numbers.

use std::time::Duration;

use eventspool::{Event, EventQuery, Spool};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let dir = tempfile::Builder::new()
        .prefix("eventspool-quickstart")
        .tempdir()?;
    let path = dir.path().join("events.db");
    println!("spool file: {}", path.display());

    let spool = Spool::builder(&path).max_events(1_000_000).open()?;
    println!(
        "journal_mode={} synchronous={}",
        spool.journal_mode(),
        spool.synchronous()
    );

    // emit: validated and encoded here, committed by the writer thread; returns at once.
    for i in 0..10_000u64 {
        let kind = if i % 10 == 0 {
            "order.paid"
        } else {
            "order.created"
        };
        spool.emit(Event::new(kind, json!({ "order": i })).subject(format!("order/{i}")))?;
    }
    // append: returns once the event is committed, with its sequence number.
    let seq = spool.append(Event::new(
        "audit.checkpoint",
        json!({ "note": "10k emitted" }),
    ))?;
    spool.flush(Duration::from_secs(5))?;
    let m = spool.metrics();
    println!(
        "emitted {} committed {} in {} batches (mean {:.0} per transaction); checkpoint event seq {seq}",
        m.emitted, m.committed, m.batches, m.mean_batch_size
    );

    let paid = spool.query(&EventQuery::new().event_types(["order.paid"]).limit(3))?;
    for e in &paid {
        println!(
            "  seq {:>5} {} {} {}",
            e.seq,
            e.event_type,
            e.subject.as_deref().unwrap_or(""),
            e.data
        );
    }

    spool.close(Duration::from_secs(5))?;
    println!("closed; reopening {}", path.display());

    let spool = Spool::open(&path)?;
    println!(
        "after restart: {} events stored, last seq {}; next append gets seq {}",
        spool.len()?,
        spool.last_seq()?,
        spool.append(Event::new("audit.restart", json!({})))?
    );
    print!(
        "{}",
        spool
            .metrics()
            .to_prometheus()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .take(3)
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    spool.close(Duration::from_secs(5))?;
    Ok(())
}
