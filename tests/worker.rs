//! The sink workers' mechanics, with webhooks on real HTTP receivers on 127.0.0.1 and
//! sinks of the tests' own: order, cursors and restarts, close and catching up, whole
//! batches, counters under the caps, panics in a sink, the WAL, `commit_every`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::delivery::*;
use common::http::Server;
use common::*;
use eventspool::{Backoff, Durability, Error, Event, Spool};

#[test]
fn three_sinks_get_everything_in_order_and_a_down_one_delays_no_other() -> TestResult {
    let (_dir, path) = temp_spool();
    let (a, b) = (Server::start(), Server::start());
    let mut c = Server::start();
    c.down(); // connections refused until it comes back
    let spool = Spool::builder(&path)
        .sink(quick("a", &a))
        .sink(quick("b", &b).batch(100))
        .sink(quick("c", &c).batch(10).max_retries(None))
        .open()?;
    for n in 0..10_000 {
        spool.emit(numbered(n))?;
    }
    let all: Vec<u64> = (1..=10_000).collect();
    assert_eq!(wait_delivered(&a, 10_000), all);
    assert_eq!(wait_delivered(&b, 10_000), all);
    assert!(delivered(&c).is_empty(), "c is still down");
    let m = sink_metrics(&spool, "c");
    assert_eq!(m.lag, 10_000);
    assert!(m.failures_retryable > 0 && m.delivered == 0, "{m:?}");
    assert_eq!(
        spool.len()?,
        10_000,
        "events wait for the sink that has not had them"
    );

    c.up();
    assert_eq!(wait_delivered(&c, 10_000), all);
    wait_until(
        T,
        "every sink acknowledged, so the events are deleted",
        || spool.len().unwrap() == 0,
    );
    for name in ["a", "b", "c"] {
        let m = sink_metrics(&spool, name);
        assert_eq!(
            (m.delivered, m.lag, m.dead_lettered),
            (10_000, 0, 0),
            "{m:?}"
        );
    }
    Ok(())
}

#[test]
fn under_full_durability_a_sink_delivers_in_order_and_its_events_are_deleted() -> TestResult {
    // Under Durability::Full a sink's cursor joins the writer's transactions (sharing
    // their fsync) instead of committing on its own thread: the same order, counts and
    // deletion.
    let (_dir, path) = temp_spool();
    let server = Server::start();
    let spool = Spool::builder(&path)
        .durability(Durability::Full)
        .sink(quick("hook", &server).batch(10))
        .open()?;
    for n in 0..200 {
        spool.emit(numbered(n))?;
    }
    let all: Vec<u64> = (1..=200).collect();
    assert_eq!(wait_delivered(&server, 200), all);
    wait_until(T, "acknowledged events are deleted", || {
        spool.len().unwrap() == 0
    });
    let m = sink_metrics(&spool, "hook");
    assert_eq!((m.delivered, m.lag, m.cursor), (200, 0, 200), "{m:?}");
    spool.close(T)?;
    Ok(())
}

#[test]
fn the_cursor_survives_a_restart_and_nothing_acknowledged_is_resent() -> TestResult {
    let (_dir, path) = temp_spool();
    let server = Server::start();
    {
        let spool = Spool::builder(&path).sink(quick("s", &server)).open()?;
        spool.append_batch((0..5).map(numbered).collect())?;
        wait_delivered(&server, 5);
        spool.close(T)?;
    }
    let spool = Spool::builder(&path).sink(quick("s", &server)).open()?;
    spool.append_batch((5..10).map(numbered).collect())?;
    assert_eq!(wait_delivered(&server, 10), (1..=10).collect::<Vec<_>>());
    spool.close(T)?;
    assert_eq!(server.requests().len(), 10, "no event was sent twice");
    Ok(())
}

