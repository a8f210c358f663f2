//! Every SQL statement of the crate: the schema and its migrations, the pragmas, the
//! writer's statements, the readers' queries, and the decoding of rows.
//!
//! Tables:
//! - `events(seq, id, type, source, subject, ts, size, data)`: the stored events, one
//!   contiguous range of `seq` but for damaged rows [`repair`] moved out. `id` is NULL
//!   when the spool derives it from `seq`.
//! - `state`: one row with the spool's random id, the highest `seq` ever assigned (so
//!   `seq` is never reused, even after every event was deleted), the stored bytes, and
//!   the dead letters' count and bytes.
//! - `consumers(name, kind, acked)`: durable cursors of sinks and subscribers.
//! - `dead_letters`: what sinks gave up on, with attempts, last error and size.
//! - `meta(key, value)`: what the last owner opened the file with (`durability`,
//!   `opened_at_ms`, `opened_by_pid`), for `Inspector::stat`.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, Transaction, params};
use serde_json::value::RawValue;

use super::key::Keying;
use crate::config::SpoolConfig;
use crate::error::{Error, Result, Storage, StorageError};
use crate::event::{Event, EventQuery, SeqNo, StoredEvent};

use super::records::{Behind, Bounds, DeadLetterSummary, Pages, Rows, Tally};
use super::records::{
    ConsumerInfo, ConsumerKind, Corrupt, DeadLetter, DeadLetterBook, Decoded, Op, SeekPosition,
    StartAt, StoreState, evicted_in,
};

/// The columns every read of events (or dead letters) selects, in the order
/// [`decode`] reads them.
macro_rules! event_columns {
    () => {
        "seq, id, type, source, subject, ts, data"
    };
}

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
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
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
                Some(range) => {
                    ack(tx, sink, *range.end())?;
                    Ok(evicted_in(*range.start(), *range.end(), first_seq))
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
) -> rusqlite::Result<Vec<Behind>> {
    let mut stmt = tx.prepare_cached("SELECT name, acked FROM consumers WHERE acked + 1 < ?1")?;
    let rows = stmt.query_map([int(before)], |r| {
        Ok(Behind {
            consumer: r.get(0)?,
            acked: r.get::<_, i64>(1)? as u64,
        })
    })?;
    rows.collect()
}

/// The writer's connection, with what is in force on it.
pub(crate) struct Opened {
    pub(crate) conn: Connection,
    pub(crate) state: StoreState,
    pub(crate) journal_mode: String,
    pub(crate) synchronous: String,
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
            source: StorageError::new(e),
        },
        _ => Error::storage(e),
    }
}

