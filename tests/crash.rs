//! `kill -9` at random points: every event whose `append` returned (or that a `flush`
//! covered) is there after reopening, in order, with no gap in seq.
//!
//! The test binary re-invokes itself as the child (`EVENTSPOOL_CRASH_CHILD`), which
//! reports progress through a file, one line per durable event, and is killed with
//! SIGKILL when the parent has seen a random amount of progress.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use common::*;
use eventspool::{Event, Spool, StoredEvent};
use serde_json::json;

const ROUNDS: usize = 20;
const APPEND_THREADS: u64 = 3;

fn spawn_child(test: &str, mode: &str, path: &Path, progress: &Path) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("EVENTSPOOL_CRASH_CHILD", mode)
        .env("EVENTSPOOL_CRASH_PATH", path)
        .env("EVENTSPOOL_CRASH_PROGRESS", progress)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn child")
}

fn progress_lines(progress: &Path) -> Vec<String> {
    std::fs::read_to_string(progress)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Waits until the child has reported `lines` lines of progress, then SIGKILLs it.
fn kill_after(mut child: Child, progress: &Path, lines: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while progress_lines(progress).len() < lines {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("child exited early: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "child made no progress"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
    child.wait().expect("reap");
}

/// Child: `APPEND_THREADS` threads append `{t, n}` and log each returned seq.
fn append_child(path: &str, progress: &str) -> ! {
    let spool = Spool::open(path).expect("child open");
    let mut next = HashMap::new();
    for e in all_events(&spool) {
        let v: serde_json::Value = e.data_as().unwrap();
        next.insert(v["t"].as_u64().unwrap(), v["n"].as_u64().unwrap() + 1);
    }
    let threads: Vec<_> = (0..APPEND_THREADS)
        .map(|t| {
            let spool = spool.clone();
            let start = next.get(&t).copied().unwrap_or(0);
            let progress = progress.to_owned();
            std::thread::spawn(move || {
                let mut log = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(progress)
                    .unwrap();
                for n in start.. {
                    let seq = spool
                        .append(Event::new("crash", json!({"t": t, "n": n})))
                        .unwrap();
                    log.write_all(format!("{seq}\n").as_bytes()).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    unreachable!("the child appends until it is killed")
}

/// Child: emits numbered events as fast as it can; after each flush logs how many
/// events are durable.
fn emit_child(path: &str, progress: &str) -> ! {
    let spool = Spool::open(path).expect("child open");
    let start = spool.last_seq().unwrap();
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(progress)
        .unwrap();
    for n in start.. {
        spool.emit(numbered(n)).unwrap();
        if n % 500 == 499 {
            spool.flush(Duration::from_secs(30)).unwrap();
            log.write_all(format!("{}\n", n + 1).as_bytes()).unwrap();
        }
    }
    unreachable!()
}

fn child_mode() -> Option<(String, String, String)> {
    let mode = std::env::var("EVENTSPOOL_CRASH_CHILD").ok()?;
    let path = std::env::var("EVENTSPOOL_CRASH_PATH").ok()?;
    let progress = std::env::var("EVENTSPOOL_CRASH_PROGRESS").ok()?;
    Some((mode, path, progress))
}

/// `ROUNDS` times: start the child in `mode`, SIGKILL it once it has logged up to
/// `most_lines` more lines (a random number), reopen the spool and run `check` on the
/// log so far and the stored events (seq checked to have no gap).
fn kill_rounds(
    test: &str,
    mode: &str,
    most_lines: u64,
    mut check: impl FnMut(usize, &[String], &[StoredEvent]) -> TestResult,
) -> TestResult {
    let (_dir, path) = temp_spool();
    let progress = path.with_extension("progress");
    let mut rng = Rng::seeded();
    for round in 0..ROUNDS {
        let seen = progress_lines(&progress).len();
        let child = spawn_child(test, mode, &path, &progress);
        kill_after(child, &progress, seen + 1 + rng.below(most_lines) as usize);
        let spool = Spool::open(&path)?;
        let events = all_events(&spool);
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1, "round {round}: seq has no gap");
        }
        check(round, &progress_lines(&progress), &events)?;
        spool.close(Duration::from_secs(10))?;
    }
    Ok(())
}

#[test]
fn kill_9_while_appending_loses_no_acknowledged_event() -> TestResult {
    if let Some((mode, path, progress)) = child_mode() {
        assert_eq!(mode, "append");
        append_child(&path, &progress);
    }
    let test = "kill_9_while_appending_loses_no_acknowledged_event";
    kill_rounds(test, "append", 400, |round, log, events| {
        let last = events.last().map_or(0, |e| e.seq);
        let missing: Vec<u64> = log
            .iter()
            .map(|l| l.parse().unwrap())
            .filter(|&s| s > last)
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged but lost: {missing:?}"
        );
        // Per thread, the numbers run 0, 1, 2, ... in seq order: in order, no gap.
        let mut expect = HashMap::new();
        for e in events {
            let v: serde_json::Value = e.data_as()?;
            let n = expect.entry(v["t"].as_u64().unwrap()).or_insert(0u64);
            assert_eq!(v["n"].as_u64().unwrap(), *n, "round {round}: seq {}", e.seq);
            *n += 1;
        }
        Ok(())
    })
}

#[test]
fn kill_9_while_emitting_keeps_everything_flushed() -> TestResult {
    if let Some((mode, path, progress)) = child_mode() {
        assert_eq!(mode, "emit");
        emit_child(&path, &progress);
    }
    let test = "kill_9_while_emitting_keeps_everything_flushed";
    kill_rounds(test, "emit", 20, |round, log, events| {
        let flushed: u64 = log.last().map_or(0, |l| l.parse().unwrap());
        assert!(
            events.len() as u64 >= flushed,
            "round {round}: {} stored, {flushed} flushed",
            events.len()
        );
        for (i, e) in events.iter().enumerate() {
            assert_eq!(number_of(e), i as u64, "round {round}: emit order kept");
        }
        Ok(())
    })
}
