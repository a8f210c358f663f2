//! The `eventspool` command against real spool files: made by the library here, one
//! owned by a running child process (the command's own `forward`), one with damaged
//! rows, one left by `kill -9`. Output and exit status are checked, `--json` parsed back.
#![cfg(feature = "cli")]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::http::Server;
use common::*;
use eventspool::{EventQuery, Inspector, SeekPosition, Spool, StoredEvent};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(20);

fn eventspool() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventspool"));
    command.env("EVENTSPOOL_LOG", "warn");
    command
}

fn run(args: &[&str]) -> Output {
    eventspool().args(args).output().expect("run eventspool")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "eventspool {args:?} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs a command that must fail with status 1; returns its stdout and stderr.
fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "eventspool {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout) + &text(&out.stderr)
}

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// 30 events (10 of them `order.paid`), a consumer group `billing` that acked 5, and a
/// sink `audit` that dead-lettered every one.
fn sample_spool(path: &Path) -> TestResult {
    let spool = Spool::builder(path)
        .sink(common::sinks::Refuses("audit"))
        .open()?;
    spool.seek("billing", SeekPosition::LastAcknowledged)?;
    for n in 0..30u64 {
        let kind = if n % 3 == 0 {
            "order.paid"
        } else {
            "order.created"
        };
        let event =
            eventspool::Event::new(kind, json!({"n": n})).subject(format!("order/{}", n % 4));
        spool.append(event)?;
    }
    spool.ack("billing", 5)?;
    wait_until(T, "audit dead-lettered all 30", || {
        spool.dead_letters("audit", 100).map_or(0, |d| d.len()) == 30
    });
    spool.close(T)?;
    Ok(())
}

#[test]
fn every_subcommand_has_help() {
    for command in [
        "stat",
        "tail",
        "query",
        "dead",
        "consumers",
        "check",
        "export",
        "import",
        "forward",
    ] {
        let help = ok(&[command, "--help"]);
        assert!(help.contains("Usage: eventspool"), "{command}: {help}");
    }
    let out = run(&["stat"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing argument is a usage error"
    );
}

#[test]
fn stat_tells_counts_cursors_and_dead_letters_in_text_and_json() -> TestResult {
    let (_dir, path) = temp_spool();
    sample_spool(&path)?;
    let out = ok(&["stat", p(&path)]);
    // 1..=5 are gone: every consumer had them (audit dead-lettered them, billing acked).
    assert!(out.contains("events    25 (seq 6..30)"), "{out}");
    assert!(out.contains("billing"), "{out}");
    assert!(out.contains("durability normal"), "{out}");
    let stat: Value = serde_json::from_str(&ok(&["stat", p(&path), "--json"]))?;
    assert_eq!(stat["events"], 25);
    assert_eq!(stat["last_seq"], 30);
    let billing = stat["consumers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "billing"))
        .expect("billing listed");
    assert_eq!(
        (billing["position"].as_u64(), billing["lag"].as_u64()),
        (Some(5), Some(25))
    );
    assert_eq!(stat["dead_letters_by_sink"][0]["sink"], "audit");
    assert!(stat["dead_letters"].as_u64() > Some(0));
    Ok(())
}

#[test]
fn tail_query_and_dead_letters_read_what_the_library_wrote() -> TestResult {
    let (_dir, path) = temp_spool();
    sample_spool(&path)?;
    let tail = ok(&["tail", p(&path), "-n", "2"]);
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 2, "{tail}");
    assert!(lines[1].trim_start().starts_with("30 "), "{tail}");
    let paid = ok(&[
        "tail",
        p(&path),
        "-n",
        "2",
        "--type",
        "order.paid",
        "--json",
    ]);
    let seqs: Vec<u64> = paid
        .lines()
        .map(|l| serde_json::from_str::<StoredEvent>(l).map(|e| e.seq))
        .collect::<Result<_, _>>()?;
    assert_eq!(seqs, [25, 28], "the newest two of that type");

    let query = ok(&[
        "query",
        p(&path),
        "--type",
        "order.p*",
        "--subject",
        "order/0",
        "--after-seq",
        "5",
    ]);
    let events: Vec<StoredEvent> = query
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e.event_type == "order.paid" && e.seq > 5)
    );
    assert_eq!(
        ok(&["query", p(&path), "--since", "1h", "--limit", "3"])
            .lines()
            .count(),
        3
    );
    assert_eq!(
        ok(&["query", p(&path), "--until", "1970-01-02T00:00:00Z"]),
        ""
    );
    let bad = fails(&["query", p(&path), "--since", "yesterday"]);
    assert!(bad.contains("neither a time"), "{bad}");

    let letters: Value = serde_json::from_str(&ok(&["dead", p(&path), "list", "audit", "--json"]))?;
    let first = &letters[0];
    assert_eq!(first["event"]["seq"], 1);
    assert!(
        first["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("no, thanks"),
        "{first}"
    );
    let shown = ok(&["dead", p(&path), "show", "audit", "--limit", "1"]);
    assert!(
        shown.contains("seq 1") && shown.contains("error:"),
        "{shown}"
    );
    let consumers: Value = serde_json::from_str(&ok(&["consumers", p(&path), "list", "--json"]))?;
    assert!(
        consumers.as_array().is_some_and(|c| c.len() == 2),
        "{consumers}"
    );
    Ok(())
}

