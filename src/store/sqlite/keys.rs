//! API keys on SQLite: writes on the writer connection, reads on the pool.

use rusqlite::{Connection, params};
use sqlx::SqlitePool;

use crate::domain::{KeyId, StoredKey, Timestamp};
use crate::store::StoreError;
use crate::store::keys::{KeyRow, SELECT_LIVE_KEYS, insert_values, latest_uses};

/// Stores a new key (on the writer).
pub fn insert(conn: &Connection, key: &StoredKey) -> Result<(), StoreError> {
    let (id, name, tenant, role, hash, created_at, expires_at) = insert_values(key);
    conn.prepare_cached(
        "INSERT INTO api_keys (id, name, tenant, role, secret_sha256, created_at, \
         expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        id, name, tenant, role, hash, created_at, expires_at
    ])?;
    Ok(())
}

/// Revokes a key (on the writer); whether a live key was revoked.
pub fn revoke(conn: &Connection, id: KeyId, at: Timestamp) -> Result<bool, StoreError> {
    let changed = conn
        .prepare_cached("UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL")?
        .execute(params![at.as_millis(), id.to_string()])?;
    Ok(changed > 0)
}

/// Notes when keys were last used (on the writer).
pub fn record_use(conn: &Connection, used: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
    let mut statement = conn.prepare_cached(
        "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?1) WHERE id = ?2",
    )?;
    for (id, at) in latest_uses(used) {
        statement.execute(params![at, id])?;
    }
    Ok(())
}

pub async fn live(reads: &SqlitePool) -> Result<Vec<StoredKey>, StoreError> {
    let rows: Vec<KeyRow> = sqlx::query_as(SELECT_LIVE_KEYS).fetch_all(reads).await?;
    rows.into_iter().map(StoredKey::try_from).collect()
}
