//! The statements that carry out what a job's end sets in motion
//! (`plan::settle` decides): dependents released or cancelled.

use rusqlite::{Connection, params};

use super::counts::Counts;
use super::rows::{JOB_COLUMNS, JobRow, to_json};
use crate::domain::{ErrorInfo, Job, JobId, JobState, Timestamp};
use crate::store::StoreError;
use crate::store::plan::Released;

fn has_dependents(conn: &Connection, id: JobId) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM job_deps WHERE depends_on_id = ?")?
        .exists(params![id.to_string()])?)
}

/// One dependency fewer for each job waiting on `id`; those left with none
/// become `queued` (or wait for their `run_at`).
pub fn release_dependents(
    conn: &Connection,
    counts: &mut Counts,
    id: JobId,
    at: Timestamp,
) -> Result<Vec<Released>, StoreError> {
    if !has_dependents(conn, id)? {
        return Ok(Vec::new());
    }
    let decremented = conn
        .prepare_cached(
            "UPDATE jobs SET deps_pending = deps_pending - 1 \
             WHERE id IN (SELECT job_id FROM job_deps WHERE depends_on_id = ?) \
             AND state = 'scheduled' AND deps_pending > 0 \
             RETURNING id, deps_pending, run_at, queue, tenant",
        )?
        .query_map(params![id.to_string()], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    // `run_at` becomes the moment the job got ready: claims take jobs in that
    // order, and a job never looks started before its dependency finished.
    let mut queue_now = conn.prepare_cached(
        "UPDATE jobs SET state = 'queued', run_at = max(run_at, ?) \
         WHERE id = ? AND state = 'scheduled'",
    )?;
    let mut released = Vec::new();
    for (dependent, pending, run_at, queue, tenant) in decremented {
        if pending > 0 {
            continue;
        }
        let queued = run_at <= at.as_millis();
        if queued && queue_now.execute(params![at.as_millis(), dependent])? > 0 {
            counts.moved(&queue, &tenant, JobState::Scheduled, JobState::Queued);
        }
        released.push(Released {
            queue,
            run_at: Timestamp::from_millis(run_at),
            queued,
        });
    }
    conn.prepare_cached("DELETE FROM job_deps WHERE depends_on_id = ?")?
        .execute(params![id.to_string()])?;
    Ok(released)
}

/// Cancels every job that (transitively) waits on `id` with `error`.
/// Waiting jobs are always `scheduled`: a job only leaves that state once
/// all its dependencies succeeded, and a success is final.
pub fn cancel_dependents(
    conn: &Connection,
    counts: &mut Counts,
    id: JobId,
    error: &ErrorInfo,
    at: Timestamp,
) -> Result<Vec<Job>, StoreError> {
    if !has_dependents(conn, id)? {
        return Ok(Vec::new());
    }
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
            params![id.to_string(), at.as_millis(), to_json(error)],
            JobRow::from_writer_row,
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let cancelled: Vec<Job> = rows
        .into_iter()
        .map(Job::try_from)
        .collect::<Result<_, _>>()?;
    for job in &cancelled {
        counts.moved(&job.queue, &job.tenant, JobState::Scheduled, job.status);
    }
    let mut unlink = conn.prepare_cached("DELETE FROM job_deps WHERE depends_on_id = ?")?;
    unlink.execute(params![id.to_string()])?;
    for job in &cancelled {
        unlink.execute(params![job.id.to_string()])?;
    }
    Ok(cancelled)
}
