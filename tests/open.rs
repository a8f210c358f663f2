//! Opening a spool does not depend on how many events it holds: it reads a few pages,
//! not the table. Alone in its binary, so the process's read counter is this test's.

mod common;

use std::time::Duration;

use common::*;
use eventspool::Spool;

/// Bytes this process has read through `read`/`pread` so far, cached or not.
fn bytes_read() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("rchar")
}

/// What opening (and closing) the spool at `path` reads.
fn read_by_open(path: &std::path::Path) -> TestResult<u64> {
    let before = bytes_read();
    let spool = Spool::open(path)?;
    let read = bytes_read() - before;
    spool.close(Duration::from_secs(10))?;
    Ok(read)
}

#[test]
fn opening_reads_a_few_pages_whatever_is_stored() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = Spool::open(&path)?;
    spool.append(numbered(0))?;
    spool.close(Duration::from_secs(10))?;
    drop(spool);
    let small = read_by_open(&path)?;

    let spool = Spool::open(&path)?;
    for chunk in 0..20 {
        spool.append_batch((0..10_000).map(|n| numbered(chunk * 10_000 + n)).collect())?;
    }
    spool.close(Duration::from_secs(60))?;
    drop(spool);
    let file = std::fs::metadata(&path)?.len();
    let large = read_by_open(&path)?;
    // 200 000 events (~8 MB): a scan would read all of it; a few pages are ~4 KiB each.
    assert!(
        large < small + (64 << 10),
        "open read {large} bytes of a {file}-byte spool (one event: {small})"
    );
    Ok(())
}
