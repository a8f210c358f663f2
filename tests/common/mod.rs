//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod brokers;
pub mod capi;
pub mod delivery;
pub mod http;
pub mod nats;
pub mod sinks;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use eventspool::{Event, EventQuery, Spool, StoredEvent};
use serde_json::json;

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Polls `cond` until it holds or `timeout` passes; fails with `what` on timeout.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::yield_now();
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A temp dir and a spool path inside it.
pub fn temp_spool() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("events.db");
    (dir, path)
}

/// `path` with `suffix` appended to its file name (`-wal`, `-shm`).
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// An event whose data records `n`.
pub fn numbered(n: u64) -> Event {
    Event::new("test.numbered", json!({ "n": n }))
}

/// Every stored event, in seq order.
pub fn all_events(spool: &Spool) -> Vec<StoredEvent> {
    spool
        .query(&EventQuery::new().limit(usize::MAX))
        .expect("query")
}

/// The `n` recorded by [`numbered`].
pub fn number_of(event: &StoredEvent) -> u64 {
    event.data_as::<serde_json::Value>().expect("json")["n"]
        .as_u64()
        .expect("n")
}

/// xorshift64*: enough randomness for kill points and fault choices, seeded so a
/// failing run can be replayed.
pub struct Rng(pub u64);

impl Rng {
    /// Seeded from `EVENTSPOOL_SEED`, or the clock; the seed is printed.
    pub fn seeded() -> Rng {
        let seed = std::env::var("EVENTSPOOL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(clock_seed);
        eprintln!("seeded with EVENTSPOOL_SEED={seed}");
        Rng(seed | 1)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// A seed from the clock, for runs not given one.
pub fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// The value after `name` on the command line (`--seconds 60`), for the tests with
/// their own `main`.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1).cloned()
}

/// A small tmpfs mounted over a directory for a test (root only: `mount` returns None
/// elsewhere), unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }

    /// Makes the file system read-only (or writable again).
    pub fn set_read_only(&self, read_only: bool) {
        let mode = if read_only {
            "remount,ro"
        } else {
            "remount,rw"
        };
        let status = Command::new("mount")
            .args(["-o", mode])
            .arg(&self.0)
            .status()
            .expect("mount");
        assert!(status.success(), "mount -o {mode} {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Log lines captured in this test binary (see [`capture_logs`]).
static LOGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.level() <= log::Level::Warn {
            let line = format!("{} {}", record.level(), record.args());
            LOGS.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    }
    fn flush(&self) {}
}

/// Keeps every warning and error logged in this test binary, for [`logged`].
pub fn capture_logs() {
    let _ = log::set_logger(&Capture);
    log::set_max_level(log::LevelFilter::Warn);
}

/// The warnings and errors logged so far that contain `needle`.
pub fn logged(needle: &str) -> Vec<String> {
    LOGS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// Child: commits 10 events and copies them into the file, holds a read transaction
/// open so the next 10 stay in the WAL only, commits them, says so, and waits to be
/// killed.
pub fn wal_child(path: &Path) -> ! {
    let spool = Spool::open(path).expect("open");
    for n in 0..10 {
        spool.append(numbered(n)).expect("first 10");
    }
    let reader = rusqlite::Connection::open(path).expect("reader");
    reader
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        .expect("checkpoint");
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM events;")
        .expect("read transaction");
    for n in 10..20 {
        spool.append(numbered(n)).expect("next 10");
    }
    std::fs::write(beside(path, ".ready"), b"ready").expect("ready file");
    loop {
        std::thread::park();
    }
}

/// Runs [`wal_child`] in a child process (this binary, re-invoked for `test` alone) and
/// kills it with SIGKILL once its last 10 commits are in the WAL only.
pub fn crash_with_commits_in_the_wal(test: &str) -> (tempfile::TempDir, PathBuf) {
    if let Ok(path) = std::env::var("EVENTSPOOL_WAL_CHILD") {
        wal_child(Path::new(&path));
    }
    let (dir, path) = temp_spool();
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test, "--nocapture"])
        .env("EVENTSPOOL_WAL_CHILD", &path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("child");
    let ready = beside(&path, ".ready");
    wait_until(
        Duration::from_secs(20),
        "the child committed 20 events",
        || ready.exists(),
    );
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    (dir, path)
}

/// What [`kill_9_and_restart`] saw.
#[derive(Debug)]
pub struct Resends {
    /// Events in the stream right after the kill.
    pub in_stream: u64,
    /// The sink's durable cursor the kill left.
    pub cursor: u64,
    /// The restarted sink's `already_delivered` once it caught up.
    pub counted: u64,
}

const CHILD_PATH: &str = "EVENTSPOOL_BROKER_CHILD_PATH";
const CHILD_URL: &str = "EVENTSPOOL_BROKER_CHILD_URL";

/// In the child [`kill_9_and_restart`] starts (first thing in the test): appends `n`
/// events to the parent's spool and delivers them to the parent's broker through
/// `make(url)` until killed. Elsewhere, returns at once.
pub fn child_if_asked<S: eventspool::Sink + 'static>(make: impl Fn(&str) -> S, n: u64) {
    let (Ok(path), Ok(url)) = (std::env::var(CHILD_PATH), std::env::var(CHILD_URL)) else {
        return;
    };
    let spool = Spool::builder(path).sink(make(&url)).open().expect("open");
    spool
        .append_batch((0..n).map(numbered).collect())
        .expect("append");
    loop {
        std::thread::park(); // until killed
    }
}

/// The broker sinks' `kill -9` run (`tests/redis.rs`, `tests/nats.rs`): a child (this test binary, re-invoked for `test`,
/// which calls [`child_if_asked`] first) appends `n` events to the spool at `path` and
/// delivers them to `url`; it is killed once `stored()` reaches a sixth of them; then
/// `sink` is opened on the same file and runs until the stream holds all `n`.
pub fn kill_9_and_restart<S: eventspool::Sink + 'static>(
    test: &str,
    path: &Path,
    url: &str,
    sink: S,
    n: u64,
    mut stored: impl FnMut() -> u64,
) -> Resends {
    let timeout = Duration::from_secs(60);
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test, "--nocapture"])
        .env(CHILD_PATH, path)
        .env(CHILD_URL, url)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn the child");
    wait_until(timeout, "the child delivered some", || stored() >= n / 6);
    child.kill().expect("SIGKILL"); // mid-delivery
    child.wait().expect("reaped");
    let in_stream = stored();
    let cursor = eventspool::Inspector::open(path)
        .and_then(|i| i.consumers())
        .expect("read the file")
        .into_iter()
        .find(|c| c.name == sink.name())
        .map_or(0, |c| c.position);
    assert!(
        cursor <= in_stream,
        "the cursor never runs ahead of the stream"
    );
    let spool = Spool::builder(path).sink(sink).open().expect("reopen");
    wait_until(timeout, "the rest delivered", || {
        stored() == n && spool.metrics().sinks[0].lag == 0
    });
    let counted = spool.metrics().sinks[0].already_delivered;
    spool.close(timeout).expect("close");
    Resends {
        in_stream,
        cursor,
        counted,
    }
}

/// Opens a spool at `path` delivering to `sink`, which cannot reach its destination,
/// appends one event and waits until the failure was retried: checks that the sink's
/// last error says `says`, never shows `secret`, and that nothing was dead-lettered.
pub fn assert_retried_saying(
    path: &Path,
    sink: impl eventspool::Sink + 'static,
    says: &str,
    secret: &str,
) -> TestResult {
    let spool = Spool::builder(path).sink(sink).open()?;
    spool.append(numbered(0))?;
    wait_until(Duration::from_secs(60), "a retried failure", || {
        spool.metrics().sinks[0].failures_retryable > 1
    });
    let sink = spool.metrics().sinks[0].clone();
    let error = sink.last_error.clone().unwrap_or_default();
    assert!(error.contains(says), "{error}");
    assert!(!error.contains(secret), "no secret shown: {error}");
    assert_eq!(sink.dead_lettered, 0, "retried, not given up on");
    spool.close(Duration::from_millis(100))?;
    Ok(())
}
