//! Slots: how many jobs of each queue may start here now, and the writes
//! that fill a slot besides the dispatcher's claim (a refill when an
//! outcome frees one, a submission's own claim), with what each claim says
//! to an adaptive queue's limiter.

use super::Engine;
use crate::domain::Timestamp;
use crate::store::{Claimed, Refill};

impl Engine {
    /// The claim that refills the slot a job of `queue` frees, made by the
    /// write that stores its outcome: while the queue is open and its slots
    /// are not over its concurrency (lowered meanwhile), and not while
    /// shutting down. Embedded mode only: there one write does both; in
    /// shared mode the dispatcher's claims of many jobs at once are cheaper
    /// than a claim per outcome.
    pub(super) fn refill(&self, queue: &str) -> Option<Refill> {
        if !self.writes_claim() {
            return None;
        }
        let queues = self.read_queues();
        let open = queues
            .get(queue)
            .is_some_and(|q| !q.config.paused && q.running <= q.limit());
        drop(queues);
        open.then(|| {
            let now = Timestamp::now();
            Refill {
                queue: queue.to_owned(),
                lease_until: self.lease_from(now),
                now,
            }
        })
    }

    /// Notes what a claim for `queue` took of the `free` slots it asked
    /// for: all of them means jobs may still wait (an adaptive limit may
    /// grow); none, with nothing running, means the queue is idle (an
    /// adaptive limit shrinks toward its `min`).
    pub(super) fn claimed_for(&self, queue: &str, took: usize, free: u32) {
        if let Some(state) = self.write_queues().get_mut(queue) {
            state.saturated = took >= free as usize;
            if took == 0
                && state.running == 0
                && let Some(limiter) = state.limiter.as_mut()
            {
                limiter.idle(std::time::Instant::now());
            }
        }
    }

    /// Whether writes other than the dispatcher's claim jobs (a refill, a
    /// submission's own claim): in embedded mode, where one write does both,
    /// and not while shutting down.
    pub(super) fn writes_claim(&self) -> bool {
        self.inner.shared.is_none() && !self.inner.stopping.is_cancelled()
    }

    /// A slot of `queue` taken for a submission's own claim
    /// ([`JobStore::submit_and_claim`]): while the queue is open and has a
    /// slot free, and not while shutting down. Embedded mode only, as
    /// [`Self::refill`]. The caller gives it to what the claim took, or
    /// back ([`Self::fill_submitters_slot`]).
    pub(super) fn slot_for_submission(&self, queue: &str) -> Option<Refill> {
        if !self.writes_claim() {
            return None;
        }
        let mut queues = self.write_queues();
        let state = queues.get_mut(queue)?;
        if state.config.paused || state.running >= state.limit() {
            return None;
        }
        state.running += 1;
        drop(queues);
        let now = Timestamp::now();
        Some(Refill {
            queue: queue.to_owned(),
            lease_until: self.lease_from(now),
            now,
        })
    }

    /// Starts the job a submission's claim took into the slot
    /// [`Self::slot_for_submission`] reserved, or frees the slot when it
    /// took none. Called after the submission's own events, so a job's
    /// `started` follows its `queued`. (That claim never takes a rate-limited
    /// job, so it has no `next_eligible_at` to pass on.)
    pub(super) fn fill_submitters_slot(&self, queue: &str, claimed: Claimed) {
        match claimed.jobs.into_iter().next() {
            Some(job) => self.run_attempt(job),
            None => {
                if let Some(state) = self.write_queues().get_mut(queue) {
                    state.running = state.running.saturating_sub(1);
                }
            }
        }
    }
}
