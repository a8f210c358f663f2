//! The one error type of the crate.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::event::Event;

/// A `Result` whose error defaults to [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `eventspool`.
///
/// Messages are lower-case and name the thing at fault. Errors that refuse an
/// event hand it back: see [`Error::into_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The event was refused before it reached the writer (empty type, data that
    /// does not serialize, too large). Nothing was stored.
    InvalidEvent(String),
    /// A configuration value is out of range or inconsistent.
    InvalidConfig(String),
    /// The channel was full and the overflow policy refused to wait
    /// (`Overflow::Reject`, or `Overflow::BlockFor` ran out). The event is given back.
    Full(Box<Event>),
    /// The event was dropped by the spool's filter, so `append` has no `seq` to return.
    Filtered,
    /// The spool is closed (or closing): nothing more is accepted.
    Closed,
    /// A blocking call did not finish before its deadline.
    Timeout,
    /// Another `Spool` (in this process or another) owns the file.
    Locked(PathBuf),
    /// The file exists but is not an eventspool file. It was not modified.
    NotASpool(PathBuf),
    /// The file was written by a newer version of eventspool. It was not modified.
    NewerSchema {
        /// The spool file.
        path: PathBuf,
        /// The schema version found in the file.
        found: i64,
        /// The newest schema version this build understands.
        supported: i64,
    },
    /// The spool file was deleted or replaced while this spool had it open. Nothing
    /// more is written (a write would reach a file nobody can open again): `emit`ted
    /// events stay pending, `append` and acknowledgements fail with this error. What
    /// was committed is saved to `rescued` (the path itself when it was free, else
    /// `<path>.rescued`); close the spool and reopen that file to go on. It is noticed
    /// at the next commit, within a second when the spool is idle (reported to the
    /// `on_error` hook), and by `close` at the latest.
    FileGone {
        /// The spool file.
        path: PathBuf,
        /// Where what was committed was saved, if that succeeded.
        rescued: Option<PathBuf>,
    },
    /// After a crash, the write-ahead log `<path>-wal` is missing (or cut short) while
    /// `<path>-shm` records commits in it that were not yet copied into the file: they
    /// were lost with it, and opening would reuse their `seq`s. Nothing was modified.
    /// To open what the file still holds, accepting that loss, open with
    /// `accept_lost_wal`, which also skips the lost `seq`s; deleting `<path>-shm` by
    /// hand opens it too, but then the spool cannot tell which `seq`s to skip.
    /// (A power loss under `Durability::Normal`, which does not sync every commit, can
    /// leave the same picture; `Durability::Full` cannot.)
    WalLost(PathBuf),
    /// SQLite reports the file as corrupt or not a database.
    Corrupt {
        /// The spool file.
        path: PathBuf,
        /// What SQLite said.
        source: Box<rusqlite::Error>,
    },
    /// A commit failed (full disk, I/O error, ...). The events of `append` callers
    /// were not stored; emitted events are kept and retried by the writer.
    Commit(Arc<rusqlite::Error>),
    /// Any other SQLite error.
    Sqlite(rusqlite::Error),
    /// A stored event cannot be decoded (its bytes were damaged). Sinks move it to their
    /// dead letters; a subscription reports it once and reads on.
    CorruptEvent {
        /// The event's seq.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A consumer was misused: a second subscription for one name, an ack backwards or
    /// ahead of what was read, a seek past the last event, removing a sink.
    Consumer(String),
    /// A sink refused a delivery; `delivered` events went through before it.
    Delivery {
        /// Events delivered (and acknowledged) before the failure.
        delivered: usize,
        /// The sink's error.
        source: Box<crate::sink::DeliveryError>,
    },
    /// A file-system operation failed.
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    /// Gives back the event this error refused, if it carries one ([`Error::Full`]).
    pub fn into_event(self) -> Option<Event> {
        match self {
            Error::Full(event) => Some(*event),
            _ => None,
        }
    }

    /// True when the error comes from a full disk (or the `max_file_bytes` ceiling).
    pub fn is_disk_full(&self) -> bool {
        let code = match self {
            Error::Commit(e) => e.sqlite_error_code(),
            Error::Sqlite(e) => e.sqlite_error_code(),
            _ => None,
        };
        code == Some(rusqlite::ErrorCode::DiskFull)
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidEvent(msg) => write!(f, "invalid event: {msg}"),
            Error::InvalidConfig(msg) => write!(f, "invalid configuration: {msg}"),
            Error::Full(_) => f.write_str("spool channel is full: event refused"),
            Error::Filtered => f.write_str("event dropped by the spool's filter"),
            Error::Closed => f.write_str("spool is closed"),
            Error::Timeout => f.write_str("timed out"),
            Error::Locked(p) => write!(
                f,
                "spool file is locked by another process or handle: {}",
                p.display()
            ),
            Error::NotASpool(p) => write!(f, "file is not an eventspool file: {}", p.display()),
            Error::NewerSchema {
                path,
                found,
                supported,
            } => write!(
                f,
                "spool file {} has schema version {found}, newer than the supported {supported}",
                path.display()
            ),
            Error::FileGone { path, rescued } => {
                write!(
                    f,
                    "spool file {} was deleted or replaced while open; nothing more is written to it",
                    path.display()
                )?;
                match rescued {
                    Some(r) => write!(f, "; what it held was saved to {}", r.display()),
                    None => f.write_str("; saving what it held failed (see the log)"),
                }
            }
            Error::WalLost(path) => {
                let beside = |suffix| crate::store::beside(path, suffix);
                write!(
                    f,
                    "spool file {} lost commits: its write-ahead log {} is missing or cut short \
                     after a crash; the file was not modified; open it with accept_lost_wal to go \
                     on with what it still holds (deleting {} opens it too, but may reuse seqs)",
                    path.display(),
                    beside("-wal").display(),
                    beside("-shm").display()
                )
            }
            Error::Corrupt { path, source } => {
                write!(f, "spool file is corrupt: {}: {source}", path.display())
            }
            Error::Commit(e) => write!(f, "commit failed: {e}"),
            Error::Sqlite(e) => write!(f, "sqlite: {e}"),
            Error::Consumer(msg) => f.write_str(msg),
            Error::CorruptEvent { seq, reason } => {
                write!(f, "stored event {seq} is corrupt: {reason}")
            }
            Error::Delivery { delivered, source } => {
                write!(f, "delivery failed after {delivered} events: {source}")
            }
            Error::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Corrupt { source, .. } => Some(&**source),
            Error::Commit(e) => Some(&**e),
            Error::Sqlite(e) => Some(e),
            Error::Io { source, .. } => Some(source),
            Error::Delivery { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Sqlite(e)
    }
}
