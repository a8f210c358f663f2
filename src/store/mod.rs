//! The SQLite file: schema, pragmas, validation at open, and every SQL statement.
//!
//! Tables:
//! - `events(seq, id, type, source, subject, ts, size, data)`: the stored events, always
//!   one contiguous range of `seq`. `id` is NULL when the spool derives it from `seq`.
//! - `state`: one row with the spool's random id, the highest `seq` ever assigned (so
//!   `seq` is never reused, even after every event was deleted) and the stored bytes.
//! - `consumers(name, kind, acked)`: durable cursors of sinks and subscribers.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, Transaction, params};
use serde_json::value::RawValue;

use crate::config::SpoolConfig;
use crate::delivery::DeadLetter;
use crate::error::{Error, Result};
use crate::event::{Event, EventQuery, SeqNo, StoredEvent};
use crate::subscribe::{ConsumerInfo, ConsumerKind, SeekPosition};

mod pool;

pub(crate) use pool::ReaderPool;

/// The newest schema this build writes and understands.
/// 2 added the dead letters' sizes and totals (for their cap).
pub(crate) const SCHEMA_VERSION: i64 = 2;
/// `PRAGMA application_id` of a spool file: "EvSp".
const APPLICATION_ID: i64 = 0x4576_5370;
/// Largest WAL kept on disk after a checkpoint resets it.
pub(crate) const JOURNAL_SIZE_LIMIT: i64 = 64 << 20;
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Tables are created with `IF NOT EXISTS` at every open, so additive tables need
/// no migration step.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq     INTEGER PRIMARY KEY,
    id      TEXT,
    type    TEXT NOT NULL,
    source  TEXT,
    subject TEXT,
    ts      INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    data    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    one          INTEGER PRIMARY KEY CHECK (one = 0),
    spool_id     TEXT NOT NULL,
    last_seq     INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL,
    dead_count   INTEGER NOT NULL DEFAULT 0,
    dead_bytes   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS consumers (
    name  TEXT PRIMARY KEY,
    kind  TEXT NOT NULL,
    acked INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    sink        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    id          TEXT,
    type        TEXT NOT NULL,
    source      TEXT,
    subject     TEXT,
    ts          INTEGER NOT NULL,
    data        TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    last_status INTEGER,
    last_error  TEXT NOT NULL,
    failed_at   INTEGER NOT NULL,
    requeued    INTEGER NOT NULL DEFAULT 0,
    size        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sink, seq)
);
";

/// From schema 1: the dead letters' sizes (what their events count for against the
/// caps, as `Event::size` counts it) and their totals.
const MIGRATE_FROM_1: &str = "
ALTER TABLE dead_letters ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
UPDATE dead_letters SET size = octet_length(data) + octet_length(type)
    + coalesce(octet_length(id), 0) + coalesce(octet_length(subject), 0)
    + coalesce(octet_length(source), 0);
ALTER TABLE state ADD COLUMN dead_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE state ADD COLUMN dead_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE state SET dead_count = (SELECT count(*) FROM dead_letters),
                 dead_bytes = (SELECT coalesce(sum(size), 0) FROM dead_letters);
";

/// A seq or byte count as SQLite's integer; past `i64::MAX` (which no stored value
/// reaches) it saturates, so a bound from a caller never turns negative.
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A row count for `LIMIT ?`: SQLite reads a negative limit as none.
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Where a newly registered consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartAt {
    /// With the oldest stored event.
    Oldest,
    /// With the next event committed.
    Next,
}

/// A change to consumers or dead letters, applied by the writer in its transaction.
#[derive(Debug)]
pub(crate) enum Op {
    /// Registers a consumer if it is new, else makes it of `kind` (keeping its cursor);
    /// yields its cursor.
    Register {
        consumer: String,
        kind: ConsumerKind,
        start: StartAt,
    },
    /// Moves a cursor forward (never back). `from` is set by a sink's worker: the first
    /// seq of the range `from..=seq` it handled; what of it the caps evicted while it
    /// was in flight was counted as evicted unsent, and the op yields how many, for the
    /// worker to take back (it counts them as delivered or filtered).
    Ack {
        consumer: String,
        seq: SeqNo,
        from: Option<SeqNo>,
    },
    /// Records events a sink gave up on, copying them so deletion can go on: from
    /// `held` (the worker's copies of `seqs`, in order), or from the file for a row that
    /// could not be decoded (`held` empty). When they came from the stream, moves the
    /// cursor past the range `ack` (yielding, as `Ack` does, how many of it the caps
    /// evicted meanwhile).
    DeadLetter {
        sink: String,
        seqs: Vec<SeqNo>,
        held: Vec<StoredEvent>,
        attempts: u32,
        status: Option<u16>,
        error: String,
        ack: Option<(SeqNo, SeqNo)>,
    },
    /// Sets a consumer's position, registering it as a subscriber if new (at the oldest
    /// stored event for `LastAcknowledged`), in one step; yields the position.
    Seek { consumer: String, to: SeekPosition },
    /// Unregisters a consumer; yields 1 if it existed. (The spool refuses its sinks.)
    Remove { consumer: String },
    /// Marks a sink's dead letters for redelivery; yields how many.
    Requeue { sink: String },
    /// Removes redelivered dead letters.
    Redelivered { sink: String, seqs: Vec<SeqNo> },
    /// Removes a sink's dead letters that failed at or before `failed_before` (ms since
    /// the epoch; all of them when `None`); yields how many.
    Purge {
        sink: String,
        failed_before: Option<i64>,
    },
}

