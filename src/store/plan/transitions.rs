//! The rules of cancelling a job, retrying one and cancelling a batch,
//! written once for both backends (see `transaction.rs`).

use super::settle::{Ended, settle};
use super::transaction::{Requested, Transaction};
use crate::domain::{BatchId, JobId, JobState, Timestamp};
use crate::store::{
    BatchCancelOutcome, CancelOutcome, Effects, RetryOutcome, StoreError, SubmitRejection,
};

/// `POST /v1/jobs/{id}/cancel`: a waiting job is cancelled at once (its
/// dependents with it), a running one is asked to stop; a finished one is
/// left as it is.
pub async fn cancel_job<T: Transaction>(
    tx: &mut T,
    tenant: &str,
    id: JobId,
    at: Timestamp,
) -> Result<CancelOutcome, StoreError> {
    let Some(job) = tx.job(id, false).await?.filter(|job| job.tenant == tenant) else {
        return Ok(CancelOutcome::NotFound);
    };
    if job.status.is_terminal() {
        return Ok(CancelOutcome::AlreadyFinished(job));
    }
    let error = super::cancelled_on_request(false, at);
    if let Some(job) = tx.cancel_now(id, &error, at).await? {
        let mut effects = Effects::default();
        settle(tx, &[Ended::of(&job)], at, &mut effects).await?;
        return Ok(CancelOutcome::Cancelled(job, effects));
    }
    // Running (or it ended meanwhile: its runner finished first).
    Ok(match tx.job(id, false).await? {
        Some(job) if job.status.is_terminal() => CancelOutcome::AlreadyFinished(job),
        Some(job) => CancelOutcome::Requested(job),
        None => CancelOutcome::NotFound,
    })
}

/// `POST /v1/jobs/{id}/retry`: a failed or cancelled job runs again as a
/// new series of attempts, admitted again as a submission is (quota, room,
/// its key) and waiting again for dependencies that are themselves retried.
pub async fn retry_job<T: Transaction>(
    tx: &mut T,
    tenant: &str,
    id: JobId,
    at: Timestamp,
) -> Result<RetryOutcome, StoreError> {
    let Some(job) = tx.job(id, true).await?.filter(|job| job.tenant == tenant) else {
        return Ok(RetryOutcome::NotFound);
    };
    if !matches!(job.status, JobState::Failed | JobState::Cancelled) {
        return Ok(RetryOutcome::NotRetryable(job));
    }
    // A finished batch's results are final.
    if let Some(batch) = job.batch_id
        && tx.batch_finished(batch).await?.unwrap_or(true)
    {
        return Ok(RetryOutcome::BatchFinished(job));
    }
    // A dependent waits again for dependencies that are themselves retried
    // (active); one that failed for good must be retried first.
    let states = tx.dependency_states(&job.depends_on).await?;
    let mut pending = Vec::new();
    for dependency in &job.depends_on {
        let state = states
            .get(dependency)
            .map(|(state, _)| state.parse::<JobState>());
        match state {
            Some(Ok(JobState::Succeeded)) => {}
            Some(Ok(state)) if !state.is_terminal() => pending.push(*dependency),
            _ => {
                return Ok(RetryOutcome::DependencyFailed {
                    dependency: *dependency,
                    job,
                });
            }
        }
    }
    // The tenant's quota before the queue's room: where they are row locks,
    // admissions take them in that order too, so the two never wait for
    // each other in opposite orders.
    if let Some(rejection) = tx.check_quota(tenant, &[], 1).await? {
        return Ok(RetryOutcome::Rejected(rejection));
    }
    let requested = Requested::from([(job.queue.clone(), 1)]);
    if let Some(rejection) = tx.check_room(&requested).await? {
        return Ok(RetryOutcome::Rejected(rejection));
    }
    if let Some(key) = &job.key
        && let Some(holder) = tx.active_holder(tenant, key).await?
    {
        return Ok(RetryOutcome::Rejected(SubmitRejection::KeyConflict {
            key: key.clone(),
            holder: holder.id,
        }));
    }
    let state = if pending.is_empty() {
        JobState::Queued
    } else {
        JobState::Scheduled
    };
    let Some(retried) = tx.reopen(id, job.status, state, at, pending.len()).await? else {
        return Ok(RetryOutcome::NotFound);
    };
    if !pending.is_empty() {
        let edges: Vec<(JobId, JobId)> =
            pending.iter().map(|dependency| (*dependency, id)).collect();
        tx.link(&edges).await?;
    }
    Ok(RetryOutcome::Retried(retried))
}

/// `POST /v1/batches/{id}/cancel`: waiting jobs at once (with their
/// dependents elsewhere), running ones through their runners
/// (`effects.stop`).
pub async fn cancel_batch<T: Transaction>(
    tx: &mut T,
    tenant: &str,
    id: BatchId,
    at: Timestamp,
) -> Result<BatchCancelOutcome, StoreError> {
    let Some(batch) = tx
        .batch(id, None)
        .await?
        .filter(|batch| batch.tenant == tenant)
    else {
        return Ok(BatchCancelOutcome::NotFound);
    };
    if batch.finished_at.is_some() {
        return Ok(BatchCancelOutcome::AlreadyFinished(batch));
    }
    // Flagged first: the trigger that sees the last job end reads it.
    if !tx.flag_batch_cancelled(id).await? {
        // Its last job ended while this waited for the locks.
        return Ok(match tx.batch(id, None).await? {
            Some(batch) => BatchCancelOutcome::AlreadyFinished(batch),
            None => BatchCancelOutcome::NotFound,
        });
    }
    let error = super::cancelled_on_request(true, at);
    let cancelled = tx.cancel_waiting_of_batch(id, &error, at).await?;
    let mut effects = Effects {
        stop: tx.stop_running_of_batch(id).await?,
        ..Effects::default()
    };
    let ended: Vec<Ended> = cancelled.iter().map(Ended::of).collect();
    settle(tx, &ended, at, &mut effects).await?;
    effects.cancelled.extend(cancelled);
    let batch = tx
        .batch(id, None)
        .await?
        .ok_or(StoreError::Corrupt(format!(
            "batch {id} vanished while being cancelled"
        )))?;
    Ok(BatchCancelOutcome::Cancelled(batch, effects))
}
