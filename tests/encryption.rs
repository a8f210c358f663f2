//! Encryption at rest (feature `encryption`, SQLCipher): no plaintext in the file or
//! its WAL, a clear `WrongKey` for every key that does not fit (file untouched, nothing
//! on stderr), `kill -9` while appending, re-keying an open spool, plain <-> encrypted
//! copies, and delivery and subscriptions on an encrypted file.
#![cfg(feature = "encryption")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::Server;
use common::*;
use eventspool::{
    EncryptionKey, Error, Event, EventQuery, SeekPosition, Spool, WebhookSink, decrypt_spool,
    encrypt_spool,
};
use serde_json::json;

const T: Duration = Duration::from_secs(30);
/// A string that must never reach the disk in the clear.
const MARKER: &str = "card-4111-1111-1111-1111";

fn raw_key(byte: u8) -> EncryptionKey {
    EncryptionKey::raw([byte; 32])
}

fn secret(n: u64) -> Event {
    Event::new("payment", json!({ "n": n, "card": MARKER }))
}

fn contains(path: &Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The bytes of the file and of whatever lies beside it (`-wal`, `-shm`).
fn snapshot(path: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let p = beside(path, suffix);
            let bytes = std::fs::read(&p).ok();
            (p, bytes)
        })
        .collect()
}

fn open(path: &Path, key: EncryptionKey) -> eventspool::Result<Spool> {
    Spool::builder(path).encryption_key(key).open()
}

#[test]
fn no_plaintext_in_the_file_or_its_wal_and_everything_back_with_the_key() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = open(&path, raw_key(7))?;
    let last = spool.append_batch((0..2_000).map(secret).collect())?;
    spool.flush(T)?;
    // While open the commits sit in the WAL.
    let wal = beside(&path, "-wal");
    assert!(std::fs::metadata(&wal)?.len() > 0, "the WAL holds commits");
    assert!(!contains(&wal, MARKER), "no plaintext in the WAL");
    assert!(!contains(&path, MARKER), "no plaintext in the file");
    assert!(
        !contains(&path, "SQLite format 3"),
        "not even SQLite's header"
    );
    spool.close(T)?;
    assert!(!contains(&path, MARKER));

    let spool = open(&path, raw_key(7))?;
    let events = all_events(&spool);
    assert_eq!(events.len(), 2_000);
    assert_eq!(events.last().map(|e| e.seq), last.last().copied());
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, e)| number_of(e) == i as u64)
    );
    spool.close(T)?;
    Ok(())
}

#[test]
fn a_passphrase_is_derived_once_and_opens_the_file_again() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = open(
        &path,
        EncryptionKey::passphrase("correct horse battery staple"),
    )?;
    spool.append(secret(0))?;
    spool.close(T)?;
    assert!(!contains(&path, MARKER));
    let spool = open(
        &path,
        EncryptionKey::passphrase("correct horse battery staple"),
    )?;
    assert_eq!(all_events(&spool).len(), 1);
    spool.close(T)?;
    let wrong = open(
        &path,
        EncryptionKey::passphrase("correct horse battery stapler"),
    );
    assert!(matches!(wrong, Err(Error::WrongKey { .. })), "{wrong:?}");
    let empty = open(&path, EncryptionKey::passphrase(""));
    assert!(matches!(empty, Err(Error::InvalidConfig(_))), "{empty:?}");
    Ok(())
}

/// Opens `path` as `how` says in a child process (so its stderr can be read), and
/// returns what the open said and what the child printed on stderr.
fn open_in_child(path: &Path, how: &str) -> (String, String) {
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "the_open_child", "--nocapture"])
        .env("EVENTSPOOL_KEY_CHILD", how)
        .env("EVENTSPOOL_KEY_PATH", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let said = stdout
        .lines()
        .find_map(|l| l.strip_prefix("OPEN: "))
        .unwrap_or("no answer")
        .to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| !l.starts_with("running ") && !l.is_empty())
        .map(str::to_owned)
        .collect::<Vec<_>>()
        .join("\n");
    (said, stderr)
}

