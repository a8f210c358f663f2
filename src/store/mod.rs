//! The spool file: [`sql`] holds every SQL statement, [`file`] the file-system guards
//! around it (lock, identity, what a crash left), [`pool`] the readers' connections,
//! and [`records`] the types it stores. Opening and rescuing a file take both sides:
//! they are here.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::config::SpoolConfig;
use crate::error::{Error, Result};

mod file;
mod key;
mod pool;
mod records;
mod sql;

pub(crate) use file::*;
#[cfg(feature = "encryption")]
pub use key::EncryptionKey;
pub(crate) use key::{Header, Keying};
pub(crate) use pool::{ReaderPool, open_file_only, open_reader};
pub(crate) use records::*;
pub use records::{ConsumerInfo, ConsumerKind, DeadLetter, DeadLetterSummary, SeekPosition};
pub(crate) use sql::*;

#[cfg(feature = "encryption")]
/// What the first bytes of the file at `path` say it is; [`Header::Empty`] when there
/// is no file yet.
pub(crate) fn header_of(path: &Path) -> Result<Header> {
    match path.exists() {
        true => file::read_header(path),
        false => Ok(Header::Empty),
    }
}

#[cfg(feature = "encryption")]
/// A connection to the existing spool at `path`, for reading it whole: checked
/// (key, header, schema) first, so a refused file is not modified.
pub(crate) fn open_existing(path: &Path, keying: &Keying) -> Result<Connection> {
    if !path.exists() {
        return Err(Error::io(
            format!("no spool file at {}", path.display()),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    check_key(path, keying)?;
    // Not read-only: a database attached to a read-only connection is read-only too.
    let conn = sql::open_checkpointer(path, keying)?;
    if sql::validate(&conn, path)? == 0 {
        return Err(Error::NotASpool(path.to_owned()));
    }
    Ok(conn)
}

/// Writes what `conn` holds into a new file at `to`, keyed by `target` (encrypted, or
/// plain when it has no key), through SQLCipher's `sqlcipher_export`.
#[cfg(feature = "encryption")]
pub(crate) fn export(conn: &Connection, to: &Path, target: &Keying) -> Result<()> {
    let name = to
        .to_str()
        .ok_or_else(|| Error::InvalidConfig(format!("the path is not UTF-8: {}", to.display())))?;
    drop(file::create_private(to)?);
    sql::export(conn, name, target.literal().unwrap_or_default()).map_err(Error::storage)
}

/// Checks that `keying` fits the file at `path`, reading only, before anything else
/// opens it: a key for a plain file, no key for what looks encrypted, and a key that
/// does not decrypt the first page are [`Error::WrongKey`].
pub(crate) fn check_key(path: &Path, keying: &Keying) -> Result<()> {
    let wrong = |reason| {
        Err(Error::WrongKey {
            path: path.to_owned(),
            reason,
        })
    };
    match file::read_header(path)? {
        Header::Empty => Ok(()),
        Header::Plain if keying.is_encrypted() => {
            wrong("a key was given, but the file is not encrypted")
        }
        Header::Plain => Ok(()),
        Header::Other { encrypted, .. } if !keying.is_encrypted() => match encrypted {
            true => wrong("the file is encrypted, and no key was given"),
            false => Err(Error::NotASpool(path.to_owned())),
        },
        Header::Other { .. } => match sql::first_page(&open_reader(path, keying)?) {
            Ok(()) => Ok(()),
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) => {
                wrong("the key does not decrypt it")
            }
            Err(e) => Err(Error::storage(e)),
        },
    }
}

/// Opens the writer's connection. The guards first, before SQLite touches the file: it
/// must be SQLite or empty (or encrypted with the key given), and commits lost with a
/// removed WAL are refused unless `accept_lost_wal` (then their seqs are skipped). A
/// refused file is not modified.
pub(crate) fn open_writer(config: &SpoolConfig, keying: &Keying) -> Result<Opened> {
    let path = config.path.as_path();
    drop(file::create_private(path)?);
    check_key(path, keying)?;
    let lost = file::lost_seqs(path);
    if let Some(seqs) = lost {
        if !config.accept_lost_wal {
            return Err(Error::WalLost(path.to_owned()));
        }
        log::error!(
            "spool {}: commits were lost with its write-ahead log after a crash; \
             opening what the file holds, as accept_lost_wal asks, and skipping the \
             {seqs} seqs they may have used",
            path.display()
        );
        // The documented way out, taken for the operator.
        let shm = beside(path, "-shm");
        fs::remove_file(&shm)
            .map_err(|e| Error::io(format!("cannot remove {}", shm.display()), e))?;
    }
    sql::open_writer(config, lost, keying)
}

/// Saves what `conn` holds into a new file after the spool's own file was deleted or
/// replaced under it: at `path` when that is free and may be used `in_place` (the
/// WAL was emptied, else SQLite would apply the frames left at `<path>-wal` to the new
/// file; and the spool still holds the lock), else at `<path>.rescued`. Encrypted as
/// the spool is.
pub(crate) fn rescue(
    conn: &Connection,
    path: &Path,
    in_place: bool,
    keying: &Keying,
) -> Option<PathBuf> {
    let targets = [path.to_owned(), beside(path, ".rescued")];
    for target in &targets[usize::from(!in_place)..] {
        let Some(name) = target.to_str() else {
            break; // SQL takes the name as text
        };
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        if options.open(target).is_err() {
            continue; // taken: someone else's file
        }
        match sql::vacuum_into(conn, name, keying) {
            Ok(()) => return Some(target.clone()),
            Err(e) => {
                log::error!("cannot save the spool to {}: {e}", target.display());
                let _ = fs::remove_file(target);
                return None;
            }
        }
    }
    log::error!("no free place to save the spool {} to", path.display());
    None
}
