//! The engine: admission, dispatch to the worker pool, leases, retries,
//! cancellation and shutdown. It owns no state the store cannot rebuild.

mod admission;
mod batches;
mod drain;
mod maintenance;
mod queues;
mod ready_clock;
mod shared;
mod tenants;
mod waiters;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{FieldError, Job, JobId, JobState, QueueConfig, QueueInfo, Timestamp};
use crate::kinds::KindRegistry;
use crate::notify::{BatchSummary, EventHub, EventKind, Subject, Webhooks, job_summary};
use crate::store::{
    CancelOutcome, Effects, FinishedBatch, JobFilter, JobStore, Rescued, RetryOutcome,
    ServiceGauges, StoreError, SubmitRejection, WebhookOwner,
};
use crate::telemetry::metrics;
use crate::telemetry::traces::Tracer;

pub use admission::Submitted;
pub use batches::BatchSubmitted;
use drain::DrainMeter;
use shared::Shared;
pub use tenants::TENANT_QUOTA_RETRY_AFTER_S;
use waiters::Waiters;

/// Timing of the engine. Every default is documented in `docs/operations.md`.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// Time running jobs get to finish at shutdown. Default 30 s.
    pub shutdown_grace: Duration,
    /// Time a cancelled (or timed-out) handler gets to return before its task
    /// is aborted. Default 5 s.
    pub cancel_grace: Duration,
    /// Lease of a running job; renewed every third of it. Default 30 s.
    pub lease_ttl: Duration,
    /// How long terminal jobs are kept. Default 7 days.
    pub retention: Duration,
    /// How long idempotency keys are remembered. Default 24 h.
    pub idempotency_ttl: Duration,
    /// Fallback re-check of queues and schedules when no wake-up came. Default 1 s.
    pub poll_interval: Duration,
    /// Largest serialized result a job may return. Default 256 KiB.
    pub max_result_bytes: usize,
    /// Most jobs in one batch. Default 10 000.
    pub max_batch_size: usize,
    /// Events kept for resuming event streams. Default 10 000.
    pub event_replay: usize,
    /// Where attempts' spans go. Default: nowhere (their ids are still
    /// made, for the log lines' `trace_id`).
    pub tracer: Tracer,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            poll_interval: Duration::from_secs(1),
            max_result_bytes: 256 * 1024,
            max_batch_size: 10_000,
            event_replay: 10_000,
            tracer: Tracer::disabled(),
        }
    }
}

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
    #[error("the job's batch has finished; batches don't reopen")]
    BatchFinished(Box<Job>),
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

/// What cancelling did.
#[derive(Debug)]
pub enum Cancelled {
    /// The job was waiting: it is cancelled now.
    Now(Job),
    /// The job is running: its runner was told to stop.
    Requested(Job),
}

/// Why a running job's token fired.
const STOP_NONE: u8 = 0;
const STOP_CANCEL: u8 = 1;
const STOP_SHUTDOWN: u8 = 2;

struct RunningJob {
    token: CancellationToken,
    stop: Arc<AtomicU8>,
}

struct QueueState {
    config: QueueConfig,
    /// Jobs of this queue running in this process.
    running: u32,
    drain: DrainMeter,
}