#[test]
fn a_backlog_goes_out_in_whole_batches() -> TestResult {
    let (_dir, path) = temp_spool();
    let server = Server::start();
    // Registered, then stored while it is not running: the whole backlog waits.
    Spool::builder(&path)
        .sink(quick("s", &server))
        .open()?
        .close(T)?;
    let spool = Spool::open(&path)?;
    spool.append_batch((0..1000).map(numbered).collect())?;
    spool.close(T)?;

    // Batches of 30 do not divide the reads (100 at a time): every batch but the
    // last is still whole.
    let spool = Spool::builder(&path)
        .sink(quick("s", &server).batch(30))
        .open()?;
    assert_eq!(
        wait_delivered(&server, 1000),
        (1..=1000).collect::<Vec<_>>()
    );
    spool.close(T)?;
    let sizes: Vec<usize> = server.requests().iter().map(|r| seqs_of(r).len()).collect();
    let mut whole = vec![30; 33];
    whole.push(10);
    assert_eq!(sizes, whole);
    Ok(())
}

/// Events emitted just before `close` are committed by it; the sinks deliver them and
/// `close` returns then, not at its deadline, however the commit and the sink's reads
/// interleave (this went wrong about once in three tries when a read was in progress
/// as `close` committed).
#[test]
fn close_returns_once_the_sinks_delivered_what_it_committed() -> TestResult {
    let server = Server::start();
    let mut seen = 0;
    for round in 0..40 {
        let (_dir, path) = temp_spool();
        let spool = Spool::builder(&path).sink(quick("s", &server)).open()?;
        let n = 50 + round * 5;
        for i in 0..n {
            spool.emit(numbered(i))?;
        }
        let started = Instant::now();
        spool.close(Duration::from_secs(30))?;
        let took = started.elapsed();
        let new = server.requests_after(seen);
        seen += new.len();
        assert_eq!(
            acknowledged(&new).len(),
            n as usize,
            "round {round}: all delivered"
        );
        assert!(
            took < Duration::from_secs(10),
            "round {round}: close took {took:?}"
        );
    }
    Ok(())
}

#[test]
fn close_lets_sinks_catch_up_and_keeps_the_rest_for_next_time() -> TestResult {
    let (_dir, path) = temp_spool();
    let mut server = Server::start();
    let spool = Spool::builder(&path)
        .sink(quick("s", &server).max_retries(None))
        .open()?;
    spool.append_batch((0..100).map(numbered).collect())?;
    spool.close(T)?;
    assert_eq!(
        delivered(&server).len(),
        100,
        "close waited for the sink to catch up"
    );

    server.down();
    let spool = Spool::builder(&path)
        .sink(quick("s", &server).max_retries(None))
        .open()?;
    spool.append_batch((100..110).map(numbered).collect())?;
    let started = Instant::now();
    spool.close(Duration::from_millis(300))?;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "close is bounded"
    );
    server.up();
    let spool = Spool::builder(&path).sink(quick("s", &server)).open()?;
    assert_eq!(wait_delivered(&server, 110), (1..=110).collect::<Vec<_>>());
    drop(spool);
    Ok(())
}

#[test]
fn a_lagging_sink_counts_what_the_caps_evicted() -> TestResult {
    let (_dir, path) = temp_spool();
    let mut server = Server::start();
    server.down();
    let spool = Spool::builder(&path)
        .max_events(10)
        .sink(quick("s", &server).max_retries(None))
        .open()?;
    spool.append_batch((0..50).map(numbered).collect())?;
    server.up();
    wait_until(T, "caught up", || sink_metrics(&spool, "s").lag == 0);
    let m = sink_metrics(&spool, "s");
    // Counters balance: every event committed since registration is accounted for.
    assert_eq!(
        m.delivered + m.dead_lettered + m.evicted_unsent + m.filtered + m.lag,
        50,
        "{m:?}"
    );
    assert!(m.evicted_unsent >= 39, "{m:?}");
    let got = delivered(&server);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    assert_eq!(got.last(), Some(&50));
    Ok(())
}

