//! Admission in the SQLite store: capacity, unique keys and the idempotency
//! key checked in the writer's transaction, in the same savepoint as the insert.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::counts::NewCounts;
use super::deps::{Ended, settle};
use super::ops::cancel_now;
use super::rows::{BATCH_COLUMNS, BatchRow, JOB_COLUMNS, JobRow, to_json};
use crate::domain::{
    Batch, BatchCounts, BatchId, Job, JobState, NewBatch, NewJob, OnConflict, Timestamp,
};
use crate::store::plan;
use crate::store::{
    Effects, StoreError, StoredResponse, Submission, SubmitOutcome, SubmitRejection,
};

/// Admits every job of `submission` or none. When that takes more than one
/// write (several jobs, a key to replace, an idempotency key), a savepoint
/// makes it all-or-nothing while the rest of the batch commits; a plain
/// single job is one INSERT, atomic by itself, after read-only checks.
pub fn submit(
    conn: &Connection,
    counts: &mut NewCounts,
    submission: Submission,
) -> Result<Result<SubmitOutcome, SubmitRejection>, StoreError> {
    let several_writes = submission.jobs.len() > 1
        || submission.batch.is_some()
        || submission.idempotency.is_some()
        || submission
            .jobs
            .iter()
            .any(|job| job.key.is_some() || !job.depends_on.is_empty());
    if !several_writes {
        return submit_in(conn, counts, submission);
    }
    conn.prepare_cached("SAVEPOINT submit")?.execute([])?;
    let outcome = submit_in(conn, counts, submission);
    if !matches!(outcome, Ok(Ok(_))) {
        conn.prepare_cached("ROLLBACK TO submit")?.execute([])?;
    }
    conn.prepare_cached("RELEASE submit")?.execute([])?;
    outcome
}

