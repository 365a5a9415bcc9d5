//! Statements of the PostgreSQL store's transitions that `plan` decides
//! (cancellation, through `tx.rs`), and progress reports.

use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use super::counts::Counts;
use super::reads::SELECT_BATCH;
use crate::domain::{Batch, BatchId, ErrorInfo, Job, JobId, JobState, Progress, Timestamp};
use crate::store::StoreError;
use crate::store::rows::{BatchRow, JOB_COLUMNS, JobRow, parse_ids, to_json};

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
pub(super) async fn cancel_waiting(
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
            counts.add(&job.queue, &job.tenant, from, -1);
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

/// A batch with its jobs' ids: `job_ids` when the caller knows them.
pub(super) async fn fetch_batch(
    conn: &mut PgConnection,
    id: BatchId,
    job_ids: Option<Vec<JobId>>,
) -> Result<Option<Batch>, StoreError> {
    let sql = format!("{SELECT_BATCH} WHERE id = $1");
    let row: Option<BatchRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(None) };
    if let Some(job_ids) = job_ids {
        return row.into_batch(job_ids).map(Some);
    }
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT id FROM jobs WHERE batch_id = $1 ORDER BY batch_index")
            .bind(id.to_string())
            .fetch_all(conn)
            .await?;
    row.into_batch(parse_ids(&ids)?).map(Some)
}