/// The dead letters kept, across sinks, and their caps. The writer owns it; a
/// transaction changes a copy that replaces it once committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeadLetterBook {
    pub(crate) count: u64,
    pub(crate) bytes: u64,
    /// Dead letters the caps evicted (since open).
    pub(crate) evicted: u64,
    pub(crate) max_count: u64,
    pub(crate) max_bytes: u64,
}

impl DeadLetterBook {
    /// Counts `size` bytes more (or fewer: `added` false).
    fn count(&mut self, size: u64, added: bool) {
        if added {
            self.count += 1;
            self.bytes += size;
        } else {
            self.count = self.count.saturating_sub(1);
            self.bytes = self.bytes.saturating_sub(size);
        }
    }

    /// Evicts the oldest dead letters (in the order they were written) until the rest
    /// is within the caps, and saves the totals.
    fn enforce(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        if self.count > self.max_count || self.bytes > self.max_bytes {
            let mut oldest =
                tx.prepare_cached("SELECT rowid, size FROM dead_letters ORDER BY rowid")?;
            let mut rows = oldest.query([])?;
            let mut last = None;
            while self.count > self.max_count || self.bytes > self.max_bytes {
                let Some(row) = rows.next()? else { break };
                last = Some(row.get::<_, i64>(0)?);
                self.count(row.get::<_, i64>(1)? as u64, false);
                self.evicted += 1;
            }
            if let Some(last) = last {
                tx.prepare_cached("DELETE FROM dead_letters WHERE rowid <= ?1")?
                    .execute([last])?;
            }
        }
        tx.prepare_cached("UPDATE state SET dead_count = ?1, dead_bytes = ?2 WHERE one = 0")?
            .execute([int(self.count), int(self.bytes)])?;
        Ok(())
    }
}

