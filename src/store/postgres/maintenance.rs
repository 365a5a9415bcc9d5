//! The housekeeping writes of the PostgreSQL store: leases (renewal and
//! rescue), promotion of due jobs, pruning, and queue settings.
//!
//! Every instance runs these loops against the same rows, so the ones that
//! take rows over (rescue, promotion) lock them `SKIP LOCKED`: two instances
//! split the work rather than queue behind each other, and a job its owner
//! is completing right now (row locked) is not taken from it.

use sqlx::{PgConnection, PgPool};

use super::counts::Counts;
use super::tx::PgTx;
use crate::domain::{JobId, JobState, QueueConfig, Timestamp};
use crate::store::plan;
use crate::store::rows::RescuedRow;
use crate::store::{Effects, Promoted, QueueDeletion, Rescued, StoreError};

/// One statement: extends the leases `owner` holds on `ids`.
///
/// The rows are locked in id order, as a group of completions locks them:
/// locked in the order of whatever index the planner picked, a renewal and
/// the same instance's completions of those jobs deadlocked (seen in the
/// server's log), costing the completions a second run and the renewal a
/// round.
pub async fn renew(
    pool: &PgPool,
    owner: &str,
    ids: &[JobId],
    until: Timestamp,
) -> Result<Vec<JobId>, StoreError> {
    let ids: Vec<String> = ids.iter().map(JobId::to_string).collect();
    let renewed: Vec<(String, bool)> = sqlx::query_as(
        "UPDATE jobs SET lease_expires_at = $1 \
         FROM (SELECT id AS l_id FROM jobs \
             WHERE id = ANY($3) AND state = 'running' AND lease_owner = $2 \
             ORDER BY id FOR NO KEY UPDATE) AS locked \
         WHERE jobs.id = l_id AND state = 'running' AND lease_owner = $2 \
         RETURNING id, cancel_requested",
    )
    .bind(until.as_millis())
    .bind(owner)
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(renewed
        .into_iter()
        .filter(|(_, cancel_requested)| *cancel_requested)
        .filter_map(|(id, _)| id.parse().ok())
        .collect())
}

/// The error a rescued attempt records, as compact JSON built in SQL from
/// `$4` and `$5` (`plan::LEASE_EXPIRED` and its message, as JSON strings),
/// the row's `attempt` and `$2` (the time, a JSON string).
const LAPSED: &str = "'{\"code\":' || $4 || ',\"message\":' || $5 || ',\"attempt\":' \
    || jobs.attempt || ',\"at\":' || $2 || '}'";

pub async fn rescue(
    conn: &mut PgConnection,
    now: Timestamp,
    not_owner: Option<&str>,
) -> Result<(Vec<Rescued>, Effects), StoreError> {
    if not_owner.is_some() {
        // Start-up of the only user: webhook claims were all held by the
        // dead process; let them go now rather than after their lease.
        sqlx::query("UPDATE webhooks SET locked_until = NULL WHERE locked_until IS NOT NULL")
            .execute(&mut *conn)
            .await?;
    }
    let sql = format!(
        "WITH lapsed AS MATERIALIZED ( \
             SELECT id AS lapsed_id FROM jobs WHERE state = 'running' \
             AND (lease_expires_at < $1 OR ($3::text IS NOT NULL AND lease_owner <> $3)) \
             ORDER BY id FOR UPDATE SKIP LOCKED) \
         UPDATE jobs SET \
            state = CASE WHEN cancel_requested THEN 'cancelled' \
                         WHEN attempt >= max_attempts THEN 'failed' ELSE 'queued' END, \
            finished_at = CASE WHEN cancel_requested OR attempt >= max_attempts THEN $1 END, \
            error = {LAPSED}, \
            errors = CASE WHEN errors = '[]' THEN '[' || {LAPSED} || ']' \
                     ELSE left(errors, -1) || ',' || {LAPSED} || ']' END, \
            lease_owner = NULL, lease_expires_at = NULL \
         FROM lapsed WHERE jobs.id = lapsed.lapsed_id \
         RETURNING id, queue, state, batch_id, tenant"
    );
    let rows: Vec<RescuedRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(now.as_millis())
        .bind(serde_json::Value::from(now.to_rfc3339()).to_string())
        .bind(not_owner)
        .bind(serde_json::Value::from(plan::LEASE_EXPIRED).to_string())
        .bind(serde_json::Value::from(plan::LEASE_EXPIRED_MESSAGE).to_string())
        .fetch_all(&mut *conn)
        .await?;
    let mut counts = Counts::default();
    let tx = &mut PgTx {
        conn: &mut *conn,
        counts: &mut counts,
    };
    let (rescued, effects) = plan::settle_rescued(tx, rows, now).await?;
    counts.flush(conn).await?;
    Ok((rescued, effects))
}

