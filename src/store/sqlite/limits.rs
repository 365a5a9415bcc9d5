//! Rate limits on SQLite: the limits themselves (read on the read pool,
//! written by the writer) and their keys' state.

use rusqlite::{Connection, OptionalExtension, params};
use sqlx::SqlitePool;

use crate::domain::{Gcra, KeyState, LimitKey, RateLimit, Timestamp, micros};
use crate::store::StoreError;
use crate::store::plan;
use crate::store::rows::{LIMIT_COLUMNS, LimitRow, stored_gcra};

/// Creates or changes a limit; true when created. An unchanged limit keeps
/// its `updated_at`: the same `PUT` twice changes nothing.
pub fn put(
    conn: &Connection,
    name: &str,
    gcra: Gcra,
    at: Timestamp,
) -> Result<(RateLimit, bool), StoreError> {
    let before: Option<Gcra> = conn
        .prepare_cached("SELECT rate, per_ms, burst FROM rate_limits WHERE name = ?")?
        .query_row(params![name], |row| {
            Ok(stored_gcra(row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    if let Some(before) = before
        && before != gcra
    {
        let (ratio, cap_us) = plan::rescale(before, gcra);
        conn.prepare_cached(
            "UPDATE rate_limit_keys SET tat_us = ?2 + min(CAST((tat_us - ?2) * ?3 AS INTEGER), ?4) \
             WHERE limit_name = ?1 AND tat_us > ?2",
        )?
        .execute(params![name, micros(at), ratio, cap_us])?;
    }
    conn.prepare_cached(
        "INSERT INTO rate_limits (name, rate, per_ms, burst, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
         ON CONFLICT (name) DO UPDATE SET rate = excluded.rate, per_ms = excluded.per_ms, \
         burst = excluded.burst, updated_at = excluded.updated_at \
         WHERE rate <> excluded.rate OR per_ms <> excluded.per_ms OR burst <> excluded.burst",
    )?
    .execute(params![
        name,
        i64::from(gcra.rate),
        gcra.per_ms as i64,
        i64::from(gcra.burst),
        at.as_millis()
    ])?;
    let limit = conn
        .prepare_cached(&format!(
            "SELECT {LIMIT_COLUMNS} FROM rate_limits WHERE name = ?"
        ))?
        .query_row(params![name], |row| {
            Ok(LimitRow {
                name: row.get(0)?,
                rate: row.get(1)?,
                per_ms: row.get(2)?,
                burst: row.get(3)?,
                created_at: row.get(4)?,
                updated_at: row.get(5)?,
            })
        })?;
    Ok((limit.into(), before.is_none()))
}

pub async fn get(reads: &SqlitePool, name: &str) -> Result<Option<RateLimit>, StoreError> {
    let row: Option<LimitRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LIMIT_COLUMNS} FROM rate_limits WHERE name = ?"
    )))
    .bind(name)
    .fetch_optional(reads)
    .await?;
    Ok(row.map(RateLimit::from))
}

pub async fn list(reads: &SqlitePool) -> Result<Vec<RateLimit>, StoreError> {
    let rows: Vec<LimitRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {LIMIT_COLUMNS} FROM rate_limits ORDER BY name"
    )))
    .fetch_all(reads)
    .await?;
    Ok(rows.into_iter().map(RateLimit::from).collect())
}

pub fn delete(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    conn.prepare_cached("DELETE FROM rate_limit_keys WHERE limit_name = ?")?
        .execute(params![name])?;
    let deleted = conn
        .prepare_cached("DELETE FROM rate_limits WHERE name = ?")?
        .execute(params![name])?;
    Ok(deleted > 0)
}

pub async fn keys(
    reads: &SqlitePool,
    keys: &[LimitKey],
) -> Result<Vec<(LimitKey, KeyState)>, StoreError> {
    let mut states = Vec::new();
    for key in keys {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT tat_us, held_until_us FROM rate_limit_keys WHERE limit_name = ? AND key = ?",
        )
        .bind(&key.0)
        .bind(&key.1)
        .fetch_optional(reads)
        .await?;
        if let Some((tat_us, held_until_us)) = row {
            states.push((
                key.clone(),
                KeyState {
                    tat_us,
                    held_until_us,
                },
            ));
        }
    }
    Ok(states)
}

pub fn hold(conn: &Connection, key: &LimitKey, until: Timestamp) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO rate_limit_keys (limit_name, key, tat_us, held_until_us) \
         VALUES (?1, ?2, 0, ?3) \
         ON CONFLICT (limit_name, key) DO UPDATE \
         SET held_until_us = max(held_until_us, excluded.held_until_us)",
    )?
    .execute(params![key.0, key.1, micros(until)])?;
    Ok(())
}
