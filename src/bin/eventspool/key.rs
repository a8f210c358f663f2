//! The key of an encrypted spool (feature `encryption`): read from `--key-env` or
//! `--key-file`, never given on the command line itself, where `ps` would show it.

use std::path::Path;
#[cfg(feature = "encryption")]
use std::path::PathBuf;

use clap::Args;
use eventspool::{Inspector, Spool};

/// Where the key comes from; the same for every command.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct KeyArgs {
    /// The environment variable holding the key of an encrypted spool.
    #[cfg(feature = "encryption")]
    #[arg(long, global = true, value_name = "VAR")]
    key_env: Option<String>,
    /// The file holding the key of an encrypted spool.
    #[cfg(feature = "encryption")]
    #[arg(long, global = true, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// How the key is written: a passphrase, or 64 hex digits of a raw key.
    #[cfg(feature = "encryption")]
    #[arg(long, global = true, value_enum, default_value_t = Format::Passphrase)]
    key_format: Format,
}

#[cfg(feature = "encryption")]
#[derive(Debug, Clone, Copy, Default, clap::ValueEnum)]
pub(crate) enum Format {
    #[default]
    Passphrase,
    Hex,
}

#[cfg(feature = "encryption")]
static KEY: std::sync::OnceLock<Option<eventspool::EncryptionKey>> = std::sync::OnceLock::new();

impl KeyArgs {
    /// Reads the key, if one is named.
    #[cfg(feature = "encryption")]
    pub(crate) fn read(&self) -> eventspool::Result<Option<eventspool::EncryptionKey>> {
        if self.key_env.is_none() && self.key_file.is_none() {
            return Ok(None);
        }
        let config = eventspool::EncryptionConfig {
            key_env: self.key_env.clone(),
            key_file: self.key_file.clone(),
            format: match self.key_format {
                Format::Passphrase => eventspool::KeyFormat::Passphrase,
                Format::Hex => eventspool::KeyFormat::Hex,
            },
        };
        config.key().map(Some)
    }

    /// Makes the key the one every command opens spools with.
    pub(crate) fn install(&self) -> eventspool::Result<()> {
        #[cfg(feature = "encryption")]
        let _ = KEY.set(self.read()?);
        Ok(())
    }
}

/// An inspector of `path`, with the key if one was given.
pub(crate) fn inspect(path: &Path) -> eventspool::Result<Inspector> {
    #[cfg(feature = "encryption")]
    if let Some(Some(key)) = KEY.get() {
        return Inspector::open_with_key(path, key);
    }
    Inspector::open(path)
}

/// The spool at `path`, with the key if one was given.
pub(crate) fn open(path: &Path) -> eventspool::Result<Spool> {
    #[cfg(feature = "encryption")]
    if let Some(Some(key)) = KEY.get() {
        return Spool::builder(path).encryption_key(key.clone()).open();
    }
    Spool::open(path)
}

/// Repairs the spool at `path`, with the key if one was given.
pub(crate) fn repair(path: &Path) -> eventspool::Result<eventspool::RepairReport> {
    #[cfg(feature = "encryption")]
    if let Some(Some(key)) = KEY.get() {
        return eventspool::repair_with_key(path, key);
    }
    eventspool::repair(path)
}

/// The key given, or an error saying how to give one.
#[cfg(feature = "encryption")]
pub(crate) fn given() -> eventspool::Result<eventspool::EncryptionKey> {
    KEY.get().cloned().flatten().ok_or_else(|| {
        eventspool::Error::InvalidConfig("name the key with --key-env or --key-file".into())
    })
}

/// `eventspool rekey`: re-encrypts the spool under the key `new` names.
#[cfg(feature = "encryption")]
pub(crate) fn rekey(path: &Path, new: &KeyArgs) -> crate::Result {
    let Some(key) = new.read()? else {
        return Err("name the new key with --new-key-env or --new-key-file".into());
    };
    let spool = open(path)?;
    spool.rekey(key)?;
    spool.close(eventspool::DEFAULT_CLOSE_TIMEOUT)?;
    eprintln!("re-encrypted {} under the new key", path.display());
    Ok(crate::Outcome::Done)
}

/// `eventspool encrypt` / `decrypt`: an encrypted (plain) copy of a plain (encrypted)
/// spool, under the key given.
#[cfg(feature = "encryption")]
pub(crate) fn copy(from: &Path, to: &Path, encrypt: bool) -> crate::Result {
    let key = given()?;
    match encrypt {
        true => eventspool::encrypt_spool(from, to, &key)?,
        false => eventspool::decrypt_spool(from, to, &key)?,
    }
    Ok(crate::Outcome::Done)
}

/// The new key of `rekey`, named as the key is.
#[cfg(feature = "encryption")]
#[derive(Debug, Clone, Args)]
pub(crate) struct NewKeyArgs {
    /// The environment variable holding the new key.
    #[arg(long, value_name = "VAR")]
    new_key_env: Option<String>,
    /// The file holding the new key.
    #[arg(long, value_name = "FILE")]
    new_key_file: Option<PathBuf>,
    /// How the new key is written.
    #[arg(long, value_enum, default_value_t = Format::Passphrase)]
    new_key_format: Format,
}

#[cfg(feature = "encryption")]
impl NewKeyArgs {
    pub(crate) fn as_key_args(&self) -> KeyArgs {
        KeyArgs {
            key_env: self.new_key_env.clone(),
            key_file: self.new_key_file.clone(),
            key_format: self.new_key_format,
        }
    }
}
