//! The dispatcher and the worker pool: claiming queued jobs into free slots
//! and running each attempt under its timeout and cancellation token.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use std::panic::AssertUnwindSafe;

use async_trait::async_trait;
use futures::FutureExt;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use rand::Rng;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{Engine, RunningJob, STOP_CANCEL, STOP_SHUTDOWN};
use crate::domain::{ErrorInfo, Job, JobId, JobState, Progress, Timestamp, TraceContext};
use crate::kinds::{DependencyResult, JobContext, JobFailure, ProgressSink, Secrets};
use crate::notify::{EventHub, EventKind, JobSummary, Subject, job_summary};
use crate::store::{AttemptOutcome, Claimed, Completion, CompletionResult, JobStore, Refill};
use crate::telemetry::metrics::{self, AttemptEnd};

/// How long an attempt's outcome is retried while the store refuses it. The
/// job stays this process's meanwhile (its slot taken, its lease renewed), so
/// an outage shorter than this ends with the true outcome stored within
/// [`COMPLETE_PAUSE_MAX`] of the store's return, and nothing runs twice.
/// After it the job is let go: its lease lapses and rescue takes it back
/// (retried or failed as `lease_expired`), so it is never left `running`.
const COMPLETE_PATIENCE: Duration = Duration::from_secs(60);
/// Longest pause between two tries at storing an outcome.
const COMPLETE_PAUSE_MAX: Duration = Duration::from_secs(1);

impl Engine {
    /// Claims jobs into free slots whenever woken: by a submission, a job
    /// finishing, a queue change, the promoter, or the fallback poll.
    pub(super) async fn dispatch_loop(self) {
        let stopping = self.inner.stopping.clone();
        loop {
            // (queue, free slots, adaptive)
            let wanted: Vec<(String, u32, bool)> = self
                .read_queues()
                .values()
                .filter(|q| !q.config.paused && q.running < q.limit())
                .map(|q| {
                    let adaptive = q.limiter.is_some();
                    (q.config.name.clone(), q.limit() - q.running, adaptive)
                })
                .collect();
            // Cleared before the claims: one that passes over a limited job
            // sets it again.
            self.inner
                .next_eligible_ms
                .store(i64::MAX, Ordering::Release);
            if !wanted.is_empty() {
                let now = Timestamp::now();
                let lease_until = self.lease_from(now);
                let claims = wanted.iter().map(|(queue, free, _)| {
                    self.inner.store.claim_ready(
                        queue,
                        *free,
                        &self.inner.instance_id,
                        lease_until,
                        now,
                    )
                });
                // Claims of all queues go out together and share one commit.
                for (result, (queue, free, adaptive)) in futures::future::join_all(claims)
                    .await
                    .into_iter()
                    .zip(&wanted)
                {
                    match result {
                        Ok(claimed) => {
                            // Only an adaptive limit reads what a claim took.
                            if *adaptive {
                                self.claimed_for(queue, claimed.jobs.len(), *free);
                            }
                            if let Some(at) = claimed.next_eligible_at {
                                self.inner
                                    .next_eligible_ms
                                    .fetch_min(at.as_millis(), Ordering::AcqRel);
                            }
                            for job in claimed.jobs {
                                self.start_attempt(job);
                            }
                        }
                        Err(error) => {
                            tracing::error!(%error, queue = %queue, "claiming jobs failed");
                        }
                    }
                }
            }
            // A rate-limited job is claimed the moment its key has budget
            // again, not at the next poll.
            let eligible_in = Duration::from_millis(
                self.inner
                    .next_eligible_ms
                    .load(Ordering::Acquire)
                    .saturating_sub(Timestamp::now().as_millis())
                    .max(0) as u64,
            );
            tokio::select! {
                _ = self.inner.wake_dispatcher.notified() => {}
                _ = tokio::time::sleep(self.inner.settings.poll_interval.min(eligible_in)) => {}
                _ = stopping.cancelled() => break,
            }
        }
    }

    /// Starts `job` in a slot of its queue not yet taken.
    fn start_attempt(&self, job: Job) {
        if let Some(queue) = self.write_queues().get_mut(&job.queue) {
            queue.running += 1;
        }
        self.run_attempt(job);
    }

