//! The write operations of the SQLite store, each applied inside the writer's
//! open transaction on its own connection.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::counts::Counts;
use super::rows::{BATCH_COLUMNS, BatchRow, JOB_COLUMNS, JobRow, parse_ids, to_json};
use super::writer::{WriteTx, run_now};
use crate::domain::{
    Batch, BatchId, ErrorInfo, Job, JobId, JobState, Progress, QueueConfig, Timestamp,
};
use crate::store::plan::{self, Ended};
use crate::store::rows::RescuedRow;
use crate::store::{
    AttemptOutcome, Completion, CompletionResult, Effects, Promoted, QueueDeletion, Rescued,
    StoreError,
};

/// Stores a running attempt's progress, fenced like a completion (by
/// attempt and state).
pub(super) fn report_progress(
    conn: &Connection,
    id: JobId,
    attempt: u32,
    progress: &Progress,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE jobs SET progress = ? WHERE id = ? AND attempt = ? AND state = 'running'",
    )?
    .execute(params![
        to_json(progress),
        id.to_string(),
        i64::from(attempt)
    ])?;
    Ok(())
}

/// A write that changes nothing a reader sees, committed like any other:
/// whether the database takes writes (`/readyz`). It bumps the header's
/// user version, which nothing else uses: a page written and committed
/// through the WAL like a job's row.
pub(super) fn probe(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    conn.execute_batch(&format!(
        "PRAGMA user_version = {}",
        (version + 1) % 1_000_000
    ))?;
    Ok(())
}

