//! Faults of the file system around a spool: its file deleted or replaced while open,
//! its WAL removed after a crash, a read-only directory. Each gives a clear error or a
//! documented recovery, never a panic and never silent loss. (A full disk is in
//! disk_full.rs, a lock held by another process in bad_input.rs.)

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::http::Server;
use common::*;
use eventspool::{Backoff, Error, Spool, WebhookSink};

const T: Duration = Duration::from_secs(10);

fn spool_with(path: &Path, count: u64) -> Result<Spool, Error> {
    let spool = Spool::open(path)?;
    for n in 0..count {
        spool.append(numbered(n))?;
    }
    Ok(spool)
}

fn numbers(spool: &Spool) -> Vec<u64> {
    all_events(spool).iter().map(number_of).collect()
}

#[test]
fn a_file_deleted_while_open_refuses_writes_and_is_saved_back() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = spool_with(&path, 100)?;
    std::fs::remove_file(&path)?;

    let err = spool.append(numbered(100)).unwrap_err();
    match &err {
        Error::FileGone { path: p, rescued } => {
            assert_eq!(p, &path);
            assert_eq!(
                rescued.as_deref(),
                Some(path.as_path()),
                "saved where it was"
            );
        }
        other => panic!("expected FileGone, got {other}"),
    }
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    // It stays refused: nothing is written to a file nobody can reach.
    assert!(matches!(
        spool.append(numbered(101)),
        Err(Error::FileGone { .. })
    ));
    assert_eq!(spool.metrics().committed, 100);
    let _ = spool.close(Duration::from_millis(200));

    let reopened = Spool::open(&path)?;
    assert_eq!(numbers(&reopened), (0..100).collect::<Vec<_>>());
    assert_eq!(reopened.append(numbered(100))?, 101, "seq goes on");
    reopened.close(T)?;
    Ok(())
}

#[test]
fn a_file_deleted_while_the_spool_is_idle_is_saved_back_by_close() -> TestResult {
    // No commit comes to notice it: close must, or the unlinked file (and every event
    // in it) would go with the last connection.
    let (_dir, path) = temp_spool();
    let spool = spool_with(&path, 100)?;
    std::fs::remove_file(&path)?;
    match spool.close(T) {
        Err(Error::FileGone { path: p, rescued }) => {
            assert_eq!(p, path);
            assert_eq!(rescued.as_deref(), Some(path.as_path()));
        }
        other => panic!("expected FileGone, got {other:?}"),
    }
    let reopened = Spool::open(&path)?;
    assert_eq!(numbers(&reopened), (0..100).collect::<Vec<_>>());
    Ok(())
}

#[test]
fn a_directory_removed_with_the_file_is_made_again_to_save_it() -> TestResult {
    let (dir, _) = temp_spool();
    let path = dir.path().join("data").join("events.db");
    let spool = spool_with(&path, 10)?;
    std::fs::remove_dir_all(dir.path().join("data"))?;
    match spool.close(T) {
        Err(Error::FileGone { rescued, .. }) => {
            assert_eq!(rescued.as_deref(), Some(path.as_path()))
        }
        other => panic!("expected FileGone, got {other:?}"),
    }
    let reopened = Spool::open(&path)?;
    assert_eq!(numbers(&reopened), (0..10).collect::<Vec<_>>());
    Ok(())
}

#[test]
fn a_file_saved_back_with_its_directory_stays_locked_until_close() -> TestResult {
    // The lock file went with the directory. Until this spool's connections close, a
    // second owner must be refused: when the last of them closes, SQLite removes
    // `<path>-wal` and `<path>-shm` by name, and those would be the newcomer's.
    let (dir, _) = temp_spool();
    let path = dir.path().join("data").join("events.db");
    let spool = spool_with(&path, 10)?;
    std::fs::remove_dir_all(dir.path().join("data"))?;
    wait_until(T, "the file is saved back", || path.exists());
    assert!(matches!(Spool::open(&path), Err(Error::Locked(_))));
    match spool.close(T) {
        Err(Error::FileGone { rescued, .. }) => {
            assert_eq!(rescued.as_deref(), Some(path.as_path()), "saved in place")
        }
        other => panic!("expected FileGone, got {other:?}"),
    }
    let reopened = Spool::open(&path)?;
    assert_eq!(numbers(&reopened), (0..10).collect::<Vec<_>>());
    reopened.close(T)?;
    Ok(())
}

