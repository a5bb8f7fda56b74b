//! Request signatures in the Standard Webhooks format
//! (<https://www.standardwebhooks.com>): the receiver recomputes
//! HMAC-SHA256 over `{webhook-id}.{webhook-timestamp}.{body}` with the
//! shared key and compares it with the `v1,` signature in
//! `webhook-signature`. `docs/webhooks.md` shows a receiver's check.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A signing key, as the bytes HMAC uses.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// A key that is neither valid `whsec_` base64 nor long enough.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// `whsec_` followed by something that is not base64.
    #[error("a `whsec_` secret must be base64 after the prefix: {0}")]
    Base64(base64::DecodeError),
    /// Too short to be a secret.
    #[error("the secret is {0} bytes; use at least 16 (24 to 64 random bytes is usual)")]
    TooShort(usize),
}

impl SigningKey {
    /// The key a configured secret stands for: the base64 after `whsec_`
    /// (the Standard Webhooks form), or else the text's own bytes.
    pub fn from_secret(secret: &str) -> Result<SigningKey, KeyError> {
        let bytes = match secret.strip_prefix("whsec_") {
            Some(b64) => STANDARD.decode(b64).map_err(KeyError::Base64)?,
            None => secret.as_bytes().to_vec(),
        };
        if bytes.len() < 16 {
            return Err(KeyError::TooShort(bytes.len()));
        }
        Ok(SigningKey(bytes))
    }

    /// The `webhook-signature` header value for a message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mac = self.mac(id, timestamp, body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// Whether `header` (space-separated `v1,<base64>` signatures, as
    /// receivers see it) holds a valid signature of the message; compared in
    /// constant time.
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header.split(' ').any(|sig| {
            let Some(b64) = sig.strip_prefix("v1,") else {
                return false;
            };
            let Ok(given) = STANDARD.decode(b64) else {
                return false;
            };
            self.mac(id, timestamp, body).verify_slice(&given).is_ok()
        })
    }

    /// The MAC over `{id}.{timestamp}.{body}`, the signed content.
    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_standard_webhooks_reference_vector() {
        // The example of the Standard Webhooks specification and its
        // reference libraries.
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(key.verify("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body, &sig));
        assert!(!key.verify("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265331, body, &sig));
        assert!(!key.verify("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b"{}", &sig));
    }

    #[test]
    fn bad_secrets_are_refused_with_the_reason() {
        assert!(matches!(
            SigningKey::from_secret("whsec_not base64!"),
            Err(KeyError::Base64(_))
        ));
        assert!(matches!(
            SigningKey::from_secret("short"),
            Err(KeyError::TooShort(5))
        ));
        assert!(SigningKey::from_secret("a plain text secret, long enough").is_ok());
    }
}
