//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `"{webhook-id}.{webhook-timestamp}.{body}"`; [`Verifier`] for receivers, and the
//! low-level [`verify`].

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// A signing key. Its `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl SigningSecret {
    /// Parses a secret: `whsec_<base64>` as in the Standard Webhooks spec; any other
    /// text is used as raw key bytes.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an empty secret or a `whsec_` secret whose base64
    /// does not decode.
    pub fn parse(secret: &str) -> Result<Self> {
        let key = match secret.strip_prefix("whsec_") {
            Some(b64) => STANDARD.decode(b64).map_err(|e| {
                Error::InvalidConfig(format!("signing secret is not valid whsec_ base64: {e}"))
            })?,
            None => secret.as_bytes().to_vec(),
        };
        Self::from_bytes(key)
    }

    /// A new secret: 32 random bytes from the operating system. Give its
    /// [`to_whsec`](SigningSecret::to_whsec) form to the receiver and the sender.
    ///
    /// ```
    /// use eventspool::SigningSecret;
    ///
    /// let secret = SigningSecret::generate()?;
    /// let text = secret.to_whsec();
    /// assert!(text.starts_with("whsec_"));
    /// assert_eq!(SigningSecret::parse(&text)?, secret);
    /// # Ok::<(), eventspool::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Io`] if the operating system cannot provide random bytes.
    pub fn generate() -> Result<Self> {
        let mut key = vec![0u8; 32];
        getrandom::getrandom(&mut key).map_err(|e| {
            Error::io(
                "cannot read random bytes for a secret",
                std::io::Error::other(e.to_string()),
            )
        })?;
        Ok(SigningSecret(key))
    }

    /// The secret as `whsec_<base64>`, the form [`parse`](SigningSecret::parse) reads and
    /// the Standard Webhooks libraries take. It is the secret: keep it out of logs.
    pub fn to_whsec(&self) -> String {
        format!("whsec_{}", STANDARD.encode(&self.0))
    }

    /// A secret from raw key bytes.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if `key` is empty.
    pub fn from_bytes(key: impl Into<Vec<u8>>) -> Result<Self> {
        let key = key.into();
        if key.is_empty() {
            return Err(Error::InvalidConfig(
                "signing secret must not be empty".into(),
            ));
        }
        Ok(SigningSecret(key))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length: this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("hmac accepts any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` header value: `v1,<base64 signature>`.
    pub fn sign(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// Checks received webhooks as the Standard Webhooks libraries do: the headers as they
/// arrive (`webhook-id`, `webhook-timestamp`, `webhook-signature`, names in any case),
/// the timestamp within a tolerance of the receiver's clock (so a captured request
/// cannot be replayed later), and a valid signature of the body.
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use eventspool::{SigningSecret, Verifier, VerifyError};
///
/// let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
/// let verifier = Verifier::new(secret.clone());
/// let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
/// let body = br#"{"test": 1}"#;
/// let signature = secret.sign("msg_1", &now, body);
/// let headers = [
///     ("Webhook-Id", "msg_1"),
///     ("Webhook-Timestamp", now.as_str()),
///     ("Webhook-Signature", signature.as_str()),
/// ];
/// assert_eq!(verifier.verify(headers, body), Ok(()));
/// // The same request an hour later is refused.
/// let later = SystemTime::now() + Duration::from_secs(3600);
/// assert!(matches!(
///     verifier.verify_at(headers, body, later),
///     Err(VerifyError::TooOld { .. })
/// ));
/// # Ok::<(), eventspool::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Verifier {
    secret: SigningSecret,
    tolerance: Duration,
}

/// Default for [`Verifier::tolerance`]: five minutes, as the Standard Webhooks
/// libraries use.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

impl Verifier {
    /// A verifier for webhooks signed with `secret`.
    pub fn new(secret: SigningSecret) -> Self {
        Verifier {
            secret,
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// How far the `webhook-timestamp` may be from the receiver's clock, either way.
    /// Defaults to [`DEFAULT_TOLERANCE`].
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Checks a request's headers and body against the clock now.
    ///
    /// # Errors
    /// A [`VerifyError`] saying what failed.
    pub fn verify<K, V>(
        &self,
        headers: impl IntoIterator<Item = (K, V)>,
        body: &[u8],
    ) -> Result<(), VerifyError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        self.verify_at(headers, body, SystemTime::now())
    }

    /// As [`verify`](Verifier::verify), with the clock at `now`.
    ///
    /// # Errors
    /// A [`VerifyError`] saying what failed.
    pub fn verify_at<K, V>(
        &self,
        headers: impl IntoIterator<Item = (K, V)>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), VerifyError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let (mut id, mut timestamp, mut signature) = (None, None, None);
        for (name, value) in headers {
            let slot = match name.as_ref().to_ascii_lowercase().as_str() {
                "webhook-id" => &mut id,
                "webhook-timestamp" => &mut timestamp,
                "webhook-signature" => &mut signature,
                _ => continue,
            };
            *slot = Some(value.as_ref().to_owned());
        }
        let id = id.ok_or(VerifyError::MissingHeader("webhook-id"))?;
        let timestamp = timestamp.ok_or(VerifyError::MissingHeader("webhook-timestamp"))?;
        let signature = signature.ok_or(VerifyError::MissingHeader("webhook-signature"))?;
        let sent = timestamp
            .trim()
            .parse::<u64>()
            .map_err(|_| VerifyError::InvalidTimestamp)?;
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let tolerance = self.tolerance.as_secs();
        if now.saturating_sub(sent) > tolerance {
            return Err(VerifyError::TooOld {
                age: Duration::from_secs(now - sent),
            });
        }
        if sent.saturating_sub(now) > tolerance {
            return Err(VerifyError::TooNew {
                ahead: Duration::from_secs(sent - now),
            });
        }
        if !verify(&self.secret, &id, &timestamp, body, &signature) {
            return Err(VerifyError::NoValidSignature);
        }
        Ok(())
    }
}

/// Why [`Verifier`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// A header the scheme needs is missing.
    MissingHeader(&'static str),
    /// `webhook-timestamp` is not a number of seconds.
    InvalidTimestamp,
    /// The timestamp is older than the tolerance allows (a replay, or a clock behind).
    TooOld {
        /// How old it is.
        age: Duration,
    },
    /// The timestamp is further in the future than the tolerance allows.
    TooNew {
        /// How far ahead it is.
        ahead: Duration,
    },
    /// No signature in `webhook-signature` matches the body under the secret.
    NoValidSignature,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyError::MissingHeader(name) => write!(f, "webhook refused: no {name} header"),
            VerifyError::InvalidTimestamp => {
                f.write_str("webhook refused: webhook-timestamp is not a number of seconds")
            }
            VerifyError::TooOld { age } => {
                write!(
                    f,
                    "webhook refused: its timestamp is {}s old",
                    age.as_secs()
                )
            }
            VerifyError::TooNew { ahead } => write!(
                f,
                "webhook refused: its timestamp is {}s in the future",
                ahead.as_secs()
            ),
            VerifyError::NoValidSignature => {
                f.write_str("webhook refused: no signature matches the body")
            }
        }
    }
}

