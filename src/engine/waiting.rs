//! Long-polls of jobs, batches and batch results: reads held until worth answering.

use std::time::Duration;

use super::{Engine, EngineError};
use crate::domain::{BatchId, Job, JobId};

impl Engine {
    /// Long-polls held now (`spool_long_polls_waiting`); each registered
    /// before it read, so any end stored from now on wakes it.
    pub fn long_polls_waiting(&self) -> usize {
        self.inner.waiters.requests()
    }

    /// A job; with `wait`, not before it is terminal or `wait` passed (or
    /// the service is stopping).
    pub async fn wait_for_job(
        &self,
        tenant: &str,
        id: JobId,
        wait: Duration,
    ) -> Result<Job, EngineError> {
        self.long_poll(
            id.as_uuid(),
            wait,
            || self.get_job(tenant, id),
            |job| job.status.is_terminal(),
        )
        .await
    }

    /// Reads with `read` until `done` holds, `wait` passed or shutdown
    /// began, re-reading only when the engine wakes `id`. The waiter is
    /// registered before each read, so an end stored meanwhile is not missed.
    pub(super) async fn long_poll<T, Read, Reading>(
        &self,
        id: uuid::Uuid,
        wait: Duration,
        read: Read,
        done: impl Fn(&T) -> bool,
    ) -> Result<T, EngineError>
    where
        Read: Fn() -> Reading,
        Reading: std::future::Future<Output = Result<T, EngineError>>,
    {
        let deadline = tokio::time::Instant::now() + wait;
        let waiter = self.inner.waiters.register(id);
        if !wait.is_zero() {
            self.announce_listening().await;
        }
        loop {
            let woken = waiter.notified();
            let value = read().await?;
            if done(&value) || !self.hold(woken, deadline).await {
                return Ok(value);
            }
        }
    }

    /// Waits for `woken` until `deadline`; false when the wait is over
    /// (deadline, or shutdown: long-polls never hold it up).
    async fn hold(
        &self,
        woken: std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>>,
        deadline: tokio::time::Instant,
    ) -> bool {
        if tokio::time::Instant::now() >= deadline || self.inner.stopping.is_cancelled() {
            return false;
        }
        // Shared mode: an end stored by another instance arrives on the bus,
        // which may lose it; re-read every poll interval too.
        let recheck = match self.inner.shared {
            Some(_) => {
                deadline.min(tokio::time::Instant::now() + self.inner.settings.poll_interval)
            }
            None => deadline,
        };
        tokio::select! {
            _ = woken => true,
            _ = tokio::time::sleep_until(recheck) => recheck < deadline,
            _ = self.inner.stopping.cancelled() => false,
        }
    }
}

/// The waiter key of a batch's results: woken by every end of one of its
/// jobs, and distinct from the batch's own key (woken once, at its end) so
/// that a long-poll of the batch is not woken by each job.
pub(super) fn results_waiter(id: BatchId) -> uuid::Uuid {
    uuid::Uuid::from_u128(id.as_uuid().as_u128() ^ 1)
}
