//! Looking into a spool file from outside its owner: [`Inspector`] reads beside a
//! running spool (no lock taken, the writer never waits for it), checks the file
//! ([`Inspector::check`]), and [`repair`] mends what can be mended while nobody owns it.
//! The `eventspool` command (feature `cli`) is built on these.

use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use serde::Serialize;

use crate::config::SpoolConfig;
use crate::error::{Error, Result, Storage};
use crate::event::{EventQuery, SeqNo, StoredEvent};
use crate::store::{self, ConsumerInfo, DeadLetter, DeadLetterSummary, Decoded, StoreState};

/// Rows read at a time by [`Inspector::check`] and [`repair`].
const PAGE: usize = 1000;

/// A spool file opened for reading only, beside its owner if it has one: it takes no
/// lock and starts no thread, and the owner's writer never waits for it (each call is
/// one short read transaction on the file's write-ahead log). Reading a file nobody
/// owns leaves an empty `-wal` and `-shm` beside it, as any SQLite reader does; a file
/// whose write-ahead log was lost after a crash is read as the file alone, leaving its
/// `-shm` as it was (the evidence `Spool::open` and `check` go by).
#[derive(Debug)]
pub struct Inspector {
    path: PathBuf,
    conn: Connection,
    spool_id: String,
    /// Seqs of commits lost with the WAL after a crash, seen before SQLite opened the file.
    lost_seqs: Option<u64>,
}

/// What [`Inspector::stat`] reports of a spool file.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SpoolStat {
    /// The spool file.
    pub path: PathBuf,
    /// The file's random id (event ids without one of their own start with it).
    pub spool_id: String,
    /// The file's schema version.
    pub schema_version: i64,
    /// Events stored.
    pub events: u64,
    /// The lowest stored seq, if any is stored.
    pub first_seq: Option<SeqNo>,
    /// The highest seq ever assigned.
    pub last_seq: SeqNo,
    /// Bytes of events, as the caps count them.
    pub stored_bytes: u64,
    /// Timestamps (ms since the epoch) of the oldest and newest stored events.
    pub oldest_event_ms: Option<i64>,
    /// See `oldest_event_ms`.
    pub newest_event_ms: Option<i64>,
    /// The database file's size on disk, in bytes.
    pub file_bytes: u64,
    /// Of those, bytes in free pages.
    pub free_bytes: u64,
    /// The write-ahead log's size, in bytes (0 when there is none).
    pub wal_bytes: u64,
    /// `normal` or `full`, as the last owner opened the file.
    pub durability: Option<String>,
    /// When the last owner opened the file (ms since the epoch) ...
    pub opened_at_ms: Option<i64>,
    /// ... and its process id.
    pub opened_by_pid: Option<u32>,
    /// Dead letters kept, across sinks, and their bytes.
    pub dead_letters: u64,
    /// See `dead_letters`.
    pub dead_letter_bytes: u64,
    /// The dead letters of each sink.
    pub dead_letters_by_sink: Vec<DeadLetterSummary>,
    /// Every sink and consumer, with its cursor, lag and the age of the oldest event
    /// it has not acknowledged. Sinks read as [`ConsumerKind::Sink`](crate::ConsumerKind::Sink): the file does
    /// not know which its owner still runs.
    pub consumers: Vec<ConsumerInfo>,
}

/// Something [`Inspector::check`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Problem {
    /// SQLite's own check of the file's structure failed.
    Integrity {
        /// What SQLite said.
        message: String,
    },
    /// Commits were lost with the write-ahead log after a crash (see
    /// [`Error::WalLost`]).
    WalLost {
        /// How many seqs the lost commits may have used.
        seqs: u64,
    },
    /// A stored event cannot be decoded.
    DamagedEvent {
        /// Its seq.
        seq: SeqNo,
        /// What is wrong with it.
        reason: String,
    },
    /// A total kept in the file differs from what its rows add up to.
    Counter {
        /// The total: `stored_bytes`, `dead_letters` or `dead_letter_bytes`.
        name: String,
        /// What the file says.
        recorded: u64,
        /// What the rows add up to.
        counted: u64,
    },
    /// A cursor is past the highest seq ever assigned.
    CursorAhead {
        /// The consumer or sink.
        consumer: String,
        /// Its cursor.
        position: SeqNo,
        /// The highest seq assigned.
        last_seq: SeqNo,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Integrity { message } => write!(f, "file structure: {message}"),
            Problem::WalLost { seqs } => write!(
                f,
                "write-ahead log lost after a crash: commits of up to {seqs} seqs are gone"
            ),
            Problem::DamagedEvent { seq, reason } => write!(f, "seq {seq} is damaged: {reason}"),
            Problem::Counter {
                name,
                recorded,
                counted,
            } => write!(
                f,
                "{name} is recorded as {recorded}, the rows add up to {counted}"
            ),
            Problem::CursorAhead {
                consumer,
                position,
                last_seq,
            } => write!(
                f,
                "{consumer}'s cursor {position} is past the last seq assigned, {last_seq}"
            ),
        }
    }
}