#[test]
fn dead_letters_and_consumers_change_through_the_command() -> TestResult {
    let (_dir, path) = temp_spool();
    sample_spool(&path)?;
    let requeued = ok(&["dead", p(&path), "requeue", "audit"]);
    assert!(requeued.starts_with("requeued "), "{requeued}");
    assert!(ok(&["dead", p(&path), "purge", "audit", "--older-than", "1h"]).contains("purged 0"));
    assert!(ok(&["dead", p(&path), "purge", "audit"]).starts_with("purged "));
    assert!(ok(&["consumers", p(&path), "seek", "billing", "12"]).contains("after seq 12"));
    let bad = fails(&["consumers", p(&path), "seek", "billing", "soon"]);
    assert!(bad.contains("none of beginning, latest or a seq"), "{bad}");
    ok(&["consumers", p(&path), "remove", "audit"]);
    assert!(
        fails(&["consumers", p(&path), "remove", "nobody"]).contains("no consumer named nobody")
    );
    let inspector = Inspector::open(&path)?;
    let consumers = inspector.consumers()?;
    assert_eq!(consumers.len(), 1);
    assert_eq!(
        (consumers[0].name.as_str(), consumers[0].position),
        ("billing", 12)
    );
    assert!(inspector.dead_letters("audit", 10)?.is_empty());
    let missing = path.with_file_name("missing.db");
    assert!(fails(&["dead", p(&missing), "requeue", "audit"]).contains("no spool file at"));
    assert!(
        !missing.exists(),
        "a mutating command does not make a spool"
    );
    Ok(())
}

#[test]
fn check_finds_damage_and_repair_leaves_a_healthy_file_with_every_undamaged_event() -> TestResult {
    let (_dir, path) = temp_spool();
    sample_spool(&path)?;
    assert!(ok(&["check", p(&path)]).contains("healthy"));
    rusqlite::Connection::open(&path)?.execute_batch(
        "UPDATE events SET data = '{\"n\": 1, broken' WHERE seq = 8;
         UPDATE events SET data = x'ff00fe' WHERE seq = 9;
         UPDATE state SET stored_bytes = 1;",
    )?;
    let found = fails(&["check", p(&path)]);
    assert!(
        found.contains("seq 8 is damaged") && found.contains("seq 9 is damaged"),
        "{found}"
    );
    assert!(found.contains("stored_bytes is recorded as 1"), "{found}");
    let report: Value = serde_json::from_str(&text(&run(&["check", p(&path), "--json"]).stdout))?;
    assert_eq!(report["problems"].as_array().map(Vec::len), Some(3));

    let repaired = ok(&["check", p(&path), "--repair"]);
    assert!(
        repaired.contains("moved seq 8 to the dead letters of billing"),
        "{repaired}"
    );
    assert!(repaired.ends_with("healthy\n"), "{repaired}");
    assert!(ok(&["check", p(&path)]).contains("healthy"));
    let spool = Spool::open(&path)?;
    let seqs: Vec<u64> = all_events(&spool).iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (6..=30).filter(|s| *s != 8 && *s != 9).collect();
    assert_eq!(seqs, expected, "every undamaged event is still there");
    let dead: Vec<u64> = spool
        .dead_letters("billing", 10)?
        .iter()
        .map(|d| d.event.seq)
        .collect();
    assert_eq!(dead, [8, 9]);
    spool.close(T)?;

    let garbage = path.with_file_name("garbage.db");
    std::fs::write(&garbage, vec![1u8; 8192])?;
    assert!(fails(&["check", p(&garbage)]).contains("not a spool"));
    Ok(())
}

