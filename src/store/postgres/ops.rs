//! The job transitions of the PostgreSQL store: cancellation, retries and
//! progress, each inside the caller's transaction (outcomes are in `complete.rs`).

use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use super::admit::{active_holder, capacity_rejection, lock_dependencies, lock_queues};
use super::counts::{self, Counts};
use super::deps::{Ended, settle};
use super::reads::SELECT_BATCH;
use crate::domain::{Batch, BatchId, ErrorInfo, Job, JobId, JobState, Progress, Timestamp};
use crate::store::plan;
use crate::store::rows::{BatchRow, JOB_COLUMNS, JobRow, parse_ids, to_json};
use crate::store::{
    BatchCancelOutcome, CancelOutcome, Effects, RetryOutcome, StoreError, SubmitRejection,
};

/// A job row with what it was before the statement changed it.
#[derive(sqlx::FromRow)]
struct MovedRow {
    #[sqlx(flatten)]
    job: JobRow,
    old_state: String,
}

pub(super) async fn fetch_job(
    conn: &mut PgConnection,
    id: JobId,
    lock: &str,
) -> Result<Option<Job>, StoreError> {
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 {lock}");
    let row: Option<JobRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(id.to_string())
        .fetch_optional(conn)
        .await?;
    row.map(Job::try_from).transpose()
}

/// Cancels the scheduled or queued jobs that `filter` (on `$3`) picks,
/// counting each out of the state it was in.
async fn cancel_waiting(
    conn: &mut PgConnection,
    counts: &mut Counts,
    filter: &str,
    value: String,
    error: &ErrorInfo,
    at: Timestamp,
) -> Result<Vec<Job>, StoreError> {
    // The CTE locks the rows and reads their state as the update will find
    // it (a concurrent claim either committed first, and the job is no
    // longer waiting, or waits for this transaction).
    let sql = format!(
        "WITH old AS MATERIALIZED ( \
             SELECT id AS old_id, state AS old_state FROM jobs \
             WHERE {filter} AND state IN ('scheduled', 'queued') ORDER BY id FOR UPDATE) \
         UPDATE jobs SET state = 'cancelled', cancel_requested = true, finished_at = $1, error = $2 \
         FROM old WHERE jobs.id = old.old_id RETURNING {JOB_COLUMNS}, old_state"
    );
    let rows: Vec<MovedRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(at.as_millis())
        .bind(to_json(error))
        .bind(value)
        .fetch_all(conn)
        .await?;
    rows.into_iter()
        .map(|row| {
            let from: JobState = row.old_state.parse().map_err(StoreError::Corrupt)?;
            let job = Job::try_from(row.job)?;
            counts.add(&job.queue, from, -1);
            Ok(job)
        })
        .collect()
}

/// Cancels a scheduled or queued job at once (`Some`), or asks a running one
/// to stop (`None`; its runner finishes the job).
pub(super) async fn cancel_now(
    conn: &mut PgConnection,
    counts: &mut Counts,
    id: JobId,
    error: &ErrorInfo,
    at: Timestamp,
) -> Result<Option<Job>, StoreError> {
    let cancelled = cancel_waiting(conn, counts, "id = $3", id.to_string(), error, at).await?;
    if cancelled.is_empty() {
        sqlx::query("UPDATE jobs SET cancel_requested = true WHERE id = $1 AND state = 'running'")
            .bind(id.to_string())
            .execute(conn)
            .await?;
    }
    Ok(cancelled.into_iter().next())
}

