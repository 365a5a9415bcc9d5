//! Attempt outcomes on PostgreSQL: each fenced by attempt and lease, so an
//! instance whose lease was taken over cannot overwrite the new attempt's,
//! and stored in groups (`group.rs`) so that a busy worker pool pays one
//! commit for many jobs.

use std::collections::HashMap;

use futures::future::BoxFuture;
use sqlx::{AssertSqlSafe, PgConnection};

use super::counts::Counts;
use super::tx::PgTx;
use crate::domain::{BatchId, Job, JobId, Timestamp};
use crate::store::plan::{self, Ended};
use crate::store::rows::{JOB_COLUMNS, JobRow, to_json};
use crate::store::{
    AttemptOutcome, Completion, CompletionResult, Effects, FinishedBatch, StoreError,
};

/// The fence of one completion (`$1` id, `$2` attempt, `$3` lease owner).
const FENCE: &str = "WHERE id = $1 AND attempt = $2 AND lease_owner = $3 AND state = 'running'";
/// What every outcome clears: the job is no longer this instance's.
const UNLEASE: &str = "lease_owner = NULL, lease_expires_at = NULL";

/// The successes of a group (`$1` ids, `$2` attempts, `$3` lease owners,
/// `$4` results, `$5` times), each fenced like `FENCE`, in one statement.
///
/// Jobs of a batch are counted here, not by the `jobs_batch_counts`
/// trigger (which skips a row whose `batch_seq` the statement sets): one
/// update of each batch's row for the whole group instead of one per job,
/// each job numbered in the batch's finishing order from the range the
/// update took. Rows are locked in id order, then the batches' in id order.
/// Each row comes back with whether the statement finished its batch
/// (`batch_ended`), so the batch locks are held for no further round trip
/// before the commit.
const SUCCEED_GROUP: &str = "WITH target AS MATERIALIZED ( \
         SELECT jobs.id AS t_id, jobs.batch_id AS t_batch, x.x_result AS t_result, x.x_at AS t_at \
         FROM jobs JOIN unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::bigint[]) \
             AS x(x_id, x_attempt, x_owner, x_result, x_at) ON jobs.id = x.x_id \
         WHERE jobs.attempt = x.x_attempt AND jobs.lease_owner = x.x_owner \
         AND jobs.state = 'running' ORDER BY jobs.id FOR NO KEY UPDATE OF jobs), \
     counted AS ( \
         SELECT t_batch AS c_batch, count(*) AS c_n, max(t_at) AS c_at FROM target \
         WHERE t_batch IS NOT NULL GROUP BY t_batch), \
     locked AS MATERIALIZED ( \
         SELECT id AS l_id, finished_at AS l_finished_at FROM batches \
         WHERE id IN (SELECT c_batch FROM counted) ORDER BY id FOR NO KEY UPDATE), \
     bumped AS ( \
         UPDATE batches SET succeeded = succeeded + c_n, finish_seq = finish_seq + c_n, \
             finished_at = CASE WHEN succeeded + c_n + failed + cancelled = total AND NOT (NOT cancel_requested AND retries < retry_max_times \
                 AND failed + cancelled > coalesce(retry_above, total)) \
                 THEN coalesce(finished_at, c_at) ELSE finished_at END, \
             status = CASE WHEN finished_at IS NULL AND succeeded + c_n + failed + cancelled = total \
                 AND NOT (NOT cancel_requested AND retries < retry_max_times \
                 AND failed + cancelled > coalesce(retry_above, total)) \
                 THEN CASE WHEN cancel_requested THEN 'cancelled' \
                           WHEN succeeded + c_n >= success_required THEN 'succeeded' \
                           ELSE 'failed' END \
                 ELSE status END \
         FROM counted, locked WHERE batches.id = c_batch AND l_id = c_batch \
         RETURNING batches.id AS b_id, finish_seq - c_n AS b_base, \
             l_finished_at IS NULL AND batches.finished_at IS NOT NULL AS b_ended, \
             batches.finished_at IS NULL \
             AND batches.succeeded + batches.failed + batches.cancelled = batches.total AS b_held), \
     numbered AS ( \
         SELECT t_id, t_result, t_at, b_ended, b_held, \
             b_base + row_number() OVER (PARTITION BY t_batch ORDER BY t_at, t_id) AS n_seq \
         FROM target LEFT JOIN bumped ON b_id = t_batch) \
     UPDATE jobs SET state = 'succeeded', result = t_result, error = NULL, finished_at = t_at, \
         batch_seq = n_seq, lease_owner = NULL, lease_expires_at = NULL \
     FROM numbered WHERE jobs.id = t_id";

