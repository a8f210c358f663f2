//! A full disk: the commit fails, `append` says so, nothing committed is lost, and the
//! spool goes on once there is room again.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use eventspool::{Error, Event, Spool};

const T: Duration = Duration::from_secs(20);

fn kib_event(n: u64) -> Event {
    Event::new(
        "fill",
        serde_json::json!({ "n": n, "pad": "x".repeat(1000) }),
    )
}

/// Appends until the disk is full; returns how many appends succeeded.
fn append_until_full(spool: &Spool) -> u64 {
    for n in 0..100_000 {
        match spool.append(kib_event(n)) {
            Ok(seq) => assert_eq!(seq, n + 1),
            Err(e) => {
                assert!(e.is_disk_full(), "expected a full disk, got: {e}");
                assert!(matches!(e, Error::Commit(_)), "{e}");
                return n;
            }
        }
    }
    panic!("the disk never filled up");
}

fn assert_numbers(spool: &Spool, count: u64) {
    let numbers: Vec<u64> = all_events(spool).iter().map(number_of).collect();
    assert_eq!(
        numbers,
        (0..count).collect::<Vec<_>>(),
        "every committed event, in order"
    );
}

/// Deterministic and rootless: SQLite's `max_page_count` (through `max_file_bytes`)
/// makes the file report SQLITE_FULL exactly like a full disk.
#[test]
fn file_ceiling_reports_full_keeps_everything_and_goes_on_with_room() -> TestResult {
    let (_dir, path) = temp_spool();
    let errors = Arc::new(AtomicU64::new(0));
    let spool = {
        let errors = errors.clone();
        Spool::builder(&path)
            .max_file_bytes(256 << 10)
            .on_error(move |e| {
                assert!(e.is_disk_full());
                errors.fetch_add(1, Ordering::SeqCst);
            })
            .open()?
    };
    let stored = append_until_full(&spool);
    assert!(stored > 50, "only {stored} events fit");
    assert_numbers(&spool, stored);

    // An emitted event cannot be refused: it is kept and retried, and reported.
    spool.emit(kib_event(stored))?;
    wait_until(T, "the writer retried and reported", || {
        errors.load(Ordering::SeqCst) >= 2 && spool.metrics().pending_retry == 1
    });
    assert!(matches!(
        spool.flush(Duration::from_millis(50)),
        Err(Error::Timeout { .. })
    ));
    assert_numbers(&spool, stored);
    let m = spool.metrics();
    assert!(m.commit_errors >= 3, "{m:?}");
    assert_eq!(m.rejected, 1, "the failed append was refused, not kept");
    // The spool cannot make room by itself: closing gives up the kept event, counted.
    assert!(matches!(
        spool.close(Duration::from_millis(100)),
        Err(Error::Timeout { .. })
    ));
    wait_until(T, "the kept event is counted as abandoned", || {
        spool.metrics().abandoned == 1
    });
    drop(spool);

    // More room: nothing was lost, and seq goes on without a gap.
    let spool = Spool::builder(&path).max_file_bytes(1 << 20).open()?;
    assert_numbers(&spool, stored);
    assert_eq!(spool.append(kib_event(stored))?, stored + 1);
    Ok(())
}

#[test]
fn real_full_disk_reports_full_and_resumes_when_space_is_freed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let Some(_mount) = Tmpfs::mount(dir.path(), "3m") else {
        eprintln!(
            "skipped: cannot mount a tmpfs here (needs root); the ceiling test covers the path"
        );
        return Ok(());
    };
    let filler = dir.path().join("filler");
    std::fs::write(&filler, vec![0u8; 1 << 20])?;
    let path = dir.path().join("events.db");
    let spool = Spool::open(&path)?;
    let stored = append_until_full(&spool);
    assert!(stored > 100, "only {stored} events fit");
    assert_numbers(&spool, stored);

    for n in stored..stored + 5 {
        spool.emit(kib_event(n))?;
    }
    wait_until(T, "the writer met the full disk", || {
        spool.metrics().pending_retry == 5
    });
    assert_numbers(&spool, stored);

    std::fs::remove_file(&filler)?;
    spool.flush(T)?; // the kept events commit on a retry
    assert_numbers(&spool, stored + 5);
    assert_eq!(spool.append(kib_event(stored + 5))?, stored + 6);
    spool.close(T)?;
    let spool = Spool::open(&path)?;
    assert_numbers(&spool, stored + 6);
    spool.close(T)?;
    Ok(())
}
