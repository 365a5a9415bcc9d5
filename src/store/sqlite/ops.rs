//! The write operations of the SQLite store, each applied inside the writer's
//! open transaction.

use sqlx::{AssertSqlSafe, SqliteConnection};

use super::admit::{active_holder, check_capacity};
use super::rows::{JOB_COLUMNS, JobRow, jobs_from_rows, to_json};
use super::writer::Op;
use crate::domain::{ErrorInfo, Job, JobId, JobState, QueueConfig, Timestamp};
use crate::store::{
    CancelOutcome, CompletionResult, Promoted, Rescued, RetryOutcome, StoreError, SubmitOutcome,
    SubmitRejection,
};

/// What a write produced; the store's methods unpack the variant they expect.
pub enum Done {
    Submit(Result<SubmitOutcome, SubmitRejection>),
    Jobs(Vec<Job>),
    Completion(CompletionResult),
    Unit,
    Cancel(CancelOutcome),
    Retry(RetryOutcome),
    Count(u64),
    Ids(Vec<JobId>),
    Rescued(Vec<Rescued>),
    Promoted(Promoted),
    Created(bool),
}

pub async fn apply(conn: &mut SqliteConnection, op: Op) -> Result<Done, StoreError> {
    Ok(match op {
        Op::Submit(submission) => Done::Submit(super::admit::submit(conn, submission).await?),
        Op::Claim {
            queue,
            limit,
            owner,
            lease_until,
            now,
        } => Done::Jobs(claim(conn, &queue, limit, &owner, lease_until, now).await?),
        Op::Progress {
            id,
            attempt,
            progress,
        } => {
            sqlx::query(
                "UPDATE jobs SET progress = ? WHERE id = ? AND attempt = ? AND state = 'running'",
            )
            .bind(to_json(&progress))
            .bind(id.to_string())
            .bind(i64::from(attempt))
            .execute(&mut *conn)
            .await?;
            Done::Unit
        }
        Op::Complete(completion) => {
            let mut results = super::complete::complete_many(conn, &[completion]).await;
            Done::Completion(results.pop().unwrap_or(Ok(CompletionResult::Fenced))?)
        }
        Op::Cancel { tenant, id, at } => Done::Cancel(cancel(conn, &tenant, id, at).await?),
        Op::Retry { tenant, id, at } => Done::Retry(retry(conn, &tenant, id, at).await?),
        Op::Renew { owner, until } => {
            let renewed: Vec<(String, i64)> = sqlx::query_as(
                "UPDATE jobs SET lease_expires_at = ? WHERE state = 'running' AND lease_owner = ? \
                 RETURNING id, cancel_requested",
            )
            .bind(until.as_millis())
            .bind(owner)
            .fetch_all(&mut *conn)
            .await?;
            let cancelled = renewed
                .into_iter()
                .filter(|(_, cancel_requested)| *cancel_requested != 0)
                .filter_map(|(id, _)| id.parse().ok())
                .collect();
            Done::Ids(cancelled)
        }
        Op::Rescue { now, not_owner } => Done::Rescued(rescue(conn, now, not_owner).await?),
        Op::Promote { now } => Done::Promoted(promote(conn, now).await?),
        Op::Prune {
            finished_before,
            keys_before,
        } => Done::Count(prune(conn, finished_before, keys_before).await?),
        Op::UpsertQueue(config) => Done::Created(upsert_queue(conn, &config).await?),
    })
}

/// Cancels a scheduled or queued job at once (`Some`), or asks a running one
/// to stop (`None`; its runner finishes the job).
pub(super) async fn cancel_now(
    conn: &mut SqliteConnection,
    id: JobId,
    error: &ErrorInfo,
    at: Timestamp,
) -> Result<Option<Job>, StoreError> {
    let sql = format!(
        "UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ?, error = ? \
         WHERE id = ? AND state IN ('scheduled', 'queued') RETURNING {JOB_COLUMNS}"
    );
    let row: Option<JobRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(at.as_millis())
        .bind(to_json(error))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = row {
        return Ok(Some(Job::try_from(row)?));
    }
    sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'")
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(None)
}

