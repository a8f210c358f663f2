//! A mutation fuzzer for every input that comes from outside the process: operator
//! configs (JSON and TOML), `Retry-After` headers, signature headers, the bytes of a
//! stored event as read back from the file, and (feature `nats`) what a NATS server
//! says to the NATS sink.
//!
//! cargo-fuzz needs a nightly toolchain, which CI does not have, so this is a plain
//! binary (`harness = false`) that `cargo test` runs for a few seconds:
//!
//! ```text
//! cargo test --release --test fuzz -- --seconds 600 [--target stored_row] [--seed 42]
//! ```
//!
//! Each target first runs every file of its seed corpus (`tests/corpus/<target>/`) as
//! it is, then mutated inputs (bit flips, interesting bytes, inserted tokens, deleted or
//! repeated ranges, splices of two inputs) until its share of the time is up. A panic or
//! a broken property writes the input to `target/fuzz-failures/<target>-<seed>` and
//! fails the run; copy that file into the corpus to keep it as a regression input.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use common::{Rng, arg, clock_seed};
use eventspool::{SigningSecret, Sink, Spool, SpoolConfig, parse_retry_after, verify};

/// Checks one input: `Err` names a broken property. A panic is caught by the caller.
type Check = Box<dyn FnMut(&[u8]) -> Result<(), String>>;
/// A target: its name, and how to make its check.
type Target = (&'static str, fn() -> Check);

/// Tokens the mutator inserts: the punctuation and words of the formats under test.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"=",
    b"\n",
    b"null",
    b"true",
    b"1e999",
    b"-0",
    b"\\u0000",
    b"\\ud800",
    b"\xff",
    b"\xc3",
    b"GMT",
    b"v1,",
    b"whsec_",
    b"[[sinks]]",
    b"path",
    b"max_events",
    b"overflow",
    b"block_for_ms",
    b"url",
    b"http://",
    b"headers",
    b"signing_secret",
    b"9999999999999999999999",
    b"\r\n",
    b"MSG $INBOX.0 1 ",
    b"HMSG $INBOX.r1 1 ",
    b"NATS/1.0 503",
    b"PING\r\n",
    b"-ERR ",
    b"\"last_seq\":",
    b"\"error\":",
];

