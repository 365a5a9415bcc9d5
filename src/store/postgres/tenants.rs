//! Tenants' quotas on PostgreSQL: settings, and the `max_pending` check of
//! an admission.
//!
//! `max_pending` holds across instances the way a queue's capacity does:
//! admissions of a tenant with a limit are serialised on the tenant's row
//! (`FOR UPDATE`), and the count is a statement of its own after the lock
//! is granted, so its snapshot (READ COMMITTED) holds every admission of
//! the tenant that committed before, and none can commit meanwhile. The
//! count sums the tenant's counters (`tenant_counts`, see `counts.rs`). The lock is taken late, after the jobs are
//! written and before the queues' locks (every transaction that takes both
//! takes them in that order: job rows, then the tenant's, then the queues'),
//! and held to the commit. A tenant without a limit takes neither the lock
//! nor the count: the engine says which tenants have one (`Submission::
//! limit_pending`), and the stored value read under the lock decides.

use sqlx::{PgConnection, PgPool};

use super::counts::TENANT_PENDING;

use crate::domain::TenantConfig;
use crate::store::tenants::{
    SELECT_TENANTS, TenantRow, quota_rejection, remembered_response, upsert_values,
};
use crate::store::{StoreError, StoredResponse, SubmitRejection};

/// `None` when `requested` more jobs of `tenant` fit under its stored
/// `max_pending` (or it has none), counting its waiting jobs as committed
/// (the submission's own are not counted yet).
/// Takes the tenant's row lock when it has a row (held to the commit).
pub async fn check_quota(
    conn: &mut PgConnection,
    tenant: &str,
    requested: u64,
) -> Result<Option<SubmitRejection>, StoreError> {
    let max_pending: Option<Option<i64>> =
        sqlx::query_scalar("SELECT max_pending FROM tenants WHERE name = $1 FOR UPDATE")
            .bind(tenant)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(max_pending) = max_pending.flatten() else {
        return Ok(None);
    };
    // The submission's own jobs are not counted yet: a transaction writes
    // its counts last, after this check.
    let pending: i64 = sqlx::query_scalar(TENANT_PENDING)
        .bind(tenant)
        .fetch_one(&mut *conn)
        .await?;
    Ok(quota_rejection(
        tenant,
        Some(max_pending),
        pending,
        requested,
    ))
}

/// A refusal when the tenant's waiting jobs as committed now leave no room
/// for `requested` more, read without the lock: enough to refuse before any
/// row is written (clients that meet 429 tend to come back at once), not to
/// admit.
pub async fn glance_quota(
    conn: &mut PgConnection,
    tenant: &str,
    requested: u64,
) -> Result<Option<SubmitRejection>, StoreError> {
    let row: Option<(Option<i64>, i64)> = sqlx::query_as(
        "SELECT max_pending, (SELECT coalesce(sum(n), 0)::bigint FROM tenant_counts \
         WHERE tenant = $1) FROM tenants WHERE name = $1",
    )
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.and_then(|(max_pending, pending)| {
        quota_rejection(tenant, max_pending, pending, requested)
    }))
}

pub async fn all(pool: &PgPool) -> Result<Vec<TenantConfig>, StoreError> {
    let rows: Vec<TenantRow> = sqlx::query_as(SELECT_TENANTS).fetch_all(pool).await?;
    Ok(rows.into_iter().map(TenantConfig::from).collect())
}

/// Creates or replaces a tenant's settings; `true` when created.
pub async fn upsert(pool: &PgPool, tenant: &TenantConfig) -> Result<bool, StoreError> {
    let (name, max_pending, submit_rate, submit_burst, updated_at) = upsert_values(tenant);
    // `xmax = 0` only on a row this statement inserted.
    let created: bool = sqlx::query_scalar(
        "INSERT INTO tenants (name, max_pending, submit_rate, submit_burst, updated_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET \
         max_pending = excluded.max_pending, submit_rate = excluded.submit_rate, \
         submit_burst = excluded.submit_burst, updated_at = excluded.updated_at \
         RETURNING (xmax = 0)",
    )
    .bind(name)
    .bind(max_pending)
    .bind(submit_rate)
    .bind(submit_burst)
    .bind(updated_at)
    .fetch_one(pool)
    .await?;
    Ok(created)
}

pub async fn pending(pool: &PgPool, tenant: &str) -> Result<u64, StoreError> {
    let n: i64 = sqlx::query_scalar(TENANT_PENDING)
        .bind(tenant)
        .fetch_one(pool)
        .await?;
    Ok(n.max(0) as u64)
}

pub async fn idempotent_response(
    conn: impl sqlx::PgExecutor<'_>,
    tenant: &str,
    key: &str,
) -> Result<Option<(String, StoredResponse)>, StoreError> {
    let seen: Option<(String, i64, String)> = sqlx::query_as(
        "SELECT request_hash, status, body FROM idempotency_keys WHERE tenant = $1 AND key = $2",
    )
    .bind(tenant)
    .bind(key)
    .fetch_optional(conn)
    .await?;
    seen.map(remembered_response).transpose()
}
