//! The rule of a schedule's fire, written once for both backends: lock the schedule, check that nobody handled these fire times since they were planned, apply the overlap policy, admit each job by the admission rule, record the history and advance — all in one transaction, so each fire time makes one job service-wide with no leader.

use super::transaction::Transaction;
use crate::domain::{FireOutcome, Job, JobId, Overlap, ScheduleFire, Timestamp};
use crate::store::schedules::{
    FireAction, FireRequest, FireResult, Fired, HeldSchedule, ScheduleLock,
};
use crate::store::{
    CancelOutcome, Effects, StoreError, Submission, SubmitOutcome, SubmitRejection,
};

/// What a fire asks of a backend beyond a submission's facts and writes.
#[allow(async_fn_in_trait)] // implemented inside the crate only, for concrete types
pub trait ScheduleTx: Transaction {
    /// Locks the schedule's row to the commit; with `skip_locked`, answers
    /// `Busy` instead of waiting for another transaction that holds it.
    async fn lock_schedule(
        &mut self,
        id: &str,
        skip_locked: bool,
    ) -> Result<ScheduleLock, StoreError>;

    /// `plan::admit` of one submission, whose writes are undone (and the
    /// rest of the transaction kept) unless it is `Created`.
    async fn admit_alone(
        &mut self,
        submission: Submission,
    ) -> Result<Result<SubmitOutcome, SubmitRejection>, StoreError>;

    /// Appends `fires` to the schedule's history and deletes what is
    /// older than the last [`FIRES_KEPT`] entries.
    async fn record_fires(&mut self, id: &str, fires: &[ScheduleFire]) -> Result<(), StoreError>;

    /// Stores the schedule's state after the fire.
    async fn advance(&mut self, id: &str, state: &HeldSchedule) -> Result<(), StoreError>;
}

/// Carries out one pass over a schedule (see [`FireRequest`]).
pub async fn fire_schedule<T: ScheduleTx>(
    tx: &mut T,
    request: FireRequest,
) -> Result<FireResult, StoreError> {
    let mut held = match tx
        .lock_schedule(&request.id, request.expected.is_some())
        .await?
    {
        ScheduleLock::Missing => return Ok(FireResult::Stale),
        ScheduleLock::Busy => return Ok(FireResult::Busy),
        ScheduleLock::Held(held) => held,
    };
    if let Some((revision, next_fire_at)) = request.expected
        && (held.revision != revision || held.next_fire_at != Some(next_fire_at))
    {
        return Ok(FireResult::Stale);
    }
    let mut fired = Fired::default();
    for planned in request.fires.iter().cloned() {
        let (outcome, reason, job_id) = match planned.action {
            FireAction::Record { outcome, reason } => (outcome, Some(reason), None),
            FireAction::Submit { job, outcome } => {
                let previous = match held.last_job_id {
                    Some(id)
                        if outcome == FireOutcome::Fired && request.overlap != Overlap::Allow =>
                    {
                        tx.job(id, true)
                            .await?
                            .filter(|job| !job.status.is_terminal())
                    }
                    _ => None,
                };
                match (request.overlap, previous) {
                    (Overlap::Skip, Some(previous)) => (
                        FireOutcome::Skipped,
                        Some(format!(
                            "job {} of an earlier fire is still {}",
                            previous.id, previous.status
                        )),
                        None,
                    ),
                    (_, previous) => {
                        if let Some(previous) = previous {
                            cancel_previous(tx, &previous, request.now, &mut fired.effects).await?;
                        }
                        submit(tx, &request, *job, outcome, &mut fired).await?
                    }
                }
            }
        };
        if let Some(job_id) = job_id {
            held.last_job_id = Some(job_id);
        }
        if outcome != FireOutcome::Triggered {
            held.last_fire_at = Some(planned.fire_at);
        }
        fired.fires.push(ScheduleFire {
            fire_at: planned.fire_at,
            outcome,
            reason,
            job_id,
            recorded_at: request.now,
            seq: held.fires_recorded + fired.fires.len() as i64,
        });
    }
    if !fired.fires.is_empty() {
        tx.record_fires(&request.id, &fired.fires).await?;
    }
    held.fires_recorded += fired.fires.len() as i64;
    if let Some(next_fire_at) = request.advance {
        held.next_fire_at = next_fire_at;
    }
    tx.advance(&request.id, &held).await?;
    Ok(FireResult::Done(Box::new(fired)))
}