/// A sink that takes `per_call` for every delivery (a slow receiver).
struct Slow {
    per_call: Duration,
    calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl eventspool::Sink for Slow {
    fn name(&self) -> &str {
        "slow"
    }

    fn deliver(
        &mut self,
        _events: &[eventspool::StoredEvent],
    ) -> Result<(), eventspool::DeliveryError> {
        std::thread::sleep(self.per_call); // the work being timed, not synchronisation
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn batch_size(&self) -> usize {
        2
    }
}

#[test]
fn the_worker_reports_where_its_time_goes() -> TestResult {
    let (_dir, path) = temp_spool();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sink = Slow {
        per_call: Duration::from_millis(20),
        calls: calls.clone(),
    };
    let spool = Spool::builder(&path).sink(sink).open()?;
    spool.append_batch((0..10).map(numbered).collect())?;
    wait_until(T, "every batch acknowledged", || {
        sink_metrics(&spool, "slow").cursor == 10
    });
    let m = sink_metrics(&spool, "slow");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 5);
    // Five calls of at least 20 ms each, and not much else: reading and committing
    // take microseconds.
    assert!(m.deliver_us >= 100_000, "{m:?}");
    assert!(m.read_us > 0 && m.commit_us > 0, "{m:?}");
    assert!(m.read_us + m.commit_us < m.deliver_us, "{m:?}");
    let text = spool.metrics().to_prometheus();
    for series in ["read", "deliver", "commit"] {
        let line = format!("eventspool_sink_{series}_us_total{{sink=\"slow\"}} ");
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }
    Ok(())
}

/// A sink that takes every event, one per call, once `gate` lets it start.
struct Accepting {
    gate: Option<crossbeam_channel::Receiver<()>>,
}

impl eventspool::Sink for Accepting {
    fn name(&self) -> &str {
        "accepting"
    }

    fn deliver(
        &mut self,
        _events: &[eventspool::StoredEvent],
    ) -> Result<(), eventspool::DeliveryError> {
        if let Some(gate) = self.gate.take() {
            let _ = gate.recv();
        }
        Ok(())
    }
}

#[test]
fn the_wal_starts_over_while_a_sink_acknowledges_event_by_event() -> TestResult {
    // Each acknowledgement is a commit of its own, a page appended to the WAL: 8000 of
    // them are 33 MB. The WAL must start over from its beginning now and then instead
    // (well below the size at which the writer would empty it, 128 MiB here).
    const N: u64 = 8000;
    let (_dir, path) = temp_spool();
    let (open_gate, gate) = crossbeam_channel::bounded(1);
    let sink = Accepting { gate: Some(gate) };
    let spool = Spool::builder(&path).sink(sink).open()?;
    // All stored before the sink starts: it then works through them with nothing else
    // committed meanwhile.
    spool.append_batch((0..N).map(numbered).collect())?;
    open_gate.send(())?;
    wait_until(T, "every event acknowledged", || {
        sink_metrics(&spool, "accepting").cursor == N
    });
    let wal = std::fs::metadata(beside(&path, "-wal"))?.len();
    assert!(wal < 16 << 20, "the WAL grew to {wal} bytes");
    assert_eq!(sink_metrics(&spool, "accepting").delivered, N);
    Ok(())
}

type Shared<T> = std::sync::Arc<std::sync::Mutex<Vec<T>>>;

/// A custom sink with bugs and opinions, by event type: "boom" panics in `deliver`,
/// "odd" panics in `accepts`, "bad" is refused for good; it takes the rest.
struct Picky {
    got: Shared<u64>,
}

impl eventspool::Sink for Picky {
    fn name(&self) -> &str {
        "picky"
    }

    fn deliver(
        &mut self,
        events: &[eventspool::StoredEvent],
    ) -> Result<(), eventspool::DeliveryError> {
        match events[0].event_type.as_str() {
            "boom" => panic!("the sink's own bug"),
            "bad" => Err(eventspool::DeliveryError::permanent("refused")),
            _ => {
                self.got.lock().unwrap().push(events[0].seq);
                Ok(())
            }
        }
    }

    fn max_retries(&self) -> Option<u32> {
        Some(2)
    }

    fn backoff(&self) -> Backoff {
        Backoff::exponential(Duration::from_millis(1), Duration::from_millis(5))
    }

