//! What the shared decisions ask of a backend: the facts of an open write
//! transaction and the writes that carry a decision out. A backend
//! implements this once (`sqlite/tx.rs`, `postgres/tx.rs`); the rules of
//! each transition (`admission.rs`, `transitions.rs`, `settle.rs`) are
//! written once against it.
//!
//! Each method is one step a backend does its own way: its SQL, its
//! locks, its counters. None decides anything a client could see: that is
//! the caller's part.

use std::collections::{BTreeMap, HashMap};

use crate::domain::{Batch, BatchId, ErrorInfo, Job, JobId, JobState, NewBatch, NewJob, Timestamp};
use crate::store::{FinishedBatch, Rescued, StoreError, StoredResponse, SubmitRejection};

/// Jobs per queue name, as a submission or a retry asks for room.
pub type Requested = BTreeMap<String, u64>;

/// The stored `(state, tenant)` of jobs, by id; jobs not found are missing.
pub type StatesOf = HashMap<JobId, (String, String)>;

/// A dependent released by a success: its last dependency succeeded.
#[derive(Clone, Debug)]
pub struct Released {
    pub queue: String,
    pub run_at: Timestamp,
    /// Moved to `queued` by the release (its `run_at` had come); otherwise
    /// it waits `scheduled` for `run_at`.
    pub queued: bool,
}

/// The facts and writes of one open write transaction.
///
/// `async` for PostgreSQL; the SQLite writer's implementation never waits
/// (it runs on the writer's thread, see `sqlite/tx.rs`).
#[allow(async_fn_in_trait)] // implemented inside the crate only, for concrete types
pub trait Transaction {
    /// True when a check made before any write decides for good: the
    /// backend serialises whole transactions (SQLite's single writer).
    /// Otherwise (PostgreSQL) an admission checks room and quota again,
    /// under locks, once its rows are written (see `admission.rs`).
    const CHECKS_BEFORE_WRITES_DECIDE: bool;

