//! The shared backend: PostgreSQL, used by several Spool instances at once.
//!
//! Every write is one transaction on a pooled connection (READ COMMITTED),
//! locking what it must (see each module). Nothing here assumes it is the
//! database's only user: claims skip rows other instances hold, admission
//! serialises per queue on the queue's row, and the database's own unique
//! indexes settle races on keys, which the store answers by running the
//! transaction again.

mod admit;
mod bus;
mod claim;
mod complete;
mod counts;
mod deps;
mod group;
mod keys;
mod limits;
mod lists;
mod maintenance;
mod ops;
mod plain;
mod reads;
mod tenants;
mod tx;
mod webhooks;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use self::tx::decide;
use super::fair::Turns;
use super::lists::{LIST_WAIT, ListBudget};
use super::plan;
use super::{
    BatchCancelOutcome, BatchRetryOutcome, CancelOutcome, Claimed, ClaimedWebhook, Completion,
    CompletionResult, Effects, JobFilter, JobStore, Promoted, QueueDeletion, Rescued, RetryOutcome,
    ServiceGauges, StoreError, StoredResponse, Submission, SubmitOutcome, SubmitRejection,
    WebhookAttempt, WebhookOwner,
};
use crate::domain::{
    Batch, BatchId, BatchResult, BatchRetryScope, Gcra, IdempotencyKey, Job, JobId, KeyId,
    KeyState, LimitKey, NewJob, Progress, QueueConfig, QueueInfo, RateLimit, StoredKey,
    TenantConfig, Timestamp, WebhookDelivery,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per instance. Enough for the worker pool's claims and
/// completions, the API's submissions and reads, and the maintenance tasks
/// to proceed side by side; small enough that a few instances stay well
/// under PostgreSQL's default `max_connections` (100).
pub const DEFAULT_POOL_SIZE: u32 = 16;

/// How long a request waits for a free connection before the store reports
/// itself unavailable (503) rather than hanging the request.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs of one write transaction in all when it meets a deadlock (40P01), a
/// serialization failure (40001) or a unique violation (23505). Each means a
/// concurrent transaction got there first; the next run starts from a new
/// snapshot that shows its outcome (the key's holder, the replayed request).
const MAX_RUNS: u32 = 3;

/// Connections that claim jobs. One dispatcher per instance claims for
/// all its queues at once, so two are plenty.
///
/// Their commits do not wait for the WAL flush (`synchronous_commit =
/// off`): a claim is then visible at once and stays atomic, but a crash of
/// the database server can lose the last fraction of a second of claims.
/// Losing one costs a second run, as a lost lease does: the job is back in
/// its queue with its previous attempt number and runs again (a client may
/// have seen it start). The first run's outcome is fenced off when another
/// instance took the job (lease owner) or it is queued still; if this same
/// instance claimed it again, the two runs share the attempt and the first
/// outcome stored counts, the other finding the job no longer running.
/// Everything else a client is told (admission, outcomes, cancellation)
/// commits durably, and each such commit flushes the claims written before
/// it. This takes a WAL flush off every claim, which the worker pools of
/// all instances wait on.
const CLAIM_CONNECTIONS: u32 = 2;

/// Most submissions admitted in one group: one INSERT of this many rows
/// stays short.
const MAX_ADMISSIONS: usize = 512;

/// Most attempt outcomes stored in one group: more than a worker pool
/// finishes between two commits.
const MAX_COMPLETIONS: usize = 1_024;

/// Groups of outcomes stored at once: one can be committing while the next
/// is written.
const COMPLETION_GROUPS: usize = 2;

pub struct PgStore {
    pool: PgPool,
    /// The dispatcher's connections, which commit claims without waiting
    /// for the WAL flush (see `CLAIM_CONNECTIONS`).
    claims: PgPool,
    bus: Arc<bus::PgBus>,
    /// Plain single-job submissions, admitted in groups.
    admissions: group::Grouper<NewJob, Result<SubmitOutcome, SubmitRejection>>,
    /// Attempt outcomes, stored in groups.
    completions: group::Grouper<Completion, CompletionResult>,
    /// Lists running at once (`store/lists.rs`).
    lists: ListBudget,
    /// The tenant each queue's claims served last, in this instance.
    turns: Turns,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://…`) with the default
    /// pool size and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with_pool_size(url, DEFAULT_POOL_SIZE).await
    }

    /// As `open`, with at most `connections` connections.
    pub async fn open_with_pool_size(url: &str, connections: u32) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("bad database URL: {e}")))?;
        // `spool` in `pg_stat_activity`, unless the URL names the instance
        // (`?application_name=spool-eu-1`).
        let options = match options.get_application_name() {
            Some(_) => options,
            None => options.application_name("spool"),
        };
        // Migrations on a connection of their own, closed afterwards: the
        // migrator holds a session-level advisory lock meanwhile, which must
        // not outlive it on a pooled connection.
        let mut migrating = options.connect().await?;
        // sqlx's PostgreSQL migrator takes `pg_advisory_lock` (keyed on the
        // database name) before it reads `_sqlx_migrations` and releases it
        // after the last migration (sqlx-postgres `migrate.rs`, `lock` and
        // `unlock`, called by `Migrator::run_direct`), so instances that
        // start together apply each migration once, one after the other.
        MIGRATOR.run(&mut migrating).await?;
        migrating.close().await?;
        let claims = PgPoolOptions::new()
            .max_connections(CLAIM_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options.clone().options([("synchronous_commit", "off")]));
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        // One bus per schema: services sharing a database in separate
        // schemas never hear each other.
        let schema: String = sqlx::query_scalar("SELECT current_schema()")
            .fetch_one(&pool)
            .await?;
        let bus = bus::PgBus::start(pool.clone(), bus::channel_for(&schema)).await?;
        let admissions = group::Grouper::start(pool.clone(), MAX_ADMISSIONS, 1, plain::admit_plain);
        let completions = group::Grouper::start(
            pool.clone(),
            MAX_COMPLETIONS,
            COMPLETION_GROUPS,
            complete::complete_group,
        );
        Ok(Self {
            pool,
            claims,
            bus,
            admissions,
            completions,
            lists: ListBudget::new(lists::list_permits(connections), LIST_WAIT),
            turns: Turns::default(),
        })
    }

    /// The plan PostgreSQL chooses for the list statement of `filter`, with
    /// sequential scans ruled out (`EXPLAIN (COSTS OFF)` lines): which index
    /// serves a filter, whatever the table's size.
    pub async fn explain_list(
        &self,
        tenant: &str,
        filter: &JobFilter,
    ) -> Result<Vec<String>, StoreError> {
        lists::explain(&self.pool, tenant, filter).await
    }

    /// Closes every connection; later calls fail as unavailable.
    pub async fn close(&self) {
        self.bus.stop();
        self.claims.close().await;
        self.pool.close().await;
    }
}

