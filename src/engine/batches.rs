//! Batches: submitting many jobs at once, reading one and its results, cancelling it.

use std::time::Duration;

use super::validation::SpecCheck;
use super::waiting::results_waiter;
use super::{Engine, EngineError};
use crate::domain::{
    Batch, BatchId, BatchResult, BatchRetryScope, BatchSpec, FieldError, JobId, QueueConfig,
    SpecContext, Timestamp, TraceContext,
};
use crate::store::{
    BatchCancelOutcome, BatchRetryOutcome, IdempotencyKey, StoredResponse, SubmitOutcome,
    WebhookOwner,
};

/// Field errors reported for one batch at most: enough to fix a generator,
/// not a megabyte of repeats.
const MAX_REPORTED_ERRORS: usize = 100;

/// What a successful batch submission returns.
#[derive(Debug)]
pub enum BatchSubmitted {
    /// Stored now (202).
    Created(Box<Batch>),
    /// A repeat of an earlier request with the same `Idempotency-Key`.
    Replayed(StoredResponse),
}

impl Engine {
    /// Validates every job of the batch and stores them all, or none.
    pub async fn submit_batch(
        &self,
        tenant: &str,
        spec: BatchSpec,
        idempotency: Option<IdempotencyKey>,
        trace: Option<TraceContext>,
    ) -> Result<BatchSubmitted, EngineError> {
        if !self.is_admitting() {
            return Err(EngineError::ShuttingDown);
        }
        let max = self.inner.settings.max_batch_size;
        if spec.jobs.len() > max {
            return Err(EngineError::BatchTooLarge {
                size: spec.jobs.len(),
                max,
            });
        }
        self.learn_queues(
            spec.jobs
                .iter()
                .map(|job| job.queue.as_deref().unwrap_or(QueueConfig::DEFAULT_NAME)),
        )
        .await;
        let now = Timestamp::now();
        let mut errors = Vec::new();
        let batch = match spec.validate_envelope(tenant, now) {
            Ok(batch) => {
                errors.extend(
                    self.check_callback(batch.callback_url.as_deref(), "/callback_url".into()),
                );
                Some(batch)
            }
            Err(mut envelope) => {
                errors.append(&mut envelope);
                None
            }
        };
        let batch_id = batch.as_ref().map_or_else(BatchId::new, |batch| batch.id);
        let ids: Vec<JobId> = spec.jobs.iter().map(|_| JobId::new()).collect();
        // The batch's window is a concurrency key its jobs share.
        let window = batch
            .as_ref()
            .and_then(|batch| batch.max_in_flight.map(|limit| (batch.window_key(), limit)));
        let mut check = SpecCheck::new(self, tenant, now, trace);
        let mut jobs = Vec::with_capacity(spec.jobs.len());
        for (index, job) in spec.jobs.into_iter().enumerate() {
            let ctx = SpecContext {
                id: ids[index],
                batch: Some((batch_id, index, &ids)),
            };
            match check.check(job, ctx) {
                Ok((mut job, _)) => match &window {
                    Some(_) if job.concurrency.is_some() => errors.push(FieldError::new(
                        format!("/jobs/{index}/concurrency_key"),
                        "a job of a batch with max_in_flight runs in the batch's window: \
                         it cannot have a concurrency_key of its own",
                    )),
                    Some(window) => {
                        job.concurrency = Some(window.clone());
                        jobs.push(job);
                    }
                    None => jobs.push(job),
                },
                Err(problems) => {
                    errors.extend(problems.into_iter().map(|problem| problem.into_field(self)))
                }
            }
        }
        errors.extend(check.unknown_limits().await?);
        let Some(batch) = batch.filter(|_| errors.is_empty()) else {
            errors.truncate(MAX_REPORTED_ERRORS);
            return Err(EngineError::Validation(errors));
        };

        match self
            .store_submission(tenant, jobs, Some(batch), idempotency)
            .await?
        {
            SubmitOutcome::Created {
                jobs,
                batch,
                effects,
            } => {
                self.apply(effects);
                self.batch_admitted(&jobs);
                let batch = batch.ok_or_else(|| {
                    EngineError::Storage(crate::store::StoreError::Corrupt(
                        "a batch submission stored no batch".into(),
                    ))
                })?;
                Ok(BatchSubmitted::Created(batch))
            }
            SubmitOutcome::Existing(job) => {
                Err(EngineError::Storage(crate::store::StoreError::Corrupt(
                    format!("a batch was answered with the holder {} of a key", job.id),
                )))
            }
            SubmitOutcome::Replayed(response) => Ok(BatchSubmitted::Replayed(response)),
        }
    }