/// Applies `op`; `first_seq..=last_seq` is what is stored after this transaction's
/// inserts; `dead` is kept up to date with the dead letters.
pub(crate) fn apply(
    tx: &Transaction<'_>,
    op: &Op,
    first_seq: SeqNo,
    last_seq: SeqNo,
    dead: &mut DeadLetterBook,
) -> rusqlite::Result<u64> {
    match op {
        Op::Register {
            consumer,
            kind,
            start,
        } => {
            let acked = match start {
                StartAt::Oldest => first_seq.saturating_sub(1),
                StartAt::Next => last_seq,
            };
            tx.prepare_cached(
                "INSERT INTO consumers (name, kind, acked) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET kind = excluded.kind",
            )?
            .execute(params![consumer, kind.stored(), int(acked)])?;
            Ok(cursor(tx, consumer)?.unwrap_or(acked))
        }
        Op::Ack {
            consumer,
            seq,
            from,
        } => {
            ack(tx, consumer, *seq)?;
            Ok(from.map_or(0, |from| evicted_in(from, *seq, first_seq)))
        }
        Op::Seek { consumer, to } => {
            let seq = match to {
                SeekPosition::Beginning => first_seq.saturating_sub(1),
                SeekPosition::Latest => last_seq,
                SeekPosition::After(n) => *n,
                SeekPosition::LastAcknowledged => {
                    let oldest = first_seq.saturating_sub(1);
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO consumers (name, kind, acked)
                         VALUES (?1, 'subscriber', ?2)",
                    )?
                    .execute(params![consumer, int(oldest)])?;
                    return Ok(cursor(tx, consumer)?.unwrap_or(oldest));
                }
            };
            tx.prepare_cached(
                "INSERT INTO consumers (name, kind, acked) VALUES (?1, 'subscriber', ?2)
                 ON CONFLICT (name) DO UPDATE SET acked = excluded.acked",
            )?
            .execute(params![consumer, int(seq)])?;
            Ok(seq)
        }
        Op::Remove { consumer } => Ok(tx
            .prepare_cached("DELETE FROM consumers WHERE name = ?1")?
            .execute([consumer])? as u64),
        Op::DeadLetter {
            sink,
            seqs,
            held,
            attempts,
            status,
            error,
            ack: acked,
        } => {
            let now = crate::time::now_ms();
            for (i, &seq) in seqs.iter().enumerate() {
                let args = params![sink, int(seq), attempts, status, error, now];
                let again = tx
                    .prepare_cached(
                        "UPDATE dead_letters SET attempts = attempts + ?3, last_status = ?4,
                             last_error = ?5, failed_at = ?6, requeued = 0
                         WHERE sink = ?1 AND seq = ?2",
                    )?
                    .execute(args)?;
                if again > 0 {
                    continue;
                }
                let size = match held.get(i) {
                    // From the worker's copy: the caps may have evicted the row meanwhile.
                    Some(e) => {
                        tx.prepare_cached(
                            "INSERT INTO dead_letters (sink, seq, id, type, source, subject, ts,
                                 data, attempts, last_status, last_error, failed_at, size)
                             VALUES (?1, ?2, ?7, ?8, ?9, ?10, ?11, ?12, ?3, ?4, ?5, ?6, ?13)",
                        )?
                        .execute(params![
                            sink,
                            int(seq),
                            attempts,
                            status,
                            error,
                            now,
                            e.id,
                            e.event_type,
                            e.source,
                            e.subject,
                            e.timestamp_ms,
                            e.data.get(),
                            int(e.size())
                        ])?;
                        Some(e.size())
                    }
                    // A row that cannot be decoded: copied as it is stored.
                    None => tx
                        .prepare_cached(
                            "INSERT INTO dead_letters (sink, seq, id, type, source, subject, ts,
                                 data, attempts, last_status, last_error, failed_at, size)
                             SELECT ?1, seq, id, type, source, subject, ts, data, ?3, ?4, ?5, ?6,
                                 size
                             FROM events WHERE seq = ?2 RETURNING size",
                        )?
                        .query_row(args, |r| r.get::<_, i64>(0))
                        .optional()?
                        .map(|size| size as u64),
                };
                if let Some(size) = size {
                    dead.count(size, true);
                }
            }
            dead.enforce(tx)?;
            match acked {
                Some((from, to)) => {
                    ack(tx, sink, *to)?;
                    Ok(evicted_in(*from, *to, first_seq))
                }
                None => Ok(0),
            }
        }
        Op::Requeue { sink } => Ok(tx
            .prepare_cached(
                "UPDATE dead_letters SET requeued = 1 WHERE sink = ?1 AND requeued = 0",
            )?
            .execute([sink])? as u64),
        Op::Redelivered { sink, seqs } => {
            let mut stmt = tx.prepare_cached(
                "DELETE FROM dead_letters WHERE sink = ?1 AND seq = ?2 RETURNING size",
            )?;
            for &seq in seqs {
                // Gone already when the caps evicted it meanwhile.
                let size = stmt.query_row(params![sink, int(seq)], |r| r.get::<_, i64>(0));
                if let Some(size) = size.optional()? {
                    dead.count(size as u64, false);
                }
            }
            drop(stmt);
            dead.enforce(tx)?;
            Ok(seqs.len() as u64)
        }
        Op::Purge {
            sink,
            failed_before,
        } => {
            let before = failed_before.unwrap_or(i64::MAX);
            let (count, bytes): (i64, i64) = tx
                .prepare_cached(
                    "SELECT count(*), coalesce(sum(size), 0) FROM dead_letters
                     WHERE sink = ?1 AND failed_at <= ?2",
                )?
                .query_row(params![sink, before], |r| Ok((r.get(0)?, r.get(1)?)))?;
            tx.prepare_cached("DELETE FROM dead_letters WHERE sink = ?1 AND failed_at <= ?2")?
                .execute(params![sink, before])?;
            dead.count = dead.count.saturating_sub(count as u64);
            dead.bytes = dead.bytes.saturating_sub(bytes as u64);
            dead.enforce(tx)?;
            Ok(count as u64)
        }
    }
}

/// Consumers whose cursor is before `before - 1`: they have not read everything an
/// eviction up to `before` removes.
pub(crate) fn consumers_behind(
    tx: &Transaction<'_>,
    before: SeqNo,
) -> rusqlite::Result<Vec<(String, SeqNo)>> {
    let mut stmt = tx.prepare_cached("SELECT name, acked FROM consumers WHERE acked + 1 < ?1")?;
    let rows = stmt.query_map([int(before)], |r| {
        Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
    })?;
    rows.collect()
}

