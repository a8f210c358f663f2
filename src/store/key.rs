//! The key of an encrypted spool file (feature `encryption`, SQLCipher): what the
//! caller gives, and the raw key every connection (writer, readers, checkpointer) is
//! keyed with, derived at most once per open.

#[cfg(feature = "encryption")]
use std::sync::Arc;

#[cfg(feature = "encryption")]
use zeroize::Zeroizing;

#[cfg(feature = "encryption")]
use crate::error::{Error, Result};

/// SQLCipher keeps a random salt in the first 16 bytes of an encrypted file.
#[cfg(feature = "encryption")]
const SALT_BYTES: usize = 16;

/// PBKDF2-HMAC-SHA512 rounds for a passphrase: SQLCipher 4's own derivation.
#[cfg(feature = "encryption")]
const PASSPHRASE_ROUNDS: u32 = 256_000;

/// The key of an encrypted spool (feature `encryption`): a raw 256-bit key, used as
/// SQLCipher's raw key, or a passphrase, from which a key is derived once per open
/// with PBKDF2-HMAC-SHA512 (256 000 rounds, the file's salt: SQLCipher 4's
/// derivation). The file's pages are 16 KiB, each with an HMAC-SHA256, so the
/// `sqlcipher` shell opens it after `PRAGMA key = '<passphrase>'; PRAGMA
/// cipher_page_size = 16384; PRAGMA cipher_hmac_algorithm = HMAC_SHA256;`. Its bytes
/// are wiped when it is dropped, and never shown: `Debug` prints only which kind it is.
///
/// ```
/// use eventspool::EncryptionKey;
///
/// let key = EncryptionKey::from_hex(&"ab".repeat(32)).unwrap();
/// assert_eq!(format!("{key:?}"), "EncryptionKey(raw)");
/// let key = EncryptionKey::passphrase("correct horse battery staple");
/// assert_eq!(format!("{key:?}"), "EncryptionKey(passphrase)");
/// ```
#[cfg(feature = "encryption")]
#[derive(Clone)]
pub struct EncryptionKey(Secret);

#[cfg(feature = "encryption")]
#[derive(Clone)]
enum Secret {
    Raw(Zeroizing<[u8; 32]>),
    Passphrase(Zeroizing<String>),
}

#[cfg(feature = "encryption")]
impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Secret::Raw(_) => f.write_str("EncryptionKey(raw)"),
            Secret::Passphrase(_) => f.write_str("EncryptionKey(passphrase)"),
        }
    }
}

#[cfg(feature = "encryption")]
impl EncryptionKey {
    /// A raw 256-bit key (random bytes from a key store, not a password).
    pub fn raw(key: [u8; 32]) -> Self {
        EncryptionKey(Secret::Raw(Zeroizing::new(key)))
    }

    /// A passphrase; a key is derived from it once per open. An empty one is refused
    /// at `open`.
    pub fn passphrase(text: impl Into<String>) -> Self {
        EncryptionKey(Secret::Passphrase(Zeroizing::new(text.into())))
    }

    /// A raw key written as 64 hexadecimal digits (surrounding whitespace ignored).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for anything else; the message does not repeat it.
    pub fn from_hex(text: &str) -> Result<Self> {
        let text = text.trim().as_bytes();
        let digit = |c: u8| (c as char).to_digit(16);
        let mut key = Zeroizing::new([0u8; 32]);
        if text.len() != 64 {
            return Err(Error::InvalidConfig(format!(
                "a raw key is 64 hexadecimal digits, not {}",
                text.len()
            )));
        }
        for (i, pair) in text.chunks(2).enumerate() {
            match (digit(pair[0]), digit(pair[1])) {
                (Some(high), Some(low)) => key[i] = (high * 16 + low) as u8,
                _ => {
                    return Err(Error::InvalidConfig(
                        "a raw key is 64 hexadecimal digits; this one has other characters".into(),
                    ));
                }
            }
        }
        Ok(EncryptionKey(Secret::Raw(key)))
    }
}

/// What the first bytes of a spool file say it is.
pub(crate) enum Header {
    /// No bytes: a new spool.
    Empty,
    /// SQLite's own header: a plain file.
    Plain,
    /// Anything else: encrypted (its salt first), or not a spool file at all.
    Other {
        #[cfg_attr(not(feature = "encryption"), allow(dead_code))]
        salt: [u8; 16],
        /// Whether it looks encrypted: whole pages of random-looking bytes.
        encrypted: bool,
    },
}

/// What keys each connection: nothing for a plain file; else SQLCipher's raw key (with
/// the file's salt, for a passphrase) as the `x'...'` literal `PRAGMA key` takes.
#[derive(Clone, Default)]
pub(crate) struct Keying {
    #[cfg(feature = "encryption")]
    literal: Option<Arc<Zeroizing<String>>>,
}

impl Keying {
    /// For a plain file.
    pub(crate) fn plain() -> Keying {
        Keying::default()
    }

    pub(crate) fn is_encrypted(&self) -> bool {
        #[cfg(feature = "encryption")]
        return self.literal.is_some();
        #[cfg(not(feature = "encryption"))]
        false
    }

    /// The `x'...'` literal SQLCipher takes; `None` for a plain file.
    #[cfg(feature = "encryption")]
    pub(crate) fn literal(&self) -> Option<&str> {
        self.literal.as_deref().map(|l| l.as_str())
    }

    #[cfg(feature = "encryption")]
    /// The keying of `key` for the file at `path`, whose first bytes are `header`: a
    /// passphrase is derived with the file's salt, or a new random one for a new file.
    #[cfg(feature = "encryption")]
    pub(crate) fn new(key: &EncryptionKey, header: &Header) -> Result<Keying> {
        let literal = match &key.0 {
            Secret::Raw(raw) => Zeroizing::new(format!("x'{}'", hex(&raw[..]).as_str())),
            Secret::Passphrase(text) => {
                if text.is_empty() {
                    return Err(Error::InvalidConfig("the passphrase is empty".into()));
                }
                let salt = match header {
                    Header::Other { salt, .. } => *salt,
                    Header::Empty | Header::Plain => {
                        let mut salt = [0u8; SALT_BYTES];
                        getrandom::getrandom(&mut salt).map_err(|e| {
                            Error::io("cannot draw a salt", std::io::Error::other(e.to_string()))
                        })?;
                        salt
                    }
                };
                let mut derived = Zeroizing::new([0u8; 32]);
                pbkdf2::pbkdf2_hmac::<sha2::Sha512>(
                    text.as_bytes(),
                    &salt,
                    PASSPHRASE_ROUNDS,
                    &mut derived[..],
                );
                Zeroizing::new(format!(
                    "x'{}{}'",
                    hex(&derived[..]).as_str(),
                    hex(&salt).as_str()
                ))
            }
        };
        Ok(Keying {
            literal: Some(Arc::new(literal)),
        })
    }
}

#[cfg(feature = "encryption")]
fn hex(bytes: &[u8]) -> Zeroizing<String> {
    let mut text = Zeroizing::new(String::with_capacity(bytes.len() * 2));
    for b in bytes {
        text.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        text.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
    }
    text
}
