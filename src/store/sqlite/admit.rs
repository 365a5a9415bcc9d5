//! Admission in the SQLite store: the statements `plan::admit` runs in the
//! writer's transaction, in the same savepoint as the insert.

use std::sync::LazyLock;

use rusqlite::{Connection, OptionalExtension, params};

use super::counts::Counts;
use super::rows::{JOB_COLUMNS, JobRow, to_json};
use super::writer::{WriteTx, run_now};
use crate::domain::{BatchCounts, Job, JobState, NewBatch, NewJob, Timestamp};
use crate::store::plan;
use crate::store::{StoreError, Submission, SubmitOutcome, SubmitRejection};

/// Admits every job of `submission` or none (`plan::admit` decides). When
/// that takes more than one write (several jobs, a key to replace, an
/// idempotency key), a savepoint makes it all-or-nothing while the rest of
/// the group commits; a plain single job is one INSERT, atomic by itself,
/// after read-only checks.
pub fn submit(
    tx: &mut WriteTx<'_>,
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
        return run_now(plan::admit(tx, submission));
    }
    tx.conn.prepare_cached("SAVEPOINT submit")?.execute([])?;
    let outcome = run_now(plan::admit(tx, submission));
    if !matches!(outcome, Ok(Ok(_))) {
        tx.conn.prepare_cached("ROLLBACK TO submit")?.execute([])?;
    }
    tx.conn.prepare_cached("RELEASE submit")?.execute([])?;
    outcome
}

pub(super) fn insert_batch(
    conn: &Connection,
    batch: &NewBatch,
    jobs: &[NewJob],
) -> Result<(), StoreError> {
    let mut counts = BatchCounts::default();
    for job in jobs {
        counts.add(job.state);
    }
    conn.prepare_cached(
        "INSERT INTO batches (id, tenant, total, success_threshold, success_required, metadata, \
         callback_url, scheduled, queued, created_at, retry_when_failed_ratio, retry_above, \
         retry_max_times, retry_scope, max_in_flight) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        batch.retry.map(|retry| retry.when_failed_ratio),
        batch
            .retry
            .map(|retry| retry.failures_allowed(jobs.len() as u64) as i64),
        batch.retry.map_or(0, |retry| i64::from(retry.max_times)),
        batch.retry.map(|retry| retry.scope.as_str()),
        batch.max_in_flight.map(i64::from),
    ])?;
    Ok(())
}

/// `None` when `count` more jobs fit in the queue.
pub(super) fn check_capacity(
    conn: &Connection,
    counts: &Counts,
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

/// The columns `insert_jobs` writes, in the order it binds them.
const INSERT_COLUMNS: &str = "id, tenant, queue, kind, payload, state, priority, max_attempts, \
     timeout_ms, backoff_base_ms, backoff_max_ms, key, metadata, created_at, run_at, \
     batch_id, batch_index, depends_on, deps_pending, callback_url, concurrency_key, \
     concurrency_limit, traceparent, tracestate, rate_limit, rate_limit_key, expires_at";
/// Values per row of `INSERT_COLUMNS`.
const INSERT_WIDTH: usize = 27;
/// Rows per multi-row INSERT. Each statement inside a savepoint (a batch's,
/// see `submit`) copies every page it touches into SQLite's statement
/// journal and, when it ends, walks that journal from its start: one
/// statement per job made a batch of 1 000 pay that a thousand times (the
/// walk alone was 12 % of the writer's samples, and batches went 1.5 times
/// faster without it: `docs/benchmarks.md`, 2026-12-08). 64 rows bind
/// 1 728 values, far below SQLite's limit of 32 766.
const INSERT_ROWS: usize = 64;

pub(super) fn insert_jobs(
    conn: &Connection,
    jobs: &[NewJob],
    pending: &[i64],
) -> Result<(), StoreError> {
    for (jobs, pending) in jobs.chunks(INSERT_ROWS).zip(pending.chunks(INSERT_ROWS)) {
        if jobs.len() == INSERT_ROWS {
            let mut insert = conn.prepare_cached(&INSERT_MANY)?;
            for (row, (job, pending)) in jobs.iter().zip(pending).enumerate() {
                bind_job(&mut insert, row * INSERT_WIDTH, job, *pending)?;
            }
            insert.raw_execute()?;
        } else {
            // The last, short chunk: one statement per job, so that the
            // cache holds two statements, not one per chunk length.
            let mut insert = conn.prepare_cached(&INSERT_ONE)?;
            for (job, pending) in jobs.iter().zip(pending) {
                bind_job(&mut insert, 0, job, *pending)?;
                insert.raw_execute()?;
            }
        }
    }
    Ok(())
}

/// The statements' texts, made once (the statement cache is keyed by them).
static INSERT_ONE: LazyLock<String> = LazyLock::new(|| insert_sql(1));
static INSERT_MANY: LazyLock<String> = LazyLock::new(|| insert_sql(INSERT_ROWS));

/// `INSERT INTO jobs` of `rows` rows of placeholders.
fn insert_sql(rows: usize) -> String {
    let row = format!("({})", vec!["?"; INSERT_WIDTH].join(", "));
    format!(
        "INSERT INTO jobs ({INSERT_COLUMNS}) VALUES {}",
        vec![row; rows].join(", ")
    )
}

/// Binds `job`'s values to the placeholders after `offset` (0-based).
fn bind_job(
    insert: &mut rusqlite::CachedStatement<'_>,
    offset: usize,
    job: &NewJob,
    pending: i64,
) -> Result<(), StoreError> {
    let depends_on = (!job.depends_on.is_empty()).then(|| to_json(&job.depends_on));
    let values: [&dyn rusqlite::ToSql; INSERT_WIDTH] = [
        &job.id.to_string(),
        &job.tenant,
        &job.queue,
        &job.kind,
        &to_json(&job.payload),
        &job.state.as_str(),
        &i64::from(job.priority),
        &i64::from(job.max_attempts),
        &(job.timeout_ms as i64),
        &(job.backoff.base_ms as i64),
        &(job.backoff.max_ms as i64),
        &job.key,
        &to_json(&job.metadata),
        &job.created_at.as_millis(),
        &job.run_at.as_millis(),
        &job.batch_id.map(|id| id.to_string()),
        &job.batch_index.map(i64::from),
        &depends_on.as_deref().unwrap_or("[]"),
        &pending,
        &job.callback_url,
        &job.concurrency.as_ref().map(|(key, _)| key),
        &job.concurrency.as_ref().map(|(_, limit)| i64::from(*limit)),
        &job.trace.as_ref().map(|trace| &trace.traceparent),
        &job.trace
            .as_ref()
            .and_then(|trace| trace.tracestate.as_ref()),
        &job.rate_limit.as_ref().map(|limit| &limit.name),
        &job.rate_limit.as_ref().map(|limit| limit.stored_key()),
        &job.expires_at.map(Timestamp::as_millis),
    ];
    for (index, value) in values.iter().enumerate() {
        // Placeholders are numbered from 1.
        insert.raw_bind_parameter(offset + index + 1, value)?;
    }
    Ok(())
}
