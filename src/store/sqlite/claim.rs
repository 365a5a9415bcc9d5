//! Claims on SQLite: the jobs a dispatcher takes from a queue, tenants in
//! turn (`store/fair.rs` decides the rounds), keyed jobs only while their
//! concurrency key has room, limited jobs only while their rate limit's key
//! has budget (`plan/limits.rs` decides), expired jobs never.

use std::collections::HashMap;

use rusqlite::{Connection, params};

use rusqlite::OptionalExtension;

use super::ops::query_jobs;
use super::rows::{JOB_COLUMNS, to_json};
use super::writer::WriteTx;
use crate::domain::{Job, JobId, JobState, Timestamp};
use crate::store::fair;
use crate::store::plan::{self, KeyState, Limiter};
use crate::store::rows::stored_gcra;
use crate::store::{Claimed, Refill, StoreError};

/// What a claim sets on each job it takes.
const CLAIM_SET: &str = "UPDATE jobs SET state = 'running', attempt = attempt + 1, \
    lease_owner = ?, lease_expires_at = ?, started_at = max(?, run_at), progress = NULL";

/// The claim a submission makes of its own job (`submit_and_claim`): the
/// job, when it is its queue's only ready job and so the one any claim
/// would take; nothing when others wait, which the dispatcher's claims of
/// many jobs at once serve better. One count read and one update by
/// primary key, where a claim's probe costs several seeks.
pub fn claim_admitted(
    tx: &mut WriteTx<'_>,
    id: JobId,
    slot: &Refill,
    owner: &str,
) -> Result<Claimed, StoreError> {
    if tx.counts.seen(tx.conn, &slot.queue, JobState::Queued)? != 1 {
        return Ok(Claimed::default());
    }
    let jobs = query_jobs(
        tx.conn,
        &format!(
            "{CLAIM_SET} WHERE id = ? AND queue = ? AND state = 'queued' \
             AND concurrency_key IS NULL AND rate_limit IS NULL RETURNING {JOB_COLUMNS}"
        ),
        params![
            owner,
            slot.lease_until.as_millis(),
            slot.now.as_millis(),
            id.to_string(),
            slot.queue
        ],
    )?;
    count_started(tx, &jobs);
    Ok(Claimed {
        jobs,
        next_eligible_at: None,
    })
}

