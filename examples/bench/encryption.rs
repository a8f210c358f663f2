//! `bench --encryption` (feature `encryption`): the same spool work on a plain file and
//! on an encrypted one (SQLCipher, a raw key), alternating rounds; medians of 3.

use std::path::Path;
use std::time::{Duration, Instant};

use eventspool::{EncryptionKey, Event, SeekPosition, Spool};

use super::{median, payload, rate};

fn open(dir: &Path, name: &str, encrypted: bool) -> Spool {
    let builder = Spool::builder(dir.join(name)).max_bytes(u64::MAX);
    let builder = match encrypted {
        true => builder.encryption_key(EncryptionKey::raw([7; 32])),
        false => builder,
    };
    builder.open().unwrap()
}

/// `emit` from one thread until `flush` returns; the JSON texts are made first.
fn emit(dir: &Path, name: &str, n: u64, encrypted: bool) -> f64 {
    let spool = open(dir, name, encrypted);
    let bodies: Vec<String> = (0..n).map(payload).collect();
    let start = Instant::now();
    for body in bodies {
        spool.emit(Event::from_json("bench.event", body)).unwrap();
    }
    spool.flush(Duration::from_secs(600)).unwrap();
    let took = start.elapsed();
    spool.close(Duration::from_secs(60)).unwrap();
    rate(n, took)
}

/// A consumer group reading what `emit` stored (the spool reopened, so nothing is in
/// SQLite's cache), acking every 1000.
fn consume(dir: &Path, name: &str, n: u64, encrypted: bool) -> f64 {
    let spool = open(dir, name, encrypted);
    let start = Instant::now();
    let mut sub = spool.subscribe("bench", SeekPosition::Beginning).unwrap();
    let mut read = 0u64;
    while let Some(e) = sub.try_next().unwrap() {
        read += 1;
        if read.is_multiple_of(1000) || read == n {
            sub.ack(e.seq).unwrap();
        }
    }
    assert_eq!(read, n);
    let took = start.elapsed();
    drop(sub);
    spool.close(Duration::from_secs(60)).unwrap();
    rate(n, took)
}

pub(crate) fn run(dir: &Path, n: u64) {
    let (mut emits, mut consumes) = ([vec![], vec![]], [vec![], vec![]]);
    for round in 0..3 {
        for encrypted in [false, true] {
            let name = format!("{}{round}.db", if encrypted { "secret" } else { "plain" });
            emits[encrypted as usize].push(emit(dir, &name, n, encrypted));
            consumes[encrypted as usize].push(consume(dir, &name, n, encrypted));
        }
    }
    let [plain_emit, secret_emit] = emits.map(|mut v| median(&mut v));
    let [plain_consume, secret_consume] = consumes.map(|mut v| median(&mut v));
    println!(
        "| {n} events of 256 B JSON (median of 3) | plain events/s | encrypted events/s | encrypted vs plain |"
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| `emit` until `flush` | {plain_emit:.0} | {secret_emit:.0} | {:.2}× |",
        secret_emit / plain_emit
    );
    println!(
        "| consuming (subscription, ack every 1000, reopened) | {plain_consume:.0} | {secret_consume:.0} | {:.2}× |",
        secret_consume / plain_consume
    );
}
