//! Claims on PostgreSQL: queued jobs to `running` under this instance's
//! lease, skipping rows other instances hold, and never more running jobs
//! of a concurrency key than its limit, across every instance.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use super::counts::{COUNT_CONFLICT, COUNT_INTO, Counts, SHARD};
use crate::domain::{Job, JobState, Timestamp};
use crate::store::StoreError;
use crate::store::plan;
use crate::store::rows::{JOB_COLUMNS, JobRow, jobs_from_rows};

/// Candidates read per step of a claim that must pass over jobs whose key
/// is full.
const PAGE: i64 = 500;

/// What a claim sets on each job it takes (`$1` owner, `$2` lease end, `$3` now).
const TAKE: &str = "state = 'running', attempt = attempt + 1, lease_owner = $1, \
    lease_expires_at = $2, started_at = greatest($3, run_at), progress = NULL";

/// Whether `queue` has keyed jobs waiting, which only `claim_keyed` may
/// take. A queue without (the common case) is claimed by `claim_plain`, one
/// statement outside any explicit transaction: one round trip, one commit.
pub async fn has_keyed(pool: &PgPool, queue: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE queue = $1 AND state = 'queued' \
         AND concurrency_key IS NOT NULL)",
    )
    .bind(queue)
    .fetch_one(pool)
    .await?)
}

/// The claim of a queue with no keyed job waiting: one statement, which
/// also takes the claimed jobs out of the queue's count.
pub async fn claim_plain(
    pool: &PgPool,
    queue: &str,
    limit: u32,
    owner: &str,
    lease_until: Timestamp,
    now: Timestamp,
) -> Result<Vec<Job>, StoreError> {
    // SKIP LOCKED: instances claiming from one queue take different jobs
    // and never wait for each other. MATERIALIZED makes the locking
    // subquery run once, so LIMIT bounds what is claimed. `started_at` is
    // never before `run_at`: a job may have become ready (its dependency's
    // success stamped in `run_at`) after `now` was read. Keyed jobs are left
    // to the keyed claim: one committed after `claim` looked for them (this
    // statement has a newer snapshot) would otherwise be taken here without
    // its key's count, and three ran under a limit of two (API test
    // `a_concurrency_limit_holds_across_instances_and_every_keyed_job_succeeds`).
    // The count is written last, as in every transaction (see `counts.rs`).
    let sql = format!(
        "WITH picked AS MATERIALIZED ( \
             SELECT id AS picked_id FROM jobs WHERE queue = $4 AND state = 'queued' \
             AND concurrency_key IS NULL \
             ORDER BY priority DESC, run_at, id LIMIT $5 FOR UPDATE SKIP LOCKED), \
         claimed AS ( \
             UPDATE jobs SET {TAKE} FROM picked WHERE jobs.id = picked.picked_id \
             RETURNING {JOB_COLUMNS}), \
         counted AS ( \
             {COUNT_INTO} SELECT $4, 'queued', {SHARD}, -count(*) FROM claimed HAVING count(*) > 0 \
             {COUNT_CONFLICT}) \
         SELECT * FROM claimed"
    );
    let rows: Vec<JobRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(owner)
        .bind(lease_until.as_millis())
        .bind(now.as_millis())
        .bind(queue)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?;
    claimed_in_order(rows)
}

#[derive(sqlx::FromRow)]
struct Candidate {
    id: String,
    tenant: String,
    concurrency_key: Option<String>,
    concurrency_limit: Option<i64>,
}

/// The claim of a queue with keyed jobs waiting, counted; part of the
/// caller's transaction.
pub async fn claim_keyed_counted(
    conn: &mut PgConnection,
    queue: &str,
    limit: u32,
    owner: &str,
    lease_until: Timestamp,
    now: Timestamp,
) -> Result<Vec<Job>, StoreError> {
    let rows = claim_keyed(conn, queue, limit, owner, lease_until, now).await?;
    let mut counts = Counts::default();
    counts.add(queue, JobState::Queued, -(rows.len() as i64));
    counts.flush(conn).await?;
    claimed_in_order(rows)
}