    fn accepts(&self, event_type: &str) -> bool {
        assert!(event_type != "odd", "the sink's own bug");
        true
    }
}

/// A spool delivering to a [`Picky`] sink: what the sink took, and what the `on_error`
/// hook was told (`hook_panics`: the hook panics instead).
fn picky_spool(
    path: &Path,
    hook_panics: bool,
) -> Result<(Spool, Shared<u64>, Shared<String>), Error> {
    let got = Shared::default();
    let reported = Shared::default();
    let seen = reported.clone();
    let spool = Spool::builder(path)
        .sink(Picky { got: got.clone() })
        .on_error(move |e| {
            assert!(!hook_panics, "the application's own bug, on {e}");
            seen.lock().unwrap().push(e.to_string());
        })
        .open()?;
    Ok((spool, got, reported))
}

#[test]
fn a_sink_that_panics_fails_that_delivery_and_goes_on() -> TestResult {
    // A bug in a user's sink must not end its worker in silence: the panic is a
    // failed attempt like any other, so the event is retried, then dead-lettered,
    // and the events after it are delivered.
    let (_dir, path) = temp_spool();
    let (spool, got, reported) = picky_spool(&path, false)?;
    spool.append(numbered(0))?;
    spool.append(Event::new("boom", 1))?;
    spool.append(numbered(2))?;
    wait_until(T, "the sink went past the panic", || {
        got.lock().unwrap().len() == 2
    });
    assert_eq!(*got.lock().unwrap(), [1, 3]);
    let dead = spool.dead_letters("picky", 10)?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!((dead[0].event.seq, dead[0].attempts), (2, 3));
    assert!(
        dead[0].last_error.contains("the sink's own bug"),
        "{dead:?}"
    );
    let m = sink_metrics(&spool, "picky");
    assert_eq!((m.failures_retryable, m.dead_lettered), (3, 1), "{m:?}");
    let reported = reported.lock().unwrap();
    assert!(
        reported.iter().any(|e| e.contains("panicked in deliver")),
        "{reported:?}"
    );
    Ok(())
}

#[test]
fn a_sink_whose_filter_panics_takes_the_event() -> TestResult {
    let (_dir, path) = temp_spool();
    let (spool, got, reported) = picky_spool(&path, false)?;
    spool.append(Event::new("odd", 0))?;
    spool.append(numbered(1))?;
    wait_until(T, "both delivered", || got.lock().unwrap().len() == 2);
    assert_eq!(*got.lock().unwrap(), [1, 2]);
    let reported = reported.lock().unwrap();
    assert!(
        reported.iter().any(|e| e.contains("panicked in accepts")),
        "{reported:?}"
    );
    Ok(())
}

#[test]
fn an_error_hook_that_panics_stops_nothing() -> TestResult {
    let (_dir, path) = temp_spool();
    let (spool, got, _) = picky_spool(&path, true)?;
    spool.append(Event::new("bad", 0))?;
    spool.append(numbered(1))?;
    wait_until(T, "the sink went past the dead letter", || {
        got.lock().unwrap().len() == 1
    });
    assert_eq!(*got.lock().unwrap(), [2]);
    assert_eq!(spool.dead_letters("picky", 10)?.len(), 1);
    Ok(())
}

/// A sink that holds each delivery until the test lets it go.
struct Gated {
    entered: crossbeam_channel::Sender<Vec<u64>>,
    go: crossbeam_channel::Receiver<Result<(), eventspool::DeliveryError>>,
}

impl eventspool::Sink for Gated {
    fn name(&self) -> &str {
        "gated"
    }

    fn deliver(
        &mut self,
        events: &[eventspool::StoredEvent],
    ) -> Result<(), eventspool::DeliveryError> {
        let _ = self.entered.send(events.iter().map(|e| e.seq).collect());
        self.go.recv().unwrap_or(Ok(()))
    }

    fn batch_size(&self) -> usize {
        5
    }

