//! What follows a job's end inside the same transaction: dependents released
//! or cancelled (transitively), and batches noticed finishing.
//!
//! Batch counts, finishing order and status are kept by the
//! `jobs_batch_counts` trigger; this module only reports which batches its
//! caller's write finished, so the engine can wake their long-polls.

use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{JOB_COLUMNS, JobRow, to_json};
use crate::domain::{BatchId, Job, JobId, JobState, Timestamp};
use crate::store::plan;
use crate::store::{Effects, FinishedBatch, StoreError};

/// A job that has just become terminal.
#[derive(Clone, Copy, Debug)]
pub struct Ended {
    pub id: JobId,
    pub state: JobState,
    pub batch_id: Option<BatchId>,
}

impl Ended {
    pub fn of(job: &Job) -> Self {
        Self {
            id: job.id,
            state: job.status,
            batch_id: job.batch_id,
        }
    }
}

/// Applies the consequences of `ended` (jobs that just became terminal):
/// a success releases the jobs waiting on it, a failure or cancellation
/// cancels them and their own dependents; then reports the batches whose
/// last job this was.
pub fn settle(
    conn: &Connection,
    ended: &[Ended],
    at: Timestamp,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    let mut batches: Vec<BatchId> = Vec::new();
    for job in ended {
        if let Some(batch) = job.batch_id {
            batches.push(batch);
        }
        if !has_dependents(conn, job.id)? {
            continue;
        }
        if job.state == JobState::Succeeded {
            release_dependents(conn, job.id, at, effects)?;
        } else {
            for cancelled in cancel_dependents(conn, job.id, job.state, at)? {
                if let Some(batch) = cancelled.batch_id {
                    batches.push(batch);
                }
                effects.cancelled.push(cancelled);
            }
        }
    }
    batches.sort();
    batches.dedup();
    let mut finished =
        conn.prepare_cached("SELECT tenant FROM batches WHERE id = ? AND finished_at IS NOT NULL")?;
    for batch in batches {
        let tenant: Option<String> = finished
            .query_row(params![batch.to_string()], |row| row.get(0))
            .optional()?;
        if let Some(tenant) = tenant {
            effects
                .finished_batches
                .push(FinishedBatch { id: batch, tenant });
        }
    }
    Ok(())
}

fn has_dependents(conn: &Connection, id: JobId) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM job_deps WHERE depends_on_id = ?")?
        .exists(params![id.to_string()])?)
}

/// One dependency fewer for each job waiting on `id`; those left with none
/// become `queued` (or wait for their `run_at`).
fn release_dependents(
    conn: &Connection,
    id: JobId,
    at: Timestamp,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    let released = conn
        .prepare_cached(
            "UPDATE jobs SET deps_pending = deps_pending - 1 \
             WHERE id IN (SELECT job_id FROM job_deps WHERE depends_on_id = ?) \
             AND state = 'scheduled' AND deps_pending > 0 \
             RETURNING id, deps_pending, run_at, queue",
        )?
        .query_map(params![id.to_string()], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, String>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    // `run_at` becomes the moment the job got ready: claims take jobs in that
    // order, and a job never looks started before its dependency finished.
    let mut queue_now = conn.prepare_cached(
        "UPDATE jobs SET state = 'queued', run_at = max(run_at, ?) \
         WHERE id = ? AND state = 'scheduled'",
    )?;
    for (dependent, pending, run_at, queue) in released {
        if pending > 0 {
            continue;
        }
        if run_at <= at.as_millis() {
            queue_now.execute(params![at.as_millis(), dependent])?;
            if !effects.ready_queues.contains(&queue) {
                effects.ready_queues.push(queue);
            }
        } else {
            let run_at = Timestamp::from_millis(run_at);
            effects.next_due = Some(effects.next_due.map_or(run_at, |due| due.min(run_at)));
        }
    }
    conn.prepare_cached("DELETE FROM job_deps WHERE depends_on_id = ?")?
        .execute(params![id.to_string()])?;
    Ok(())
}

/// Cancels every job that (transitively) waits on `id`, which ended `state`.
/// Waiting jobs are always `scheduled`: a job only leaves that state once
/// all its dependencies succeeded, and a success is final.
fn cancel_dependents(
    conn: &Connection,
    id: JobId,
    state: JobState,
    at: Timestamp,
) -> Result<Vec<Job>, StoreError> {
    let error = plan::dependency_failed(id, state, at);
    let rows = conn
        .prepare_cached(&format!(
            "WITH RECURSIVE doomed(id) AS ( \
                 SELECT job_id FROM job_deps WHERE depends_on_id = ?1 \
                 UNION SELECT d.job_id FROM job_deps d JOIN doomed ON d.depends_on_id = doomed.id) \
             UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ?2, error = ?3 \
             WHERE id IN (SELECT id FROM doomed) AND state = 'scheduled' \
             RETURNING {JOB_COLUMNS}"
        ))?
        .query_map(
            params![id.to_string(), at.as_millis(), to_json(&error)],
            JobRow::from_writer_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let cancelled: Vec<Job> = rows
        .into_iter()
        .map(Job::try_from)
        .collect::<Result<_, _>>()?;
    let mut unlink = conn.prepare_cached("DELETE FROM job_deps WHERE depends_on_id = ?")?;
    unlink.execute(params![id.to_string()])?;
    for job in &cancelled {
        unlink.execute(params![job.id.to_string()])?;
    }
    Ok(cancelled)
}
