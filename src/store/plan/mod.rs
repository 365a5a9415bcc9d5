//! The decisions of every state transition, written once above the two
//! backends (as River keeps its rules above a thin driver): a backend
//! reads the facts, takes its locks and writes through `Transaction`; the
//! rules of admission, retry, cancellation and a job's end live here.
//!
//! - `transaction.rs`: what a backend provides.
//! - `admission.rs`: submitting jobs and batches.
//! - `transitions.rs`: cancelling a job, retrying one, cancelling a batch.
//! - `batch_retry.rs`: re-running a batch, by hand or by its policy.
//! - `settle.rs`: what a job's end sets in motion (dependents, batches).
//! - `schedules.rs`: a schedule's fire (overlap, admission, history, advance).
//! - `retention.rs`: what a prune deletes; the latest webhook delivery.
//! - this file: the pure steps they share (a submission's dependency graph,
//!   the jobs it reports, the errors a store writes on a job, claim order).

mod admission;
mod batch_retry;
mod expiry;
mod limits;
mod retention;
mod schedules;
mod settle;
mod transaction;
mod transitions;

use std::collections::HashSet;

pub use admission::admit;
pub use batch_retry::{Rerun, retry_batch, settle_batches};
pub use expiry::{EXPIRE_CHUNK, expire_due};
pub use limits::{KeyState, LimitKey, Limiter, rescale};
pub use retention::{PRUNE, PRUNE_CHUNK, latest_delivery};
pub use schedules::{ScheduleTx, fire_schedule};
pub use settle::{Ended, settle, settle_rescued};
pub use transaction::{EndedBatches, Released, Requested, StatesOf, Transaction};
pub use transitions::{cancel_batch, cancel_job, retry_job};

use crate::domain::{Batch, ErrorInfo, Job, JobId, JobState, NewJob, Redactor, Timestamp};
use crate::store::rows::{job_from_new, to_json};
use crate::store::{Effects, StoreError, SubmitRejection};

/// The dependency graph of a submission, checked against the store.
pub struct Dependencies {
    /// Unsucceeded dependencies per job, in submission order.
    pub pending: Vec<i64>,
    /// (dependency, dependent) edges to store.
    pub edges: Vec<(JobId, JobId)>,
    /// Dependencies that already failed or were cancelled, once each.
    pub already_failed: Vec<(JobId, JobState)>,
}

/// Counts each job's unsucceeded dependencies (a job with any waits as
/// `scheduled`, which this sets) and refuses dependencies that don't exist
/// for `tenant`. `lookup` gives the stored `(state, tenant)` of a job that is
/// not part of the submission, `None` when there is none.
pub fn dependencies(
    tenant: &str,
    jobs: &mut [NewJob],
    mut lookup: impl FnMut(JobId) -> Result<Option<(String, String)>, StoreError>,
) -> Result<Result<Dependencies, SubmitRejection>, StoreError> {
    let mut dependencies = Dependencies {
        pending: vec![0; jobs.len()],
        edges: Vec::new(),
        already_failed: Vec::new(),
    };
    let own: HashSet<JobId> = jobs.iter().map(|job| job.id).collect();
    for (index, job) in jobs.iter_mut().enumerate() {
        for dependency in &job.depends_on {
            if !own.contains(dependency) {
                let state = match lookup(*dependency)? {
                    Some((state, owner)) if owner == tenant => {
                        state.parse::<JobState>().map_err(StoreError::Corrupt)?
                    }
                    _ => {
                        return Ok(Err(SubmitRejection::UnknownDependency {
                            job: index,
                            dependency: *dependency,
                        }));
                    }
                };
                if state == JobState::Succeeded {
                    continue;
                }
                if state.is_terminal()
                    && !dependencies
                        .already_failed
                        .iter()
                        .any(|(id, _)| id == dependency)
                {
                    dependencies.already_failed.push((*dependency, state));
                }
            }
            dependencies.pending[index] += 1;
            dependencies.edges.push((*dependency, job.id));
        }
        if dependencies.pending[index] > 0 {
            job.state = JobState::Scheduled;
        }
    }
    Ok(Ok(dependencies))
}

