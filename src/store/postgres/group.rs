//! Group admission: plain single-job submissions (no key, idempotency key,
//! dependencies or batch) waiting at the same moment share one transaction.
//!
//! A submission's transaction holds its queue's row lock through its commit
//! (that lock is what makes the capacity bound service-wide), so one at a
//! time per queue would cap an instance at one commit (a WAL flush) per
//! job. Grouped, the lock, the count, the insert and the commit are paid
//! once per group: the jobs of a group are admitted in arrival order until
//! their queue is full, exactly as if they came one by one.

use std::collections::{BTreeSet, HashMap};

use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};

use super::admit::{capacity_rejection, insert_jobs, lock_queues};
use super::counts::{self, Counts};
use super::{MAX_RUNS, classify, retryable};
use crate::domain::NewJob;
use crate::store::rows::job_from_new;
use crate::store::{Effects, StoreError, Submission, SubmitOutcome, SubmitRejection};

/// Most submissions in one group: one INSERT of this many rows stays short.
const MAX_GROUP: usize = 512;
/// Submissions waiting for a group before submitters wait for room.
const WAITING: usize = 4_096;

type Admitted = Result<Result<SubmitOutcome, SubmitRejection>, StoreError>;

struct Waiting {
    job: NewJob,
    reply: oneshot::Sender<Admitted>,
}

/// Hands plain submissions to the group loop.
pub struct Groups {
    waiting: mpsc::Sender<Waiting>,
}

impl Groups {
    pub fn start(pool: PgPool) -> Self {
        let (waiting, receiver) = mpsc::channel(WAITING);
        tokio::spawn(group_loop(pool, receiver));
        Self { waiting }
    }

    /// The job of `submission` when it may go through a group.
    pub fn plain(submission: &Submission) -> Option<&NewJob> {
        match submission.jobs.as_slice() {
            [job]
                if submission.batch.is_none()
                    && submission.idempotency.is_none()
                    && job.key.is_none()
                    && job.depends_on.is_empty() =>
            {
                Some(job)
            }
            _ => None,
        }
    }

    pub async fn submit(&self, job: NewJob) -> Admitted {
        let (reply, admitted) = oneshot::channel();
        let stopped = || StoreError::Unavailable("group admission has stopped".into());
        self.waiting
            .send(Waiting { job, reply })
            .await
            .map_err(|_| stopped())?;
        admitted.await.map_err(|_| stopped())?
    }
}

async fn group_loop(pool: PgPool, mut receiver: mpsc::Receiver<Waiting>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = receiver.recv().await {
        group.push(first);
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let jobs: Vec<&NewJob> = group.iter().map(|waiting| &waiting.job).collect();
        let mut runs = 1;
        let outcome = loop {
            let result = admit_in_transaction(&pool, &jobs).await;
            match result {
                Err(error) if runs < MAX_RUNS && retryable(&error) => runs += 1,
                other => break other.map_err(classify),
            }
        };
        match outcome {
            Ok(verdicts) => {
                for (waiting, verdict) in group.drain(..).zip(verdicts) {
                    let admitted = match verdict {
                        None => Ok(SubmitOutcome::Created {
                            jobs: vec![job_from_new(waiting.job)],
                            batch: None,
                            effects: Effects::default(),
                        }),
                        Some(rejection) => Err(rejection),
                    };
                    let _ = waiting.reply.send(Ok(admitted));
                }
            }
            Err(error) => {
                // Every submitter is told, each with its own copy.
                let message = error.to_string();
                for waiting in group.drain(..) {
                    let _ = waiting
                        .reply
                        .send(Err(StoreError::Unavailable(message.clone())));
                }
            }
        }
    }
}

async fn admit_in_transaction(
    pool: &PgPool,
    jobs: &[&NewJob],
) -> Result<Vec<Option<SubmitRejection>>, StoreError> {
    let mut tx = pool.begin().await?;
    let verdicts = admit(&mut tx, jobs).await?;
    tx.commit().await?;
    Ok(verdicts)
}

/// Admits `jobs` in order; `None` for each one stored, its rejection
/// otherwise.
async fn admit(
    conn: &mut PgConnection,
    jobs: &[&NewJob],
) -> Result<Vec<Option<SubmitRejection>>, StoreError> {
    let names: Vec<String> = jobs
        .iter()
        .map(|job| job.queue.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let capacities = lock_queues(conn, &names).await?;
    let mut pending: HashMap<String, i64> = counts::pending(conn, &names).await?;
    let mut verdicts = Vec::with_capacity(jobs.len());
    let mut admitted: Vec<NewJob> = Vec::with_capacity(jobs.len());
    let mut counts = Counts::default();
    for job in jobs {
        let rejection = capacity_rejection(&capacities, &pending, &job.queue, 1);
        if rejection.is_none() {
            *pending.entry(job.queue.clone()).or_default() += 1;
            counts.add(&job.queue, job.state, 1);
            admitted.push((*job).clone());
        }
        verdicts.push(rejection);
    }
    if !admitted.is_empty() {
        insert_jobs(conn, &admitted, &vec![0; admitted.len()]).await?;
        counts.flush(conn).await?;
    }
    Ok(verdicts)
}
