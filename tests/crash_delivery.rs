//! `kill -9` in the middle of delivering to a real receiver: after a restart the
//! receiver has every committed event at least once, in order, and duplicates only
//! from the batch that was in flight (or, with `commit_every(n)`, from the last n).

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::{Reply, Request, Server};
use common::*;
use eventspool::{Backoff, Spool, WebhookSink};

const ROUNDS: usize = 3;
const BATCH: usize = 5;

fn sink(url: &str, run: &str, commit_every: usize) -> WebhookSink {
    WebhookSink::new("hook", url)
        .batch(BATCH)
        .commit_every(commit_every)
        .backoff(Backoff::exponential(
            Duration::from_millis(5),
            Duration::from_millis(50),
        ))
        .header("x-run", run)
}

/// Child: appends events one by one, logging each acknowledged seq, while its sink
/// delivers them to the parent's receiver.
fn child(path: &str, url: &str, run: &str, progress: &str, commit_every: usize) -> ! {
    let spool = Spool::builder(path)
        .sink(sink(url, run, commit_every))
        .open()
        .expect("child open");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(progress)
        .unwrap();
    for n in spool.last_seq().unwrap().. {
        let seq = spool.append(numbered(n)).unwrap();
        log.write_all(format!("{seq}\n").as_bytes()).unwrap();
    }
    unreachable!()
}

/// Kills `child` with SIGKILL once the receiver has `requests` requests.
fn kill_9_after(
    child: &mut std::process::Child,
    server: &Server,
    requests: usize,
) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.requests().len() < requests {
        assert!(child.try_wait()?.is_none(), "child exited early");
        assert!(Instant::now() < deadline, "no deliveries from the child");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill()?; // SIGKILL
    child.wait().map(drop)
}

fn seqs_of(r: &Request) -> Vec<u64> {
    let body = r.json();
    body.as_array()
        .unwrap_or_else(|| panic!("not an array: {body}"))
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

fn from_run<'a>(requests: &'a [Request], run: &str) -> Vec<&'a Request> {
    requests
        .iter()
        .filter(|r| r.header("x-run") == Some(run))
        .collect()
}

#[test]
fn kill_9_while_delivering_replays_only_the_batch_in_flight() -> TestResult {
    kill_rounds(
        "kill_9_while_delivering_replays_only_the_batch_in_flight",
        1,
    )
}

#[test]
fn kill_9_with_commit_every_replays_at_most_that_many_requests() -> TestResult {
    kill_rounds(
        "kill_9_with_commit_every_replays_at_most_that_many_requests",
        4,
    )
}

/// Kills a child delivering with `commit_every` in the middle, restarts in this
/// process, and checks what the receiver got; three times over one file. `test` is the
/// test running it (the child runs it too, and becomes the child).
fn kill_rounds(test: &str, commit_every: usize) -> TestResult {
    let vars = [
        "EVENTSPOOL_DC_PATH",
        "EVENTSPOOL_DC_URL",
        "EVENTSPOOL_DC_RUN",
        "EVENTSPOOL_DC_PROGRESS",
    ];
    if let [Ok(path), Ok(url), Ok(run), Ok(progress)] = vars.map(std::env::var) {
        child(&path, &url, &run, &progress, commit_every);
    }
    let (_dir, path) = temp_spool();
    let progress = path.with_extension("progress");
    let server = Server::with_script(|_| Reply::ok());
    for round in 0..ROUNDS {
        let run = format!("child-{round}");
        let before = server.requests().len();
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--exact", test, "--nocapture"])
            .env(vars[0], &path)
            .env(vars[1], server.url())
            .env(vars[2], &run)
            .env(vars[3], &progress)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        kill_9_after(&mut child, &server, before + 20 + round * 37)?;

        let parent_run = format!("parent-{round}");
        let spool = Spool::builder(&path)
            .sink(sink(&server.url(), &parent_run, commit_every))
            .open()?;
        let last = spool.last_seq()?;
        wait_until(
            Duration::from_secs(60),
            "the receiver has every committed event",
            || {
                let got: HashSet<u64> = server.requests().iter().flat_map(seqs_of).collect();
                (1..=last).all(|s| got.contains(&s))
            },
        );
        spool.close(Duration::from_secs(10))?;

        let requests = server.requests();
        let acked: Vec<u64> = std::fs::read_to_string(&progress)?
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert!(
            acked.iter().all(|&s| s <= last),
            "round {round}: an acknowledged append is missing"
        );
        // Within one run, strictly in seq order, never twice.
        for name in [&run, &parent_run] {
            let seqs: Vec<u64> = from_run(&requests, name)
                .into_iter()
                .flat_map(seqs_of)
                .collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "round {round}: {name} out of order"
            );
        }
        // Across the kill: the parent resends at most the child's last batch (the last
        // `commit_every` batches).
        let child_requests = from_run(&requests, &run);
        let in_flight: HashSet<u64> = child_requests
            .iter()
            .rev()
            .take(commit_every)
            .flat_map(|r| seqs_of(r))
            .collect();
        let earlier: HashSet<u64> = requests[..requests.len()]
            .iter()
            .filter(|r| r.header("x-run") != Some(parent_run.as_str()))
            .flat_map(seqs_of)
            .collect();
        for r in from_run(&requests, &parent_run) {
            for s in seqs_of(r) {
                assert!(
                    !earlier.contains(&s) || in_flight.contains(&s),
                    "round {round}: seq {s} was delivered before and was not in flight"
                );
            }
        }
    }
    let _ = Path::new(&path);
    Ok(())
}