/// The child of `open_in_child` (does nothing in a normal run).
#[test]
fn the_open_child() {
    let (Ok(how), Ok(path)) = (
        std::env::var("EVENTSPOOL_KEY_CHILD"),
        std::env::var("EVENTSPOOL_KEY_PATH"),
    ) else {
        return;
    };
    let outcome = match how.as_str() {
        "wrong" => open(Path::new(&path), raw_key(9)),
        "none" => Spool::open(&path),
        _ => open(Path::new(&path), raw_key(7)),
    };
    match outcome {
        Ok(spool) => {
            println!("OPEN: ok");
            spool.close(T).expect("close");
        }
        Err(e) => println!("OPEN: {e:?} | {e}"),
    }
}

#[test]
fn wrong_key_no_key_and_a_key_for_a_plain_file_are_wrong_key_quickly_and_touch_nothing()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let encrypted = dir.path().join("encrypted.db");
    let spool = open(&encrypted, raw_key(7))?;
    spool.append_batch((0..100).map(secret).collect())?;
    spool.close(T)?;
    let plain = dir.path().join("plain.db");
    let spool = Spool::open(&plain)?;
    spool.append(numbered(0))?;
    spool.close(T)?;

    let cases: [(&Path, &str, &str); 3] = [
        (&encrypted, "wrong", "does not decrypt"),
        (&encrypted, "none", "no key was given"),
        (&plain, "right", "not encrypted"),
    ];
    for (path, how, reason) in cases {
        let before = snapshot(path);
        let start = Instant::now();
        let outcome = match how {
            "wrong" => open(path, raw_key(9)),
            "none" => Spool::open(path),
            _ => open(path, raw_key(7)),
        };
        let took = start.elapsed();
        match outcome {
            Err(Error::WrongKey { path: p, reason: r }) => {
                assert_eq!(p, path);
                assert!(r.contains(reason), "{how}: {r}");
            }
            other => panic!("{how}: expected WrongKey, got {other:?}"),
        }
        assert!(took < Duration::from_secs(1), "{how}: took {took:?}");
        assert_eq!(
            snapshot(path),
            before,
            "{how}: the file and its neighbours are untouched"
        );
        // And SQLCipher printed nothing.
        let (said, stderr) = open_in_child(path, how);
        assert!(said.contains("WrongKey"), "{how}: {said}");
        assert!(stderr.is_empty(), "{how}: stderr has {stderr:?}");
        assert!(!said.contains(&"07".repeat(32)) && !said.contains(&"09".repeat(32)));
    }
    // The right key still opens it: nothing was lost.
    let spool = open(&encrypted, raw_key(7))?;
    assert_eq!(spool.len()?, 100);
    spool.close(T)?;
    Ok(())
}

/// Child: appends forever, printing each acknowledged seq.
fn append_child(path: &str) -> ! {
    let spool = open(Path::new(path), raw_key(7)).expect("child open");
    let mut out = std::io::stdout();
    for n in 0.. {
        let seq = spool.append(secret(n)).expect("append");
        use std::io::Write;
        writeln!(out, "{seq}").expect("stdout");
        out.flush().expect("flush");
    }
    unreachable!()
}

