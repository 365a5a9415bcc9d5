//! The rules of admitting a submission, written once for both backends
//! (see `transaction.rs`): the `Idempotency-Key` replay, room in each
//! queue, the `on_conflict` ladder of unique keys, the tenant's quota,
//! dependency linking and the cascade from dependencies that already failed.
//!
//! Where transactions run at once (PostgreSQL), the checks made before any
//! write only refuse early (clients that meet 429 tend to come back at
//! once); the ones that decide come last, under the queues' and tenant's
//! locks, held only for the count and the commit.

use std::collections::HashSet;

use super::settle::{Ended, settle};
use super::transaction::{Requested, Transaction};
use crate::domain::{Job, JobId, OnConflict, Timestamp};
use crate::store::{Effects, StoreError, Submission, SubmitOutcome, SubmitRejection};

/// Admits every job of `submission` or none: the caller rolls back unless
/// the outcome is `Created`.
pub async fn admit<T: Transaction>(
    tx: &mut T,
    submission: Submission,
) -> Result<Result<SubmitOutcome, SubmitRejection>, StoreError> {
    let Submission {
        tenant,
        jobs: mut new_jobs,
        batch,
        idempotency,
        redactor,
        limit_pending,
    } = submission;
    if let Some(idempotency) = &idempotency
        && let Some((hash, response)) = tx.seen_request(&tenant, &idempotency.key).await?
    {
        if hash != idempotency.request_hash {
            return Ok(Err(SubmitRejection::IdempotencyMismatch));
        }
        return Ok(Ok(SubmitOutcome::Replayed(response)));
    }

    let mut requested = Requested::new();
    for job in &new_jobs {
        *requested.entry(job.queue.clone()).or_default() += 1;
    }
    if let Some(rejection) = tx.glance_room(&requested).await? {
        return Ok(Err(rejection));
    }

    let mut replaced_running = Vec::new();
    let mut replaced_now: Vec<Job> = Vec::new();
    for job in &new_jobs {
        let Some(key) = &job.key else { continue };
        let Some(holder) = tx.active_holder(&tenant, key).await? else {
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
                let error = super::replaced_by(job.id, job.created_at);
                match tx.cancel_now(holder.id, &error, job.created_at).await? {
                    Some(cancelled) => replaced_now.push(cancelled),
                    None => replaced_running.push(holder.id),
                }
            }
        }
    }

    // Only for a tenant with a `max_pending`: no statement for the others.
    // After the replaced holders were cancelled: they wait no longer.
    if limit_pending
        && let Some(rejection) = tx.glance_quota(&tenant, new_jobs.len() as u64).await?
    {
        return Ok(Err(rejection));
    }

    // Most submissions depend on nothing: they build no set and read nothing.
    let states = if new_jobs.iter().all(|job| job.depends_on.is_empty()) {
        Default::default()
    } else {
        let own: HashSet<JobId> = new_jobs.iter().map(|job| job.id).collect();
        let outside: Vec<JobId> = new_jobs
            .iter()
            .flat_map(|job| &job.depends_on)
            .filter(|id| !own.contains(id))
            .copied()
            .collect();
        tx.dependency_states(&outside).await?
    };
    let dependencies = match super::dependencies(&tenant, &mut new_jobs, |dependency| {
        Ok(states.get(&dependency).cloned())
    })? {
        Ok(dependencies) => dependencies,
        Err(rejection) => return Ok(Err(rejection)),
    };
    if let Some(batch) = &batch {
        tx.insert_batch(batch, &new_jobs).await?;
    }
    tx.insert_jobs(&new_jobs, &dependencies.pending).await?;
    if !dependencies.edges.is_empty() {
        tx.link(&dependencies.edges).await?;
    }

    // Jobs whose dependency already failed are cancelled at once, through the
    // same cascade as when a dependency fails later.
    let mut effects = Effects::default();
    let now = new_jobs
        .first()
        .map_or_else(Timestamp::now, |job| job.created_at);
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
    settle(tx, &ended, now, &mut effects).await?;
    let requested_jobs = new_jobs.len() as u64;
    let jobs = super::submitted_jobs(new_jobs, &mut effects, replaced_now, replaced_running);

    // The batch as stored now: counts may already have moved.
    let batch = match &batch {
        Some(batch) => match tx
            .batch(batch.id, Some(jobs.iter().map(|job| job.id).collect()))
            .await?
        {
            Some(stored) => Some(Box::new(stored)),
            None => {
                return Err(StoreError::Corrupt(format!(
                    "batch {} vanished while being admitted",
                    batch.id
                )));
            }
        },
        None => None,
    };
    if let Some(idempotency) = &idempotency {
        let body = super::replay_body(batch.as_deref(), &jobs, &redactor);
        let at = jobs
            .first()
            .map_or(Timestamp::from_millis(0), |job| job.created_at);
        // A concurrent submission with the same key that committed first
        // makes this fail as a conflict; the rerun replays its response.
        tx.remember_response(
            &tenant,
            &idempotency.key,
            &idempotency.request_hash,
            body,
            at,
        )
        .await?;
    }

    if !T::CHECKS_BEFORE_WRITES_DECIDE {
        // The tenant's lock before the queues', as every transaction takes
        // them; only for a tenant with a `max_pending`.
        if limit_pending {
            let own: Vec<JobId> = jobs.iter().map(|job| job.id).collect();
            if let Some(rejection) = tx.check_quota(&tenant, &own, requested_jobs).await? {
                return Ok(Err(rejection));
            }
        }
        if let Some(rejection) = tx.check_room(&requested).await? {
            return Ok(Err(rejection));
        }
    }
    Ok(Ok(SubmitOutcome::Created {
        jobs,
        batch,
        effects,
    }))
}
