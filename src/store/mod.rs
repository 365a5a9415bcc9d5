//! The storage trait every backend implements, and the types that cross it.
//!
//! The store is the source of truth: every state transition is one call here,
//! made atomic by the backend. The engine keeps nothing it cannot rebuild
//! from the store after a crash.

mod error;
mod fair;
mod gauges;
mod keys;
mod lists;
mod plan;
mod postgres;
mod rows;
mod schedules;
mod sqlite;
mod tenants;

use async_trait::async_trait;
use serde_json::Value;

use crate::domain::{
    Batch, BatchId, BatchResult, BatchRetryScope, ErrorInfo, Gcra, Job, JobId, JobState, KeyId,
    KeyState, LimitKey, NewBatch, NewJob, Progress, QueueConfig, QueueInfo, RateLimit, Redactor,
    StoredKey, TenantConfig, Timestamp, WebhookDelivery,
};

pub use crate::domain::{IdempotencyKey, JobFilter, StoredResponse};
pub use error::StoreError;
pub use lists::LIST_WAIT;
pub use plan::EXPIRE_CHUNK;
pub use postgres::PgStore;
pub use schedules::{
    FireAction, FireRequest, FireResult, Fired, PlannedFire, PutOutcome, SchedulePut, ScheduleStore,
};
pub use sqlite::SqliteStore;

/// One submission: the jobs of a request, admitted together or not at all.
#[derive(Clone, Debug)]
pub struct Submission {
    pub tenant: String,
    pub jobs: Vec<NewJob>,
    /// Set for `POST /v1/batches`: the jobs belong to this batch.
    pub batch: Option<NewBatch>,
    pub idempotency: Option<IdempotencyKey>,
    /// Masks the jobs in the body remembered for `idempotency`, which a
    /// replay shows as it is (the engine's masks secret payload values).
    pub redactor: Redactor,
    /// The tenant has a `max_pending` (as the engine knows its settings):
    /// the store checks it against the stored value in the admission's
    /// transaction. `false` costs the admission nothing.
    pub limit_pending: bool,
}

/// What a write set in motion beyond the jobs it names: dependents released
/// or cancelled, batches finished, running jobs to stop. The engine wakes
/// whoever must act on each.
#[derive(Clone, Debug, Default)]
pub struct Effects {
    /// Jobs cancelled because a dependency failed or was cancelled
    /// (transitively), or because their batch was cancelled.
    pub cancelled: Vec<Job>,
    /// Queues that received ready jobs.
    pub ready_queues: Vec<String>,
    /// Earliest `run_at` of released jobs that must still wait for it.
    pub next_due: Option<Timestamp>,
    /// Batches whose last job finished.
    pub finished_batches: Vec<FinishedBatch>,
    /// Batches re-run (by hand or by their retry policy), as they are
    /// after reopening, and the jobs that re-run (reopened `queued` or
    /// `scheduled`), in submission order.
    pub retried_batches: Vec<Batch>,
    pub reopened: Vec<Job>,
    /// Running jobs whose cancellation was requested.
    pub stop: Vec<JobId>,
}

impl Effects {
    pub fn is_empty(&self) -> bool {
        self.cancelled.is_empty()
            && self.ready_queues.is_empty()
            && self.next_due.is_none()
            && self.finished_batches.is_empty()
            && self.retried_batches.is_empty()
            && self.reopened.is_empty()
            && self.stop.is_empty()
    }
}

/// What `/metrics` reads of the whole service besides the queues' counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceGauges {
    /// When each queue's oldest ready job became ready (queues with none
    /// are left out).
    pub oldest_ready: Vec<(String, Timestamp)>,
    /// Webhooks not yet delivered nor given up.
    pub webhooks_pending: u64,
}

