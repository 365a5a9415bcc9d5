//! What follows a job's end inside the same transaction: dependents released
//! or cancelled (transitively), and batches noticed finishing.
//!
//! Batch counts, finishing order and status are kept by the
//! `jobs_batch_counts` trigger; this module only reports which batches its
//! caller's write finished, so the engine can wake their long-polls.
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
use crate::domain::{BatchId, Job, JobId, JobState, Timestamp};
use crate::store::plan;
use crate::store::rows::{JOB_COLUMNS, JobRow, to_json};
use crate::store::{Effects, FinishedBatch, StoreError};

/// A job that has just become terminal.
#[derive(Clone, Copy, Debug)]
pub struct Ended {
    pub id: JobId,
    pub state: JobState,
    pub batch_id: Option<BatchId>,
    /// False when the caller knows no job waits on this one, which saves
    /// the statements that would find none.
    pub dependents: bool,
}

impl Ended {
    pub fn of(job: &Job) -> Self {
        Self {
            id: job.id,
            state: job.status,
            batch_id: job.batch_id,
            dependents: true,
        }
    }
}

/// Applies the consequences of `ended` (jobs that just became terminal):
/// a success releases the jobs waiting on it, a failure or cancellation
/// cancels them and their own dependents; then reports the batches whose
/// last job this was.
pub async fn settle(
    conn: &mut PgConnection,
    counts: &mut Counts,
    ended: &[Ended],
    at: Timestamp,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    let mut batches: Vec<String> = Vec::new();
    for job in ended {
        if let Some(batch) = job.batch_id {
            batches.push(batch.to_string());
        }
        if !job.dependents {
            continue;
        }
        if job.state == JobState::Succeeded {
            release_dependents(conn, counts, job.id, at, effects).await?;
        } else {
            for cancelled in cancel_dependents(conn, counts, job.id, job.state, at).await? {
                if let Some(batch) = cancelled.batch_id {
                    batches.push(batch.to_string());
                }
                effects.cancelled.push(cancelled);
            }
        }
    }
    effects
        .finished_batches
        .extend(finished_batches(conn, batches).await?);
    Ok(())
}

/// Those of `batches` that are finished (as this statement sees them), each once.
pub async fn finished_batches(
    conn: &mut PgConnection,
    mut batches: Vec<String>,
) -> Result<Vec<FinishedBatch>, StoreError> {
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    batches.sort();
    batches.dedup();
    let finished: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, tenant FROM batches WHERE id = ANY($1) AND finished_at IS NOT NULL ORDER BY id",
    )
    .bind(&batches)
    .fetch_all(conn)
    .await?;
    finished
        .into_iter()
        .map(|(id, tenant)| {
            let id = id
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("batch id {id}: {e}")))?;
            Ok(FinishedBatch { id, tenant })
        })
        .collect()
}

/// One dependency fewer for each job waiting on `id`; those left with none
/// become `queued` (or wait for their `run_at`). The edges go in the same
/// statement.
async fn release_dependents(
    conn: &mut PgConnection,
    counts: &mut Counts,
    id: JobId,
    at: Timestamp,
    effects: &mut Effects,
) -> Result<(), StoreError> {
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
    for (pending, run_at, state, queue) in released {
        if pending > 0 {
            continue;
        }
        if state == JobState::Queued.as_str() {
            counts.moved(&queue, JobState::Scheduled, JobState::Queued);
            if !effects.ready_queues.contains(&queue) {
                effects.ready_queues.push(queue);
            }
        } else {
            let run_at = Timestamp::from_millis(run_at);
            effects.next_due = Some(effects.next_due.map_or(run_at, |due| due.min(run_at)));
        }
    }
    Ok(())
}

/// Cancels every job that (transitively) waits on `id`, which ended `state`,
/// and drops the edges from `id` and from the jobs it cancelled.
/// Waiting jobs are always `scheduled`: a job only leaves that state once
/// all its dependencies succeeded, and a success is final.
async fn cancel_dependents(
    conn: &mut PgConnection,
    counts: &mut Counts,
    id: JobId,
    state: JobState,
    at: Timestamp,
) -> Result<Vec<Job>, StoreError> {
    let error = to_json(&plan::dependency_failed(id, state, at));
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
            counts.add(&job.queue, JobState::Scheduled, -1);
        }
        cancelled.extend(level);
    }
    Ok(cancelled)
}
