//! SQLite's side of the shared decisions (`store/plan`): the writer's open
//! transaction as a `plan::Transaction`.
//!
//! The writer runs on a thread of its own and never awaits: every method
//! here completes on its first poll, so `writer::run_now` drives the shared
//! decisions' futures to their end without a runtime. The writer also
//! serialises whole transactions, so a check made before any write
//! decides (`CHECKS_BEFORE_WRITES_DECIDE`).

use rusqlite::{OptionalExtension, params};

use super::writer::WriteTx;
use super::{admit, deps, ops};
use crate::domain::{Batch, BatchId, ErrorInfo, Job, JobId, JobState, NewBatch, NewJob, Timestamp};
use crate::store::plan::{EndedBatches, Released, Requested, StatesOf, Transaction};
use crate::store::rows::JOB_COLUMNS;
use crate::store::tenants::remembered_response;
use crate::store::{FinishedBatch, Rescued, StoreError, StoredResponse, SubmitRejection};

impl Transaction for WriteTx<'_> {
    const CHECKS_BEFORE_WRITES_DECIDE: bool = true;

    async fn seen_request(
        &mut self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<(String, StoredResponse)>, StoreError> {
        let seen: Option<(String, i64, String)> = self
            .conn
            .prepare_cached(
                "SELECT request_hash, status, body FROM idempotency_keys WHERE tenant = ? AND key = ?",
            )?
            .query_row(params![tenant, key], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()?;
        seen.map(remembered_response).transpose()
    }

    async fn glance_room(
        &mut self,
        requested: &Requested,
    ) -> Result<Option<SubmitRejection>, StoreError> {
        self.check_room(requested).await
    }

    async fn check_room(
        &mut self,
        requested: &Requested,
    ) -> Result<Option<SubmitRejection>, StoreError> {
        for (queue, count) in requested {
            if let Some(rejection) = admit::check_capacity(self.conn, self.counts, queue, *count)? {
                return Ok(Some(rejection));
            }
        }
        Ok(None)
    }

    async fn glance_quota(
        &mut self,
        tenant: &str,
        requested: u64,
    ) -> Result<Option<SubmitRejection>, StoreError> {
        self.check_quota(tenant, &[], requested).await
    }

    async fn check_quota(
        &mut self,
        tenant: &str,
        _own: &[JobId],
        requested: u64,
    ) -> Result<Option<SubmitRejection>, StoreError> {
        // Checked before this transaction writes its jobs: none of its own
        // are counted yet.
        super::tenants::check_quota(self.conn, self.counts, tenant, requested)
    }

    async fn active_holder(&mut self, tenant: &str, key: &str) -> Result<Option<Job>, StoreError> {
        admit::active_holder(self.conn, tenant, key)
    }

    async fn dependency_states(&mut self, ids: &[JobId]) -> Result<StatesOf, StoreError> {
        let mut state_of = self
            .conn
            .prepare_cached("SELECT state, tenant FROM jobs WHERE id = ?")?;
        let mut states = StatesOf::with_capacity(ids.len());
        for id in ids {
            let found: Option<(String, String)> = state_of
                .query_row(params![id.to_string()], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?;
            if let Some(found) = found {
                states.insert(*id, found);
            }
        }
        Ok(states)
    }

    async fn job(&mut self, id: JobId, _for_update: bool) -> Result<Option<Job>, StoreError> {
        ops::fetch_job(self.conn, id)
    }

    async fn batch(
        &mut self,
        id: BatchId,
        job_ids: Option<Vec<JobId>>,
    ) -> Result<Option<Batch>, StoreError> {
        ops::fetch_batch(self.conn, id, job_ids)
    }

    async fn batch_finished(&mut self, id: BatchId) -> Result<Option<bool>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT finished_at IS NOT NULL FROM batches WHERE id = ?")?
            .query_row(params![id.to_string()], |row| row.get(0))
            .optional()?)
    }

    async fn cancel_now(
        &mut self,
        id: JobId,
        error: &ErrorInfo,
        at: Timestamp,
    ) -> Result<Option<Job>, StoreError> {
        ops::cancel_now(self.conn, self.counts, id, error, at)
    }

    async fn expiring(&mut self, now: Timestamp, limit: u32) -> Result<Vec<JobId>, StoreError> {
        let mut expiring = self.conn.prepare_cached(
            "SELECT id FROM jobs INDEXED BY jobs_expiring WHERE expires_at <= ? \
             AND expires_at IS NOT NULL AND started_at IS NULL AND finished_at IS NULL \
             ORDER BY expires_at LIMIT ?",
        )?;
        let ids = expiring
            .query_map(params![now.as_millis(), i64::from(limit)], |row| {
                row.get::<_, String>(0)
            })?
            .collect::<Result<Vec<String>, _>>()?;
        crate::store::rows::parse_ids(&ids)
    }

    async fn insert_batch(&mut self, batch: &NewBatch, jobs: &[NewJob]) -> Result<(), StoreError> {
        admit::insert_batch(self.conn, batch, jobs)
    }

    async fn insert_jobs(&mut self, jobs: &[NewJob], pending: &[i64]) -> Result<(), StoreError> {
        admit::insert_jobs(self.conn, jobs, pending)?;
        // Counted before any cascade moves them on.
        self.counts.add(jobs);
        Ok(())
    }

    async fn link(&mut self, edges: &[(JobId, JobId)]) -> Result<(), StoreError> {
        let mut link = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO job_deps (depends_on_id, job_id) VALUES (?, ?)",
        )?;
        for (dependency, dependent) in edges {
            link.execute(params![dependency.to_string(), dependent.to_string()])?;
        }
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
        self.conn
            .prepare_cached(
                "INSERT INTO idempotency_keys (tenant, key, request_hash, status, body, created_at) \
                 VALUES (?, ?, ?, 202, ?, ?)",
            )?
            .execute(params![tenant, key, request_hash, body, at.as_millis()])?;
        Ok(())
    }

    async fn reopen(
        &mut self,
        id: JobId,
        from: JobState,
        state: JobState,
        at: Timestamp,
        pending: usize,
    ) -> Result<Option<Job>, StoreError> {
        ops::reopen(self.conn, self.counts, id, from, state, at, pending)
    }

    async fn flag_batch_cancelled(&mut self, id: BatchId) -> Result<bool, StoreError> {
        let flagged = self
            .conn
            .prepare_cached(
                "UPDATE batches SET cancel_requested = 1 WHERE id = ? AND finished_at IS NULL",
            )?
            .execute(params![id.to_string()])?;
        Ok(flagged > 0)
    }

    async fn cancel_waiting_of_batch(
        &mut self,
        id: BatchId,
        error: &ErrorInfo,
        at: Timestamp,
    ) -> Result<Vec<Job>, StoreError> {
        ops::cancel_waiting_of_batch(self.conn, self.counts, id, error, at)
    }

    async fn stop_running_of_batch(&mut self, id: BatchId) -> Result<Vec<JobId>, StoreError> {
        let mut stop = self.conn.prepare_cached(
            "UPDATE jobs SET cancel_requested = 1 WHERE batch_id = ? AND state = 'running' RETURNING id",
        )?;
        let ids = stop
            .query_map(params![id.to_string()], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        crate::store::rows::parse_ids(&ids)
    }

    async fn release_dependents(
        &mut self,
        id: JobId,
        at: Timestamp,
    ) -> Result<Vec<Released>, StoreError> {
        deps::release_dependents(self.conn, self.counts, id, at)
    }

    async fn cancel_dependents(
        &mut self,
        id: JobId,
        error: &ErrorInfo,
        at: Timestamp,
    ) -> Result<Vec<Job>, StoreError> {
        deps::cancel_dependents(self.conn, self.counts, id, error, at)
    }

    fn left_running(&mut self, job: &Rescued) {
        self.counts
            .moved(&job.queue, &job.tenant, JobState::Running, job.state);
    }

    async fn ended_batches(&mut self, batches: &[BatchId]) -> Result<EndedBatches, StoreError> {
        let mut ended = self.conn.prepare_cached(
            "SELECT tenant, finished_at IS NOT NULL FROM batches WHERE id = ? \
             AND (finished_at IS NOT NULL OR succeeded + failed + cancelled = total)",
        )?;
        let mut found = EndedBatches::default();
        for batch in batches {
            let row: Option<(String, bool)> = ended
                .query_row(params![batch.to_string()], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?;
            if let Some((tenant, finished)) = row {
                let batch = FinishedBatch { id: *batch, tenant };
                if finished {
                    found.finished.push(batch);
                } else {
                    found.held.push(batch);
                }
            }
        }
        Ok(found)
    }

    async fn batch_jobs(&mut self, id: BatchId) -> Result<Vec<Job>, StoreError> {
        ops::query_jobs(
            self.conn,
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE batch_id = ? ORDER BY batch_index"),
            params![id.to_string()],
        )
    }

    async fn reopen_batch(&mut self, id: BatchId) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE batches SET status = 'running', finished_at = NULL, cancel_requested = 0, \
                 retries = retries + 1 WHERE id = ?",
            )?
            .execute(params![id.to_string()])?;
        Ok(())
    }

    async fn finish_batch(&mut self, id: BatchId, at: Timestamp) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE batches SET finished_at = ?, status = CASE \
                 WHEN cancel_requested = 1 THEN 'cancelled' \
                 WHEN succeeded >= success_required THEN 'succeeded' ELSE 'failed' END \
                 WHERE id = ? AND finished_at IS NULL",
            )?
            .execute(params![at.as_millis(), id.to_string()])?;
        Ok(())
    }
}
