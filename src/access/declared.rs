//! Keys declared in the configuration: `SPOOL_API_KEYS` and the config
//! file's `[[api_keys]]` tables.

use serde::Deserialize;

use crate::domain::{ApiKey, KeyHash, KeyId, KeySource, Role, StoredKey, Timestamp, valid_tenant};

/// Shortest secret accepted in the configuration: anything shorter could be
/// guessed.
const MIN_SECRET_CHARS: usize = 16;

/// One `[[api_keys]]` table of the config file.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredKey {
    /// A label for people; defaults to `<tenant>-<role>`.
    #[serde(default)]
    pub name: Option<String>,
    pub tenant: String,
    pub role: Role,
    /// The secret itself, or `sha256:<64 hex digits>` of it (so the file
    /// need not hold the secret).
    pub secret: String,
}

// Configuration is printed in debug output; the secret must not be.
impl std::fmt::Debug for DeclaredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeclaredKey")
            .field("name", &self.name)
            .field("tenant", &self.tenant)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct DeclaredKeyError {
    pub origin: String,
    pub message: String,
}

impl DeclaredKey {
    /// The key as the keyring holds it. `origin` names the entry in errors
    /// (which never quote the secret).
    pub fn into_stored(self, origin: &str) -> Result<StoredKey, DeclaredKeyError> {
        let error = |message: String| DeclaredKeyError {
            origin: origin.to_owned(),
            message,
        };
        if !valid_tenant(&self.tenant) {
            return Err(error(format!(
                "tenant `{}`: tenant names are 1 to 64 of A-Z a-z 0-9 _ - .",
                self.tenant
            )));
        }
        let hash = if self.secret.starts_with("sha256:") {
            KeyHash::parse_prefixed(&self.secret)
                .ok_or_else(|| error("a hashed secret is `sha256:` and 64 hex digits".into()))?
        } else if self.secret.chars().count() < MIN_SECRET_CHARS
            || self.secret.chars().any(|c| c.is_whitespace() || c == ',')
        {
            return Err(error(format!(
                "a secret is at least {MIN_SECRET_CHARS} characters, with no spaces or commas"
            )));
        } else {
            KeyHash::of_secret(&self.secret)
        };
        Ok(StoredKey {
            key: ApiKey {
                id: KeyId::of_declared(&hash),
                name: self
                    .name
                    .unwrap_or_else(|| format!("{}-{}", self.tenant, self.role)),
                tenant: self.tenant,
                role: self.role,
                source: KeySource::Config,
                created_at: Timestamp::from_millis(0),
                last_used_at: None,
                expires_at: None,
            },
            hash,
        })
    }
}

/// `SPOOL_API_KEYS`: comma-separated `TENANT:ROLE:SECRET` entries, where
/// SECRET may be `sha256:<hex>`.
pub fn parse_api_keys(text: &str) -> Result<Vec<DeclaredKey>, DeclaredKeyError> {
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .enumerate()
        .map(|(i, entry)| {
            let error = |message: &str| DeclaredKeyError {
                origin: format!("SPOOL_API_KEYS entry {}", i + 1),
                message: message.to_owned(),
            };
            let mut parts = entry.splitn(3, ':');
            let (Some(tenant), Some(role), Some(secret)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(error("entries are TENANT:ROLE:SECRET"));
            };
            let role = role.parse::<Role>().map_err(|e| error(&e))?;
            Ok(DeclaredKey {
                name: None,
                tenant: tenant.to_owned(),
                role,
                secret: secret.to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_tenant_role_and_secret_or_its_hash() {
        let hash = format!(
            "sha256:{}",
            KeyHash::of_secret("another-long-secret").to_hex()
        );
        let keys = parse_api_keys(&format!(
            "acme:write:a-long-enough-secret, ops:admin:{hash}"
        ))
        .unwrap();
        assert_eq!(keys.len(), 2);
        let acme = keys[0].clone().into_stored("one").unwrap();
        assert_eq!(acme.key.tenant, "acme");
        assert_eq!(acme.key.role, Role::Write);
        assert!(acme.hash == KeyHash::of_secret("a-long-enough-secret"));
        let ops = keys[1].clone().into_stored("two").unwrap();
        assert!(ops.hash == KeyHash::of_secret("another-long-secret"));
    }

    #[test]
    fn bad_entries_are_refused_without_quoting_the_secret() {
        assert!(parse_api_keys("acme:write").is_err());
        assert!(parse_api_keys("acme:owner:a-long-enough-secret").is_err());
        let short = parse_api_keys("acme:read:short").unwrap().remove(0);
        let error = short.into_stored("SPOOL_API_KEYS entry 1").unwrap_err();
        assert!(!error.to_string().contains("short"), "{error}");
        let bad_tenant = parse_api_keys("a b:read:a-long-enough-secret")
            .unwrap()
            .remove(0);
        assert!(bad_tenant.into_stored("x").is_err());
    }
}
