//! PostgreSQL's side of the shared decisions (`store/plan`): a transaction
//! on one connection as a `plan::Transaction`, with the queue counts it
//! moves kept aside and written once at its end (`decide!`).
//!
//! Other instances write at the same time, so the checks before any write
//! only glance at committed counts; the ones that decide take row locks
//! (`CHECKS_BEFORE_WRITES_DECIDE` is false): the jobs' first, then the
//! tenant's, then the queues' in name order, as every transaction here.

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, PgConnection};

use super::admit::{self, capacity_rejection};
use super::counts::{self, Counts};
use super::{deps, ops, tenants};
use crate::domain::{Batch, BatchId, ErrorInfo, Job, JobId, JobState, NewBatch, NewJob, Timestamp};
use crate::store::plan::{EndedBatches, Released, Requested, StatesOf, Transaction};
use crate::store::rows::{JOB_COLUMNS, JobRow, parse_ids};
use crate::store::{Rescued, StoreError, StoredResponse, SubmitRejection};

/// An open transaction and the queue counts it moved so far.
pub struct PgTx<'a> {
    pub conn: &'a mut PgConnection,
    pub counts: &'a mut Counts,
}

/// Runs the shared decision `$decision` (an expression of `$tx: &mut PgTx`)
/// on the transaction `$conn`, then writes the counts it moved.
macro_rules! decide {
    ($conn:expr, |$tx:ident| $decision:expr) => {{
        let mut counts = $crate::store::postgres::counts::Counts::default();
        let outcome = {
            let $tx = &mut $crate::store::postgres::tx::PgTx {
                conn: &mut *$conn,
                counts: &mut counts,
            };
            $decision.await?
        };
        counts.flush(&mut *$conn).await?;
        outcome
    }};
}
pub(super) use decide;

fn ids_of(ids: &[JobId]) -> Vec<String> {
    ids.iter().map(JobId::to_string).collect()
}

/// The refusal of the first queue that `requested` would overflow.
fn overflow(
    requested: &Requested,
    capacities: &HashMap<String, i64>,
    pending: &HashMap<String, i64>,
) -> Option<SubmitRejection> {
    requested
        .iter()
        .find_map(|(queue, count)| capacity_rejection(capacities, pending, queue, *count))
}