    /// The fingerprint and response remembered for `key`.
    async fn seen_request(
        &mut self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<(String, StoredResponse)>, StoreError>;

    /// A refusal when a queue of `requested` is unknown or has no room for
    /// its jobs. Authoritative only under `CHECKS_BEFORE_WRITES_DECIDE`.
    async fn glance_room(
        &mut self,
        requested: &Requested,
    ) -> Result<Option<SubmitRejection>, StoreError>;

    /// The refusal that decides: room in each queue of `requested`, with the
    /// queues' locks held to the commit where the backend needs them.
    async fn check_room(
        &mut self,
        requested: &Requested,
    ) -> Result<Option<SubmitRejection>, StoreError>;

    /// A refusal when `requested` more jobs overflow the tenant's stored
    /// `max_pending`. Authoritative only under `CHECKS_BEFORE_WRITES_DECIDE`.
    async fn glance_quota(
        &mut self,
        tenant: &str,
        requested: u64,
    ) -> Result<Option<SubmitRejection>, StoreError>;

    /// The quota refusal that decides, counting the tenant's waiting jobs but
    /// `own` (the jobs this transaction just wrote).
    async fn check_quota(
        &mut self,
        tenant: &str,
        own: &[JobId],
        requested: u64,
    ) -> Result<Option<SubmitRejection>, StoreError>;

    /// The unfinished job of `tenant` holding `key`, not asked to cancel.
    async fn active_holder(&mut self, tenant: &str, key: &str) -> Result<Option<Job>, StoreError>;

    /// The stored `(state, tenant)` of each of `ids`. Where other
    /// transactions run at once, unfinished ones are locked and flagged as
    /// depended on, so none ends before the caller's edges are committed.
    async fn dependency_states(&mut self, ids: &[JobId]) -> Result<StatesOf, StoreError>;

    /// A job as stored; `for_update` locks its row where that matters.
    async fn job(&mut self, id: JobId, for_update: bool) -> Result<Option<Job>, StoreError>;

    /// A batch as stored, with its jobs' ids: `job_ids` when the caller
    /// knows them (it just inserted them), else as stored.
    async fn batch(
        &mut self,
        id: BatchId,
        job_ids: Option<Vec<JobId>>,
    ) -> Result<Option<Batch>, StoreError>;

    /// Whether a batch finished; `None` when there is no such batch.
    async fn batch_finished(&mut self, id: BatchId) -> Result<Option<bool>, StoreError>;

    /// Cancels a scheduled or queued job at once (`Some`), or asks a running
    /// one to stop (`None`; its runner finishes the job).
    async fn cancel_now(
        &mut self,
        id: JobId,
        error: &ErrorInfo,
        at: Timestamp,
    ) -> Result<Option<Job>, StoreError>;

    /// Up to `limit` jobs whose `expires_at` is at or before `now` and that
    /// never started, earliest first, locked against claims where the
    /// database has row locks (skipping rows another transaction holds).
    async fn expiring(&mut self, now: Timestamp, limit: u32) -> Result<Vec<JobId>, StoreError>;

    /// Stores a new batch of `jobs`.
    async fn insert_batch(&mut self, batch: &NewBatch, jobs: &[NewJob]) -> Result<(), StoreError>;

    /// Stores new jobs, each with its count of unsucceeded dependencies.
    async fn insert_jobs(&mut self, jobs: &[NewJob], pending: &[i64]) -> Result<(), StoreError>;

    /// Stores `(dependency, dependent)` edges (an edge stored already
    /// stays); never called without any.
    async fn link(&mut self, edges: &[(JobId, JobId)]) -> Result<(), StoreError>;

    /// Remembers a submission's response under its `Idempotency-Key`.
    async fn remember_response(
        &mut self,
        tenant: &str,
        key: &str,
        request_hash: &str,
        body: String,
        at: Timestamp,
    ) -> Result<(), StoreError>;

    /// Puts a failed or cancelled job (`from`, as read in this transaction)
    /// back to `state` with its attempts, result and errors cleared, waiting
    /// on `pending` dependencies.
    async fn reopen(
        &mut self,
        id: JobId,
        from: JobState,
        state: JobState,
        at: Timestamp,
        pending: usize,
    ) -> Result<Option<Job>, StoreError>;

    /// Flags an unfinished batch as cancelled; false when it had finished.
    async fn flag_batch_cancelled(&mut self, id: BatchId) -> Result<bool, StoreError>;

    /// Cancels a batch's scheduled and queued jobs at once.
    async fn cancel_waiting_of_batch(
        &mut self,
        id: BatchId,
        error: &ErrorInfo,
        at: Timestamp,
    ) -> Result<Vec<Job>, StoreError>;

    /// Asks a batch's running jobs to stop; their ids.
    async fn stop_running_of_batch(&mut self, id: BatchId) -> Result<Vec<JobId>, StoreError>;

    /// One dependency fewer for each job waiting on `id`, the edges from it
    /// dropped; the dependents left with none, moved to `queued` when their
    /// `run_at` has come by `at` (and `run_at` then set to `at`).
    async fn release_dependents(
        &mut self,
        id: JobId,
        at: Timestamp,
    ) -> Result<Vec<Released>, StoreError>;

    /// Cancels with `error` every job that (transitively) waits on `id`, and
    /// drops the edges from `id` and from the jobs it cancelled.
    async fn cancel_dependents(
        &mut self,
        id: JobId,
        error: &ErrorInfo,
        at: Timestamp,
    ) -> Result<Vec<Job>, StoreError>;

    /// Notes that `job` left `running` for its `state` by a statement of
    /// the backend's own (a rescue), for the counters that statement did not
    /// keep.
    fn left_running(&mut self, job: &Rescued);

    /// Of `batches` (sorted, each once): those finished, and those whose
    /// jobs all ended while their retry policy held them open.
    async fn ended_batches(&mut self, batches: &[BatchId]) -> Result<EndedBatches, StoreError>;

    /// The jobs of batch `id` in submission order, their rows locked where
    /// the database has row locks: in id order, before the batch's row, as
    /// a completion takes them (its job, then its batch through the trigger).
    async fn batch_jobs(&mut self, id: BatchId) -> Result<Vec<Job>, StoreError>;

    /// Reopens a batch for a re-run: `running`, no end, not cancelled, one
    /// retry more. Its counts follow its jobs as they are reopened.
    async fn reopen_batch(&mut self, id: BatchId) -> Result<(), StoreError>;

    /// Ends at `at` a batch whose jobs all ended but which its retry policy
    /// held open, with the status its last job's end would have given it:
    /// for a re-run that could not be made.
    async fn finish_batch(&mut self, id: BatchId, at: Timestamp) -> Result<(), StoreError>;
}

/// Batches a write ended a job of, as `Transaction::ended_batches` finds them.
#[derive(Debug, Default)]
pub struct EndedBatches {
    /// Finished by the write.
    pub finished: Vec<FinishedBatch>,
    /// Every job ended, the batch held open by its retry policy: it re-runs.
    pub held: Vec<FinishedBatch>,
}
