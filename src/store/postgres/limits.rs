//! Rate limits on PostgreSQL: the limits themselves and their keys' state
//! (which claims move under an advisory lock per key, `claim.rs`).

use sqlx::{PgConnection, PgPool};

use crate::domain::{Gcra, KeyState, LimitKey, RateLimit, Timestamp, micros};
use crate::store::StoreError;
use crate::store::rows::{LIMIT_COLUMNS, LimitRow, stored_gcra};

/// Creates or changes a limit; true when created. An unchanged limit keeps
/// its `updated_at`: the same `PUT` twice changes nothing.
pub async fn put(
    pool: &PgPool,
    name: &str,
    gcra: Gcra,
    at: Timestamp,
) -> Result<(RateLimit, bool), StoreError> {
    let mut tx = pool.begin().await?;
    let before: Option<(i64, i64, i64)> =
        sqlx::query_as("SELECT rate, per_ms, burst FROM rate_limits WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    let before = before.map(|(rate, per_ms, burst)| stored_gcra(rate, per_ms, burst));
    if let Some(before) = before
        && before != gcra
    {
        let (ratio, cap_us) = crate::store::plan::rescale(before, gcra);
        sqlx::query(
            "UPDATE rate_limit_keys \
             SET tat_us = $2 + least(((tat_us - $2) * $3::float8)::bigint, $4) \
             WHERE limit_name = $1 AND tat_us > $2",
        )
        .bind(name)
        .bind(micros(at))
        .bind(ratio)
        .bind(cap_us)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO rate_limits (name, rate, per_ms, burst, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $5) \
         ON CONFLICT (name) DO UPDATE SET rate = excluded.rate, per_ms = excluded.per_ms, \
         burst = excluded.burst, updated_at = excluded.updated_at \
         WHERE (rate_limits.rate, rate_limits.per_ms, rate_limits.burst) \
             IS DISTINCT FROM (excluded.rate, excluded.per_ms, excluded.burst)",
    )
    .bind(name)
    .bind(i64::from(gcra.rate))
    .bind(gcra.per_ms as i64)
    .bind(i64::from(gcra.burst))
    .bind(at.as_millis())
    .execute(&mut *tx)
    .await?;
    let row: LimitRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LIMIT_COLUMNS} FROM rate_limits WHERE name = $1"
    )))
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((row.into(), before.is_none()))
}

pub async fn get(pool: &PgPool, name: &str) -> Result<Option<RateLimit>, StoreError> {
    let row: Option<LimitRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LIMIT_COLUMNS} FROM rate_limits WHERE name = $1"
    )))
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(RateLimit::from))
}

pub async fn list(pool: &PgPool) -> Result<Vec<RateLimit>, StoreError> {
    let rows: Vec<LimitRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LIMIT_COLUMNS} FROM rate_limits ORDER BY name"
    )))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(RateLimit::from).collect())
}

pub async fn delete(pool: &PgPool, name: &str) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM rate_limit_keys WHERE limit_name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let deleted = sqlx::query("DELETE FROM rate_limits WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(deleted > 0)
}

pub async fn keys(
    pool: &PgPool,
    keys: &[LimitKey],
) -> Result<Vec<(LimitKey, KeyState)>, StoreError> {
    let (names, keys): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
    let mut conn = pool.acquire().await?;
    read_keys(&mut conn, &names, &keys).await
}

/// The stored state of those keys (`names[i]`, `keys[i]`) that have one.
pub async fn read_keys(
    conn: &mut PgConnection,
    names: &[String],
    keys: &[String],
) -> Result<Vec<(LimitKey, KeyState)>, StoreError> {
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT s.limit_name, s.key, s.tat_us, s.held_until_us \
         FROM unnest($1::text[], $2::text[]) AS keys(n, k) \
         JOIN rate_limit_keys s ON s.limit_name = keys.n AND s.key = keys.k",
    )
    .bind(names)
    .bind(keys)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, key, tat_us, held_until_us)| {
            (
                (name, key),
                KeyState {
                    tat_us,
                    held_until_us,
                },
            )
        })
        .collect())
}

pub async fn hold(pool: &PgPool, key: &LimitKey, until: Timestamp) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO rate_limit_keys (limit_name, key, tat_us, held_until_us) \
         VALUES ($1, $2, 0, $3) \
         ON CONFLICT (limit_name, key) DO UPDATE \
         SET held_until_us = greatest(rate_limit_keys.held_until_us, excluded.held_until_us)",
    )
    .bind(&key.0)
    .bind(&key.1)
    .bind(micros(until))
    .execute(pool)
    .await?;
    Ok(())
}
