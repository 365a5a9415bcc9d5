//! Admission in the PostgreSQL store: capacity, unique keys and the
//! idempotency key checked in the submission's own transaction.
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

use super::counts::{self, Counts};
use super::deps::{Ended, settle};
use super::ops::cancel_now;
use super::reads::SELECT_BATCH;
use super::tenants;
use crate::domain::{Batch, BatchId, Job, JobId, NewBatch};
use crate::domain::{NewJob, OnConflict};
use crate::store::plan;
use crate::store::rows::{BatchRow, JOB_COLUMNS, JobRow, to_json};
use crate::store::{
    Effects, StoreError, StoredResponse, Submission, SubmitOutcome, SubmitRejection,
};

/// Admits every job of `submission` or none; the caller rolls back unless
/// the outcome is `Created`.
pub async fn submit(
    conn: &mut PgConnection,
    submission: &Submission,
) -> Result<Result<SubmitOutcome, SubmitRejection>, StoreError> {
    let tenant = submission.tenant.as_str();
    let requested = per_queue(&submission.jobs);
    let names: Vec<String> = requested.keys().map(|name| (*name).to_owned()).collect();

    if let Some(idempotency) = &submission.idempotency {
        let seen: Option<(String, i64, String)> = sqlx::query_as(
            "SELECT request_hash, status, body FROM idempotency_keys WHERE tenant = $1 AND key = $2",
        )
        .bind(tenant)
        .bind(&idempotency.key)
        .fetch_optional(&mut *conn)
        .await?;
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

    // A glance first, without the locks: a full queue refuses here, before
    // any row is written (clients that meet 429 tend to come back at once).
    let (capacities, pending) = glance(conn, &names).await?;
    if let Some(rejection) = overflow(&requested, &capacities, &pending) {
        return Ok(Err(rejection));
    }

    if submission.limit_pending
        && let Some(rejection) =
            tenants::glance_quota(conn, tenant, submission.jobs.len() as u64).await?
    {
        return Ok(Err(rejection));
    }

    let mut counts = Counts::default();
    let mut replaced_running = Vec::new();
    let mut replaced_now: Vec<Job> = Vec::new();
    for job in &submission.jobs {
        let Some(key) = &job.key else { continue };
        let Some(holder) = active_holder(conn, tenant, key).await? else {
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
                match cancel_now(conn, &mut counts, holder.id, &error, job.created_at).await? {
                    Some(cancelled) => replaced_now.push(cancelled),
                    None => replaced_running.push(holder.id),
                }
            }
        }
    }

    let mut jobs = submission.jobs.clone();
    let dependencies = match link_dependencies(conn, tenant, &mut jobs).await? {
        Ok(dependencies) => dependencies,
        Err(rejection) => return Ok(Err(rejection)),
    };
    if let Some(batch) = &submission.batch {
        insert_batch(conn, batch, &jobs).await?;
    }
    insert_jobs(conn, &jobs, &dependencies.pending, None).await?;
    if !dependencies.edges.is_empty() {
        let (from, to): (Vec<String>, Vec<String>) = dependencies
            .edges
            .iter()
            .map(|(dependency, dependent)| (dependency.to_string(), dependent.to_string()))
            .unzip();
        sqlx::query(
            "INSERT INTO job_deps (depends_on_id, job_id) SELECT * FROM unnest($1::text[], $2::text[]) \
             ON CONFLICT DO NOTHING",
        )
        .bind(from)
        .bind(to)
        .execute(&mut *conn)
        .await?;
    }
    // Counted before the cascade below moves any of them on: the cascade
    // counts that move, these count the inserts.
    for job in &jobs {
        counts.add(&job.queue, job.state, 1);
    }

    // Jobs whose dependency already failed are cancelled at once, through the
    // same cascade as when a dependency fails later.
    let mut effects = Effects::default();
    let now = jobs
        .first()
        .map_or_else(crate::domain::Timestamp::now, |job| job.created_at);
    let mut ended: Vec<Ended> = dependencies
        .already_failed
        .iter()
        .map(|&(id, state)| Ended {
            id,
            state,
            batch_id: None,
            dependents: true,
        })
        .collect();
    ended.extend(replaced_now.iter().map(Ended::of));
    settle(conn, &mut counts, &ended, now, &mut effects).await?;
    let jobs = plan::submitted_jobs(jobs, &mut effects, replaced_now, replaced_running);

    let batch = match &submission.batch {
        Some(batch) => Some(Box::new(stored_batch(conn, batch.id, &jobs).await?)),
        None => None,
    };
    if let Some(idempotency) = &submission.idempotency {
        let body = plan::replay_body(batch.as_deref(), &jobs, &submission.redactor);
        let created_at = jobs.first().map_or(0, |job| job.created_at.as_millis());
        // A concurrent submission with the same key that committed first
        // makes this fail with 23505; the rerun replays its response.
        sqlx::query(
            "INSERT INTO idempotency_keys (tenant, key, request_hash, status, body, created_at) \
             VALUES ($1, $2, $3, 202, $4, $5)",
        )
        .bind(tenant)
        .bind(&idempotency.key)
        .bind(&idempotency.request_hash)
        .bind(body)
        .bind(created_at)
        .execute(&mut *conn)
        .await?;
    }
    // The tenant's `max_pending`, under the tenant's row lock (see
    // `tenants.rs`), before the queues' locks; only for a tenant with one.
    if submission.limit_pending {
        let own: Vec<String> = jobs.iter().map(|job| job.id.to_string()).collect();
        let requested = submission.jobs.len() as u64;
        if let Some(rejection) = tenants::check_quota(conn, tenant, &own, requested).await? {
            return Ok(Err(rejection));
        }
    }
    // The capacity check that counts, last (see the module's comment): the
    // queues' row locks are held from here to the commit only.
    let capacities = lock_queues(conn, &names).await?;
    let pending = counts::pending(conn, &names).await?;
    if let Some(rejection) = overflow(&requested, &capacities, &pending) {
        return Ok(Err(rejection));
    }
    counts.flush(conn).await?;
    Ok(Ok(SubmitOutcome::Created {
        jobs,
        batch,
        effects,
    }))
}