#[test]
fn check_and_repair_after_a_crash_that_lost_the_wal() -> TestResult {
    let (_dir, path) =
        crash_with_commits_in_the_wal("check_and_repair_after_a_crash_that_lost_the_wal");
    std::fs::remove_file(beside(&path, "-wal"))?;
    let found = fails(&["check", p(&path)]);
    assert!(found.contains("write-ahead log lost"), "{found}");
    let repaired = ok(&["check", p(&path), "--repair"]);
    assert!(repaired.contains("skipped"), "{repaired}");
    assert!(ok(&["check", p(&path)]).contains("healthy"));
    Ok(())
}

#[test]
fn export_import_round_trip_keeps_events_order_and_ids_and_reports_bad_lines() -> TestResult {
    let (dir, path) = temp_spool();
    sample_spool(&path)?;
    let exported = run(&["export", p(&path)]);
    assert!(exported.status.success());
    assert!(
        exported.stderr.is_empty(),
        "quiet when piped: {}",
        text(&exported.stderr)
    );
    let copy = dir.path().join("copy.db");
    let mut lines = exported.stdout.clone();
    lines.extend_from_slice(b"{\"type\": \"ok.after.bad\", \"data\": [1]}\n");
    lines.splice(0..0, b"not json\n{\"type\": \"\"}\n".iter().copied());
    let mut import = eventspool()
        .args(["import", p(&copy)])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let fed = import.stdin.take().expect("piped").write_all(&lines);
    let out = import.wait_with_output()?;
    fed?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "bad lines make it fail after the good ones"
    );
    let err = text(&out.stderr);
    assert!(err.contains("line 1: rejected: not an event"), "{err}");
    assert!(
        err.contains("line 2: rejected: event type must not be empty"),
        "{err}"
    );
    assert!(err.contains("imported 26 events"), "{err}");

    let original = all_events(&Spool::open(&path)?);
    let copied = Spool::open(&copy)?.query(&EventQuery::new().limit(usize::MAX))?;
    assert_eq!(copied.len(), original.len() + 1);
    for (a, b) in original.iter().zip(&copied) {
        assert_eq!(
            (
                &a.id,
                &a.event_type,
                &a.subject,
                a.timestamp_ms,
                a.data.get()
            ),
            (
                &b.id,
                &b.event_type,
                &b.subject,
                b.timestamp_ms,
                b.data.get()
            ),
            "same event, same place, same id"
        );
    }
    assert_eq!(
        copied.last().map(|e| e.event_type.as_str()),
        Some("ok.after.bad")
    );
    Ok(())
}

#[test]
fn tail_follow_prints_new_commits_as_they_come() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::open(&path)?;
    spool.append(numbered(0))?;
    let mut tail = Reaped(
        eventspool()
            .args(["tail", "-f", "--json", p(&path)])
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut lines = BufReader::new(tail.0.stdout.take().expect("piped")).lines();
    let first: StoredEvent = serde_json::from_str(&lines.next().expect("a line")?)?;
    assert_eq!(first.seq, 1);
    for n in 1..5 {
        spool.append(numbered(n))?;
    }
    for seq in 2..=5 {
        let event: StoredEvent = serde_json::from_str(&lines.next().expect("followed")?)?;
        assert_eq!(event.seq, seq);
    }
    drop(tail);
    spool.close(T)?;
    Ok(())
}