/// RETURNING has no order: the best job is started first.
fn claimed_in_order(rows: Vec<JobRow>) -> Result<Vec<Job>, StoreError> {
    let mut jobs = jobs_from_rows(rows)?;
    plan::claim_order(&mut jobs);
    Ok(jobs)
}

/// The claim of a queue with keyed jobs waiting: walks the queue in claim
/// order, taking jobs without a key and keyed jobs while their key has
/// room (the job's own limit, counting jobs taken in this claim), passing
/// over the others. Each key's running count is read under a
/// transaction-level advisory lock on the key, so two instances never both
/// fill its last slot; keys are locked in sorted order within each page.
async fn claim_keyed(
    conn: &mut PgConnection,
    queue: &str,
    limit: u32,
    owner: &str,
    lease_until: Timestamp,
    now: Timestamp,
) -> Result<Vec<JobRow>, StoreError> {
    let mut held: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut picked: Vec<String> = Vec::new();
    let mut offset = 0i64;
    while picked.len() < limit as usize {
        let page: Vec<Candidate> = sqlx::query_as(
            "SELECT id, tenant, concurrency_key, concurrency_limit FROM jobs \
             WHERE queue = $1 AND state = 'queued' ORDER BY priority DESC, run_at, id \
             OFFSET $2 LIMIT $3",
        )
        .bind(queue)
        .bind(offset)
        .bind(PAGE)
        .fetch_all(&mut *conn)
        .await?;
        if page.is_empty() {
            break;
        }
        offset += page.len() as i64;
        let new_keys: BTreeSet<(String, String)> = page
            .iter()
            .filter_map(|c| Some((c.tenant.clone(), c.concurrency_key.clone()?)))
            .filter(|key| !held.contains_key(key))
            .collect();
        count_running(conn, new_keys, &mut held).await?;
        for candidate in page {
            let room = match (&candidate.concurrency_key, candidate.concurrency_limit) {
                (Some(key), Some(limit)) => {
                    let running = held.entry((candidate.tenant, key.clone())).or_default();
                    let room = *running < limit;
                    if room {
                        *running += 1;
                    }
                    room
                }
                _ => true,
            };
            if room {
                picked.push(candidate.id);
                if picked.len() >= limit as usize {
                    break;
                }
            }
        }
    }
    if picked.is_empty() {
        return Ok(Vec::new());
    }
    // `state = 'queued'` again: another instance may have taken some since
    // (they are then left out; the next claim looks further).
    let sql = format!(
        "UPDATE jobs SET {TAKE} WHERE id = ANY($4) AND state = 'queued' RETURNING {JOB_COLUMNS}"
    );
    Ok(sqlx::query_as(AssertSqlSafe(sql))
        .bind(owner)
        .bind(lease_until.as_millis())
        .bind(now.as_millis())
        .bind(picked)
        .fetch_all(&mut *conn)
        .await?)
}

/// Locks each `(tenant, key)` (in order) and reads how many of its jobs run.
async fn count_running(
    conn: &mut PgConnection,
    keys: BTreeSet<(String, String)>,
    held: &mut BTreeMap<(String, String), i64>,
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let (tenants, names): (Vec<String>, Vec<String>) = keys.into_iter().unzip();
    // One statement: the locks are taken in the array's (sorted) order.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(t || chr(31) || k, 31)) \
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS keys(t, k, n) ORDER BY n",
    )
    .bind(&tenants)
    .bind(&names)
    .execute(&mut *conn)
    .await?;
    let running: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT keys.t, keys.k, (SELECT count(*) FROM jobs WHERE state = 'running' \
             AND tenant = keys.t AND concurrency_key = keys.k) \
         FROM unnest($1::text[], $2::text[]) AS keys(t, k)",
    )
    .bind(&tenants)
    .bind(&names)
    .fetch_all(&mut *conn)
    .await?;
    for (tenant, key, count) in running {
        held.insert((tenant, key), count);
    }
    Ok(())
}
