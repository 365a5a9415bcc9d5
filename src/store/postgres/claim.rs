//! Claims on PostgreSQL: queued jobs to `running` under this instance's
//! lease, skipping rows other instances hold, never more running jobs of a
//! concurrency key than its limit and never more starts of a rate limit's
//! key than its budget, across every instance; expired jobs never.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use sqlx::{AssertSqlSafe, PgConnection, PgPool};

use super::counts::{
    COUNT_CONFLICT, COUNT_INTO, Counts, SHARD, TENANT_COUNT_CONFLICT, TENANT_COUNT_INTO,
};
use crate::domain::{Gcra, Job, JobState, Timestamp};
use crate::store::fair::{self, Turns};
use crate::store::plan::{self, KeyState, LimitKey, Limiter};
use crate::store::rows::{JOB_COLUMNS, JobRow, jobs_from_rows, stored_gcra};
use crate::store::{Claimed, StoreError};

/// Candidates read per step of a claim that must pass over jobs whose key
/// is full.
const PAGE: i64 = 500;

/// What a claim sets on each job it takes (`$1` owner, `$2` lease end, `$3` now).
const TAKE: &str = "state = 'running', attempt = attempt + 1, lease_owner = $1, \
    lease_expires_at = $2, started_at = greatest($3, run_at), progress = NULL";

/// What a claim reads of a queue first: whether keyed jobs wait there,
/// which only the walk of `claim_fair_counted` may take, and the first and
/// last tenant with ready jobs (two seeks of `jobs_ready_tenant`). A queue
/// of one tenant without keyed jobs (the common case) is claimed by
/// `claim_plain`, one statement outside any explicit transaction: one round
/// trip, one commit.
#[derive(sqlx::FromRow)]
pub struct Probe {
    /// The queue is paused in the store: another instance may have paused
    /// it a moment ago, before its word reached this one.
    pub paused: bool,
    pub keyed: bool,
    /// Jobs held to a rate limit wait here: only the walk may take them.
    pub limited: bool,
    pub first: Option<String>,
    pub last: Option<String>,
}

impl Probe {
    /// The one tenant with ready jobs, when there is exactly one.
    pub fn one_tenant(&self) -> Option<&str> {
        match (&self.first, &self.last) {
            (Some(first), Some(last)) if first == last => Some(first),
            _ => None,
        }
    }
}

pub async fn probe(pool: &PgPool, queue: &str) -> Result<Probe, StoreError> {
    // Ordered by the whole of `jobs_ready_tenant`, not the tenant alone:
    // ordered by tenant only, the planner preferred a partial index of
    // every queue's waiting jobs by tenant (dropped since, see migration
    // 0016) and filtered it by queue, which walked other queues' jobs (seen
    // with EXPLAIN on 60 000 jobs). The same holds for `tenants_after`.
    Ok(sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM queues WHERE name = $1 AND paused) AS paused, \
         EXISTS (SELECT 1 FROM jobs WHERE queue = $1 AND state = 'queued' \
             AND concurrency_key IS NOT NULL) AS keyed, \
         EXISTS (SELECT 1 FROM jobs WHERE queue = $1 AND state = 'queued' \
             AND rate_limit IS NOT NULL) AS limited, \
         (SELECT tenant FROM jobs WHERE queue = $1 AND state = 'queued' \
             ORDER BY tenant, priority DESC, run_at, id LIMIT 1) AS first, \
         (SELECT tenant FROM jobs WHERE queue = $1 AND state = 'queued' \
             ORDER BY tenant DESC, priority, run_at DESC, id DESC LIMIT 1) AS last",
    )
    .bind(queue)
    .fetch_one(pool)
    .await?)
}