#[derive(Clone, Debug)]
pub enum SubmitOutcome {
    /// Stored. Running holders of a key that were asked to cancel
    /// (`on_conflict: replace`) are in `effects.stop`; waiting ones were
    /// cancelled outright (`effects.cancelled`).
    Created {
        jobs: Vec<Job>,
        /// The stored batch, for a batch submission.
        batch: Option<Box<Batch>>,
        effects: Effects,
    },
    /// `on_conflict: existing`: the holder, nothing stored.
    Existing(Box<Job>),
    /// The same `Idempotency-Key` and body were seen before.
    Replayed(StoredResponse),
}

/// What `delete_queue` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueDeletion {
    Deleted,
    NotFound,
    /// Not deleted: this many of its jobs are scheduled, queued or running.
    Unfinished(u64),
}

/// Why a submission was refused. Nothing of it was stored.
#[derive(Clone, Debug, PartialEq)]
pub enum SubmitRejection {
    QueueFull {
        queue: String,
        capacity: u64,
        pending: u64,
        requested: u64,
    },
    UnknownQueue(String),
    /// The tenant's `max_pending` has no room for the submission's jobs.
    TenantQuota {
        tenant: String,
        max_pending: u64,
        pending: u64,
        requested: u64,
    },
    KeyConflict {
        key: String,
        holder: JobId,
    },
    IdempotencyMismatch,
    /// `jobs[job]` depends on a job that does not exist (for this tenant).
    UnknownDependency {
        job: usize,
        dependency: JobId,
    },
}

/// How an attempt ended, as the worker reports it.
#[derive(Clone, Debug)]
pub enum AttemptOutcome {
    Succeeded(Value),
    /// `retry_at` is set when another attempt follows (the job goes back to
    /// `scheduled`); otherwise the job is `failed`.
    Failed {
        error: ErrorInfo,
        retry_at: Option<Timestamp>,
    },
    Cancelled(ErrorInfo),
    /// Handed back unfinished at shutdown: `queued` again, the attempt not counted.
    Released,
}

/// The end of one attempt, fenced by `attempt` and `lease_owner`: a late
/// write from an instance whose lease was taken over changes nothing.
#[derive(Clone, Debug)]
pub struct Completion {
    pub id: JobId,
    pub attempt: u32,
    pub lease_owner: String,
    pub outcome: AttemptOutcome,
    pub at: Timestamp,
}

/// The slot a completion frees, refilled by the same write: a claim of at
/// most one job of `queue` for the completion's lease owner, as
/// [`JobStore::claim_ready`] would make it.
#[derive(Clone, Debug)]
pub struct Refill {
    pub queue: String,
    pub lease_until: Timestamp,
    pub now: Timestamp,
}

#[derive(Clone, Debug)]
pub enum CompletionResult {
    Applied {
        job: Box<Job>,
        effects: Effects,
    },
    /// The job is no longer this attempt's: the write was discarded.
    Fenced,
}

#[derive(Clone, Debug)]
pub enum CancelOutcome {
    NotFound,
    AlreadyFinished(Job),
    /// It was scheduled or queued: cancelled now (with its dependents).
    Cancelled(Job, Effects),
    /// It is running: `cancel_requested` is set; the runner stops it.
    Requested(Job),
}

#[derive(Clone, Debug)]
pub enum RetryOutcome {
    NotFound,
    NotRetryable(Job),
    /// Its batch finished: the batch re-runs as a whole (`retry_batch`).
    BatchFinished(Job),
    /// A dependency failed or was cancelled (or is gone): retry it first.
    DependencyFailed {
        job: Job,
        dependency: JobId,
    },
    Retried(Job),
    Rejected(SubmitRejection),
}

/// `POST /v1/batches/{id}/retry`, and a batch's retry policy.
#[derive(Clone, Debug)]
pub enum BatchRetryOutcome {
    NotFound,
    /// Still running: a batch re-runs once it finished.
    Running(Box<Batch>),
    /// No job of the scope to run again (`failed` on a batch that succeeded whole).
    NothingToRetry(Box<Batch>),
    /// A job of the scope waits on a job outside it that failed for good.
    DependencyFailed {
        job: Box<Job>,
        dependency: JobId,
    },
    Rejected(SubmitRejection),
    /// A repeat of an earlier request with the same `Idempotency-Key`.
    Replayed(StoredResponse),
    /// Reopened: the batch as it is now, and the jobs that run again.
    Retried {
        batch: Box<Batch>,
        jobs: Vec<Job>,
        effects: Effects,
    },
}