fn submit_in(
    conn: &Connection,
    counts: &mut NewCounts,
    submission: Submission,
) -> Result<Result<SubmitOutcome, SubmitRejection>, StoreError> {
    let tenant = submission.tenant;
    if let Some(idempotency) = &submission.idempotency {
        let seen: Option<(String, i64, String)> = conn
            .prepare_cached(
                "SELECT request_hash, status, body FROM idempotency_keys WHERE tenant = ? AND key = ?",
            )?
            .query_row(params![tenant, idempotency.key], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()?;
        if let Some((hash, status, body)) = seen {
            if hash != idempotency.request_hash {
                return Ok(Err(SubmitRejection::IdempotencyMismatch));
            }
            let body = serde_json::from_str(&body)
                .map_err(|e| StoreError::Corrupt(format!("idempotency body: {e}")))?;
            return Ok(Ok(SubmitOutcome::Replayed(StoredResponse {
                status: status as u16,
                body,
            })));
        }
    }

    let mut requested: BTreeMap<&str, u64> = BTreeMap::new();
    for job in &submission.jobs {
        *requested.entry(job.queue.as_str()).or_default() += 1;
    }
    for (queue, count) in &requested {
        if let Some(rejection) = check_capacity(conn, counts, queue, *count)? {
            return Ok(Err(rejection));
        }
    }

    let mut replaced_running = Vec::new();
    let mut replaced_now: Vec<Job> = Vec::new();
    for job in &submission.jobs {
        let Some(key) = &job.key else { continue };
        let Some(holder) = active_holder(conn, &tenant, key)? else {
            continue;
        };
        match job.on_conflict {
            OnConflict::Reject => {
                return Ok(Err(SubmitRejection::KeyConflict {
                    key: key.clone(),
                    holder: holder.id,
                }));
            }
            OnConflict::Existing => return Ok(Ok(SubmitOutcome::Existing(Box::new(holder)))),
            OnConflict::Replace => {
                let error = plan::replaced_by(job.id, job.created_at);
                match cancel_now(conn, holder.id, &error, job.created_at)? {
                    Some(cancelled) => replaced_now.push(cancelled),
                    None => replaced_running.push(holder.id),
                }
            }
        }
    }

    // Only for a tenant with a `max_pending`: no statement for the others.
    // After the replaced holders were cancelled (they wait no longer, as on
    // PostgreSQL); a refusal rolls that back with the savepoint (a key makes
    // the submission take one).
    if submission.limit_pending
        && let Some(rejection) =
            super::tenants::check_quota(conn, &tenant, submission.jobs.len() as u64)?
    {
        return Ok(Err(rejection));
    }

    let mut jobs = submission.jobs;
    let dependencies = match link_dependencies(conn, &tenant, &mut jobs)? {
        Ok(dependencies) => dependencies,
        Err(rejection) => return Ok(Err(rejection)),
    };
    if let Some(batch) = &submission.batch {
        insert_batch(conn, batch, &jobs)?;
    }
    insert_jobs(conn, &jobs, &dependencies.pending)?;
    let mut link = conn
        .prepare_cached("INSERT OR IGNORE INTO job_deps (depends_on_id, job_id) VALUES (?, ?)")?;
    for (dependency, dependent) in &dependencies.edges {
        link.execute(params![dependency.to_string(), dependent.to_string()])?;
    }
    // Counted before the cascade below moves any of them on: the triggers
    // count that move, these count the inserts.
    counts.add(&jobs);

    // Jobs whose dependency already failed are cancelled at once, through the
    // same cascade as when a dependency fails later.
    let mut effects = Effects::default();
    let now = jobs
        .first()
        .map_or_else(Timestamp::now, |job| job.created_at);
    let mut ended: Vec<Ended> = dependencies
        .already_failed
        .iter()
        .map(|&(id, state)| Ended {
            id,
            state,
            batch_id: None,
        })
        .collect();
    ended.extend(replaced_now.iter().map(Ended::of));
    settle(conn, &ended, now, &mut effects)?;
    let jobs = plan::submitted_jobs(jobs, &mut effects, replaced_now, replaced_running);

    let batch = match &submission.batch {
        Some(batch) => Some(Box::new(stored_batch(conn, batch.id, &jobs)?)),
        None => None,
    };
    if let Some(idempotency) = &submission.idempotency {
        let body = plan::replay_body(batch.as_deref(), &jobs, &submission.redactor);
        let created_at = jobs.first().map_or(0, |job| job.created_at.as_millis());
        conn.prepare_cached(
            "INSERT INTO idempotency_keys (tenant, key, request_hash, status, body, created_at) \
             VALUES (?, ?, ?, 202, ?, ?)",
        )?
        .execute(params![
            tenant,
            idempotency.key,
            idempotency.request_hash,
            body,
            created_at
        ])?;
    }
    Ok(Ok(SubmitOutcome::Created {
        jobs,
        batch,
        effects,
    }))
}

/// Counts each job's unsucceeded dependencies (a job with any waits as
/// `scheduled`) and refuses dependencies that don't exist for this tenant.
fn link_dependencies(
    conn: &Connection,
    tenant: &str,
    jobs: &mut [NewJob],
) -> Result<Result<plan::Dependencies, SubmitRejection>, StoreError> {
    if jobs.iter().all(|job| job.depends_on.is_empty()) {
        return plan::dependencies(tenant, jobs, |_| Ok(None));
    }
    let mut state_of = conn.prepare_cached("SELECT state, tenant FROM jobs WHERE id = ?")?;
    plan::dependencies(tenant, jobs, |dependency| {
        Ok(state_of
            .query_row(params![dependency.to_string()], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?)
    })
}

fn insert_batch(conn: &Connection, batch: &NewBatch, jobs: &[NewJob]) -> Result<(), StoreError> {
    let mut counts = BatchCounts::default();
    for job in jobs {
        counts.add(job.state);
    }
    conn.prepare_cached(
        "INSERT INTO batches (id, tenant, total, success_threshold, success_required, metadata, \
         callback_url, scheduled, queued, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        batch.id.to_string(),
        batch.tenant,
        jobs.len() as i64,
        batch.success_threshold,
        batch.success_required as i64,
        to_json(&batch.metadata),
        batch.callback_url,
        counts.scheduled as i64,
        counts.queued as i64,
        batch.created_at.as_millis(),
    ])?;
    Ok(())
}

/// The batch row as stored now (counts may already have moved), with the
/// ids of `jobs`.
fn stored_batch(conn: &Connection, id: BatchId, jobs: &[Job]) -> Result<Batch, StoreError> {
    let row = conn
        .prepare_cached(&format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?"))?
        .query_row(params![id.to_string()], BatchRow::from_writer_row)?;
    row.into_batch(jobs.iter().map(|job| job.id).collect())
}

/// `None` when `count` more jobs fit in the queue.
pub(super) fn check_capacity(
    conn: &Connection,
    counts: &NewCounts,
    queue: &str,
    count: u64,
) -> Result<Option<SubmitRejection>, StoreError> {
    let room: Option<(i64, i64)> = conn
        .prepare_cached(
            "SELECT capacity, \
             (SELECT n FROM queue_counts WHERE queue = ?1 AND state = 'scheduled') + \
             (SELECT n FROM queue_counts WHERE queue = ?1 AND state = 'queued') \
             FROM queues WHERE name = ?1",
        )?
        .query_row(params![queue], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((capacity, pending)) = room else {
        return Ok(Some(SubmitRejection::UnknownQueue(queue.to_owned())));
    };
    let pending = pending
        + counts.pending(queue, JobState::Scheduled)
        + counts.pending(queue, JobState::Queued);
    let (capacity, pending) = (capacity.max(0) as u64, pending.max(0) as u64);
    if pending + count > capacity {
        return Ok(Some(SubmitRejection::QueueFull {
            queue: queue.to_owned(),
            capacity,
            pending,
            requested: count,
        }));
    }
    Ok(None)
}

pub(super) fn active_holder(
    conn: &Connection,
    tenant: &str,
    key: &str,
) -> Result<Option<Job>, StoreError> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = ? AND key = ? \
             AND key IS NOT NULL AND finished_at IS NULL AND cancel_requested = 0"
        ))?
        .query_row(params![tenant, key], JobRow::from_writer_row)
        .optional()?;
    row.map(Job::try_from).transpose()
}

