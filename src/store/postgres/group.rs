//! Group commit: requests of one kind that wait at the same moment share one
//! transaction, and so one commit (a WAL flush) and one set of locks.
//!
//! Two kinds go through groups. Plain single-job submissions (no key,
//! idempotency key, dependencies or batch): a submission's transaction holds
//! its queue's row lock through its commit (that lock is what makes the
//! capacity bound service-wide), so one at a time per queue would cap an
//! instance at one commit per job; grouped, the jobs are admitted in arrival
//! order until their queue is full, exactly as if they came one by one. And
//! attempt outcomes: every finished job would otherwise cost a commit of its
//! own, which capped a worker pool at the database's commit rate.
//!
//! A group is whatever waits when a group can start, up to a maximum: under
//! light load a request goes alone and waits for no timer; under heavy load
//! groups grow by themselves. Outcomes of different jobs touch different
//! rows, so a few of their groups run at once (their commits then share WAL
//! flushes); admissions to one queue serialise on its row lock anyway, so
//! theirs run one at a time (two at a time only made groups smaller: fewer
//! jobs per second with one or two instances, in `spool bench --postgres`).

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};

use super::MAX_RUNS;
use crate::domain::NewJob;
use crate::store::{StoreError, Submission};

/// Requests waiting for a group before callers wait for room.
const WAITING: usize = 4_096;

/// The work of one group inside its transaction: one answer per request, in
/// the requests' order.
pub type GroupWork<T, R> =
    for<'a> fn(&'a mut PgConnection, &'a [T]) -> BoxFuture<'a, Result<Vec<R>, StoreError>>;

struct Waiting<T, R> {
    request: T,
    reply: oneshot::Sender<Result<R, StoreError>>,
}

/// Hands requests to a loop that runs them in groups of at most `max`,
/// at most `parallel` groups at a time.
pub struct Grouper<T, R> {
    waiting: mpsc::Sender<Waiting<T, R>>,
}

impl<T: Send + Sync + 'static, R: Send + 'static> Grouper<T, R> {
    pub fn start(pool: PgPool, max: usize, parallel: usize, work: GroupWork<T, R>) -> Self {
        let (waiting, receiver) = mpsc::channel(WAITING);
        tokio::spawn(group_loop(
            pool,
            receiver,
            max.max(1),
            parallel.max(1),
            work,
        ));
        Self { waiting }
    }

    /// Runs `request` in the next group and returns its own answer.
    pub async fn run(&self, request: T) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Unavailable("group commit has stopped".into());
        self.waiting
            .send(Waiting { request, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn group_loop<T, R>(
    pool: PgPool,
    mut receiver: mpsc::Receiver<Waiting<T, R>>,
    max: usize,
    parallel: usize,
    work: GroupWork<T, R>,
) {
    let mut running = FuturesUnordered::new();
    loop {
        tokio::select! {
            first = receiver.recv(), if running.len() < parallel => {
                let Some(first) = first else { break };
                let mut group = vec![first];
                while group.len() < max {
                    match receiver.try_recv() {
                        Ok(next) => group.push(next),
                        Err(_) => break,
                    }
                }
                running.push(run_group(pool.clone(), group, work));
            }
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
    while running.next().await.is_some() {}
}

/// Runs one group in a transaction (again, when it meets a deadlock or a
/// lost race) and answers each of its callers.
async fn run_group<T, R>(pool: PgPool, group: Vec<Waiting<T, R>>, work: GroupWork<T, R>) {
    let (requests, replies): (Vec<T>, Vec<_>) = group
        .into_iter()
        .map(|waiting| (waiting.request, waiting.reply))
        .unzip();
    let mut runs = 1;
    let outcome = loop {
        match in_transaction(&pool, &requests, work).await {
            Err(error) if runs < MAX_RUNS && error.is_conflict() => runs += 1,
            other => break other,
        }
    };
    match outcome {
        Ok(answers) if answers.len() == replies.len() => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        failed => {
            // Every caller is told, each with its own copy.
            let message = match failed {
                Err(error) => error.to_string(),
                Ok(answers) => format!(
                    "a group of {} requests got {} answers",
                    replies.len(),
                    answers.len()
                ),
            };
            for reply in replies {
                let _ = reply.send(Err(StoreError::Unavailable(message.clone())));
            }
        }
    }
}

async fn in_transaction<T, R>(
    pool: &PgPool,
    requests: &[T],
    work: GroupWork<T, R>,
) -> Result<Vec<R>, StoreError> {
    let mut tx = pool.begin().await?;
    let answers = work(&mut tx, requests).await?;
    let committing = std::time::Instant::now();
    tx.commit().await?;
    crate::telemetry::metrics::store_commit(committing.elapsed());
    Ok(answers)
}

/// The job of `submission` when it may be admitted in a group. A tenant
/// with a `max_pending` goes the general way (`admit::submit`), which
/// takes the tenant's lock: groups then stay free of it.
pub fn plain(submission: &Submission) -> Option<&NewJob> {
    match submission.jobs.as_slice() {
        [job]
            if submission.batch.is_none()
                && !submission.limit_pending
                && submission.idempotency.is_none()
                && job.key.is_none()
                && job.depends_on.is_empty() =>
        {
            Some(job)
        }
        _ => None,
    }
}