    fn max_retries(&self) -> Option<u32> {
        Some(0)
    }
}

#[test]
fn events_evicted_while_in_flight_are_counted_once() -> TestResult {
    // The caps evict a batch the sink is delivering: it is counted as evicted unsent
    // then, and as delivered (or dead-lettered) when the sink answers. It must end up in
    // one count only, so the counters balance.
    let (_dir, path) = temp_spool();
    let (entered_tx, entered) = crossbeam_channel::unbounded();
    let (go, go_rx) = crossbeam_channel::unbounded();
    let spool = Spool::builder(&path)
        .max_events(10)
        .sink(Gated {
            entered: entered_tx,
            go: go_rx,
        })
        .open()?;
    spool.append_batch((0..5).map(numbered).collect())?;
    assert_eq!(entered.recv_timeout(T)?, [1, 2, 3, 4, 5]);
    spool.append_batch((5..25).map(numbered).collect())?; // evicts 1..=15
    go.send(Ok(()))?; // 1..=5 delivered after all
    assert_eq!(entered.recv_timeout(T)?, [16, 17, 18, 19, 20]);
    spool.append_batch((25..35).map(numbered).collect())?; // evicts 16..=25
    go.send(Err(eventspool::DeliveryError::permanent("no")))?; // 16..=20 dead-lettered
    assert_eq!(entered.recv_timeout(T)?, [26, 27, 28, 29, 30]);
    go.send(Ok(()))?;
    assert_eq!(entered.recv_timeout(T)?, [31, 32, 33, 34, 35]);
    go.send(Ok(()))?;
    wait_until(T, "caught up", || sink_metrics(&spool, "gated").lag == 0);
    let m = sink_metrics(&spool, "gated");
    assert_eq!(
        (m.delivered, m.dead_lettered, m.evicted_unsent),
        (15, 5, 15),
        "1..=5, 26..=35 delivered; 16..=20 dead-lettered; 6..=15 and 21..=25 evicted: {m:?}"
    );
    assert_eq!(
        m.delivered + m.dead_lettered + m.evicted_unsent + m.filtered + m.lag,
        35,
        "{m:?}"
    );
    // The dead letters were saved although the caps had evicted them.
    let dead: Vec<u64> = spool
        .dead_letters("gated", 10)?
        .iter()
        .map(|d| d.event.seq)
        .collect();
    assert_eq!(dead, [16, 17, 18, 19, 20]);
    Ok(())
}

/// A sink that, at each call, looks in the spool file for its own committed cursor and
/// records it beside the seq it is handed (one event per call), once `gate` lets it
/// start.
struct Peeking {
    path: std::path::PathBuf,
    commit_every: usize,
    gate: Option<crossbeam_channel::Receiver<()>>,
    /// (seq handed over, cursor committed in the file at that moment)
    seen: std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>,
}

/// The cursor of `name` as committed in the spool file at `path`.
fn committed_cursor(path: &Path, name: &str) -> u64 {
    let conn = rusqlite::Connection::open(path).expect("open the spool file");
    conn.query_row(
        "SELECT acked FROM consumers WHERE name = ?1",
        [name],
        |row| row.get::<_, i64>(0),
    )
    .expect("the sink's cursor") as u64
}

impl eventspool::Sink for Peeking {
    fn name(&self) -> &str {
        "peeking"
    }

    fn commit_every(&self) -> usize {
        self.commit_every
    }