/// What [`Inspector::check`] found.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct CheckReport {
    /// The spool file.
    pub path: PathBuf,
    /// Events read and decoded.
    pub events_checked: u64,
    /// Everything found wrong; empty when the file is healthy.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// True when nothing was found wrong.
    pub fn is_healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What [`repair`] did.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RepairReport {
    /// Damaged events moved to dead letters, with the consumers they went to.
    pub moved: Vec<MovedEvent>,
    /// Totals set to what the rows add up to.
    pub counters_fixed: Vec<Problem>,
    /// Cursors moved back to the highest seq assigned.
    pub cursors_moved: Vec<Problem>,
    /// Seqs skipped because commits were lost with the write-ahead log.
    pub lost_seqs_skipped: Option<u64>,
    /// The check after the repair: what is still wrong (damage to the file's structure
    /// that repair cannot mend: export what can be read and import it into a new spool).
    pub after: CheckReport,
}

/// A damaged event [`repair`] moved out of the stream.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct MovedEvent {
    /// Its seq.
    pub seq: SeqNo,
    /// What was wrong with it.
    pub reason: String,
    /// The sinks and consumers whose dead letters it went to: those that had not passed it.
    pub to: Vec<String>,
}

impl Inspector {
    /// Opens the spool file at `path` for reading, beside its owner if it runs.
    ///
    /// # Errors
    /// [`Error::Io`] when there is no file, [`Error::NotASpool`] for a file that is not
    /// a spool (or an empty one), [`Error::NewerSchema`], [`Error::Corrupt`].
    pub fn open(path: impl AsRef<Path>) -> Result<Inspector> {
        Inspector::open_keyed(path.as_ref(), store::Keying::plain())
    }

    /// Opens the encrypted spool file at `path` for reading, with its key (feature
    /// `encryption`).
    ///
    /// # Errors
    /// As [`open`](Inspector::open), and [`Error::WrongKey`].
    #[cfg(feature = "encryption")]
    pub fn open_with_key(path: impl AsRef<Path>, key: &crate::EncryptionKey) -> Result<Inspector> {
        let path = path.as_ref();
        let keying = store::Keying::new(key, &store::header_of(path)?)?;
        Inspector::open_keyed(path, keying)
    }

