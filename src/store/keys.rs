//! API keys in the store, shared by both backends: the row, its reading SQL
//! and its conversion (the writes are each backend's own).

use crate::domain::{ApiKey, KeyHash, KeyId, KeySource, Role, StoredKey, Timestamp};
use crate::store::StoreError;

/// Keys not revoked; expired ones included (the keyring refuses them, and
/// `/v1/keys` shows them until they are revoked).
pub const SELECT_LIVE_KEYS: &str = "SELECT id, name, tenant, role, secret_sha256, created_at, \
    last_used_at, expires_at FROM api_keys WHERE revoked_at IS NULL ORDER BY id";

#[derive(sqlx::FromRow)]
pub struct KeyRow {
    id: String,
    name: String,
    tenant: String,
    role: String,
    secret_sha256: String,
    created_at: i64,
    last_used_at: Option<i64>,
    expires_at: Option<i64>,
}

impl TryFrom<KeyRow> for StoredKey {
    type Error = StoreError;

    fn try_from(row: KeyRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("api key {}: {what}", row.id));
        Ok(StoredKey {
            hash: KeyHash::from_hex(&row.secret_sha256).ok_or_else(|| corrupt("bad hash"))?,
            key: ApiKey {
                id: row.id.parse().map_err(|_| corrupt("bad id"))?,
                name: row.name.clone(),
                tenant: row.tenant.clone(),
                role: row.role.parse::<Role>().map_err(|e| corrupt(&e))?,
                source: KeySource::Api,
                created_at: Timestamp::from_millis(row.created_at),
                last_used_at: row.last_used_at.map(Timestamp::from_millis),
                expires_at: row.expires_at.map(Timestamp::from_millis),
            },
        })
    }
}

/// The columns of an insert, in `INSERT_KEY` order.
pub fn insert_values(
    key: &StoredKey,
) -> (String, &str, &str, &'static str, String, i64, Option<i64>) {
    (
        key.key.id.to_string(),
        &key.key.name,
        &key.key.tenant,
        key.key.role.as_str(),
        key.hash.to_hex(),
        key.key.created_at.as_millis(),
        key.key.expires_at.map(Timestamp::as_millis),
    )
}

/// The last use of each key, folded to its latest, for one write per key.
pub fn latest_uses(used: &[(KeyId, Timestamp)]) -> Vec<(String, i64)> {
    let mut latest = std::collections::BTreeMap::new();
    for (id, at) in used {
        let entry = latest.entry(*id).or_insert(*at);
        if *at > *entry {
            *entry = *at;
        }
    }
    latest
        .into_iter()
        .map(|(id, at)| (id.to_string(), at.as_millis()))
        .collect()
}