pub(crate) struct Inner {
    store: Arc<dyn JobStore>,
    kinds: KindRegistry,
    settings: EngineSettings,
    /// Owner name of this process's leases.
    instance_id: String,
    queues: RwLock<BTreeMap<String, QueueState>>,
    running: Mutex<HashMap<JobId, RunningJob>>,
    wake_dispatcher: Notify,
    wake_promoter: Notify,
    /// Earliest known `run_at` of a scheduled job (ms; `i64::MAX` for none),
    /// so the promoter can sleep until exactly then.
    next_due_ms: AtomicI64,
    admitting: AtomicBool,
    /// Stops claiming and the maintenance loops (but not the heartbeat).
    stopping: CancellationToken,
    /// Stops the heartbeat, last.
    stopped: CancellationToken,
    jobs: TaskTracker,
    loops: TaskTracker,
    events: EventHub,
    waiters: Waiters,
    /// `None`: webhooks are off and `callback_url` is refused.
    webhooks: Option<Webhooks>,
    /// Wakes the webhook deliverer when something with a callback ended.
    wake_webhooks: Arc<Notify>,
    /// The bus to the other instances (shared mode only).
    shared: Option<Shared>,
    /// Another instance changed the API keys (or bus messages were lost):
    /// the keyring re-reads them.
    keys_heard: Notify,
    /// Tenants with quotas, as stored (see `tenants.rs`).
    tenants: RwLock<tenants::TenantCache>,
    /// Another instance changed a tenant's quotas (or bus messages were
    /// lost): the tenants are re-read.
    tenants_heard: Notify,
    /// The last readiness probe: when it ran and what it found. Behind an
    /// async lock so that concurrent `/readyz` calls share one probe.
    readiness: tokio::sync::Mutex<Option<(tokio::time::Instant, Result<(), String>)>>,
    /// The last figures read for `/metrics`, reused for a second (see
    /// `queues.rs`).
    gauges: tokio::sync::Mutex<Option<(tokio::time::Instant, Arc<MetricsSnapshot>)>>,
    /// When jobs admitted here became ready, for the queue-wait histogram.
    ready_clock: ready_clock::ReadyClock,
}

/// What `/metrics` shows of the queues: the store's service-wide figures
/// and this instance's running jobs.
#[derive(Clone, Debug)]
pub struct MetricsSnapshot {
    /// Every queue with its service-wide counts.
    pub queues: Vec<QueueInfo>,
    pub gauges: ServiceGauges,
    /// When the figures were read.
    pub read_at: Timestamp,
    /// Jobs of each queue running in this instance.
    pub running_here: Vec<(String, u32)>,
}

/// How long the figures of `/metrics` are reused: every instance may be
/// scraped by several Prometheus servers, and each read is a statement per
/// figure over all queues.
const GAUGES_TTL: Duration = Duration::from_secs(1);