async fn claim(
    conn: &mut SqliteConnection,
    queue: &str,
    limit: u32,
    owner: &str,
    lease_until: Timestamp,
    now: Timestamp,
) -> Result<Vec<Job>, StoreError> {
    let sql = format!(
        "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_owner = ?, \
         lease_expires_at = ?, started_at = ?, progress = NULL \
         WHERE id IN (SELECT id FROM jobs WHERE queue = ? AND state = 'queued' \
                      ORDER BY priority DESC, run_at, id LIMIT ?) \
         RETURNING {JOB_COLUMNS}"
    );
    let rows: Vec<JobRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(owner)
        .bind(lease_until.as_millis())
        .bind(now.as_millis())
        .bind(queue)
        .bind(i64::from(limit))
        .fetch_all(&mut *conn)
        .await?;
    let mut jobs = jobs_from_rows(rows)?;
    // RETURNING has no order: start the best job first.
    jobs.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.run_at.cmp(&b.run_at))
            .then(a.id.cmp(&b.id))
    });
    Ok(jobs)
}

async fn fetch_job(conn: &mut SqliteConnection, id: JobId) -> Result<Option<Job>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?");
    let row: Option<JobRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    row.map(Job::try_from).transpose()
}

async fn cancel(
    conn: &mut SqliteConnection,
    tenant: &str,
    id: JobId,
    at: Timestamp,
) -> Result<CancelOutcome, StoreError> {
    let Some(job) = fetch_job(conn, id)
        .await?
        .filter(|job| job.tenant == tenant)
    else {
        return Ok(CancelOutcome::NotFound);
    };
    if job.status.is_terminal() {
        return Ok(CancelOutcome::AlreadyFinished(job));
    }
    let error = ErrorInfo {
        code: "cancelled".into(),
        message: "cancelled on request".into(),
        attempt: None,
        at,
    };
    if let Some(job) = cancel_now(conn, id, &error, at).await? {
        return Ok(CancelOutcome::Cancelled(job));
    }
    match fetch_job(conn, id).await? {
        Some(job) => Ok(CancelOutcome::Requested(job)),
        None => Ok(CancelOutcome::NotFound),
    }
}

async fn retry(
    conn: &mut SqliteConnection,
    tenant: &str,
    id: JobId,
    at: Timestamp,
) -> Result<RetryOutcome, StoreError> {
    let Some(job) = fetch_job(conn, id)
        .await?
        .filter(|job| job.tenant == tenant)
    else {
        return Ok(RetryOutcome::NotFound);
    };
    if !matches!(job.status, JobState::Failed | JobState::Cancelled) {
        return Ok(RetryOutcome::NotRetryable(job));
    }
    if let Some(rejection) = check_capacity(conn, &job.queue, 1).await? {
        return Ok(RetryOutcome::Rejected(rejection));
    }
    if let Some(key) = &job.key
        && let Some(holder) = active_holder(conn, tenant, key).await?
    {
        return Ok(RetryOutcome::Rejected(SubmitRejection::KeyConflict {
            key: key.clone(),
            holder: holder.id,
        }));
    }
    let sql = format!(
        "UPDATE jobs SET state = 'queued', attempt = 0, run_at = ?, result = NULL, error = NULL, \
         errors = '[]', progress = NULL, cancel_requested = 0, started_at = NULL, \
         finished_at = NULL WHERE id = ? RETURNING {JOB_COLUMNS}"
    );
    let row: JobRow = sqlx::query_as(AssertSqlSafe(sql))
        .bind(at.as_millis())
        .bind(id.to_string())
        .fetch_one(&mut *conn)
        .await?;
    Ok(RetryOutcome::Retried(Job::try_from(row)?))
}

