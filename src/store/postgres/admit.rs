//! Admission in the PostgreSQL store: the statements `plan::admit` runs
//! (through `tx.rs`) in the submission's own transaction, and the plain
//! path's insert (`plain.rs`).
//!
//! Capacity holds across instances because admission to a queue is
//! serialised on the queue's row (`FOR UPDATE`, taken in name order so that
//! submissions spanning several queues cannot deadlock): the pending count a
//! submitter reads after the lock is granted includes every earlier
//! admission. The lock is taken last, once everything else is written, so
//! that it is held only for the count and the commit (admissions of several
//! instances to one queue take turns on it); a glance at the counts before
//! anything is written refuses a submission to a full queue without writing
//! rows that would be rolled back. Keys and idempotency keys are settled by
//! their unique indexes: a submitter that loses a race fails with 23505 and
//! the store runs it again (`transaction!`), which then sees the winner.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;

use sqlx::{AssertSqlSafe, PgConnection};

use super::counts;
use crate::domain::{Job, JobId, NewBatch, NewJob, Timestamp};
use crate::store::rows::{JOB_COLUMNS, JobRow, to_json};
use crate::store::{StoreError, SubmitRejection};

/// How many of `jobs` go to each queue, by queue name (sorted).
pub(super) fn per_queue(jobs: &[NewJob]) -> BTreeMap<&str, u64> {
    let mut requested: BTreeMap<&str, u64> = BTreeMap::new();
    for job in jobs {
        *requested.entry(job.queue.as_str()).or_default() += 1;
    }
    requested
}

/// Locks the rows of `names` (sorted), returning their capacities; a name
/// without a row is missing from the map.
pub async fn lock_queues(
    conn: &mut PgConnection,
    names: &[String],
) -> Result<HashMap<String, i64>, StoreError> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT name, capacity FROM queues WHERE name = ANY($1) ORDER BY name FOR UPDATE",
    )
    .bind(names)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// `None` when `count` more jobs fit in `queue`.
pub fn capacity_rejection(
    capacities: &HashMap<String, i64>,
    pending: &HashMap<String, i64>,
    queue: &str,
    count: u64,
) -> Option<SubmitRejection> {
    let Some(capacity) = capacities.get(queue) else {
        return Some(SubmitRejection::UnknownQueue(queue.to_owned()));
    };
    let capacity = (*capacity).max(0) as u64;
    let pending = pending.get(queue).copied().unwrap_or(0).max(0) as u64;
    (pending + count > capacity).then(|| SubmitRejection::QueueFull {
        queue: queue.to_owned(),
        capacity,
        pending,
        requested: count,
    })
}

pub async fn active_holder(
    conn: &mut PgConnection,
    tenant: &str,
    key: &str,
) -> Result<Option<Job>, StoreError> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 AND key = $2 \
         AND key IS NOT NULL AND finished_at IS NULL AND NOT cancel_requested"
    );
    let row: Option<JobRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(tenant)
        .bind(key)
        .fetch_optional(conn)
        .await?;
    row.map(Job::try_from).transpose()
}

