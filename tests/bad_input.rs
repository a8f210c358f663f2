//! Bad input gets a clear error, never a panic, and never touches what is stored.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use eventspool::{Error, Event, Spool};

const T: Duration = Duration::from_secs(10);

/// A spool holding events 0..3, so each test can check nothing was lost.
fn spool_with_three(path: &std::path::Path) -> Result<Spool, Error> {
    let spool = Spool::builder(path).max_event_bytes(1024).open()?;
    spool.append_batch((0..3).map(numbered).collect())?;
    Ok(spool)
}

fn assert_three_intact(spool: &Spool) {
    let numbers: Vec<u64> = all_events(spool).iter().map(number_of).collect();
    assert_eq!(numbers, [0, 1, 2], "stored events are intact");
}

#[test]
fn empty_event_type_is_refused() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = spool_with_three(&path)?;
    for result in [
        spool.emit(Event::new("", 1)),
        spool.append(Event::new("", 1)).map(drop),
    ] {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::InvalidEvent(_)), "{err}");
        assert_eq!(
            err.to_string(),
            "invalid event: event type must not be empty"
        );
    }
    spool.flush(T)?;
    assert_three_intact(&spool);
    assert_eq!(spool.metrics().rejected, 2);
    Ok(())
}

#[test]
fn data_that_does_not_serialize_is_refused() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = spool_with_three(&path)?;
    // JSON object keys must be strings: a map keyed by tuples cannot be serialized.
    let bad: HashMap<(i32, i32), i32> = [((1, 2), 3)].into();
    let err = spool.emit(Event::new("t", bad)).unwrap_err();
    assert!(err.to_string().contains("does not serialize"), "{err}");
    let err = spool.emit(Event::from_json("t", "{not json")).unwrap_err();
    assert!(err.to_string().contains("not valid JSON"), "{err}");
    spool.append(Event::from_json("t", r#"{"ok":true}"#))?;
    assert_eq!(spool.len()?, 4);
    Ok(())
}

#[test]
fn oversize_event_is_refused() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = spool_with_three(&path)?;
    let err = spool.append(Event::new("t", "x".repeat(2000))).unwrap_err();
    assert!(
        err.to_string().contains("larger than the limit of 1024"),
        "{err}"
    );
    let batch = vec![numbered(7), Event::new("t", "x".repeat(2000))];
    assert!(
        spool.append_batch(batch).is_err(),
        "one bad event refuses the batch"
    );
    spool.flush(T)?;
    assert_three_intact(&spool);
    Ok(())
}

#[test]
fn invalid_config_is_refused() -> TestResult {
    let (_dir, path) = temp_spool();
    let cases: Vec<(eventspool::SpoolBuilder, &str)> = vec![
        (Spool::builder(&path).batch_size(0), "batch_size"),
        (
            Spool::builder(&path).channel_capacity(0),
            "channel_capacity",
        ),
        (Spool::builder(&path).max_events(0), "max_events"),
        (Spool::builder(&path).max_bytes(0), "max_bytes"),
        (
            Spool::builder(&path).reader_pool_size(0),
            "reader_pool_size",
        ),
        (Spool::builder(&path).max_file_bytes(10), "max_file_bytes"),
        (Spool::builder(""), "path"),
    ];
    for (builder, field) in cases {
        let err = builder.open().unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
        assert!(err.to_string().contains(field), "{err} names {field}");
    }
    assert!(!path.exists(), "nothing was created");
    Ok(())
}

#[test]
fn a_second_open_in_this_process_fails_naming_the_path() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = spool_with_three(&path)?;
    let err = Spool::open(&path).unwrap_err();
    assert!(matches!(err, Error::Locked(_)), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()));
    assert_three_intact(&spool);
    spool.close(T)?;
    let again = Spool::open(&path)?;
    assert_three_intact(&again);
    Ok(())
}

#[test]
fn a_second_open_in_another_process_fails() -> TestResult {
    if let Ok(path) = std::env::var("EVENTSPOOL_LOCK_CHILD") {
        // Child: try to open the parent's spool and report the outcome.
        match Spool::open(&path) {
            Err(Error::Locked(_)) => std::process::exit(3),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => std::process::exit(0),
        }
    }
    let (_dir, path) = temp_spool();
    let spool = spool_with_three(&path)?;
    let status = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "a_second_open_in_another_process_fails",
            "--nocapture",
        ])
        .env("EVENTSPOOL_LOCK_CHILD", &path)
        .status()?;
    assert_eq!(status.code(), Some(3), "the child met Error::Locked");
    assert_three_intact(&spool);
    Ok(())
}

/// Opening `path` fails with `check`, and leaves the file byte for byte as it was.
fn assert_refused_untouched(path: &std::path::Path, check: impl Fn(&Error) -> bool) {
    let before = std::fs::read(path).expect("read");
    let err = Spool::open(path).unwrap_err();
    assert!(check(&err), "unexpected error: {err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read(path).expect("read"), before, "file untouched");
}

#[test]
fn a_file_of_garbage_is_not_a_spool() -> TestResult {
    let (_dir, path) = temp_spool();
    std::fs::write(&path, b"this is not a database, just some bytes")?;
    assert_refused_untouched(&path, |e| matches!(e, Error::NotASpool(_)));
    let big: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&path, big)?;
    assert_refused_untouched(&path, |e| matches!(e, Error::NotASpool(_)));
    Ok(())
}

