//! Admission: validating a submission against kinds and queues, storing it,
//! and waking whoever must act on it.

use std::sync::atomic::Ordering;

use super::{Engine, EngineError};
use crate::domain::{
    FieldError, Job, JobId, JobSpec, JobState, SpecContext, Timestamp, TraceContext,
};
use crate::store::{IdempotencyKey, StoredResponse, Submission, SubmitOutcome};
use crate::telemetry::metrics;

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
        if !self.inner.kinds.contains(&spec.kind) {
            return Err(EngineError::UnknownKind {
                kind: spec.kind,
                known: self.inner.kinds.names(),
            });
        }
        let queue_name = spec
            .queue
            .clone()
            .unwrap_or_else(|| crate::domain::QueueConfig::DEFAULT_NAME.to_owned());
        self.learn_queues(std::iter::once(queue_name.as_str()))
            .await;
        let Some(queue) = self.queue_config(&queue_name) else {
            return Err(EngineError::UnknownQueue {
                queue: queue_name,
                known: self.queue_names(),
            });
        };
        let mut job = spec
            .validate(
                tenant,
                &queue,
                now,
                SpecContext {
                    id: JobId::new(),
                    batch: None,
                },
            )
            .map_err(EngineError::Validation)?;
        job.trace = trace;
        let mut payload_errors: Vec<FieldError> =
            self.inner
                .kinds
                .validate_payload(&job.kind, &job.payload, "/payload");
        payload_errors
            .extend(self.check_callback(job.callback_url.as_deref(), "/callback_url".into()));
        if !payload_errors.is_empty() {
            return Err(EngineError::Validation(payload_errors));
        }

        let submission = Submission {
            tenant: tenant.to_owned(),
            jobs: vec![job],
            batch: None,
            idempotency,
            redactor: self.inner.kinds.redactor(),
            limit_pending: self.limits_pending(tenant),
        };
        let outcome = self
            .inner
            .store
            .submit(submission)
            .await?
            .map_err(|rejection| self.rejection_error(rejection, ""))?;
        match outcome {
            SubmitOutcome::Created { jobs, effects, .. } => {
                self.apply(effects);
                let mut jobs = jobs.into_iter();
                let job = jobs.next().ok_or_else(|| {
                    EngineError::Storage(crate::store::StoreError::Corrupt(
                        "a submission stored no job".into(),
                    ))
                })?;
                self.admitted(&job, queue.paused);
                Ok(Submitted::Created(self.shown(job)))
            }
            SubmitOutcome::Existing(job) => Ok(Submitted::Existing(self.shown(*job))),
            SubmitOutcome::Replayed(response) => Ok(Submitted::Replayed(response)),
        }
    }

    /// Wakes the dispatcher for a ready job (unless its queue is paused: the
    /// unpause wakes it), or the promoter for one that must wait, if it is
    /// due before anything it knows of.
    pub(super) fn admitted(&self, job: &Job, paused: bool) {
        metrics::submitted(&job.queue, &job.kind, 1);
        if job.status == JobState::Queued {
            self.inner.ready_clock.ready([job.id]);
        }
        self.publish_stored(job);
        match job.status {
            JobState::Queued if !paused => {
                self.inner.wake_dispatcher.notify_one();
                self.tell_ready(&job.queue);
            }
            JobState::Scheduled => self.schedule_wake(job.run_at),
            _ => {}
        }
    }

    pub(super) fn schedule_wake(&self, run_at: Timestamp) {
        let at = run_at.as_millis();
        let next = &self.inner.next_due_ms;
        let mut known = next.load(Ordering::Acquire);
        loop {
            if known <= at {
                return;
            }
            match next.compare_exchange(known, at, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(actual) => known = actual,
            }
        }
        self.inner.wake_promoter.notify_one();
    }
}
