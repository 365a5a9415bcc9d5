//! Tenants' quotas on SQLite: writes and the `max_pending` check on the
//! writer connection, reads on the pool.

use rusqlite::{Connection, OptionalExtension, params};
use sqlx::SqlitePool;

use super::counts::Counts;
use crate::domain::TenantConfig;
use crate::store::tenants::{
    SELECT_TENANTS, TenantRow, quota_rejection, remembered_response, upsert_values,
};
use crate::store::{StoreError, StoredResponse, SubmitRejection};

/// The tenant's scheduled and queued jobs (`tenant_pending`, kept by the
/// writer: `counts.rs`).
const COUNT_PENDING: &str = "SELECT coalesce((SELECT n FROM tenant_pending WHERE tenant = ?1), 0)";

/// Creates or replaces a tenant's settings; `true` when created.
pub fn upsert(conn: &Connection, tenant: &TenantConfig) -> Result<bool, StoreError> {
    let existed = conn
        .prepare_cached("SELECT 1 FROM tenants WHERE name = ?1")?
        .query_row(params![tenant.name], |_| Ok(()))
        .optional()?
        .is_some();
    let (name, max_pending, submit_rate, submit_burst, updated_at) = upsert_values(tenant);
    conn.prepare_cached(
        "INSERT INTO tenants (name, max_pending, submit_rate, submit_burst, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (name) DO UPDATE SET \
         max_pending = excluded.max_pending, submit_rate = excluded.submit_rate, \
         submit_burst = excluded.submit_burst, updated_at = excluded.updated_at",
    )?
    .execute(params![
        name,
        max_pending,
        submit_rate,
        submit_burst,
        updated_at
    ])?;
    Ok(!existed)
}

/// `None` when `requested` more jobs of `tenant` fit under its stored
/// `max_pending` (or it has none).
///
/// Exact: the writer is the database's only writer and this runs in its
/// transaction, so the count holds every job admitted before, the commands
/// earlier in the same group commit included, and nothing can be admitted
/// between the count and this submission's insert (`counts`: the group's
/// changes not yet in `tenant_pending`). It costs one lookup of the
/// tenant's row, plus one of its count for a tenant with a limit.
pub fn check_quota(
    conn: &Connection,
    counts: &Counts,
    tenant: &str,
    requested: u64,
) -> Result<Option<SubmitRejection>, StoreError> {
    let max_pending: Option<i64> = conn
        .prepare_cached("SELECT max_pending FROM tenants WHERE name = ?1")?
        .query_row(params![tenant], |row| row.get(0))
        .optional()?
        .flatten();
    let Some(max_pending) = max_pending else {
        return Ok(None);
    };
    let pending: i64 = conn
        .prepare_cached(COUNT_PENDING)?
        .query_row(params![tenant], |row| row.get(0))?;
    let pending = pending + counts.pending_of(tenant);
    Ok(quota_rejection(
        tenant,
        Some(max_pending),
        pending,
        requested,
    ))
}

pub async fn all(reads: &SqlitePool) -> Result<Vec<TenantConfig>, StoreError> {
    let rows: Vec<TenantRow> = sqlx::query_as(SELECT_TENANTS).fetch_all(reads).await?;
    Ok(rows.into_iter().map(TenantConfig::from).collect())
}

pub async fn pending(reads: &SqlitePool, tenant: &str) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(COUNT_PENDING)
        .bind(tenant)
        .fetch_one(reads)
        .await?;
    Ok(n.max(0) as u64)
}

pub async fn idempotent_response(
    reads: &SqlitePool,
    tenant: &str,
    key: &str,
) -> Result<Option<(String, StoredResponse)>, StoreError> {
    let seen: Option<(String, i64, String)> = sqlx::query_as(
        "SELECT request_hash, status, body FROM idempotency_keys WHERE tenant = ?1 AND key = ?2",
    )
    .bind(tenant)
    .bind(key)
    .fetch_optional(reads)
    .await?;
    seen.map(remembered_response).transpose()
}
