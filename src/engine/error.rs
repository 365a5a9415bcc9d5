//! Why a request to the engine was refused (the store's refusals told as such too).

use super::{Engine, TENANT_QUOTA_RETRY_AFTER_S, drain};
use crate::domain::{FieldError, Job, JobId};
use crate::store::{StoreError, SubmitRejection};

/// Why a request to the engine was refused.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the request is invalid")]
    Validation(Vec<FieldError>),
    #[error("unknown job kind `{kind}`")]
    UnknownKind { kind: String, known: Vec<String> },
    #[error("unknown queue `{queue}`")]
    UnknownQueue { queue: String, known: Vec<String> },
    #[error("queue `{queue}` is full ({pending} of {capacity} waiting)")]
    QueueFull {
        queue: String,
        capacity: u64,
        pending: u64,
        retry_after_s: u64,
    },
    #[error(
        "tenant `{tenant}` may have {max_pending} jobs waiting (scheduled or queued); it has \
         {pending}, and this request adds {requested}"
    )]
    TenantQuota {
        tenant: String,
        max_pending: u64,
        pending: u64,
        requested: u64,
        retry_after_s: u64,
    },
    #[error("key `{key}` is held by job {holder}")]
    KeyConflict { key: String, holder: JobId },
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyMismatch,
    #[error("the job is already {}", .0.status)]
    AlreadyFinished(Box<Job>),
    #[error("only failed or cancelled jobs can be retried; this one is {}", .0.status)]
    NotRetryable(Box<Job>),
    #[error("a batch holds at most {max} jobs; this one has {size}")]
    BatchTooLarge { size: usize, max: usize },
    #[error(
        "the job's batch has finished: re-run the batch instead (POST /v1/batches/{{id}}/retry)"
    )]
    BatchFinished(Box<Job>),
    #[error("the batch is still running; a batch re-runs once it finished")]
    BatchRunning(Box<crate::domain::Batch>),
    #[error(
        "no job of the batch failed or was cancelled; `{{\"scope\": \"all\"}}` runs every job again"
    )]
    BatchNothingToRetry(Box<crate::domain::Batch>),
    #[error("dependency {dependency} did not succeed; retry it first")]
    DependencyFailed { job: Box<Job>, dependency: JobId },
    #[error("the batch already finished")]
    BatchAlreadyFinished(Box<crate::domain::Batch>),
    /// No such job, batch or queue (which one is named).
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error(
        "queue `{queue}` has {unfinished} unfinished jobs (scheduled, queued or running): \
         cancel them or let them finish first"
    )]
    QueueNotEmpty { queue: String, unfinished: u64 },
    #[error("`{0}` is the default queue, where jobs that name none go; it cannot be deleted")]
    DefaultQueue(String),
    #[error("the service is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl Engine {
    /// `at` is the pointer of the submitted job (empty for a single job), for
    /// errors that name a field.
    pub(super) fn rejection_error(&self, rejection: SubmitRejection, at: &str) -> EngineError {
        match rejection {
            SubmitRejection::QueueFull {
                queue,
                capacity,
                pending,
                requested,
            } => {
                let overflow = (pending + requested).saturating_sub(capacity).max(1);
                let retry_after_s = self
                    .read_queues()
                    .get(&queue)
                    .map_or(drain::FALLBACK_RETRY_AFTER_S, |q| {
                        q.drain.retry_after_s(overflow, q.config.paused)
                    });
                EngineError::QueueFull {
                    queue,
                    capacity,
                    pending,
                    retry_after_s,
                }
            }
            SubmitRejection::UnknownQueue(queue) => EngineError::UnknownQueue {
                queue,
                known: self.queue_names(),
            },
            SubmitRejection::KeyConflict { key, holder } => {
                EngineError::KeyConflict { key, holder }
            }
            SubmitRejection::TenantQuota {
                tenant,
                max_pending,
                pending,
                requested,
            } => EngineError::TenantQuota {
                tenant,
                max_pending,
                pending,
                requested,
                retry_after_s: TENANT_QUOTA_RETRY_AFTER_S,
            },
            SubmitRejection::IdempotencyMismatch => EngineError::IdempotencyMismatch,
            SubmitRejection::UnknownDependency { job, dependency } => {
                let pointer = if at.is_empty() {
                    "/depends_on".to_owned()
                } else {
                    format!("{}/depends_on", crate::domain::job_pointer(job))
                };
                EngineError::Validation(vec![FieldError::new(
                    pointer,
                    format!("no job {dependency}"),
                )])
            }
        }
    }
}
