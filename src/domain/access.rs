//! Who is calling: API keys, their roles and tenants.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{FieldError, Timestamp};

/// What a key may do. Each role includes the ones below it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read its own tenant's jobs, batches, results and events.
    Read,
    /// Also submit, cancel and retry, in its own tenant.
    Write,
    /// Every tenant (with `?tenant=`), queues, keys and tenants' quotas.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Read, Role::Write, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }

    /// Whether a key of this role may do what `needed` allows.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| format!("`{text}` is not a role (admin, write or read)"))
    }
}

/// Tenant names: 1 to 64 of `A-Z a-z 0-9 _ - .`, as queue names.
pub fn valid_tenant(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A key's id: public, shown in `/v1/keys` and logs; never the secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(Uuid);

impl KeyId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id of a key declared in the configuration: derived from its hash
    /// (so stable across restarts and instances), revealing nothing of it.
    pub fn of_declared(hash: &KeyHash) -> Self {
        let digest = Sha256::digest(hash.0);
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl Default for KeyId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for KeyId {
    type Err = uuid::Error;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(text).map(Self)
    }
}

/// SHA-256 of a key's secret: what is stored and compared. The secrets are
/// long and random, so a plain hash (no salt, no stretching) is enough and
/// keeps the check per request to one hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of_secret(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// `sha256:<64 hex digits>`, as the configuration may give it.
    pub fn parse_prefixed(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("sha256:")?;
        if hex.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(bytes))
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(hex: &str) -> Option<Self> {
        Self::parse_prefixed(&format!("sha256:{hex}"))
    }
}

// Never print a hash whole in debug output: it is as good as the secret for
// anyone who can replay it against a config file.
impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

/// Where a key comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// `SPOOL_API_KEYS` or the config file: changed by redeploying.
    Config,
    /// `POST /v1/keys`: stored (hashed) in the database.
    Api,
}

/// A key as `/v1/keys` shows it: never its secret or hash.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    #[schema(value_type = String, format = Uuid)]
    pub id: KeyId,
    pub name: String,
    pub tenant: String,
    pub role: Role,
    pub source: KeySource,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Last request made with the key, to within a minute; `null` if never used.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
    /// After this the key is refused; `null`: never expires.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
}

/// A key with what authenticates it, as the store and the keyring hold it.
#[derive(Clone, Debug)]
pub struct StoredKey {
    pub key: ApiKey,
    pub hash: KeyHash,
}

/// `POST /v1/keys`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// A label for people: what or who uses the key.
    pub name: String,
    /// The tenant the key acts for.
    pub tenant: String,
    pub role: Role,
    /// When the key stops working; absent: never.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
}

impl KeySpec {
    pub fn validate(&self, now: Timestamp) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.name.is_empty() || self.name.chars().count() > 200 {
            errors.push(FieldError::new("/name", "must be 1 to 200 characters"));
        }
        if !valid_tenant(&self.tenant) {
            errors.push(FieldError::new(
                "/tenant",
                "tenant names are 1 to 64 of A-Z a-z 0-9 _ - .",
            ));
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            errors.push(FieldError::new("/expires_at", "must be in the future"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// The caller of a request, once its key was checked (or the implicit admin
/// of open mode).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The tenant the request acts in: the key's own, or the one an admin
    /// named with `?tenant=`.
    pub tenant: String,
    pub role: Role,
    /// `None` in open mode.
    pub key_id: Option<KeyId>,
}

impl Caller {
    /// Open mode's caller: every request, no key.
    pub fn open() -> Self {
        Self {
            tenant: super::TENANT_DEFAULT.to_owned(),
            role: Role::Admin,
            key_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_ones_below_them() {
        assert!(Role::Admin.allows(Role::Write));
        assert!(Role::Write.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Write));
        assert!(!Role::Write.allows(Role::Admin));
    }

    #[test]
    fn a_prefixed_hash_round_trips_and_bad_ones_are_refused() {
        let hash = KeyHash::of_secret("s3cret");
        let text = format!("sha256:{}", hash.to_hex());
        assert!(KeyHash::parse_prefixed(&text) == Some(hash));
        assert!(KeyHash::parse_prefixed("sha256:abc").is_none());
        assert!(KeyHash::parse_prefixed(&text.replace("sha256:", "md5:")).is_none());
        assert!(KeyHash::parse_prefixed(&format!("sha256:{}", "zz".repeat(32))).is_none());
    }

    #[test]
    fn a_declared_keys_id_is_stable_and_not_its_hash() {
        let hash = KeyHash::of_secret("s3cret");
        assert_eq!(KeyId::of_declared(&hash), KeyId::of_declared(&hash));
        assert!(
            !hash
                .to_hex()
                .contains(&KeyId::of_declared(&hash).as_uuid().simple().to_string())
        );
    }
}
