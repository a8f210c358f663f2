//! The torture run: a child process runs producers (`emit` and `append`), two webhook
//! sinks and a consumer group against one spool file, and is killed with SIGKILL at
//! random moments (or closed cleanly at others), while two real HTTP receivers on
//! 127.0.0.1 randomly answer 200 / 500 / 429 with Retry-After / hang past the timeout /
//! reset the connection. Every run's history is checked: no acknowledged event missing,
//! per-sink order by seq, duplicates only from the requests a crash may replay (the
//! last one, or with `commit_every(n)` the last n), no seq reused, consumer positions
//! kept, counters balanced at clean closes. A third sink's receiver refuses every
//! fourth event for good (400): those are dead-lettered under a small cap of their own,
//! and after every run the file's dead letters are checked to be within it and to
//! agree with the totals the file keeps. A fourth sink delivers concurrently
//! (`Order::PerKey`, 8 in flight, a window of 64) to a flaky receiver of its own: each
//! key's events arrive in order within a run, and what a run sends again lies above
//! the durable cursor the run before left, within the window.
//!
//! `cargo test --test torture` runs it for 20 s; by hand:
//! `cargo test --release --test torture -- --seconds 600 --seed 42`.

mod common;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::{Reply, Request, Server};
use common::{Rng, arg, clock_seed};
use eventspool::{Backoff, Event, SeekPosition, Spool, WebhookSink};
use serde_json::json;

/// Name, batch size and `commit_every` of each sink: a crash may replay that many of
/// a sink's last acknowledged requests.
const SINKS: [(&str, usize, usize); 2] = [("s1", 1, 4), ("s2", 10, 1)];
/// The sink whose receiver refuses every fourth event for good.
const DEAD_SINK: &str = "s3";
/// The cap on dead letters' bytes (about 150 events' worth).
const DEAD_CAP: u64 = 16 << 10;
/// The concurrent sink, and its window.
const KEY_SINK: &str = "s4";
const KEY_WINDOW: u64 = 64;

fn key_sink(url: &str, run: &str) -> WebhookSink {
    sink(KEY_SINK, 1, 1, url, run)
        .order(eventspool::Order::PerKey)
        .concurrency(eventspool::Concurrency::Fixed(8))
        .window(KEY_WINDOW as usize)
}

fn sink(name: &str, batch: usize, commit_every: usize, url: &str, run: &str) -> WebhookSink {
    WebhookSink::new(name, url)
        .batch(batch)
        .commit_every(commit_every)
        .timeout(Duration::from_millis(200))
        .max_retries(None)
        .backoff(Backoff::exponential(
            Duration::from_millis(2),
            Duration::from_millis(50),
        ))
        .header("x-run", run)
}

// ---- the child ---------------------------------------------------------------------