#[derive(Clone, Debug)]
pub enum BatchCancelOutcome {
    NotFound,
    AlreadyFinished(Batch),
    /// Waiting jobs are cancelled; running ones are in `effects.stop`.
    Cancelled(Batch, Effects),
}

/// A job taken back from an instance that stopped renewing its lease.
#[derive(Clone, Debug)]
pub struct Rescued {
    pub id: JobId,
    pub tenant: String,
    pub queue: String,
    pub state: JobState,
}

/// A batch a write finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedBatch {
    pub id: BatchId,
    pub tenant: String,
}

impl PartialEq<BatchId> for FinishedBatch {
    fn eq(&self, other: &BatchId) -> bool {
        self.id == *other
    }
}

/// What promoting due jobs did.
/// What a claim took, and when it must look again for jobs it passed
/// over for their rate limit.
#[derive(Clone, Debug, Default)]
pub struct Claimed {
    pub jobs: Vec<Job>,
    /// When the first rate-limited job passed over may start.
    pub next_eligible_at: Option<Timestamp>,
}

#[derive(Clone, Debug, Default)]
pub struct Promoted {
    /// Queues that received newly queued jobs.
    pub queues: Vec<String>,
    /// The earliest `run_at` still waiting.
    pub next_due: Option<Timestamp>,
}

/// What a webhook reports on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookOwner {
    Job(JobId),
    Batch(BatchId),
}

/// A webhook claimed by a deliverer.
#[derive(Clone, Debug)]
pub struct ClaimedWebhook {
    /// The `webhook-id`.
    pub id: String,
    pub tenant: String,
    pub owner: WebhookOwner,
    /// `job.succeeded`, `job.failed`, `job.cancelled` or `batch.finished`.
    pub event: String,
    pub url: String,
    /// Set once the first attempt rendered it; every attempt sends the same.
    pub body: Option<String>,
    /// Attempts made before this one.
    pub attempts: u32,
    pub created_at: Timestamp,
}

/// How one delivery attempt went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    Delivered,
    /// Try again at `next_attempt_at`.
    Retry {
        error: String,
        next_attempt_at: Timestamp,
    },
    /// No more attempts.
    Failed {
        error: String,
    },
}

/// One delivery attempt to record (which also releases the claim).
#[derive(Clone, Debug)]
pub struct WebhookAttempt {
    pub id: String,
    /// The body sent, stored on the first attempt and kept from then on.
    pub body: String,
    pub at: Timestamp,
    pub outcome: WebhookOutcome,
}

/// What an instance hears on the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard {
    /// A message another instance sent.
    Message(String),
    /// Messages may have been lost (the connection dropped and came back,
    /// or this listener fell behind): re-check everything they would tell.
    Resync,
}

/// Longest message the bus carries (PostgreSQL's NOTIFY takes under 8 000
/// bytes, and the bus packs several messages into one).
pub const MAX_BUS_MESSAGE: usize = 7_000;

/// Best-effort messages between the instances sharing one store (shared
/// mode): wake-ups, cancellations, queue changes and relayed events.
/// Nothing depends on a message arriving: receivers also re-check on a
/// timer, and a lost connection is reported as [`Heard::Resync`].
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Queues `message` (one line of JSON, at most [`MAX_BUS_MESSAGE`]
    /// bytes) for every other instance. Never waits.
    fn send(&self, message: String);
    /// Returns once every message sent before the call has reached the
    /// database (and so will reach instances listening now).
    async fn flush(&self);
    /// Messages from the other instances, from now on.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Heard>;
}