/// What the writer needs to know about the file when it starts.
#[derive(Debug)]
pub(crate) struct StoreState {
    pub(crate) spool_id: String,
    /// Highest `seq` ever assigned (0 for a new spool).
    pub(crate) last_seq: SeqNo,
    /// Lowest stored `seq`, or `last_seq + 1` when nothing is stored.
    pub(crate) first_seq: SeqNo,
    pub(crate) stored_bytes: u64,
    pub(crate) dead_letters: u64,
    pub(crate) dead_letter_bytes: u64,
}

/// The writer's connection, with what is in force on it.
pub(crate) struct Opened {
    pub(crate) conn: Connection,
    pub(crate) state: StoreState,
    pub(crate) journal_mode: String,
    pub(crate) synchronous: String,
}

/// Creates the directory `path` is in, if it is not there.
pub(crate) fn make_parent(path: &Path) -> Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("cannot create {}", parent.display()), e)),
        None => Ok(()),
    }
}

/// Takes the OS lock that makes one `Spool` the owner of `path`.
pub(crate) fn lock(path: &Path) -> Result<File> {
    let lock_path = beside(path, ".lock");
    let file = create_private(&lock_path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked(path.to_owned())),
        Err(fs::TryLockError::Error(e)) => {
            Err(Error::io(format!("cannot lock {}", lock_path.display()), e))
        }
    }
}

/// `path` with `suffix` appended to its file name: `events.db` -> `events.db-wal`.
pub(crate) fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens (creating it if needed) a file readable and writable by its owner only.
fn create_private(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))
}

/// Refuses a file that is not SQLite before SQLite may touch it.
fn check_header(path: &Path) -> Result<()> {
    let mut file =
        File::open(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let mut header = [0u8; 100];
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        }
    }
    match read {
        0 => Ok(()), // empty: a new spool
        100 if header.starts_with(b"SQLite format 3\0") => Ok(()),
        _ => Err(Error::NotASpool(path.to_owned())),
    }
}

/// After a crash `<path>-shm` still describes the WAL. When it says the WAL holds
/// commits not yet copied into the database but `<path>-wal` is missing or shorter,
/// those commits were lost with it: SQLite would open the file without them, and the
/// spool would hand out their `seq`s again. Returns how many `seq`s they may have
/// used at most (every frame they wrote full of the smallest rows there can be), so
/// that opening can skip them; `None` when nothing was lost.
///
/// The layout read is SQLite's WAL-index header (two copies of 48 bytes in native byte
/// order, then the checkpoint info), documented in SQLite's `wal.c`.
fn lost_seqs(path: &Path) -> Option<u64> {
    const WAL_INDEX_VERSION: u32 = 3_007_000;
    // A row is at least its 2-byte cell pointer, a length, the rowid, and a record
    // header of one byte per column.
    const SMALLEST_ROW: u64 = 8;
    let mut shm = [0u8; 100];
    // No WAL index left behind, or none SQLite could use: nothing to go by.
    File::open(beside(path, "-shm"))
        .and_then(|mut f| f.read_exact(&mut shm))
        .ok()?;
    let word = |at: usize| u32::from_ne_bytes([shm[at], shm[at + 1], shm[at + 2], shm[at + 3]]);
    let initialised = shm[12] == 1 && shm[..48] == shm[48..96];
    if word(0) != WAL_INDEX_VERSION || !initialised {
        return None;
    }
    let page = match u16::from_ne_bytes([shm[14], shm[15]]) {
        1 => 65_536,
        n => u64::from(n),
    };
    let (frames, copied) = (word(16), word(96));
    if frames <= copied {
        return None; // everything in the WAL is also in the database
    }
    let needed = 32 + u64::from(frames) * (24 + page);
    (wal_bytes(path) < needed).then(|| u64::from(frames - copied) * (page / SMALLEST_ROW))
}

/// Identifies the file at `path` (device and inode), to notice it deleted or replaced.
pub(crate) fn file_id(path: &Path) -> Option<(u64, u64)> {
    id_of(&fs::metadata(path).ok()?)
}

/// Whether `file` (open) is the file at `path`.
pub(crate) fn is_at(file: &File, path: &Path) -> bool {
    let open = file.metadata().ok().and_then(|meta| id_of(&meta));
    open.is_some() && open == file_id(path)
}

fn id_of(meta: &fs::Metadata) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        Some((0, 0))
    }
}