async fn rescue(
    conn: &mut SqliteConnection,
    now: Timestamp,
    not_owner: Option<String>,
) -> Result<Vec<Rescued>, StoreError> {
    let at = now.to_rfc3339();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "UPDATE jobs SET \
            state = CASE WHEN cancel_requested = 1 THEN 'cancelled' \
                         WHEN attempt >= max_attempts THEN 'failed' ELSE 'queued' END, \
            finished_at = CASE WHEN cancel_requested = 1 OR attempt >= max_attempts THEN ?1 END, \
            error = json_object('code', 'lease_expired', \
                'message', 'the instance running this attempt stopped renewing its lease', \
                'attempt', attempt, 'at', ?2), \
            errors = json_insert(errors, '$[#]', json_object('code', 'lease_expired', \
                'message', 'the instance running this attempt stopped renewing its lease', \
                'attempt', attempt, 'at', ?2)), \
            lease_owner = NULL, lease_expires_at = NULL \
         WHERE state = 'running' AND (lease_expires_at < ?1 OR (?3 IS NOT NULL AND lease_owner <> ?3)) \
         RETURNING id, queue, state",
    )
    .bind(now.as_millis())
    .bind(at)
    .bind(not_owner)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(id, queue, state)| {
            Ok(Rescued {
                id: id
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("job id {id}: {e}")))?,
                queue,
                state: state.parse().map_err(StoreError::Corrupt)?,
            })
        })
        .collect()
}

async fn promote(conn: &mut SqliteConnection, now: Timestamp) -> Result<Promoted, StoreError> {
    let queues: Vec<String> = sqlx::query_scalar(
        "UPDATE jobs SET state = 'queued' WHERE state = 'scheduled' AND run_at <= ? RETURNING queue",
    )
    .bind(now.as_millis())
    .fetch_all(&mut *conn)
    .await?;
    let next_due: Option<i64> =
        sqlx::query_scalar("SELECT min(run_at) FROM jobs WHERE state = 'scheduled'")
            .fetch_one(&mut *conn)
            .await?;
    let mut queues = queues;
    queues.sort();
    queues.dedup();
    Ok(Promoted {
        queues,
        next_due: next_due.map(Timestamp::from_millis),
    })
}

/// Rows deleted per call, so one prune never holds the writer for long.
const PRUNE_CHUNK: i64 = 5_000;

async fn prune(
    conn: &mut SqliteConnection,
    finished_before: Timestamp,
    keys_before: Timestamp,
) -> Result<u64, StoreError> {
    let jobs = sqlx::query(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs \
         WHERE state IN ('succeeded', 'failed', 'cancelled') AND finished_at < ? LIMIT ?)",
    )
    .bind(finished_before.as_millis())
    .bind(PRUNE_CHUNK)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?")
        .bind(keys_before.as_millis())
        .execute(&mut *conn)
        .await?;
    Ok(jobs.rows_affected())
}

async fn upsert_queue(
    conn: &mut SqliteConnection,
    config: &QueueConfig,
) -> Result<bool, StoreError> {
    let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM queues WHERE name = ?")
        .bind(&config.name)
        .fetch_optional(&mut *conn)
        .await?;
    let now = Timestamp::now().as_millis();
    sqlx::query(
        "INSERT INTO queues (name, concurrency, capacity, paused, max_attempts, timeout_ms, \
         backoff_base_ms, backoff_max_ms, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency, \
         capacity = excluded.capacity, paused = excluded.paused, \
         max_attempts = excluded.max_attempts, timeout_ms = excluded.timeout_ms, \
         backoff_base_ms = excluded.backoff_base_ms, backoff_max_ms = excluded.backoff_max_ms, \
         updated_at = excluded.updated_at",
    )
    .bind(&config.name)
    .bind(i64::from(config.concurrency))
    .bind(config.capacity as i64)
    .bind(i64::from(config.paused))
    .bind(i64::from(config.defaults.max_attempts))
    .bind(config.defaults.timeout_ms as i64)
    .bind(config.defaults.backoff.base_ms as i64)
    .bind(config.defaults.backoff.max_ms as i64)
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(exists.is_none())
}