/// Awaits the future `$run` makes, and makes and awaits it again on a
/// conflict (`StoreError::is_conflict`, at most `MAX_RUNS` runs).
macro_rules! retrying {
    ($run:expr) => {{
        let mut runs = 1;
        loop {
            let result: Result<_, StoreError> = $run.await;
            match result {
                Err(error) if runs < MAX_RUNS && error.is_conflict() => runs += 1,
                other => break other,
            }
        }
    }};
}

/// Runs `$body` (which uses the transaction `$tx`) in a new transaction and
/// commits it, or rolls it back when `$keep` says the outcome must not be
/// kept; runs it again on a retryable failure (`retrying!`).
macro_rules! transaction {
    ($pool:expr, |$tx:ident| $body:expr) => {
        transaction!($pool, |$tx| $body, |_outcome| true)
    };
    ($pool:expr, |$tx:ident| $body:expr, |$outcome:ident| $keep:expr) => {
        retrying!(async {
            let mut $tx = $pool.begin().await?;
            let $outcome = $body;
            if $keep {
                $tx.commit().await?;
            } else {
                $tx.rollback().await?;
            }
            Ok($outcome)
        })
    };
}

// After the macros, which it uses.
mod schedules;

#[async_trait]
impl JobStore for PgStore {
    fn bus(&self) -> Option<Arc<dyn super::Bus>> {
        Some(self.bus.clone())
    }