    /// Starts `job`, its slot already counted in its queue's `running`.
    pub(super) fn run_attempt(&self, job: Job) {
        let token = CancellationToken::new();
        let stop = Arc::new(AtomicU8::new(super::STOP_NONE));
        let began = std::time::Instant::now();
        if let Some(queue) = self.write_queues().get_mut(&job.queue) {
            queue.drain.record(1);
            if let Some(limiter) = queue.limiter.as_mut() {
                limiter.started(began);
            }
        }
        if let Ok(mut running) = self.inner.running.lock() {
            running.insert(
                job.id,
                RunningJob {
                    token: token.clone(),
                    stop: stop.clone(),
                },
            );
        }
        if self.inner.shared.is_some() && job.attempt == 1 && job.ready_since_creation() {
            // Admitted straight to `queued` (no delay, no dependency to wait
            // for), so the admitting instance published `job.queued`; it may
            // not have reached this one yet. Published again here, it comes
            // before `job.started`; the hub keeps whichever copy is first.
            let mut queued = job_summary(&job);
            queued.status = JobState::Queued;
            queued.attempt = 0;
            queued.progress = None;
            self.inner.events.publish_admission(queued);
        }
        self.publish(&job);
        let waited = self.inner.ready_clock.waited(&job);
        metrics::attempt_started(&job.queue, &job.kind, waited);
        // Each attempt is a span under the submission's trace (retries
        // too: siblings under the same parent), or the root of its own.
        let stored = job.trace_context();
        let tracer = &self.inner.settings.tracer;
        let mut span = tracer.start(SpanKind::Consumer, stored.as_ref(), || {
            (
                format!("run {}", job.kind),
                vec![
                    KeyValue::new("messaging.system", "spool"),
                    KeyValue::new("messaging.operation.type", "process"),
                    KeyValue::new("messaging.destination.name", job.queue.clone()),
                    KeyValue::new("messaging.message.id", job.id.to_string()),
                    KeyValue::new("spool.job.kind", job.kind.clone()),
                    KeyValue::new("spool.job.attempt", i64::from(job.attempt)),
                ],
            )
        });
        // Sent on (`traceparent` of `http`, `TRACEPARENT` of `exec`) only
        // within a trace someone follows: one the submission brought, or
        // one this service exports.
        let onward = (stored.is_some() || tracer.is_exporting()).then(|| span.context().clone());
        let log_span = tracing::info_span!(
            "attempt",
            job_id = %job.id,
            attempt = job.attempt,
            trace_id = %span.trace_id(),
        );
        let engine = self.clone();
        let attempt = async move {
            // What the attempt produces is stored and shown: it must not
            // repeat a secret value of the payload (an echoed header).
            let secrets = engine.inner.kinds.secrets(&job.kind, &job.payload);
            let outcome = engine.execute(&job, token, &stop, &secrets, onward).await;
            let end = attempt_end(&outcome);
            metrics::attempt_finished(&job.queue, &job.kind, end, began.elapsed());
            let outcome = masked(outcome, &secrets);
            span.set_attribute(KeyValue::new("spool.job.outcome", end.as_str()));
            if let AttemptOutcome::Failed { error, .. } | AttemptOutcome::Cancelled(error) =
                &outcome
            {
                span.fail(format!("{}: {}", error.code, error.message));
            }
            engine.finish(job, outcome, began, end).await;
            drop(span);
        };
        self.inner.jobs.spawn(attempt.instrument(log_span));
    }

