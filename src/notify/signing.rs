//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256("<id>.<timestamp>.<body>")>`
//! keyed by the secret's decoded bytes.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `SPOOL_WEBHOOK_SECRET`: `whsec_` followed by base64 of at least 16 bytes
/// (the form Standard Webhooks libraries expect). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(whsec_…)")
    }
}

impl FromStr for WebhookSecret {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let encoded = text
            .trim()
            .strip_prefix("whsec_")
            .ok_or("must start with `whsec_` followed by base64 (Standard Webhooks form)")?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|e| format!("the part after `whsec_` is not base64: {e}"))?;
        if !(16..=128).contains(&key.len()) {
            return Err(format!(
                "the key is {} bytes; use 16 to 128 (e.g. `whsec_$(openssl rand -base64 32)`)",
                key.len()
            ));
        }
        Ok(Self(key))
    }
}

impl WebhookSecret {
    /// The `webhook-signature` header value for one delivery.
    pub fn sign(&self, webhook_id: &str, timestamp_s: i64, body: &[u8]) -> String {
        // A key of any length is accepted by HMAC; the error is unreachable
        // but handled rather than unwrapped.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.0) else {
            return String::new();
        };
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_s.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference
    /// libraries (svix): secret, id, timestamp and body give this signature.
    #[test]
    fn signs_like_the_standard_webhooks_reference() {
        let secret: WebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".parse().unwrap();
        let signature = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_without_the_prefix_or_too_short_are_refused() {
        assert!(
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
                .parse::<WebhookSecret>()
                .is_err()
        );
        assert!("whsec_not base64!".parse::<WebhookSecret>().is_err());
        assert!("whsec_c2hvcnQ=".parse::<WebhookSecret>().is_err());
        assert_eq!(
            format!(
                "{:?}",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
                    .parse::<WebhookSecret>()
                    .unwrap()
            ),
            "WebhookSecret(whsec_…)"
        );
    }
}
