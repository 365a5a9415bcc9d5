//! Admission in the SQLite store: capacity, unique keys and the idempotency
//! key checked in the writer's transaction, in the same savepoint as the insert.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::counts::NewCounts;
use super::ops::cancel_now;
use super::rows::{JOB_COLUMNS, JobRow, to_json};
use crate::domain::{ErrorInfo, Job, JobState, NewJob, OnConflict};
use crate::store::{StoreError, StoredResponse, Submission, SubmitOutcome, SubmitRejection};

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
        || submission.idempotency.is_some()
        || submission.jobs.iter().any(|job| job.key.is_some());
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

    let mut replaced = Vec::new();
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
                let error = ErrorInfo {
                    code: "replaced".into(),
                    message: format!("replaced by job {} with the same key", job.id),
                    attempt: None,
                    at: job.created_at,
                };
                if cancel_now(conn, holder.id, &error, job.created_at)?.is_none() {
                    replaced.push(holder.id);
                }
            }
        }
    }

    insert_jobs(conn, &submission.jobs)?;

    if let (Some(idempotency), [job]) = (&submission.idempotency, submission.jobs.as_slice()) {
        conn.prepare_cached(
            "INSERT INTO idempotency_keys (tenant, key, request_hash, status, body, created_at) \
             VALUES (?, ?, ?, 202, ?, ?)",
        )?
        .execute(params![
            tenant,
            idempotency.key,
            idempotency.request_hash,
            to_json(&job_from_new(job.clone())),
            job.created_at.as_millis()
        ])?;
    }
    // Counted only now that nothing of this submission can fail any more.
    counts.add(&submission.jobs);
    let jobs: Vec<Job> = submission.jobs.into_iter().map(job_from_new).collect();
    Ok(Ok(SubmitOutcome::Created { jobs, replaced }))
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

fn insert_jobs(conn: &Connection, jobs: &[NewJob]) -> Result<(), StoreError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO jobs (id, tenant, queue, kind, payload, state, priority, max_attempts, \
         timeout_ms, backoff_base_ms, backoff_max_ms, key, metadata, created_at, run_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )?;
    for job in jobs {
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
        ])?;
    }
    Ok(())
}

fn job_from_new(job: NewJob) -> Job {
    Job {
        id: job.id,
        tenant: job.tenant,
        queue: job.queue,
        kind: job.kind,
        payload: job.payload,
        status: job.state,
        priority: job.priority,
        attempt: 0,
        max_attempts: job.max_attempts,
        timeout_ms: job.timeout_ms,
        backoff: job.backoff,
        key: job.key,
        metadata: job.metadata,
        progress: None,
        result: None,
        error: None,
        errors: Vec::new(),
        position: None,
        cancel_requested: false,
        created_at: job.created_at,
        run_at: job.run_at,
        started_at: None,
        finished_at: None,
    }
}
