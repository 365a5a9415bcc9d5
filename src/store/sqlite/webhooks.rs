//! The webhook outbox on SQLite: claims and attempt records (on the writer)
//! and delivery state (on the read pool). Rows are written by triggers, see
//! `migrations/sqlite/0003_webhooks.sql`.

use rusqlite::{Connection, params};
use sqlx::SqlitePool;

use crate::domain::{Timestamp, WebhookDelivery};
use crate::store::plan;
use crate::store::rows::{ClaimedRow, DeliveryRow, attempt_columns};
use crate::store::{ClaimedWebhook, StoreError, WebhookAttempt, WebhookOwner};

pub fn claim(
    conn: &Connection,
    now: Timestamp,
    limit: u32,
    lease_until: Timestamp,
) -> Result<Vec<ClaimedWebhook>, StoreError> {
    let mut statement = conn.prepare_cached(
        "UPDATE webhooks SET locked_until = ?1 WHERE id IN (\
             SELECT id FROM webhooks WHERE status = 'pending' AND next_attempt_at <= ?2 \
             AND (locked_until IS NULL OR locked_until < ?2) \
             ORDER BY next_attempt_at LIMIT CAST(?3 AS INTEGER)) \
         RETURNING id, tenant, job_id, batch_id, event, url, body, attempts, created_at",
    )?;
    let rows = statement
        .query_map(
            params![lease_until.as_millis(), now.as_millis(), i64::from(limit)],
            |row| {
                Ok(ClaimedRow {
                    id: row.get(0)?,
                    tenant: row.get(1)?,
                    job_id: row.get(2)?,
                    batch_id: row.get(3)?,
                    event: row.get(4)?,
                    url: row.get(5)?,
                    body: row.get(6)?,
                    attempts: row.get(7)?,
                    created_at: row.get(8)?,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().map(ClaimedWebhook::try_from).collect()
}

pub fn record(conn: &Connection, attempt: &WebhookAttempt) -> Result<(), StoreError> {
    let (status, error, next_attempt_at, delivered_at) = attempt_columns(attempt);
    conn.prepare_cached(
        "UPDATE webhooks SET status = ?1, attempts = attempts + 1, \
         last_error = coalesce(?2, last_error), last_attempt_at = ?3, \
         next_attempt_at = coalesce(?4, next_attempt_at), delivered_at = ?5, \
         body = coalesce(body, ?6), locked_until = NULL \
         WHERE id = ?7 AND status = 'pending'",
    )?
    .execute(params![
        status.as_str(),
        error,
        attempt.at.as_millis(),
        next_attempt_at,
        delivered_at,
        attempt.body,
        attempt.id,
    ])?;
    Ok(())
}

pub async fn next_due(reads: &SqlitePool) -> Result<Option<Timestamp>, StoreError> {
    let due: Option<i64> = sqlx::query_scalar(
        "SELECT min(max(next_attempt_at, coalesce(locked_until, 0))) FROM webhooks \
         WHERE status = 'pending'",
    )
    .fetch_one(reads)
    .await?;
    Ok(due.map(Timestamp::from_millis))
}

pub async fn latest(
    reads: &SqlitePool,
    tenant: &str,
    owner: WebhookOwner,
) -> Result<Option<WebhookDelivery>, StoreError> {
    let (sql, owner_id) = plan::latest_delivery(owner, "rowid");
    let row: Option<DeliveryRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(owner_id)
        .bind(tenant)
        .fetch_optional(reads)
        .await?;
    row.map(WebhookDelivery::try_from).transpose()
}