fn main() -> ExitCode {
    let seconds: f64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(6.0);
    let seed: u64 = arg("--seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(clock_seed);
    let only = arg("--target");
    let targets: Vec<Target> = vec![
        ("config_json", || Box::new(config_json)),
        ("config_toml", || Box::new(config_toml)),
        ("retry_after", || Box::new(retry_after)),
        ("signature", || Box::new(signature)),
        ("stored_row", stored_row),
        #[cfg(feature = "nats")]
        ("nats_server", nats_server),
    ];
    let chosen: Vec<_> = targets
        .into_iter()
        .filter(|(name, _)| only.as_deref().is_none_or(|o| o == *name))
        .collect();
    if chosen.is_empty() {
        eprintln!("fuzz: no target named {only:?}");
        return ExitCode::FAILURE;
    }
    println!("fuzz: {seconds} s, --seed {seed}");
    let share = Duration::from_secs_f64(seconds / chosen.len() as f64);
    let mut failed = false;
    for (name, make) in chosen {
        let mut rng = Rng(seed | 1);
        match fuzz(name, make(), share, &mut rng) {
            Ok(runs) => println!("fuzz {name}: {runs} inputs, no failure"),
            Err(message) => {
                eprintln!("fuzz {name}: FAILED: {message}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target)
}

/// Runs the corpus, then mutations until `budget` is spent. Returns the inputs run.
fn fuzz(target: &str, mut check: Check, budget: Duration, rng: &mut Rng) -> Result<u64, String> {
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(corpus_dir(target))
        .map_err(|e| format!("no seed corpus: {e}"))?
        .map(|entry| entry.and_then(|e| std::fs::read(e.path())))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read the corpus: {e}"))?;
    corpus.sort();
    if corpus.is_empty() {
        return Err("the seed corpus is empty".into());
    }
    let deadline = Instant::now() + budget;
    let mut runs = 0u64;
    let mut next = 0usize;
    loop {
        let input = if next < corpus.len() {
            next += 1;
            corpus[next - 1].clone()
        } else if Instant::now() < deadline {
            mutate(rng, &corpus)
        } else {
            return Ok(runs);
        };
        runs += 1;
        let outcome = catch_unwind(AssertUnwindSafe(|| check(&input)))
            .unwrap_or_else(|_| Err("panicked (message above)".into()));
        if let Err(message) = outcome {
            let saved = save_failure(target, &input);
            return Err(format!(
                "{message}\n  input: {:?}\n  saved to {}",
                String::from_utf8_lossy(&input),
                saved.display()
            ));
        }
    }
}

fn save_failure(target: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let path = dir.join(format!("{target}-{stamp}"));
    let _ = std::fs::write(&path, input);
    path
}

/// A corpus entry changed by one to four random edits.
fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    const INTERESTING: &[u8] = b"\0\x7f\x80\xff\"\\{}[],:0- \t\n";
    let mut input = corpus[rng.below(corpus.len() as u64) as usize].clone();
    for _ in 0..=rng.below(4) {
        let len = input.len() as u64;
        let at = rng.below(len + 1) as usize;
        let last = at.min(input.len().saturating_sub(1));
        match rng.below(8) {
            0 if len > 0 => input[last] ^= 1 << rng.below(8),
            1 if len > 0 => input[last] = INTERESTING[rng.below(INTERESTING.len() as u64) as usize],
            2 => input.insert(at, rng.below(256) as u8),
            3 => {
                let end = (at + 1 + rng.below(8) as usize).min(input.len());
                input.drain(at.min(end)..end);
            }
            4 => {
                let end = (at + 1 + rng.below(16) as usize).min(input.len());
                let range = input[at.min(end)..end].to_vec();
                input.splice(at..at, range);
            }
            5 => {
                let token = TOKENS[rng.below(TOKENS.len() as u64) as usize];
                input.splice(at..at, token.iter().copied());
            }
            6 => {
                let other = &corpus[rng.below(corpus.len() as u64) as usize];
                let from = rng.below(other.len() as u64 + 1) as usize;
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            _ => input.truncate(at),
        }
    }
    input.truncate(4096);
    input
}

/// An operator's config: parsed, validated, its sinks built and checked, or refused;
/// `Debug` output does not depend on a signing secret's value.
fn check_config(config: SpoolConfig) -> Result<(), String> {
    let _ = config.validate();
    let mut other = config.clone();
    for sink in &mut other.sinks {
        if let Some(secret) = &mut sink.signing_secret {
            *secret = format!("{secret}-other");
        }
    }
    if format!("{config:?}") != format!("{other:?}") {
        return Err("a signing secret shows in the config's Debug output".into());
    }
    for (sink, other) in config.sinks.iter().zip(&other.sinks) {
        let built = sink.to_sink();
        let _ = Sink::check(&built);
        if format!("{built:?}") != format!("{:?}", other.to_sink()) {
            return Err("a signing secret shows in the sink's Debug output".into());
        }
    }
    Ok(())
}

fn config_json(input: &[u8]) -> Result<(), String> {
    match serde_json::from_slice::<SpoolConfig>(input) {
        Ok(config) => check_config(config),
        Err(_) => Ok(()),
    }
}

fn config_toml(input: &[u8]) -> Result<(), String> {
    let Ok(text) = std::str::from_utf8(input) else {
        return Ok(());
    };
    match toml::from_str::<SpoolConfig>(text) {
        Ok(config) => check_config(config),
        Err(_) => Ok(()),
    }
}

/// A `Retry-After` value: a wait or nothing; a plain number of seconds is read exactly.
fn retry_after(input: &[u8]) -> Result<(), String> {
    let value = String::from_utf8_lossy(input);
    let parsed = parse_retry_after(&value, SystemTime::now());
    if let Ok(secs) = value.trim().parse::<u64>()
        && parsed.is_some_and(|d| d != Duration::from_secs(secs))
    {
        return Err(format!("{value:?} read as {parsed:?}"));
    }
    Ok(())
}

/// `header \0 id \0 body`: verification never panics, and accepts a header only when it
/// carries the signature the secret makes.
fn signature(input: &[u8]) -> Result<(), String> {
    let mut parts = input.splitn(3, |&b| b == 0);
    let header = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let id = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let body = parts.next().unwrap_or_default();
    let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .map_err(|e| e.to_string())?;
    let timestamp = "1614265330";
    if verify(&secret, &id, timestamp, body, &header) {
        let expected = secret.sign(&id, timestamp, body);
        if !header.split(' ').any(|entry| entry == expected) {
            return Err(format!("accepted {header:?}, the signature is {expected}"));
        }
    }
    let _ = SigningSecret::parse(&header);
    Ok(())
}

/// The bytes of a stored event's data, written into the file behind the spool's back
/// (as text when they are UTF-8, else as a blob): a sink gets the event when they are
/// JSON, else it is quarantined to the dead letters with a reason; nothing blocks.
fn stored_row() -> Check {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("events.db");
    let spool = Spool::open(&path).expect("open");
    let raw = rusqlite::Connection::open(&path).expect("raw connection");
    raw.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    let mut sink = common::sinks::Collect::new("fuzz");
    Box::new(move |input: &[u8]| {
        let _keep = &dir;
        let seq = spool
            .append(eventspool::Event::new("fuzz", 0))
            .map_err(|e| e.to_string())?;
        let text = std::str::from_utf8(input).ok();
        match text {
            Some(text) => raw.execute(
                "UPDATE events SET data = ?1 WHERE seq = ?2",
                (text, seq as i64),
            ),
            None => raw.execute(
                "UPDATE events SET data = ?1 WHERE seq = ?2",
                (input, seq as i64),
            ),
        }
        .map_err(|e| e.to_string())?;
        sink.events.clear();
        let delivered = spool.drain_to(&mut sink).map_err(|e| e.to_string())?;
        let json = text.and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok());
        match (delivered, sink.events.first()) {
            // JSON's grammar allows what some parsers refuse (a lone surrogate escape):
            // such text is delivered as it was stored.
            (1, Some(event)) if event.seq == seq => {
                let got = event.data.get();
                let same = match &json {
                    Some(want) => {
                        serde_json::from_str::<serde_json::Value>(got).ok() == Some(want.clone())
                    }
                    None => Some(got) == text.map(|t| t.trim_matches([' ', '\t', '\n', '\r'])),
                };
                if same {
                    Ok(())
                } else {
                    Err(format!("delivered data {got:?}"))
                }
            }
            (0, None) => {
                if json.is_some() {
                    return Err("valid JSON was quarantined".into());
                }
                let letters = spool
                    .dead_letters("fuzz", usize::MAX)
                    .map_err(|e| e.to_string())?;
                match letters.iter().find(|d| d.event.seq == seq) {
                    Some(letter) if !letter.last_error.is_empty() => Ok(()),
                    Some(_) => Err("quarantined without a reason".into()),
                    None => Err("neither delivered nor quarantined".into()),
                }
            }
            (n, first) => Err(format!("drain_to returned {n}, first {first:?}")),
        }
    })
}

/// What a NATS server says, from its `INFO` line on, to a `NatsSink` delivering one
/// event: a server on 127.0.0.1 sends the input's first line, waits for the client's
/// `SUB`, then sends the rest with `$INBOX` standing for the client's inbox, and closes.
/// The sink answers with a result, never a panic, and reports a delivery only when the
/// input acknowledged the publish or said the stream had the event.
#[cfg(feature = "nats")]
fn nats_server() -> Check {
    use std::io::{BufRead, BufReader, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let url = format!("nats://{}", listener.local_addr().expect("address"));
    let event: eventspool::StoredEvent = serde_json::from_str(
        r#"{"id":"fuzz-7","seq":7,"type":"fuzz","source":null,"subject":null,"timestamp_ms":0,"data":0}"#,
    )
    .expect("event");
    Box::new(move |input: &[u8]| {
        let script = input.to_vec();
        let listener = listener.try_clone().map_err(|e| e.to_string())?;
        let server = std::thread::spawn(move || -> std::io::Result<()> {
            let (mut conn, _) = listener.accept()?;
            conn.set_nodelay(true)?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            let first = script
                .iter()
                .position(|&b| b == b'\n')
                .map_or(script.len(), |i| i + 1);
            conn.write_all(&script[..first])?;
            let mut reader = BufReader::new(conn.try_clone()?);
            let mut line = String::new();
            // Without a whole first line the client waits for the rest: close at once.
            while first < script.len() && reader.read_line(&mut line)? > 0 {
                if let Some(sub) = line.strip_prefix("SUB ") {
                    let inbox = sub.split(' ').next().unwrap_or_default();
                    let inbox = inbox.trim_end_matches(".*").as_bytes().to_vec();
                    let rest = replace(&script[first..], b"$INBOX", &inbox);
                    let _ = conn.write_all(&rest);
                    break;
                }
                line.clear();
            }
            conn.shutdown(std::net::Shutdown::Write)?;
            // Read what the client still sends, so that its writes never block.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
            Ok(())
        });
        let mut sink = eventspool::NatsSink::new("fuzz", &url, "events.{type}")
            .timeout(Duration::from_millis(500));
        let result = sink.deliver(std::slice::from_ref(&event));
        let skipped = sink.take_already_delivered();
        drop(sink);
        server
            .join()
            .map_err(|_| "the server thread panicked".to_string())?
            .map_err(|e| format!("the server: {e}"))?;
        let acknowledged = input.windows(9).any(|w| w == b"$INBOX.0 ");
        match result {
            Ok(()) if !acknowledged && skipped == 0 => {
                Err("delivered without an acknowledgement".into())
            }
            _ => Ok(()),
        }
    })
}

/// `input` with each `from` replaced by `to`.
#[cfg(feature = "nats")]
fn replace(input: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    out
}