pub async fn promote(conn: &mut PgConnection, now: Timestamp) -> Result<Promoted, StoreError> {
    let mut queues: Vec<String> = sqlx::query_scalar(
        "WITH due AS MATERIALIZED ( \
             SELECT id AS due_id FROM jobs WHERE state = 'scheduled' AND deps_pending = 0 \
             AND run_at <= $1 ORDER BY id FOR UPDATE SKIP LOCKED) \
         UPDATE jobs SET state = 'queued' FROM due WHERE jobs.id = due.due_id RETURNING queue",
    )
    .bind(now.as_millis())
    .fetch_all(&mut *conn)
    .await?;
    let mut counts = Counts::default();
    for queue in &queues {
        counts.moved(queue, JobState::Scheduled, JobState::Queued);
    }
    counts.flush(&mut *conn).await?;
    // A due job another instance holds (skipped above) shows here as due
    // now, so the caller comes back for it.
    let next_due: Option<i64> = sqlx::query_scalar(
        "SELECT min(run_at) FROM jobs WHERE state = 'scheduled' AND deps_pending = 0",
    )
    .fetch_one(conn)
    .await?;
    queues.sort();
    queues.dedup();
    Ok(Promoted {
        queues,
        next_due: next_due.map(Timestamp::from_millis),
    })
}

/// The statements of `plan::PRUNE`, in order; how many jobs went.
pub async fn prune(
    conn: &mut PgConnection,
    finished_before: Timestamp,
    keys_before: Timestamp,
) -> Result<u64, StoreError> {
    let mut jobs = 0;
    for (n, step) in plan::PRUNE.iter().enumerate() {
        let cutoff = step.cutoff.of(finished_before, keys_before);
        let mut query = sqlx::query(step.sql).bind(cutoff.as_millis());
        if step.chunked {
            query = query.bind(plan::PRUNE_CHUNK);
        }
        let deleted = query.execute(&mut *conn).await?.rows_affected();
        if n == 0 {
            jobs = deleted;
        }
    }
    Ok(jobs)
}

/// One statement; `xmax = 0` on the returned row tells an insert from an
/// update (an updated row carries the updating transaction's id).
pub async fn upsert_queue(pool: &PgPool, config: &QueueConfig) -> Result<bool, StoreError> {
    let now = Timestamp::now().as_millis();
    let created: bool = sqlx::query_scalar(
        "INSERT INTO queues (name, concurrency, capacity, paused, max_attempts, timeout_ms, \
         backoff_base_ms, backoff_max_ms, created_at, updated_at, rate_limit, rate_limit_key, \
         expires_after_ms, concurrency_min) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11, $12, $13) \
         ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency, \
         concurrency_min = excluded.concurrency_min, \
         capacity = excluded.capacity, paused = excluded.paused, \
         max_attempts = excluded.max_attempts, timeout_ms = excluded.timeout_ms, \
         backoff_base_ms = excluded.backoff_base_ms, backoff_max_ms = excluded.backoff_max_ms, \
         updated_at = excluded.updated_at, rate_limit = excluded.rate_limit, \
         rate_limit_key = excluded.rate_limit_key, expires_after_ms = excluded.expires_after_ms \
         RETURNING xmax = 0",
    )
    .bind(&config.name)
    .bind(i64::from(config.concurrency.max()))
    .bind(config.capacity as i64)
    .bind(config.paused)
    .bind(i64::from(config.defaults.max_attempts))
    .bind(config.defaults.timeout_ms as i64)
    .bind(config.defaults.backoff.base_ms as i64)
    .bind(config.defaults.backoff.max_ms as i64)
    .bind(now)
    .bind(config.defaults.rate_limit.as_ref().map(|limit| &limit.name))
    .bind(
        config
            .defaults
            .rate_limit
            .as_ref()
            .and_then(|limit| limit.key.as_ref()),
    )
    .bind(config.defaults.expires_after_ms.map(|ms| ms as i64))
    .bind(config.concurrency.range().map(|range| i64::from(range.min)))
    .fetch_one(pool)
    .await?;
    Ok(created)
}

/// Deletes the queue unless jobs of it are unfinished. The queue's row lock
/// is what every admission to it takes before it commits (`admit.rs`): an
/// admission that committed first is counted here, one that commits after
/// finds no row and is refused as an unknown queue.
pub async fn delete_queue(pool: &PgPool, name: &str) -> Result<QueueDeletion, StoreError> {
    let mut tx = pool.begin().await?;
    let found: Option<String> =
        sqlx::query_scalar("SELECT name FROM queues WHERE name = $1 FOR UPDATE")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
    if found.is_none() {
        return Ok(QueueDeletion::NotFound);
    }
    // Scheduled and queued from the counters, running from its index.
    let unfinished: i64 = sqlx::query_scalar(
        "SELECT coalesce((SELECT sum(n) FROM queue_counts WHERE queue = $1), 0)::bigint \
         + (SELECT count(*) FROM jobs WHERE queue = $1 AND state = 'running')",
    )
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    if unfinished > 0 {
        return Ok(QueueDeletion::Unfinished(unfinished as u64));
    }
    sqlx::query("DELETE FROM queues WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(QueueDeletion::Deleted)
}