/// Flags the unfinished jobs of `ids` as depended on, under their row locks
/// (taken in id order), then reads the state and tenant of each of `ids`.
///
/// The lock keeps a dependency from ending before the caller's new edges
/// are committed, and the flag (`jobs.has_dependents`) tells its completion,
/// which waited for the lock, to look for them. The read is a statement of
/// its own so that it sees dependencies that ended while the first one
/// waited as they ended.
pub(super) async fn lock_dependencies(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<(String, String, String)>, StoreError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query(
        "WITH active AS MATERIALIZED ( \
             SELECT id AS active_id FROM jobs WHERE id = ANY($1) AND finished_at IS NULL \
             ORDER BY id FOR NO KEY UPDATE) \
         UPDATE jobs SET has_dependents = true FROM active WHERE jobs.id = active.active_id",
    )
    .bind(ids)
    .execute(&mut *conn)
    .await?;
    Ok(
        sqlx::query_as("SELECT id, state, tenant FROM jobs WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(conn)
            .await?,
    )
}

pub(super) async fn insert_batch(
    conn: &mut PgConnection,
    batch: &NewBatch,
    jobs: &[NewJob],
) -> Result<(), StoreError> {
    // Only the ends are counted in the row (see `SELECT_BATCH`).
    sqlx::query(
        "INSERT INTO batches (id, tenant, total, success_threshold, success_required, metadata, \
         callback_url, created_at, retry_when_failed_ratio, retry_above, retry_max_times, \
         retry_scope, max_in_flight) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(batch.id.to_string())
    .bind(&batch.tenant)
    .bind(jobs.len() as i64)
    .bind(batch.success_threshold)
    .bind(batch.success_required as i64)
    .bind(to_json(&batch.metadata))
    .bind(&batch.callback_url)
    .bind(batch.created_at.as_millis())
    .bind(batch.retry.map(|retry| retry.when_failed_ratio))
    .bind(
        batch
            .retry
            .map(|retry| retry.failures_allowed(jobs.len() as u64) as i64),
    )
    .bind(batch.retry.map_or(0, |retry| i64::from(retry.max_times)))
    .bind(batch.retry.map(|retry| retry.scope.as_str()))
    .bind(batch.max_in_flight.map(i64::from))
    .execute(conn)
    .await?;
    Ok(())
}

/// Inserts jobs, one array per column unnested into rows (`$1` … `$28`).
const INSERT_JOBS: &str = "INSERT INTO jobs (id, tenant, queue, kind, payload, state, priority, max_attempts, \
         timeout_ms, backoff_base_ms, backoff_max_ms, key, metadata, created_at, run_at, \
         batch_id, batch_index, depends_on, deps_pending, callback_url, has_dependents, \
         concurrency_key, concurrency_limit, traceparent, tracestate, rate_limit, rate_limit_key, \
         expires_at) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], \
         $12::text[], $13::text[], $14::bigint[], $15::bigint[], $16::text[], $17::bigint[], \
         $18::text[], $19::bigint[], $20::text[], $21::boolean[], $22::text[], $23::bigint[], \
         $24::text[], $25::text[], $26::text[], $27::text[], $28::bigint[])";

/// `INSERT_JOBS` on the condition that each queue of `$29` has room for the
/// matching number of `$30` by its counts as committed when the statement
/// starts: the glance of `plain.rs`, without a round trip of its own.
static INSERT_JOBS_IF_ROOM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{INSERT_JOBS} WHERE NOT EXISTS (SELECT 1 \
             FROM unnest($29::text[], $30::bigint[]) AS r(r_queue, r_n) \
             LEFT JOIN queues ON queues.name = r_queue \
             WHERE queues.name IS NULL OR r_n + {} > greatest(queues.capacity, 0))",
        counts::pending_of("r_queue")
    )
});

/// Capacity and pending count of the queues named in `$1`, without locks.
static GLANCE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT name, capacity, {} FROM queues WHERE name = ANY($1)",
        counts::pending_of("queues.name")
    )
});