impl Transaction for PgTx<'_> {
    const CHECKS_BEFORE_WRITES_DECIDE: bool = false;

    async fn seen_request(
        &mut self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<(String, StoredResponse)>, StoreError> {
        tenants::idempotent_response(&mut *self.conn, tenant, key).await
    }

    async fn glance_room(
        &mut self,
        requested: &Requested,
    ) -> Result<Option<SubmitRejection>, StoreError> {
        let names: Vec<String> = requested.keys().cloned().collect();
        let (capacities, pending) = admit::glance(self.conn, &names).await?;
        Ok(overflow(requested, &capacities, &pending))
    }

    async fn check_room(
        &mut self,
        requested: &Requested,
    ) -> Result<Option<SubmitRejection>, StoreError> {
        let names: Vec<String> = requested.keys().cloned().collect();
        let capacities = admit::lock_queues(self.conn, &names).await?;
        let pending = counts::pending(self.conn, &names).await?;
        Ok(overflow(requested, &capacities, &pending))
    }

    async fn glance_quota(
        &mut self,
        tenant: &str,
        requested: u64,
    ) -> Result<Option<SubmitRejection>, StoreError> {
        tenants::glance_quota(self.conn, tenant, requested).await
    }

    async fn check_quota(
        &mut self,
        tenant: &str,
        // Not counted yet: the counters are written at the commit.
        _own: &[JobId],
        requested: u64,
    ) -> Result<Option<SubmitRejection>, StoreError> {
        tenants::check_quota(self.conn, tenant, requested).await
    }

    async fn active_holder(&mut self, tenant: &str, key: &str) -> Result<Option<Job>, StoreError> {
        admit::active_holder(self.conn, tenant, key).await
    }

    async fn dependency_states(&mut self, ids: &[JobId]) -> Result<StatesOf, StoreError> {
        let found = admit::lock_dependencies(self.conn, &ids_of(ids)).await?;
        let mut states = StatesOf::with_capacity(found.len());
        for (id, state, tenant) in found {
            let id = id
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("job id {id}: {e}")))?;
            states.insert(id, (state, tenant));
        }
        Ok(states)
    }

    async fn job(&mut self, id: JobId, for_update: bool) -> Result<Option<Job>, StoreError> {
        let lock = if for_update { "FOR UPDATE" } else { "" };
        ops::fetch_job(self.conn, id, lock).await
    }

    async fn batch(
        &mut self,
        id: BatchId,
        job_ids: Option<Vec<JobId>>,
    ) -> Result<Option<Batch>, StoreError> {
        ops::fetch_batch(self.conn, id, job_ids).await
    }

    async fn batch_finished(&mut self, id: BatchId) -> Result<Option<bool>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT finished_at IS NOT NULL FROM batches WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(&mut *self.conn)
                .await?,
        )
    }

    async fn cancel_now(
        &mut self,
        id: JobId,
        error: &ErrorInfo,
        at: Timestamp,
    ) -> Result<Option<Job>, StoreError> {
        ops::cancel_now(self.conn, self.counts, id, error, at).await
    }

    async fn expiring(&mut self, now: Timestamp, limit: u32) -> Result<Vec<JobId>, StoreError> {
        // FOR UPDATE: a claim that reaches one of these rows waits for this
        // transaction and then finds it cancelled; SKIP LOCKED: a row a
        // claim holds is left to it (it was not expired when claimed).
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE expires_at <= $1 AND expires_at IS NOT NULL \
             AND started_at IS NULL AND finished_at IS NULL \
             ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(now.as_millis())
        .bind(i64::from(limit))
        .fetch_all(&mut *self.conn)
        .await?;
        parse_ids(&ids)
    }

    async fn insert_batch(&mut self, batch: &NewBatch, jobs: &[NewJob]) -> Result<(), StoreError> {
        admit::insert_batch(self.conn, batch, jobs).await
    }

    async fn insert_jobs(&mut self, jobs: &[NewJob], pending: &[i64]) -> Result<(), StoreError> {
        admit::insert_jobs(self.conn, jobs, pending, None).await?;
        // Counted before any cascade moves them on: the cascade counts that
        // move, this counts the inserts.
        for job in jobs {
            self.counts.add(&job.queue, &job.tenant, job.state, 1);
        }
        Ok(())
    }

    async fn link(&mut self, edges: &[(JobId, JobId)]) -> Result<(), StoreError> {
        let (from, to): (Vec<String>, Vec<String>) = edges
            .iter()
            .map(|(dependency, dependent)| (dependency.to_string(), dependent.to_string()))
            .unzip();
        sqlx::query(
            "INSERT INTO job_deps (depends_on_id, job_id) \
             SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(from)
        .bind(to)
        .execute(&mut *self.conn)
        .await?;
        Ok(())
    }

    async fn remember_response(
        &mut self,
        tenant: &str,
        key: &str,
        request_hash: &str,
        body: String,
        at: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO idempotency_keys (tenant, key, request_hash, status, body, created_at) \
             VALUES ($1, $2, $3, 202, $4, $5)",
        )
        .bind(tenant)
        .bind(key)
        .bind(request_hash)
        .bind(body)
        .bind(at.as_millis())
        .execute(&mut *self.conn)
        .await?;
        Ok(())
    }

    async fn reopen(
        &mut self,
        id: JobId,
        _from: JobState,
        state: JobState,
        at: Timestamp,
        pending: usize,
    ) -> Result<Option<Job>, StoreError> {
        let sql = format!(
            "UPDATE jobs SET state = $1, attempt = 0, run_at = $2, result = NULL, error = NULL, \
             errors = '[]', progress = NULL, cancel_requested = false, started_at = NULL, expires_at = NULL, \
             finished_at = NULL, batch_seq = NULL, deps_pending = $3 WHERE id = $4 \
             RETURNING {JOB_COLUMNS}"
        );
        let row: Option<JobRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(state.as_str())
            .bind(at.as_millis())
            .bind(pending as i64)
            .bind(id.to_string())
            .fetch_optional(&mut *self.conn)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let job = Job::try_from(row)?;
        self.counts.add(&job.queue, &job.tenant, state, 1);
        Ok(Some(job))
    }

    async fn flag_batch_cancelled(&mut self, id: BatchId) -> Result<bool, StoreError> {
        // The batch's unfinished jobs first, then the batch row: the order a
        // completion takes them (its job, then its batch through the
        // trigger), so the two never wait for each other in a cycle.
        sqlx::query(
            "SELECT 1 FROM jobs WHERE batch_id = $1 AND finished_at IS NULL ORDER BY id FOR UPDATE",
        )
        .bind(id.to_string())
        .execute(&mut *self.conn)
        .await?;
        let flagged = sqlx::query(
            "UPDATE batches SET cancel_requested = true WHERE id = $1 AND finished_at IS NULL",
        )
        .bind(id.to_string())
        .execute(&mut *self.conn)
        .await?;
        Ok(flagged.rows_affected() > 0)
    }

    async fn cancel_waiting_of_batch(
        &mut self,
        id: BatchId,
        error: &ErrorInfo,
        at: Timestamp,
    ) -> Result<Vec<Job>, StoreError> {
        let filter = "batch_id = $3";
        ops::cancel_waiting(self.conn, self.counts, filter, id.to_string(), error, at).await
    }

    async fn stop_running_of_batch(&mut self, id: BatchId) -> Result<Vec<JobId>, StoreError> {
        let stopped: Vec<String> = sqlx::query_scalar(
            "UPDATE jobs SET cancel_requested = true WHERE batch_id = $1 AND state = 'running' \
             RETURNING id",
        )
        .bind(id.to_string())
        .fetch_all(&mut *self.conn)
        .await?;
        parse_ids(&stopped)
    }

    async fn release_dependents(
        &mut self,
        id: JobId,
        at: Timestamp,
    ) -> Result<Vec<Released>, StoreError> {
        deps::release_dependents(self.conn, self.counts, id, at).await
    }

    async fn cancel_dependents(
        &mut self,
        id: JobId,
        error: &ErrorInfo,
        at: Timestamp,
    ) -> Result<Vec<Job>, StoreError> {
        deps::cancel_dependents(self.conn, self.counts, id, error, at).await
    }

    fn left_running(&mut self, job: &Rescued) {
        // `running` is counted from an index; the state it went to is not.
        self.counts.add(&job.queue, &job.tenant, job.state, 1);
    }

    async fn ended_batches(&mut self, batches: &[BatchId]) -> Result<EndedBatches, StoreError> {
        let batches = batches.iter().map(BatchId::to_string).collect();
        deps::ended_batches(self.conn, batches).await
    }

    async fn batch_jobs(&mut self, id: BatchId) -> Result<Vec<Job>, StoreError> {
        // Locked in id order first, as `flag_batch_cancelled` does.
        sqlx::query("SELECT 1 FROM jobs WHERE batch_id = $1 ORDER BY id FOR UPDATE")
            .bind(id.to_string())
            .execute(&mut *self.conn)
            .await?;
        let sql =
            format!("SELECT {JOB_COLUMNS} FROM jobs WHERE batch_id = $1 ORDER BY batch_index");
        let rows: Vec<JobRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_all(&mut *self.conn)
            .await?;
        rows.into_iter().map(Job::try_from).collect()
    }

    async fn reopen_batch(&mut self, id: BatchId) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE batches SET status = 'running', finished_at = NULL, cancel_requested = false, \
             retries = retries + 1 WHERE id = $1",
        )
        .bind(id.to_string())
        .execute(&mut *self.conn)
        .await?;
        Ok(())
    }

    async fn finish_batch(&mut self, id: BatchId, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE batches SET finished_at = $1, status = CASE WHEN cancel_requested THEN 'cancelled' \
             WHEN succeeded >= success_required THEN 'succeeded' ELSE 'failed' END \
             WHERE id = $2 AND finished_at IS NULL",
        )
        .bind(at.as_millis())
        .bind(id.to_string())
        .execute(&mut *self.conn)
        .await?;
        Ok(())
    }
}