/// The window of the concurrent test: a kill replays at most this many events.
const WINDOW: usize = 64;

fn per_key_sink(url: &str, run: &str) -> WebhookSink {
    WebhookSink::new("keys", url)
        .order(eventspool::Order::PerKey)
        .concurrency(eventspool::Concurrency::Fixed(16))
        .window(WINDOW)
        .backoff(Backoff::exponential(
            Duration::from_millis(5),
            Duration::from_millis(50),
        ))
        .header("x-run", run)
}

fn keyed(n: u64) -> eventspool::Event {
    numbered(n).subject(format!("key-{}", n % 10))
}

/// The seq and subject of a one-event request.
fn seq_key(r: &Request) -> (u64, String) {
    let body = r.json();
    (
        body["seq"].as_u64().unwrap(),
        body["subject"].as_str().unwrap_or_default().to_owned(),
    )
}

/// `kill -9` of a child delivering with `Order::PerKey` and 16 requests in flight: after
/// a restart every committed event arrives; what the restart sends again is above the
/// durable cursor the kill left, and within the window above it; each key's events go
/// out in order within a run.
#[test]
fn kill_9_with_per_key_concurrency_replays_at_most_the_window() -> TestResult {
    let vars = [
        "EVENTSPOOL_KC_PATH",
        "EVENTSPOOL_KC_URL",
        "EVENTSPOOL_KC_RUN",
    ];
    if let [Ok(path), Ok(url), Ok(run)] = vars.map(std::env::var) {
        let spool = Spool::builder(&path)
            .sink(per_key_sink(&url, &run))
            .open()
            .expect("child open");
        for n in spool.last_seq().unwrap().. {
            spool.append(keyed(n)).unwrap();
        }
    }
    let (_dir, path) = temp_spool();
    let mut rng = Rng(clock_seed() | 1);
    let server =
        Server::with_script(move |_| Reply::Delayed(Duration::from_micros(rng.below(2000)), 200));
    for round in 0..ROUNDS {
        let run = format!("child-{round}");
        let before = server.requests().len();
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "--exact",
                "kill_9_with_per_key_concurrency_replays_at_most_the_window",
                "--nocapture",
            ])
            .env(vars[0], &path)
            .env(vars[1], server.url())
            .env(vars[2], &run)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        kill_9_after(&mut child, &server, before + 200 + round * 97)?;
        let cursor: u64 = rusqlite::Connection::open(&path)?.query_row(
            "SELECT acked FROM consumers WHERE name = 'keys'",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64;

        let parent_run = format!("parent-{round}");
        let spool = Spool::builder(&path)
            .sink(per_key_sink(&server.url(), &parent_run))
            .open()?;
        let last = spool.last_seq()?;
        wait_until(
            Duration::from_secs(60),
            "the receiver has every committed event",
            || {
                let got: HashSet<u64> = server.requests().iter().map(|r| seq_key(r).0).collect();
                (1..=last).all(|s| got.contains(&s))
            },
        );
        spool.close(Duration::from_secs(10))?;

        let requests = server.requests();
        for name in [&run, &parent_run] {
            let mut last_of: std::collections::HashMap<String, u64> = Default::default();
            for r in from_run(&requests, name) {
                let (seq, key) = seq_key(r);
                let previous = last_of.insert(key.clone(), seq).unwrap_or(0);
                assert!(seq > previous, "round {round}: {name}: {key} out of order");
            }
        }
        let earlier: HashSet<u64> = requests
            .iter()
            .filter(|r| r.header("x-run") != Some(parent_run.as_str()))
            .map(|r| seq_key(r).0)
            .collect();
        let resent: Vec<u64> = from_run(&requests, &parent_run)
            .into_iter()
            .map(|r| seq_key(r).0)
            .filter(|s| earlier.contains(s))
            .collect();
        for &s in &resent {
            assert!(
                s > cursor && s <= cursor + WINDOW as u64,
                "round {round}: seq {s} sent again, the durable cursor was {cursor}"
            );
        }
        assert!(
            resent.len() <= WINDOW,
            "round {round}: {} sent again",
            resent.len()
        );
    }
    Ok(())
}