#[test]
fn a_file_deleted_while_the_spool_is_idle_is_saved_back_within_seconds() -> TestResult {
    let (_dir, path) = temp_spool();
    let spool = spool_with(&path, 100)?;
    std::fs::remove_file(&path)?;
    wait_until(T, "the file is saved back", || path.exists());
    // Readers find it again, and the spool reports the loss of its file.
    assert_eq!(spool.len()?, 100);
    assert!(matches!(
        spool.append(numbered(100)),
        Err(Error::FileGone { .. })
    ));
    let _ = spool.close(Duration::from_millis(200));
    Ok(())
}

#[test]
fn a_sink_that_cannot_record_its_progress_waits_before_sending_again() -> TestResult {
    // The receiver takes the batch, but the cursor cannot be committed (the file is
    // gone): the batch is sent again, after a pause, not in a hot loop.
    let (_dir, path) = temp_spool();
    let mut server = Server::start();
    server.down();
    let spool = Spool::builder(&path)
        .sink(
            WebhookSink::new("hook", server.url()).backoff(Backoff::exponential(
                Duration::from_millis(5),
                Duration::from_millis(50),
            )),
        )
        .open()?;
    spool.append(numbered(0))?;
    std::fs::remove_file(&path)?;
    // The next commit notices and saves the file back, so readers find it again.
    assert!(matches!(
        spool.append(numbered(1)),
        Err(Error::FileGone { .. })
    ));
    server.up();
    let requests = server.wait_requests(2, T);
    let gap = requests[1].at - requests[0].at;
    assert_eq!(requests[0].body, requests[1].body, "the same batch again");
    assert!(
        gap >= Duration::from_millis(900),
        "sent again after {gap:?}"
    );
    let _ = spool.close(Duration::from_millis(200));
    Ok(())
}

#[test]
fn a_file_replaced_while_open_is_left_alone_and_saved_beside_it() -> TestResult {
    let (dir, path) = temp_spool();
    let spool = spool_with(&path, 10)?;
    let other = dir.path().join("other");
    std::fs::write(&other, b"someone else's file")?;
    std::fs::rename(&other, &path)?;

    let rescued = beside(&path, ".rescued");
    match spool.append(numbered(10)) {
        Err(Error::FileGone { rescued: r, .. }) => {
            assert_eq!(r.as_deref(), Some(rescued.as_path()))
        }
        other => panic!("expected FileGone, got {other:?}"),
    }
    // What the spool held can still be read until it is closed.
    assert_eq!(numbers(&spool).len(), 10);
    let _ = spool.close(Duration::from_millis(200));
    assert_eq!(std::fs::read(&path)?, b"someone else's file", "not touched");

    let saved = Spool::open(&rescued)?;
    assert_eq!(numbers(&saved), (0..10).collect::<Vec<_>>());
    Ok(())
}

#[test]
fn a_wal_removed_after_a_crash_is_refused_at_open_with_a_way_out() -> TestResult {
    let (_dir, path) = crash_with_commits_in_the_wal(
        "a_wal_removed_after_a_crash_is_refused_at_open_with_a_way_out",
    );
    let wal = beside(&path, "-wal");
    let shm = beside(&path, "-shm");
    assert!(wal.exists() && shm.exists(), "a crash leaves both behind");
    std::fs::remove_file(&wal)?;
    let before = std::fs::read(&path)?;
    let err = Spool::open(&path).unwrap_err();
    assert!(matches!(err, Error::WalLost(_)), "{err}");
    let message = err.to_string();
    assert!(message.contains(&wal.display().to_string()), "{message}");
    assert!(
        message.contains(&shm.display().to_string()),
        "names the way out: {message}"
    );
    assert_eq!(std::fs::read(&path)?, before, "the file was not touched");
    assert!(shm.exists(), "the evidence is kept");

    // The documented way out: delete the -shm file to open what the file holds.
    std::fs::remove_file(&shm)?;
    let spool = Spool::open(&path)?;
    assert_eq!(
        numbers(&spool),
        (0..10).collect::<Vec<_>>(),
        "what was copied into the file is there; the 10 only in the WAL are gone"
    );
    spool.close(T)?;
    Ok(())
}

