//! The write operations of the SQLite store, each applied inside the writer's
//! open transaction on its own connection.

use rusqlite::{Connection, OptionalExtension, params};

use super::admit::{active_holder, check_capacity};
use super::counts::NewCounts;
use super::rows::{JOB_COLUMNS, JobRow, to_json};
use super::writer::Op;
use crate::domain::{ErrorInfo, Job, JobId, JobState, QueueConfig, Timestamp};
use crate::store::{
    AttemptOutcome, CancelOutcome, Completion, CompletionResult, Promoted, Rescued, RetryOutcome,
    StoreError, SubmitOutcome, SubmitRejection,
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

pub fn apply(conn: &Connection, counts: &mut NewCounts, op: Op) -> Result<Done, StoreError> {
    Ok(match op {
        Op::Submit(submission) => Done::Submit(super::admit::submit(conn, counts, submission)?),
        Op::Claim {
            queue,
            limit,
            owner,
            lease_until,
            now,
        } => Done::Jobs(claim(conn, &queue, limit, &owner, lease_until, now)?),
        Op::Complete(completion) => Done::Completion(complete(conn, &completion)?),
        Op::Progress {
            id,
            attempt,
            progress,
        } => {
            conn.prepare_cached(
                "UPDATE jobs SET progress = ? WHERE id = ? AND attempt = ? AND state = 'running'",
            )?
            .execute(params![
                to_json(&progress),
                id.to_string(),
                i64::from(attempt)
            ])?;
            Done::Unit
        }
        Op::Cancel { tenant, id, at } => Done::Cancel(cancel(conn, &tenant, id, at)?),
        Op::Retry { tenant, id, at } => Done::Retry(retry(conn, counts, &tenant, id, at)?),
        Op::Renew { owner, until } => Done::Ids(renew(conn, &owner, until)?),
        Op::Rescue { now, not_owner } => Done::Rescued(rescue(conn, now, not_owner)?),
        Op::Promote { now } => Done::Promoted(promote(conn, now)?),
        Op::Prune {
            finished_before,
            keys_before,
        } => Done::Count(prune(conn, finished_before, keys_before)?),
        Op::UpsertQueue(config) => Done::Created(upsert_queue(conn, &config)?),
    })
}

fn query_jobs(
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

fn fetch_job(conn: &Connection, id: JobId) -> Result<Option<Job>, StoreError> {
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
    id: JobId,
    error: &ErrorInfo,
    at: Timestamp,
) -> Result<Option<Job>, StoreError> {
    let cancelled = query_job(
        conn,
        &format!(
            "UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ?, error = ? \
             WHERE id = ? AND (state = 'scheduled' OR state = 'queued') RETURNING {JOB_COLUMNS}"
        ),
        params![at.as_millis(), to_json(error), id.to_string()],
    )?;
    if cancelled.is_none() {
        conn.prepare_cached(
            "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'",
        )?
        .execute(params![id.to_string()])?;
    }
    Ok(cancelled)
}

fn claim(
    conn: &Connection,
    queue: &str,
    limit: u32,
    owner: &str,
    lease_until: Timestamp,
    now: Timestamp,
) -> Result<Vec<Job>, StoreError> {
    // `LIMIT CAST(? AS INTEGER)`: with a bare `LIMIT ?` SQLite re-prepares
    // the statement at every execution (measured with its RePrepare counter).
    let mut jobs = query_jobs(
        conn,
        &format!(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_owner = ?, \
             lease_expires_at = ?, started_at = ?, progress = NULL \
             WHERE id IN (SELECT id FROM jobs WHERE queue = ? AND state = 'queued' \
                          ORDER BY priority DESC, run_at, id LIMIT CAST(? AS INTEGER)) \
             RETURNING {JOB_COLUMNS}"
        ),
        params![
            owner,
            lease_until.as_millis(),
            now.as_millis(),
            queue,
            i64::from(limit)
        ],
    )?;
    // RETURNING has no order: start the best job first.
    jobs.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.run_at.cmp(&b.run_at))
            .then(a.id.cmp(&b.id))
    });
    Ok(jobs)
}

/// Stores an attempt's outcome, fenced by `(id, attempt, lease_owner, state =
/// running)`: when the job moved on (its lease was taken over), nothing
/// changes and the result is `Fenced`.
fn complete(conn: &Connection, completion: &Completion) -> Result<CompletionResult, StoreError> {
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
                "UPDATE jobs SET state = 'succeeded', result = ?, finished_at = ?, {UNLEASE} \
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
    Ok(job.map_or(CompletionResult::Fenced, |job| {
        CompletionResult::Applied(Box::new(job))
    }))
}

