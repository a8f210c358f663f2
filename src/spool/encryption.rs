//! Encryption of a spool file (feature `encryption`): changing the key of an open
//! spool, and encrypted or plain copies of one nobody owns.

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::reply::reply;
use crate::store::{self, EncryptionKey, Keying};
use crate::writer::Msg;

use super::Spool;

/// How long `rekey` waits for the connections readers have borrowed to come back.
const READERS_WAIT: Duration = Duration::from_secs(10);

impl Spool {
    /// Re-encrypts the spool file under `key`, while the spool runs: every page is
    /// written again under the new key (through the WAL, which is then emptied into the
    /// file), and every connection is keyed anew. Afterwards only `key` opens the file.
    /// Readers wait meanwhile (the pool lends no connection; a read that waits longer
    /// than `reader_wait_ms` fails with [`Error::Timeout`], and sinks retry it); the
    /// writer commits nothing else. It takes about as long as writing the file once.
    ///
    /// Turning a plain spool into an encrypted one, or back, is a copy made while
    /// nobody owns it: [`encrypt_spool`](crate::encrypt_spool) and
    /// [`decrypt_spool`](crate::decrypt_spool).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a plain spool or an empty passphrase;
    /// [`Error::Timeout`] when a reader kept its connection for 10 s (nothing changed);
    /// [`Error::Storage`] when the engine failed; [`Error::Closed`].
    pub fn rekey(&self, key: EncryptionKey) -> Result<()> {
        let inner = &self.inner;
        if !inner.encrypted {
            return Err(Error::InvalidConfig(
                "rekey: the spool is not encrypted (encrypt_spool makes an encrypted copy)".into(),
            ));
        }
        // A passphrase is derived with the file's own salt, which the new pages keep.
        let keying = Keying::new(&key, &store::header_of(&inner.path)?)?;
        inner.pool.pause(READERS_WAIT)?;
        let (answer, done) = reply();
        let outcome = match inner.tx.send(Msg::Rekey(keying.clone(), answer)) {
            Ok(()) => done.wait_yielding(0).unwrap_or(Err(Error::Closed)),
            Err(_) => Err(Error::Closed),
        };
        inner.pool.resume(outcome.is_ok().then_some(keying));
        outcome
    }
}

/// Copies the plain spool at `from` into a new encrypted file at `to`, under `key`;
/// `from` is not modified. Nobody may own `from` meanwhile (its lock is taken). To
/// encrypt a spool in place: copy, then rename `to` over `from` before anyone opens it,
/// and open it with the key from then on.
///
/// ```
/// # fn main() -> eventspool::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let (plain, secret) = (dir.path().join("plain.db"), dir.path().join("secret.db"));
/// # eventspool::Spool::open(&plain)?.close(std::time::Duration::from_secs(5))?;
/// let key = eventspool::EncryptionKey::passphrase("correct horse battery staple");
/// eventspool::encrypt_spool(&plain, &secret, &key)?;
/// let spool = eventspool::Spool::builder(&secret).encryption_key(key).open()?;
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`Error::Locked`] while someone owns `from`; [`Error::WrongKey`] when `from` is
/// encrypted; [`Error::InvalidConfig`] when `to` exists; [`Error::NotASpool`],
/// [`Error::Storage`], [`Error::Io`].
pub fn encrypt_spool(
    from: impl AsRef<Path>,
    to: impl AsRef<Path>,
    key: &EncryptionKey,
) -> Result<()> {
    let target = Keying::new(key, &store::Header::Empty)?;
    copy(from.as_ref(), &Keying::plain(), to.as_ref(), &target)
}

/// Copies the encrypted spool at `from` (opened with `key`) into a new plain file at
/// `to`; `from` is not modified. Nobody may own `from` meanwhile.
///
/// # Errors
/// As [`encrypt_spool`], with [`Error::WrongKey`] when `key` does not open `from`.
pub fn decrypt_spool(
    from: impl AsRef<Path>,
    to: impl AsRef<Path>,
    key: &EncryptionKey,
) -> Result<()> {
    let from = from.as_ref();
    let source = Keying::new(key, &store::header_of(from)?)?;
    copy(from, &source, to.as_ref(), &Keying::plain())
}

fn copy(from: &Path, source: &Keying, to: &Path, target: &Keying) -> Result<()> {
    if to.exists() {
        return Err(Error::InvalidConfig(format!(
            "{} exists: the copy goes to a new file",
            to.display()
        )));
    }
    let _lock = store::lock(from)?;
    let conn = store::open_existing(from, source)?;
    if let Err(e) = store::export(&conn, to, target) {
        let _ = std::fs::remove_file(to);
        return Err(e);
    }
    Ok(())
}