/// The storage interface of the engine and the API.
#[async_trait]
pub trait JobStore: ScheduleStore + Send + Sync + 'static {
    /// True when this process is the store's only user (embedded SQLite, held
    /// under a file lock): every job still `running` at start-up belongs to a
    /// process that died, and is rescued at once rather than after its lease.
    fn exclusive(&self) -> bool;

    /// The bus to the other instances sharing this store; `None` for a
    /// store with one user.
    fn bus(&self) -> Option<std::sync::Arc<dyn Bus>> {
        None
    }

    /// Cheap round trip.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Whether the store can take writes now, for `/readyz`: a tiny write
    /// committed durably (and, for a database file, room left on its disk).
    /// A store that answers reads but refuses writes (a full disk, a
    /// read-only replica) cannot accept work.
    async fn probe_writes(&self) -> Result<(), StoreError>;

    /// Admits every job of `submission` or none: capacity, unique keys and
    /// the idempotency key are checked in the same transaction as the insert.
    async fn submit(
        &self,
        submission: Submission,
    ) -> Result<Result<SubmitOutcome, SubmitRejection>, StoreError>;

    /// Admits `submission` as [`submit`](Self::submit) does, then claims
    /// its job for `owner` when that job is its queue's only ready job (so
    /// the one any claim would take): the slot its submitter found free,
    /// filled by the admission's own write rather than a round through
    /// the dispatcher. With a backlog it claims nothing, leaving the queue
    /// to the dispatcher's claims of many jobs at once. The claim never
    /// fails the submission: one that fails is logged and takes nothing.
    /// This default claims nothing; SQLite makes both in one transaction.
    async fn submit_and_claim(
        &self,
        submission: Submission,
        _claim: Refill,
        _owner: &str,
    ) -> Result<(Result<SubmitOutcome, SubmitRejection>, Claimed), StoreError> {
        Ok((self.submit(submission).await?, Claimed::default()))
    }

    async fn get_job(&self, tenant: &str, id: JobId) -> Result<Option<Job>, StoreError>;
    /// Place of a queued job among its queue's queued jobs (0 = next).
    async fn queue_position(&self, job: &Job) -> Result<u64, StoreError>;
    async fn list_jobs(&self, tenant: &str, filter: &JobFilter) -> Result<Vec<Job>, StoreError>;
    /// The results of the jobs a job depends on, in `ids` order; `None` for
    /// one that is gone (pruned) or has none.
    async fn dependency_results(
        &self,
        ids: &[JobId],
    ) -> Result<Vec<(JobId, Option<Value>)>, StoreError>;

    async fn get_batch(&self, tenant: &str, id: BatchId) -> Result<Option<Batch>, StoreError>;
    /// Finished jobs of a batch in the order they finished, after the
    /// `after`-th one (0 = from the start), at most `limit`.
    async fn batch_results(
        &self,
        id: BatchId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<BatchResult>, StoreError>;
    /// Cancels every waiting job of the batch and asks running ones to stop.
    async fn cancel_batch(
        &self,
        tenant: &str,
        id: BatchId,
        at: Timestamp,
    ) -> Result<BatchCancelOutcome, StoreError>;

    /// Moves up to `limit` queued jobs of `queue` to `running` under a lease
    /// owned by `owner`, best priority first then FIFO, counting an attempt.
    /// Jobs whose rate limit has no budget left stay `queued`, passed over;
    /// `Claimed::next_eligible_at` says when the first of them may start.
    /// Jobs past their `expires_at` are never taken.
    async fn claim_ready(
        &self,
        queue: &str,
        limit: u32,
        owner: &str,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<Claimed, StoreError>;

    /// `claim_ready`'s jobs alone.
    async fn claim(
        &self,
        queue: &str,
        limit: u32,
        owner: &str,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<Vec<Job>, StoreError> {
        Ok(self
            .claim_ready(queue, limit, owner, lease_until, now)
            .await?
            .jobs)
    }

    /// Creates or changes the rate limit `name`; true when created. A
    /// change applies to the next claim.
    async fn put_limit(
        &self,
        name: &str,
        gcra: Gcra,
        at: Timestamp,
    ) -> Result<(RateLimit, bool), StoreError>;
    async fn get_limit(&self, name: &str) -> Result<Option<RateLimit>, StoreError>;
    async fn list_limits(&self) -> Result<Vec<RateLimit>, StoreError>;
    /// Deletes a limit and its keys' state; its jobs then start unlimited.
    async fn delete_limit(&self, name: &str) -> Result<bool, StoreError>;
    /// The stored state of those of `keys` that have one.
    async fn limit_keys(&self, keys: &[LimitKey]) -> Result<Vec<(LimitKey, KeyState)>, StoreError>;
    /// Closes a key until `until` (a `Retry-After`), or keeps a later hold.
    async fn hold_limit_key(&self, key: &LimitKey, until: Timestamp) -> Result<(), StoreError>;

    /// When the next waiting job expires (`None`: none will).
    async fn next_expiry(&self) -> Result<Option<Timestamp>, StoreError>;
    /// Cancels jobs not started by their `expires_at` (`now` or before), as
    /// `expired`; a chunk at a time (call again while it returns some).
    async fn expire_due(&self, now: Timestamp) -> Result<(Vec<Job>, Effects), StoreError>;
    async fn complete(&self, completion: Completion) -> Result<CompletionResult, StoreError>;
    /// Stores `completion` as [`complete`](Self::complete) does, then claims
    /// at most one job for the slot it frees (`refill`). The claim never
    /// fails the completion: a claim that fails is logged and takes nothing,
    /// and the dispatcher fills the slot. SQLite makes both in one
    /// transaction, the claims of a group's completions by one statement;
    /// this default makes them one after the other.
    async fn complete_and_refill(
        &self,
        completion: Completion,
        refill: Refill,
    ) -> Result<(CompletionResult, Claimed), StoreError> {
        let owner = completion.lease_owner.clone();
        let result = self.complete(completion).await?;
        let claimed = self
            .claim_ready(&refill.queue, 1, &owner, refill.lease_until, refill.now)
            .await
            .unwrap_or_else(|error| {
                tracing::error!(%error, queue = %refill.queue, "claiming a job for a freed slot failed");
                Claimed::default()
            });
        Ok((result, claimed))
    }
    /// Fenced like `complete`; a stale report is dropped silently.
    async fn report_progress(
        &self,
        id: JobId,
        attempt: u32,
        progress: Progress,
    ) -> Result<(), StoreError>;

    async fn cancel_job(
        &self,
        tenant: &str,
        id: JobId,
        at: Timestamp,
    ) -> Result<CancelOutcome, StoreError>;
    /// Re-enqueues a failed or cancelled job as a new attempt series.
    async fn retry_job(
        &self,
        tenant: &str,
        id: JobId,
        at: Timestamp,
    ) -> Result<RetryOutcome, StoreError>;
    /// Re-runs a finished batch's jobs of `scope` as new attempt series,
    /// the batch reopened, or refuses as a submission is refused.
    async fn retry_batch(
        &self,
        tenant: &str,
        id: BatchId,
        scope: BatchRetryScope,
        idempotency: Option<IdempotencyKey>,
        at: Timestamp,
    ) -> Result<BatchRetryOutcome, StoreError>;

    /// Extends the leases `owner` holds on `ids` (the jobs it is running
    /// right now); returns those of them whose cancellation was requested
    /// (possibly through another instance). A job `owner` holds but does not
    /// name — a claim whose answer was lost, an outcome it gave up storing —
    /// is left to lapse, so rescue takes it back.
    async fn renew_leases(
        &self,
        owner: &str,
        ids: &[JobId],
        until: Timestamp,
    ) -> Result<Vec<JobId>, StoreError>;
    /// Takes back running jobs whose lease expired before `now`, or — with
    /// `not_owner` — every running job not owned by that (live) instance,
    /// and then also every webhook claim (only the store's exclusive user
    /// passes `not_owner`, at start-up).
    async fn rescue(
        &self,
        now: Timestamp,
        not_owner: Option<&str>,
    ) -> Result<(Vec<Rescued>, Effects), StoreError>;
    /// Queues scheduled jobs whose `run_at` has come.
    async fn promote_due(&self, now: Timestamp) -> Result<Promoted, StoreError>;
    /// Deletes terminal jobs and finished batches older than
    /// `finished_before`, and idempotency keys created before `keys_before`.
    async fn prune(
        &self,
        finished_before: Timestamp,
        keys_before: Timestamp,
    ) -> Result<u64, StoreError>;

    /// When the earliest pending webhook that nobody holds is due (`None`:
    /// nothing pending).
    async fn next_webhook_due(&self) -> Result<Option<Timestamp>, StoreError>;
    /// Claims up to `limit` pending webhooks due by `now` that no deliverer
    /// holds, until `lease_until` (a deliverer that dies lets them go then).
    async fn claim_webhooks(
        &self,
        now: Timestamp,
        limit: u32,
        lease_until: Timestamp,
    ) -> Result<Vec<ClaimedWebhook>, StoreError>;
    /// Records an attempt and releases the claim.
    async fn record_webhook(&self, attempt: WebhookAttempt) -> Result<(), StoreError>;
    /// The latest webhook of a job or batch, as its delivery stands.
    async fn latest_webhook(
        &self,
        tenant: &str,
        owner: WebhookOwner,
    ) -> Result<Option<WebhookDelivery>, StoreError>;

    async fn list_queues(&self) -> Result<Vec<QueueInfo>, StoreError>;
    /// The service-wide figures `/metrics` shows beyond the queues' counts.
    /// One statement per figure for all queues: callers cache it (a scrape
    /// of every instance must not cost a query per queue).
    async fn gauges(&self) -> Result<ServiceGauges, StoreError>;
    async fn get_queue(&self, name: &str) -> Result<Option<QueueInfo>, StoreError>;
    /// Creates or replaces a queue's settings; `true` when it was created.
    async fn upsert_queue(&self, config: &QueueConfig) -> Result<bool, StoreError>;
    /// Deletes a queue that has no unfinished job, atomically with respect
    /// to admissions to it. Its finished jobs stay, naming it.
    async fn delete_queue(&self, name: &str) -> Result<QueueDeletion, StoreError>;

    /// Stores a key made by `POST /v1/keys` (its hash, never its secret).
    async fn insert_key(&self, key: &StoredKey) -> Result<(), StoreError>;
    /// Every stored key not revoked, expired ones included.
    async fn stored_keys(&self) -> Result<Vec<StoredKey>, StoreError>;
    /// Revokes a stored key; `false` when there is no such live key.
    async fn revoke_key(&self, id: KeyId, at: Timestamp) -> Result<bool, StoreError>;
    /// Records when keys were last used (a few writes a minute, not one
    /// per request: see `access::Keyring`).
    async fn record_key_use(&self, used: &[(KeyId, Timestamp)]) -> Result<(), StoreError>;

    /// Every tenant with stored settings.
    async fn tenants(&self) -> Result<Vec<TenantConfig>, StoreError>;
    /// Creates or replaces a tenant's settings; `true` when it was created.
    async fn upsert_tenant(&self, tenant: &TenantConfig) -> Result<bool, StoreError>;
    /// The tenant's scheduled plus queued jobs, over all queues.
    async fn tenant_pending(&self, tenant: &str) -> Result<u64, StoreError>;
    /// The remembered request hash and response of an `Idempotency-Key`, read
    /// without a write (for a request refused before admission, which still
    /// replays an accepted one).
    async fn idempotent_response(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<(String, StoredResponse)>, StoreError>;
}