pub(super) fn query_jobs(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Job>, StoreError> {
    let mut statement = conn.prepare_cached(sql)?;
    let rows = statement
        .query_map(params, JobRow::from_writer_row)?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter().map(Job::try_from).collect()
}

fn query_job(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Option<Job>, StoreError> {
    let row = conn
        .prepare_cached(sql)?
        .query_row(params, JobRow::from_writer_row)
        .optional()?;
    row.map(Job::try_from).transpose()
}

pub(super) fn fetch_job(conn: &Connection, id: JobId) -> Result<Option<Job>, StoreError> {
    query_job(
        conn,
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"),
        params![id.to_string()],
    )
}

/// Cancels a scheduled or queued job at once (`Some`), or asks a running one
/// to stop (`None`; its runner finishes the job).
pub(super) fn cancel_now(
    conn: &Connection,
    counts: &mut Counts,
    id: JobId,
    error: &ErrorInfo,
    at: Timestamp,
) -> Result<Option<Job>, StoreError> {
    let cancelled = cancel_waiting(conn, counts, "id", id.to_string(), error, at)?
        .into_iter()
        .next();
    if cancelled.is_none() {
        conn.prepare_cached(
            "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'",
        )?
        .execute(params![id.to_string()])?;
    }
    Ok(cancelled)
}

/// Stores the outcomes of a group, each as [`complete`] would: the
/// successes (nearly all of them under load) by one `UPDATE … FROM
/// json_each`, the rest one by one. The results come in `completions`'
/// order.
pub(super) fn complete_all(
    tx: &mut WriteTx<'_>,
    completions: &[Completion],
) -> Vec<Result<CompletionResult, StoreError>> {
    let succeeded: Vec<(usize, &Value)> = completions
        .iter()
        .enumerate()
        .filter_map(|(n, completion)| match &completion.outcome {
            AttemptOutcome::Succeeded(result) => Some((n, result)),
            _ => None,
        })
        .collect();
    let mut results: Vec<Option<Result<CompletionResult, StoreError>>> =
        (0..completions.len()).map(|_| None).collect();
    if succeeded.len() > 1 {
        match succeed_all(tx, completions, &succeeded) {
            Ok(applied) => {
                for ((n, _), result) in succeeded.iter().zip(applied) {
                    results[*n] = Some(result);
                }
            }
            // Nothing stored: each is tried on its own below.
            Err(error) => tracing::debug!(%error, "grouped completion failed"),
        }
    }
    completions
        .iter()
        .zip(results)
        .map(|(completion, result)| result.unwrap_or_else(|| complete(tx, completion)))
        .collect()
}

/// The successes among `completions` (`succeeded`: each one's position and
/// result), stored by one statement: each fenced as in [`complete`], each
/// settled on its own (so each carries its own effects). An error: the
/// statement stored none.
fn succeed_all(
    tx: &mut WriteTx<'_>,
    completions: &[Completion],
    succeeded: &[(usize, &Value)],
) -> Result<Vec<Result<CompletionResult, StoreError>>, StoreError> {
    let rows: Vec<Value> = succeeded
        .iter()
        .map(|&(n, result)| {
            let completion = &completions[n];
            serde_json::json!([
                completion.id.to_string(),
                completion.attempt,
                completion.lease_owner,
                to_json(result),
                completion.at.as_millis(),
            ])
        })
        .collect();
    // By id and attempt: a stale attempt's write to the same job may come
    // in the same group, and only the current attempt's row comes back.
    let done: Vec<Job> = query_jobs(
        tx.conn,
        &format!(
            "UPDATE jobs SET state = 'succeeded', result = c.value ->> 3, error = NULL, \
             finished_at = c.value ->> 4, lease_owner = NULL, lease_expires_at = NULL \
             FROM json_each(?) AS c WHERE jobs.id = c.value ->> 0 \
             AND jobs.attempt = c.value ->> 1 AND jobs.lease_owner = c.value ->> 2 \
             AND jobs.state = 'running' RETURNING {JOB_COLUMNS}"
        ),
        params![Value::Array(rows).to_string()],
    )?;
    for job in &done {
        tx.counts.moved(
            &job.queue,
            &job.tenant,
            JobState::Running,
            JobState::Succeeded,
        );
    }
    let mut done: HashMap<(JobId, u32), Job> = done
        .into_iter()
        .map(|job| ((job.id, job.attempt), job))
        .collect();
    // Every row changed before any is settled, so a batch the group
    // finished shows as finished to each of its jobs: it is looked up once
    // and reported to the first of them only (as on PostgreSQL).
    let mut batches_seen: Vec<BatchId> = Vec::new();
    let mut results = Vec::with_capacity(succeeded.len());
    for &(n, _) in succeeded {
        let completion = &completions[n];
        let Some(job) = done.remove(&(completion.id, completion.attempt)) else {
            results.push(Ok(CompletionResult::Fenced));
            continue;
        };
        let mut effects = Effects::default();
        let ended = Ended {
            batch_id: None,
            ..Ended::of(&job)
        };
        let mut settled = run_now(plan::settle(tx, &[ended], completion.at, &mut effects));
        if let Some(batch) = job.batch_id
            && !batches_seen.contains(&batch)
        {
            batches_seen.push(batch);
            settled = settled.and_then(|()| {
                run_now(plan::settle_batches(
                    tx,
                    &[batch],
                    completion.at,
                    &mut effects,
                ))
            });
        }
        results.push(settled.map(|()| CompletionResult::Applied {
            job: Box::new(job),
            effects,
        }));
    }
    Ok(results)
}

/// Stores an attempt's outcome, fenced by `(id, attempt, lease_owner, state =
/// running)`: when the job moved on (its lease was taken over), nothing
/// changes and the result is `Fenced`.
pub(super) fn complete(
    tx: &mut WriteTx<'_>,
    completion: &Completion,
) -> Result<CompletionResult, StoreError> {
    let conn = tx.conn;
    const FENCE: &str = "WHERE id = ? AND attempt = ? AND lease_owner = ? AND state = 'running'";
    const UNLEASE: &str = "lease_owner = NULL, lease_expires_at = NULL";
    let id = completion.id.to_string();
    let attempt = i64::from(completion.attempt);
    let owner = completion.lease_owner.as_str();
    let at = completion.at.as_millis();
    let job = match &completion.outcome {
        AttemptOutcome::Succeeded(result) => query_job(
            conn,
            &format!(
                "UPDATE jobs SET state = 'succeeded', result = ?, error = NULL, finished_at = ?, {UNLEASE} \
                 {FENCE} RETURNING {JOB_COLUMNS}"
            ),
            params![to_json(result), at, id, attempt, owner],
        )?,
        AttemptOutcome::Failed { error, retry_at } => {
            let (state, finished_at, run_at) = match retry_at {
                Some(retry_at) => ("scheduled", None, Some(retry_at.as_millis())),
                None => ("failed", Some(at), None),
            };
            let error = to_json(error);
            query_job(
                conn,
                &format!(
                    "UPDATE jobs SET state = ?, finished_at = ?, run_at = coalesce(?, run_at), \
                     error = ?, errors = json_insert(errors, '$[#]', json(?)), {UNLEASE} \
                     {FENCE} RETURNING {JOB_COLUMNS}"
                ),
                params![state, finished_at, run_at, error, error, id, attempt, owner],
            )?
        }
        AttemptOutcome::Cancelled(error) => query_job(
            conn,
            &format!(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?, error = ?, {UNLEASE} \
                 {FENCE} RETURNING {JOB_COLUMNS}"
            ),
            params![at, to_json(error), id, attempt, owner],
        )?,
        AttemptOutcome::Released => query_job(
            conn,
            &format!(
                "UPDATE jobs SET state = 'queued', attempt = attempt - 1, started_at = NULL, \
                 {UNLEASE} {FENCE} RETURNING {JOB_COLUMNS}"
            ),
            params![id, attempt, owner],
        )?,
    };
    let Some(job) = job else {
        return Ok(CompletionResult::Fenced);
    };
    tx.counts
        .moved(&job.queue, &job.tenant, JobState::Running, job.status);
    let mut effects = Effects::default();
    if job.status.is_terminal() {
        run_now(plan::settle(
            tx,
            &[Ended::of(&job)],
            completion.at,
            &mut effects,
        ))?;
    }
    Ok(CompletionResult::Applied {
        job: Box::new(job),
        effects,
    })
}

/// The statement of a retry (`plan::retry_job` decides): the job back to
/// `state`, its attempts, result and errors cleared.
pub(super) fn reopen(
    conn: &Connection,
    counts: &mut Counts,
    id: JobId,
    from: JobState,
    state: JobState,
    at: Timestamp,
    pending: usize,
) -> Result<Option<Job>, StoreError> {
    let reopened = query_job(
        conn,
        &format!(
            "UPDATE jobs SET state = ?, attempt = 0, run_at = ?, result = NULL, error = NULL, \
             errors = '[]', progress = NULL, cancel_requested = 0, started_at = NULL, expires_at = NULL, \
             finished_at = NULL, batch_seq = NULL, deps_pending = ? WHERE id = ? \
             RETURNING {JOB_COLUMNS}"
        ),
        params![
            state.as_str(),
            at.as_millis(),
            pending as i64,
            id.to_string()
        ],
    )?;
    if let Some(job) = &reopened {
        counts.moved(&job.queue, &job.tenant, from, job.status);
    }
    Ok(reopened)
}

pub(super) fn renew(
    conn: &Connection,
    owner: &str,
    ids: &[JobId],
    until: Timestamp,
) -> Result<Vec<JobId>, StoreError> {
    // The ids as one JSON array: one statement whatever their number.
    let ids = serde_json::to_string(&ids.iter().map(JobId::to_string).collect::<Vec<_>>())
        .map_err(|e| StoreError::Corrupt(format!("job ids as JSON: {e}")))?;
    let mut statement = conn.prepare_cached(
        "UPDATE jobs SET lease_expires_at = ? \
         WHERE id IN (SELECT value FROM json_each(?)) AND state = 'running' AND lease_owner = ? \
         RETURNING id, cancel_requested",
    )?;
    let renewed = statement
        .query_map(params![until.as_millis(), ids, owner], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(renewed
        .into_iter()
        .filter(|(_, cancel_requested)| *cancel_requested != 0)
        .filter_map(|(id, _)| id.parse().ok())
        .collect())
}

pub(super) fn rescue(
    tx: &mut WriteTx<'_>,
    now: Timestamp,
    not_owner: Option<String>,
) -> Result<(Vec<Rescued>, Effects), StoreError> {
    let conn = tx.conn;
    if not_owner.is_some() {
        // Start-up of the only user: webhook claims were all held by the
        // dead process; let them go now rather than after their lease.
        conn.prepare_cached(
            "UPDATE webhooks SET locked_until = NULL WHERE locked_until IS NOT NULL",
        )?
        .execute([])?;
    }
    let mut statement = conn.prepare_cached(
        "UPDATE jobs SET \
            state = CASE WHEN cancel_requested = 1 THEN 'cancelled' \
                         WHEN attempt >= max_attempts THEN 'failed' ELSE 'queued' END, \
            finished_at = CASE WHEN cancel_requested = 1 OR attempt >= max_attempts THEN ?1 END, \
            error = json_object('code', ?4, 'message', ?5, 'attempt', attempt, 'at', ?2), \
            errors = json_insert(errors, '$[#]', \
                json_object('code', ?4, 'message', ?5, 'attempt', attempt, 'at', ?2)), \
            lease_owner = NULL, lease_expires_at = NULL \
         WHERE state = 'running' AND (lease_expires_at < ?1 OR (?3 IS NOT NULL AND lease_owner <> ?3)) \
         RETURNING id, queue, state, batch_id, tenant",
    )?;
    let rows = statement
        .query_map(
            params![
                now.as_millis(),
                now.to_rfc3339(),
                not_owner,
                plan::LEASE_EXPIRED,
                plan::LEASE_EXPIRED_MESSAGE
            ],
            |row| {
                Ok(RescuedRow {
                    id: row.get(0)?,
                    queue: row.get(1)?,
                    state: row.get(2)?,
                    batch_id: row.get(3)?,
                    tenant: row.get(4)?,
                })
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
    run_now(plan::settle_rescued(tx, rows, now))
}

/// Cancels a batch's scheduled and queued jobs at once.
pub(super) fn cancel_waiting_of_batch(
    conn: &Connection,
    counts: &mut Counts,
    id: BatchId,
    error: &ErrorInfo,
    at: Timestamp,
) -> Result<Vec<Job>, StoreError> {
    cancel_waiting(conn, counts, "batch_id", id.to_string(), error, at)
}

/// Cancels the scheduled and queued jobs whose `column` is `value`: one
/// statement per state they may leave, so that each move is counted.
fn cancel_waiting(
    conn: &Connection,
    counts: &mut Counts,
    column: &str,
    value: String,
    error: &ErrorInfo,
    at: Timestamp,
) -> Result<Vec<Job>, StoreError> {
    let mut cancelled = Vec::new();
    for from in [JobState::Scheduled, JobState::Queued] {
        let jobs = query_jobs(
            conn,
            &format!(
                "UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ?, \
                 error = ? WHERE {column} = ? AND state = ? RETURNING {JOB_COLUMNS}"
            ),
            params![at.as_millis(), to_json(error), value, from.as_str()],
        )?;
        for job in &jobs {
            counts.moved(&job.queue, &job.tenant, from, job.status);
        }
        cancelled.extend(jobs);
    }
    Ok(cancelled)
}

/// A batch with its jobs' ids: `job_ids` when the caller knows them.
pub(super) fn fetch_batch(
    conn: &Connection,
    id: BatchId,
    job_ids: Option<Vec<JobId>>,
) -> Result<Option<Batch>, StoreError> {
    let row = conn
        .prepare_cached(&format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?"))?
        .query_row(params![id.to_string()], BatchRow::from_writer_row)
        .optional()?;
    let Some(row) = row else { return Ok(None) };
    if let Some(job_ids) = job_ids {
        return row.into_batch(job_ids).map(Some);
    }
    let ids = conn
        .prepare_cached("SELECT id FROM jobs WHERE batch_id = ? ORDER BY batch_index")?
        .query_map(params![id.to_string()], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    row.into_batch(parse_ids(&ids)?).map(Some)
}

pub(super) fn promote(
    conn: &Connection,
    counts: &mut Counts,
    now: Timestamp,
) -> Result<Promoted, StoreError> {
    let mut statement = conn.prepare_cached(
        "UPDATE jobs SET state = 'queued' \
         WHERE state = 'scheduled' AND deps_pending = 0 AND run_at <= ? RETURNING queue, tenant",
    )?;
    let promoted = statement
        .query_map(params![now.as_millis()], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut queues = Vec::with_capacity(promoted.len());
    for (queue, tenant) in promoted {
        counts.moved(&queue, &tenant, JobState::Scheduled, JobState::Queued);
        queues.push(queue);
    }
    let next_due: Option<i64> = conn
        .prepare_cached(
            "SELECT min(run_at) FROM jobs WHERE state = 'scheduled' AND deps_pending = 0",
        )?
        .query_row([], |row| row.get(0))?;
    queues.sort();
    queues.dedup();
    Ok(Promoted {
        queues,
        next_due: next_due.map(Timestamp::from_millis),
    })
}

/// The statements of `plan::PRUNE`, in order; how many jobs went.
pub(super) fn prune(
    conn: &Connection,
    finished_before: Timestamp,
    keys_before: Timestamp,
) -> Result<u64, StoreError> {
    let mut jobs = 0;
    for (n, step) in plan::PRUNE.iter().enumerate() {
        let cutoff = step.cutoff.of(finished_before, keys_before);
        let mut statement = conn.prepare_cached(step.sql)?;
        let deleted = if step.chunked {
            statement.execute(params![cutoff.as_millis(), plan::PRUNE_CHUNK])?
        } else {
            statement.execute(params![cutoff.as_millis()])?
        };
        if n == 0 {
            jobs = deleted as u64;
        }
    }
    Ok(jobs)
}

/// Deletes the queue unless jobs of it are unfinished; in the writer, so
/// no admission to it can come between the count and the delete.
pub(super) fn delete_queue(
    conn: &Connection,
    counts: &Counts,
    name: &str,
) -> Result<QueueDeletion, StoreError> {
    let stored: Option<i64> = conn
        .prepare_cached(
            "SELECT (SELECT coalesce(sum(n), 0) FROM queue_counts WHERE queue = ?1 \
             AND state IN ('scheduled', 'queued', 'running')) FROM queues WHERE name = ?1",
        )?
        .query_row(params![name], |row| row.get(0))
        .optional()?;
    let Some(stored) = stored else {
        return Ok(QueueDeletion::NotFound);
    };
    // Admissions of this group commit not yet in `queue_counts`.
    let unfinished = stored
        + counts.pending(name, JobState::Scheduled)
        + counts.pending(name, JobState::Queued)
        + counts.pending(name, JobState::Running);
    if unfinished > 0 {
        return Ok(QueueDeletion::Unfinished(unfinished as u64));
    }
    conn.prepare_cached("DELETE FROM queues WHERE name = ?")?
        .execute(params![name])?;
    Ok(QueueDeletion::Deleted)
}

pub(super) fn upsert_queue(conn: &Connection, config: &QueueConfig) -> Result<bool, StoreError> {
    let exists: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM queues WHERE name = ?")?
        .query_row(params![config.name], |row| row.get(0))
        .optional()?;
    let now = Timestamp::now().as_millis();
    conn.prepare_cached(
        "INSERT INTO queues (name, concurrency, capacity, paused, max_attempts, timeout_ms, \
         backoff_base_ms, backoff_max_ms, created_at, updated_at, rate_limit, rate_limit_key, \
         expires_after_ms, concurrency_min) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency, \
         concurrency_min = excluded.concurrency_min, \
         capacity = excluded.capacity, paused = excluded.paused, \
         max_attempts = excluded.max_attempts, timeout_ms = excluded.timeout_ms, \
         backoff_base_ms = excluded.backoff_base_ms, backoff_max_ms = excluded.backoff_max_ms, \
         updated_at = excluded.updated_at, rate_limit = excluded.rate_limit, \
         rate_limit_key = excluded.rate_limit_key, expires_after_ms = excluded.expires_after_ms",
    )?
    .execute(params![
        config.name,
        i64::from(config.concurrency.max()),
        config.capacity as i64,
        i64::from(config.paused),
        i64::from(config.defaults.max_attempts),
        config.defaults.timeout_ms as i64,
        config.defaults.backoff.base_ms as i64,
        config.defaults.backoff.max_ms as i64,
        now,
        now,
        config.defaults.rate_limit.as_ref().map(|limit| &limit.name),
        config
            .defaults
            .rate_limit
            .as_ref()
            .and_then(|limit| limit.key.as_ref()),
        config.defaults.expires_after_ms.map(|ms| ms as i64),
        config.concurrency.range().map(|range| i64::from(range.min)),
    ])?;
    Ok(exists.is_none())
}
