//! Looking into a spool from outside: `Inspector` reads beside a running owner without
//! holding it up, `check` finds each damage the other tests know how to make, and
//! `repair` mends it, keeping every undamaged event and moving the damaged ones to the
//! dead letters of whoever had not passed them.

mod common;

use std::time::Duration;

use common::*;
use eventspool::{Error, EventQuery, Inspector, Problem, SeekPosition, Spool, repair};

const T: Duration = Duration::from_secs(10);

/// A spool of 10 events with two consumer groups: `early` acked up to 3, `late` none.
fn spool_with_consumers(path: &std::path::Path) -> TestResult {
    let spool = Spool::open(path)?;
    spool.seek("early", SeekPosition::LastAcknowledged)?;
    spool.seek("late", SeekPosition::LastAcknowledged)?;
    spool.append_batch((0..10).map(numbered).collect())?;
    spool.ack("early", 3)?;
    spool.close(T)?;
    Ok(())
}

fn damage(path: &std::path::Path, sql: &str) -> TestResult {
    rusqlite::Connection::open(path)?.execute_batch(sql)?;
    Ok(())
}

#[test]
fn reads_beside_a_running_spool_without_holding_its_writer() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::open(&path)?;
    spool.seek("billing", SeekPosition::LastAcknowledged)?;
    spool.append_batch((0..100).map(numbered).collect())?;
    let inspector = Inspector::open(&path)?;
    let stat = inspector.stat()?;
    assert_eq!(
        (stat.events, stat.first_seq, stat.last_seq),
        (100, Some(1), 100)
    );
    assert_eq!(stat.durability.as_deref(), Some("normal"));
    assert_eq!(stat.opened_by_pid, Some(std::process::id()));
    assert_eq!(stat.consumers[0].name, "billing");
    assert_eq!(stat.consumers[0].lag, 100);
    // The owner goes on writing while the inspector reads, and it sees the new commits.
    let page = inspector.query(&EventQuery::new().limit(10))?;
    for n in 100..200 {
        spool.append(numbered(n))?;
    }
    assert_eq!(page.len(), 10);
    assert_eq!(inspector.stat()?.last_seq, 200);
    assert!(inspector.check()?.is_healthy());
    spool.close(T)?;
    assert_eq!(
        inspector.stat()?.events,
        200,
        "and it reads on after the owner closed"
    );
    Ok(())
}

#[test]
fn what_is_not_a_spool_is_refused_clearly() -> TestResult {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("missing.db");
    let err = Inspector::open(&missing).unwrap_err();
    assert!(err.to_string().contains("no spool file at"), "{err}");
    assert!(!missing.exists(), "nothing was created");
    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![7u8; 4096])?;
    assert!(matches!(
        Inspector::open(&garbage),
        Err(Error::NotASpool(_))
    ));
    assert!(matches!(repair(&garbage), Err(Error::NotASpool(_))));
    assert_eq!(std::fs::read(&garbage)?, vec![7u8; 4096], "left as it was");
    Ok(())
}

