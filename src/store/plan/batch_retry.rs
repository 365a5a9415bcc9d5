//! Re-running a batch, by hand (`POST /v1/batches/{id}/retry`) or by its
//! retry policy when its last job ends, written once for both backends.
//!
//! A re-run reopens the jobs of its scope as a job retry does (new attempt
//! series, dependents waiting again on dependencies that re-run) and the
//! batch with them: `running`, `finished_at` cleared, `retries` counted.
//! Reopened jobs lose their `batch_seq`, and the batch's `finish_seq` only
//! grows, so each re-run result comes at a new place in the results
//! stream: a reader holding a cursor sees it once, and no old one twice.

use std::collections::{HashMap, HashSet};

use super::transaction::{Requested, Transaction};
use crate::domain::{BatchId, BatchRetryScope, IdempotencyKey, Job, JobId, JobState, Timestamp};
use crate::store::rows::to_json;
use crate::store::{BatchRetryOutcome, Effects, StoreError, SubmitRejection};

/// Who asks for a re-run.
#[derive(Clone, Copy, Debug)]
pub enum Rerun<'a> {
    /// A client, for a finished batch.
    ByHand {
        scope: BatchRetryScope,
        idempotency: Option<&'a IdempotencyKey>,
    },
    /// The batch's policy, for a batch whose jobs all ended while the
    /// policy held it open.
    ByPolicy,
}

/// Re-runs batch `id` of `tenant` at `at`, or says why not. The caller
/// rolls back unless the outcome is `Retried`.
pub async fn retry_batch<T: Transaction>(
    tx: &mut T,
    tenant: &str,
    id: BatchId,
    rerun: Rerun<'_>,
    at: Timestamp,
) -> Result<BatchRetryOutcome, StoreError> {
    if let Rerun::ByHand {
        idempotency: Some(idempotency),
        ..
    } = rerun
        && let Some((hash, response)) = tx.seen_request(tenant, &idempotency.key).await?
    {
        if hash != idempotency.request_hash {
            return Ok(BatchRetryOutcome::Rejected(
                SubmitRejection::IdempotencyMismatch,
            ));
        }
        return Ok(BatchRetryOutcome::Replayed(response));
    }
    // By hand, a batch that has not finished is refused before any lock:
    // its jobs may be ending meanwhile, and a completion holds its job's
    // row, then the batch's, then (re-running it by policy) the others'.
    if let Rerun::ByHand { .. } = rerun
        && tx.batch_finished(id).await? != Some(true)
    {
        match tx.batch(id, None).await? {
            Some(batch) if batch.tenant != tenant => return Ok(BatchRetryOutcome::NotFound),
            None => return Ok(BatchRetryOutcome::NotFound),
            Some(batch) if batch.finished_at.is_none() => {
                return Ok(BatchRetryOutcome::Running(Box::new(batch)));
            }
            // It finished meanwhile: re-run it.
            Some(_) => {}
        }
    }
    // The jobs' rows before the batch's, the order completions lock them in.
    let jobs = tx.batch_jobs(id).await?;
    let job_ids: Vec<JobId> = jobs.iter().map(|job| job.id).collect();
    let Some(batch) = tx
        .batch(id, Some(job_ids.clone()))
        .await?
        .filter(|batch| batch.tenant == tenant)
    else {
        return Ok(BatchRetryOutcome::NotFound);
    };
    let scope = match rerun {
        Rerun::ByHand { scope, .. } => {
            if batch.finished_at.is_none() {
                return Ok(BatchRetryOutcome::Running(Box::new(batch)));
            }
            scope
        }
        Rerun::ByPolicy => batch.retry.map(|retry| retry.scope).unwrap_or_default(),
    };
    let rerun_jobs: Vec<&Job> = jobs
        .iter()
        .filter(|job| {
            scope == BatchRetryScope::All
                || matches!(job.status, JobState::Failed | JobState::Cancelled)
        })
        .collect();
    if rerun_jobs.is_empty() || rerun_jobs.iter().any(|job| !job.status.is_terminal()) {
        return Ok(BatchRetryOutcome::NothingToRetry(Box::new(batch)));
    }
    let rerun_ids: HashSet<JobId> = rerun_jobs.iter().map(|job| job.id).collect();

    // Each job waits again for its dependencies that re-run (or that are
    // unfinished elsewhere); one outside the re-run that failed for good
    // must be retried first, as for a job retry.
    let mut outside: Vec<JobId> = rerun_jobs
        .iter()
        .flat_map(|job| job.depends_on.iter().copied())
        .filter(|dependency| !rerun_ids.contains(dependency))
        .collect();
    outside.sort();
    outside.dedup();
    let states = tx.dependency_states(&outside).await?;
    let mut pending: HashMap<JobId, Vec<JobId>> = HashMap::new();
    for job in &rerun_jobs {
        let mut waits_on = Vec::new();
        for dependency in &job.depends_on {
            if rerun_ids.contains(dependency) {
                waits_on.push(*dependency);
                continue;
            }
            let state = states
                .get(dependency)
                .map(|(state, _)| state.parse::<JobState>());
            match state {
                Some(Ok(JobState::Succeeded)) => {}
                Some(Ok(state)) if !state.is_terminal() => waits_on.push(*dependency),
                _ => {
                    return Ok(BatchRetryOutcome::DependencyFailed {
                        job: Box::new((*job).clone()),
                        dependency: *dependency,
                    });
                }
            }
        }
        pending.insert(job.id, waits_on);
    }

    // Admitted again as a submission of these jobs would be: the tenant's
    // quota before the queues' room (the order admissions lock them in),
    // then unique keys.
    if let Some(rejection) = tx.check_quota(tenant, &[], rerun_jobs.len() as u64).await? {
        return Ok(BatchRetryOutcome::Rejected(rejection));
    }
    let mut requested = Requested::new();
    for job in &rerun_jobs {
        *requested.entry(job.queue.clone()).or_default() += 1;
    }
    if let Some(rejection) = tx.check_room(&requested).await? {
        return Ok(BatchRetryOutcome::Rejected(rejection));
    }
    for job in &rerun_jobs {
        if let Some(key) = &job.key
            && let Some(holder) = tx.active_holder(tenant, key).await?
        {
            return Ok(BatchRetryOutcome::Rejected(SubmitRejection::KeyConflict {
                key: key.clone(),
                holder: holder.id,
            }));
        }
    }

    let mut effects = Effects::default();
    let mut reopened = Vec::with_capacity(rerun_jobs.len());
    let mut edges = Vec::new();
    for job in &rerun_jobs {
        let waits_on = pending.remove(&job.id).unwrap_or_default();
        let state = if waits_on.is_empty() {
            JobState::Queued
        } else {
            JobState::Scheduled
        };
        let Some(job) = tx
            .reopen(job.id, job.status, state, at, waits_on.len())
            .await?
        else {
            return Err(StoreError::Corrupt(format!(
                "job {} of batch {id} vanished while it was re-run",
                job.id
            )));
        };
        edges.extend(waits_on.into_iter().map(|dependency| (dependency, job.id)));
        if job.status == JobState::Queued && !effects.ready_queues.contains(&job.queue) {
            effects.ready_queues.push(job.queue.clone());
        }
        reopened.push(job);
    }
    if !edges.is_empty() {
        tx.link(&edges).await?;
    }
    tx.reopen_batch(id).await?;
    let Some(batch) = tx.batch(id, Some(job_ids)).await? else {
        return Err(StoreError::Corrupt(format!(
            "batch {id} vanished while it was re-run"
        )));
    };
    if let Rerun::ByHand {
        idempotency: Some(idempotency),
        ..
    } = rerun
    {
        // A concurrent re-run with the same key that committed first makes
        // this fail as a conflict; the rerun of the request replays it.
        tx.remember_response(
            tenant,
            &idempotency.key,
            &idempotency.request_hash,
            to_json(&batch),
            at,
        )
        .await?;
    }
    Ok(BatchRetryOutcome::Retried {
        batch: Box::new(batch),
        jobs: reopened,
        effects,
    })
}

