//! Admission in the SQLite store: capacity, unique keys and idempotency
//! checked in the writer's transaction, and plain submissions of a group
//! commit inserted together.

use std::collections::{BTreeMap, HashMap};

use sqlx::{AssertSqlSafe, Connection, QueryBuilder, Sqlite, SqliteConnection};

use super::ops::cancel_now;
use super::rows::{JOB_COLUMNS, JobRow, to_json};
use crate::domain::{ErrorInfo, Job, NewJob, OnConflict};
use crate::store::{StoreError, StoredResponse, Submission, SubmitOutcome, SubmitRejection};

pub type SubmitResult = Result<Result<SubmitOutcome, SubmitRejection>, StoreError>;

/// Capacity and waiting jobs of a queue, as this group commit sees them.
struct Room {
    capacity: u64,
    pending: u64,
}

/// Admits the submissions of one group commit, in order.
///
/// Submissions without a key or an idempotency key (the common case) are
/// checked against capacity in memory and inserted together, a multi-row
/// INSERT per hundred jobs; the others take the full path, one savepoint
/// each, after the plain ones before them were inserted.
pub async fn submit_many(
    conn: &mut SqliteConnection,
    submissions: Vec<Submission>,
) -> Vec<SubmitResult> {
    let mut results: Vec<Option<SubmitResult>> = Vec::with_capacity(submissions.len());
    let mut rooms: HashMap<String, Option<Room>> = HashMap::new();
    let mut plain: Vec<(usize, Vec<NewJob>)> = Vec::new();
    for (index, submission) in submissions.into_iter().enumerate() {
        results.push(None);
        let needs_checks =
            submission.idempotency.is_some() || submission.jobs.iter().any(|job| job.key.is_some());
        if needs_checks {
            insert_plain(conn, &mut plain, &mut results, &mut rooms).await;
            rooms.clear();
            results[index] = Some(submit(conn, submission).await);
            continue;
        }
        match reserve(conn, &mut rooms, &submission.jobs).await {
            Ok(None) => plain.push((index, submission.jobs)),
            Ok(Some(rejection)) => results[index] = Some(Ok(Err(rejection))),
            Err(error) => results[index] = Some(Err(error)),
        }
    }
    insert_plain(conn, &mut plain, &mut results, &mut rooms).await;
    results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| Err(StoreError::Corrupt("a submission got no result".into())))
        })
        .collect()
}

/// Takes room for `jobs` in their queues, or says why there is none.
async fn reserve(
    conn: &mut SqliteConnection,
    rooms: &mut HashMap<String, Option<Room>>,
    jobs: &[NewJob],
) -> Result<Option<SubmitRejection>, StoreError> {
    let mut requested: BTreeMap<&str, u64> = BTreeMap::new();
    for job in jobs {
        *requested.entry(job.queue.as_str()).or_default() += 1;
    }
    for queue in requested.keys() {
        if !rooms.contains_key(*queue) {
            let room = load_room(conn, queue).await?;
            rooms.insert((*queue).to_owned(), room);
        }
    }
    for (queue, count) in &requested {
        match rooms.get(*queue) {
            Some(Some(room)) if room.pending + count <= room.capacity => {}
            Some(Some(room)) => {
                return Ok(Some(SubmitRejection::QueueFull {
                    queue: (*queue).to_owned(),
                    capacity: room.capacity,
                    pending: room.pending,
                    requested: *count,
                }));
            }
            _ => return Ok(Some(SubmitRejection::UnknownQueue((*queue).to_owned()))),
        }
    }
    for (queue, count) in requested {
        if let Some(Some(room)) = rooms.get_mut(queue) {
            room.pending += count;
        }
    }
    Ok(None)
}

async fn load_room(conn: &mut SqliteConnection, queue: &str) -> Result<Option<Room>, StoreError> {
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT capacity, (SELECT coalesce(sum(n), 0) FROM queue_counts \
         WHERE queue = ?1 AND state IN ('scheduled', 'queued')) FROM queues WHERE name = ?1",
    )
    .bind(queue)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(capacity, pending)| Room {
        capacity: capacity.max(0) as u64,
        pending: pending.max(0) as u64,
    }))
}

/// Inserts `jobs` entirely or not at all (a savepoint around the chunks).
async fn insert_atomically(conn: &mut SqliteConnection, jobs: &[NewJob]) -> Result<(), StoreError> {
    let mut savepoint = conn.begin().await?;
    match insert_jobs(&mut savepoint, jobs).await {
        Ok(()) => Ok(savepoint.commit().await?),
        Err(error) => {
            let _ = savepoint.rollback().await;
            Err(error)
        }
    }
}

async fn insert_plain(
    conn: &mut SqliteConnection,
    plain: &mut Vec<(usize, Vec<NewJob>)>,
    results: &mut [Option<SubmitResult>],
    rooms: &mut HashMap<String, Option<Room>>,
) {
    if plain.is_empty() {
        return;
    }
    let all: Vec<NewJob> = plain
        .iter()
        .flat_map(|(_, jobs)| jobs.iter().cloned())
        .collect();
    match insert_atomically(conn, &all).await {
        Ok(()) => {
            for (index, jobs) in plain.drain(..) {
                let jobs = jobs.into_iter().map(job_from_new).collect();
                results[index] = Some(Ok(Ok(SubmitOutcome::Created {
                    jobs,
                    replaced: Vec::new(),
                })));
            }
        }
        Err(error) => {
            let message = error.to_string();
            tracing::error!(error = %message, "inserting submitted jobs failed");
            for (index, _) in plain.drain(..) {
                results[index] = Some(Err(StoreError::Unavailable(message.clone())));
            }
            rooms.clear();
        }
    }
}

