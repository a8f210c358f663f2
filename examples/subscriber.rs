//! A producer thread and a consumer that survives being restarted: it resumes from its
//! last acknowledgement.
//!
//! ```sh
//! cargo run --example subscriber            # run it twice: the second run resumes
//! cargo run --example subscriber -- /tmp/my.db
//! ```

use std::time::Duration;

use eventspool::{Event, SeekPosition, Spool};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("eventspool-subscriber.db"));
    let spool = Spool::open(&path)?;
    println!("spool {} (last seq {})", path.display(), spool.last_seq()?);

    let producer = {
        let spool = spool.clone();
        std::thread::spawn(move || -> eventspool::Result<()> {
            for i in 0..1_000 {
                spool.emit(Event::new("invoice.created", json!({ "invoice": i })))?;
            }
            Ok(())
        })
    };

    // The consumer handles events in order and acks every 100: after a crash or a
    // restart it resumes after the last ack (at least once).
    let mut sub = spool.subscribe("billing", SeekPosition::LastAcknowledged)?;
    println!("consumer billing resumes after seq {}", sub.position());
    let mut handled = 0;
    while let Some(event) = sub.next_timeout(Duration::from_millis(500))? {
        handled += 1;
        if handled % 100 == 0 {
            sub.ack(event.seq)?;
            println!("  handled {handled}, acknowledged up to seq {}", event.seq);
        }
    }
    producer.join().expect("producer thread")?;
    println!("caught up after {handled} events; consumers:");
    for c in spool.consumers()? {
        println!(
            "  {} ({}) position {} lag {}",
            c.name, c.kind, c.position, c.lag
        );
    }
    spool.close(Duration::from_secs(5))?;
    Ok(())
}