/// How long a readiness probe's answer is reused: load balancers may ask
/// many times a second, and each probe is a durable write.
const READINESS_TTL: Duration = Duration::from_secs(1);
/// A store that takes longer than this to commit a probe is not ready.
const READINESS_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle on the engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Prepares the queues (`default` always exists; `declared` ones are
    /// created or updated), rescues jobs orphaned by a previous process and
    /// starts the dispatcher and maintenance loops.
    pub async fn start(
        store: Arc<dyn JobStore>,
        kinds: KindRegistry,
        settings: EngineSettings,
        declared: Vec<QueueConfig>,
        webhooks: Option<Webhooks>,
    ) -> Result<Self, StoreError> {
        let existing: Vec<String> = store
            .list_queues()
            .await?
            .into_iter()
            .map(|q| q.name)
            .collect();
        if !existing
            .iter()
            .any(|name| name == QueueConfig::DEFAULT_NAME)
            && !declared.iter().any(|q| q.name == QueueConfig::DEFAULT_NAME)
        {
            store
                .upsert_queue(&QueueConfig::new(QueueConfig::DEFAULT_NAME))
                .await?;
        }
        for queue in &declared {
            store.upsert_queue(queue).await?;
        }
        let queues = store
            .list_queues()
            .await?
            .into_iter()
            .map(|info| {
                let config = QueueConfig {
                    name: info.name.clone(),
                    concurrency: info.concurrency,
                    capacity: info.capacity,
                    paused: info.paused,
                    defaults: info.defaults,
                };
                let state = QueueState {
                    config,
                    running: 0,
                    drain: DrainMeter::default(),
                };
                (info.name, state)
            })
            .collect();

        let instance_id = format!("spool-{}", uuid::Uuid::now_v7());
        let now = Timestamp::now();
        let exclusive_owner = store.exclusive().then_some(instance_id.as_str());
        // The effects need no action yet: the dispatcher and the promoter
        // look at every queue and schedule when they start.
        let (rescued, _effects) = store.rescue(now, exclusive_owner).await?;
        if !rescued.is_empty() {
            tracing::warn!(
                jobs = rescued.len(),
                "took back jobs left running by a previous process"
            );
        }

        let events = EventHub::new(settings.event_replay);
        let shared = store.bus().map(Shared::new);
        if shared.is_some() {
            events.dedupe_queued();
        }
        let engine = Engine {
            inner: Arc::new(Inner {
                store,
                kinds,
                settings,
                instance_id,
                queues: RwLock::new(queues),
                running: Mutex::new(HashMap::new()),
                wake_dispatcher: Notify::new(),
                wake_promoter: Notify::new(),
                next_due_ms: AtomicI64::new(i64::MAX),
                admitting: AtomicBool::new(true),
                stopping: CancellationToken::new(),
                stopped: CancellationToken::new(),
                jobs: TaskTracker::new(),
                loops: TaskTracker::new(),
                events,
                waiters: Waiters::default(),
                webhooks,
                wake_webhooks: Arc::new(Notify::new()),
                shared,
                keys_heard: Notify::new(),
                tenants: RwLock::new(tenants::TenantCache::new()),
                tenants_heard: Notify::new(),
                readiness: tokio::sync::Mutex::new(None),
                gauges: tokio::sync::Mutex::new(None),
                ready_clock: ready_clock::ReadyClock::default(),
            }),
        };
        engine.refresh_tenants().await?;
        engine.spawn_loops();
        engine.spawn_shared_loops();
        tracing::info!(instance_id = %engine.inner.instance_id, "engine started");
        Ok(engine)
    }

    pub fn kinds(&self) -> &KindRegistry {
        &self.inner.kinds
    }

    pub fn events(&self) -> &EventHub {
        &self.inner.events
    }

    /// The store, for what the engine does not mediate (API keys).
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.inner.store
    }

    /// Checks a submitted `callback_url` against the outbound rules (where
    /// that can be done before a lookup), and that webhooks are on at all.
    fn check_callback(&self, url: Option<&str>, pointer: String) -> Option<FieldError> {
        let url = url?;
        let problem = match &self.inner.webhooks {
            None => "webhooks are off on this service: it needs SPOOL_WEBHOOK_SECRET to sign them"
                .to_owned(),
            Some(webhooks) => webhooks.check_url(url).err()?,
        };
        Some(FieldError::new(pointer, problem))
    }

    /// Fires once shutdown has drained the running jobs (their last events
    /// are published by then): event streams end then.
    pub fn drained(&self) -> CancellationToken {
        self.inner.stopped.clone()
    }

    /// Fires when shutdown begins: long-polls end then.
    /// Where spans go (the request spans use it too).
    pub fn tracer(&self) -> &Tracer {
        &self.inner.settings.tracer
    }

    pub fn stopping(&self) -> CancellationToken {
        self.inner.stopping.clone()
    }

    pub fn instance_id(&self) -> &str {
        &self.inner.instance_id
    }

    /// False once shutdown began.
    pub fn is_admitting(&self) -> bool {
        self.inner.admitting.load(Ordering::Acquire)
    }

    /// Ready to accept work: admitting, and the store takes writes (probed
    /// at most once per [`READINESS_TTL`], so readiness comes back by itself
    /// within a second of the store's return).
    pub async fn ready(&self) -> Result<(), EngineError> {
        if !self.is_admitting() {
            return Err(EngineError::ShuttingDown);
        }
        let mut last = self.inner.readiness.lock().await;
        let fresh = last
            .as_ref()
            .filter(|(at, _)| at.elapsed() < READINESS_TTL)
            .map(|(_, result)| result.clone());
        let result = match fresh {
            Some(result) => result,
            None => {
                let probe =
                    tokio::time::timeout(READINESS_TIMEOUT, self.inner.store.probe_writes()).await;
                let result = match probe {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err(format!(
                        "the store did not commit a write within {} s",
                        READINESS_TIMEOUT.as_secs()
                    )),
                };
                *last = Some((tokio::time::Instant::now(), result.clone()));
                result
            }
        };
        result.map_err(|message| EngineError::Storage(StoreError::Unavailable(message)))
    }

    /// A job with its `position` when queued.
    pub async fn get_job(&self, tenant: &str, id: JobId) -> Result<Job, EngineError> {
        let mut job = self
            .inner
            .store
            .get_job(tenant, id)
            .await?
            .ok_or(EngineError::NotFound("job"))?;
        self.with_webhook(&mut job).await?;
        if job.webhook.is_some() && !job.status.is_terminal() {
            // The job and its webhook are two reads: a job that ended in
            // between showed `running` beside the webhook of its end. Read
            // the job again (a retried job, whose webhook is of its
            // previous end, just costs one more read).
            let webhook = job.webhook.take();
            job = self
                .inner
                .store
                .get_job(tenant, id)
                .await?
                .ok_or(EngineError::NotFound("job"))?;
            job.webhook = webhook;
        }
        if job.status == crate::domain::JobState::Queued {
            job.position = Some(self.inner.store.queue_position(&job).await?);
        }
        Ok(self.shown(job))
    }

    pub async fn list_jobs(
        &self,
        tenant: &str,
        filter: &JobFilter,
    ) -> Result<Vec<Job>, EngineError> {
        let mut jobs = self.inner.store.list_jobs(tenant, filter).await?;
        // No `position`: counting the jobs ahead of each queued job scans
        // its queue, which turned a filtered list over a 100 000-job backlog
        // from under a millisecond into 650 ms (`spool bench --lists`).
        for job in &mut jobs {
            self.with_webhook(job).await?;
            self.inner.kinds.redact_job(job);
        }
        Ok(jobs)
    }

    /// A job as it leaves the engine: its kind's secret payload values
    /// masked (the store keeps them: the job runs with them). Every job the
    /// engine hands out goes through here; the bodies the store and the
    /// webhook deliverer keep go through [`KindRegistry::redactor`].
    fn shown(&self, mut job: Job) -> Job {
        self.inner.kinds.redact_job(&mut job);
        job
    }

    /// Fills in the delivery of the job's latest webhook (jobs with a
    /// `callback_url` only, so others cost nothing).
    async fn with_webhook(&self, job: &mut Job) -> Result<(), EngineError> {
        if job.callback_url.is_some() {
            job.webhook = self
                .inner
                .store
                .latest_webhook(&job.tenant, WebhookOwner::Job(job.id))
                .await?;
        }
        Ok(())
    }

    pub async fn cancel_job(&self, tenant: &str, id: JobId) -> Result<Cancelled, EngineError> {
        match self
            .inner
            .store
            .cancel_job(tenant, id, Timestamp::now())
            .await?
        {
            CancelOutcome::NotFound => Err(EngineError::NotFound("job")),
            CancelOutcome::AlreadyFinished(job) => {
                Err(EngineError::AlreadyFinished(Box::new(self.shown(job))))
            }
            CancelOutcome::Cancelled(job, effects) => {
                self.publish(&job);
                self.apply(effects);
                Ok(Cancelled::Now(self.shown(job)))
            }
            CancelOutcome::Requested(job) => {
                self.stop_running(job.id, STOP_CANCEL);
                self.tell_stop(vec![job.id]);
                Ok(Cancelled::Requested(self.shown(job)))
            }
        }
    }

    pub async fn retry_job(&self, tenant: &str, id: JobId) -> Result<Job, EngineError> {
        if !self.is_admitting() {
            return Err(EngineError::ShuttingDown);
        }
        match self
            .inner
            .store
            .retry_job(tenant, id, Timestamp::now())
            .await?
        {
            RetryOutcome::NotFound => Err(EngineError::NotFound("job")),
            RetryOutcome::NotRetryable(job) => {
                Err(EngineError::NotRetryable(Box::new(self.shown(job))))
            }
            RetryOutcome::BatchFinished(job) => {
                Err(EngineError::BatchFinished(Box::new(self.shown(job))))
            }
            RetryOutcome::DependencyFailed { job, dependency } => {
                Err(EngineError::DependencyFailed {
                    job: Box::new(self.shown(job)),
                    dependency,
                })
            }
            RetryOutcome::Rejected(rejection) => Err(self.rejection_error(rejection, "")),
            RetryOutcome::Retried(job) => {
                self.publish_stored(&job);
                self.inner.wake_dispatcher.notify_one();
                if job.status == crate::domain::JobState::Queued {
                    self.tell_ready(&job.queue);
                }
                Ok(self.shown(job))
            }
        }
    }

    /// Stops admitting, lets running jobs finish within the shutdown grace,
    /// interrupts and hands back the rest, then stops every loop.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.admitting.store(false, Ordering::Release);
        inner.stopping.cancel();
        inner.jobs.close();
        let grace = inner.settings.shutdown_grace;
        // Interrupting leaves the handlers `cancel_grace` to return, so start
        // it early enough for the whole shutdown to fit in the grace period.
        let patience = grace.saturating_sub(inner.settings.cancel_grace.min(grace / 2));
        let running = inner.running.lock().map(|r| r.len()).unwrap_or(0);
        tracing::info!(
            running_jobs = running,
            grace_ms = grace.as_millis() as u64,
            "shutting down"
        );
        let mut handed_back = 0;
        if tokio::time::timeout(patience, inner.jobs.wait())
            .await
            .is_err()
        {
            let ids: Vec<JobId> = inner
                .running
                .lock()
                .map(|r| r.keys().copied().collect())
                .unwrap_or_default();
            handed_back = ids.len();
            tracing::warn!(
                jobs = ids.len(),
                "grace period over: handing running jobs back to their queues"
            );
            for id in ids {
                self.stop_running(id, STOP_SHUTDOWN);
            }
            let bound = inner.settings.cancel_grace + Duration::from_secs(2);
            if tokio::time::timeout(bound, inner.jobs.wait())
                .await
                .is_err()
            {
                tracing::error!(
                    "some jobs did not stop; their leases will expire and they will be rescued"
                );
            }
        }
        inner.loops.close();
        inner.stopped.cancel();
        inner.loops.wait().await;
        tracing::info!(
            jobs_finished = running.saturating_sub(handed_back),
            jobs_handed_back = handed_back,
            "engine stopped"
        );
    }

    fn stop_running(&self, id: JobId, reason: u8) {
        let running = self.inner.running.lock();
        if let Ok(running) = running
            && let Some(job) = running.get(&id)
        {
            let _ =
                job.stop
                    .compare_exchange(STOP_NONE, reason, Ordering::AcqRel, Ordering::Acquire);
            job.token.cancel();
        }
    }

    /// Tells listeners of a job's new state; an end also wakes its long-polls.
    fn publish(&self, job: &Job) {
        if job.status.is_terminal() {
            // Every transition to an end passes here once, on the instance
            // that made it.
            metrics::job_finished(&job.queue, &job.kind, job.status.as_str());
            log_end(job);
            self.inner.waiters.wake(job.id.as_uuid());
            if let Some(batch_id) = job.batch_id {
                self.inner.waiters.wake(batches::results_waiter(batch_id));
            }
            if job.callback_url.is_some() {
                self.inner.wake_webhooks.notify_one();
            }
        }
        self.inner.events.publish(
            EventKind::for_state(job.status),
            Subject::Job(job_summary(job)),
        );
    }

    /// Tells listeners of a job just stored by a submission or a retry request.
    /// (See `publish` for ends.)
    fn publish_stored(&self, job: &Job) {
        if job.status.is_terminal() {
            self.publish(job);
            return;
        }
        // Admitted straight to `queued` (the case a claimant on another
        // instance may announce first, see `start_attempt`): marked, so each
        // hub records it once.
        if job.status == crate::domain::JobState::Queued
            && job.attempt == 0
            && job.ready_since_creation()
        {
            self.inner.events.publish_admission(job_summary(job));
            return;
        }
        self.inner.events.publish(
            EventKind::for_stored(job.status),
            Subject::Job(job_summary(job)),
        );
    }

    /// Publishes `batch.finished` for each batch, read after the write that
    /// finished it (off the caller's path: a read must not hold up a worker).
    fn publish_finished_batches(&self, batches: Vec<FinishedBatch>) {
        let engine = self.clone();
        tokio::spawn(async move {
            for FinishedBatch { id, tenant } in batches {
                match engine.inner.store.get_batch(&tenant, id).await {
                    Ok(Some(batch)) => engine.inner.events.publish(
                        EventKind::BatchFinished,
                        Subject::Batch(BatchSummary {
                            id: batch.id,
                            status: batch.status,
                            counts: batch.counts,
                            finished_at: batch.finished_at,
                            tenant: batch.tenant.clone(),
                        }),
                    ),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(batch_id = %id, %error, "reading a finished batch for its event failed");
                    }
                }
            }
        });
    }

    /// Acts on what a write set in motion: publishes cancelled dependents,
    /// wakes the dispatcher, the promoter and batch long-polls, and stops
    /// running jobs whose cancellation was requested.
    fn apply(&self, effects: Effects) {
        if effects.is_empty() {
            return;
        }
        for job in &effects.cancelled {
            self.publish(job);
        }
        if !effects.ready_queues.is_empty() {
            self.inner.wake_dispatcher.notify_one();
        }
        for queue in &effects.ready_queues {
            self.tell_ready(queue);
        }
        if let Some(due) = effects.next_due {
            self.schedule_wake(due);
        }
        for batch in &effects.finished_batches {
            tracing::debug!(batch_id = %batch.id, "batch finished");
            self.inner.waiters.wake(batch.id.as_uuid());
        }
        if !effects.finished_batches.is_empty() {
            self.inner.wake_webhooks.notify_one();
            self.publish_finished_batches(effects.finished_batches);
        }
        for id in &effects.stop {
            self.stop_running(*id, STOP_CANCEL);
        }
        self.tell_stop(effects.stop);
    }

    /// Wakes the long-polls of jobs a rescue ended, and acts on its effects.
    fn rescued(&self, rescued: &[Rescued], effects: Effects) {
        for job in rescued.iter().filter(|job| job.state.is_terminal()) {
            self.inner.waiters.wake(job.id.as_uuid());
        }
        if rescued.iter().any(|job| job.state.is_terminal()) {
            // A rescue may end a job with a callback.
            self.inner.wake_webhooks.notify_one();
        }
        if !rescued.is_empty() {
            // Rescues are rare: read the jobs back for their events rather
            // than widen what every rescue returns.
            let ids: Vec<(String, JobId)> = rescued
                .iter()
                .map(|job| (job.tenant.clone(), job.id))
                .collect();
            let engine = self.clone();
            tokio::spawn(async move {
                for (tenant, id) in ids {
                    if let Ok(Some(job)) = engine.inner.store.get_job(&tenant, id).await {
                        engine.inner.events.publish(
                            EventKind::for_state(job.status),
                            Subject::Job(job_summary(&job)),
                        );
                    }
                }
            });
        }
        self.apply(effects);
    }

    /// `at` is the pointer of the submitted job (empty for a single job), for
    /// errors that name a field.
    fn rejection_error(&self, rejection: SubmitRejection, at: &str) -> EngineError {
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

/// One line per job that ends other than by succeeding: failed is a
/// warning (someone may need to act), cancelled is information.
fn log_end(job: &Job) {
    let error_code = job.error.as_ref().map(|error| error.code.as_str());
    match job.status {
        JobState::Failed => tracing::warn!(
            job_id = %job.id, kind = %job.kind, queue = %job.queue, attempt = job.attempt,
            error_code, "job failed"
        ),
        JobState::Cancelled => tracing::info!(
            job_id = %job.id, kind = %job.kind, queue = %job.queue, attempt = job.attempt,
            error_code, "job cancelled"
        ),
        _ => {}
    }
}