pub(super) async fn submit(
    conn: &mut SqliteConnection,
    submission: Submission,
) -> Result<Result<SubmitOutcome, SubmitRejection>, StoreError> {
    // A savepoint, so that a refused submission leaves nothing behind while
    // the other commands of the batch still commit.
    let mut savepoint = conn.begin().await?;
    match submit_in(&mut savepoint, submission).await {
        Ok(Ok(outcome)) => {
            savepoint.commit().await?;
            Ok(Ok(outcome))
        }
        Ok(Err(rejection)) => {
            savepoint.rollback().await?;
            Ok(Err(rejection))
        }
        Err(error) => {
            let _ = savepoint.rollback().await;
            Err(error)
        }
    }
}

async fn submit_in(
    conn: &mut SqliteConnection,
    submission: Submission,
) -> Result<Result<SubmitOutcome, SubmitRejection>, StoreError> {
    let tenant = submission.tenant;
    if let Some(idempotency) = &submission.idempotency {
        let seen: Option<(String, i64, String)> = sqlx::query_as(
            "SELECT request_hash, status, body FROM idempotency_keys WHERE tenant = ? AND key = ?",
        )
        .bind(&tenant)
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

    let mut requested: BTreeMap<&str, u64> = BTreeMap::new();
    for job in &submission.jobs {
        *requested.entry(job.queue.as_str()).or_default() += 1;
    }
    for (queue, count) in &requested {
        if let Some(rejection) = check_capacity(conn, queue, *count).await? {
            return Ok(Err(rejection));
        }
    }

    let mut replaced = Vec::new();
    for job in &submission.jobs {
        let Some(key) = &job.key else { continue };
        let Some(holder) = active_holder(conn, &tenant, key).await? else {
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
                match cancel_now(conn, holder.id, &error, job.created_at).await? {
                    Some(_) => {}
                    None => replaced.push(holder.id),
                }
            }
        }
    }

    insert_jobs(conn, &submission.jobs).await?;
    let jobs: Vec<Job> = submission.jobs.into_iter().map(job_from_new).collect();

    if let (Some(idempotency), [job]) = (&submission.idempotency, jobs.as_slice()) {
        sqlx::query(
            "INSERT INTO idempotency_keys (tenant, key, request_hash, status, body, created_at) \
             VALUES (?, ?, ?, 202, ?, ?)",
        )
        .bind(&tenant)
        .bind(&idempotency.key)
        .bind(&idempotency.request_hash)
        .bind(to_json(job))
        .bind(job.created_at.as_millis())
        .execute(&mut *conn)
        .await?;
    }
    Ok(Ok(SubmitOutcome::Created { jobs, replaced }))
}

/// `None` when `count` more jobs fit in the queue.
pub(super) async fn check_capacity(
    conn: &mut SqliteConnection,
    queue: &str,
    count: u64,
) -> Result<Option<SubmitRejection>, StoreError> {
    let capacity: Option<i64> = sqlx::query_scalar("SELECT capacity FROM queues WHERE name = ?")
        .bind(queue)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(capacity) = capacity else {
        return Ok(Some(SubmitRejection::UnknownQueue(queue.to_owned())));
    };
    let pending: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(n), 0) FROM queue_counts WHERE queue = ? AND state IN ('scheduled', 'queued')",
    )
    .bind(queue)
    .fetch_one(&mut *conn)
    .await?;
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

pub(super) async fn active_holder(
    conn: &mut SqliteConnection,
    tenant: &str,
    key: &str,
) -> Result<Option<Job>, StoreError> {
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = ? AND key = ? \
         AND state IN ('scheduled', 'queued', 'running') AND cancel_requested = 0"
    );
    let row: Option<JobRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(tenant)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(Job::try_from).transpose()
}

/// Rows per INSERT statement: 100 rows × 17 columns stays far below
/// SQLite's limit of 32 766 bound parameters.
const INSERT_CHUNK: usize = 100;

async fn insert_jobs(conn: &mut SqliteConnection, jobs: &[NewJob]) -> Result<(), StoreError> {
    for chunk in jobs.chunks(INSERT_CHUNK) {
        let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO jobs (id, tenant, queue, kind, payload, state, priority, max_attempts, \
             timeout_ms, backoff_base_ms, backoff_max_ms, key, metadata, created_at, run_at) ",
        );
        insert.push_values(chunk, |mut row, job| {
            row.push_bind(job.id.to_string())
                .push_bind(job.tenant.clone())
                .push_bind(job.queue.clone())
                .push_bind(job.kind.clone())
                .push_bind(to_json(&job.payload))
                .push_bind(job.state.as_str())
                .push_bind(i64::from(job.priority))
                .push_bind(i64::from(job.max_attempts))
                .push_bind(job.timeout_ms as i64)
                .push_bind(job.backoff.base_ms as i64)
                .push_bind(job.backoff.max_ms as i64)
                .push_bind(job.key.clone())
                .push_bind(to_json(&job.metadata))
                .push_bind(job.created_at.as_millis())
                .push_bind(job.run_at.as_millis());
        });
        insert.build().execute(&mut *conn).await?;
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
