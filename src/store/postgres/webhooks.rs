//! The webhook outbox on PostgreSQL: claims, attempt records and delivery
//! state. Rows are written by triggers, see
//! `migrations/postgres/0003_webhooks.sql`. Each operation is one statement.

use sqlx::PgPool;

use crate::domain::{Timestamp, WebhookDelivery};
use crate::store::plan;
use crate::store::rows::{ClaimedRow, DeliveryRow, attempt_columns};
use crate::store::{ClaimedWebhook, StoreError, WebhookAttempt, WebhookOwner};

pub async fn claim(
    pool: &PgPool,
    now: Timestamp,
    limit: u32,
    lease_until: Timestamp,
) -> Result<Vec<ClaimedWebhook>, StoreError> {
    // SKIP LOCKED: deliverers of several instances split the due webhooks.
    let rows: Vec<ClaimedRow> = sqlx::query_as(
        "WITH due AS MATERIALIZED ( \
             SELECT id AS due_id FROM webhooks WHERE status = 'pending' AND next_attempt_at <= $2 \
             AND (locked_until IS NULL OR locked_until < $2) \
             ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE webhooks SET locked_until = $1 FROM due WHERE webhooks.id = due.due_id \
         RETURNING id, tenant, job_id, batch_id, event, url, body, attempts, created_at",
    )
    .bind(lease_until.as_millis())
    .bind(now.as_millis())
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(ClaimedWebhook::try_from).collect()
}

pub async fn record(pool: &PgPool, attempt: &WebhookAttempt) -> Result<(), StoreError> {
    let (status, error, next_attempt_at, delivered_at) = attempt_columns(attempt);
    sqlx::query(
        "UPDATE webhooks SET status = $1, attempts = attempts + 1, \
         last_error = coalesce($2, last_error), last_attempt_at = $3, \
         next_attempt_at = coalesce($4, next_attempt_at), delivered_at = $5, \
         body = coalesce(body, $6), locked_until = NULL \
         WHERE id = $7 AND status = 'pending'",
    )
    .bind(status.as_str())
    .bind(error)
    .bind(attempt.at.as_millis())
    .bind(next_attempt_at)
    .bind(delivered_at)
    .bind(&attempt.body)
    .bind(&attempt.id)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn next_due(pool: &PgPool) -> Result<Option<Timestamp>, StoreError> {
    let due: Option<i64> = sqlx::query_scalar(
        "SELECT min(greatest(next_attempt_at, coalesce(locked_until, 0))) FROM webhooks \
         WHERE status = 'pending'",
    )
    .fetch_one(pool)
    .await?;
    Ok(due.map(Timestamp::from_millis))
}

pub async fn latest(
    pool: &PgPool,
    tenant: &str,
    owner: WebhookOwner,
) -> Result<Option<WebhookDelivery>, StoreError> {
    let (sql, owner_id) = plan::latest_delivery(owner, "seq");
    let row: Option<DeliveryRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(owner_id)
        .bind(tenant)
        .fetch_optional(pool)
        .await?;
    row.map(WebhookDelivery::try_from).transpose()
}