/// One statement: fenced like a completion (by attempt and state).
pub async fn report_progress(
    pool: &PgPool,
    id: JobId,
    attempt: u32,
    progress: &Progress,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE jobs SET progress = $1 WHERE id = $2 AND attempt = $3 AND state = 'running'",
    )
    .bind(to_json(progress))
    .bind(id.to_string())
    .bind(i64::from(attempt))
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn cancel(
    conn: &mut PgConnection,
    tenant: &str,
    id: JobId,
    at: Timestamp,
) -> Result<CancelOutcome, StoreError> {
    let Some(job) = fetch_job(conn, id, "")
        .await?
        .filter(|job| job.tenant == tenant)
    else {
        return Ok(CancelOutcome::NotFound);
    };
    if job.status.is_terminal() {
        return Ok(CancelOutcome::AlreadyFinished(job));
    }
    let error = plan::cancelled_on_request(false, at);
    let mut counts = Counts::default();
    let outcome = match cancel_now(conn, &mut counts, id, &error, at).await? {
        Some(job) => {
            let mut effects = Effects::default();
            settle(conn, &mut counts, &[Ended::of(&job)], at, &mut effects).await?;
            CancelOutcome::Cancelled(job, effects)
        }
        // Running (or it ended meanwhile: its runner finished first).
        None => match fetch_job(conn, id, "").await? {
            Some(job) if job.status.is_terminal() => CancelOutcome::AlreadyFinished(job),
            Some(job) => CancelOutcome::Requested(job),
            None => CancelOutcome::NotFound,
        },
    };
    counts.flush(conn).await?;
    Ok(outcome)
}