pub fn claim(
    tx: &mut WriteTx<'_>,
    queue: &str,
    limit: u32,
    owner: &str,
    lease_until: Timestamp,
    now: Timestamp,
) -> Result<Claimed, StoreError> {
    // One probe: whether keyed jobs wait here, and the first and last
    // tenant with ready jobs (two seeks of `jobs_ready_tenant`). INDEXED BY:
    // otherwise SQLite may answer the first by walking the queue's entries
    // in `jobs_ready_tenant`, every ready job per claim.
    // A queue paused in the store gives nothing, as on PostgreSQL (where
    // another instance may have paused it).
    let (conn, turns) = (tx.conn, tx.turns);
    type Probe = (bool, bool, bool, Option<String>, Option<String>);
    let (paused, keyed_waiting, limited_waiting, first, last): Probe = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM queues WHERE name = ?1 AND paused), \
             EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_ready_concurrency_key \
             WHERE queue = ?1 AND state = 'queued' AND concurrency_key IS NOT NULL), \
             EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_ready_rate_limit \
             WHERE queue = ?1 AND state = 'queued' AND rate_limit IS NOT NULL), \
             (SELECT tenant FROM jobs WHERE queue = ?1 AND state = 'queued' \
              ORDER BY tenant, priority DESC, run_at, id LIMIT 1), \
             (SELECT tenant FROM jobs WHERE queue = ?1 AND state = 'queued' \
              ORDER BY tenant DESC, priority, run_at DESC, id DESC LIMIT 1)",
        )?
        .query_row(params![queue], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?;
    let Some(first) = first.filter(|_| !paused) else {
        return Ok(Claimed::default());
    };
    let one_tenant = last.as_deref() == Some(first.as_str());
    // `started_at` is never before `run_at`: `now` was read before the claim
    // reached the writer, and a job may have become ready (its dependency's
    // success stamped in `run_at`) in between.
    let mut limiter = Limiter::new(now);
    let (lease_until, now) = (lease_until.as_millis(), now.as_millis());
    if one_tenant && !keyed_waiting && !limited_waiting {
        // One tenant and no keyed job: one UPDATE, as fast as before
        // tenants and keys existed. `LIMIT CAST(? AS INTEGER)`: with a bare
        // `LIMIT ?` SQLite re-prepares the statement at every execution
        // (measured with its RePrepare counter).
        let mut jobs = query_jobs(
            conn,
            &format!(
                "{CLAIM_SET} WHERE id IN (SELECT id FROM jobs WHERE queue = ? AND tenant = ? \
                 AND state = 'queued' AND (expires_at IS NULL OR expires_at > ?3) \
                 ORDER BY priority DESC, run_at, id \
                 LIMIT CAST(? AS INTEGER)) RETURNING {JOB_COLUMNS}"
            ),
            params![owner, lease_until, now, queue, first, i64::from(limit)],
        )?;
        count_started(tx, &jobs);
        // RETURNING has no order: start the best job first.
        plan::claim_order(&mut jobs);
        return Ok(Claimed {
            jobs,
            next_eligible_at: None,
        });
    }
    let tenants = if one_tenant {
        vec![first]
    } else {
        let last_served = turns.last_served(queue);
        let after = tenants_after(conn, queue, last_served.as_deref().unwrap_or(""))?;
        match last_served {
            Some(_) if after.len() < fair::MAX_TENANTS => {
                fair::rotation(after, tenants_after(conn, queue, "")?)
            }
            _ => after,
        }
    };
    let mut rounds = fair::Rounds::new(tenants, limit);
    while let Some((tenant, at_most)) = rounds.next_read() {
        let walk = Walk {
            queue,
            tenant: &tenant,
            limit: at_most,
            now,
        };
        rounds.found(claimable(conn, &walk, &mut limiter)?);
    }
    let ids = rounds.finish(turns, queue);
    // One UPDATE for all of them (one per job measured 0.7× the drain rate
    // of a single tenant's claims with two tenants).
    let mut jobs = query_jobs(
        conn,
        &format!(
            "{CLAIM_SET} WHERE id IN (SELECT value FROM json_each(?)) AND state = 'queued' \
             RETURNING {JOB_COLUMNS}"
        ),
        params![owner, lease_until, now, to_json(&ids)],
    )?;
    count_started(tx, &jobs);
    // RETURNING has no order: start them in the round-robin's (one
    // tenant's is its claim order).
    if one_tenant {
        plan::claim_order(&mut jobs);
    } else {
        let order: HashMap<&str, usize> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| (id.as_str(), n))
            .collect();
        jobs.sort_by_cached_key(|job| order.get(job.id.to_string().as_str()).copied());
    }
    spend(conn, &limiter, &jobs)?;
    Ok(Claimed {
        jobs,
        next_eligible_at: limiter.next_eligible_at(),
    })
}

/// Moves on the state of each rate-limit key the claimed `jobs` spent.
fn spend(conn: &Connection, limiter: &Limiter, jobs: &[Job]) -> Result<(), StoreError> {
    let spent = limiter.spent(jobs);
    if spent.is_empty() {
        return Ok(());
    }
    let mut write = conn.prepare_cached(
        "INSERT INTO rate_limit_keys (limit_name, key, tat_us) VALUES (?, ?, ?) \
         ON CONFLICT (limit_name, key) DO UPDATE SET tat_us = excluded.tat_us",
    )?;
    for ((name, key), tat_us) in spent {
        write.execute(params![name, key, tat_us])?;
    }
    Ok(())
}