#[test]
fn check_finds_damaged_rows_bad_totals_and_cursors_ahead() -> TestResult {
    let (_dir, path) = temp_spool();
    spool_with_consumers(&path)?;
    assert!(Inspector::open(&path)?.check()?.is_healthy());
    damage(
        &path,
        "UPDATE events SET data = '{\"n\": 1, broken' WHERE seq = 2;
         UPDATE events SET data = x'ff00fe' WHERE seq = 5;
         UPDATE state SET stored_bytes = stored_bytes + 7;
         INSERT INTO consumers (name, kind, acked) VALUES ('ahead', 'subscriber', 99);",
    )?;
    let report = Inspector::open(&path)?.check()?;
    assert!(!report.is_healthy());
    let damaged: Vec<u64> = report
        .problems
        .iter()
        .filter_map(|p| match p {
            Problem::DamagedEvent { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(damaged, [2, 5]);
    assert!(report.problems.iter().any(|p| matches!(p,
        Problem::Counter { name, recorded, counted } if name == "stored_bytes" && *recorded == counted + 7)));
    assert!(report.problems.iter().any(|p| matches!(p,
        Problem::CursorAhead { consumer, position: 99, last_seq: 10 } if consumer == "ahead")));
    assert_eq!(report.events_checked, 10);
    Ok(())
}

#[test]
fn repair_moves_damaged_rows_to_whoever_had_not_passed_them_and_keeps_the_rest() -> TestResult {
    let (_dir, path) = temp_spool();
    spool_with_consumers(&path)?;
    damage(
        &path,
        "UPDATE events SET data = 'not json' WHERE seq = 2;
         UPDATE events SET data = x'ff00fe' WHERE seq = 5;
         UPDATE state SET dead_count = 40;
         INSERT INTO consumers (name, kind, acked) VALUES ('ahead', 'subscriber', 99);",
    )?;
    let report = repair(&path)?;
    assert!(report.after.is_healthy(), "{:?}", report.after.problems);
    let moved: Vec<(u64, Vec<String>)> =
        report.moved.iter().map(|m| (m.seq, m.to.clone())).collect();
    // `early` had acked 3: seq 2 goes to `late` only; seq 5 to both (and `ahead` was
    // past both).
    assert_eq!(
        moved,
        [
            (2, vec!["late".into()]),
            (5, vec!["early".into(), "late".into()])
        ]
    );
    assert_eq!(report.counters_fixed.len(), 1);
    assert_eq!(report.cursors_moved.len(), 1);

    let spool = Spool::open(&path)?;
    let numbers: Vec<u64> = all_events(&spool).iter().map(number_of).collect();
    assert_eq!(
        numbers,
        [0, 2, 3, 5, 6, 7, 8, 9],
        "every undamaged event is there"
    );
    let late = spool.dead_letters("late", 10)?;
    assert_eq!(late.iter().map(|d| d.event.seq).collect::<Vec<_>>(), [2, 5]);
    assert!(
        late[0].last_error.contains("damaged in the file"),
        "{}",
        late[0].last_error
    );
    assert_eq!(spool.dead_letters("early", 10)?.len(), 1);
    // The consumers read on past the holes.
    let mut late_reader = spool.subscribe("late", SeekPosition::LastAcknowledged)?;
    let mut read = Vec::new();
    while let Some(event) = late_reader.next_timeout(Duration::from_millis(50))? {
        read.push(event.seq);
    }
    assert_eq!(read, [1, 3, 4, 6, 7, 8, 9, 10]);
    spool.close(T)?;
    assert!(Inspector::open(&path)?.check()?.is_healthy());
    Ok(())
}

#[test]
fn repair_refuses_a_spool_another_owner_holds_and_changes_nothing() -> TestResult {
    let (_dir, path) = temp_spool();
    spool_with_consumers(&path)?;
    damage(&path, "UPDATE events SET data = 'not json' WHERE seq = 2;")?;
    let spool = Spool::open(&path)?;
    let err = repair(&path).unwrap_err();
    assert!(matches!(err, Error::Locked(_)), "{err}");
    assert!(
        err.to_string().contains(".lock"),
        "names the lock file: {err}"
    );
    spool.close(T)?;
    assert!(
        !Inspector::open(&path)?.check()?.is_healthy(),
        "still damaged"
    );
    Ok(())
}

#[test]
fn check_finds_commits_lost_with_the_wal_and_repair_goes_on_past_them() -> TestResult {
    let (_dir, path) = crash_with_commits_in_the_wal(
        "check_finds_commits_lost_with_the_wal_and_repair_goes_on_past_them",
    );
    std::fs::remove_file(beside(&path, "-wal"))?;
    let report = Inspector::open(&path)?.check()?;
    assert!(
        report
            .problems
            .iter()
            .any(|p| matches!(p, Problem::WalLost { .. })),
        "{:?}",
        report.problems
    );
    assert!(
        matches!(Spool::open(&path), Err(Error::WalLost(_))),
        "reading left the evidence as it was"
    );
    let repaired = repair(&path)?;
    assert!(repaired.lost_seqs_skipped.is_some());
    assert!(repaired.after.is_healthy(), "{:?}", repaired.after.problems);
    let spool = Spool::open(&path)?;
    assert!(
        spool.append(numbered(10))? > 20,
        "no seq the lost commits used is given again"
    );
    spool.close(T)?;
    Ok(())
}

#[test]
fn stat_of_a_spool_without_events() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::open(&path)?;
    spool.append(numbered(0))?;
    let mut reader = spool.subscribe("reader", SeekPosition::Beginning)?;
    let event = reader
        .next_timeout(Duration::from_secs(10))?
        .expect("an event");
    reader.ack(event.seq)?; // the only consumer acknowledged it: deleted
    spool.close(Duration::from_secs(10))?;
    let stat = Inspector::open(&path)?.stat()?;
    assert_eq!((stat.events, stat.last_seq), (0, 1));
    assert_eq!(stat.oldest_event_ms, None);
    Ok(())
}
