//! Builds the C library (feature `capi`) with cargo and compiles C programs against it
//! with the system's `cc`, for the C API tests and the C benchmark.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where a build left `libeventspool.so` and `libeventspool.a`.
#[derive(Debug, Clone)]
pub struct CLibrary {
    pub dir: PathBuf,
    pub shared: PathBuf,
    pub archive: PathBuf,
}

/// The crate's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The folder holding `eventspool.h`.
pub fn include_dir() -> PathBuf {
    root().join("src/capi")
}

/// The library in the debug profile, built once per test binary.
pub fn library() -> &'static CLibrary {
    static LIBRARY: OnceLock<CLibrary> = OnceLock::new();
    LIBRARY.get_or_init(|| build(&[]))
}

/// Builds the library with `cargo rustc --lib --features capi --crate-type
/// cdylib,staticlib` plus `extra` arguments (`--release`, `--no-default-features`),
/// and finds what it wrote from cargo's JSON messages.
pub fn build(extra: &[&str]) -> CLibrary {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    // What cargo set for this test binary would make build scripts that watch those
    // variables run again, and the outer `cargo test` after them.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_") && !matches!(&*name, "CARGO_HOME" | "CARGO_TARGET_DIR")
            || name == "OUT_DIR"
        {
            command.env_remove(&*name);
        }
    }
    let output = command
        .current_dir(root())
        .args([
            "rustc",
            "--lib",
            "--features",
            "capi",
            "--crate-type",
            "cdylib,staticlib",
        ])
        .args(["--message-format", "json-render-diagnostics"])
        .args(extra)
        .output()
        .expect("run cargo");
    assert!(
        output.status.success(),
        "cargo rustc for the C library failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut shared = None;
    let mut archive = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" || message["target"]["name"] != "eventspool" {
            continue;
        }
        for file in message["filenames"].as_array().into_iter().flatten() {
            let file = PathBuf::from(file.as_str().unwrap_or_default());
            match file.extension().and_then(|e| e.to_str()) {
                Some("so" | "dylib") => shared = Some(file),
                Some("a") => archive = Some(file),
                _ => {}
            }
        }
    }
    let shared = shared.expect("cargo reported no shared library");
    let archive = archive.expect("cargo reported no static library");
    CLibrary {
        dir: shared.parent().expect("a folder").to_path_buf(),
        shared,
        archive,
    }
}

/// The C compiler: `$CC`, else `cc`.
pub fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

/// Compiles `sources` into the program `output`, linked against the shared library
/// (found at run time through an rpath), with warnings as errors and `flags` added.
pub fn compile(library: &CLibrary, sources: &[PathBuf], output: &Path, flags: &[&str]) {
    let status = Command::new(cc())
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"])
        .arg("-I")
        .arg(include_dir())
        .args(flags)
        .args(sources)
        .arg("-o")
        .arg(output)
        .arg("-L")
        .arg(&library.dir)
        .arg(format!("-Wl,-rpath,{}", library.dir.display()))
        .args(["-leventspool", "-lpthread", "-ldl", "-lm"])
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed for {}", output.display());
}

/// As [`compile`], linked against the static library instead.
pub fn compile_static(library: &CLibrary, sources: &[PathBuf], output: &Path) {
    let status = Command::new(cc())
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2"])
        .arg("-I")
        .arg(include_dir())
        .args(sources)
        .arg("-o")
        .arg(output)
        .arg(&library.archive)
        .args(["-lpthread", "-ldl", "-lm"])
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed for {}", output.display());
}