fn child(path: &str, urls: &[String], run: &str, progress: &str, stop_file: &str) -> ExitCode {
    let mut builder = Spool::builder(path).max_dead_letter_bytes(DEAD_CAP);
    for ((name, batch, every), url) in SINKS.iter().zip(urls) {
        builder = builder.sink(sink(name, *batch, *every, url, run));
    }
    builder = builder
        .sink(sink(DEAD_SINK, 1, 1, &urls[2], run))
        .sink(key_sink(&urls[3], run));
    let spool = builder.open().expect("child open");
    let log = Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(progress)
            .unwrap(),
    ));
    let write = |log: &Mutex<std::fs::File>, line: String| {
        log.lock().unwrap().write_all(line.as_bytes()).unwrap();
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    {
        let (spool, log, stop, run) = (spool.clone(), log.clone(), stop.clone(), run.to_owned());
        threads.push(std::thread::spawn(move || {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let event = Event::new("t", json!({"run": run, "p": "e", "k": k}));
                spool.emit(event.subject(format!("k{}", k % 16))).unwrap();
                k += 1;
                // Paced (about 500/s): with a third of the requests failing, a sink
                // that posts one event per request keeps up with little more.
                std::thread::sleep(Duration::from_millis(2));
                if k.is_multiple_of(50) {
                    spool.flush(Duration::from_secs(10)).unwrap();
                    write(&log, format!("e {k}\n"));
                }
            }
        }));
    }
    {
        let (spool, log, stop, run) = (spool.clone(), log.clone(), stop.clone(), run.to_owned());
        threads.push(std::thread::spawn(move || {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let event = Event::new("t", json!({"run": run, "p": "a", "k": k}));
                let seq = spool.append(event.subject(format!("a{}", k % 8))).unwrap();
                write(&log, format!("a {seq}\n"));
                k += 1;
                std::thread::sleep(Duration::from_millis(3)); // paced, about 300/s
            }
        }));
    }
    {
        let (spool, log, stop) = (spool.clone(), log.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut sub = spool
                .subscribe("c", SeekPosition::LastAcknowledged)
                .unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(e) = sub.next_timeout(Duration::from_millis(20)).unwrap() {
                    n += 1;
                    if n.is_multiple_of(7) {
                        sub.ack(e.seq).unwrap();
                        write(&log, format!("c {}\n", e.seq));
                    }
                }
            }
        }));
    }
    while !Path::new(stop_file).exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    spool.close(Duration::from_secs(5)).unwrap();
    let m = spool.metrics();
    if m.emitted != m.committed + m.filtered + m.dropped_overflow + m.rejected + m.abandoned {
        eprintln!("counters do not balance: {m:?}");
        return ExitCode::from(3);
    }
    ExitCode::SUCCESS
}

// ---- the parent --------------------------------------------------------------------

/// A receiver that answers at random: mostly 200, sometimes a failure.
fn flaky_receiver(seed: u64) -> Server {
    let mut rng = Rng(seed | 1);
    Server::with_script(move |_| match rng.below(100) {
        0..70 => Reply::ok(),
        70..80 => Reply::status(500),
        80..85 => Reply::with_header(429, "retry-after", "0"),
        85..90 => Reply::Hang,
        _ => Reply::Reset,
    })
}

/// A receiver that refuses every fourth event for good (400), and takes the rest.
fn refusing_receiver() -> Server {
    Server::with_script(|r| match events_of(r)[0].0 % 4 {
        0 => Reply::status(400),
        _ => Reply::ok(),
    })
}

/// The dead letters in the file are within their cap and agree with the totals the
/// file keeps of them; returns how many there are.
fn check_dead_letters(path: &Path, history: &mut History, run: &str) -> u64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    let (count, bytes): (i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(size), 0) FROM dead_letters",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let kept: (i64, i64) = conn
        .query_row("SELECT dead_count, dead_bytes FROM state", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    if bytes as u64 > DEAD_CAP {
        history.violation(format!(
            "{run}: dead letters hold {bytes} bytes, over {DEAD_CAP}"
        ));
    }
    if kept != (count, bytes) {
        history.violation(format!(
            "{run}: the file counts {kept:?} dead letters, holds {:?}",
            (count, bytes)
        ));
    }
    count as u64
}

/// What one request carried: `(seq, data)` per event.
fn events_of(r: &Request) -> Vec<(u64, String)> {
    let body = r.json();
    let items = match body {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    items
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e["data"].to_string()))
        .collect()
}

fn ok(r: &Request) -> bool {
    matches!(r.reply, Reply::Status(200..=299, _))
}

struct History {
    violations: Vec<String>,
    /// seq → the data first seen with it, to catch a reused seq.
    data_of: HashMap<u64, String>,
    acked_appends: BTreeSet<u64>,
    /// (run, flushed emit count) per run.
    flushed: Vec<(String, u64)>,
    consumer_acked: u64,
}

impl History {
    fn violation(&mut self, what: String) {
        eprintln!("VIOLATION: {what}");
        self.violations.push(what);
    }

