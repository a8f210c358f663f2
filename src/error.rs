//! The crate's errors: [`enum@Error`] for everything a call can fail with, and
//! [`DeliveryError`], what a [`Sink`](crate::Sink) answers a failed delivery with.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::event::Event;

/// A `Result` whose error defaults to [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `eventspool`.
///
/// Every message has one shape: what went wrong, in lower case, then a colon and the
/// details naming the thing at fault (`spool closed: …`, `consumer billing: …`). Errors
/// that refuse an event hand it back: see [`Error::into_event`]. Errors from the
/// storage engine are wrapped in [`StorageError`], whose [`source`] is the engine's.
///
/// [`source`]: std::error::Error::source
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
    Timeout {
        /// How long it waited.
        waited: Duration,
    },
    /// Another `Spool` (in this process or another) owns the file.
    Locked(PathBuf),
    /// The file exists but is not an eventspool file. It was not modified.
    NotASpool(PathBuf),
    /// The file cannot be opened with the key given (feature `encryption`): the wrong
    /// key, no key for an encrypted file, or a key for a plain one; `reason` says
    /// which. Found before any thread starts; the file was not modified.
    WrongKey {
        /// The spool file.
        path: PathBuf,
        /// Which of the three it is.
        reason: &'static str,
    },
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
    /// The storage engine reports the file as corrupt or not a database.
    Corrupt {
        /// The spool file.
        path: PathBuf,
        /// What the engine said.
        source: StorageError,
    },
    /// A commit failed (full disk, I/O error, ...). The events of `append` callers
    /// were not stored; emitted events are kept and retried by the writer.
    Commit(StorageError),
    /// Any other error of the storage engine (reading the file, for one).
    Storage(StorageError),
    /// A stored event cannot be decoded (its bytes were damaged). Sinks move it to their
    /// dead letters; a subscription reports it once and reads on.
    CorruptEvent {
        /// The event's seq.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A consumer was misused: a second subscription for one name, an ack backwards or
    /// ahead of what was read, a seek past the last event, a sink's name used through
    /// the consumer APIs. The message names the consumer first: `billing: …`.
    Consumer(String),
    /// A sink refused a delivery; `delivered` events went through before it.
    Delivery {
        /// Events delivered (and acknowledged) before the failure.
        delivered: usize,
        /// The sink's error.
        source: Box<DeliveryError>,
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
        match self {
            Error::Commit(e) | Error::Storage(e) => e.is_disk_full(),
            _ => false,
        }
    }

    /// A storage error (see [`Error::Storage`]).
    pub(crate) fn storage(e: rusqlite::Error) -> Self {
        Error::Storage(StorageError::new(e))
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
            Error::Full(_) => f.write_str("spool full: its channel is full, the event is refused"),
            Error::Filtered => f.write_str("event filtered: the spool's filter dropped it"),
            Error::Closed => f.write_str("spool closed: nothing more is accepted"),
            Error::Timeout { waited } => write!(f, "timed out: gave up after {waited:?}"),
            Error::Locked(p) => write!(
                f,
                "spool locked: another process or handle owns {} (it holds the lock file {}.lock)",
                p.display(),
                p.display()
            ),
            Error::NotASpool(p) => {
                write!(f, "not a spool: {} is not an eventspool file", p.display())
            }
            Error::WrongKey { path, reason } => write!(
                f,
                "wrong key: {}: {reason}; the file was not modified",
                path.display()
            ),
            Error::NewerSchema {
                path,
                found,
                supported,
            } => write!(
                f,
                "newer schema: spool file {} has schema version {found}, newer than the supported {supported}",
                path.display()
            ),
            Error::FileGone { path, rescued } => {
                write!(
                    f,
                    "spool file gone: {} was deleted or replaced while open; nothing more is written to it",
                    path.display()
                )?;
                match rescued {
                    Some(r) => write!(f, "; what it held was saved to {}", r.display()),
                    None => f.write_str("; saving what it held failed (see the log)"),
                }
            }
            Error::WalLost(path) => write!(
                f,
                "write-ahead log lost: spool file {path} lost commits: its write-ahead log \
                 {path}-wal is missing or cut short after a crash; the file was not modified; \
                 open it with accept_lost_wal to go on with what it still holds (deleting \
                 {path}-shm opens it too, but may reuse seqs)",
                path = path.display()
            ),
            Error::Corrupt { path, source } => {
                write!(f, "corrupt spool file: {}: {source}", path.display())
            }
            Error::Commit(e) => write!(f, "commit failed: {e}"),
            Error::Storage(e) => write!(f, "storage: {e}"),
            Error::Consumer(msg) => write!(f, "consumer {msg}"),
            Error::CorruptEvent { seq, reason } => {
                write!(
                    f,
                    "corrupt event: stored event {seq} cannot be read: {reason}"
                )
            }
            Error::Delivery { delivered, source } => {
                write!(f, "delivery failed: after {delivered} events: {source}")
            }
            Error::Io { context, source } => write!(f, "io: {context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Corrupt { source, .. } => Some(source),
            Error::Commit(e) | Error::Storage(e) => Some(e),
            Error::Io { source, .. } => Some(source),
            Error::Delivery { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

/// Why a delivery failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryError {
    /// A later attempt may succeed (connection error, timeout, 408, 429, 5xx).
    Retryable {
        /// What went wrong.
        message: String,
        /// The receiver asked to wait this long (`Retry-After`).
        retry_after: Option<Duration>,
        /// The HTTP status, if there was a response.
        status: Option<u16>,
        /// How many events at the head of the batch were delivered before the failure,
        /// which concerns the next one; `None`: the batch as a whole. See
        /// [`with_delivered`](DeliveryError::with_delivered).
        delivered: Option<usize>,
    },
    /// Trying again will not help (other 4xx, redirects): the events go to dead letters.
    Permanent {
        /// What went wrong.
        message: String,
        /// The HTTP status, if there was a response.
        status: Option<u16>,
        /// How many events at the head of the batch were delivered before the failure,
        /// which concerns the next one; `None`: the batch as a whole.
        delivered: Option<usize>,
    },
}

impl DeliveryError {
    /// A failure worth retrying.
    pub fn retryable(message: impl Into<String>) -> Self {
        DeliveryError::Retryable {
            message: message.into(),
            retry_after: None,
            status: None,
            delivered: None,
        }
    }

    /// A failure worth retrying after `wait`, as the receiver asked.
    pub fn retry_after(message: impl Into<String>, wait: Duration) -> Self {
        DeliveryError::Retryable {
            message: message.into(),
            retry_after: Some(wait),
            status: None,
            delivered: None,
        }
    }

    /// A failure no retry can fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        DeliveryError::Permanent {
            message: message.into(),
            status: None,
            delivered: None,
        }
    }

    /// The same error, recording the HTTP status that caused it.
    pub fn with_status(mut self, code: u16) -> Self {
        match &mut self {
            DeliveryError::Retryable { status, .. } | DeliveryError::Permanent { status, .. } => {
                *status = Some(code)
            }
        }
        self
    }

    /// The same error, saying that the first `n` events of the batch were delivered and
    /// that the failure concerns the next one. Under [`Order::Total`](crate::Order::Total)
    /// those `n` are acknowledged; then a permanent failure dead-letters that one event
    /// alone and delivery goes on after it, and a retryable one retries from it. (Without
    /// it, the batch fails as a whole: retried whole, or dead-lettered whole. Concurrent
    /// sinks always treat a failure so.)
    pub fn with_delivered(mut self, n: usize) -> Self {
        match &mut self {
            DeliveryError::Retryable { delivered, .. }
            | DeliveryError::Permanent { delivered, .. } => *delivered = Some(n),
        }
        self
    }

    /// How many events at the head of the batch the sink delivered before the failure,
    /// if it said ([`with_delivered`](DeliveryError::with_delivered)).
    pub fn delivered(&self) -> Option<usize> {
        match self {
            DeliveryError::Retryable { delivered, .. }
            | DeliveryError::Permanent { delivered, .. } => *delivered,
        }
    }

    /// The HTTP status that caused the error, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            DeliveryError::Retryable { status, .. } | DeliveryError::Permanent { status, .. } => {
                *status
            }
        }
    }

    /// The wait the receiver asked for, if any.
    pub fn retry_after_hint(&self) -> Option<Duration> {
        match self {
            DeliveryError::Retryable { retry_after, .. } => *retry_after,
            DeliveryError::Permanent { .. } => None,
        }
    }

    /// True for [`DeliveryError::Retryable`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, DeliveryError::Retryable { .. })
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeliveryError::Retryable {
                message,
                retry_after: Some(wait),
                ..
            } => write!(f, "{message} (retry after {wait:?})"),
            DeliveryError::Retryable { message, .. } => f.write_str(message),
            DeliveryError::Permanent { message, .. } => write!(f, "{message} (permanent)"),
        }
    }
}

impl std::error::Error for DeliveryError {}

/// An error of the storage engine (SQLite), kept opaque so that upgrading the engine
/// is not a change to this crate's API. Its [`source`](std::error::Error::source) is
/// the engine's own error; cheap to clone.
#[derive(Clone)]
pub struct StorageError(Arc<rusqlite::Error>);

impl StorageError {
    pub(crate) fn new(e: rusqlite::Error) -> Self {
        StorageError(Arc::new(e))
    }

    /// True when the disk (or the `max_file_bytes` ceiling) is full.
    pub fn is_disk_full(&self) -> bool {
        self.0.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
    }
}

impl fmt::Debug for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Maps the storage engine's results to [`enum@Error`] inside the crate (no public
/// `From`: the engine's types stay out of the API).
pub(crate) trait Storage<T> {
    /// The result, its error as [`Error::Storage`].
    fn storage(self) -> Result<T>;
}

impl<T> Storage<T> for std::result::Result<T, rusqlite::Error> {
    fn storage(self) -> Result<T> {
        self.map_err(Error::storage)
    }
}
