//! API keys: who may call, as which tenant and role.
//!
//! Every key the service knows is held in memory (the [`Keyring`]): the
//! ones declared in the configuration and the ones stored through
//! `POST /v1/keys`. A request costs one SHA-256 and one map lookup, never a
//! query. The ring is re-read from the store when this instance changes a
//! key, when another instance says it did (over the bus), and every second
//! in shared mode, so a key revoked anywhere is refused everywhere within
//! about a second even when a bus message is lost.

mod declared;
mod rate;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use rand::RngCore;
use subtle::ConstantTimeEq;

pub use declared::{DeclaredKey, DeclaredKeyError, parse_api_keys};
pub use rate::{Rate, RateDecision, RateLimiter};

use crate::domain::{
    ApiKey, Caller, KeyHash, KeyId, KeySource, KeySpec, Role, StoredKey, Timestamp, valid_tenant,
};
use crate::engine::Engine;
use crate::store::StoreError;

/// How often a shared-mode instance re-reads the keys without being told:
/// the bound on how long a revoked key works elsewhere when the bus message
/// is lost.
const REFRESH_SHARED: Duration = Duration::from_secs(1);
/// How often last-use times are written: `last_used_at` is accurate to
/// this, and a busy key costs one write per interval, not one per request.
const RECORD_USES: Duration = Duration::from_secs(30);

/// Whether the service may run without keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// No key configured or stored: every request is the implicit admin of
    /// tenant `default`. Only while bound to a loopback address, or with
    /// `SPOOL_AUTH=none`.
    Allowed,
    /// Keys are required even when none exist (a non-loopback bind): every
    /// request is refused until one is configured.
    Refused,
    /// `SPOOL_AUTH=none`: no key is ever asked for.
    Always,
}

/// Why a request was not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("this operation needs an API key: send `Authorization: Bearer <key>`")]
    Missing,
    #[error("the API key is not valid (unknown, revoked or expired)")]
    Invalid,
    #[error("the Authorization header must be `Bearer <key>`")]
    Malformed,
    #[error("this service has no API keys yet; add one with SPOOL_API_KEYS")]
    NoKeys,
}

/// Why a key could not be created or revoked.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid key")]
    Invalid(Vec<crate::domain::FieldError>),
    #[error("no such key")]
    NotFound,
    #[error("this key is declared in the configuration; remove it there")]
    Declared,
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Entry {
    key: ApiKey,
    hash: KeyHash,
    /// Last request with this key (ms), and the last time written.
    used_ms: AtomicI64,
    recorded_ms: AtomicI64,
}

#[derive(Default)]
struct Ring {
    by_hash: HashMap<[u8; 32], Arc<Entry>>,
}

/// The keys this instance accepts, and the bookkeeping of their use.
pub struct Keyring {
    ring: RwLock<Ring>,
    declared: Vec<StoredKey>,
    open: OpenMode,
    engine: Engine,
}

impl Keyring {
    /// Loads the stored keys beside the declared ones.
    pub async fn load(
        engine: Engine,
        declared: Vec<StoredKey>,
        open: OpenMode,
    ) -> Result<Arc<Self>, StoreError> {
        let keyring = Arc::new(Self {
            ring: RwLock::new(Ring::default()),
            declared,
            open,
            engine,
        });
        keyring.reload().await?;
        Ok(keyring)
    }

    /// Whether no key is known at all.
    pub fn is_empty(&self) -> bool {
        self.read().by_hash.is_empty()
    }