    /// Runs one attempt to its outcome. Never fails: every way an attempt can
    /// end is an `AttemptOutcome`.
    async fn execute(
        &self,
        job: &Job,
        token: CancellationToken,
        stop: &AtomicU8,
        secrets: &Secrets,
        trace: Option<TraceContext>,
    ) -> AttemptOutcome {
        let Some(handler) = self.inner.kinds.get(&job.kind) else {
            return self.failure(
                job,
                JobFailure::permanent(
                    "unknown_kind",
                    format!("no handler for kind `{}`", job.kind),
                ),
            );
        };
        let progress = Arc::new(StoreProgress {
            store: self.inner.store.clone(),
            id: job.id,
            attempt: job.attempt,
            events: self.inner.events.clone(),
            summary: job_summary(job),
            secrets: secrets.clone(),
        });
        let dependencies = if job.depends_on.is_empty() {
            Vec::new()
        } else {
            match self.inner.store.dependency_results(&job.depends_on).await {
                Ok(results) => results
                    .into_iter()
                    .map(|(job_id, result)| DependencyResult { job_id, result })
                    .collect(),
                Err(error) => {
                    return self.failure(
                        job,
                        JobFailure::retryable(
                            "dependencies_unavailable",
                            format!("the dependencies' results could not be read: {error}"),
                        ),
                    );
                }
            }
        };
        let ctx = JobContext::new(
            job.id,
            job.attempt,
            job.payload.clone(),
            token.clone(),
            progress,
        )
        .with_dependencies(dependencies)
        .with_trace(trace);
        // Polled in this task; dropping it is the abort. A panic inside is
        // caught and fails the attempt instead of the worker.
        let mut run = std::pin::pin!(AssertUnwindSafe(handler.run(ctx)).catch_unwind());
        let timeout = Duration::from_millis(job.timeout_ms);

        let interrupted_by_timeout = tokio::select! {
            finished = &mut run => {
                // Held before the outcome is stored: the slot the outcome
                // frees must not go to another job of the same key first.
                if let Ok(Err(failure)) = &finished
                    && let Some(wait) = failure.retry_after()
                {
                    self.hold_rate_limit(job, wait).await;
                }
                return self.outcome_of(job, finished, stop);
            }
            _ = tokio::time::sleep(timeout) => true,
            _ = token.cancelled() => false,
        };
        token.cancel();
        let finished = tokio::time::timeout(self.inner.settings.cancel_grace, &mut run).await;
        if finished.is_err() {
            tracing::warn!(job_id = %job.id, "handler ignored its cancellation; aborted");
        }
        match stop.load(Ordering::Acquire) {
            STOP_SHUTDOWN => AttemptOutcome::Released,
            STOP_CANCEL => match finished {
                // It finished its work after all: report what really happened.
                Ok(Ok(Ok(result))) => self.success(job, result),
                _ => AttemptOutcome::Cancelled(cancel_error(job)),
            },
            _ if interrupted_by_timeout => self.failure(
                job,
                JobFailure::retryable(
                    "timeout",
                    format!("the attempt exceeded its timeout of {} ms", job.timeout_ms),
                ),
            ),
            _ => AttemptOutcome::Cancelled(cancel_error(job)),
        }
    }

    fn outcome_of(
        &self,
        job: &Job,
        finished: Result<Result<Value, JobFailure>, Box<dyn std::any::Any + Send>>,
        stop: &AtomicU8,
    ) -> AttemptOutcome {
        match finished {
            Ok(Ok(result)) => self.success(job, result),
            Ok(Err(_)) if stop.load(Ordering::Acquire) == STOP_CANCEL => {
                AttemptOutcome::Cancelled(cancel_error(job))
            }
            Ok(Err(_)) if stop.load(Ordering::Acquire) == STOP_SHUTDOWN => AttemptOutcome::Released,
            Ok(Err(failure)) => self.failure(job, failure),
            Err(_panic) => self.failure(
                job,
                JobFailure::retryable("panicked", "the handler panicked"),
            ),
        }
    }

    fn success(&self, job: &Job, result: Value) -> AttemptOutcome {
        let size = serde_json::to_vec(&result).map_or(usize::MAX, |bytes| bytes.len());
        if size > self.inner.settings.max_result_bytes {
            return self.failure(
                job,
                JobFailure::permanent(
                    "result_too_large",
                    format!(
                        "the result is {size} bytes; at most {} are kept",
                        self.inner.settings.max_result_bytes
                    ),
                ),
            );
        }
        AttemptOutcome::Succeeded(result)
    }

    /// A failed attempt: retried after a jittered backoff while attempts
    /// remain and the failure is retryable, otherwise final.
    fn failure(&self, job: &Job, failure: JobFailure) -> AttemptOutcome {
        let now = Timestamp::now();
        let error = ErrorInfo {
            code: failure.code().to_owned(),
            message: failure.message().to_owned(),
            attempt: Some(job.attempt),
            at: now,
        };
        let retry_at = (failure.is_retryable() && job.attempt < job.max_attempts).then(|| {
            let ceiling = job.backoff.ceiling_ms(job.attempt);
            let delay = rand::rng().random_range(0..=ceiling);
            // Never sooner than the failure asked (a `Retry-After`).
            let asked = failure
                .retry_after()
                .map_or(0, |wait| wait.as_millis() as u64);
            now.plus_ms(delay.max(asked) as i64)
        });
        AttemptOutcome::Failed { error, retry_at }
    }