/// Saves what `conn` holds into a new file after the spool's own file was deleted or
/// replaced under it: at `path` when that is free and may be used `in_place` (the
/// WAL was emptied, else SQLite would apply the frames left at `<path>-wal` to the new
/// file; and the spool still holds the lock), else at `<path>.rescued`.
pub(crate) fn rescue(conn: &Connection, path: &Path, in_place: bool) -> Option<PathBuf> {
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
        match conn.execute("VACUUM INTO ?1", [name]) {
            Ok(_) => return Some(target.clone()),
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

/// Maps errors met while reading an existing file at open.
fn at_open(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| match e.sqlite_error_code() {
        Some(ErrorCode::CannotOpen) | Some(ErrorCode::ReadOnly) => Error::io(
            format!("cannot write to {} or its directory", path.display()),
            std::io::Error::other(e),
        ),
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => Error::Corrupt {
            path: path.to_owned(),
            source: Box::new(e),
        },
        _ => Error::Sqlite(e),
    }
}

/// Opens the writer's connection: validates the file, then sets WAL and the schema.
/// A file that fails validation is not modified.
pub(crate) fn open_writer(config: &SpoolConfig) -> Result<Opened> {
    let path = config.path.as_path();
    drop(create_private(path)?);
    check_header(path)?;
    let lost = lost_seqs(path);
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
        fs::remove_file(beside(path, "-shm")).map_err(|e| {
            Error::io(
                format!("cannot remove {}", beside(path, "-shm").display()),
                e,
            )
        })?;
    }
    let conn = Connection::open(path).map_err(at_open(path))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let app_id: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(at_open(path))?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(at_open(path))?;
    // Reading the schema reads the first page: corruption there shows before any write.
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(at_open(path))?;
    if app_id == 0 {
        if tables > 0 {
            return Err(Error::NotASpool(path.to_owned()));
        }
    } else if app_id != APPLICATION_ID {
        return Err(Error::NotASpool(path.to_owned()));
    }
    if version > SCHEMA_VERSION {
        return Err(Error::NewerSchema {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }

    let (journal_mode, synchronous) = configure(&conn, config).map_err(at_open(path))?;
    // In the transaction that opens the file, so the skip is durable before anything
    // else is written.
    let skip_lost = lost.map_or(String::new(), |seqs| {
        format!(
            "UPDATE state SET last_seq =
                 max(last_seq, (SELECT coalesce(max(seq), 0) FROM events)) + {seqs};"
        )
    });
    let migrate = if version == 1 { MIGRATE_FROM_1 } else { "" };
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         {migrate}
         {SCHEMA}
         INSERT OR IGNORE INTO state (one, spool_id, last_seq, stored_bytes)
             VALUES (0, lower(hex(randomblob(8))), 0, 0);
         {skip_lost}
         PRAGMA application_id = {APPLICATION_ID};
         PRAGMA user_version = {SCHEMA_VERSION};
         COMMIT;"
    ))
    .map_err(at_open(path))?;
    let state = load_state(&conn).map_err(at_open(path))?;
    Ok(Opened {
        conn,
        state,
        journal_mode,
        synchronous,
    })
}

/// Sets the writer's pragmas; returns the journal mode and `synchronous` in force.
fn configure(conn: &Connection, config: &SpoolConfig) -> rusqlite::Result<(String, String)> {
    let journal_mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", config.durability.pragma())?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    if let Some(max) = config.max_file_bytes {
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        conn.pragma_update(None, "max_page_count", int((max / page_size as u64).max(1)))?;
    }
    let synchronous = match conn.pragma_query_value(None, "synchronous", |r| r.get::<_, i64>(0))? {
        0 => "off",
        1 => "normal",
        2 => "full",
        _ => "extra",
    }
    .to_owned();
    Ok((journal_mode, synchronous))
}

