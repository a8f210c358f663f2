//! The spool file deleted or replaced under the writer: noticed at every commit (and
//! every second when idle), what the connection holds saved, nothing more written.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::store;

use super::{Writer, checkpoint::*, db::*};

impl Writer {
    /// [`file_gone`](Writer::file_gone), taking the connection's lock.
    pub(super) fn check_file(&mut self) -> Option<Gone> {
        let db = self.db.clone();
        let mut db = db.lock();
        self.file_gone(&mut db)
    }

    /// A `stat` per commit notices the file deleted or replaced under the writer: its
    /// commits would reach a file nobody can open again. The first time, what the
    /// connection still holds is saved (see [`store::rescue`]). Returns where to, while
    /// the file is gone; a file moved back in place is written again.
    pub(super) fn file_gone(&mut self, db: &mut DbState) -> Option<Gone> {
        db.missing = store::file_id(&self.path) != self.file_id;
        if !db.missing {
            return None;
        }
        if db.gone.is_none()
            && let Some(conn) = db.conn.as_ref()
        {
            log::error!(
                "spool file {} was deleted or replaced while open; saving what it held",
                self.path.display()
            );
            // Empty the WAL first: it stays at `<path>-wal`, where SQLite would apply its
            // frames to a new file at `path`.
            let emptied = self
                .checkpointer
                .truncate(conn, WAL_WAIT)
                .unwrap_or_else(|e| {
                    log::error!("cannot empty the WAL of {}: {e}", self.path.display());
                    false
                });
            // Its directory may have gone with it (and the lock file in it). Without
            // the lock, `path` may be someone else's: saved beside it then.
            let owned = store::make_parent(&self.path)
                .and_then(|()| self.keep_lock())
                .inspect_err(|e| log::error!("cannot save {} in place: {e}", self.path.display()))
                .is_ok();
            let gone = Gone {
                rescued: store::rescue(conn, &self.path, emptied && owned, &self.keying),
            };
            // Callers learn of it at their next commit; the hook, also when none comes.
            self.shared.report(&gone.error(&self.path));
            db.gone = Some(gone);
        }
        db.gone.clone()
    }

    /// Takes the lock file again if it went with the file's directory: until this
    /// writer's connections close, nobody else may open a file at `path`, because
    /// SQLite removes `<path>-wal` and `<path>-shm` by name when the last of them
    /// closes, and those would then be the newcomer's.
    pub(super) fn keep_lock(&mut self) -> Result<()> {
        if !store::is_at(&self.lock, &store::beside(&self.path, ".lock")) {
            self.lock = store::lock(&self.path)?;
        }
        Ok(())
    }
}

/// The spool file found deleted or replaced: what it held was saved to `rescued`, if
/// that worked.
#[derive(Debug, Clone)]
pub(super) struct Gone {
    pub(super) rescued: Option<PathBuf>,
}

impl Gone {
    /// The error callers get for the file at `path`.
    pub(super) fn error(&self, path: &Path) -> Error {
        Error::FileGone {
            path: path.to_owned(),
            rescued: self.rescued.clone(),
        }
    }
}