    fn open_keyed(path: &Path, keying: store::Keying) -> Result<Inspector> {
        let path = path.to_owned();
        let meta = std::fs::metadata(&path)
            .map_err(|e| Error::io(format!("no spool file at {}", path.display()), e))?;
        if meta.len() == 0 {
            return Err(Error::NotASpool(path));
        }
        store::check_key(&path, &keying)?;
        // Before SQLite opens the file: it would reset the `-shm` that tells of the loss.
        let lost_seqs = store::lost_seqs(&path);
        let conn = match lost_seqs {
            Some(_) => store::open_file_only(&path, &keying)?,
            None => store::open_reader(&path, &keying)?,
        };
        if store::validate(&conn, &path)? == 0 {
            return Err(Error::NotASpool(path));
        }
        let spool_id = store::load_state(&conn).storage()?.spool_id;
        Ok(Inspector {
            path,
            conn,
            spool_id,
            lost_seqs,
        })
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn state(&self) -> Result<StoreState> {
        store::load_state(&self.conn).storage()
    }

    /// Counts, sizes, cursors and dead letters of the file, as of now.
    ///
    /// # Errors
    /// [`Error::Storage`] if the file cannot be read.
    pub fn stat(&self) -> Result<SpoolStat> {
        let conn = &self.conn;
        let state = self.state()?;
        let tally = store::tally(conn).storage()?;
        let pages = store::pages(conn).storage()?;
        let meta = store::meta(conn).storage()?;
        let get = |key: &str| meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        Ok(SpoolStat {
            path: self.path.clone(),
            spool_id: state.spool_id,
            schema_version: store::schema_version(conn).storage()?,
            events: tally.events,
            first_seq: (tally.events > 0).then_some(state.first_seq),
            last_seq: state.last_seq,
            stored_bytes: state.stored_bytes,
            oldest_event_ms: tally.oldest_ms,
            newest_event_ms: tally.newest_ms,
            file_bytes: std::fs::metadata(&self.path).map_or(0, |m| m.len()),
            free_bytes: pages.free * pages.size,
            wal_bytes: store::wal_bytes(&self.path),
            durability: get("durability"),
            opened_at_ms: get("opened_at_ms").and_then(|v| v.parse().ok()),
            opened_by_pid: get("opened_by_pid").and_then(|v| v.parse().ok()),
            dead_letters: state.dead_letters,
            dead_letter_bytes: state.dead_letter_bytes,
            dead_letters_by_sink: store::dead_letter_summary(conn).storage()?,
            consumers: self.consumers()?,
        })
    }

    /// Runs a query, as [`Spool::query`](crate::Spool::query) does.
    ///
    /// # Errors
    /// [`Error::Storage`] if the file cannot be read or a row is damaged.
    pub fn query(&self, query: &EventQuery) -> Result<Vec<StoredEvent>> {
        store::query(&self.conn, &self.spool_id, query).storage()
    }

    /// Every sink and consumer recorded in the file, as
    /// [`Spool::consumers`](crate::Spool::consumers) lists them.
    ///
    /// # Errors
    /// [`Error::Storage`] if the file cannot be read.
    pub fn consumers(&self) -> Result<Vec<ConsumerInfo>> {
        store::consumers(&self.conn).storage()
    }

    /// Up to `limit` dead letters of `sink`, in seq order.
    ///
    /// # Errors
    /// [`Error::Storage`] if the file cannot be read.
    pub fn dead_letters(&self, sink: &str, limit: usize) -> Result<Vec<DeadLetter>> {
        store::dead_letters(&self.conn, &self.spool_id, sink, limit).storage()
    }

    /// Checks the file: SQLite's integrity check, then the spool's own invariants:
    /// every stored event decodes, the totals match the rows, no cursor is past the
    /// highest seq assigned, and no commit was lost with the write-ahead log. Reads
    /// every event (about a second per million).
    ///
    /// # Errors
    /// [`Error::Storage`] if the file cannot be read at all.
    pub fn check(&self) -> Result<CheckReport> {
        let mut problems: Vec<Problem> = store::integrity_check(&self.conn)
            .storage()?
            .into_iter()
            .map(|message| Problem::Integrity { message })
            .collect();
        if let Some(seqs) = self.lost_seqs {
            problems.push(Problem::WalLost { seqs });
        }
        let mut events_checked = 0;
        for_each_row(&self.conn, &self.spool_id, |row| {
            events_checked += 1;
            if let Err(corrupt) = row {
                problems.push(Problem::DamagedEvent {
                    seq: corrupt.seq,
                    reason: corrupt.reason.clone(),
                });
            }
        })?;
        let state = self.state()?;
        let tally = store::tally(&self.conn).storage()?;
        problems.extend(counters(&state, &tally));
        for c in self.consumers()? {
            if c.position > state.last_seq {
                problems.push(Problem::CursorAhead {
                    consumer: c.name,
                    position: c.position,
                    last_seq: state.last_seq,
                });
            }
        }
        Ok(CheckReport {
            path: self.path.clone(),
            events_checked,
            problems,
        })
    }
}

/// Reads every stored event in pages, handing each decoded row (or why it does not
/// decode) to `each`.
fn for_each_row(conn: &Connection, spool_id: &str, mut each: impl FnMut(&Decoded)) -> Result<()> {
    let mut after = 0;
    loop {
        let rows = store::read_after(conn, spool_id, after, PAGE).storage()?;
        let Some(last) = rows.last() else {
            return Ok(());
        };
        after = store::seq_of(last);
        rows.iter().for_each(&mut each);
    }
}

/// The totals of the state row that differ from what the rows add up to.
fn counters(state: &StoreState, tally: &store::Tally) -> Vec<Problem> {
    [
        ("stored_bytes", state.stored_bytes, tally.event_bytes),
        ("dead_letters", state.dead_letters, tally.dead_letters),
        (
            "dead_letter_bytes",
            state.dead_letter_bytes,
            tally.dead_letter_bytes,
        ),
    ]
    .into_iter()
    .filter(|(_, recorded, counted)| recorded != counted)
    .map(|(name, recorded, counted)| Problem::Counter {
        name: name.into(),
        recorded,
        counted,
    })
    .collect()
}

/// Mends the spool file at `path` while nobody owns it: moves each event that cannot
/// be decoded to the dead letters of every sink and consumer that has not passed it
/// (then deletes it from the stream: `Spool::len` counts its seq until the events
/// around it are gone), sets the totals to what the rows add up to, moves cursors that
/// are past the highest seq back to it, and opens past commits lost with the
/// write-ahead log (skipping their seqs, as `accept_lost_wal` does). Everything else
/// is kept. Damage to the file's structure is not mended: [`RepairReport::after`] says
/// what is left.
///
/// # Errors
/// [`Error::Locked`] while a spool owns the file (nothing is changed); the errors of
/// [`Spool::open`](crate::Spool::open) for a file that is not a spool.
pub fn repair(path: impl AsRef<Path>) -> Result<RepairReport> {
    repair_keyed(path.as_ref(), store::Keying::plain())
}

/// [`repair`] for an encrypted spool, with its key (feature `encryption`).
///
/// # Errors
/// As [`repair`], and [`Error::WrongKey`].
#[cfg(feature = "encryption")]
pub fn repair_with_key(path: impl AsRef<Path>, key: &crate::EncryptionKey) -> Result<RepairReport> {
    let path = path.as_ref();
    repair_keyed(path, store::Keying::new(key, &store::header_of(path)?)?)
}

fn repair_keyed(path: &Path, keying: store::Keying) -> Result<RepairReport> {
    // Refuses what is not a spool before anything is written.
    Inspector::open_keyed(path, keying.clone())?;
    let _lock = store::lock(path)?;
    let mut config = SpoolConfig::new(path);
    config.accept_lost_wal = true;
    let lost_seqs_skipped = store::lost_seqs(path);
    let mut opened = store::open_writer(&config, &keying)?;
    let spool_id = opened.state.spool_id.clone();
    let mut damaged = Vec::new();
    for_each_row(&opened.conn, &spool_id, |row| {
        if let Err(corrupt) = row {
            damaged.push(corrupt.clone());
        }
    })?;
    let before = store::tally(&opened.conn).storage()?;
    let tx = opened.conn.transaction().storage()?;
    let mut moved = Vec::new();
    for corrupt in damaged {
        let to = store::move_damaged(&tx, corrupt.seq, &corrupt.reason).storage()?;
        moved.push(MovedEvent {
            seq: corrupt.seq,
            reason: corrupt.reason,
            to,
        });
    }
    let counters_fixed = counters(&opened.state, &before);
    store::recount(&tx).storage()?;
    let last_seq = store::load_state(&tx).storage()?.last_seq;
    let cursors_moved = store::clamp_cursors(&tx)
        .storage()?
        .into_iter()
        .map(|(consumer, position)| Problem::CursorAhead {
            consumer,
            position,
            last_seq,
        })
        .collect();
    tx.commit()
        .map_err(|e| Error::Commit(crate::error::StorageError::new(e)))?;
    store::checkpoint_truncate(&opened.conn, std::time::Duration::from_secs(5)).storage()?;
    drop(opened);
    let after = Inspector::open_keyed(path, keying)?.check()?;
    Ok(RepairReport {
        moved,
        counters_fixed,
        cursors_moved,
        lost_seqs_skipped,
        after,
    })
}