/// The claim of a queue whose ready jobs are all `tenant`'s, none keyed:
/// one statement, which also takes the claimed jobs out of the queue's
/// count.
pub async fn claim_plain(
    pool: &PgPool,
    queue: &str,
    tenant: &str,
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
    // to the keyed walk: one committed after the probe (this statement has
    // a newer snapshot) would otherwise be taken here without its key's
    // count, and three ran under a limit of two (API test
    // `a_concurrency_limit_holds_across_instances_and_every_keyed_job_succeeds`);
    // limited jobs likewise, and expired ones are never taken.
    // Another tenant's jobs admitted since the probe wait for the next
    // claim, which sees two tenants. The counts are written last, as in
    // every transaction, the queue's before the tenant's (see `counts.rs`).
    let sql = format!(
        "WITH picked AS MATERIALIZED ( \
             SELECT id AS picked_id FROM jobs WHERE queue = $4 AND tenant = $6 \
             AND state = 'queued' AND concurrency_key IS NULL AND rate_limit IS NULL \
             AND (expires_at IS NULL OR expires_at > $3) \
             ORDER BY priority DESC, run_at, id LIMIT $5 FOR UPDATE SKIP LOCKED), \
         claimed AS ( \
             UPDATE jobs SET {TAKE} FROM picked WHERE jobs.id = picked.picked_id \
             RETURNING {JOB_COLUMNS}), \
         counted AS ( \
             {COUNT_INTO} SELECT $4, 'queued', {SHARD}, -count(*) FROM claimed HAVING count(*) > 0 \
             {COUNT_CONFLICT} RETURNING n), \
         tenant_counted AS ( \
             {TENANT_COUNT_INTO} SELECT $6, {SHARD}, -count(*) FROM claimed HAVING count(*) > 0 \
             AND (SELECT count(*) FROM counted) >= 0 {TENANT_COUNT_CONFLICT}) \
         SELECT * FROM claimed"
    );
    let rows: Vec<JobRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(owner)
        .bind(lease_until.as_millis())
        .bind(now.as_millis())
        .bind(queue)
        .bind(i64::from(limit))
        .bind(tenant)
        .fetch_all(pool)
        .await?;
    let mut jobs = jobs_from_rows(rows)?;
    // RETURNING has no order: the best job is started first.
    plan::claim_order(&mut jobs);
    Ok(jobs)
}

#[derive(sqlx::FromRow)]
struct Candidate {
    id: String,
    concurrency_key: Option<String>,
    concurrency_limit: Option<i64>,
    rate_limit: Option<String>,
    rate_limit_key: Option<String>,
}

impl Candidate {
    /// The job's rate limit and key ('' for none), borrowed.
    fn limit_key(&self) -> Option<(&str, &str)> {
        let name = self.rate_limit.as_deref()?;
        Some((name, self.rate_limit_key.as_deref().unwrap_or_default()))
    }
}

/// Who and what a claim is for.
pub struct Claimant<'a> {
    pub owner: &'a str,
    pub lease_until: Timestamp,
    pub now: Timestamp,
}

/// The claim of a queue with several tenants' ready jobs or keyed jobs
/// waiting, counted; part of the caller's transaction. Tenants are served
/// round-robin from the one after `turns`' last, each tenant's jobs in
/// claim order with its keys counted (`store/fair.rs`).
pub async fn claim_fair_counted(
    conn: &mut PgConnection,
    turns: &Turns,
    queue: &str,
    probe: &Probe,
    limit: u32,
    claimant: &Claimant<'_>,
) -> Result<Claimed, StoreError> {
    let tenants = match (probe.one_tenant(), &probe.first) {
        (_, None) => return Ok(Claimed::default()),
        (Some(tenant), _) => vec![tenant.to_owned()],
        (None, Some(_)) => {
            let last_served = turns.last_served(queue);
            let after = tenants_after(conn, queue, last_served.as_deref().unwrap_or("")).await?;
            match last_served {
                Some(_) if after.len() < fair::MAX_TENANTS => {
                    fair::rotation(after, tenants_after(conn, queue, "").await?)
                }
                _ => after,
            }
        }
    };
    let mut limiter = Limiter::new(claimant.now);
    let mut rounds = fair::Rounds::new(tenants, limit);
    while let Some((tenant, at_most)) = rounds.next_read() {
        let walk = Walk {
            queue,
            tenant: &tenant,
            limit: at_most,
            now: claimant.now,
            walk: probe.keyed || probe.limited,
        };
        rounds.found(claimable(conn, &walk, &mut limiter).await?);
    }
    let picked = rounds.finish(turns, queue);
    if picked.is_empty() {
        return Ok(Claimed {
            jobs: Vec::new(),
            next_eligible_at: limiter.next_eligible_at(),
        });
    }
    // `state = 'queued'` again: another instance may have taken some since
    // (they are then left out; the next claim looks further).
    let sql = format!(
        "UPDATE jobs SET {TAKE} WHERE id = ANY($4) AND state = 'queued' RETURNING {JOB_COLUMNS}"
    );
    let rows: Vec<JobRow> = sqlx::query_as(AssertSqlSafe(sql))
        .bind(claimant.owner)
        .bind(claimant.lease_until.as_millis())
        .bind(claimant.now.as_millis())
        .bind(&picked)
        .fetch_all(&mut *conn)
        .await?;
    let mut counts = Counts::default();
    for row in &rows {
        counts.add(queue, &row.tenant, JobState::Queued, -1);
    }
    counts.flush(conn).await?;
    // RETURNING has no order: start them in the round-robin's.
    let order: HashMap<&str, usize> = picked
        .iter()
        .enumerate()
        .map(|(n, id)| (id.as_str(), n))
        .collect();
    let mut jobs = jobs_from_rows(rows)?;
    jobs.sort_by_key(|job| order.get(job.id.to_string().as_str()).copied());
    spend(conn, &limiter, &jobs).await?;
    Ok(Claimed {
        jobs,
        next_eligible_at: limiter.next_eligible_at(),
    })
}