#[test]
fn another_sqlite_database_is_not_a_spool() -> TestResult {
    let (_dir, path) = temp_spool();
    {
        let conn = rusqlite::Connection::open(&path)?;
        conn.execute_batch("CREATE TABLE users(name TEXT); INSERT INTO users VALUES ('a');")?;
    }
    assert_refused_untouched(&path, |e| matches!(e, Error::NotASpool(_)));
    Ok(())
}

#[test]
fn a_newer_schema_is_refused() -> TestResult {
    let (_dir, path) = temp_spool();
    spool_with_three(&path)?.close(T)?;
    rusqlite::Connection::open(&path)?.execute_batch("PRAGMA user_version = 99")?;
    assert_refused_untouched(&path, |e| {
        matches!(
            e,
            Error::NewerSchema {
                found: 99,
                supported: 2,
                ..
            }
        )
    });
    Ok(())
}

#[test]
fn a_corrupt_file_is_refused() -> TestResult {
    let (_dir, path) = temp_spool();
    spool_with_three(&path)?.close(T)?;
    // Keep SQLite's header, destroy the pages after it.
    let mut bytes = std::fs::read(&path)?;
    for b in &mut bytes[100..] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes)?;
    assert_refused_untouched(&path, |e| matches!(e, Error::Corrupt { .. }));
    Ok(())
}

#[test]
fn filtered_append_says_so() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::builder(&path)
        .filter(|e| e.event_type != "debug")
        .open()?;
    assert!(matches!(
        spool.append(Event::new("debug", 1)),
        Err(Error::Filtered)
    ));
    assert_eq!(
        spool.append_batch(vec![Event::new("debug", 1), Event::new("keep", 2)])?,
        vec![1]
    );
    assert_eq!(spool.metrics().filtered, 2);
    Ok(())
}

/// `SpoolConfig::validate` checks the webhooks too, as `open` does: an operator's
/// config tool can reject a file before any spool opens.
#[test]
fn validate_checks_every_webhook_entry() -> TestResult {
    let (_dir, path) = temp_spool();
    let hook = |extra: serde_json::Value| {
        let mut entry = serde_json::json!({"name": "a", "url": "http://127.0.0.1:9/hook"});
        entry
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        entry
    };
    let cases = [
        ("timeout", vec![hook(serde_json::json!({"timeout_ms": 0}))]),
        (
            "URL",
            vec![hook(serde_json::json!({"url": "ftp://example.test/x"}))],
        ),
        ("name", vec![hook(serde_json::json!({"name": ""}))]),
        (
            "two sinks",
            vec![hook(serde_json::json!({})), hook(serde_json::json!({}))],
        ),
        ("batch", vec![hook(serde_json::json!({"batch": 0}))]),
    ];
    for (what, sinks) in cases {
        let config: eventspool::SpoolConfig =
            serde_json::from_value(serde_json::json!({"path": path, "sinks": sinks}))?;
        match config.validate() {
            Err(Error::InvalidConfig(msg)) => assert!(msg.contains(what), "{what}: {msg}"),
            other => panic!("{what}: validate said {other:?}"),
        }
        assert!(matches!(
            Spool::from_config(&config),
            Err(Error::InvalidConfig(_))
        ));
    }
    assert!(!path.exists(), "nothing was created");
    Ok(())
}

/// The operator configs kept as fuzz seeds are valid, the concurrent sinks' settings
/// included, in JSON and in TOML.
#[test]
fn the_full_seed_configs_are_valid() -> TestResult {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let json: eventspool::SpoolConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config_json/full.json"))?)?;
    json.validate()?;
    assert_eq!(json.sinks[2].order, eventspool::Order::PerKey);
    assert_eq!(
        json.sinks[2].concurrency,
        eventspool::Concurrency::Adaptive { max: 64 }
    );
    assert_eq!(
        json.sinks[3].concurrency,
        eventspool::Concurrency::Fixed(16)
    );
    let toml: eventspool::SpoolConfig =
        toml::from_str(&std::fs::read_to_string(dir.join("config_toml/full.toml"))?)?;
    toml.validate()?;
    assert_eq!(toml.sinks[2].max_age_ms, Some(3_600_000));
    Ok(())
}

/// An error message says "invalid configuration" once, however deep the cause.
#[test]
fn a_bad_secret_is_named_once() -> TestResult {
    let (_dir, path) = temp_spool();
    let hook =
        eventspool::WebhookSink::new("audit", "http://127.0.0.1:9/").signing_secret("whsec_...");
    let err = Spool::builder(&path).sink(hook).open().unwrap_err();
    let text = err.to_string();
    assert_eq!(text.matches("invalid configuration").count(), 1, "{text}");
    assert!(
        text.contains("sink audit") && text.contains("whsec_"),
        "{text}"
    );
    Ok(())
}

/// The README's configuration example is a valid configuration.
#[test]
fn the_readme_config_is_valid() -> TestResult {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))?;
    let start = readme.find("```toml\n").expect("a TOML block") + "```toml\n".len();
    let end = start + readme[start..].find("```").expect("its end");
    let config: eventspool::SpoolConfig = toml::from_str(&readme[start..end])?;
    config.validate()?;
    assert_eq!(config.sinks[0].order, eventspool::Order::PerKey);
    Ok(())
}