fn insert_jobs(conn: &Connection, jobs: &[NewJob], pending: &[i64]) -> Result<(), StoreError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO jobs (id, tenant, queue, kind, payload, state, priority, max_attempts, \
         timeout_ms, backoff_base_ms, backoff_max_ms, key, metadata, created_at, run_at, \
         batch_id, batch_index, depends_on, deps_pending, callback_url, concurrency_key, \
         concurrency_limit, traceparent, tracestate) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?;
    for (job, pending) in jobs.iter().zip(pending) {
        let depends_on = if job.depends_on.is_empty() {
            None
        } else {
            Some(to_json(&job.depends_on))
        };
        insert.execute(params![
            job.id.to_string(),
            job.tenant,
            job.queue,
            job.kind,
            to_json(&job.payload),
            job.state.as_str(),
            i64::from(job.priority),
            i64::from(job.max_attempts),
            job.timeout_ms as i64,
            job.backoff.base_ms as i64,
            job.backoff.max_ms as i64,
            job.key,
            to_json(&job.metadata),
            job.created_at.as_millis(),
            job.run_at.as_millis(),
            job.batch_id.map(|id| id.to_string()),
            job.batch_index.map(i64::from),
            depends_on.as_deref().unwrap_or("[]"),
            pending,
            job.callback_url,
            job.concurrency.as_ref().map(|(key, _)| key),
            job.concurrency.as_ref().map(|(_, limit)| i64::from(*limit)),
            job.trace.as_ref().map(|trace| &trace.traceparent),
            job.trace
                .as_ref()
                .and_then(|trace| trace.tracestate.as_ref()),
        ])?;
    }
    Ok(())
}