/// Moves on the state of each rate-limit key the claimed `jobs` spent,
/// still under the keys' advisory locks.
async fn spend(conn: &mut PgConnection, limiter: &Limiter, jobs: &[Job]) -> Result<(), StoreError> {
    let spent = limiter.spent(jobs);
    if spent.is_empty() {
        return Ok(());
    }
    let (keys, tats): (Vec<LimitKey>, Vec<i64>) = spent.into_iter().unzip();
    let (names, keys): (Vec<String>, Vec<String>) = keys.into_iter().unzip();
    sqlx::query(
        "INSERT INTO rate_limit_keys (limit_name, key, tat_us) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) \
         ON CONFLICT (limit_name, key) DO UPDATE SET tat_us = excluded.tat_us",
    )
    .bind(names)
    .bind(keys)
    .bind(tats)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Locks the rate-limit keys of a page that `limiter` has not met yet (in
/// sorted order, so two claims never wait on each other in a cycle within
/// a page), then loads them and their limits. A lock held by another
/// claim's transaction is waited for: its spending must be read.
async fn lock_and_load(
    conn: &mut PgConnection,
    limiter: &mut Limiter,
    page: &[Candidate],
) -> Result<(), StoreError> {
    let new_keys: BTreeSet<LimitKey> = page
        .iter()
        .filter_map(Candidate::limit_key)
        .filter(|(name, key)| !limiter.knows_key(name, key))
        .map(|(name, key)| (name.to_owned(), key.to_owned()))
        .collect();
    if new_keys.is_empty() {
        return Ok(());
    }
    let (names, keys): (Vec<String>, Vec<String>) = new_keys.into_iter().unzip();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended( \
             'rate' || chr(31) || n || chr(31) || k, 37)) \
         FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS keys(n, k, i) ORDER BY i",
    )
    .bind(&names)
    .bind(&keys)
    .execute(&mut *conn)
    .await?;
    let unknown: BTreeSet<&String> = names.iter().filter(|n| !limiter.knows_limit(n)).collect();
    if !unknown.is_empty() {
        let unknown: Vec<&String> = unknown.into_iter().collect();
        let found: Vec<(String, i64, i64, i64)> = sqlx::query_as(
            "SELECT name, rate, per_ms, burst FROM rate_limits WHERE name = ANY($1)",
        )
        .bind(&unknown)
        .fetch_all(&mut *conn)
        .await?;
        let found: HashMap<String, Gcra> = found
            .into_iter()
            .map(|(name, rate, per_ms, burst)| (name, stored_gcra(rate, per_ms, burst)))
            .collect();
        for name in unknown {
            limiter.load_limit(name, found.get(name).copied());
        }
    }
    let mut states: HashMap<LimitKey, KeyState> = super::limits::read_keys(conn, &names, &keys)
        .await?
        .into_iter()
        .collect();
    for key in names.into_iter().zip(keys) {
        let state = states.remove(&key);
        limiter.load_key(&key.0, &key.1, state);
    }
    Ok(())
}

/// Up to `fair::MAX_TENANTS` tenants with ready jobs in `queue` whose names
/// come after `after`, in the database's order: a skip-scan of
/// `jobs_ready_tenant`, one seek per tenant however many jobs each has.
async fn tenants_after(
    conn: &mut PgConnection,
    queue: &str,
    after: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "WITH RECURSIVE ready(tenant) AS ( \
             SELECT (SELECT tenant FROM jobs WHERE queue = $1 AND state = 'queued' \
                     AND tenant > $2 ORDER BY tenant, priority DESC, run_at, id LIMIT 1) \
             UNION ALL \
             SELECT (SELECT tenant FROM jobs WHERE queue = $1 AND state = 'queued' \
                     AND tenant > ready.tenant ORDER BY tenant, priority DESC, run_at, id LIMIT 1) \
             FROM ready WHERE ready.tenant IS NOT NULL) \
         SELECT tenant FROM ready WHERE tenant IS NOT NULL LIMIT $3",
    )
    .bind(queue)
    .bind(after)
    .bind(fair::MAX_TENANTS as i64)
    .fetch_all(&mut *conn)
    .await?)
}