#[test]
fn kill_9_while_appending_to_an_encrypted_spool_loses_nothing_acknowledged() -> TestResult {
    if let Ok(path) = std::env::var("EVENTSPOOL_APPEND_CHILD") {
        append_child(&path);
    }
    let (_dir, path) = temp_spool();
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "--exact",
                "kill_9_while_appending_to_an_encrypted_spool_loses_nothing_acknowledged",
                "--nocapture",
            ])
            .env("EVENTSPOOL_APPEND_CHILD", &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut acked = Vec::new();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        while acked.len() < 300 {
            let line = lines.next().expect("the child goes on")?;
            if let Ok(seq) = line.trim().parse::<u64>() {
                acked.push(seq);
            }
        }
        child.kill()?; // SIGKILL, mid-append
        child.wait()?;
        let spool = open(&path, raw_key(7))?;
        let stored: std::collections::BTreeSet<u64> =
            all_events(&spool).iter().map(|e| e.seq).collect();
        for seq in &acked {
            assert!(
                stored.contains(seq),
                "round {round}: acknowledged seq {seq} lost"
            );
        }
        spool.close(T)?;
        assert!(!contains(&path, MARKER));
    }
    Ok(())
}

#[test]
fn rekey_on_an_open_spool_old_key_refused_new_key_opens_everything() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = open(&path, raw_key(1))?;
    spool.append_batch((0..500).map(secret).collect())?;
    let mut reader = spool.subscribe("reader", SeekPosition::Beginning)?;
    for _ in 0..10 {
        reader.next_timeout(T)?.expect("an event");
    }
    // Writers go on while the key changes.
    let writer = {
        let spool = spool.clone();
        std::thread::spawn(move || {
            for n in 500..1_500 {
                spool.emit(secret(n)).expect("emit");
            }
        })
    };
    spool.rekey(EncryptionKey::passphrase("the new one"))?;
    writer.join().expect("writer");
    spool.flush(T)?;
    // Readers go on under the new key.
    let mut read = 10;
    while reader.next_timeout(Duration::from_millis(200))?.is_some() {
        read += 1;
    }
    assert_eq!(read, 1_500);
    spool.rekey(raw_key(2))?;
    assert_eq!(
        spool.query(&EventQuery::default().limit(10_000))?.len(),
        1_500
    );
    spool.close(T)?;

    for old in [raw_key(1), EncryptionKey::passphrase("the new one")] {
        let refused = open(&path, old);
        assert!(
            matches!(refused, Err(Error::WrongKey { .. })),
            "{refused:?}"
        );
    }
    let spool = open(&path, raw_key(2))?;
    let events = all_events(&spool);
    assert_eq!(events.len(), 1_500);
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, e)| number_of(e) == i as u64)
    );
    spool.close(T)?;
    assert!(!contains(&path, MARKER));
    assert!(!contains(&beside(&path, "-wal"), MARKER));

    let plain = Spool::open(temp_spool().1)?;
    let refused = plain.rekey(raw_key(3));
    assert!(
        matches!(refused, Err(Error::InvalidConfig(_))),
        "{refused:?}"
    );
    Ok(())
}

#[test]
fn a_plain_spool_encrypted_and_back_by_copies() -> TestResult {
    let dir = tempfile::tempdir()?;
    let plain = dir.path().join("plain.db");
    let spool = Spool::open(&plain)?;
    spool.append_batch((0..300).map(secret).collect())?;
    let mut billing = spool.subscribe("billing", SeekPosition::Beginning)?;
    for _ in 0..100 {
        billing.next_timeout(T)?.expect("an event");
    }
    billing.ack(100)?;
    drop(billing);
    spool.close(T)?;
    let original = std::fs::read(&plain)?;

    let encrypted = dir.path().join("encrypted.db");
    let key = EncryptionKey::passphrase("move me");
    encrypt_spool(&plain, &encrypted, &key)?;
    assert_eq!(
        std::fs::read(&plain)?,
        original,
        "the source is not modified"
    );
    assert!(!contains(&encrypted, MARKER));
    let refused = encrypt_spool(&plain, &encrypted, &key);
    assert!(
        matches!(refused, Err(Error::InvalidConfig(_))),
        "never over a file: {refused:?}"
    );

    let spool = open(&encrypted, key.clone())?;
    assert_eq!(
        all_events(&spool).len(),
        200,
        "what all consumers acknowledged is deleted"
    );
    assert_eq!(
        spool
            .subscribe("billing", SeekPosition::LastAcknowledged)?
            .position(),
        100
    );
    spool.append(secret(300))?;
    spool.close(T)?;

    let back = dir.path().join("back.db");
    let wrong = decrypt_spool(&encrypted, &back, &EncryptionKey::passphrase("nope"));
    assert!(matches!(wrong, Err(Error::WrongKey { .. })), "{wrong:?}");
    decrypt_spool(&encrypted, &back, &key)?;
    assert!(contains(&back, "SQLite format 3"));
    let spool = Spool::open(&back)?;
    assert_eq!(all_events(&spool).len(), 201);
    spool.close(T)?;
    Ok(())
}

