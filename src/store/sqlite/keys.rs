//! API keys on SQLite: writes on the writer connection, reads on the pool.

use rusqlite::{Connection, params};
use sqlx::SqlitePool;

use crate::domain::{KeyId, StoredKey, Timestamp};
use crate::store::StoreError;
use crate::store::keys::{KeyRow, SELECT_LIVE_KEYS, insert_values, latest_uses};

/// A change to the keys table, applied by the writer.
pub enum KeyWrite {
    Insert(Box<StoredKey>),
    Revoke { id: KeyId, at: Timestamp },
    RecordUse(Vec<(KeyId, Timestamp)>),
}

/// Applies `write`; for a revocation, whether a live key was revoked.
pub fn apply(conn: &Connection, write: KeyWrite) -> Result<bool, StoreError> {
    match write {
        KeyWrite::Insert(key) => {
            let (id, name, tenant, role, hash, created_at, expires_at) = insert_values(&key);
            conn.prepare_cached(
                "INSERT INTO api_keys (id, name, tenant, role, secret_sha256, created_at, \
                 expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                id, name, tenant, role, hash, created_at, expires_at
            ])?;
            Ok(true)
        }
        KeyWrite::Revoke { id, at } => {
            let changed = conn
                .prepare_cached(
                    "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
                )?
                .execute(params![at.as_millis(), id.to_string()])?;
            Ok(changed > 0)
        }
        KeyWrite::RecordUse(used) => {
            let mut statement = conn.prepare_cached(
                "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?1) \
                 WHERE id = ?2",
            )?;
            for (id, at) in latest_uses(&used) {
                statement.execute(params![at, id])?;
            }
            Ok(true)
        }
    }
}

pub async fn live(reads: &SqlitePool) -> Result<Vec<StoredKey>, StoreError> {
    let rows: Vec<KeyRow> = sqlx::query_as(SELECT_LIVE_KEYS).fetch_all(reads).await?;
    rows.into_iter().map(StoredKey::try_from).collect()
}
