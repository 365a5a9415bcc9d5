//! The statements that carry out what a job's end sets in motion
//! (`plan::settle` decides): dependents released or cancelled, batches
//! noticed finishing.
//!
//! Each function here runs as statements of their own after the statement
//! that ended the job: under READ COMMITTED each statement sees what
//! committed before it started, including the edges of a submission that
//! held the ended job's row lock until it committed (`lock_dependencies` in
//! `admit.rs`). For the same reason a cascade goes one level per statement:
//! a single recursive statement would walk the edges of its own snapshot
//! and miss one added to a job of the cascade while it waited for its lock.

use sqlx::{AssertSqlSafe, PgConnection};

use super::counts::Counts;
use crate::domain::{ErrorInfo, Job, JobId, JobState, Timestamp};
use crate::store::plan::{EndedBatches, Released};
use crate::store::rows::{JOB_COLUMNS, JobRow, to_json};
use crate::store::{FinishedBatch, StoreError};

/// Those of `batches` that are finished (as this statement sees them), and
/// those whose jobs all ended while their retry policy held them open,
/// each once.
pub async fn ended_batches(
    conn: &mut PgConnection,
    mut batches: Vec<String>,
) -> Result<EndedBatches, StoreError> {
    let mut found = EndedBatches::default();
    if batches.is_empty() {
        return Ok(found);
    }
    batches.sort();
    batches.dedup();
    let ended: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT id, tenant, finished_at IS NOT NULL FROM batches WHERE id = ANY($1) \
         AND (finished_at IS NOT NULL OR succeeded + failed + cancelled = total) ORDER BY id",
    )
    .bind(&batches)
    .fetch_all(conn)
    .await?;
    for (id, tenant, finished) in ended {
        let id = id
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("batch id {id}: {e}")))?;
        let batch = FinishedBatch { id, tenant };
        if finished {
            found.finished.push(batch);
        } else {
            found.held.push(batch);
        }
    }
    Ok(found)
}

/// One dependency fewer for each job waiting on `id`; those left with none
/// become `queued` (or wait for their `run_at`). The edges go in the same
/// statement.
pub async fn release_dependents(
    conn: &mut PgConnection,
    counts: &mut Counts,
    id: JobId,
    at: Timestamp,
) -> Result<Vec<Released>, StoreError> {
    // `run_at` becomes the moment the job got ready: claims take jobs in that
    // order, and a job never looks started before its dependency finished.
    let released: Vec<(i64, i64, String, String)> = sqlx::query_as(
        "WITH edges AS (DELETE FROM job_deps WHERE depends_on_id = $1 RETURNING job_id) \
         UPDATE jobs SET deps_pending = deps_pending - 1, \
             state = CASE WHEN deps_pending = 1 AND run_at <= $2 THEN 'queued' ELSE state END, \
             run_at = CASE WHEN deps_pending = 1 AND run_at <= $2 THEN $2 ELSE run_at END \
         WHERE id IN (SELECT job_id FROM edges) AND state = 'scheduled' AND deps_pending > 0 \
         RETURNING deps_pending, run_at, state, queue",
    )
    .bind(id.to_string())
    .bind(at.as_millis())
    .fetch_all(&mut *conn)
    .await?;
    let mut ready = Vec::new();
    for (pending, run_at, state, queue) in released {
        if pending > 0 {
            continue;
        }
        let queued = state == JobState::Queued.as_str();
        if queued {
            counts.moved(&queue, JobState::Scheduled, JobState::Queued);
        }
        ready.push(Released {
            queue,
            run_at: Timestamp::from_millis(run_at),
            queued,
        });
    }
    Ok(ready)
}

/// Cancels with `error` every job that (transitively) waits on `id`,
/// and drops the edges from `id` and from the jobs it cancelled.
/// Waiting jobs are always `scheduled`: a job only leaves that state once
/// all its dependencies succeeded, and a success is final.
pub async fn cancel_dependents(
    conn: &mut PgConnection,
    counts: &mut Counts,
    id: JobId,
    error: &ErrorInfo,
    at: Timestamp,
) -> Result<Vec<Job>, StoreError> {
    let error = to_json(error);
    let sql = format!(
        "WITH edges AS (DELETE FROM job_deps WHERE depends_on_id = ANY($1) RETURNING job_id) \
         UPDATE jobs SET state = 'cancelled', cancel_requested = true, finished_at = $2, \
             error = $3 \
         WHERE id IN (SELECT job_id FROM edges) AND state = 'scheduled' \
         RETURNING {JOB_COLUMNS}"
    );
    let mut cancelled: Vec<Job> = Vec::new();
    let mut frontier = vec![id.to_string()];
    while !frontier.is_empty() {
        let rows: Vec<JobRow> = sqlx::query_as(AssertSqlSafe(sql.as_str()))
            .bind(&frontier)
            .bind(at.as_millis())
            .bind(&error)
            .fetch_all(&mut *conn)
            .await?;
        let level = rows
            .into_iter()
            .map(Job::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        frontier = level.iter().map(|job| job.id.to_string()).collect();
        for job in &level {
            counts.add(&job.queue, &job.tenant, JobState::Scheduled, -1);
        }
        cancelled.extend(level);
    }
    Ok(cancelled)
}