#[test]
fn delivery_and_subscriptions_work_on_an_encrypted_spool() -> TestResult {
    let server = Server::start();
    let (_dir, path) = temp_spool();
    let spool = Spool::builder(&path)
        .encryption_key(raw_key(5))
        .sink(WebhookSink::new("hook", server.url()).batch(50))
        .open()?;
    let mut sub = spool.subscribe("audit", SeekPosition::Beginning)?;
    for n in 0..200 {
        spool.emit(secret(n))?;
    }
    let requests = server.wait_requests(4, T);
    let delivered: usize = requests
        .iter()
        .map(|r| r.json().as_array().map_or(1, Vec::len))
        .sum();
    wait_until(T, "200 delivered", || {
        spool.metrics().sinks[0].delivered == 200
    });
    assert!(delivered >= 1);
    for n in 0..200 {
        let event = sub.next_timeout(T)?.expect("an event");
        assert_eq!(number_of(&event), n);
        sub.ack(event.seq)?;
    }
    spool.close(T)?;
    assert!(!contains(&path, MARKER));
    // The inspector reads it with the key, and refuses without.
    let inspector = eventspool::Inspector::open_with_key(&path, &raw_key(5)).expect("inspector");
    assert_eq!(
        inspector.stat().expect("stat").events,
        0,
        "all acknowledged, all deleted"
    );
    let refused = eventspool::Inspector::open(&path);
    assert!(
        matches!(refused, Err(Error::WrongKey { .. })),
        "{refused:?}"
    );
    Ok(())
}

#[test]
fn the_key_comes_from_an_environment_variable_or_a_file_never_from_the_config() -> TestResult {
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{}\n", "ab".repeat(32)))?;
    let path = dir.path().join("events.db");
    let text =
        format!("path = {path:?}\n[encryption]\nkey_file = {key_file:?}\nformat = \"hex\"\n");
    let config: eventspool::SpoolConfig = toml::from_str(&text)?;
    let spool = Spool::from_config(&config)?;
    spool.append(secret(0))?;
    spool.close(T)?;
    assert!(!contains(&path, MARKER));
    assert!(!format!("{config:?}").contains(&"ab".repeat(32)));
    let spool = open(&path, EncryptionKey::from_hex(&"AB".repeat(32))?)?;
    assert_eq!(spool.len()?, 1);
    spool.close(T)?;

    // A passphrase from the environment (a variable only this test sets).
    let path = dir.path().join("env.db");
    // SAFETY: no other thread of this test binary reads this variable.
    unsafe { std::env::set_var("EVENTSPOOL_TEST_PASSPHRASE", "from the environment") };
    let text = format!("path = {path:?}\n[encryption]\nkey_env = \"EVENTSPOOL_TEST_PASSPHRASE\"\n");
    let spool = Spool::from_config(&toml::from_str(&text)?)?;
    spool.append(secret(0))?;
    spool.close(T)?;
    let spool = open(&path, EncryptionKey::passphrase("from the environment"))?;
    assert_eq!(spool.len()?, 1);
    spool.close(T)?;

    let text = format!("path = {path:?}\n[encryption]\nkey_env = \"EVENTSPOOL_TEST_UNSET\"\n");
    let err = Spool::from_config(&toml::from_str(&text)?).unwrap_err();
    assert!(err.to_string().contains("EVENTSPOOL_TEST_UNSET"), "{err}");
    let text = format!("path = {path:?}\n[encryption]\nkey = \"hunter2\"\n");
    assert!(
        toml::from_str::<eventspool::SpoolConfig>(&text).is_err(),
        "no key in the config"
    );
    for bad in ["ab", &"zz".repeat(32)] {
        let err = EncryptionKey::from_hex(bad).unwrap_err().to_string();
        assert!(
            !err.contains(bad),
            "the message does not repeat the key: {err}"
        );
    }
    Ok(())
}