/// A job row of a job that just ended, with whether any job waits on it.
#[derive(sqlx::FromRow)]
struct EndedRow {
    #[sqlx(flatten)]
    job: JobRow,
    has_dependents: bool,
}
/// A row of `SUCCEED_GROUP`: whether the statement finished the job's
/// batch, or ended its last job while its retry policy held it open (both
/// NULL without a batch).
#[derive(sqlx::FromRow)]
struct SucceededRow {
    #[sqlx(flatten)]
    row: EndedRow,
    batch_ended: Option<bool>,
    batch_held: Option<bool>,
}

/// Appends the JSON text `$n` to the `errors` array without re-encoding
/// what is there (an array of compact JSON, as `to_json` writes it).
fn append_error(param: &str) -> String {
    format!(
        "CASE WHEN errors = '[]' THEN '[' || {param} || ']' \
         ELSE left(errors, -1) || ',' || {param} || ']' END"
    )
}

/// Stores an attempt's outcome, fenced by `(id, attempt, lease_owner, state =
/// running)`: when the job moved on (its lease was taken over), nothing
/// changes and the result is `Fenced`.
pub async fn complete(
    conn: &mut PgConnection,
    completion: &Completion,
) -> Result<CompletionResult, StoreError> {
    // Whether jobs wait on this one comes with the row, so a job nobody
    // depends on ends in this one statement. Not a subquery on job_deps: that
    // would read the snapshot taken before any wait for the row's lock, and
    // miss the edges of a submission that held it (see `lock_dependencies`).
    let returning = format!("RETURNING {JOB_COLUMNS}, has_dependents");
    let at = completion.at.as_millis();
    let (sql, text, finished_at, run_at) = match &completion.outcome {
        AttemptOutcome::Succeeded(result) => (
            format!(
                "UPDATE jobs SET state = 'succeeded', result = $4, error = NULL, finished_at = $5, {UNLEASE} \
                 {FENCE} {returning}"
            ),
            Some(to_json(result)),
            Some(at),
            None,
        ),
        AttemptOutcome::Failed { error, retry_at } => (
            format!(
                "UPDATE jobs SET state = CASE WHEN $5::bigint IS NULL THEN 'scheduled' \
                 ELSE 'failed' END, finished_at = $5, run_at = coalesce($6, run_at), \
                 error = $4, errors = {}, {UNLEASE} {FENCE} {returning}",
                append_error("$4")
            ),
            Some(to_json(error)),
            retry_at.is_none().then_some(at),
            retry_at.map(Timestamp::as_millis),
        ),
        AttemptOutcome::Cancelled(error) => (
            format!(
                "UPDATE jobs SET state = 'cancelled', error = $4, finished_at = $5, {UNLEASE} \
                 {FENCE} {returning}"
            ),
            Some(to_json(error)),
            Some(at),
            None,
        ),
        AttemptOutcome::Released => (
            format!(
                "UPDATE jobs SET state = 'queued', attempt = attempt - 1, started_at = NULL, \
                 {UNLEASE} {FENCE} {returning}"
            ),
            None,
            None,
            None,
        ),
    };
    let mut query = sqlx::query_as::<_, EndedRow>(AssertSqlSafe(sql))
        .bind(completion.id.to_string())
        .bind(i64::from(completion.attempt))
        .bind(&completion.lease_owner);
    if text.is_some() {
        query = query.bind(text).bind(finished_at);
    }
    if matches!(completion.outcome, AttemptOutcome::Failed { .. }) {
        query = query.bind(run_at);
    }
    let Some(row) = query.fetch_optional(&mut *conn).await? else {
        return Ok(CompletionResult::Fenced);
    };
    let job = Job::try_from(row.job)?;
    let mut counts = Counts::default();
    counts.add(&job.queue, &job.tenant, job.status, 1);
    let mut effects = Effects::default();
    if job.status.is_terminal() {
        let ended = Ended {
            dependents: row.has_dependents,
            ..Ended::of(&job)
        };
        let tx = &mut PgTx {
            conn: &mut *conn,
            counts: &mut counts,
        };
        plan::settle(tx, &[ended], completion.at, &mut effects).await?;
    }
    counts.flush(conn).await?;
    Ok(CompletionResult::Applied {
        job: Box::new(job),
        effects,
    })
}