#[test]
fn accept_lost_wal_opens_what_is_left_without_anyone_deleting_files() -> TestResult {
    let (_dir, path) = crash_with_commits_in_the_wal(
        "accept_lost_wal_opens_what_is_left_without_anyone_deleting_files",
    );
    std::fs::remove_file(beside(&path, "-wal"))?;
    let spool = Spool::builder(&path).accept_lost_wal(true).open()?;
    assert_eq!(numbers(&spool), (0..10).collect::<Vec<_>>());
    // Seqs 11..=20 went with the WAL, and receivers may have seen them (with ids made
    // of them): none may be given to another event.
    let next = spool.append(numbered(10))?;
    assert!(
        next > 20,
        "it goes on after every seq the lost commits used: {next}"
    );
    spool.close(T)?;
    let spool = Spool::open(&path)?;
    assert_eq!(spool.last_seq()?, next, "and the skip is durable");
    spool.close(T)?;
    Ok(())
}

#[test]
fn a_crash_with_its_wal_in_place_opens_with_everything() -> TestResult {
    // The same crash without removing anything: the check must not refuse it.
    let (_dir, path) =
        crash_with_commits_in_the_wal("a_crash_with_its_wal_in_place_opens_with_everything");
    let spool = Spool::open(&path)?;
    assert_eq!(numbers(&spool), (0..20).collect::<Vec<_>>());
    spool.close(T)?;
    Ok(())
}

/// A directory the test cannot write to: a read-only tmpfs as root (file modes do not
/// stop root), a directory without write permission otherwise.
enum ReadOnly {
    Mount(Tmpfs),
    Mode(PathBuf),
}

impl ReadOnly {
    fn new(dir: &Path) -> ReadOnly {
        use std::os::unix::fs::PermissionsExt;
        let probe = dir.join("probe");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        if std::fs::write(&probe, b"").is_err() {
            return ReadOnly::Mode(dir.to_owned());
        }
        std::fs::remove_file(&probe).expect("remove probe");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mount = Tmpfs::mount(dir, "8m").expect("root can mount a tmpfs");
        mount.set_read_only(true);
        ReadOnly::Mount(mount)
    }

    fn set_writable(&self, writable: bool) {
        use std::os::unix::fs::PermissionsExt;
        match self {
            ReadOnly::Mount(mount) => mount.set_read_only(!writable),
            ReadOnly::Mode(dir) => {
                let mode = if writable { 0o755 } else { 0o555 };
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).expect("chmod")
            }
        }
    }
}

/// Opening `path` fails with an I/O error that names it.
fn assert_refused_naming(path: &Path) {
    let err = Spool::open(path).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn a_read_only_directory_gives_a_clear_error_naming_the_path() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spools = dir.path().join("spools");
    std::fs::create_dir(&spools)?;
    let read_only = ReadOnly::new(&spools);
    let path = spools.join("events.db");

    assert_refused_naming(&path);

    // A spool written while the directory was writable, then opened read-only.
    read_only.set_writable(true);
    spool_with(&path, 5)?.close(T)?;
    read_only.set_writable(false);
    assert_refused_naming(&path);

    read_only.set_writable(true);
    let spool = Spool::open(&path)?;
    assert_eq!(
        numbers(&spool),
        (0..5).collect::<Vec<_>>(),
        "nothing was lost"
    );
    spool.close(T)?;
    Ok(())
}