/// Checks that `conn`'s file is a spool this build understands, reading only: returns
/// its schema version, 0 for a new, empty file. A file that is not is not modified.
pub(crate) fn validate(conn: &Connection, path: &Path) -> Result<i64> {
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
    let ours = app_id == APPLICATION_ID || (app_id == 0 && tables == 0);
    if !ours {
        return Err(Error::NotASpool(path.to_owned()));
    }
    if version > SCHEMA_VERSION {
        return Err(Error::NewerSchema {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(version)
}

/// Opens the writer's connection to a file the guards let through (see
/// [`super::open_writer`]): validates it, then sets WAL and the schema, skipping `lost`
/// seqs. A file that fails validation is not modified.
pub(crate) fn open_writer(
    config: &SpoolConfig,
    lost: Option<u64>,
    keying: &Keying,
) -> Result<Opened> {
    let path = config.path.as_path();
    let conn = Connection::open(path).map_err(at_open(path))?;
    apply_key(&conn, keying).map_err(at_open(path))?;
    conn.busy_timeout(BUSY_TIMEOUT).storage()?;
    let version = validate(&conn, path)?;

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
    // What `Inspector::stat` shows of the last owner.
    let (durability, now, pid) = (&synchronous, crate::time::now_ms(), std::process::id());
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         {migrate}
         {SCHEMA}
         INSERT OR IGNORE INTO state (one, spool_id, last_seq, stored_bytes)
             VALUES (0, lower(hex(randomblob(8))), 0, 0);
         {skip_lost}
         INSERT OR REPLACE INTO meta (key, value) VALUES
             ('durability', '{durability}'),
             ('opened_at_ms', '{now}'),
             ('opened_by_pid', '{pid}');
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

pub(crate) fn load_state(conn: &Connection) -> rusqlite::Result<StoreState> {
    let (spool_id, last_seq, stored_bytes, dead_count, dead_bytes): (String, i64, i64, i64, i64) =
        conn.query_row(
            "SELECT spool_id, last_seq, stored_bytes, dead_count, dead_bytes
             FROM state WHERE one = 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
    // Two statements: SQLite answers min() or max() alone from the key's end, but
    // scans the whole table for both in one.
    let first: Option<i64> = conn.query_row("SELECT min(seq) FROM events", [], |r| r.get(0))?;
    let max: Option<i64> = conn.query_row("SELECT max(seq) FROM events", [], |r| r.get(0))?;
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
pub(crate) fn bytes_before(tx: &Transaction<'_>, before: SeqNo) -> rusqlite::Result<Rows> {
    tx.prepare_cached("SELECT count(*), coalesce(sum(size), 0) FROM events WHERE seq < ?1")?
        .query_row([int(before)], |r| {
            Ok(Rows {
                count: r.get::<_, i64>(0)? as u64,
                bytes: r.get::<_, i64>(1)? as u64,
            })
        })
}

/// Deletes every event with `seq < before`; returns how many and their bytes.
pub(crate) fn delete_before(tx: &Transaction<'_>, before: SeqNo) -> rusqlite::Result<Rows> {
    let rows = bytes_before(tx, before)?;
    if rows.count > 0 {
        tx.prepare_cached("DELETE FROM events WHERE seq < ?1")?
            .execute([int(before)])?;
    }
    Ok(rows)
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
pub(crate) fn consumers(conn: &Connection) -> rusqlite::Result<Vec<ConsumerInfo>> {
    let Bounds { first, last } = bounds(conn)?;
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
            lag: crate::event::lag(position, first, last),
            oldest_unacked_age_ms: oldest.map_or(0, |ts| crate::time::age_ms(ts.max(1))),
        })
    })?;
    rows.collect()
}

const READ_AFTER: &str = concat!(
    "SELECT ",
    event_columns!(),
    " FROM events
                          WHERE seq > ?1 ORDER BY seq LIMIT ?2"
);

/// Up to `limit` rows with `seq > after`, in order. A row that cannot be decoded is
/// returned as [`Corrupt`] instead of failing the read, so consumers can quarantine it
/// and go on.
pub(crate) fn read_after(
    conn: &Connection,
    spool_id: &str,
    after: SeqNo,
    limit: usize,
) -> rusqlite::Result<Vec<Decoded>> {
    let mut stmt = conn.prepare_cached(READ_AFTER)?;
    let rows = stmt.query_map(params![int(after), count(limit)], |row| {
        decode(row, spool_id)
    })?;
    rows.collect()
}

/// Dead letters of `sink` marked for redelivery, in seq order.
pub(crate) fn requeued(
    conn: &Connection,
    spool_id: &str,
    sink: &str,
    limit: usize,
) -> rusqlite::Result<Vec<Decoded>> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        event_columns!(),
        " FROM dead_letters
         WHERE sink = ?1 AND requeued = 1 ORDER BY seq LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![sink, count(limit)], |row| decode(row, spool_id))?;
    rows.collect()
}

/// Up to `limit` dead letters of `sink`, in seq order.
pub(crate) fn dead_letters(
    conn: &Connection,
    spool_id: &str,
    sink: &str,
    limit: usize,
) -> rusqlite::Result<Vec<DeadLetter>> {
    let mut stmt = conn.prepare_cached(concat!(
        "SELECT ",
        event_columns!(),
        ", attempts, last_status, last_error,
                failed_at, requeued
         FROM dead_letters WHERE sink = ?1 ORDER BY seq LIMIT ?2"
    ))?;
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
    rows.collect()
}

/// Copies the database into a new file at `target` (which must exist, empty).
pub(crate) fn vacuum_into(
    conn: &Connection,
    target: &str,
    keying: &Keying,
) -> rusqlite::Result<()> {
    // VACUUM INTO would encrypt with SQLCipher's default settings, not the spool's.
    #[cfg(feature = "encryption")]
    if let Some(literal) = keying.literal() {
        return export(conn, target, literal);
    }
    let _ = keying;
    conn.execute("VACUUM INTO ?1", [target]).map(drop)
}

/// Copies the WAL into the database without waiting for readers or the writer (PASSIVE).
pub(crate) fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

/// The page HMAC: SHA-256, which CPUs with SHA extensions compute several times faster
/// than SQLCipher's default SHA-512 (it was a fifth of all the time spent, see
/// `guide::performance`), at the same 256-bit key strength.
#[cfg(feature = "encryption")]
const CIPHER_HMAC: &str = "HMAC_SHA256";

/// Pages of an encrypted file: 16 KiB, so each page's fixed cost (its IV, its HMAC) is
/// spread over four times the rows of SQLite's default 4 KiB (`guide::performance`).
#[cfg(feature = "encryption")]
const CIPHER_PAGE_SIZE: u32 = 16384;

/// Keys `conn` (SQLCipher) for a file encrypted under `keying`; before any other
/// statement on it. Nothing for a plain file.
pub(crate) fn apply_key(conn: &Connection, keying: &Keying) -> rusqlite::Result<()> {
    #[cfg(feature = "encryption")]
    {
        silence_cipher_log(conn)?;
        if let Some(literal) = keying.literal() {
            let pragma = zeroize::Zeroizing::new(format!(
                "PRAGMA key = \"{literal}\";
                 PRAGMA cipher_hmac_algorithm = {CIPHER_HMAC};
                 PRAGMA cipher_page_size = {CIPHER_PAGE_SIZE};"
            ));
            conn.execute_batch(&pragma)?;
        }
    }
    let _ = (conn, keying);
    Ok(())
}

/// Copies the whole of `conn`'s database into the new file `to`, encrypted under
/// `literal` (plain when it is empty), with the application id and schema version
/// that mark it as a spool.
#[cfg(feature = "encryption")]
pub(crate) fn export(conn: &Connection, to: &str, literal: &str) -> rusqlite::Result<()> {
    conn.execute("ATTACH DATABASE ?1 AS target KEY ?2", params![to, literal])?;
    let copied = (|| {
        if !literal.is_empty() {
            conn.execute_batch(&format!(
                "PRAGMA target.cipher_hmac_algorithm = {CIPHER_HMAC};
                 PRAGMA target.cipher_page_size = {CIPHER_PAGE_SIZE};"
            ))?;
        }
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        conn.query_row("SELECT sqlcipher_export('target')", [], |_| Ok(()))?;
        conn.execute_batch(&format!(
            "PRAGMA target.application_id = {APPLICATION_ID};
             PRAGMA target.user_version = {version};"
        ))
    })();
    let detached = conn.execute_batch("DETACH DATABASE target");
    copied.and(detached)
}

/// SQLCipher writes its warnings and errors to stderr unless told otherwise (a wrong
/// key would print three lines): the spool reports through its errors and `log`.
/// The setting is the process's, and changing it is not thread-safe in SQLCipher
/// (two at once crashed in `fclose`), so it is made once, with every other caller
/// waiting for it.
#[cfg(feature = "encryption")]
fn silence_cipher_log(conn: &Connection) -> rusqlite::Result<()> {
    static QUIET: std::sync::Once = std::sync::Once::new();
    let mut outcome = Ok(());
    QUIET.call_once(|| outcome = conn.execute_batch("PRAGMA cipher_log = off;"));
    outcome
}

/// Reads the first page (the schema): where a wrong key shows.
pub(crate) fn first_page(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
}

#[cfg(feature = "encryption")]
/// Re-encrypts the whole file with `keying` (SQLCipher's `PRAGMA rekey`, which writes
/// every page through the WAL), then copies the WAL into the file and empties it, so
/// no page under the old key is left in either.
pub(crate) fn rekey(conn: &Connection, keying: &Keying, wait: Duration) -> rusqlite::Result<bool> {
    let literal = keying.literal().unwrap_or_default();
    let pragma = zeroize::Zeroizing::new(format!("PRAGMA rekey = \"{literal}\";"));
    conn.execute_batch(&pragma)?;
    checkpoint_truncate(conn, wait)
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

/// A connection for the background checkpoints (it writes only what the WAL holds),
/// and for copying a spool nobody owns.
pub(crate) fn open_checkpointer(path: &Path, keying: &Keying) -> Result<Connection> {
    let conn = Connection::open(path).map_err(at_open(path))?;
    apply_key(&conn, keying).map_err(at_open(path))?;
    conn.busy_timeout(BUSY_TIMEOUT).storage()?;
    Ok(conn)
}

/// `(lowest stored seq, highest seq ever assigned)`; the first is `None` when empty.
pub(crate) fn bounds(conn: &Connection) -> rusqlite::Result<Bounds> {
    let first: Option<i64> = conn
        .prepare_cached("SELECT min(seq) FROM events")?
        .query_row([], |r| r.get(0))?;
    let last: i64 = conn
        .prepare_cached(
            "SELECT max(last_seq, coalesce((SELECT max(seq) FROM events), 0)) FROM state",
        )?
        .query_row([], |r| r.get(0))?;
    Ok(Bounds {
        first: first.map(|f| f as u64),
        last: last as u64,
    })
}

/// Runs an [`EventQuery`].
pub(crate) fn query(
    conn: &Connection,
    spool_id: &str,
    q: &EventQuery,
) -> rusqlite::Result<Vec<StoredEvent>> {
    let mut sql = String::from(concat!(
        "SELECT ",
        event_columns!(),
        " FROM events WHERE seq > ?"
    ));
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
    rows.collect()
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

/// The id of an event stored without one: `"<spool id>-<seq>"`, built at every read,
/// sized once and without `format!` (it costs every read: [`crate::guide::performance`]).
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

/// Maps a row of `event_columns!()`; a damaged row is an error.
fn stored_event(row: &rusqlite::Row<'_>, spool_id: &str) -> rusqlite::Result<StoredEvent> {
    decode(row, spool_id)?.map_err(|c| {
        let reason: Box<dyn std::error::Error + Send + Sync> = c.reason.into();
        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, reason)
    })
}

/// Maps a row of `event_columns!()`, telling a damaged row
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

/// What the last owner wrote in `meta` (nothing for a file from before the table).
pub(crate) fn meta(conn: &Connection) -> rusqlite::Result<Vec<(String, String)>> {
    let has_table: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'meta'",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare("SELECT key, value FROM meta ORDER BY key")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// The file's schema version (`PRAGMA user_version`).
pub(crate) fn schema_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
}

/// What the tables hold, counted row by row, to compare with the state row.
pub(crate) fn tally(conn: &Connection) -> rusqlite::Result<Tally> {
    let (events, event_bytes): (i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(size), 0) FROM events",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (dead_letters, dead_letter_bytes): (i64, i64) = conn.query_row(
        "SELECT count(*), coalesce(sum(size), 0) FROM dead_letters",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    // No row when the spool is empty.
    let times = |sql: &str| {
        conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
            .optional()
            .map(Option::flatten)
    };
    Ok(Tally {
        events: events as u64,
        event_bytes: event_bytes as u64,
        dead_letters: dead_letters as u64,
        dead_letter_bytes: dead_letter_bytes as u64,
        oldest_ms: times("SELECT ts FROM events ORDER BY seq LIMIT 1")?,
        newest_ms: times("SELECT ts FROM events ORDER BY seq DESC LIMIT 1")?,
    })
}

/// The dead letters of each sink: how many, their bytes, how many are requeued, and
/// when the oldest failed.
pub(crate) fn dead_letter_summary(conn: &Connection) -> rusqlite::Result<Vec<DeadLetterSummary>> {
    let mut stmt = conn.prepare(
        "SELECT sink, count(*), coalesce(sum(size), 0), sum(requeued), min(failed_at)
         FROM dead_letters GROUP BY sink ORDER BY sink",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(DeadLetterSummary {
            sink: r.get(0)?,
            count: r.get::<_, i64>(1)? as u64,
            bytes: r.get::<_, i64>(2)? as u64,
            requeued: r.get::<_, i64>(3)? as u64,
            oldest_failed_at_ms: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// The file's size as SQLite counts it (pages in use and free), without the WAL.
pub(crate) fn pages(conn: &Connection) -> rusqlite::Result<Pages> {
    // SQLCipher answers `page_size` as text.
    let get = |pragma: &str| {
        conn.pragma_query_value(None, pragma, |r| match r.get_ref(0)? {
            rusqlite::types::ValueRef::Text(text) => std::str::from_utf8(text)
                .ok()
                .and_then(|t| t.parse::<i64>().ok())
                .ok_or_else(|| {
                    rusqlite::Error::InvalidColumnType(
                        0,
                        pragma.into(),
                        rusqlite::types::Type::Text,
                    )
                }),
            _ => r.get::<_, i64>(0),
        })
    };
    Ok(Pages {
        size: get("page_size")? as u64,
        count: get("page_count")? as u64,
        free: get("freelist_count")? as u64,
    })
}

/// SQLite's own check of the file's structure: what it found, empty when all is well.
pub(crate) fn integrity_check(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let lines = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let lines: Vec<String> = lines.collect::<rusqlite::Result<_>>()?;
    Ok(lines.into_iter().filter(|l| l != "ok").collect())
}

/// Moves the damaged row `seq` to the dead letters of every consumer that has not
/// passed it (copied as it is stored, with `reason`), then deletes it. Returns the
/// consumers it went to.
pub(crate) fn move_damaged(
    tx: &Transaction<'_>,
    seq: SeqNo,
    reason: &str,
) -> rusqlite::Result<Vec<String>> {
    let error = format!("damaged in the file, moved by repair: {reason}");
    let mut stmt = tx.prepare_cached(
        "INSERT INTO dead_letters (sink, seq, id, type, source, subject, ts, data, attempts,
             last_status, last_error, failed_at, size)
         SELECT c.name, e.seq, e.id, e.type, e.source, e.subject, e.ts, e.data, 0, NULL, ?2,
             ?3, e.size
         FROM events e JOIN consumers c ON c.acked < e.seq WHERE e.seq = ?1
         ON CONFLICT (sink, seq) DO NOTHING
         RETURNING sink",
    )?;
    let rows = stmt.query_map(params![int(seq), error, crate::time::now_ms()], |r| {
        r.get(0)
    })?;
    let to = rows.collect::<rusqlite::Result<Vec<String>>>()?;
    tx.prepare_cached("DELETE FROM events WHERE seq = ?1")?
        .execute([int(seq)])?;
    Ok(to)
}

/// Sets the state row's totals to what the tables hold.
pub(crate) fn recount(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute_batch(
        "UPDATE state SET
             last_seq = max(last_seq, (SELECT coalesce(max(seq), 0) FROM events)),
             stored_bytes = (SELECT coalesce(sum(size), 0) FROM events),
             dead_count = (SELECT count(*) FROM dead_letters),
             dead_bytes = (SELECT coalesce(sum(size), 0) FROM dead_letters)
         WHERE one = 0",
    )
}

/// Moves back every cursor past the highest seq assigned; returns the cursors moved,
/// with where they were.
pub(crate) fn clamp_cursors(tx: &Transaction<'_>) -> rusqlite::Result<Vec<(String, SeqNo)>> {
    let last: i64 = tx.query_row("SELECT last_seq FROM state WHERE one = 0", [], |r| r.get(0))?;
    let mut ahead = tx.prepare("SELECT name, acked FROM consumers WHERE acked > ?1")?;
    let moved = ahead
        .query_map([last], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    tx.execute("UPDATE consumers SET acked = ?1 WHERE acked > ?1", [last])?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    #[test]
    fn reads_are_not_prepared_again_at_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig::new(dir.path().join("spool.db"));
        let _writer = super::super::open_writer(&config, &Keying::plain()).unwrap();
        let pool =
            super::super::ReaderPool::new(&config.path, Keying::plain(), 1, Duration::from_secs(1))
                .unwrap();
        let conn = pool.get().unwrap();
        for (after, limit) in [(0, 100), (5, 100), (9, 1)] {
            read_after(&conn, "spool", after, limit).unwrap();
        }
        let stmt = conn.prepare_cached(READ_AFTER).unwrap();
        assert_eq!(stmt.get_status(StatementStatus::RePrepare), 0);
    }
}
