//! Acting on what a write set in motion: events, wake-ups and stops of running jobs.

use std::sync::atomic::Ordering;

use super::waiting::results_waiter;
use super::{Engine, STOP_CANCEL, STOP_NONE};
use crate::domain::{Job, JobId, JobState, Timestamp};
use crate::notify::{BatchSummary, EventKind, Subject, job_summary};
use crate::store::{Effects, FinishedBatch, Rescued};
use crate::telemetry::metrics;

/// Lowers `next` to `at`; true when `at` is earlier than what it held.
fn earlier(next: &std::sync::atomic::AtomicI64, at: Timestamp) -> bool {
    let at = at.as_millis();
    let mut known = next.load(Ordering::Acquire);
    loop {
        if known <= at {
            return false;
        }
        match next.compare_exchange(known, at, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(actual) => known = actual,
        }
    }
}

impl Engine {
    /// Wakes the dispatcher for a ready job (unless its queue is paused: the
    /// unpause wakes it), or the promoter for one that must wait, if it is
    /// due before anything it knows of.
    pub(super) fn admitted(&self, job: &Job, paused: bool) {
        metrics::submitted(&job.queue, &job.kind, 1);
        if job.status == JobState::Queued {
            self.inner.ready_clock.ready([job.id]);
        }
        self.publish_stored(job);
        if let Some(at) = job.expires_at {
            self.expiry_wake(at);
        }
        match job.status {
            JobState::Queued if !paused => {
                self.inner.wake_dispatcher.notify_one();
                self.tell_ready(&job.queue);
            }
            JobState::Scheduled => self.schedule_wake(job.run_at),
            _ => {}
        }
    }

    /// One wake-up of the dispatcher and the promoter for a whole batch.
    pub(super) fn batch_admitted(&self, jobs: &[Job]) {
        // Counted per run of jobs of one queue and kind (a batch's jobs
        // are usually all alike): one recorder call, not one per job.
        for run in jobs.chunk_by(|a, b| a.queue == b.queue && a.kind == b.kind) {
            metrics::submitted(&run[0].queue, &run[0].kind, run.len() as u64);
        }
        self.inner.ready_clock.ready(
            jobs.iter()
                .filter(|job| job.status == JobState::Queued)
                .map(|job| job.id),
        );
        let mut ready: Vec<&str> = Vec::new();
        let mut due: Option<Timestamp> = None;
        let mut expiry: Option<Timestamp> = None;
        for job in jobs {
            self.publish_stored(job);
            if let Some(at) = job.expires_at {
                expiry = Some(expiry.map_or(at, |first| first.min(at)));
            }
            match job.status {
                JobState::Queued if !ready.contains(&job.queue.as_str()) => {
                    ready.push(&job.queue);
                }
                JobState::Queued => {}
                JobState::Scheduled if job.depends_on.is_empty() => {
                    due = Some(due.map_or(job.run_at, |due| due.min(job.run_at)));
                }
                _ => {}
            }
        }
        if !ready.is_empty() {
            self.inner.wake_dispatcher.notify_one();
        }
        for queue in ready {
            self.tell_ready(queue);
        }
        if let Some(due) = due {
            self.schedule_wake(due);
        }
        if let Some(at) = expiry {
            self.expiry_wake(at);
        }
    }

    pub(super) fn schedule_wake(&self, run_at: Timestamp) {
        if earlier(&self.inner.next_due_ms, run_at) {
            self.inner.wake_promoter.notify_one();
        }
    }

    /// Wakes the expirer when `expires_at` comes before anything it knows of.
    pub(super) fn expiry_wake(&self, expires_at: Timestamp) {
        if earlier(&self.inner.next_expiry_ms, expires_at) {
            self.inner.wake_expirer.notify_one();
        }
    }

    pub(super) fn stop_running(&self, id: JobId, reason: u8) {
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
    pub(super) fn publish(&self, job: &Job) {
        if job.status.is_terminal() {
            // Every transition to an end passes here once, on the instance
            // that made it.
            metrics::job_finished(&job.queue, &job.kind, job.status.as_str());
            log_end(job);
            self.inner.waiters.wake(job.id.as_uuid());
            if let Some(batch_id) = job.batch_id {
                self.inner.waiters.wake(results_waiter(batch_id));
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
    pub(super) fn publish_stored(&self, job: &Job) {
        if job.status.is_terminal() {
            self.publish(job);
            return;
        }
        // Admitted straight to `queued` (the case a claimant on another
        // instance may announce first, see `start_attempt`): marked, so each
        // hub records it once.
        if job.status == JobState::Queued && job.attempt == 0 && job.ready_since_creation() {
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
    pub(super) fn publish_finished_batches(&self, batches: Vec<FinishedBatch>) {
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
    pub(super) fn apply(&self, effects: Effects) {
        if effects.is_empty() {
            return;
        }
        for job in &effects.cancelled {
            self.publish(job);
        }
        // A re-run batch before its jobs' events, each job's before it can start.
        for batch in &effects.retried_batches {
            tracing::info!(batch_id = %batch.id, retries = batch.retries, "batch reopened for a re-run");
            self.inner.events.publish(
                EventKind::BatchRetried,
                Subject::Batch(BatchSummary {
                    id: batch.id,
                    status: batch.status,
                    counts: batch.counts,
                    finished_at: batch.finished_at,
                    tenant: batch.tenant.clone(),
                }),
            );
        }
        for job in &effects.reopened {
            self.publish_stored(job);
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
    pub(super) fn rescued(&self, rescued: &[Rescued], effects: Effects) {
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