#[test]
fn a_file_deleted_under_an_encrypted_spool_is_saved_back_encrypted() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = open(&path, raw_key(4))?;
    spool.append_batch((0..100).map(secret).collect())?;
    std::fs::remove_file(&path)?;
    match spool.close(T) {
        Err(Error::FileGone { rescued, .. }) => {
            assert_eq!(rescued.as_deref(), Some(path.as_path()))
        }
        other => panic!("expected FileGone, got {other:?}"),
    }
    assert!(
        !contains(&path, MARKER),
        "the rescued copy is encrypted too"
    );
    let spool = open(&path, raw_key(4))?;
    assert_eq!(all_events(&spool).len(), 100);
    spool.close(T)?;
    Ok(())
}

#[test]
fn rekey_while_a_sink_delivers_loses_nothing() -> TestResult {
    let server = Server::start();
    let (_dir, path) = temp_spool();
    let spool = Spool::builder(&path)
        .encryption_key(raw_key(1))
        .sink(WebhookSink::new("hook", server.url()).batch(20))
        .open()?;
    let writer = {
        let spool = spool.clone();
        std::thread::spawn(move || {
            for n in 0..3_000 {
                spool.emit(secret(n)).expect("emit");
            }
        })
    };
    for byte in 2..5 {
        spool.rekey(raw_key(byte))?;
    }
    writer.join().expect("writer");
    wait_until(T, "3 000 delivered", || {
        spool.metrics().sinks[0].delivered == 3_000
    });
    let sink = &spool.metrics().sinks[0];
    assert_eq!(sink.dead_lettered, 0, "{sink:?}");
    spool.close(T)?;
    // The last key opens it, and the sink's cursor is at the end.
    let inspector = eventspool::Inspector::open_with_key(&path, &raw_key(4))?;
    let hook = inspector
        .consumers()?
        .into_iter()
        .find(|c| c.name == "hook");
    assert_eq!(hook.map(|c| c.position), Some(3_000));
    Ok(())
}

#[test]
fn the_sqlcipher_settings_the_readme_names_open_it_and_repair_works_with_the_key() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = open(&path, EncryptionKey::passphrase("shell"))?;
    spool.append_batch((0..5).map(secret).collect())?;
    spool.subscribe("audit", SeekPosition::Beginning)?;
    spool.close(T)?;
    // What the README tells a user of the `sqlcipher` shell, here through rusqlite.
    let conn = rusqlite::Connection::open(&path)?;
    conn.execute_batch(
        "PRAGMA key = 'shell'; PRAGMA cipher_page_size = 16384;
         PRAGMA cipher_hmac_algorithm = HMAC_SHA256;",
    )?;
    let count: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
    assert_eq!(count, 5);
    conn.execute_batch("UPDATE events SET data = 'not json' WHERE seq = 2;")?; // damage
    drop(conn);
    let key = EncryptionKey::passphrase("shell");
    assert!(
        !eventspool::Inspector::open_with_key(&path, &key)?
            .check()?
            .is_healthy()
    );
    let report = eventspool::repair_with_key(&path, &key)?;
    assert_eq!(report.moved.len(), 1);
    assert!(report.after.is_healthy());
    assert!(matches!(
        eventspool::repair(&path),
        Err(Error::WrongKey { .. })
    ));
    assert!(!contains(&path, MARKER));
    Ok(())
}