    /// Reads a run's progress file.
    fn read_progress(&mut self, run: &str, progress: &Path) {
        let mut flushed = 0;
        for line in std::fs::read_to_string(progress)
            .unwrap_or_default()
            .lines()
        {
            let Some((kind, n)) = line.split_once(' ') else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "a" => {
                    self.acked_appends.insert(n);
                }
                "e" => flushed = flushed.max(n),
                "c" => self.consumer_acked = self.consumer_acked.max(n),
                _ => {}
            }
        }
        self.flushed.push((run.to_owned(), flushed));
    }

    /// Checks one sink's requests: 2xx seqs in order within each run; a seq seen before
    /// only in a retry of the request before it (its 2xx response lost), or, in a later
    /// run, if it was in one of the last `commit_every` different 2xx requests of the runs
    /// before: those are what the cursor may not have recorded yet. (A run killed before
    /// it committed leaves them for the next, so the window spans runs.)
    fn check_sink(&mut self, name: &str, commit_every: usize, requests: &[Request]) {
        let mut distinct: Vec<Vec<u64>> = Vec::new();
        let mut known: HashSet<Vec<u64>> = HashSet::new();
        let mut window: HashSet<u64> = HashSet::new();
        let mut seen: BTreeSet<u64> = BTreeSet::new();
        let mut prev: Option<(String, Vec<u64>)> = None;
        for r in requests.iter().filter(|r| ok(r)) {
            let run = r.header("x-run").unwrap_or("?").to_owned();
            let events = events_of(r);
            let seqs: Vec<u64> = events.iter().map(|(s, _)| *s).collect();
            for (seq, data) in &events {
                let first = self
                    .data_of
                    .entry(*seq)
                    .or_insert_with(|| data.clone())
                    .clone();
                if &first != data {
                    self.violation(format!("{name}: seq {seq} carried two different events"));
                }
            }
            let same_run = prev.as_ref().is_some_and(|(r, _)| *r == run);
            let retry = same_run && prev.as_ref().is_some_and(|(_, p)| *p == seqs);
            if !same_run {
                let last = distinct.len().saturating_sub(commit_every);
                window = distinct[last..].iter().flatten().copied().collect();
            } else if !retry
                && let (Some(first), Some((_, p))) = (seqs.first(), &prev)
                && p.last().is_some_and(|last| first <= last)
            {
                self.violation(format!("{name}: run {run} went back to seq {seqs:?}"));
            }
            if !retry {
                for s in seqs
                    .iter()
                    .filter(|s| seen.contains(s) && !window.contains(s))
                {
                    self.violation(format!(
                        "{name}: seq {s} resent in run {run} though not in the last \
                         {commit_every} requests before it"
                    ));
                }
            }
            seen.extend(&seqs);
            if known.insert(seqs.clone()) {
                distinct.push(seqs.clone());
            }
            prev = Some((run, seqs));
        }
    }
}

/// The concurrent sink's committed cursor in the file (0 before it was registered).
fn key_cursor(path: &Path) -> u64 {
    let Ok(conn) = rusqlite::Connection::open(path) else {
        return 0;
    };
    conn.query_row(
        "SELECT acked FROM consumers WHERE name = ?1",
        [KEY_SINK],
        |r| r.get::<_, i64>(0),
    )
    .map_or(0, |a| a as u64)
}

impl History {
    /// Checks the concurrent sink's requests: within a run, each key's acknowledged
    /// events in seq order; an event acknowledged in an earlier run and sent again lies
    /// above the cursor the run started from, within the window.
    fn check_keyed(&mut self, requests: &[Request], cursors: &HashMap<String, u64>) {
        let mut acked: HashSet<u64> = HashSet::new();
        let mut last: HashMap<(String, String), u64> = HashMap::new();
        for r in requests.iter().filter(|r| ok(r)) {
            let run = r.header("x-run").unwrap_or("?").to_owned();
            let body = r.json();
            let (seq, key) = (
                body["seq"].as_u64().unwrap_or(0),
                body["subject"].as_str().unwrap_or_default().to_owned(),
            );
            if let Some(before) = last.insert((run.clone(), key.clone()), seq)
                && seq <= before
            {
                self.violation(format!(
                    "{KEY_SINK}: {run}: key {key} went from {before} to {seq}"
                ));
            }
            if !acked.insert(seq) {
                let cursor = cursors.get(&run).copied().unwrap_or(0);
                if seq <= cursor || seq > cursor + KEY_WINDOW {
                    self.violation(format!(
                        "{KEY_SINK}: {run}: seq {seq} sent again, outside the window above {cursor}"
                    ));
                }
            }
        }
    }
}

