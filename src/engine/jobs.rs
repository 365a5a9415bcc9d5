//! One job: submitting, reading, listing, cancelling and retrying jobs.

use super::validation::SpecCheck;
use super::{Engine, EngineError, STOP_CANCEL};
use crate::domain::{
    Job, JobId, JobSpec, JobState, NewBatch, NewJob, QueueConfig, SpecContext, Timestamp,
    TraceContext,
};
use crate::store::{
    CancelOutcome, Claimed, IdempotencyKey, JobFilter, RetryOutcome, StoredResponse, Submission,
    SubmitOutcome, WebhookOwner,
};

/// What a successful submission returns.
#[derive(Debug)]
pub enum Submitted {
    /// Stored now (202).
    Created(Job),
    /// `on_conflict: existing`: the job holding the key (200).
    Existing(Job),
    /// A repeat of an earlier request with the same `Idempotency-Key`.
    Replayed(StoredResponse),
}

/// What cancelling did.
#[derive(Debug)]
pub enum Cancelled {
    /// The job was waiting: it is cancelled now.
    Now(Job),
    /// The job is running: its runner was told to stop.
    Requested(Job),
}

impl Engine {
    /// Validates and durably stores one job.
    pub async fn submit_job(
        &self,
        tenant: &str,
        spec: JobSpec,
        idempotency: Option<IdempotencyKey>,
        trace: Option<TraceContext>,
    ) -> Result<Submitted, EngineError> {
        if !self.is_admitting() {
            return Err(EngineError::ShuttingDown);
        }
        let now = Timestamp::now();
        let queue_name = spec.queue.as_deref().unwrap_or(QueueConfig::DEFAULT_NAME);
        self.learn_queues(std::iter::once(queue_name)).await;
        let ctx = SpecContext {
            id: JobId::new(),
            batch: None,
        };
        let mut check = SpecCheck::new(self, tenant, now, trace);
        let (job, queue) = check
            .check(spec, ctx)
            .map_err(|problems| self.refusal(problems))?;
        if job.rate_limit.is_some() {
            let unknown = check.unknown_limits().await?;
            if !unknown.is_empty() {
                return Err(EngineError::Validation(unknown));
            }
        }

        // A job alone in its queue is claimed by its own admission's write
        // when the queue has a slot free here: one commit instead of two,
        // and no round through the dispatcher (`JobStore::submit_and_claim`).
        let paused = queue.paused;
        let slot = (job.state == JobState::Queued
            && job.concurrency.is_none()
            && job.rate_limit.is_none())
        .then(|| self.slot_for_submission(&job.queue))
        .flatten();
        let Some(slot) = slot else {
            let outcome = self
                .store_submission(tenant, vec![job], None, idempotency)
                .await?;
            return self.submitted(outcome, Claimed::default(), paused, None);
        };
        // Spawned: the slot is filled or given back, and a claimed job
        // started, even when the request is dropped meanwhile (the client
        // left, the request timed out).
        let engine = self.clone();
        let submission = self.submission(tenant, vec![job], None, idempotency);
        let task = tokio::spawn(async move {
            let queue = slot.queue.clone();
            let stored = engine
                .inner
                .store
                .submit_and_claim(submission, slot, &engine.inner.instance_id)
                .await;
            match stored {
                Ok((Ok(outcome), claimed)) => {
                    engine.submitted(outcome, claimed, paused, Some(&queue))
                }
                Ok((Err(rejection), claimed)) => {
                    engine.fill_submitters_slot(&queue, claimed);
                    Err(engine.rejection_error(rejection, ""))
                }
                Err(error) => {
                    engine.fill_submitters_slot(&queue, Claimed::default());
                    Err(error.into())
                }
            }
        });
        task.await.unwrap_or_else(|error| {
            Err(EngineError::Storage(crate::store::StoreError::Corrupt(
                format!("a submission's task failed: {error}"),
            )))
        })
    }

    /// What a stored single-job submission answers, its events published
    /// first. With `slot` (its queue), the slot the submitter took goes to
    /// what the admission's write claimed, or back, after those events: a
    /// job's `started` follows its `queued`.
    fn submitted(
        &self,
        outcome: SubmitOutcome,
        claimed: Claimed,
        paused: bool,
        slot: Option<&str>,
    ) -> Result<Submitted, EngineError> {
        let submitted = match outcome {
            SubmitOutcome::Created { jobs, effects, .. } => {
                self.apply(effects);
                let job = jobs.into_iter().next();
                if let Some(job) = &job {
                    // The dispatcher is woken only while the new job waits.
                    let started_now = claimed.jobs.iter().any(|taken| taken.id == job.id);
                    self.admitted(job, paused || started_now);
                }
                job.map(|job| Submitted::Created(self.shown(job)))
            }
            SubmitOutcome::Existing(job) => Some(Submitted::Existing(self.shown(*job))),
            SubmitOutcome::Replayed(response) => Some(Submitted::Replayed(response)),
        };
        if let Some(queue) = slot {
            self.fill_submitters_slot(queue, claimed);
        }
        submitted.ok_or_else(|| {
            EngineError::Storage(crate::store::StoreError::Corrupt(
                "a submission stored no job".into(),
            ))
        })
    }

    /// Stores a single job, or a batch with its jobs, all or nothing: what
    /// only the store can check (capacity, quotas, keys, dependencies) it
    /// checks in the same transaction, and its refusals become errors here.
    pub(super) async fn store_submission(
        &self,
        tenant: &str,
        jobs: Vec<NewJob>,
        batch: Option<NewBatch>,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<SubmitOutcome, EngineError> {
        let at = if batch.is_some() { "/jobs" } else { "" };
        let submission = self.submission(tenant, jobs, batch, idempotency);
        self.inner
            .store
            .submit(submission)
            .await?
            .map_err(|rejection| self.rejection_error(rejection, at))
    }

    fn submission(
        &self,
        tenant: &str,
        jobs: Vec<NewJob>,
        batch: Option<NewBatch>,
        idempotency: Option<IdempotencyKey>,
    ) -> Submission {
        Submission {
            tenant: tenant.to_owned(),
            jobs,
            batch,
            idempotency,
            redactor: self.inner.kinds.redactor(),
            limit_pending: self.limits_pending(tenant),
        }
    }

    /// The response remembered for `key` (its request's fingerprint and
    /// the response), for a replay the engine is not asked to admit: a
    /// rate-limited client repeating a request that was accepted.
    pub async fn remembered_response(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<(String, StoredResponse)>, EngineError> {
        Ok(self.inner.store.idempotent_response(tenant, key).await?)
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
        if job.status == JobState::Queued {
            job.position = Some(self.inner.store.queue_position(&job).await?);
        }
        self.with_waiting_reasons(std::slice::from_mut(&mut job))
            .await?;
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
        self.with_waiting_reasons(&mut jobs).await?;
        Ok(jobs)
    }

    /// A job as it leaves the engine: its kind's secret payload values
    /// masked (the store keeps them: the job runs with them). Every job the
    /// engine hands out goes through here; the bodies the store and the
    /// webhook deliverer keep go through [`KindRegistry::redactor`].
    pub(super) fn shown(&self, mut job: Job) -> Job {
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
                if job.status == JobState::Queued {
                    self.tell_ready(&job.queue);
                }
                Ok(self.shown(job))
            }
        }
    }
}
