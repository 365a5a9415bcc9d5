//! Background loops: the promoter (scheduled → queued), the expirer (jobs
//! not started by their `expires_at`), the lease heartbeat, rescue of
//! expired leases, and retention pruning.

use crate::telemetry::metrics;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Engine, STOP_CANCEL};
use crate::domain::{JobId, Timestamp};

/// How soon a due expiry that expired nothing is looked at again (ms).
const EXPIRY_RECHECK_MS: i64 = 50;
/// How often expired leases and retention are checked.
const RESCUE_EVERY: Duration = Duration::from_secs(5);
/// Pruning runs every minute, or every half retention when that is shorter,
/// so a job outlives its retention by at most that much.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

impl Engine {
    /// Moves scheduled jobs to `queued` when their `run_at` comes, sleeping
    /// until the earliest one (or the poll interval, whichever is sooner).
    pub(super) async fn promote_loop(self) {
        let stopping = self.inner.stopping.clone();
        loop {
            // Clear first: a job scheduled while we promote re-arms the wake.
            self.inner.next_due_ms.store(i64::MAX, Ordering::Release);
            let now = Timestamp::now();
            match self.inner.store.promote_due(now).await {
                Ok(promoted) => {
                    if !promoted.queues.is_empty() {
                        self.inner.wake_dispatcher.notify_one();
                    }
                    for queue in &promoted.queues {
                        self.tell_ready(queue);
                    }
                    if let Some(next) = promoted.next_due {
                        self.inner
                            .next_due_ms
                            .fetch_min(next.as_millis(), Ordering::AcqRel);
                    }
                }
                Err(error) => tracing::error!(%error, "promoting due jobs failed"),
            }
            let next = self.inner.next_due_ms.load(Ordering::Acquire);
            let until_next = Duration::from_millis(
                next.saturating_sub(Timestamp::now().as_millis()).max(0) as u64,
            );
            let sleep = until_next.min(self.inner.settings.poll_interval);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.inner.wake_promoter.notified() => {}
                _ = stopping.cancelled() => break,
            }
        }
    }

    /// Cancels jobs not started by their `expires_at`, as `expired`, at that
    /// instant: it sleeps until the earliest expiry it knows of (its own
    /// admissions tell it; the store's next one, one index seek, is read
    /// again every poll interval for other instances' jobs).
    pub(super) async fn expire_loop(self) {
        let stopping = self.inner.stopping.clone();
        loop {
            // Cleared first: a job admitted while we look re-arms the wake.
            self.inner.next_expiry_ms.store(i64::MAX, Ordering::Release);
            // A read, not a write: the writer is asked only when a job is due.
            match self.inner.store.next_expiry().await {
                Ok(Some(next)) if next <= Timestamp::now() => {
                    if self.expire_due().await > 0 {
                        continue;
                    }
                    // Due but not expired: a claim holds it (PostgreSQL) and
                    // is about to start it. Looked at again shortly.
                    let shortly = Timestamp::now().plus_ms(EXPIRY_RECHECK_MS);
                    self.inner
                        .next_expiry_ms
                        .fetch_min(shortly.as_millis(), Ordering::AcqRel);
                }
                Ok(Some(next)) => {
                    self.inner
                        .next_expiry_ms
                        .fetch_min(next.as_millis(), Ordering::AcqRel);
                }
                Ok(None) => {}
                Err(error) => tracing::error!(%error, "reading the next expiry failed"),
            }
            let next = self.inner.next_expiry_ms.load(Ordering::Acquire);
            let until_next = Duration::from_millis(
                next.saturating_sub(Timestamp::now().as_millis()).max(0) as u64,
            );
            tokio::select! {
                _ = tokio::time::sleep(until_next.min(self.inner.settings.poll_interval)) => {}
                _ = self.inner.wake_expirer.notified() => {}
                _ = stopping.cancelled() => break,
            }
        }
    }

    /// Expires every job due now, a chunk per transaction; how many.
    async fn expire_due(&self) -> usize {
        let now = Timestamp::now();
        let mut expired = 0;
        loop {
            match self.inner.store.expire_due(now).await {
                Ok((jobs, effects)) => {
                    for job in &jobs {
                        tracing::info!(job_id = %job.id, queue = %job.queue, "a job expired before it started");
                        self.publish(job);
                    }
                    metrics::expired(jobs.len() as u64);
                    self.apply(effects);
                    expired += jobs.len();
                    if jobs.len() < crate::store::EXPIRE_CHUNK as usize {
                        return expired;
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "expiring jobs failed");
                    // Tried again after a poll interval, not at once.
                    tokio::select! {
                        _ = tokio::time::sleep(self.inner.settings.poll_interval) => {}
                        _ = self.inner.stopping.cancelled() => {}
                    }
                    return expired;
                }
            }
        }
    }

    /// Renews this process's leases every third of their length, and stops
    /// jobs whose cancellation was requested elsewhere. Runs until the very
    /// end of shutdown, so that draining jobs keep their leases.
    pub(super) async fn heartbeat_loop(self) {
        let stopped = self.inner.stopped.clone();
        let every = (self.inner.settings.lease_ttl / 3).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stopped.cancelled() => break,
            }
            if let Err(error) = self.renew_own_leases().await {
                tracing::error!(%error, "renewing leases failed");
            }
        }
    }

    /// Extends the leases of the jobs this process runs — only those: a job
    /// it holds in the store but no longer runs (an outcome it gave up
    /// storing, a claim whose answer was lost) must lapse so that rescue
    /// takes it back, or it would stay `running` for as long as the process
    /// lives.
    async fn renew_own_leases(&self) -> Result<(), crate::store::StoreError> {
        let ids: Vec<JobId> = self
            .inner
            .running
            .lock()
            .map(|running| running.keys().copied().collect())
            .unwrap_or_default();
        if ids.is_empty() {
            return Ok(());
        }
        let until = Timestamp::now().plus_ms(self.inner.settings.lease_ttl.as_millis() as i64);
        let cancel_requested = self
            .inner
            .store
            .renew_leases(&self.inner.instance_id, &ids, until)
            .await?;
        for id in cancel_requested {
            self.stop_running(id, STOP_CANCEL);
        }
        Ok(())
    }

    /// Takes back jobs whose instance stopped renewing their lease.
    pub(super) async fn rescue_loop(self) {
        let stopping = self.inner.stopping.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RESCUE_EVERY) => {}
                _ = stopping.cancelled() => break,
            }
            // Renewed first: after a storage outage longer than a lease, this
            // process's own running jobs have lapsed too, and must not be
            // taken from it and run twice when the store comes back.
            if let Err(error) = self.renew_own_leases().await {
                tracing::error!(%error, "renewing leases before rescue failed");
                continue;
            }
            match self.inner.store.rescue(Timestamp::now(), None).await {
                Ok((rescued, effects)) => {
                    if !rescued.is_empty() {
                        metrics::rescued(rescued.len() as u64);
                        for job in &rescued {
                            tracing::warn!(job_id = %job.id, queue = %job.queue, status = %job.state, "rescued a job whose lease expired");
                            if job.state == crate::domain::JobState::Queued {
                                self.tell_ready(&job.queue);
                            }
                        }
                        self.inner.wake_dispatcher.notify_one();
                    }
                    self.rescued(&rescued, effects);
                }
                Err(error) => tracing::error!(%error, "rescuing expired leases failed"),
            }
        }
    }

    /// Deletes terminal jobs past retention and idempotency keys past their TTL.
    pub(super) async fn prune_loop(self) {
        let stopping = self.inner.stopping.clone();
        loop {
            let now = Timestamp::now();
            let finished_before = now.plus_ms(-(self.inner.settings.retention.as_millis() as i64));
            let keys_before =
                now.plus_ms(-(self.inner.settings.idempotency_ttl.as_millis() as i64));
            loop {
                match self.inner.store.prune(finished_before, keys_before).await {
                    Ok(0) => break,
                    Ok(deleted) => {
                        tracing::info!(jobs = deleted, "pruned terminal jobs past retention");
                        if stopping.is_cancelled() {
                            break;
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "pruning failed");
                        break;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(PRUNE_EVERY.min(self.inner.settings.retention / 2)) => {}
                _ = stopping.cancelled() => break,
            }
        }
    }
}
