//! The C API from C and Python: the header matches the code, C programs built with the
//! system's `cc` (and under AddressSanitizer) use every part of it, a C sink gets every
//! event in order, `kill -9` mid-`append` loses no acknowledged seq, and the ctypes
//! wrapper works end to end. The library is built by the test (`cargo rustc --features
//! capi`), so a plain `cargo test` runs all of it.

mod common;

use std::path::PathBuf;

use common::capi::{self, root};

/// The header cbindgen makes from `src/capi/*.rs` with `src/capi/cbindgen.toml`.
fn generated_header() -> String {
    let dir = root().join("src/capi");
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut builder = cbindgen::Builder::new().with_config(config);
    for file in ["status.rs", "mod.rs", "args.rs", "spool.rs", "subscription.rs", "sink.rs"] {
        builder = builder.with_src(dir.join(file));
    }
    let mut header = Vec::new();
    builder.generate().expect("cbindgen parses src/capi").write(&mut header);
    String::from_utf8(header).expect("UTF-8")
}

#[test]
fn the_committed_header_is_what_the_code_generates() {
    let path = root().join("src/capi/eventspool.h");
    let generated = generated_header();
    if std::env::var_os("EVENTSPOOL_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write the header");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "src/capi/eventspool.h differs from what src/capi/*.rs generate; \
         run `EVENTSPOOL_BLESS=1 cargo test --test capi header` and commit the header"
    );
}

fn c_source(name: &str) -> PathBuf {
    root().join("tests/c").join(name)
}

/// Runs a program to its end and returns what it printed; fails with its output when
/// it exits with an error.
fn run(program: &std::path::Path, args: &[&std::ffi::OsStr]) -> String {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .expect("run the program");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed ({}):\n{stdout}\n{stderr}",
        program.display(),
        output.status
    );
    stdout
}

#[test]
fn a_c_program_uses_every_call_and_gets_clear_errors() -> common::TestResult {
    let dir = tempfile::tempdir()?;
    let program = dir.path().join("capi_test");
    capi::compile(capi::library(), &[c_source("capi_test.c")], &program, &[]);
    let out = run(&program, &[dir.path().as_os_str()]);
    println!("{out}");
    for line in [
        "ok NULL handle: EVENTSPOOL_INVALID_ARGUMENT: spool handle is NULL",
        "ok configuration that is not JSON: EVENTSPOOL_INVALID_CONFIG",
        "ok empty event type: EVENTSPOOL_INVALID_EVENT: invalid event: event type must not be empty",
        "ok data that is not JSON: EVENTSPOOL_INVALID_EVENT",
        "ok second open of the file: EVENTSPOOL_LOCKED",
        "ok committed: append gave seq 1001, last seq 1002",
        "ok subscription read 1002 events",
        "ok c-sink received 1002 events in order",
        "all ok: 1 cycles",
    ] {
        assert!(out.contains(line), "the C test did not print {line:?}");
    }
    // What C committed, read back through Rust.
    let spool = eventspool::Spool::open(dir.path().join("events.db"))?;
    let paid = spool.query(&eventspool::EventQuery::new().event_types(["order.paid"]))?;
    assert_eq!(paid.len(), 1);
    assert_eq!(paid[0].seq, 1001);
    assert_eq!(paid[0].subject.as_deref(), Some("order/42"));
    assert_eq!(paid[0].data.get(), r#"{"id":42,"total":"9.99"}"#);
    spool.close(std::time::Duration::from_secs(5))?;
    Ok(())
}