/// `overlap: cancel_previous`: the previous fire's job is cancelled by the
/// cancel rule (at once when waiting, asked to stop when running).
async fn cancel_previous<T: ScheduleTx>(
    tx: &mut T,
    previous: &Job,
    at: Timestamp,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    match super::cancel_job(tx, &previous.tenant, previous.id, at).await? {
        CancelOutcome::Cancelled(job, more) => {
            merge(effects, more);
            effects.cancelled.push(job);
        }
        CancelOutcome::Requested(job) => effects.stop.push(job.id),
        CancelOutcome::NotFound | CancelOutcome::AlreadyFinished(_) => {}
    }
    Ok(())
}

/// Admits one fire's job by the admission rule; a refusal is recorded, not retried.
async fn submit<T: ScheduleTx>(
    tx: &mut T,
    request: &FireRequest,
    job: crate::domain::NewJob,
    outcome: FireOutcome,
    fired: &mut Fired,
) -> Result<(FireOutcome, Option<String>, Option<JobId>), StoreError> {
    let submission = Submission {
        tenant: request.tenant.clone(),
        jobs: vec![job],
        batch: None,
        idempotency: None,
        redactor: request.redactor.clone(),
        limit_pending: request.limit_pending,
    };
    Ok(match tx.admit_alone(submission).await? {
        Ok(SubmitOutcome::Created { jobs, effects, .. }) => {
            merge(&mut fired.effects, effects);
            let id = jobs.first().map(|job| job.id);
            fired.jobs.extend(jobs);
            (outcome, None, id)
        }
        Ok(SubmitOutcome::Existing(job)) => (
            FireOutcome::Refused,
            Some(format!("job {} already holds this fire's key", job.id)),
            None,
        ),
        Ok(SubmitOutcome::Replayed(_)) => (
            FireOutcome::Refused,
            Some("this fire was already admitted".into()),
            None,
        ),
        Err(rejection) => {
            let reason = refusal_reason(&rejection);
            fired.refusals.push(rejection);
            (FireOutcome::Refused, Some(reason), None)
        }
    })
}

/// Why an admission was refused, for the history.
pub fn refusal_reason(rejection: &SubmitRejection) -> String {
    match rejection {
        SubmitRejection::QueueFull {
            queue,
            capacity,
            pending,
            ..
        } => format!("queue_full: queue `{queue}` is full ({pending} of {capacity} waiting)"),
        SubmitRejection::UnknownQueue(queue) => format!("unknown_queue: no queue `{queue}`"),
        SubmitRejection::TenantQuota {
            tenant,
            max_pending,
            pending,
            ..
        } => format!("tenant_quota: tenant `{tenant}` has {pending} of {max_pending} jobs waiting"),
        SubmitRejection::KeyConflict { key, holder } => {
            format!("key_conflict: key `{key}` is held by job {holder}")
        }
        SubmitRejection::IdempotencyMismatch => "idempotency_mismatch".into(),
        SubmitRejection::UnknownDependency { dependency, .. } => {
            format!("unknown_dependency: no job {dependency}")
        }
    }
}

/// Adds what `more` set in motion to `effects`.
fn merge(effects: &mut Effects, more: Effects) {
    effects.cancelled.extend(more.cancelled);
    effects.ready_queues.extend(more.ready_queues);
    effects.next_due = match (effects.next_due, more.next_due) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    effects.finished_batches.extend(more.finished_batches);
    effects.stop.extend(more.stop);
}