    fn exclusive(&self) -> bool {
        // Other instances share the database: only expired leases are theirs
        // to give up.
        false
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn probe_writes(&self) -> Result<(), StoreError> {
        // A transaction given an id commits a WAL record and waits for its
        // flush: as much a write as a job's, touching no table.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn submit(
        &self,
        submission: Submission,
    ) -> Result<Result<SubmitOutcome, SubmitRejection>, StoreError> {
        if let Some(job) = group::plain(&submission) {
            return self.admissions.run(job.clone()).await;
        }
        transaction!(
            self.pool,
            |tx| decide!(tx, |decision| plan::admit(decision, submission.clone())),
            |outcome| matches!(outcome, Ok(SubmitOutcome::Created { .. }))
        )
    }

    async fn get_job(&self, tenant: &str, id: JobId) -> Result<Option<Job>, StoreError> {
        reads::get_job(&self.pool, tenant, id).await
    }

    async fn queue_position(&self, job: &Job) -> Result<u64, StoreError> {
        reads::queue_position(&self.pool, job).await
    }

    async fn list_jobs(&self, tenant: &str, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        lists::list_jobs(&self.pool, &self.lists, tenant, filter).await
    }

    async fn dependency_results(
        &self,
        ids: &[JobId],
    ) -> Result<Vec<(JobId, Option<serde_json::Value>)>, StoreError> {
        reads::dependency_results(&self.pool, ids).await
    }

    async fn get_batch(&self, tenant: &str, id: BatchId) -> Result<Option<Batch>, StoreError> {
        reads::get_batch(&self.pool, tenant, id).await
    }

    async fn batch_results(
        &self,
        id: BatchId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<BatchResult>, StoreError> {
        reads::batch_results(&self.pool, id, after, limit).await
    }

    async fn cancel_batch(
        &self,
        tenant: &str,
        id: BatchId,
        at: Timestamp,
    ) -> Result<BatchCancelOutcome, StoreError> {
        transaction!(self.pool, |tx| decide!(tx, |decision| plan::cancel_batch(
            decision, tenant, id, at
        )))
    }

    async fn claim_ready(
        &self,
        queue: &str,
        limit: u32,
        owner: &str,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<Claimed, StoreError> {
        let probe = claim::probe(&self.claims, queue).await?;
        // A pause is service-wide from the moment it is stored, whether or
        // not this instance has heard of it yet.
        if probe.paused || probe.first.is_none() {
            return Ok(Claimed::default());
        }
        if !probe.keyed
            && !probe.limited
            && let Some(tenant) = probe.one_tenant()
        {
            let jobs = retrying!(claim::claim_plain(
                &self.claims,
                queue,
                tenant,
                limit,
                owner,
                lease_until,
                now
            ))?;
            return Ok(Claimed {
                jobs,
                next_eligible_at: None,
            });
        }
        let claimant = claim::Claimant {
            owner,
            lease_until,
            now,
        };
        transaction!(self.claims, |tx| claim::claim_fair_counted(
            &mut tx,
            &self.turns,
            queue,
            &probe,
            limit,
            &claimant
        )
        .await?)
    }

    async fn put_limit(
        &self,
        name: &str,
        gcra: Gcra,
        at: Timestamp,
    ) -> Result<(RateLimit, bool), StoreError> {
        limits::put(&self.pool, name, gcra, at).await
    }

    async fn get_limit(&self, name: &str) -> Result<Option<RateLimit>, StoreError> {
        limits::get(&self.pool, name).await
    }

    async fn list_limits(&self) -> Result<Vec<RateLimit>, StoreError> {
        limits::list(&self.pool).await
    }

    async fn delete_limit(&self, name: &str) -> Result<bool, StoreError> {
        limits::delete(&self.pool, name).await
    }

    async fn limit_keys(&self, keys: &[LimitKey]) -> Result<Vec<(LimitKey, KeyState)>, StoreError> {
        limits::keys(&self.pool, keys).await
    }

    async fn hold_limit_key(&self, key: &LimitKey, until: Timestamp) -> Result<(), StoreError> {
        limits::hold(&self.pool, key, until).await
    }

    async fn next_expiry(&self) -> Result<Option<Timestamp>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT min(expires_at) FROM jobs \
             WHERE expires_at IS NOT NULL AND started_at IS NULL AND finished_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(next.map(Timestamp::from_millis))
    }

    async fn expire_due(&self, now: Timestamp) -> Result<(Vec<Job>, Effects), StoreError> {
        transaction!(self.pool, |tx| decide!(tx, |decision| plan::expire_due(
            decision, now
        )))
    }

    async fn complete(&self, completion: Completion) -> Result<CompletionResult, StoreError> {
        self.completions.run(completion).await
    }

    async fn report_progress(
        &self,
        id: JobId,
        attempt: u32,
        progress: Progress,
    ) -> Result<(), StoreError> {
        // One statement: atomic by itself, no transaction to open.
        ops::report_progress(&self.pool, id, attempt, &progress).await
    }

    async fn cancel_job(
        &self,
        tenant: &str,
        id: JobId,
        at: Timestamp,
    ) -> Result<CancelOutcome, StoreError> {
        transaction!(self.pool, |tx| decide!(tx, |decision| plan::cancel_job(
            decision, tenant, id, at
        )))
    }

    async fn retry_job(
        &self,
        tenant: &str,
        id: JobId,
        at: Timestamp,
    ) -> Result<RetryOutcome, StoreError> {
        transaction!(
            self.pool,
            |tx| decide!(tx, |decision| plan::retry_job(decision, tenant, id, at)),
            |outcome| matches!(outcome, RetryOutcome::Retried(_))
        )
    }

    async fn retry_batch(
        &self,
        tenant: &str,
        id: BatchId,
        scope: BatchRetryScope,
        idempotency: Option<IdempotencyKey>,
        at: Timestamp,
    ) -> Result<BatchRetryOutcome, StoreError> {
        let rerun = plan::Rerun::ByHand {
            scope,
            idempotency: idempotency.as_ref(),
        };
        transaction!(
            self.pool,
            |tx| decide!(tx, |decision| plan::retry_batch(
                decision, tenant, id, rerun, at
            )),
            |outcome| matches!(outcome, BatchRetryOutcome::Retried { .. })
        )
    }

    async fn renew_leases(
        &self,
        owner: &str,
        ids: &[JobId],
        until: Timestamp,
    ) -> Result<Vec<JobId>, StoreError> {
        maintenance::renew(&self.pool, owner, ids, until).await
    }

    async fn rescue(
        &self,
        now: Timestamp,
        not_owner: Option<&str>,
    ) -> Result<(Vec<Rescued>, Effects), StoreError> {
        transaction!(self.pool, |tx| maintenance::rescue(&mut tx, now, not_owner)
            .await?)
    }

    async fn promote_due(&self, now: Timestamp) -> Result<Promoted, StoreError> {
        transaction!(self.pool, |tx| maintenance::promote(&mut tx, now).await?)
    }

    async fn prune(
        &self,
        finished_before: Timestamp,
        keys_before: Timestamp,
    ) -> Result<u64, StoreError> {
        transaction!(self.pool, |tx| maintenance::prune(
            &mut tx,
            finished_before,
            keys_before
        )
        .await?)
    }

    async fn next_webhook_due(&self) -> Result<Option<Timestamp>, StoreError> {
        webhooks::next_due(&self.pool).await
    }

    async fn claim_webhooks(
        &self,
        now: Timestamp,
        limit: u32,
        lease_until: Timestamp,
    ) -> Result<Vec<ClaimedWebhook>, StoreError> {
        webhooks::claim(&self.pool, now, limit, lease_until).await
    }

    async fn record_webhook(&self, attempt: WebhookAttempt) -> Result<(), StoreError> {
        webhooks::record(&self.pool, &attempt).await
    }

    async fn latest_webhook(
        &self,
        tenant: &str,
        owner: WebhookOwner,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        webhooks::latest(&self.pool, tenant, owner).await
    }

    async fn list_queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        reads::queues(&self.pool, None).await
    }

    async fn gauges(&self) -> Result<ServiceGauges, StoreError> {
        reads::gauges(&self.pool).await
    }

    async fn get_queue(&self, name: &str) -> Result<Option<QueueInfo>, StoreError> {
        let mut queues = reads::queues(&self.pool, Some(name)).await?;
        Ok(queues.pop())
    }

    async fn upsert_queue(&self, config: &QueueConfig) -> Result<bool, StoreError> {
        maintenance::upsert_queue(&self.pool, config).await
    }

    async fn delete_queue(&self, name: &str) -> Result<QueueDeletion, StoreError> {
        maintenance::delete_queue(&self.pool, name).await
    }

    async fn insert_key(&self, key: &StoredKey) -> Result<(), StoreError> {
        keys::insert(&self.pool, key).await
    }

    async fn stored_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        keys::live(&self.pool).await
    }

    async fn revoke_key(&self, id: KeyId, at: Timestamp) -> Result<bool, StoreError> {
        keys::revoke(&self.pool, id, at).await
    }

    async fn record_key_use(&self, used: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        keys::record_use(&self.pool, used).await
    }

    async fn tenants(&self) -> Result<Vec<TenantConfig>, StoreError> {
        tenants::all(&self.pool).await
    }

    async fn upsert_tenant(&self, tenant: &TenantConfig) -> Result<bool, StoreError> {
        retrying!(tenants::upsert(&self.pool, tenant))
    }

    async fn tenant_pending(&self, tenant: &str) -> Result<u64, StoreError> {
        tenants::pending(&self.pool, tenant).await
    }

    async fn idempotent_response(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<(String, StoredResponse)>, StoreError> {
        tenants::idempotent_response(&self.pool, tenant, key).await
    }
}