pub async fn retry(
    conn: &mut PgConnection,
    tenant: &str,
    id: JobId,
    at: Timestamp,
) -> Result<RetryOutcome, StoreError> {
    let Some(job) = fetch_job(conn, id, "FOR UPDATE")
        .await?
        .filter(|job| job.tenant == tenant)
    else {
        return Ok(RetryOutcome::NotFound);
    };
    if !matches!(job.status, JobState::Failed | JobState::Cancelled) {
        return Ok(RetryOutcome::NotRetryable(job));
    }
    if let Some(batch) = job.batch_id {
        let finished: Option<bool> =
            sqlx::query_scalar("SELECT finished_at IS NOT NULL FROM batches WHERE id = $1")
                .bind(batch.to_string())
                .fetch_optional(&mut *conn)
                .await?;
        if finished.unwrap_or(true) {
            return Ok(RetryOutcome::BatchFinished(job));
        }
    }
    // A dependent waits again for dependencies that are themselves retried
    // (active); one that failed for good must be retried first. Locked and
    // flagged as at submission: an active dependency cannot end before the
    // edge below is committed.
    let ids: Vec<String> = job.depends_on.iter().map(JobId::to_string).collect();
    let states = lock_dependencies(conn, &ids).await?;
    let mut pending = Vec::new();
    for (dependency, text) in job.depends_on.iter().zip(&ids) {
        let state = states.iter().find(|(id, _, _)| id == text);
        match state.map(|(_, state, _)| state.parse::<JobState>()) {
            Some(Ok(JobState::Succeeded)) => {}
            Some(Ok(state)) if !state.is_terminal() => pending.push(text.clone()),
            _ => {
                return Ok(RetryOutcome::DependencyFailed {
                    dependency: *dependency,
                    job,
                });
            }
        }
    }
    // A retry admits the job again: it counts against the tenant's
    // `max_pending` as a submission does. The tenant's row lock comes after
    // the jobs' and before the queue's, as in admissions (retries are rare:
    // the tenant's row is read always).
    if let Some(rejection) = super::tenants::check_quota(conn, tenant, &[], 1).await? {
        return Ok(RetryOutcome::Rejected(rejection));
    }
    // The queue's lock last, as admissions take it (after any job's), so
    // the two never wait for each other in opposite orders.
    let capacities = lock_queues(conn, std::slice::from_ref(&job.queue)).await?;
    let pending_counts = counts::pending(conn, std::slice::from_ref(&job.queue)).await?;
    if let Some(rejection) = capacity_rejection(&capacities, &pending_counts, &job.queue, 1) {
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
    let state = if pending.is_empty() {
        JobState::Queued
    } else {
        JobState::Scheduled
    };
    let sql = format!(
        "UPDATE jobs SET state = $1, attempt = 0, run_at = $2, result = NULL, error = NULL, \
         errors = '[]', progress = NULL, cancel_requested = false, started_at = NULL, \
         finished_at = NULL, batch_seq = NULL, deps_pending = $3 WHERE id = $4 \
         RETURNING {JOB_COLUMNS}"
    );
    let row: JobRow = sqlx::query_as(AssertSqlSafe(sql))
        .bind(state.as_str())
        .bind(at.as_millis())
        .bind(pending.len() as i64)
        .bind(id.to_string())
        .fetch_one(&mut *conn)
        .await?;
    let retried = Job::try_from(row)?;
    if !pending.is_empty() {
        sqlx::query(
            "INSERT INTO job_deps (depends_on_id, job_id) SELECT unnest($1::text[]), $2 \
             ON CONFLICT DO NOTHING",
        )
        .bind(&pending)
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
    }
    let mut counts = Counts::default();
    counts.add(&retried.queue, state, 1);
    counts.flush(conn).await?;
    Ok(RetryOutcome::Retried(retried))
}

/// Cancels a batch: waiting jobs at once (with their dependents elsewhere),
/// running ones through their runners (`effects.stop`).
pub async fn cancel_batch(
    conn: &mut PgConnection,
    tenant: &str,
    id: BatchId,
    at: Timestamp,
) -> Result<BatchCancelOutcome, StoreError> {
    let Some(batch) = fetch_batch(conn, id)
        .await?
        .filter(|batch| batch.tenant == tenant)
    else {
        return Ok(BatchCancelOutcome::NotFound);
    };
    if batch.finished_at.is_some() {
        return Ok(BatchCancelOutcome::AlreadyFinished(batch));
    }
    // The batch's unfinished jobs first, then the batch row: the order a
    // completion takes them (its job, then its batch through the trigger),
    // so the two never wait for each other in a cycle.
    sqlx::query(
        "SELECT 1 FROM jobs WHERE batch_id = $1 AND finished_at IS NULL ORDER BY id FOR UPDATE",
    )
    .bind(id.to_string())
    .execute(&mut *conn)
    .await?;
    // Flagged first: the trigger that sees the last job end reads it.
    let flagged = sqlx::query(
        "UPDATE batches SET cancel_requested = true WHERE id = $1 AND finished_at IS NULL",
    )
    .bind(id.to_string())
    .execute(&mut *conn)
    .await?;
    if flagged.rows_affected() == 0 {
        // Its last job ended while this waited for the locks.
        return match fetch_batch(conn, id).await? {
            Some(batch) => Ok(BatchCancelOutcome::AlreadyFinished(batch)),
            None => Ok(BatchCancelOutcome::NotFound),
        };
    }
    let error = plan::cancelled_on_request(true, at);
    let mut counts = Counts::default();
    let filter = "batch_id = $3";
    let cancelled = cancel_waiting(conn, &mut counts, filter, id.to_string(), &error, at).await?;
    let mut effects = Effects::default();
    let stopped: Vec<String> = sqlx::query_scalar(
        "UPDATE jobs SET cancel_requested = true WHERE batch_id = $1 AND state = 'running' \
         RETURNING id",
    )
    .bind(id.to_string())
    .fetch_all(&mut *conn)
    .await?;
    effects.stop = parse_ids(&stopped)?;
    let ended: Vec<Ended> = cancelled.iter().map(Ended::of).collect();
    settle(conn, &mut counts, &ended, at, &mut effects).await?;
    effects.cancelled.extend(cancelled);
    counts.flush(conn).await?;
    let batch = fetch_batch(conn, id)
        .await?
        .ok_or(StoreError::Corrupt(format!(
            "batch {id} vanished while being cancelled"
        )))?;
    Ok(BatchCancelOutcome::Cancelled(batch, effects))
}

pub(super) async fn fetch_batch(
    conn: &mut PgConnection,
    id: BatchId,
) -> Result<Option<Batch>, StoreError> {
    let sql = format!("{SELECT_BATCH} WHERE id = $1");
    let row: Option<BatchRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE batch_id = $1 ORDER BY batch_index")
            .bind(id.to_string())
            .fetch_all(conn)
            .await?;
    row.into_batch(parse_ids(&ids)?).map(Some)
}