    /// Closes the job's rate-limit key (if it has one) for `wait`: the
    /// server it calls asked every caller to wait, not this job alone.
    async fn hold_rate_limit(&self, job: &Job, wait: Duration) {
        let Some(limit) = &job.rate_limit else {
            return;
        };
        let key = (limit.name.clone(), limit.stored_key().to_owned());
        let until = Timestamp::now().plus_ms(wait.as_millis() as i64);
        match self.inner.store.hold_limit_key(&key, until).await {
            Ok(()) => {
                metrics::rate_limit_held();
                tracing::info!(job_id = %job.id, rate_limit = %limit.name, wait_ms = wait.as_millis() as u64, "a Retry-After holds the job's rate-limit key");
            }
            Err(error) => {
                tracing::warn!(job_id = %job.id, rate_limit = %limit.name, %error, "holding a rate-limit key failed");
            }
        }
    }

    /// Stores the outcome (fenced by attempt and lease), hands the slot to
    /// the next job the same write claimed or frees it, and tells whoever
    /// waits.
    /// Stores an attempt's outcome (`end`; it began at `began`), refilling
    /// its slot in the same write where that is done, and acts on it.
    async fn finish(
        &self,
        job: Job,
        outcome: AttemptOutcome,
        began: std::time::Instant,
        end: AttemptEnd,
    ) {
        let completion = Completion {
            id: job.id,
            attempt: job.attempt,
            lease_owner: self.inner.instance_id.clone(),
            outcome,
            at: Timestamp::now(),
        };
        let refill = self.refill(&job.queue);
        let refilled = refill.is_some();
        let (stored, claimed) = self.store_outcome(&completion, refill).await;
        if let Ok(mut running) = self.inner.running.lock() {
            running.remove(&job.id);
        }
        if let Some(at) = claimed.next_eligible_at {
            self.inner
                .next_eligible_ms
                .fetch_min(at.as_millis(), Ordering::AcqRel);
        }
        let next = claimed.jobs.into_iter().next();
        let mut grew = false;
        if let Some(queue) = self.write_queues().get_mut(&job.queue) {
            if next.is_none() {
                queue.running = queue.running.saturating_sub(1);
            }
            // A refill that found a job: jobs were waiting for this slot.
            if refilled {
                queue.saturated = next.is_some();
            }
            grew = queue.adapt(&job.queue, began, end);
        }
        if grew {
            self.inner.wake_dispatcher.notify_one();
        }
        // Even when the slot went on to the next job: this end may have
        // freed a concurrency key another queue's job waits for.
        self.inner.wake_dispatcher.notify_one();
        match stored {
            Some(CompletionResult::Applied { job: done, effects }) => {
                tracing::debug!(job_id = %done.id, attempt = done.attempt, status = %done.status, "attempt finished");
                match done.status {
                    JobState::Scheduled => self.schedule_wake(done.run_at),
                    // Handed back at shutdown: another instance may run it now.
                    JobState::Queued => self.tell_ready(&done.queue),
                    _ => {}
                }
                self.publish(&done);
                self.apply(effects);
            }
            Some(CompletionResult::Fenced) => {
                tracing::warn!(job_id = %job.id, attempt = job.attempt, "outcome discarded: the job's lease was taken over");
            }
            // Logged by `store_outcome`.
            None => {}
        }
        // After the end's events: a job's successor in its slot starts after it ended.
        if let Some(next) = next {
            self.run_attempt(next);
        }
    }

    /// When a lease taken at `now` lapses.
    pub(super) fn lease_from(&self, now: Timestamp) -> Timestamp {
        now.plus_ms(self.inner.settings.lease_ttl.as_millis() as i64)
    }

