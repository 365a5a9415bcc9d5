//! Claims on SQLite: the jobs a dispatcher takes from a queue, tenants in
//! turn (`store/fair.rs` decides the rounds), keyed jobs only while their
//! concurrency key has room.

use std::collections::HashMap;

use rusqlite::{Connection, params};

use super::ops::query_jobs;
use super::rows::{JOB_COLUMNS, to_json};
use crate::domain::{Job, Timestamp};
use crate::store::StoreError;
use crate::store::fair::{self, Turns};
use crate::store::plan;

/// What a claim sets on each job it takes.
const CLAIM_SET: &str = "UPDATE jobs SET state = 'running', attempt = attempt + 1, \
    lease_owner = ?, lease_expires_at = ?, started_at = max(?, run_at), progress = NULL";

pub fn claim(
    conn: &Connection,
    turns: &Turns,
    queue: &str,
    limit: u32,
    owner: &str,
    lease_until: Timestamp,
    now: Timestamp,
) -> Result<Vec<Job>, StoreError> {
    // One probe: whether keyed jobs wait here, and the first and last
    // tenant with ready jobs (two seeks of `jobs_ready_tenant`). INDEXED BY:
    // otherwise SQLite may answer the first by walking the queue's entries
    // in `jobs_ready_tenant`, every ready job per claim.
    // A queue paused in the store gives nothing, as on PostgreSQL (where
    // another instance may have paused it).
    let (paused, keyed_waiting, first, last): (bool, bool, Option<String>, Option<String>) = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM queues WHERE name = ?1 AND paused), \
             EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_ready_concurrency_key \
             WHERE queue = ?1 AND state = 'queued' AND concurrency_key IS NOT NULL), \
             (SELECT tenant FROM jobs WHERE queue = ?1 AND state = 'queued' \
              ORDER BY tenant, priority DESC, run_at, id LIMIT 1), \
             (SELECT tenant FROM jobs WHERE queue = ?1 AND state = 'queued' \
              ORDER BY tenant DESC, priority, run_at DESC, id DESC LIMIT 1)",
        )?
        .query_row(params![queue], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?;
    let Some(first) = first.filter(|_| !paused) else {
        return Ok(Vec::new());
    };
    let one_tenant = last.as_deref() == Some(first.as_str());
    // `started_at` is never before `run_at`: `now` was read before the claim
    // reached the writer, and a job may have become ready (its dependency's
    // success stamped in `run_at`) in between.
    let (lease_until, now) = (lease_until.as_millis(), now.as_millis());
    if one_tenant && !keyed_waiting {
        // One tenant and no keyed job: one UPDATE, as fast as before
        // tenants and keys existed. `LIMIT CAST(? AS INTEGER)`: with a bare
        // `LIMIT ?` SQLite re-prepares the statement at every execution
        // (measured with its RePrepare counter).
        let mut jobs = query_jobs(
            conn,
            &format!(
                "{CLAIM_SET} WHERE id IN (SELECT id FROM jobs WHERE queue = ? AND tenant = ? \
                 AND state = 'queued' ORDER BY priority DESC, run_at, id \
                 LIMIT CAST(? AS INTEGER)) RETURNING {JOB_COLUMNS}"
            ),
            params![owner, lease_until, now, queue, first, i64::from(limit)],
        )?;
        // RETURNING has no order: start the best job first.
        plan::claim_order(&mut jobs);
        return Ok(jobs);
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
        rounds.found(claimable(conn, queue, &tenant, at_most)?);
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
    // RETURNING has no order: start them in the round-robin's.
    let order: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| (id.as_str(), n))
        .collect();
    jobs.sort_by_cached_key(|job| order.get(job.id.to_string().as_str()).copied());
    Ok(jobs)
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

/// The ids of the next jobs of `tenant` a claim of `queue` may take, at
/// most `limit`: in claim order (priority desc, run_at, id), the queued
/// jobs that have no concurrency key, or whose key (per tenant, across
/// every queue) is held by fewer running jobs than the job's own
/// `concurrency_limit`, jobs taken earlier in this walk included. A job
/// whose key is full is passed over; the jobs behind it are still taken.
fn claimable(
    conn: &Connection,
    queue: &str,
    tenant: &str,
    limit: u32,
) -> Result<Vec<String>, StoreError> {
    let mut held_by_running = conn.prepare_cached(
        "SELECT count(*) FROM jobs WHERE tenant = ? AND concurrency_key = ? \
         AND state = 'running' AND concurrency_key IS NOT NULL",
    )?;
    let mut queued = conn.prepare_cached(
        "SELECT id, concurrency_key, concurrency_limit FROM jobs \
         WHERE queue = ? AND tenant = ? AND state = 'queued' \
         ORDER BY priority DESC, run_at, id",
    )?;
    // Running jobs per key, read once per key and counted up as this walk
    // takes jobs. Passing over a full key's job allocates nothing.
    let mut held: HashMap<String, i64> = HashMap::new();
    let mut ids = Vec::new();
    let mut rows = queued.query(params![queue, tenant])?;
    while ids.len() < limit as usize
        && let Some(row) = rows.next()?
    {
        let Some(key) = row
            .get_ref(1)?
            .as_str_or_null()
            .map_err(rusqlite::Error::from)?
        else {
            ids.push(row.get(0)?);
            continue;
        };
        let job_limit: i64 = row.get(2)?;
        let known = held.get(key).copied();
        let running = match known {
            Some(running) => running,
            None => held_by_running.query_row(params![tenant, key], |row| row.get(0))?,
        };
        let take = running < job_limit;
        if take || known.is_none() {
            held.insert(key.to_owned(), running + i64::from(take));
        }
        if take {
            ids.push(row.get(0)?);
        }
    }
    Ok(ids)
}
