//! Dead letters: kept within a cap of their own (oldest evicted first, counted),
//! metered, listed, requeued and purged.

mod common;

use std::time::Duration;

use common::sinks::Refuses;
use common::*;
use eventspool::{Event, Spool};
use serde_json::json;

const T: Duration = Duration::from_secs(60);

fn kilobyte(n: u64) -> Event {
    Event::new("test.kb", json!({ "n": n, "pad": "x".repeat(1000) }))
}

fn file_bytes(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[test]
fn dead_letters_stay_within_their_cap_and_the_oldest_go_first() -> TestResult {
    let (_dir, path) = temp_spool();
    let cap = 64 << 10;
    let spool = Spool::builder(&path)
        .max_bytes(cap)
        .sink(Refuses("refuses"))
        .open()?;
    let n = 4000;
    // 50 KB at a time, each given up on before the next: none is evicted unsent.
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        spool.append_batch(chunk.iter().map(|&i| kilobyte(i)).collect())?;
        let last = chunk[chunk.len() - 1] + 1;
        wait_until(T, "every event so far was given up on", || {
            let m = spool.metrics();
            m.dead_letters + m.dead_letters_evicted == last
        });
    }
    assert_eq!(spool.metrics().sinks[0].evicted_unsent, 0);
    let m = spool.metrics();
    assert!(m.dead_letter_bytes <= cap, "{m:?}");
    assert!(m.dead_letters > 0 && m.dead_letters < 100, "{m:?}");
    assert_eq!(m.dead_letters + m.dead_letters_evicted, n, "{m:?}");
    let kept = spool.dead_letters("refuses", usize::MAX)?;
    assert_eq!(kept.len() as u64, m.dead_letters);
    let seqs: Vec<u64> = kept.iter().map(|d| d.event.seq).collect();
    let newest: Vec<u64> = (n - m.dead_letters + 1..=n).collect();
    assert_eq!(seqs, newest, "the oldest were evicted first");
    assert!(
        m.to_prometheus()
            .contains("eventspool_dead_letters_evicted_total")
    );
    spool.close(T)?;
    drop(spool);
    // Without the cap the dead letters alone would take 4 MB.
    assert!(file_bytes(&path) < 1 << 20, "{} bytes", file_bytes(&path));

    // The totals are kept in the file: a reopened spool reports the same.
    let spool = Spool::builder(&path).max_bytes(cap).open()?;
    let again = spool.metrics();
    assert_eq!(
        (again.dead_letters, again.dead_letter_bytes),
        (m.dead_letters, m.dead_letter_bytes)
    );
    Ok(())
}

#[test]
fn a_cap_of_their_own_can_be_set() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::builder(&path)
        .max_dead_letter_bytes(8 << 10)
        .sink(Refuses("refuses"))
        .open()?;
    spool.append_batch((0..50).map(kilobyte).collect())?;
    wait_until(T, "every event was given up on", || {
        let m = spool.metrics();
        m.dead_letters + m.dead_letters_evicted == 50
    });
    let m = spool.metrics();
    assert!(
        m.dead_letter_bytes <= 8 << 10 && m.dead_letters >= 1,
        "{m:?}"
    );
    assert_eq!(m.dead_letters + m.dead_letters_evicted, 50);
    Ok(())
}

#[test]
fn dead_letters_can_be_purged_all_or_by_age() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::builder(&path).sink(Refuses("refuses")).open()?;
    spool.append_batch((0..10).map(numbered).collect())?;
    wait_until(T, "every event was given up on", || {
        spool.metrics().dead_letters == 10
    });
    assert_eq!(
        spool.purge_dead_letters_older_than("refuses", Duration::from_secs(3600))?,
        0
    );
    assert_eq!(
        spool.purge_dead_letters_older_than("refuses", Duration::MAX)?,
        0
    );
    assert_eq!(spool.purge_dead_letters("someone-else")?, 0);
    assert_eq!(spool.dead_letters("refuses", 100)?.len(), 10);
    assert_eq!(
        spool.purge_dead_letters_older_than("refuses", Duration::ZERO)?,
        10
    );
    assert!(spool.dead_letters("refuses", 100)?.is_empty());
    let m = spool.metrics();
    assert_eq!((m.dead_letters, m.dead_letter_bytes), (0, 0));

    spool.append_batch((10..15).map(numbered).collect())?;
    wait_until(T, "the new ones were given up on", || {
        spool.metrics().dead_letters == 5
    });
    assert_eq!(spool.purge_dead_letters("refuses")?, 5);
    assert_eq!(spool.metrics().dead_letters, 0);
    assert_eq!(
        spool.requeue_dead_letters("refuses")?,
        0,
        "nothing left to requeue"
    );
    Ok(())
}

