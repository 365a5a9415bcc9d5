//! API keys on PostgreSQL.

use sqlx::PgPool;

use crate::domain::{KeyId, StoredKey, Timestamp};
use crate::store::StoreError;
use crate::store::keys::{KeyRow, SELECT_LIVE_KEYS, insert_values, latest_uses};

pub async fn insert(pool: &PgPool, key: &StoredKey) -> Result<(), StoreError> {
    let (id, name, tenant, role, hash, created_at, expires_at) = insert_values(key);
    sqlx::query(
        "INSERT INTO api_keys (id, name, tenant, role, secret_sha256, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(name)
    .bind(tenant)
    .bind(role)
    .bind(hash)
    .bind(created_at)
    .bind(expires_at)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn live(pool: &PgPool) -> Result<Vec<StoredKey>, StoreError> {
    let rows: Vec<KeyRow> = sqlx::query_as(SELECT_LIVE_KEYS).fetch_all(pool).await?;
    rows.into_iter().map(StoredKey::try_from).collect()
}

pub async fn revoke(pool: &PgPool, id: KeyId, at: Timestamp) -> Result<bool, StoreError> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(at.as_millis())
            .bind(id.to_string())
            .execute(pool)
            .await?;
    Ok(done.rows_affected() > 0)
}

/// One statement for every key used since the last record.
pub async fn record_use(pool: &PgPool, used: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
    let (ids, ats): (Vec<String>, Vec<i64>) = latest_uses(used).into_iter().unzip();
    sqlx::query(
        "UPDATE api_keys SET last_used_at = greatest(coalesce(last_used_at, 0), used.at) \
         FROM unnest($1::text[], $2::bigint[]) AS used(id, at) WHERE api_keys.id = used.id",
    )
    .bind(ids)
    .bind(ats)
    .execute(pool)
    .await?;
    Ok(())
}