/// Stores the outcomes of one group, answering each in order: the successes
/// (nearly all of them, on a busy pool) in one statement, the rest one by
/// one through `complete`.
pub fn complete_group<'a>(
    conn: &'a mut PgConnection,
    completions: &'a [Completion],
) -> BoxFuture<'a, Result<Vec<CompletionResult>, StoreError>> {
    Box::pin(async move {
        let mut answers: Vec<Option<CompletionResult>> = vec![None; completions.len()];
        let mut counts = Counts::default();
        let mut successes: Vec<(usize, &Completion, String)> = completions
            .iter()
            .enumerate()
            .filter_map(|(index, completion)| match &completion.outcome {
                AttemptOutcome::Succeeded(result) => Some((index, completion, to_json(result))),
                _ => None,
            })
            .collect();
        // Rows in id order, as every other multi-row write locks them.
        successes.sort_by_key(|(_, completion, _)| completion.id);
        if !successes.is_empty() {
            // By id and attempt: a stale attempt's write to the same job may come
            // in the same group, and only the current attempt's row comes back.
            let mut index_of: HashMap<(JobId, u32), usize> =
                HashMap::with_capacity(successes.len());
            let (mut ids, mut attempts, mut owners, mut results, mut ats) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (index, completion, result) in successes {
                index_of.insert((completion.id, completion.attempt), index);
                ids.push(completion.id.to_string());
                attempts.push(i64::from(completion.attempt));
                owners.push(completion.lease_owner.as_str());
                results.push(result);
                ats.push(completion.at.as_millis());
            }
            let sql = format!(
                "{SUCCEED_GROUP} RETURNING {JOB_COLUMNS}, has_dependents, b_ended AS batch_ended, \
                 b_held AS batch_held"
            );
            let rows: Vec<SucceededRow> = sqlx::query_as(AssertSqlSafe(sql))
                .bind(ids)
                .bind(attempts)
                .bind(owners)
                .bind(results)
                .bind(ats)
                .fetch_all(&mut *conn)
                .await?;
            // Batches the statement finished, each reported to the first of
            // its jobs' callers only.
            let mut reported: Vec<BatchId> = Vec::new();
            for SucceededRow {
                row,
                batch_ended,
                batch_held,
            } in rows
            {
                let job = Job::try_from(row.job)?;
                let Some(&index) = index_of.get(&(job.id, job.attempt)) else {
                    continue;
                };
                let mut effects = Effects::default();
                // Only a job that others wait on needs statements of its
                // own; batches are looked at once for the whole group.
                if row.has_dependents {
                    let ended = Ended {
                        batch_id: None,
                        ..Ended::of(&job)
                    };
                    let at = completions[index].at;
                    let tx = &mut PgTx {
                        conn: &mut *conn,
                        counts: &mut counts,
                    };
                    plan::settle(tx, &[ended], at, &mut effects).await?;
                }
                if let Some(batch) = job.batch_id
                    && batch_ended == Some(true)
                    && !reported.contains(&batch)
                {
                    reported.push(batch);
                    effects.finished_batches.push(FinishedBatch {
                        id: batch,
                        tenant: job.tenant.clone(),
                    });
                }
                // Its retry policy re-runs it, in this transaction.
                if let Some(batch) = job.batch_id
                    && batch_held == Some(true)
                    && !reported.contains(&batch)
                {
                    reported.push(batch);
                    let tx = &mut PgTx {
                        conn: &mut *conn,
                        counts: &mut counts,
                    };
                    let at = completions[index].at;
                    plan::settle_batches(tx, &[batch], at, &mut effects).await?;
                }
                answers[index] = Some(CompletionResult::Applied {
                    job: Box::new(job),
                    effects,
                });
            }
        }
        for (index, completion) in completions.iter().enumerate() {
            if !matches!(completion.outcome, AttemptOutcome::Succeeded(_)) {
                answers[index] = Some(complete(conn, completion).await?);
            }
        }
        counts.flush(conn).await?;
        // A success the statement did not return was fenced off.
        Ok(answers
            .into_iter()
            .map(|answer| answer.unwrap_or(CompletionResult::Fenced))
            .collect())
    })
}