/// A forward configuration: the spool at `path`, one webhook to `url` in batches.
fn forward_config(dir: &Path, path: &Path, url: &str) -> std::path::PathBuf {
    let config = dir.join("forward.toml");
    let text = format!(
        "path = {path:?}\n\n[forward]\nclose_timeout_ms = 20000\n\n\
         [[sinks]]\nname = \"hook\"\nurl = {url:?}\nbatch = 100\nbackoff_min_ms = 5\nbackoff_max_ms = 50\n"
    );
    std::fs::write(&config, text).expect("config");
    config
}

/// A child process that is killed and reaped when the test ends, however it ends.
struct Reaped(Child);

impl Reaped {
    /// Waits for it to end: its status and what it wrote on stderr.
    fn finish(&mut self) -> (std::process::ExitStatus, String) {
        let status = self.0.wait().expect("wait");
        let mut err = String::new();
        if let Some(mut pipe) = self.0.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut err).expect("stderr");
        }
        (status, err)
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([name, &self.0.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill {name}");
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn forward(config: &Path) -> Reaped {
    let child = eventspool()
        .args(["forward", "--config", p(config)])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn forward");
    Reaped(child)
}

fn event_line(n: u64) -> String {
    format!(
        "{{\"type\": \"line\", \"data\": {{\"n\": {n}}}, \"subject\": \"s/{}\"}}\n",
        n % 7
    )
}

/// The `n` of every event the receiver accepted, in the order it got them.
fn received(server: &Server) -> Vec<u64> {
    server
        .requests()
        .iter()
        .filter(|r| r.reply == common::http::Reply::ok())
        .flat_map(|r| r.json().as_array().cloned().unwrap_or_default())
        .map(|e| e["data"]["n"].as_u64().unwrap_or(u64::MAX))
        .collect()
}

fn committed(path: &Path) -> u64 {
    Inspector::open(path)
        .and_then(|i| i.stat())
        .map_or(0, |s| s.last_seq)
}

#[test]
fn forward_delivers_every_line_in_order_and_closes_on_sigterm() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.db");
    let server = Server::start();
    let config = forward_config(dir.path(), &path, &server.url());
    let mut child = forward(&config);
    let mut stdin = child.0.stdin.take().expect("piped");
    let lines: String = (0..10_000).map(event_line).collect();
    stdin.write_all(lines.as_bytes())?;
    // Read beside the running forwarder: it owns the file.
    wait_until(T, "10 000 lines committed", || committed(&path) == 10_000);
    let stat = ok(&["stat", p(&path)]);
    assert!(stat.contains("10000"), "{stat}");
    let locked = fails(&["dead", p(&path), "requeue", "hook"]);
    assert!(
        locked.contains("locked") && locked.contains("events.db.lock"),
        "{locked}"
    );
    assert!(fails(&["consumers", p(&path), "seek", "hook", "0"]).contains("locked"));
    assert!(fails(&["check", p(&path), "--repair"]).contains("locked"));
    assert!(fails(&["import", p(&path), "/dev/null"]).contains("locked"));

    child.signal("-TERM");
    let (status, err) = child.finish();
    assert!(status.success(), "forward ended badly: {err}");
    drop(stdin);
    assert_eq!(
        received(&server),
        (0..10_000).collect::<Vec<_>>(),
        "every line, in order"
    );
    Ok(())
}

#[test]
fn forward_killed_mid_stream_loses_nothing_it_committed() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.db");
    let server = Server::with_script(|_| common::http::Reply::status(503)); // holds the backlog
    let config = forward_config(dir.path(), &path, &server.url());
    let mut child = forward(&config);
    let mut stdin = child.0.stdin.take().expect("piped");
    let lines: String = (0..5_000).map(event_line).collect();
    stdin.write_all(lines.as_bytes())?;
    wait_until(T, "some lines committed", || committed(&path) >= 2_000);
    child.signal("-KILL"); // mid-stream
    child.finish();
    drop(stdin);
    // The file a kill -9 left: readable, healthy, holding what was committed.
    let seen = committed(&path);
    assert!(seen >= 2_000);
    assert!(ok(&["check", p(&path)]).contains("healthy"));
    let stat: Value = serde_json::from_str(&ok(&["stat", p(&path), "--json"]))?;
    assert_eq!(stat["last_seq"].as_u64(), Some(seen));

    // Restarted with no input: it delivers what the first run committed, then closes.
    server.set_script(|_| common::http::Reply::ok());
    let restart = eventspool()
        .args(["forward", "--config", p(&config)])
        .stdin(Stdio::null())
        .output()?;
    assert!(restart.status.success(), "{}", text(&restart.stderr));
    let mut got = received(&server);
    got.dedup();
    let delivered: std::collections::BTreeSet<u64> = got.iter().copied().collect();
    assert!(
        (0..seen).all(|n| delivered.contains(&n)),
        "every committed line arrived"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    Ok(())
}

#[test]
fn forward_reads_lines_from_a_unix_socket_named_in_the_config() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.db");
    let socket = dir.path().join("in.sock");
    let server = Server::start();
    let config = forward_config(dir.path(), &path, &server.url());
    let with_socket = std::fs::read_to_string(&config)?.replace(
        "[forward]\n",
        &format!(
            "[forward]\nsocket = {:?}\n",
            socket.to_str().expect("UTF-8")
        ),
    );
    std::fs::write(&config, with_socket)?;
    let mut child = forward(&config);
    wait_until(T, "the socket is listening", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    for part in [0..500u64, 500..1000] {
        let mut connection = std::os::unix::net::UnixStream::connect(&socket)?;
        let lines: String = part.map(event_line).collect();
        connection.write_all(lines.as_bytes())?;
    }
    wait_until(T, "1 000 lines committed", || committed(&path) == 1_000);
    child.signal("-TERM");
    let (status, err) = child.finish();
    assert!(status.success(), "{err}");
    let mut got = received(&server);
    got.sort_unstable();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
    Ok(())
}

#[cfg(feature = "encryption")]
#[test]
fn encrypted_spools_read_with_a_key_from_a_file_rekeyed_encrypted_and_decrypted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (old, new) = (dir.path().join("old.key"), dir.path().join("new.key"));
    std::fs::write(&old, "first passphrase\n")?;
    std::fs::write(&new, format!("{}\n", "5a".repeat(32)))?;
    let path = dir.path().join("secret.db");
    let spool = Spool::builder(&path)
        .encryption_key(eventspool::EncryptionKey::passphrase("first passphrase"))
        .open()?;
    spool.append_batch((0..5).map(numbered).collect())?;
    spool.close(T)?;

    let refused = fails(&["stat", p(&path)]);
    assert!(
        refused.contains("wrong key") && refused.contains("no key was given"),
        "{refused}"
    );
    let stat = ok(&["stat", p(&path), "--json", "--key-file", p(&old)]);
    assert_eq!(serde_json::from_str::<Value>(&stat)?["events"], 5);
    ok(&[
        "rekey",
        p(&path),
        "--key-file",
        p(&old),
        "--new-key-file",
        p(&new),
        "--new-key-format",
        "hex",
    ]);
    let refused = fails(&["stat", p(&path), "--key-file", p(&old)]);
    assert!(refused.contains("does not decrypt"), "{refused}");
    let exported = ok(&[
        "export",
        p(&path),
        "--key-file",
        p(&new),
        "--key-format",
        "hex",
    ]);
    assert_eq!(exported.lines().count(), 5);

    let plain = dir.path().join("plain.db");
    ok(&[
        "decrypt",
        p(&path),
        p(&plain),
        "--key-file",
        p(&new),
        "--key-format",
        "hex",
    ]);
    assert!(
        ok(&["stat", p(&plain), "--json"]).contains("\"events\": 5") || {
            let v: Value = serde_json::from_str(&ok(&["stat", p(&plain), "--json"]))?;
            v["events"] == 5
        }
    );
    let again = dir.path().join("again.db");
    ok(&["encrypt", p(&plain), p(&again), "--key-file", p(&old)]);
    let stat = ok(&["stat", p(&again), "--json", "--key-file", p(&old)]);
    assert_eq!(serde_json::from_str::<Value>(&stat)?["events"], 5);
    let missing = fails(&["encrypt", p(&plain), p(&dir.path().join("x.db"))]);
    assert!(missing.contains("--key-env or --key-file"), "{missing}");
    Ok(())
}