/// The jobs a submission reports, once its cascade ran: those it cancelled
/// at birth (a dependency had already failed) as cancelled, the rest as
/// inserted. Its own jobs leave `effects.cancelled` (the caller gets them);
/// the key holders it replaced join it (`replaced_now`, cancelled) or
/// `effects.stop` (`replaced_running`, asked to stop).
pub fn submitted_jobs(
    jobs: Vec<NewJob>,
    effects: &mut Effects,
    replaced_now: Vec<Job>,
    replaced_running: Vec<JobId>,
) -> Vec<Job> {
    let own: HashSet<JobId> = jobs.iter().map(|job| job.id).collect();
    let born_cancelled: HashSet<JobId> = effects
        .cancelled
        .iter()
        .map(|job| job.id)
        .filter(|id| own.contains(id))
        .collect();
    let jobs: Vec<Job> = jobs
        .into_iter()
        .map(|job| {
            if born_cancelled.contains(&job.id)
                && let Some(cancelled) = effects.cancelled.iter().find(|c| c.id == job.id)
            {
                return cancelled.clone();
            }
            job_from_new(job)
        })
        .collect();
    effects
        .cancelled
        .retain(|cancelled| !born_cancelled.contains(&cancelled.id));
    effects.cancelled.extend(replaced_now);
    effects.stop = replaced_running;
    jobs
}

/// The body an `Idempotency-Key` replays: the batch, the job, or the jobs,
/// as `redactor` shows them (the body is replayed as it is).
pub fn replay_body(batch: Option<&Batch>, jobs: &[Job], redactor: &Redactor) -> String {
    match (batch, jobs) {
        (Some(batch), _) => to_json(batch),
        (None, [job]) => to_json(&redactor.shown(job.clone())),
        (None, _) => to_json(
            &jobs
                .iter()
                .map(|job| redactor.shown(job.clone()))
                .collect::<Vec<_>>(),
        ),
    }
}

/// The error of a key holder cancelled by `replacement`.
pub fn replaced_by(replacement: JobId, at: Timestamp) -> ErrorInfo {
    ErrorInfo {
        code: "replaced".into(),
        message: format!("replaced by job {replacement} with the same key"),
        attempt: None,
        at,
    }
}

/// The error of a job cancelled through the API, on its own or with its batch.
pub fn cancelled_on_request(batch: bool, at: Timestamp) -> ErrorInfo {
    let message = if batch {
        "the batch was cancelled"
    } else {
        "cancelled on request"
    };
    ErrorInfo {
        code: "cancelled".into(),
        message: message.into(),
        attempt: None,
        at,
    }
}

/// The error of a job cancelled because `dependency` ended `state`.
pub fn dependency_failed(dependency: JobId, state: JobState, at: Timestamp) -> ErrorInfo {
    let what = if state == JobState::Failed {
        "failed"
    } else {
        "was cancelled"
    };
    ErrorInfo {
        code: "dependency_failed".into(),
        message: format!("dependency {dependency} {what}"),
        attempt: None,
        at,
    }
}

/// The `code` of the error a rescued attempt gets: its instance stopped
/// renewing the lease (crashed, or cut off from the database).
pub const LEASE_EXPIRED: &str = "lease_expired";
/// The `message` of that error.
pub const LEASE_EXPIRED_MESSAGE: &str =
    "the instance running this attempt stopped renewing its lease";

/// Claimed jobs in the order to start them: best priority first, then FIFO.
pub fn claim_order(jobs: &mut [Job]) {
    jobs.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.run_at.cmp(&b.run_at))
            .then(a.id.cmp(&b.id))
    });
}