fn load_state(conn: &Connection) -> rusqlite::Result<StoreState> {
    let (spool_id, last_seq, stored_bytes, dead_count, dead_bytes): (String, i64, i64, i64, i64) =
        conn.query_row(
            "SELECT spool_id, last_seq, stored_bytes, dead_count, dead_bytes
             FROM state WHERE one = 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
    let (first, max): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(seq), max(seq) FROM events", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let last_seq = (last_seq.max(max.unwrap_or(0))) as u64;
    Ok(StoreState {
        spool_id,
        last_seq,
        first_seq: first.map_or(last_seq + 1, |f| f as u64),
        stored_bytes: stored_bytes as u64,
        dead_letters: dead_count as u64,
        dead_letter_bytes: dead_bytes as u64,
    })
}

// ---- writer side ------------------------------------------------------------------

/// Inserts `events` with the seqs `first_seq..`.
pub(crate) fn insert(
    tx: &Transaction<'_>,
    first_seq: SeqNo,
    events: &[Event],
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO events (seq, id, type, source, subject, ts, size, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for (seq, event) in (first_seq..).zip(events) {
        stmt.execute(params![
            int(seq),
            event.id,
            event.event_type,
            event.source,
            event.subject,
            event.timestamp_ms.unwrap_or_default(),
            int(event.size()),
            event.data_json().unwrap_or("null"),
        ])?;
    }
    Ok(())
}

/// How many events have `seq < before`, and their bytes.
pub(crate) fn bytes_before(tx: &Transaction<'_>, before: SeqNo) -> rusqlite::Result<(u64, u64)> {
    tx.prepare_cached("SELECT count(*), coalesce(sum(size), 0) FROM events WHERE seq < ?1")?
        .query_row([int(before)], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })
}

/// Deletes every event with `seq < before`; returns how many and their bytes.
pub(crate) fn delete_before(tx: &Transaction<'_>, before: SeqNo) -> rusqlite::Result<(u64, u64)> {
    let (count, bytes) = bytes_before(tx, before)?;
    if count > 0 {
        tx.prepare_cached("DELETE FROM events WHERE seq < ?1")?
            .execute([int(before)])?;
    }
    Ok((count, bytes))
}

/// The first `seq` to keep so that at least `excess` bytes are freed from the oldest end.
pub(crate) fn keep_from_for_bytes(
    tx: &Transaction<'_>,
    first_seq: SeqNo,
    excess: u64,
) -> rusqlite::Result<SeqNo> {
    let mut stmt =
        tx.prepare_cached("SELECT seq, size FROM events WHERE seq >= ?1 ORDER BY seq")?;
    let mut rows = stmt.query([int(first_seq)])?;
    let mut freed = 0u64;
    let mut keep_from = first_seq;
    while freed < excess {
        let Some(row) = rows.next()? else { break };
        let seq: i64 = row.get(0)?;
        let size: i64 = row.get(1)?;
        freed += size as u64;
        keep_from = seq as u64 + 1;
    }
    Ok(keep_from)
}

pub(crate) fn save_state(
    tx: &Transaction<'_>,
    last_seq: SeqNo,
    stored_bytes: u64,
) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE state SET last_seq = ?1, stored_bytes = ?2 WHERE one = 0")?
        .execute([int(last_seq), int(stored_bytes)])?;
    Ok(())
}

/// Moves a consumer's cursor forward (never back) to `seq`.
pub(crate) fn ack(conn: &Connection, name: &str, seq: SeqNo) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE consumers SET acked = max(acked, ?2) WHERE name = ?1")?
        .execute(params![name, int(seq)])?;
    Ok(())
}

/// How many of `from..=to` are gone before `first_seq`: evicted by the caps (events a
/// consumer has not acknowledged are never deleted otherwise).
pub(crate) fn evicted_in(from: SeqNo, to: SeqNo, first_seq: SeqNo) -> u64 {
    (to + 1).min(first_seq).saturating_sub(from)
}

/// The lowest cursor over all consumers: every event up to it was acknowledged by all.
/// `None` when there is no consumer (events are then kept until the caps evict them).
pub(crate) fn min_acked(tx: &Transaction<'_>) -> rusqlite::Result<Option<SeqNo>> {
    tx.prepare_cached("SELECT min(acked) FROM consumers")?
        .query_row([], |r| r.get::<_, Option<i64>>(0))
        .map(|v| v.map(|v| v as u64))
}

/// One consumer's cursor, if it is registered.
pub(crate) fn cursor(conn: &Connection, name: &str) -> rusqlite::Result<Option<SeqNo>> {
    use rusqlite::OptionalExtension;
    conn.prepare_cached("SELECT acked FROM consumers WHERE name = ?1")?
        .query_row([name], |r| r.get::<_, i64>(0))
        .optional()
        .map(|v| v.map(|v| v as u64))
}