/// Loads a limit and a key into `limiter` the first time a claim meets them.
fn load(conn: &Connection, limiter: &mut Limiter, name: &str, key: &str) -> Result<(), StoreError> {
    if !limiter.knows_limit(name) {
        let gcra = conn
            .prepare_cached("SELECT rate, per_ms, burst FROM rate_limits WHERE name = ?")?
            .query_row(params![name], |row| {
                Ok(stored_gcra(row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()?;
        limiter.load_limit(name, gcra);
    }
    if !limiter.knows_key(name, key) {
        let state = conn
            .prepare_cached(
                "SELECT tat_us, held_until_us FROM rate_limit_keys WHERE limit_name = ? AND key = ?",
            )?
            .query_row(params![name, key], |row| {
                Ok(KeyState {
                    tat_us: row.get(0)?,
                    held_until_us: row.get(1)?,
                })
            })
            .optional()?;
        limiter.load_key(name, key, state);
    }
    Ok(())
}

/// Up to `fair::MAX_TENANTS` tenants with ready jobs in `queue` whose names
/// come after `after`, in order: a skip-scan of `jobs_ready_tenant`, one
/// seek per tenant however many jobs each has.
fn tenants_after(conn: &Connection, queue: &str, after: &str) -> Result<Vec<String>, StoreError> {
    let mut statement = conn.prepare_cached(
        "WITH RECURSIVE ready(tenant) AS ( \
             SELECT (SELECT tenant FROM jobs WHERE queue = ?1 AND state = 'queued' \
                     AND tenant > ?2 ORDER BY tenant, priority DESC, run_at, id LIMIT 1) \
             UNION ALL \
             SELECT (SELECT tenant FROM jobs WHERE queue = ?1 AND state = 'queued' \
                     AND tenant > ready.tenant ORDER BY tenant, priority DESC, run_at, id LIMIT 1) \
             FROM ready WHERE ready.tenant IS NOT NULL) \
         SELECT tenant FROM ready WHERE tenant IS NOT NULL LIMIT ?3",
    )?;
    let tenants = statement
        .query_map(params![queue, after, fair::MAX_TENANTS as i64], |row| {
            row.get(0)
        })?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(tenants)
}

/// One tenant's read of a fair claim.
struct Walk<'a> {
    queue: &'a str,
    tenant: &'a str,
    limit: u32,
    now: i64,
}

/// The ids of the next jobs of `tenant` a claim of `queue` may take, at
/// most `limit`: in claim order (priority desc, run_at, id), the queued,
/// unexpired jobs that have no concurrency key, or whose key (per tenant,
/// across every queue) is held by fewer running jobs than the job's own
/// `concurrency_limit`, jobs taken earlier in this walk included, and
/// whose rate limit (if any) has budget for them. A job whose key is full
/// or out of budget is passed over; the jobs behind it are still taken.
fn claimable(
    conn: &Connection,
    walk: &Walk<'_>,
    limiter: &mut Limiter,
) -> Result<Vec<String>, StoreError> {
    let Walk {
        queue,
        tenant,
        limit,
        now,
    } = *walk;
    let mut held_by_running = conn.prepare_cached(
        "SELECT count(*) FROM jobs WHERE tenant = ? AND concurrency_key = ? \
         AND state = 'running' AND concurrency_key IS NOT NULL",
    )?;
    let mut queued = conn.prepare_cached(
        "SELECT id, concurrency_key, concurrency_limit, rate_limit, rate_limit_key FROM jobs \
         WHERE queue = ? AND tenant = ? AND state = 'queued' \
         AND (expires_at IS NULL OR expires_at > ?) \
         ORDER BY priority DESC, run_at, id",
    )?;
    // Running jobs per key, read once per key and counted up as this walk
    // takes jobs. Passing over a full key's job allocates nothing.
    let mut held: HashMap<String, i64> = HashMap::new();
    let mut ids = Vec::new();
    let mut rows = queued.query(params![queue, tenant, now])?;
    while ids.len() < limit as usize
        && let Some(row) = rows.next()?
    {
        let key = row
            .get_ref(1)?
            .as_str_or_null()
            .map_err(rusqlite::Error::from)?;
        // The concurrency key's room first (read, not yet taken): a job
        // that cannot run for want of a slot must not spend rate budget.
        let counted_key = match key {
            None => None,
            Some(key) => {
                let running = match held.get(key) {
                    Some(running) => *running,
                    None => {
                        let running =
                            held_by_running.query_row(params![tenant, key], |row| row.get(0))?;
                        held.insert(key.to_owned(), running);
                        running
                    }
                };
                let job_limit: i64 = row.get(2)?;
                if running >= job_limit {
                    continue;
                }
                Some(key)
            }
        };
        let id: String = row.get(0)?;
        if let Some(name) = row
            .get_ref(3)?
            .as_str_or_null()
            .map_err(rusqlite::Error::from)?
        {
            let key = row
                .get_ref(4)?
                .as_str_or_null()
                .map_err(rusqlite::Error::from)?
                .unwrap_or_default();
            load(conn, limiter, name, key)?;
            if !limiter.admit(&id, name, key) {
                continue;
            }
        }
        if let Some(key) = counted_key
            && let Some(count) = held.get_mut(key)
        {
            *count += 1;
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Claimed jobs left `queued` for `running`.
fn count_started(tx: &mut WriteTx<'_>, jobs: &[Job]) {
    for job in jobs {
        tx.counts
            .moved(&job.queue, &job.tenant, JobState::Queued, JobState::Running);
    }
}