fn cancel(
    conn: &Connection,
    tenant: &str,
    id: JobId,
    at: Timestamp,
) -> Result<CancelOutcome, StoreError> {
    let Some(job) = fetch_job(conn, id)?.filter(|job| job.tenant == tenant) else {
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
    if let Some(job) = cancel_now(conn, id, &error, at)? {
        return Ok(CancelOutcome::Cancelled(job));
    }
    Ok(fetch_job(conn, id)?.map_or(CancelOutcome::NotFound, CancelOutcome::Requested))
}

fn retry(
    conn: &Connection,
    counts: &NewCounts,
    tenant: &str,
    id: JobId,
    at: Timestamp,
) -> Result<RetryOutcome, StoreError> {
    let Some(job) = fetch_job(conn, id)?.filter(|job| job.tenant == tenant) else {
        return Ok(RetryOutcome::NotFound);
    };
    if !matches!(job.status, JobState::Failed | JobState::Cancelled) {
        return Ok(RetryOutcome::NotRetryable(job));
    }
    if let Some(rejection) = check_capacity(conn, counts, &job.queue, 1)? {
        return Ok(RetryOutcome::Rejected(rejection));
    }
    if let Some(key) = &job.key
        && let Some(holder) = active_holder(conn, tenant, key)?
    {
        return Ok(RetryOutcome::Rejected(SubmitRejection::KeyConflict {
            key: key.clone(),
            holder: holder.id,
        }));
    }
    let retried = query_job(
        conn,
        &format!(
            "UPDATE jobs SET state = 'queued', attempt = 0, run_at = ?, result = NULL, error = NULL, \
             errors = '[]', progress = NULL, cancel_requested = 0, started_at = NULL, \
             finished_at = NULL WHERE id = ? RETURNING {JOB_COLUMNS}"
        ),
        params![at.as_millis(), id.to_string()],
    )?;
    Ok(retried.map_or(RetryOutcome::NotFound, RetryOutcome::Retried))
}

fn renew(conn: &Connection, owner: &str, until: Timestamp) -> Result<Vec<JobId>, StoreError> {
    let mut statement = conn.prepare_cached(
        "UPDATE jobs SET lease_expires_at = ? WHERE state = 'running' AND lease_owner = ? \
         RETURNING id, cancel_requested",
    )?;
    let renewed = statement
        .query_map(params![until.as_millis(), owner], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(renewed
        .into_iter()
        .filter(|(_, cancel_requested)| *cancel_requested != 0)
        .filter_map(|(id, _)| id.parse().ok())
        .collect())
}

fn rescue(
    conn: &Connection,
    now: Timestamp,
    not_owner: Option<String>,
) -> Result<Vec<Rescued>, StoreError> {
    let mut statement = conn.prepare_cached(
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
    )?;
    let rows = statement
        .query_map(
            params![now.as_millis(), now.to_rfc3339(), not_owner],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            },
        )?
        .collect::<Result<Vec<_>, _>>()?;
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

fn promote(conn: &Connection, now: Timestamp) -> Result<Promoted, StoreError> {
    let mut statement = conn.prepare_cached(
        "UPDATE jobs SET state = 'queued' WHERE state = 'scheduled' AND run_at <= ? RETURNING queue",
    )?;
    let mut queues = statement
        .query_map(params![now.as_millis()], |row| row.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    let next_due: Option<i64> = conn
        .prepare_cached("SELECT min(run_at) FROM jobs WHERE state = 'scheduled'")?
        .query_row([], |row| row.get(0))?;
    queues.sort();
    queues.dedup();
    Ok(Promoted {
        queues,
        next_due: next_due.map(Timestamp::from_millis),
    })
}

/// Rows deleted per call, so one prune never holds the writer for long.
const PRUNE_CHUNK: i64 = 5_000;

fn prune(
    conn: &Connection,
    finished_before: Timestamp,
    keys_before: Timestamp,
) -> Result<u64, StoreError> {
    let jobs = conn
        .prepare_cached(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs \
             WHERE finished_at IS NOT NULL AND finished_at < ? LIMIT CAST(? AS INTEGER))",
        )?
        .execute(params![finished_before.as_millis(), PRUNE_CHUNK])?;
    conn.prepare_cached("DELETE FROM idempotency_keys WHERE created_at < ?")?
        .execute(params![keys_before.as_millis()])?;
    Ok(jobs as u64)
}

fn upsert_queue(conn: &Connection, config: &QueueConfig) -> Result<bool, StoreError> {
    let exists: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM queues WHERE name = ?")?
        .query_row(params![config.name], |row| row.get(0))
        .optional()?;
    let now = Timestamp::now().as_millis();
    conn.prepare_cached(
        "INSERT INTO queues (name, concurrency, capacity, paused, max_attempts, timeout_ms, \
         backoff_base_ms, backoff_max_ms, created_at, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency, \
         capacity = excluded.capacity, paused = excluded.paused, \
         max_attempts = excluded.max_attempts, timeout_ms = excluded.timeout_ms, \
         backoff_base_ms = excluded.backoff_base_ms, backoff_max_ms = excluded.backoff_max_ms, \
         updated_at = excluded.updated_at",
    )?
    .execute(params![
        config.name,
        i64::from(config.concurrency),
        config.capacity as i64,
        i64::from(config.paused),
        i64::from(config.defaults.max_attempts),
        config.defaults.timeout_ms as i64,
        config.defaults.backoff.base_ms as i64,
        config.defaults.backoff.max_ms as i64,
        now,
        now,
    ])?;
    Ok(exists.is_none())
}
