//! The file-system side of a spool file, apart from SQL: its parent directory, the lock
//! that makes one `Spool` its owner, its identity (to notice it deleted or replaced),
//! what `<path>-shm` says after a crash, and the sizes of its WAL.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::key::Header;
use crate::error::{Error, Result};

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
pub(super) fn create_private(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))
}

/// Reads what the file's first bytes say it is, before SQLite may touch it.
pub(crate) fn read_header(path: &Path) -> Result<Header> {
    let mut file =
        File::open(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?
        .len();
    let mut header = [0u8; 512];
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(Error::io(format!("cannot read {}", path.display()), e)),
        }
    }
    Ok(match read {
        0 => Header::Empty,
        100.. if header.starts_with(b"SQLite format 3\0") => Header::Plain,
        _ => {
            let mut salt = [0u8; 16];
            salt.copy_from_slice(&header[..16]);
            // An encrypted file is whole pages that look random: 512 random bytes
            // hold about 220 distinct values; text, zeros or a damaged header far fewer.
            let mut seen = [false; 256];
            header[..read].iter().for_each(|&b| seen[b as usize] = true);
            let distinct = seen.iter().filter(|&&s| s).count();
            let encrypted = read == header.len() && len % 512 == 0 && distinct >= 160;
            Header::Other { salt, encrypted }
        }
    })
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
pub(crate) fn lost_seqs(path: &Path) -> Option<u64> {
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

/// A file's identity: its device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    device: u64,
    inode: u64,
}

/// Identifies the file at `path` (device and inode), to notice it deleted or replaced.
pub(crate) fn file_id(path: &Path) -> Option<FileId> {
    id_of(&fs::metadata(path).ok()?)
}

/// Whether `file` (open) is the file at `path`.
pub(crate) fn is_at(file: &File, path: &Path) -> bool {
    let open = file.metadata().ok().and_then(|meta| id_of(&meta));
    open.is_some() && open == file_id(path)
}

fn id_of(meta: &fs::Metadata) -> Option<FileId> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some(FileId {
            device: meta.dev(),
            inode: meta.ino(),
        })
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        Some(FileId {
            device: 0,
            inode: 0,
        })
    }
}

/// The size of the WAL file, 0 when there is none.
pub(crate) fn wal_bytes(path: &Path) -> u64 {
    fs::metadata(beside(path, "-wal")).map_or(0, |m| m.len())
}
