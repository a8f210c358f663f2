//! The pool of read-only connections that queries, subscriptions and sink readers use.
//!
//! Written here rather than taken from r2d2: r2d2 opens connections on a scheduled
//! thread pool of its own (three threads per pool, alive ~30 s after the pool is
//! dropped), and a spool must leave no thread behind once closed. Here a connection is
//! opened on the thread that needs it, and nothing runs in the background.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use super::key::Keying;
use crate::error::{Error, Result, Storage};

/// Read-only connections to one spool file, opened on demand up to a maximum and kept
/// for reuse. Cheap to clone: all clones share the connections.
#[derive(Clone)]
pub(crate) struct ReaderPool {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    max: usize,
    /// How long `get` waits for a connection when all of them are in use.
    wait: Duration,
    state: Mutex<State>,
    /// Signalled when a connection is given back (or an open failed).
    returned: Condvar,
}

struct State {
    idle: Vec<Connection>,
    /// Connections in existence: idle, lent out, or being opened.
    open: usize,
    /// What keys a new connection.
    keying: Keying,
    /// While the file's key changes: no connection is lent.
    paused: bool,
}

/// A connection lent by the pool; it goes back when dropped.
pub(crate) struct Pooled<'a> {
    conn: Option<Connection>,
    pool: &'a Shared,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("a lent connection until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.lock().idle.push(conn);
            // All: a `pause` may be waiting beside `get`s.
            self.pool.returned.notify_all();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ReaderPool {
    /// A pool of at most `max` connections to `path`, with one opened now so that a
    /// file that cannot be read fails here.
    pub(crate) fn new(path: &Path, keying: Keying, max: u32, wait: Duration) -> Result<ReaderPool> {
        let first = open_reader(path, &keying)?;
        Ok(ReaderPool {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                max: (max as usize).max(1),
                wait,
                state: Mutex::new(State {
                    idle: vec![first],
                    open: 1,
                    keying,
                    paused: false,
                }),
                returned: Condvar::new(),
            }),
        })
    }

    /// A connection: an idle one, else a new one while fewer than the maximum exist,
    /// else the first one given back.
    ///
    /// # Errors
    /// [`Error::Storage`] if a new connection cannot be opened; [`Error::Timeout`] when
    /// none was given back within the pool's wait.
    pub(crate) fn get(&self) -> Result<Pooled<'_>> {
        let pool = &*self.shared;
        let deadline = crate::time::deadline(pool.wait);
        let mut state = pool.lock();
        loop {
            if state.paused {
                // The key is changing: wait for the new one.
            } else if let Some(conn) = state.idle.pop() {
                return Ok(Pooled {
                    conn: Some(conn),
                    pool,
                });
            } else if state.open < pool.max {
                state.open += 1;
                let keying = state.keying.clone();
                drop(state);
                return match open_reader(&pool.path, &keying) {
                    Ok(conn) => Ok(Pooled {
                        conn: Some(conn),
                        pool,
                    }),
                    Err(e) => {
                        pool.lock().open -= 1;
                        pool.returned.notify_one();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout { waited: pool.wait });
            }
            state = pool
                .returned
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl ReaderPool {
    /// Closes the idle connections (a lent one goes back to the pool as usual). Called
    /// by `close` before the writer's connection closes, so that the writer's is the
    /// last and SQLite removes the WAL and its index: the file stands alone.
    pub(crate) fn close_idle(&self) {
        let idle = {
            let mut state = self.shared.lock();
            state.open -= state.idle.len();
            std::mem::take(&mut state.idle)
        };
        drop(idle); // closed outside the lock
    }
}

impl ReaderPool {
    #[cfg(feature = "encryption")]
    /// Stops lending, waits up to `wait` until every lent connection is back, and closes
    /// them all: no connection under the old key is left to read the file while its key
    /// changes. [`resume`](ReaderPool::resume) lends again.
    ///
    /// # Errors
    /// [`Error::Timeout`] when a connection stayed lent (lending resumes at once).
    pub(crate) fn pause(&self, wait: Duration) -> Result<()> {
        let pool = &*self.shared;
        let deadline = crate::time::deadline(wait);
        let mut state = pool.lock();
        state.paused = true;
        while state.open > state.idle.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.paused = false;
                pool.returned.notify_all();
                return Err(Error::Timeout { waited: wait });
            }
            state = pool
                .returned
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.open = 0;
        let idle = std::mem::take(&mut state.idle);
        drop(state);
        drop(idle);
        Ok(())
    }

    #[cfg(feature = "encryption")]
    /// Lends again after [`pause`](ReaderPool::pause), keying new connections with
    /// `keying` when given.
    pub(crate) fn resume(&self, keying: Option<Keying>) {
        let mut state = self.shared.lock();
        if let Some(keying) = keying {
            state.keying = keying;
        }
        state.paused = false;
        self.shared.returned.notify_all();
    }
}

impl ReaderPool {
    /// Runs `read` on a lent connection.
    ///
    /// # Errors
    /// As [`get`](ReaderPool::get), and [`Error::Storage`] for what `read` fails with.
    pub(crate) fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let conn = self.get()?;
        read(&conn).storage()
    }
}

/// Opens a read-only connection with the readers' settings, keyed by `keying`.
pub(crate) fn open_reader(path: &Path, keying: &Keying) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).storage()?;
    super::sql::apply_key(&conn, keying).storage()?;
    conn.busy_timeout(super::BUSY_TIMEOUT).storage()?;
    // Plans that do not depend on bound values: SQLite otherwise plans around the value
    // bound to `LIMIT ?` and prepares the statement again at every read.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .storage()?;
    Ok(conn)
}

/// Opens the database file alone, read-only and immutable: SQLite neither reads nor
/// writes `<path>-wal` and `<path>-shm` (for a file whose WAL was lost: its `-shm`
/// is the evidence, which any other connection would reset).
pub(crate) fn open_file_only(path: &Path, keying: &Keying) -> Result<Connection> {
    let text = path.to_str().ok_or_else(|| {
        Error::InvalidConfig(format!("the path is not UTF-8: {}", path.display()))
    })?;
    let mut uri = String::from("file:");
    for c in text.chars() {
        match c {
            '%' | '?' | '#' => uri.push_str(&format!("%{:02X}", c as u32)),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(uri, flags).storage()?;
    super::sql::apply_key(&conn, keying).storage()?;
    Ok(conn)
}