/// Every consumer with its kind, position and lag.
pub(crate) fn consumers(conn: &Connection) -> Result<Vec<ConsumerInfo>> {
    let (first, last) = bounds(conn)?;
    let first = first.unwrap_or(last + 1);
    let mut stmt = conn.prepare_cached(
        "SELECT name, kind, acked,
                (SELECT ts FROM events WHERE seq > consumers.acked ORDER BY seq LIMIT 1)
         FROM consumers ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        let position = r.get::<_, i64>(2)? as u64;
        let oldest: Option<i64> = r.get(3)?;
        Ok(ConsumerInfo {
            name: r.get(0)?,
            kind: ConsumerKind::from_stored(&r.get::<_, String>(1)?),
            position,
            lag: last.saturating_sub(position.max(first - 1)),
            oldest_unacked_age_ms: oldest.map_or(0, |ts| crate::time::age_ms(ts.max(1))),
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// A stored row that cannot be decoded into an event (its bytes were damaged).
#[derive(Debug, Clone)]
pub(crate) struct Corrupt {
    pub(crate) seq: SeqNo,
    pub(crate) reason: String,
}

impl Corrupt {
    /// Moves the row to `sink`'s dead letters (it was never delivered); when it was
    /// read from the stream (`from_stream`), also moves the cursor past it, so the sink
    /// goes on.
    pub(crate) fn quarantine(&self, sink: &str, from_stream: bool) -> Op {
        Op::DeadLetter {
            sink: sink.to_owned(),
            seqs: vec![self.seq],
            held: Vec::new(),
            attempts: 0,
            status: None,
            error: format!("corrupt row, not delivered: {}", self.reason),
            ack: from_stream.then_some((self.seq, self.seq)),
        }
    }

    pub(crate) fn error(&self) -> Error {
        Error::CorruptEvent {
            seq: self.seq,
            reason: self.reason.clone(),
        }
    }
}

/// A row read for a consumer: the event, or why it cannot be decoded.
pub(crate) type Decoded = std::result::Result<StoredEvent, Corrupt>;

/// The seq of a decoded row.
pub(crate) fn seq_of(row: &Decoded) -> SeqNo {
    match row {
        Ok(event) => event.seq,
        Err(corrupt) => corrupt.seq,
    }
}

const READ_AFTER: &str = "SELECT seq, id, type, source, subject, ts, data FROM events
                          WHERE seq > ?1 ORDER BY seq LIMIT ?2";

/// Up to `limit` rows with `seq > after`, in order. A row that cannot be decoded is
/// returned as [`Corrupt`] instead of failing the read, so consumers can quarantine it
/// and go on.
pub(crate) fn read_after(
    conn: &Connection,
    spool_id: &str,
    after: SeqNo,
    limit: usize,
) -> Result<Vec<Decoded>> {
    let mut stmt = conn.prepare_cached(READ_AFTER)?;
    let rows = stmt.query_map(params![int(after), count(limit)], |row| {
        decode(row, spool_id)
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Dead letters of `sink` marked for redelivery, in seq order.
pub(crate) fn requeued(
    conn: &Connection,
    spool_id: &str,
    sink: &str,
    limit: usize,
) -> Result<Vec<Decoded>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, id, type, source, subject, ts, data FROM dead_letters
         WHERE sink = ?1 AND requeued = 1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![sink, count(limit)], |row| decode(row, spool_id))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Up to `limit` dead letters of `sink`, in seq order.
pub(crate) fn dead_letters(
    conn: &Connection,
    spool_id: &str,
    sink: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, id, type, source, subject, ts, data, attempts, last_status, last_error,
                failed_at, requeued
         FROM dead_letters WHERE sink = ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![sink, count(limit)], |row| {
        Ok(DeadLetter {
            event: decode(row, spool_id)?.unwrap_or_else(|c| damaged(row, spool_id, &c)),
            attempts: row.get(7)?,
            last_status: row.get(8)?,
            last_error: row.get(9)?,
            failed_at_ms: row.get(10)?,
            requeued: row.get(11)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Copies the WAL into the database without waiting for readers or the writer (PASSIVE).
pub(crate) fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

/// Copies all of the WAL into the database and empties it (TRUNCATE), waiting up to
/// `wait` for readers of older snapshots. Returns whether it got that far: another
/// checkpoint in progress makes SQLite answer busy at once, whatever `wait` is.
pub(crate) fn checkpoint_truncate(conn: &Connection, wait: Duration) -> rusqlite::Result<bool> {
    conn.busy_timeout(wait)?;
    let busy = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    });
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(busy? == 0)
}

/// A connection for the background checkpoints (it writes only what the WAL holds).
pub(crate) fn open_checkpointer(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(at_open(path))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// The size of the WAL file, 0 when there is none.
pub(crate) fn wal_bytes(path: &Path) -> u64 {
    fs::metadata(beside(path, "-wal")).map_or(0, |m| m.len())
}

// ---- reader side ------------------------------------------------------------------

/// `(lowest stored seq, highest seq ever assigned)`; the first is `None` when empty.
pub(crate) fn bounds(conn: &Connection) -> Result<(Option<SeqNo>, SeqNo)> {
    let first: Option<i64> = conn
        .prepare_cached("SELECT min(seq) FROM events")?
        .query_row([], |r| r.get(0))?;
    let last: i64 = conn
        .prepare_cached(
            "SELECT max(last_seq, coalesce((SELECT max(seq) FROM events), 0)) FROM state",
        )?
        .query_row([], |r| r.get(0))?;
    Ok((first.map(|f| f as u64), last as u64))
}

/// Runs an [`EventQuery`].
pub(crate) fn query(conn: &Connection, spool_id: &str, q: &EventQuery) -> Result<Vec<StoredEvent>> {
    let mut sql =
        String::from("SELECT seq, id, type, source, subject, ts, data FROM events WHERE seq > ?");
    let mut args: Vec<rusqlite::types::Value> = vec![int(q.after_seq.unwrap_or(0)).into()];
    if let Some(since) = q.since_ms {
        sql.push_str(" AND ts >= ?");
        args.push(since.into());
    }
    if let Some(until) = q.until_ms {
        sql.push_str(" AND ts < ?");
        args.push(until.into());
    }
    if !q.event_types.is_empty() {
        sql.push_str(" AND (");
        for (i, pattern) in q.event_types.iter().enumerate() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            match pattern.strip_suffix('*') {
                Some(prefix) => {
                    sql.push_str("type GLOB ?");
                    args.push(format!("{}*", glob_escape(prefix)).into());
                }
                None => {
                    sql.push_str("type = ?");
                    args.push(pattern.clone().into());
                }
            }
        }
        sql.push(')');
    }
    if let Some(subject) = &q.subject {
        sql.push_str(" AND subject = ?");
        args.push(subject.clone().into());
    }
    if let Some(source) = &q.source {
        sql.push_str(" AND source = ?");
        args.push(source.clone().into());
    }
    sql.push_str(" ORDER BY seq LIMIT ?");
    args.push(count(q.limit).into());

    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |row| {
        stored_event(row, spool_id)
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Escapes GLOB's special characters so `prefix` matches literally.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        match c {
            '*' | '?' | '[' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    out
}

/// The id of an event stored without one: `"<spool id>-<seq>"`, built at every read.
/// Sized once and without `format!`, which took a quarter of the decoding of a row
/// (1 150 of 4 700 instructions per 256-byte event, callgrind; now ~500).
fn default_id(spool_id: &str, seq: SeqNo) -> String {
    use std::fmt::Write as _;
    let mut id = String::with_capacity(spool_id.len() + 21);
    id.push_str(spool_id);
    id.push('-');
    let _ = write!(id, "{seq}"); // writing to a String cannot fail
    id
}

/// What can be shown of a damaged row: its bytes as text (lossily) in a JSON string.
fn damaged(row: &rusqlite::Row<'_>, spool_id: &str, corrupt: &Corrupt) -> StoredEvent {
    let lossy = |i: usize| match row.get_ref(i) {
        Ok(rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b)) => {
            String::from_utf8_lossy(b).into_owned()
        }
        _ => String::new(),
    };
    let data = serde_json::to_string(&lossy(6)).unwrap_or_else(|_| "null".into());
    StoredEvent {
        id: default_id(spool_id, corrupt.seq),
        seq: corrupt.seq,
        event_type: lossy(2),
        source: None,
        subject: None,
        timestamp_ms: row.get(5).unwrap_or(0),
        data: RawValue::from_string(data).unwrap_or_else(|_| RawValue::NULL.to_owned()),
    }
}

/// Maps a row of `seq, id, type, source, subject, ts, data`; a damaged row is an error.
fn stored_event(row: &rusqlite::Row<'_>, spool_id: &str) -> rusqlite::Result<StoredEvent> {
    decode(row, spool_id)?.map_err(|c| {
        let reason: Box<dyn std::error::Error + Send + Sync> = c.reason.into();
        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, reason)
    })
}

/// Maps a row of `seq, id, type, source, subject, ts, data`, telling a damaged row
/// (wrong column types, data that is not JSON) apart from a failed read.
fn decode(row: &rusqlite::Row<'_>, spool_id: &str) -> rusqlite::Result<Decoded> {
    let seq = row.get::<_, i64>(0)? as u64;
    let fields = || -> std::result::Result<StoredEvent, String> {
        let text = |i: usize| row.get::<_, String>(i).map_err(|e| e.to_string());
        let opt = |i: usize| row.get::<_, Option<String>>(i).map_err(|e| e.to_string());
        let data =
            RawValue::from_string(text(6)?).map_err(|e| format!("data is not valid JSON: {e}"))?;
        Ok(StoredEvent {
            id: opt(1)?.unwrap_or_else(|| default_id(spool_id, seq)),
            seq,
            event_type: text(2)?,
            source: opt(3)?,
            subject: opt(4)?,
            timestamp_ms: row.get(5).map_err(|e| e.to_string())?,
            data,
        })
    };
    Ok(fields().map_err(|reason| Corrupt { seq, reason }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    #[test]
    fn reads_are_not_prepared_again_at_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig::new(dir.path().join("spool.db"));
        let _writer = open_writer(&config).unwrap();
        let pool = ReaderPool::new(&config.path, 1).unwrap();
        let conn = pool.get().unwrap();
        for (after, limit) in [(0, 100), (5, 100), (9, 1)] {
            read_after(&conn, "spool", after, limit).unwrap();
        }
        let stmt = conn.prepare_cached(READ_AFTER).unwrap();
        assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0);
    }
}