    /// Stores an outcome (and makes `refill`'s claim), retrying while the
    /// store refuses it, for at most [`COMPLETE_PATIENCE`] or until the end
    /// of shutdown. `None`: given up.
    async fn store_outcome(
        &self,
        completion: &Completion,
        refill: Option<Refill>,
    ) -> (Option<CompletionResult>, Claimed) {
        let started = tokio::time::Instant::now();
        let stopped = self.inner.stopped.clone();
        let mut pause = Duration::from_millis(50);
        let mut failures = 0u32;
        loop {
            let stored = match &refill {
                Some(refill) => {
                    self.inner
                        .store
                        .complete_and_refill(completion.clone(), refill.clone())
                        .await
                }
                None => (self.inner.store.complete(completion.clone()).await)
                    .map(|result| (result, Claimed::default())),
            };
            let error = match stored {
                Ok((result, claimed)) => {
                    if failures > 0 {
                        tracing::info!(job_id = %completion.id, attempt = completion.attempt, tries = failures + 1, waited_ms = started.elapsed().as_millis() as u64, "stored an attempt's outcome after the store refused it");
                    }
                    return (Some(result), claimed);
                }
                Err(error) => error,
            };
            failures += 1;
            if failures == 1 {
                tracing::warn!(job_id = %completion.id, attempt = completion.attempt, %error, "storing an attempt's outcome failed; retrying");
            }
            if started.elapsed() >= COMPLETE_PATIENCE || stopped.is_cancelled() {
                tracing::error!(job_id = %completion.id, attempt = completion.attempt, tries = failures, %error, "could not store the outcome; its lease will lapse and the job will be rescued");
                return (None, Claimed::default());
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stopped.cancelled() => {}
            }
            pause = (pause * 2).min(COMPLETE_PAUSE_MAX);
        }
    }
}

/// `outcome` with the payload's secret values masked in its result or error
/// (masking never makes a text longer, so the result still fits its cap).
/// How an attempt ended, as `spool_job_attempts_total` counts it.
fn attempt_end(outcome: &AttemptOutcome) -> AttemptEnd {
    match outcome {
        AttemptOutcome::Succeeded(_) => AttemptEnd::Succeeded,
        AttemptOutcome::Failed {
            retry_at: Some(_), ..
        } => AttemptEnd::Retried,
        AttemptOutcome::Failed { retry_at: None, .. } => AttemptEnd::Failed,
        AttemptOutcome::Cancelled(_) => AttemptEnd::Cancelled,
        AttemptOutcome::Released => AttemptEnd::Released,
    }
}

fn masked(outcome: AttemptOutcome, secrets: &Secrets) -> AttemptOutcome {
    if secrets.is_empty() {
        return outcome;
    }
    let mask_error = |mut error: ErrorInfo| {
        error.message = secrets.mask_text(&error.message).into_owned();
        error
    };
    match outcome {
        AttemptOutcome::Succeeded(mut result) => {
            secrets.mask_value(&mut result);
            AttemptOutcome::Succeeded(result)
        }
        AttemptOutcome::Failed { error, retry_at } => AttemptOutcome::Failed {
            error: mask_error(error),
            retry_at,
        },
        AttemptOutcome::Cancelled(error) => AttemptOutcome::Cancelled(mask_error(error)),
        AttemptOutcome::Released => AttemptOutcome::Released,
    }
}

fn cancel_error(job: &Job) -> ErrorInfo {
    ErrorInfo {
        code: "cancelled".into(),
        message: "cancelled on request".into(),
        attempt: Some(job.attempt),
        at: Timestamp::now(),
    }
}

/// Progress reports of one attempt, written through the store (fenced by attempt).
struct StoreProgress {
    store: Arc<dyn JobStore>,
    id: JobId,
    attempt: u32,
    events: EventHub,
    /// The running job, for `job.progress` events.
    summary: JobSummary,
    /// Masked in progress messages.
    secrets: Secrets,
}

#[async_trait]
impl ProgressSink for StoreProgress {
    async fn report(&self, mut progress: Progress) {
        if let Some(message) = &mut progress.message
            && let std::borrow::Cow::Owned(masked) = self.secrets.mask_text(message)
        {
            *message = masked;
        }
        if let Err(error) = self
            .store
            .report_progress(self.id, self.attempt, progress.clone())
            .await
        {
            tracing::warn!(job_id = %self.id, %error, "storing progress failed");
            return;
        }
        let mut summary = self.summary.clone();
        summary.progress = Some(progress);
        self.events
            .publish(EventKind::Progress, Subject::Job(summary));
    }
}