/// One tenant's read of a fair claim.
struct Walk<'a> {
    queue: &'a str,
    tenant: &'a str,
    limit: u32,
    now: Timestamp,
    /// Keyed or limited jobs wait in the queue: walk and count.
    walk: bool,
}

/// The ids of the next jobs of `tenant` a claim of `queue` may take, at
/// most `limit`, in claim order, never an expired one. Without keyed or
/// limited jobs in the queue, the first ones no other claim holds (locked
/// until this claim commits). With them, a walk taking jobs without a key
/// and keyed jobs while their key has room (the job's own limit, counting
/// jobs taken in this walk) and their rate limit's key has budget,
/// passing over the others. Each key's running count and each rate key's
/// state are read under a transaction-level advisory lock on the key, so
/// two instances never both fill its last slot or spend its last start;
/// keys are locked in sorted order within each page.
async fn claimable(
    conn: &mut PgConnection,
    walk: &Walk<'_>,
    limiter: &mut Limiter,
) -> Result<Vec<String>, StoreError> {
    let Walk {
        queue,
        tenant,
        limit,
        now,
        walk,
    } = *walk;
    if !walk {
        return Ok(sqlx::query_scalar(
            "SELECT id FROM jobs WHERE queue = $1 AND tenant = $2 AND state = 'queued' \
             AND (expires_at IS NULL OR expires_at > $4) \
             ORDER BY priority DESC, run_at, id LIMIT $3 FOR UPDATE SKIP LOCKED",
        )
        .bind(queue)
        .bind(tenant)
        .bind(i64::from(limit))
        .bind(now.as_millis())
        .fetch_all(&mut *conn)
        .await?);
    }
    let mut held: BTreeMap<String, i64> = BTreeMap::new();
    let mut picked: Vec<String> = Vec::new();
    let mut offset = 0i64;
    while picked.len() < limit as usize {
        let page: Vec<Candidate> = sqlx::query_as(
            "SELECT id, concurrency_key, concurrency_limit, rate_limit, rate_limit_key FROM jobs \
             WHERE queue = $1 AND tenant = $2 AND state = 'queued' \
             AND (expires_at IS NULL OR expires_at > $5) \
             ORDER BY priority DESC, run_at, id OFFSET $3 LIMIT $4",
        )
        .bind(queue)
        .bind(tenant)
        .bind(offset)
        .bind(PAGE)
        .bind(now.as_millis())
        .fetch_all(&mut *conn)
        .await?;
        if page.is_empty() {
            break;
        }
        offset += page.len() as i64;
        let new_keys: BTreeSet<String> = page
            .iter()
            .filter_map(|c| c.concurrency_key.clone())
            .filter(|key| !held.contains_key(key))
            .collect();
        count_running(conn, tenant, new_keys, &mut held).await?;
        lock_and_load(conn, limiter, &page).await?;
        for candidate in page {
            // The concurrency key's room first: a job that cannot run for
            // want of a slot must not spend rate budget.
            let room = match (&candidate.concurrency_key, candidate.concurrency_limit) {
                (Some(key), Some(limit)) => held.get(key).copied().unwrap_or_default() < limit,
                _ => true,
            };
            let room = room
                && candidate.rate_limit.as_deref().is_none_or(|name| {
                    let key = candidate.rate_limit_key.as_deref().unwrap_or_default();
                    limiter.admit(&candidate.id, name, key)
                });
            if room {
                if let Some(key) = &candidate.concurrency_key {
                    *held.entry(key.clone()).or_default() += 1;
                }
                picked.push(candidate.id);
                if picked.len() >= limit as usize {
                    break;
                }
            }
        }
    }
    Ok(picked)
}

/// Locks each of `tenant`'s `keys` (in order) and reads how many of its
/// jobs run.
async fn count_running(
    conn: &mut PgConnection,
    tenant: &str,
    keys: BTreeSet<String>,
    held: &mut BTreeMap<String, i64>,
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = keys.into_iter().collect();
    // One statement: the locks are taken in the array's (sorted) order.
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(31) || k, 31)) \
         FROM unnest($2::text[]) WITH ORDINALITY AS keys(k, n) ORDER BY n",
    )
    .bind(tenant)
    .bind(&names)
    .execute(&mut *conn)
    .await?;
    let running: Vec<(String, i64)> = sqlx::query_as(
        "SELECT keys.k, (SELECT count(*) FROM jobs WHERE state = 'running' \
             AND tenant = $1 AND concurrency_key = keys.k) \
         FROM unnest($2::text[]) AS keys(k)",
    )
    .bind(tenant)
    .bind(&names)
    .fetch_all(&mut *conn)
    .await?;
    held.extend(running);
    Ok(())
}