/// How many of `jobs` go to each queue, by queue name (sorted).
pub(super) fn per_queue(jobs: &[NewJob]) -> BTreeMap<&str, u64> {
    let mut requested: BTreeMap<&str, u64> = BTreeMap::new();
    for job in jobs {
        *requested.entry(job.queue.as_str()).or_default() += 1;
    }
    requested
}

/// The refusal of the first queue that `requested` jobs would overflow.
fn overflow(
    requested: &BTreeMap<&str, u64>,
    capacities: &HashMap<String, i64>,
    pending: &HashMap<String, i64>,
) -> Option<SubmitRejection> {
    requested
        .iter()
        .find_map(|(queue, count)| capacity_rejection(capacities, pending, queue, *count))
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

/// Counts each job's unsucceeded dependencies (a job with any waits as
/// `scheduled`) and refuses dependencies that don't exist for this tenant.
async fn link_dependencies(
    conn: &mut PgConnection,
    tenant: &str,
    jobs: &mut [NewJob],
) -> Result<Result<plan::Dependencies, SubmitRejection>, StoreError> {
    let own: HashSet<JobId> = jobs.iter().map(|job| job.id).collect();
    let outside: Vec<String> = jobs
        .iter()
        .flat_map(|job| &job.depends_on)
        .filter(|id| !own.contains(id))
        .map(JobId::to_string)
        .collect();
    let found: HashMap<String, (String, String)> = lock_dependencies(conn, &outside)
        .await?
        .into_iter()
        .map(|(id, state, owner)| (id, (state, owner)))
        .collect();
    plan::dependencies(tenant, jobs, |dependency| {
        Ok(found.get(&dependency.to_string()).cloned())
    })
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

async fn insert_batch(
    conn: &mut PgConnection,
    batch: &NewBatch,
    jobs: &[NewJob],
) -> Result<(), StoreError> {
    // Only the ends are counted in the row (see `SELECT_BATCH`).
    sqlx::query(
        "INSERT INTO batches (id, tenant, total, success_threshold, success_required, metadata, \
         callback_url, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(batch.id.to_string())
    .bind(&batch.tenant)
    .bind(jobs.len() as i64)
    .bind(batch.success_threshold)
    .bind(batch.success_required as i64)
    .bind(to_json(&batch.metadata))
    .bind(&batch.callback_url)
    .bind(batch.created_at.as_millis())
    .execute(conn)
    .await?;
    Ok(())
}

/// The batch row as stored now (counts may already have moved), with the
/// ids of `jobs`.
async fn stored_batch(
    conn: &mut PgConnection,
    id: BatchId,
    jobs: &[Job],
) -> Result<Batch, StoreError> {
    let sql = format!("{SELECT_BATCH} WHERE id = $1");
    let row: BatchRow = sqlx::query_as(AssertSqlSafe(sql))
        .bind(id.to_string())
        .fetch_one(conn)
        .await?;
    row.into_batch(jobs.iter().map(|job| job.id).collect())
}

/// Inserts jobs, one array per column unnested into rows (`$1` … `$25`).
const INSERT_JOBS: &str = "INSERT INTO jobs (id, tenant, queue, kind, payload, state, priority, max_attempts, \
         timeout_ms, backoff_base_ms, backoff_max_ms, key, metadata, created_at, run_at, \
         batch_id, batch_index, depends_on, deps_pending, callback_url, has_dependents, \
         concurrency_key, concurrency_limit, traceparent, tracestate) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], \
         $12::text[], $13::text[], $14::bigint[], $15::bigint[], $16::text[], $17::bigint[], \
         $18::text[], $19::bigint[], $20::text[], $21::boolean[], $22::text[], $23::bigint[], \
         $24::text[], $25::text[])";

/// `INSERT_JOBS` on the condition that each queue of `$26` has room for the
/// matching number of `$27` by its counts as committed when the statement
/// starts: the glance of `plain.rs`, without a round trip of its own.
static INSERT_JOBS_IF_ROOM: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{INSERT_JOBS} WHERE NOT EXISTS (SELECT 1 \
             FROM unnest($26::text[], $27::bigint[]) AS r(r_queue, r_n) \
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
        }));
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
async fn glance(
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