/// A file from schema 1 (no sizes, no totals) is migrated at open: its dead letters are
/// counted, sized, and kept within the cap from then on.
#[test]
fn dead_letters_of_a_schema_1_file_are_counted_at_open() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::builder(&path).sink(Refuses("refuses")).open()?;
    spool.append_batch((0..3).map(kilobyte).collect())?;
    wait_until(T, "every event was given up on", || {
        spool.metrics().dead_letters == 3
    });
    let bytes = spool.metrics().dead_letter_bytes;
    spool.close(T)?;
    drop(spool);
    rusqlite::Connection::open(&path)?.execute_batch(
        "ALTER TABLE dead_letters DROP COLUMN size;
         ALTER TABLE state DROP COLUMN dead_count;
         ALTER TABLE state DROP COLUMN dead_bytes;
         PRAGMA user_version = 1;",
    )?;
    let spool = Spool::builder(&path).max_dead_letter_bytes(2500).open()?;
    let m = spool.metrics();
    assert_eq!((m.dead_letters, m.dead_letter_bytes), (3, bytes));
    assert_eq!(spool.dead_letters("refuses", 10)?.len(), 3);
    assert_eq!(spool.purge_dead_letters("refuses")?, 3);
    assert_eq!(spool.metrics().dead_letter_bytes, 0);
    Ok(())
}

/// Delivers batches of 10, recording every event it is handed; refuses for good the
/// event whose data has `poison`, and once the one with `flaky`, naming each by its
/// place in the batch (`with_delivered`): the events before it were delivered.
struct Partial {
    seen: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    flaked: bool,
}

impl eventspool::Sink for Partial {
    fn name(&self) -> &str {
        "partial"
    }

    fn batch_size(&self) -> usize {
        10
    }

    fn backoff(&self) -> eventspool::Backoff {
        eventspool::Backoff::exponential(Duration::from_millis(1), Duration::from_millis(5))
    }

    fn accepts(&self, event_type: &str) -> bool {
        event_type != "test.skipped"
    }

    fn deliver(
        &mut self,
        events: &[eventspool::StoredEvent],
    ) -> Result<(), eventspool::DeliveryError> {
        for (i, event) in events.iter().enumerate() {
            self.seen.lock().unwrap().push(event.seq);
            let data = event.data.get();
            if data.contains("poison") {
                return Err(eventspool::DeliveryError::permanent("poisoned").with_delivered(i));
            }
            if data.contains("flaky") && !self.flaked {
                self.flaked = true;
                return Err(eventspool::DeliveryError::retryable("flaky").with_delivered(i));
            }
        }
        Ok(())
    }
}

#[test]
fn a_sink_that_names_the_failing_event_has_the_ones_before_it_acknowledged_and_only_it_dead()
-> TestResult {
    let (_dir, path) = temp_spool();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let spool = Spool::builder(&path)
        .sink(Partial {
            seen: seen.clone(),
            flaked: false,
        })
        .open()?;
    let events = (0..20u64)
        .map(|n| match n {
            5 => Event::new("test.n", json!({ "n": n, "poison": true })),
            8 => Event::new("test.skipped", json!({ "n": n })),
            12 => Event::new("test.n", json!({ "n": n, "flaky": true })),
            _ => Event::new("test.n", json!({ "n": n })),
        })
        .collect();
    let seqs = spool.append_batch(events)?;
    wait_until(T, "all handled", || {
        let sink = &spool.metrics().sinks[0];
        sink.lag == 0 && sink.dead_lettered == 1
    });
    let sink = spool.metrics().sinks[0].clone();
    assert_eq!(sink.delivered, 18, "{sink:?}");
    assert_eq!(sink.filtered, 1, "{sink:?}");
    let dead = spool.dead_letters("partial", 100)?;
    let dead: Vec<u64> = dead.iter().map(|d| d.event.seq).collect();
    assert_eq!(dead, vec![seqs[5]], "only the poisoned event is dead");
    let seen = seen.lock().unwrap().clone();
    for (n, seq) in seqs.iter().enumerate() {
        let times = seen.iter().filter(|s| *s == seq).count();
        let want = match n {
            8 => 0,
            12 => 2,
            _ => 1,
        };
        assert_eq!(times, want, "event {n} handed to the sink: {seen:?}");
    }
    spool.close(T)?;
    drop(spool);
    let spool = Spool::open(&path)?;
    let cursor = spool
        .consumers()?
        .into_iter()
        .find(|c| c.name == "partial")
        .map(|c| c.position);
    assert_eq!(cursor, Some(seqs[19]), "everything acknowledged or dead");
    Ok(())
}

#[test]
fn the_dead_lettered_count_never_runs_ahead_of_the_dead_letters() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::builder(&path).sink(Refuses("refuses")).open()?;
    for n in 1..=300u64 {
        spool.append(kilobyte(n))?;
        // Spin on the count alone (a deadline, no sleep), then read the rows at once.
        let deadline = std::time::Instant::now() + T;
        while spool.metrics().sinks[0].dead_lettered < n {
            assert!(
                std::time::Instant::now() < deadline,
                "event {n} given up on"
            );
            std::hint::spin_loop();
        }
        let rows = spool.dead_letters("refuses", usize::MAX)?.len() as u64;
        assert!(rows >= n, "the count said {n}, the rows {rows}");
    }
    spool.close(T)?;
    Ok(())
}