fn main() -> ExitCode {
    if let Ok(role) = std::env::var("EVENTSPOOL_TORTURE_CHILD") {
        let v: Vec<String> = role.split('\n').map(str::to_owned).collect();
        return child(&v[0], &v[1..5], &v[5], &v[6], &v[7]);
    }
    let seconds: u64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(20);
    let seed: u64 = arg("--seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(clock_seed);
    println!("torture: {seconds} s, --seed {seed}");
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let receivers: Vec<Server> = (0..SINKS.len())
        .map(|i| flaky_receiver(seed + i as u64))
        .collect();
    let refusing = refusing_receiver();
    let keyed = flaky_receiver(seed + 7);
    let mut urls: Vec<String> = receivers.iter().map(Server::url).collect();
    urls.push(refusing.url());
    urls.push(keyed.url());
    // The concurrent sink's durable cursor as each run started.
    let mut key_cursors: HashMap<String, u64> = HashMap::new();
    let mut history = History {
        violations: Vec::new(),
        data_of: HashMap::new(),
        acked_appends: BTreeSet::new(),
        flushed: Vec::new(),
        consumer_acked: 0,
    };
    let (mut runs, mut kills) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        runs += 1;
        let run = format!("run-{runs}");
        key_cursors.insert(run.clone(), key_cursor(&path));
        let progress: PathBuf = dir.path().join(format!("{run}.progress"));
        let stop_file: PathBuf = dir.path().join(format!("{run}.stop"));
        let role = [
            path.display().to_string(),
            urls[0].clone(),
            urls[1].clone(),
            urls[2].clone(),
            urls[3].clone(),
            run.clone(),
            progress.display().to_string(),
            stop_file.display().to_string(),
        ]
        .join("\n");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("EVENTSPOOL_TORTURE_CHILD", role)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(50 + rng.below(400)));
        if rng.below(5) == 0 {
            std::fs::write(&stop_file, b"stop").unwrap();
            let status = child.wait().unwrap();
            if !status.success() {
                history.violation(format!("{run}: clean close failed: {status}"));
            }
        } else {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            kills += 1;
        }
        history.read_progress(&run, &progress);
        check_dead_letters(&path, &mut history, &run);
        // After every run: the consumer's position survived.
        let spool = Spool::open(&path).unwrap();
        let position = spool
            .consumers()
            .unwrap()
            .iter()
            .find(|c| c.name == "c")
            .map_or(0, |c| c.position);
        if position < history.consumer_acked {
            history.violation(format!(
                "{run}: consumer position {position} < acked {}",
                history.consumer_acked
            ));
        }
        spool.close(Duration::from_secs(5)).unwrap();
    }

    // Drain: receivers answer 200 from now on; every committed event must arrive.
    for r in &receivers {
        r.set_script(|_| Reply::ok());
    }
    let mut builder = Spool::builder(&path);
    for ((name, batch, every), url) in SINKS.iter().zip(&urls) {
        builder = builder.sink(sink(name, *batch, *every, url, "final"));
    }
    builder = builder
        .max_dead_letter_bytes(DEAD_CAP)
        .sink(sink(DEAD_SINK, 1, 1, &urls[2], "final"))
        .sink(key_sink(&urls[3], "final"));
    keyed.set_script(|_| Reply::ok());
    key_cursors.insert("final".into(), key_cursor(&path));
    let spool = builder.open().unwrap();
    let last_seq = spool.last_seq().unwrap();
    // Generous: the backlog after a long run drains at a few thousand events a second.
    let drained = Instant::now() + Duration::from_secs(120 + seconds);
    while spool.metrics().sinks.iter().any(|s| s.lag > 0) {
        if Instant::now() > drained {
            history.violation("the sinks did not catch up after the last run".into());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    spool.close(Duration::from_secs(10)).unwrap();
    let dead_kept = check_dead_letters(&path, &mut history, "final");

    // The refusing sink: 2xx requests in order, and every committed event reached it.
    let requests = refusing.requests();
    history.check_sink(DEAD_SINK, 1, &requests);
    let reached: BTreeSet<u64> = requests
        .iter()
        .flat_map(|r| events_of(r).into_iter().map(|(s, _)| s))
        .collect();
    let missing: Vec<u64> = (1..=last_seq)
        .filter(|s| !reached.contains(s))
        .take(10)
        .collect();
    if !missing.is_empty() {
        history.violation(format!(
            "{DEAD_SINK}: committed events never sent: {missing:?}"
        ));
    }
    let refused = reached.iter().filter(|s| *s % 4 == 0).count();

    // The concurrent sink: every committed event, per-key order, bounded replays.
    let requests = keyed.requests();
    history.check_keyed(&requests, &key_cursors);
    let acked_keyed: Vec<u64> = requests
        .iter()
        .filter(|r| ok(r))
        .flat_map(|r| events_of(r).into_iter().map(|(s, _)| s))
        .collect();
    let got: BTreeSet<u64> = acked_keyed.iter().copied().collect();
    let keyed_again = acked_keyed.len() - got.len();
    let missing: Vec<u64> = (1..=last_seq)
        .filter(|s| !got.contains(s))
        .take(10)
        .collect();
    if !missing.is_empty() {
        history.violation(format!(
            "{KEY_SINK}: committed events never delivered: {missing:?}"
        ));
    }

    let mut delivered = 0u64;
    let mut duplicates = Vec::new();
    for ((name, _, every), receiver) in SINKS.iter().zip(&receivers) {
        let requests = receiver.requests();
        history.check_sink(name, *every, &requests);
        let ok_seqs: Vec<u64> = requests
            .iter()
            .filter(|r| ok(r))
            .flat_map(|r| events_of(r).into_iter().map(|(s, _)| s))
            .collect();
        let unique: BTreeSet<u64> = ok_seqs.iter().copied().collect();
        delivered += unique.len() as u64;
        duplicates.push(format!("{name} {}", ok_seqs.len() - unique.len()));
        let missing: Vec<u64> = (1..=last_seq)
            .filter(|s| !unique.contains(s))
            .take(10)
            .collect();
        if !missing.is_empty() {
            history.violation(format!(
                "{name}: committed events never delivered: {missing:?}"
            ));
        }
        let lost: Vec<&u64> = history
            .acked_appends
            .iter()
            .filter(|s| !unique.contains(s))
            .take(10)
            .collect();
        if !lost.is_empty() {
            history.violation(format!(
                "{name}: acknowledged appends never delivered: {lost:?}"
            ));
        }
    }
    // Flushed emits: each run's first `flushed` emits were delivered.
    let delivered_data: BTreeSet<String> = history.data_of.values().cloned().collect();
    for (run, flushed) in history.flushed.clone() {
        for k in 0..flushed {
            let data = json!({"run": run, "p": "e", "k": k}).to_string();
            if !delivered_data.contains(&data) {
                history.violation(format!("{run}: flushed emit {k} never delivered"));
                break;
            }
        }
    }
    let violations = history.violations.len();
    println!(
        "torture: runs {runs}, kills {kills}, events committed {last_seq}, appends acknowledged {}, \
         events delivered {delivered}, duplicates {}, refused {refused} (dead letters kept \
         {dead_kept}, within {DEAD_CAP} bytes), violations {violations}",
        history.acked_appends.len(),
        duplicates.join(" / ") + &format!(" / {KEY_SINK} {keyed_again}")
    );
    println!("torture: {} passed, {violations} failed", runs);
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