/// Reports the batches of `batches` (sorted, each once) the write finished,
/// and re-runs those whose retry policy held them open: a re-run that
/// cannot be made (no room, quota, a key held, a dependency failed) ends
/// the batch instead, as its last job's end would have.
pub async fn settle_batches<T: Transaction>(
    tx: &mut T,
    batches: &[BatchId],
    at: Timestamp,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    let ended = tx.ended_batches(batches).await?;
    effects.finished_batches.extend(ended.finished);
    for held in ended.held {
        match retry_batch(tx, &held.tenant, held.id, Rerun::ByPolicy, at).await? {
            BatchRetryOutcome::Retried {
                batch,
                jobs,
                effects: rerun,
            } => {
                for queue in rerun.ready_queues {
                    if !effects.ready_queues.contains(&queue) {
                        effects.ready_queues.push(queue);
                    }
                }
                effects.reopened.extend(jobs);
                effects.retried_batches.push(*batch);
            }
            refused => {
                tracing::info!(
                    batch_id = %held.id,
                    reason = refusal(&refused),
                    "a batch's automatic re-run could not be made; the batch ends as it is"
                );
                tx.finish_batch(held.id, at).await?;
                effects.finished_batches.push(held);
            }
        }
    }
    Ok(())
}

/// Why an automatic re-run was not made, for the log.
fn refusal(outcome: &BatchRetryOutcome) -> &'static str {
    match outcome {
        BatchRetryOutcome::Rejected(SubmitRejection::QueueFull { .. }) => "queue_full",
        BatchRetryOutcome::Rejected(SubmitRejection::TenantQuota { .. }) => "tenant_quota",
        BatchRetryOutcome::Rejected(SubmitRejection::KeyConflict { .. }) => "key_conflict",
        BatchRetryOutcome::Rejected(SubmitRejection::UnknownQueue(_)) => "unknown_queue",
        BatchRetryOutcome::Rejected(_) => "refused",
        BatchRetryOutcome::DependencyFailed { .. } => "dependency_failed",
        _ => "nothing_to_retry",
    }
}