    /// A batch; with `wait`, not before it finished or `wait` passed.
    pub async fn get_batch(
        &self,
        tenant: &str,
        id: BatchId,
        wait: Duration,
    ) -> Result<Batch, EngineError> {
        let read = || async {
            let mut batch = self
                .inner
                .store
                .get_batch(tenant, id)
                .await?
                .ok_or(EngineError::NotFound("batch"))?;
            if batch.callback_url.is_some() {
                batch.webhook = self
                    .inner
                    .store
                    .latest_webhook(tenant, WebhookOwner::Batch(id))
                    .await?;
                if batch.webhook.is_some() && batch.finished_at.is_none() {
                    // Two reads: a batch that finished in between showed
                    // `running` beside its delivered `batch.finished`
                    // webhook. The webhook's row was written with the end,
                    // so the batch read again has finished.
                    let webhook = batch.webhook.take();
                    batch = self
                        .inner
                        .store
                        .get_batch(tenant, id)
                        .await?
                        .ok_or(EngineError::NotFound("batch"))?;
                    // A re-run batch shows no webhook until it ends again.
                    batch.webhook = webhook.filter(|_| batch.finished_at.is_some());
                }
            }
            Ok(batch)
        };
        self.long_poll(id.as_uuid(), wait, read, |batch| {
            batch.finished_at.is_some()
        })
        .await
    }

    /// Finished jobs of a batch after the `after`-th, in finishing order,
    /// with the batch as it was just before they were read (so a batch seen
    /// finished has every result readable).
    ///
    /// With `wait`, answers as soon as there is a result after `after` (or
    /// the batch finished, or `wait` passed): woken by each end of one of
    /// its jobs.
    pub async fn batch_results(
        &self,
        tenant: &str,
        id: BatchId,
        after: u64,
        limit: u32,
        wait: Duration,
    ) -> Result<(Batch, Vec<BatchResult>), EngineError> {
        let read = || async {
            let batch = self
                .inner
                .store
                .get_batch(tenant, id)
                .await?
                .ok_or(EngineError::NotFound("batch"))?;
            let results = self.inner.store.batch_results(id, after, limit).await?;
            Ok((batch, results))
        };
        self.long_poll(results_waiter(id), wait, read, |(batch, results)| {
            !results.is_empty() || batch.finished_at.is_some()
        })
        .await
    }

    /// Re-runs a finished batch's jobs of `scope` (`POST /v1/batches/{id}/retry`).
    pub async fn retry_batch(
        &self,
        tenant: &str,
        id: BatchId,
        scope: BatchRetryScope,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<BatchSubmitted, EngineError> {
        if !self.is_admitting() {
            return Err(EngineError::ShuttingDown);
        }
        let outcome = self
            .inner
            .store
            .retry_batch(tenant, id, scope, idempotency, Timestamp::now())
            .await?;
        match outcome {
            BatchRetryOutcome::NotFound => Err(EngineError::NotFound("batch")),
            BatchRetryOutcome::Running(batch) => Err(EngineError::BatchRunning(batch)),
            BatchRetryOutcome::NothingToRetry(batch) => {
                Err(EngineError::BatchNothingToRetry(batch))
            }
            BatchRetryOutcome::DependencyFailed { job, dependency } => {
                Err(EngineError::DependencyFailed {
                    job: Box::new(self.shown(*job)),
                    dependency,
                })
            }
            BatchRetryOutcome::Rejected(rejection) => Err(self.rejection_error(rejection, "")),
            BatchRetryOutcome::Replayed(response) => Ok(BatchSubmitted::Replayed(response)),
            BatchRetryOutcome::Retried {
                batch,
                jobs,
                mut effects,
            } => {
                effects.retried_batches.push((*batch).clone());
                effects.reopened = jobs;
                self.apply(effects);
                Ok(BatchSubmitted::Created(batch))
            }
        }
    }

    /// Cancels every unfinished job of a batch.
    pub async fn cancel_batch(&self, tenant: &str, id: BatchId) -> Result<Batch, EngineError> {
        match self
            .inner
            .store
            .cancel_batch(tenant, id, Timestamp::now())
            .await?
        {
            BatchCancelOutcome::NotFound => Err(EngineError::NotFound("batch")),
            BatchCancelOutcome::AlreadyFinished(batch) => {
                Err(EngineError::BatchAlreadyFinished(Box::new(batch)))
            }
            BatchCancelOutcome::Cancelled(batch, effects) => {
                tracing::info!(batch_id = %id, cancelled_jobs = effects.cancelled.len(), stopping_jobs = effects.stop.len(), "batch cancelled");
                self.apply(effects);
                Ok(batch)
            }
        }
    }
}
