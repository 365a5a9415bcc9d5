//! Plain single-job submissions (no key, idempotency key, dependencies or
//! batch), admitted in groups (`group.rs`) with the queue locks held as
//! briefly as a group allows.

use std::collections::HashMap;

use futures::future::BoxFuture;
use sqlx::PgConnection;

use super::admit::{capacity_rejection, insert_jobs, lock_queues, per_queue};
use super::counts::{self, Counts};
use crate::domain::NewJob;
use crate::store::rows::job_from_new;
use crate::store::{Effects, StoreError, SubmitOutcome, SubmitRejection};

/// Admits plain single-job submissions (see `group.rs`) in order: each is
/// stored, or refused because its queue is full, as if they came one by one.
///
/// When the counts show room for all of them (the common case; the insert
/// itself checks), every job is inserted before the queues are locked, so
/// the locks are held only for the count and the commit, and a job that no
/// longer fits once they are granted is deleted again. Otherwise the locks come
/// first and only the jobs that fit are inserted.
pub fn admit_plain<'a>(
    conn: &'a mut PgConnection,
    jobs: &'a [NewJob],
) -> BoxFuture<'a, Result<Vec<Result<SubmitOutcome, SubmitRejection>>, StoreError>> {
    Box::pin(async move {
        let requested = per_queue(jobs);
        let names: Vec<String> = requested.keys().map(|name| (*name).to_owned()).collect();
        let zeros = vec![0; jobs.len()];
        let optimistic = insert_jobs(conn, jobs, &zeros, Some(&requested)).await? > 0;
        let capacities = lock_queues(conn, &names).await?;
        let pending = counts::pending(conn, &names).await?;
        let verdict = judge(jobs, &capacities, pending);
        if optimistic && !verdict.refused.is_empty() {
            let refused: Vec<String> = verdict
                .refused
                .iter()
                .map(|job| job.id.to_string())
                .collect();
            sqlx::query("DELETE FROM jobs WHERE id = ANY($1)")
                .bind(refused)
                .execute(&mut *conn)
                .await?;
        }
        if !optimistic && !verdict.admitted.is_empty() {
            let admitted: Vec<NewJob> = verdict.admitted.iter().map(|&job| job.clone()).collect();
            insert_jobs(conn, &admitted, &zeros[..admitted.len()], None).await?;
        }
        verdict.counts.flush(conn).await?;
        Ok(verdict.verdicts)
    })
}

/// The verdicts on plain submissions given their queues' capacities and
/// pending counts, in order.
struct Verdict<'a> {
    verdicts: Vec<Result<SubmitOutcome, SubmitRejection>>,
    admitted: Vec<&'a NewJob>,
    refused: Vec<&'a NewJob>,
    counts: Counts,
}

fn judge<'a>(
    jobs: &'a [NewJob],
    capacities: &HashMap<String, i64>,
    mut pending: HashMap<String, i64>,
) -> Verdict<'a> {
    let mut verdict = Verdict {
        verdicts: Vec::with_capacity(jobs.len()),
        admitted: Vec::with_capacity(jobs.len()),
        refused: Vec::new(),
        counts: Counts::default(),
    };
    for job in jobs {
        match capacity_rejection(capacities, &pending, &job.queue, 1) {
            None => {
                *pending.entry(job.queue.clone()).or_default() += 1;
                verdict.counts.add(&job.queue, &job.tenant, job.state, 1);
                verdict.admitted.push(job);
                verdict.verdicts.push(Ok(SubmitOutcome::Created {
                    jobs: vec![job_from_new(job.clone())],
                    batch: None,
                    effects: Effects::default(),
                }));
            }
            Some(rejection) => {
                verdict.refused.push(job);
                verdict.verdicts.push(Err(rejection));
            }
        }
    }
    verdict
}
