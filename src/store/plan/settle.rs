//! What follows a job's end inside the same transaction, decided once for
//! both backends: a success releases the jobs waiting on it, a failure or a
//! cancellation cancels them and, transitively, their own dependents; then
//! the batches whose last job this was are reported.
//!
//! Batch counts, finishing order and status are kept by each database's
//! `jobs_batch_counts` trigger; this reports which batches the write
//! finished, so the engine can wake their long-polls, and re-runs those
//! their retry policy held open (`batch_retry.rs`).

use super::transaction::Transaction;
use crate::domain::{BatchId, Job, JobId, JobState, Timestamp};
use crate::store::rows::RescuedRow;
use crate::store::{Effects, Rescued, StoreError};

/// A job that has just become terminal.
#[derive(Clone, Copy, Debug)]
pub struct Ended {
    pub id: JobId,
    pub state: JobState,
    pub batch_id: Option<BatchId>,
    /// False when the caller knows no job waits on this one, which saves
    /// the statements that would find none.
    pub dependents: bool,
}

impl Ended {
    pub fn of(job: &Job) -> Self {
        Self {
            id: job.id,
            state: job.status,
            batch_id: job.batch_id,
            dependents: true,
        }
    }
}

/// Applies the consequences of `ended` (jobs that just became terminal) at
/// `at`, adding what they set in motion to `effects`.
pub async fn settle<T: Transaction>(
    tx: &mut T,
    ended: &[Ended],
    at: Timestamp,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    let mut batches: Vec<BatchId> = Vec::new();
    for job in ended {
        if let Some(batch) = job.batch_id {
            batches.push(batch);
        }
        if !job.dependents {
            continue;
        }
        if job.state == JobState::Succeeded {
            for released in tx.release_dependents(job.id, at).await? {
                if released.queued {
                    if !effects.ready_queues.contains(&released.queue) {
                        effects.ready_queues.push(released.queue);
                    }
                } else {
                    let run_at = released.run_at;
                    effects.next_due = Some(effects.next_due.map_or(run_at, |due| due.min(run_at)));
                }
            }
        } else {
            let error = super::dependency_failed(job.id, job.state, at);
            for cancelled in tx.cancel_dependents(job.id, &error, at).await? {
                if let Some(batch) = cancelled.batch_id {
                    batches.push(batch);
                }
                effects.cancelled.push(cancelled);
            }
        }
    }
    if batches.is_empty() {
        return Ok(());
    }
    batches.sort();
    batches.dedup();
    super::settle_batches(tx, &batches, at, effects).await
}

/// What a rescue's statement took back (`rows`: jobs whose lease lapsed,
/// now queued again, failed or cancelled), with what the ones it ended set
/// in motion.
pub async fn settle_rescued<T: Transaction>(
    tx: &mut T,
    rows: Vec<RescuedRow>,
    now: Timestamp,
) -> Result<(Vec<Rescued>, Effects), StoreError> {
    let mut rescued = Vec::with_capacity(rows.len());
    let mut ended = Vec::new();
    for row in rows {
        let (job, batch_id) = row.into_rescued()?;
        tx.left_running(&job);
        if job.state.is_terminal() {
            ended.push(Ended {
                id: job.id,
                state: job.state,
                batch_id,
                dependents: true,
            });
        }
        rescued.push(job);
    }
    let mut effects = Effects::default();
    settle(tx, &ended, now, &mut effects).await?;
    Ok((rescued, effects))
}