/// Inserts every job in one statement, whatever their number, and returns
/// how many were inserted: all, or with `room` (jobs per queue) none when a
/// queue's counts show no room for them (see `INSERT_JOBS_IF_ROOM`).
pub async fn insert_jobs(
    conn: &mut PgConnection,
    jobs: &[NewJob],
    pending: &[i64],
    room: Option<&BTreeMap<&str, u64>>,
) -> Result<u64, StoreError> {
    // Jobs that others of the same submission wait on.
    let depended: HashSet<JobId> = jobs.iter().flat_map(|job| job.depends_on.clone()).collect();
    let column = |f: &dyn Fn(&NewJob) -> String| jobs.iter().map(f).collect::<Vec<String>>();
    let number = |f: &dyn Fn(&NewJob) -> i64| jobs.iter().map(f).collect::<Vec<i64>>();
    let optional =
        |f: &dyn Fn(&NewJob) -> Option<String>| jobs.iter().map(f).collect::<Vec<Option<String>>>();
    let sql = match room {
        Some(_) => INSERT_JOBS_IF_ROOM.as_str(),
        None => INSERT_JOBS,
    };
    let query = sqlx::query(AssertSqlSafe(sql))
        .bind(column(&|job| job.id.to_string()))
        .bind(column(&|job| job.tenant.clone()))
        .bind(column(&|job| job.queue.clone()))
        .bind(column(&|job| job.kind.clone()))
        .bind(column(&|job| to_json(&job.payload)))
        .bind(column(&|job| job.state.as_str().to_owned()))
        .bind(number(&|job| i64::from(job.priority)))
        .bind(number(&|job| i64::from(job.max_attempts)))
        .bind(number(&|job| job.timeout_ms as i64))
        .bind(number(&|job| job.backoff.base_ms as i64))
        .bind(number(&|job| job.backoff.max_ms as i64))
        .bind(optional(&|job| job.key.clone()))
        .bind(column(&|job| to_json(&job.metadata)))
        .bind(number(&|job| job.created_at.as_millis()))
        .bind(number(&|job| job.run_at.as_millis()))
        .bind(optional(&|job| job.batch_id.map(|id| id.to_string())))
        .bind(
            jobs.iter()
                .map(|job| job.batch_index.map(i64::from))
                .collect::<Vec<Option<i64>>>(),
        )
        .bind(column(&|job| {
            if job.depends_on.is_empty() {
                "[]".to_owned()
            } else {
                to_json(&job.depends_on)
            }
        }))
        .bind(pending.to_vec())
        .bind(optional(&|job| job.callback_url.clone()))
        .bind(
            jobs.iter()
                .map(|job| depended.contains(&job.id))
                .collect::<Vec<bool>>(),
        )
        .bind(optional(&|job| {
            job.concurrency.as_ref().map(|(key, _)| key.clone())
        }))
        .bind(
            jobs.iter()
                .map(|job| job.concurrency.as_ref().map(|(_, limit)| i64::from(*limit)))
                .collect::<Vec<Option<i64>>>(),
        )
        .bind(optional(&|job| {
            job.trace.as_ref().map(|trace| trace.traceparent.clone())
        }))
        .bind(optional(&|job| {
            job.trace
                .as_ref()
                .and_then(|trace| trace.tracestate.clone())
        }))
        .bind(optional(&|job| {
            job.rate_limit.as_ref().map(|limit| limit.name.clone())
        }))
        .bind(optional(&|job| {
            job.rate_limit
                .as_ref()
                .map(|limit| limit.stored_key().to_owned())
        }))
        .bind(
            jobs.iter()
                .map(|job| job.expires_at.map(Timestamp::as_millis))
                .collect::<Vec<Option<i64>>>(),
        );
    let query = match room {
        Some(room) => query
            .bind(
                room.keys()
                    .map(|queue| (*queue).to_owned())
                    .collect::<Vec<_>>(),
            )
            .bind(room.values().map(|&n| n as i64).collect::<Vec<_>>()),
        None => query,
    };
    Ok(query.execute(conn).await?.rows_affected())
}

/// The capacity and pending count of each of `queues` as committed now,
/// without their locks: enough to refuse (the queue was full at this
/// moment), not to admit.
pub(super) async fn glance(
    conn: &mut PgConnection,
    queues: &[String],
) -> Result<(HashMap<String, i64>, HashMap<String, i64>), StoreError> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(AssertSqlSafe(GLANCE.as_str()))
        .bind(queues)
        .fetch_all(conn)
        .await?;
    let capacities = rows
        .iter()
        .map(|(name, capacity, _)| (name.clone(), *capacity));
    let pending = rows
        .iter()
        .map(|(name, _, pending)| (name.clone(), *pending));
    Ok((capacities.collect(), pending.collect()))
}
