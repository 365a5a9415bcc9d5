//! Reads of the PostgreSQL store: jobs, batches, results and queues, each
//! one statement on the pool (or one transaction where two must agree).

use sqlx::{AssertSqlSafe, PgPool};

use super::counts;
use crate::domain::{
    Batch, BatchId, BatchResult, Job, JobId, JobState, QueueConfig, QueueCounts, QueueInfo,
    Timestamp,
};
use crate::store::gauges::oldest_ready_sql;
use crate::store::rows::{
    BatchRow, JOB_COLUMNS, JobRow, QUEUE_COLUMNS, QueueRow, RESULT_COLUMNS, ResultRow, parse_ids,
};
use crate::store::{ServiceGauges, StoreError};

/// A batch with its scheduled, queued and running jobs counted now: its row
/// keeps only the ends (`migrations/postgres/0006_batch_ends.sql`). Followed
/// by `WHERE id = …`.
pub(super) const SELECT_BATCH: &str = "SELECT id, tenant, total, success_threshold, metadata, \
    callback_url, status, cancel_requested, c.scheduled, c.queued, c.running, succeeded, failed, \
    cancelled, created_at, finished_at, retries, retry_when_failed_ratio, retry_max_times, \
    retry_scope, max_in_flight FROM batches, LATERAL (SELECT \
    count(*) FILTER (WHERE state = 'scheduled') AS scheduled, \
    count(*) FILTER (WHERE state = 'queued') AS queued, \
    count(*) FILTER (WHERE state = 'running') AS running \
    FROM jobs WHERE jobs.batch_id = batches.id) AS c";

pub async fn get_job(pool: &PgPool, tenant: &str, id: JobId) -> Result<Option<Job>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND tenant = $2");
    let row: Option<JobRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(id.to_string())
        .bind(tenant)
        .fetch_optional(pool)
        .await?;
    row.map(Job::try_from).transpose()
}

pub async fn queue_position(pool: &PgPool, job: &Job) -> Result<u64, StoreError> {
    // Claims serve tenants round-robin (`store/fair.rs`): ahead of a job are
    // its own tenant's jobs ahead of it in claim order, and as many of each
    // other tenant's as it has rounds to wait, at most.
    let (ahead, others): (i64, i64) = sqlx::query_as(
        "WITH own AS (SELECT count(*) AS n FROM jobs WHERE queue = $1 AND tenant = $5 \
             AND state = 'queued' AND (priority > $2 OR (priority = $2 AND \
             (run_at < $3 OR (run_at = $3 AND id < $4))))) \
         SELECT own.n, (SELECT coalesce(sum(least(n, own.n)), 0)::bigint FROM \
             (SELECT count(*) AS n FROM jobs WHERE queue = $1 AND state = 'queued' \
              AND tenant <> $5 GROUP BY tenant) AS other) FROM own",
    )
    .bind(&job.queue)
    .bind(i64::from(job.priority))
    .bind(job.run_at.as_millis())
    .bind(job.id.to_string())
    .bind(&job.tenant)
    .fetch_one(pool)
    .await?;
    Ok((ahead + others).max(0) as u64)
}

pub async fn gauges(pool: &PgPool) -> Result<ServiceGauges, StoreError> {
    // The webhooks waiting (`webhooks_due`), the queues with ready jobs,
    // then each one's oldest (see `oldest_ready_sql`).
    let (pending, waiting): (i64, Vec<String>) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM webhooks WHERE status = 'pending'), \
         ARRAY(SELECT queue FROM queue_counts WHERE state = 'queued' \
             GROUP BY queue HAVING sum(n) > 0)",
    )
    .fetch_one(pool)
    .await?;
    let mut gauges = ServiceGauges {
        webhooks_pending: pending.max(0) as u64,
        ..ServiceGauges::default()
    };
    let sql = oldest_ready_sql("$1");
    for queue in waiting {
        let at: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql.as_str()))
            .bind(&queue)
            .fetch_one(pool)
            .await?;
        if let Some(at) = at {
            gauges
                .oldest_ready
                .push((queue, Timestamp::from_millis(at)));
        }
    }
    Ok(gauges)
}

pub async fn dependency_results(
    pool: &PgPool,
    ids: &[JobId],
) -> Result<Vec<(JobId, Option<serde_json::Value>)>, StoreError> {
    let texts: Vec<String> = ids.iter().map(JobId::to_string).collect();
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT id, result FROM jobs WHERE id = ANY($1)")
            .bind(&texts)
            .fetch_all(pool)
            .await?;
    ids.iter()
        .zip(&texts)
        .map(|(id, text)| {
            let result = rows
                .iter()
                .find(|(found, _)| found == text)
                .and_then(|(_, result)| result.as_deref())
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("job {id}: result: {e}")))?;
            Ok((*id, result))
        })
        .collect()
}

pub async fn get_batch(
    pool: &PgPool,
    tenant: &str,
    id: BatchId,
) -> Result<Option<Batch>, StoreError> {
    // One snapshot for the counts and the ids.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let sql = format!("{SELECT_BATCH} WHERE id = $1 AND tenant = $2");
    let row: Option<BatchRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(id.to_string())
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE batch_id = $1 ORDER BY batch_index")
            .bind(id.to_string())
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    row.into_batch(parse_ids(&ids)?).map(Some)
}

pub async fn batch_results(
    pool: &PgPool,
    id: BatchId,
    after: u64,
    limit: u32,
) -> Result<Vec<BatchResult>, StoreError> {
    let sql = format!(
        "SELECT {RESULT_COLUMNS} FROM jobs WHERE batch_id = $1 AND batch_seq > $2 \
         AND finished_at IS NOT NULL ORDER BY batch_seq LIMIT $3"
    );
    let rows: Vec<ResultRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(id.to_string())
        .bind(after.min(i64::MAX as u64) as i64)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    rows.into_iter().map(BatchResult::try_from).collect()
}

/// Every queue by name, or the one named `only`, with its counts.
pub async fn queues(pool: &PgPool, only: Option<&str>) -> Result<Vec<QueueInfo>, StoreError> {
    let sql = format!(
        "SELECT {QUEUE_COLUMNS} FROM queues WHERE $1::text IS NULL OR name = $1 ORDER BY name"
    );
    let rows: Vec<QueueRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(only)
        .fetch_all(pool)
        .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let counts = counts::by_state(pool, only).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let config = QueueConfig::from(row);
            let n = |state: JobState| {
                let key = (config.name.clone(), state.as_str().to_owned());
                counts.get(&key).copied().unwrap_or(0).max(0) as u64
            };
            let counts = QueueCounts {
                scheduled: n(JobState::Scheduled),
                queued: n(JobState::Queued),
                running: n(JobState::Running),
            };
            QueueInfo::new(config, counts)
        })
        .collect())
}
