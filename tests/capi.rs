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
    // cbindgen follows mod.rs's `mod` items to the other files (naming them as well
    // declared every function twice).
    let builder = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("mod.rs"));
    let mut header = Vec::new();
    builder
        .generate()
        .expect("cbindgen parses src/capi")
        .write(&mut header);
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

/// Whether `cc -fsanitize=address` builds and runs a program here; the reason if not.
fn address_sanitizer(dir: &std::path::Path) -> Result<(), String> {
    let probe = dir.join("probe.c");
    std::fs::write(&probe, "int main(void) { return 0; }\n").map_err(|e| e.to_string())?;
    let program = dir.join("probe");
    let built = std::process::Command::new(capi::cc())
        .args(["-fsanitize=address", "-o"])
        .arg(&program)
        .arg(&probe)
        .output()
        .map_err(|e| e.to_string())?;
    if !built.status.success() {
        return Err(String::from_utf8_lossy(&built.stderr).into_owned());
    }
    let ran = std::process::Command::new(&program)
        .output()
        .map_err(|e| e.to_string())?;
    match ran.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&ran.stderr).into_owned()),
    }
}

#[test]
fn open_emit_query_subscribe_close_cycles_under_address_sanitizer() -> common::TestResult {
    let dir = tempfile::tempdir()?;
    if let Err(reason) = address_sanitizer(dir.path()) {
        println!("SKIPPED: the compiler has no AddressSanitizer runtime here: {reason}");
        return Ok(());
    }
    let program = dir.path().join("capi_test_asan");
    let flags = ["-fsanitize=address", "-fno-omit-frame-pointer"];
    capi::compile(
        capi::library(),
        &[c_source("capi_test.c")],
        &program,
        &flags,
    );
    let output = std::process::Command::new(&program)
        .arg(dir.path())
        .arg("5")
        // Leaks are errors (LeakSanitizer runs at exit); any report fails the run.
        .env("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1:exitcode=23")
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stderr.contains("Sanitizer"),
        "under AddressSanitizer ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("all ok: 5 cycles"), "{stdout}");
    Ok(())
}

#[test]
fn kill_9_of_a_c_program_mid_append_loses_no_acknowledged_seq() -> common::TestResult {
    use std::io::BufRead;
    let dir = tempfile::tempdir()?;
    let program = dir.path().join("crash_append");
    capi::compile(
        capi::library(),
        &[c_source("crash_append.c")],
        &program,
        &[],
    );
    let path = dir.path().join("events.db");
    let mut rng = common::Rng::seeded();
    let mut acknowledged = Vec::new();
    for _ in 0..5 {
        let mut child = std::process::Command::new(&program)
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        let wanted = 20 + rng.below(500) as usize;
        for _ in 0..wanted {
            let line = lines.next().expect("the child appends until killed")?;
            acknowledged.push(line.parse::<u64>()?);
        }
        child.kill()?; // SIGKILL, mid-append
        // Seqs printed before the kill landed were acknowledged too.
        for line in lines {
            acknowledged.push(line?.parse::<u64>()?);
        }
        child.wait()?;
    }
    let spool = eventspool::Spool::open(&path)?;
    let stored: std::collections::HashSet<u64> =
        common::all_events(&spool).iter().map(|e| e.seq).collect();
    let lost: Vec<u64> = acknowledged
        .iter()
        .copied()
        .filter(|seq| !stored.contains(seq))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but gone after kill -9: {lost:?}"
    );
    assert!(
        acknowledged.windows(2).all(|w| w[0] < w[1]),
        "seqs go up across restarts"
    );
    println!(
        "{} acknowledged seqs, all there after 5 kills",
        acknowledged.len()
    );
    spool.close(std::time::Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn the_c_example_delivers_to_a_webhook_linked_statically() -> common::TestResult {
    let dir = tempfile::tempdir()?;
    let server = common::http::Server::start();
    let program = dir.path().join("example");
    let example = root().join("examples/c/example.c");
    capi::compile_static(capi::library(), &[example], &program);
    let spool = dir.path().join("example.db");
    let out = run(&program, &[server.url().as_ref(), spool.as_os_str()]);
    println!("{out}");
    assert!(out.contains("order.paid committed as seq 11"), "{out}");
    assert!(out.contains("billing read 11 events"), "{out}");
    assert!(out.contains("orders-hook delivered 11 events"), "{out}");
    let seqs: Vec<u64> = server
        .requests()
        .iter()
        .flat_map(|r| r.json().as_array().cloned().unwrap_or_default())
        .map(|e| e["seq"].as_u64().unwrap_or_default())
        .collect();
    assert_eq!(
        seqs,
        (1..=11).collect::<Vec<_>>(),
        "the receiver got each event in order"
    );
    Ok(())
}

/// Runs `python3` with the ctypes module on its path and the freshly built library.
fn python(args: &[&str]) -> String {
    let output = std::process::Command::new("python3")
        .args(args)
        .current_dir(root())
        .env("EVENTSPOOL_LIB", &capi::library().shared)
        .output()
        .expect("python3 runs (every machine here has it; install it if this one does not)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python3 {args:?} failed:\n{stdout}\n{stderr}"
    );
    format!("{stdout}{stderr}")
}

#[test]
fn the_python_wrapper_works_end_to_end() {
    let out = python(&["-m", "unittest", "-v", "tests/python/test_eventspool.py"]);
    println!("{out}");
    assert!(out.contains("Ran 6 tests"), "{out}");
    assert!(out.contains("OK"), "{out}");
}

#[test]
fn the_python_example_runs() -> common::TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("example.db");
    let out = python(&["examples/python/example.py", path.to_str().expect("UTF-8")]);
    println!("{out}");
    for line in [
        "order.paid committed as seq 11",
        "billing read 12 events",
        "ledger received 11 events, seqs 1..11",
        "dead letters of ledger: ['the ledger refuses fraud (permanent)']",
        "closed",
    ] {
        assert!(
            out.contains(line),
            "the example did not print {line:?}:\n{out}"
        );
    }
    Ok(())
}

#[test]
fn the_header_compiles_as_cpp_and_links() -> common::TestResult {
    let dir = tempfile::tempdir()?;
    let program = dir.path().join("header_check");
    let library = capi::library();
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let status = std::process::Command::new(cxx)
        .args(["-std=c++17", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(capi::include_dir())
        .arg(c_source("header_check.cpp"))
        .arg("-o")
        .arg(&program)
        .arg("-L")
        .arg(&library.dir)
        .arg(format!("-Wl,-rpath,{}", library.dir.display()))
        .args(["-leventspool", "-lpthread", "-ldl", "-lm"])
        .status()?;
    assert!(status.success(), "c++ failed on the header");
    let out = run(&program, &[]);
    assert!(
        out.contains("EVENTSPOOL_INVALID_ARGUMENT spool handle is NULL"),
        "{out}"
    );
    Ok(())
}