impl std::error::Error for VerifyError {}

/// Checks a received webhook: `signature_header` (the `webhook-signature` value, which
/// may hold several space-separated `v1,<sig>` entries) must carry a valid signature of
/// `id`, `timestamp` and `body` under `secret`. The comparison is constant-time.
///
/// This checks the signature only: [`Verifier`] also rejects timestamps far from the
/// receiver's clock (replay protection), as receivers should.
///
/// ```
/// use eventspool::{SigningSecret, verify};
///
/// let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
/// let body = br#"{"test": 2432232314}"#;
/// let header = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
/// assert!(verify(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body, header));
/// assert!(!verify(&secret, "msg_other", "1614265330", body, header));
/// # Ok::<(), eventspool::Error>(())
/// ```
pub fn verify(
    secret: &SigningSecret,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signature_header: &str,
) -> bool {
    signature_header.split(' ').any(|entry| {
        let Some(sig) = entry.strip_prefix("v1,") else {
            return false;
        };
        let Ok(sig) = STANDARD.decode(sig) else {
            return false;
        };
        secret.mac(id, timestamp, body).verify_slice(&sig).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks specification.
    #[test]
    fn signs_the_spec_test_vector() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> [(&'a str, &'a str); 3] {
        [
            ("WEBHOOK-ID", id),
            ("webhook-timestamp", ts),
            ("Webhook-Signature", sig),
        ]
    }

    #[test]
    fn the_verifier_checks_headers_timestamp_and_signature() {
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let verifier = Verifier::new(secret.clone()).tolerance(Duration::from_secs(60));
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        let body = b"{}";
        let sig = secret.sign("msg_1", "1000", body);
        let ok = verifier.verify_at(headers("msg_1", "1000", &sig), body, at(1000));
        assert_eq!(ok, Ok(()));
        for (now, expected) in [
            (1060, Ok(())),
            (940, Ok(())),
            (
                1061,
                Err(VerifyError::TooOld {
                    age: Duration::from_secs(61),
                }),
            ),
            (
                939,
                Err(VerifyError::TooNew {
                    ahead: Duration::from_secs(61),
                }),
            ),
        ] {
            let got = verifier.verify_at(headers("msg_1", "1000", &sig), body, at(now));
            assert_eq!(got, expected, "at {now}");
        }
        let other = verifier.verify_at(headers("msg_2", "1000", &sig), body, at(1000));
        assert_eq!(other, Err(VerifyError::NoValidSignature));
        let tampered = verifier.verify_at(headers("msg_1", "1000", &sig), b"{ }", at(1000));
        assert_eq!(tampered, Err(VerifyError::NoValidSignature));
        let bad_ts = verifier.verify_at(headers("msg_1", "soon", &sig), body, at(1000));
        assert_eq!(bad_ts, Err(VerifyError::InvalidTimestamp));
        let missing = verifier.verify_at([("webhook-id", "msg_1")], body, at(1000));
        assert_eq!(
            missing,
            Err(VerifyError::MissingHeader("webhook-timestamp"))
        );
        // Extreme timestamps and clocks: an answer, no overflow.
        let far = verifier.verify_at(headers("msg_1", "18446744073709551615", &sig), body, at(0));
        assert!(matches!(far, Err(VerifyError::TooNew { .. })));
        let epoch = verifier.verify_at(headers("msg_1", "0", &sig), body, at(u32::MAX as u64));
        assert!(matches!(epoch, Err(VerifyError::TooOld { .. })));
    }

    #[test]
    fn secrets_are_checked_and_redacted() {
        assert!(SigningSecret::parse("whsec_!!!").is_err());
        assert!(SigningSecret::parse("").is_err());
        let raw = SigningSecret::parse("plain-bytes").unwrap();
        assert_eq!(format!("{raw:?}"), "SigningSecret(<redacted>)");
    }
}
