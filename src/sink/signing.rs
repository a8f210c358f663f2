//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `"{webhook-id}.{webhook-timestamp}.{body}"`, and [`verify`] for receivers.

use std::fmt;

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

/// Checks a received webhook: `signature_header` (the `webhook-signature` value, which
/// may hold several space-separated `v1,<sig>` entries) must carry a valid signature of
/// `id`, `timestamp` and `body` under `secret`. The comparison is constant-time.
///
/// Receivers should also reject timestamps far from their clock (replay protection).
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

    #[test]
    fn secrets_are_checked_and_redacted() {
        assert!(SigningSecret::parse("whsec_!!!").is_err());
        assert!(SigningSecret::parse("").is_err());
        let raw = SigningSecret::parse("plain-bytes").unwrap();
        assert_eq!(format!("{raw:?}"), "SigningSecret(<redacted>)");
    }
}