    fn deliver(
        &mut self,
        events: &[eventspool::StoredEvent],
    ) -> Result<(), eventspool::DeliveryError> {
        if let Some(gate) = self.gate.take() {
            let _ = gate.recv();
        }
        let committed = committed_cursor(&self.path, "peeking");
        self.seen.lock().unwrap().push((events[0].seq, committed));
        Ok(())
    }
}

#[test]
fn the_cursor_is_committed_after_every_request_or_every_n_with_commit_every() -> TestResult {
    // Whatever the durability, a sink's cursor is committed before its next request
    // goes out (a crash replays only the request in flight); with `commit_every(n)`,
    // after every n requests of a backlog (a crash replays at most n), and once the
    // sink has nothing more to send.
    const N: u64 = 40;
    for durability in [Durability::Normal, Durability::Full] {
        for every in [1u64, 4] {
            let (_dir, path) = temp_spool();
            let (open_gate, gate) = crossbeam_channel::bounded(1);
            let seen = std::sync::Arc::default();
            let sink = Peeking {
                path: path.clone(),
                commit_every: every as usize,
                gate: Some(gate),
                seen: std::sync::Arc::clone(&seen),
            };
            let spool = Spool::builder(&path)
                .durability(durability)
                .sink(sink)
                .open()?;
            spool.append_batch((0..N).map(numbered).collect())?;
            open_gate.send(())?;
            wait_until(T, "every event delivered", || {
                sink_metrics(&spool, "peeking").delivered == N
            });
            wait_until(T, "the cursor committed once the sink is idle", || {
                committed_cursor(&path, "peeking") == N
            });
            let seen = seen.lock().unwrap().clone();
            assert_eq!(seen.len() as u64, N, "{durability:?}, every {every}");
            // Requests delivered but not yet committed when each one went out.
            let uncommitted: Vec<u64> = seen.iter().map(|&(seq, at)| seq - 1 - at).collect();
            assert!(
                uncommitted.iter().all(|&u| u < every),
                "{durability:?}, every {every}: {uncommitted:?}"
            );
            assert_eq!(
                uncommitted.iter().max(),
                Some(&(every - 1)),
                "{durability:?}, every {every}: commits were not put off"
            );
            spool.close(Duration::from_secs(10))?;
        }
    }
    Ok(())
}

/// A sink taking one event per call that stops at its `at`-th call until `gate` lets it
/// go on, committing every `commit_every` requests.
struct StopsAt {
    at: usize,
    calls: usize,
    gate: crossbeam_channel::Receiver<()>,
    reached: crossbeam_channel::Sender<()>,
    commit_every: usize,
}

impl eventspool::Sink for StopsAt {
    fn name(&self) -> &str {
        "stops"
    }

    fn commit_every(&self) -> usize {
        self.commit_every
    }

    fn deliver(
        &mut self,
        _events: &[eventspool::StoredEvent],
    ) -> Result<(), eventspool::DeliveryError> {
        self.calls += 1;
        if self.calls == self.at {
            let _ = self.reached.send(());
            let _ = self.gate.recv();
        }
        Ok(())
    }
}

#[test]
fn counters_balance_when_the_caps_evict_what_was_delivered_but_not_committed() -> TestResult {
    // Two events delivered, their commit put off, the third in flight: the caps evict
    // all three (and more). Each is counted once, as delivered, not also as evicted.
    // The next event the sink gets comes after a gap: what was put off is committed
    // apart (the reader has it in hand by the time the sink goes on).
    for every in [1, 4] {
        let (_dir, path) = temp_spool();
        let (open_gate, gate) = crossbeam_channel::bounded(1);
        let (reached, at_gate) = crossbeam_channel::bounded(1);
        let sink = StopsAt {
            at: 3,
            calls: 0,
            gate,
            reached,
            commit_every: every,
        };
        let spool = Spool::builder(&path).max_events(10).sink(sink).open()?;
        spool.append_batch((0..3).map(numbered).collect())?;
        at_gate.recv_timeout(T)?;
        let read_before = sink_metrics(&spool, "stops").read_us;
        spool.append_batch((3..53).map(numbered).collect())?;
        wait_until(T, "the reader read what is left", || {
            sink_metrics(&spool, "stops").read_us > read_before
        });
        open_gate.send(())?;
        wait_until(T, "caught up", || sink_metrics(&spool, "stops").lag == 0);
        spool.close(Duration::from_secs(10))?;
        let m = sink_metrics(&spool, "stops");
        assert_eq!(
            m.delivered + m.dead_lettered + m.evicted_unsent + m.filtered + m.lag,
            53,
            "every {every}: {m:?}"
        );
        assert_eq!(m.delivered, 3 + 10, "every {every}: {m:?}");
        assert_eq!(m.evicted_unsent, 40, "every {every}: {m:?}");
    }
    Ok(())
}