    /// Whether requests need a key now.
    pub fn keys_required(&self) -> bool {
        match self.open {
            OpenMode::Always => false,
            OpenMode::Allowed => !self.is_empty(),
            OpenMode::Refused => true,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        // A panic while holding the lock leaves the ring as it was (it is
        // replaced whole), so a poisoned lock is still a good one.
        self.ring.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Who is calling, from the `Authorization` header's value.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, AuthError> {
        if !self.keys_required() {
            return Ok(Caller::open());
        }
        let Some(value) = authorization else {
            return Err(if self.is_empty() {
                AuthError::NoKeys
            } else {
                AuthError::Missing
            });
        };
        let secret = bearer(value).ok_or(AuthError::Malformed)?;
        let hash = KeyHash::of_secret(secret);
        let ring = self.read();
        let entry = ring.by_hash.get(&hash.0).ok_or(AuthError::Invalid)?;
        // The map found the entry by its hash; comparing the whole hash
        // again in constant time keeps the decision itself free of timing
        // that depends on how much of it matched.
        if !bool::from(entry.hash.0.ct_eq(&hash.0)) {
            return Err(AuthError::Invalid);
        }
        let now = Timestamp::now();
        if entry.key.expires_at.is_some_and(|at| at <= now) {
            return Err(AuthError::Invalid);
        }
        entry.used_ms.fetch_max(now.as_millis(), Ordering::Relaxed);
        Ok(Caller {
            tenant: entry.key.tenant.clone(),
            role: entry.key.role,
            key_id: Some(entry.key.id),
        })
    }

    /// Every key, declared and stored, with last use as known here.
    pub fn list(&self) -> Vec<ApiKey> {
        let mut keys: Vec<ApiKey> = self
            .read()
            .by_hash
            .values()
            .map(|entry| {
                let mut key = entry.key.clone();
                let used = entry.used_ms.load(Ordering::Relaxed);
                if used > 0 && key.last_used_at.is_none_or(|at| at.as_millis() < used) {
                    key.last_used_at = Some(Timestamp::from_millis(used));
                }
                key
            })
            .collect();
        keys.sort_by_key(|key| key.id);
        keys
    }

    /// Makes a key; the secret is returned here and never again.
    pub async fn create(&self, spec: KeySpec) -> Result<(ApiKey, String), KeyError> {
        let now = Timestamp::now();
        spec.validate(now).map_err(KeyError::Invalid)?;
        let secret = new_secret(&spec.tenant);
        let stored = StoredKey {
            hash: KeyHash::of_secret(&secret),
            key: ApiKey {
                id: KeyId::new(),
                name: spec.name,
                tenant: spec.tenant,
                role: spec.role,
                source: KeySource::Api,
                created_at: now,
                last_used_at: None,
                expires_at: spec.expires_at,
            },
        };
        self.engine.store().insert_key(&stored).await?;
        self.changed().await?;
        tracing::info!(key_id = %stored.key.id, tenant = %stored.key.tenant,
            role = %stored.key.role, "API key created");
        Ok((stored.key, secret))
    }

    /// Revokes a stored key, here at once and on the other instances within
    /// a second.
    pub async fn revoke(&self, id: KeyId) -> Result<(), KeyError> {
        if self.declared.iter().any(|key| key.key.id == id) {
            return Err(KeyError::Declared);
        }
        if !self.engine.store().revoke_key(id, Timestamp::now()).await? {
            return Err(KeyError::NotFound);
        }
        self.changed().await?;
        tracing::info!(key_id = %id, "API key revoked");
        Ok(())
    }

    async fn changed(&self) -> Result<(), StoreError> {
        self.reload().await?;
        self.engine.tell_keys_changed();
        Ok(())
    }

    /// Re-reads the stored keys, keeping what is known of their use.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let stored = self.engine.store().stored_keys().await?;
        let old: HashMap<KeyId, (i64, i64)> = self
            .read()
            .by_hash
            .values()
            .map(|entry| {
                (
                    entry.key.id,
                    (
                        entry.used_ms.load(Ordering::Relaxed),
                        entry.recorded_ms.load(Ordering::Relaxed),
                    ),
                )
            })
            .collect();
        let mut ring = Ring::default();
        for key in self.declared.iter().chain(stored.iter()) {
            let (used, recorded) = old.get(&key.key.id).copied().unwrap_or((0, 0));
            ring.by_hash.insert(
                key.hash.0,
                Arc::new(Entry {
                    key: key.key.clone(),
                    hash: key.hash,
                    used_ms: AtomicI64::new(used),
                    recorded_ms: AtomicI64::new(recorded),
                }),
            );
        }
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = ring;
        Ok(())
    }

    /// Writes the last use of every stored key used since the last write.
    pub async fn record_uses(&self) {
        let used: Vec<(KeyId, Timestamp)> = self
            .read()
            .by_hash
            .values()
            .filter(|entry| entry.key.source == KeySource::Api)
            .filter_map(|entry| {
                let used = entry.used_ms.load(Ordering::Relaxed);
                let recorded = entry.recorded_ms.swap(used, Ordering::Relaxed);
                (used > recorded).then(|| (entry.key.id, Timestamp::from_millis(used)))
            })
            .collect();
        if used.is_empty() {
            return;
        }
        if let Err(error) = self.engine.store().record_key_use(&used).await {
            // Only `last_used_at` is late; it is written with the next use.
            tracing::warn!(%error, keys = used.len(), "cannot record when keys were last used");
        }
    }

    /// Keeps the ring current and records key use, until shutdown.
    pub fn spawn_upkeep(self: &Arc<Self>) {
        let keyring = Arc::clone(self);
        let stopping = self.engine.drained();
        tokio::spawn(async move {
            let mut record = tokio::time::interval(RECORD_USES);
            record.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let refresh = if keyring.engine.is_shared() {
                REFRESH_SHARED
            } else {
                // One instance: every change is made here and applied at once.
                Duration::from_secs(3600)
            };
            loop {
                tokio::select! {
                    _ = record.tick() => keyring.record_uses().await,
                    _ = keyring.engine.keys_heard().notified() => keyring.reload_logged().await,
                    _ = tokio::time::sleep(refresh) => keyring.reload_logged().await,
                    _ = stopping.cancelled() => {
                        keyring.record_uses().await;
                        return;
                    }
                }
            }
        });
    }

    async fn reload_logged(&self) {
        if let Err(error) = self.reload().await {
            // The keys known so far stay in force until the store answers.
            tracing::warn!(%error, "cannot re-read the API keys");
        }
    }
}

/// The token of `Bearer <token>` (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?;
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `spool_<tenant>_<32 random bytes, base64url>`: the tenant makes a leaked
/// key easy to place; the random part makes it impossible to guess.
fn new_secret(tenant: &str) -> String {
    let mut random = [0u8; 32];
    rand::rng().fill_bytes(&mut random);
    format!(
        "spool_{tenant}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    )
}

/// Whether `?tenant=` may name `tenant` for `caller`.
pub fn may_act_in(caller: &Caller, tenant: &str) -> bool {
    valid_tenant(tenant) && (caller.role == Role::Admin || caller.tenant == tenant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bearer_token_is_taken() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer"), None);
    }

    #[test]
    fn new_secrets_name_their_tenant_and_differ() {
        let one = new_secret("acme");
        assert!(one.starts_with("spool_acme_"));
        assert!(one.len() > 40);
        assert_ne!(one, new_secret("acme"));
    }
}
