//! The embedded backend: one SQLite file in WAL mode, one writer connection
//! fed by a group-commit queue, and a pool of read-only connections.

mod admit;
mod claim;
mod counts;
mod deps;
mod keys;
mod limits;
mod lists;
mod ops;
mod refill;
mod rows;
mod schedules;
mod tenants;
mod tx;
mod webhooks;
mod writer;

use std::fs::File;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};
use tokio::sync::{mpsc, oneshot};

use self::rows::{
    BATCH_COLUMNS, BatchRow, JOB_COLUMNS, JobRow, QUEUE_COLUMNS, QueueRow, RESULT_COLUMNS,
    ResultRow, parse_ids,
};
use self::writer::{Command, WriteTx, run_now};
use super::gauges;
use super::lists::{LIST_WAIT, ListBudget};
use super::plan;
use super::{
    BatchCancelOutcome, BatchRetryOutcome, CancelOutcome, Claimed, ClaimedWebhook, Completion,
    CompletionResult, Effects, JobFilter, JobStore, Promoted, QueueDeletion, Refill, Rescued,
    RetryOutcome, ServiceGauges, StoreError, StoredResponse, Submission, SubmitOutcome,
    SubmitRejection, WebhookAttempt, WebhookOwner,
};
use crate::domain::{
    Batch, BatchId, BatchResult, BatchRetryScope, Gcra, IdempotencyKey, Job, JobId, JobState,
    KeyId, KeyState, LimitKey, Progress, QueueConfig, QueueCounts, QueueInfo, RateLimit, StoredKey,
    TenantConfig, Timestamp, WebhookDelivery,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Commands waiting for the writer before submitters wait for room: enough
/// for several full batches, small enough to bound memory.
const WRITE_QUEUE: usize = 4_096;
const READ_CONNECTIONS: u32 = 4;
/// Lists running at once (`store/lists.rs`): half the read connections,
/// so that point reads and `/readyz` always have the other half.
const LIST_PERMITS: usize = 2;

pub struct SqliteStore {
    writes: mpsc::Sender<Command>,
    reads: SqlitePool,
    lists: ListBudget,
    /// Held for the life of the store: a second process on the same file
    /// would break the single-writer assumptions (and fencing by startup rescue).
    /// Dropping it stops the checkpointer thread.
    _checkpoints: std::sync::mpsc::Sender<()>,
    _lock: File,
    /// The database file, whose disk `probe_writes` checks for room.
    path: PathBuf,
}

/// Free space below which the database's disk counts as full for
/// readiness: a group commit appends up to a few hundred KiB to the WAL, and
/// a disk with less than this left fails writes first and then everything.
const MIN_FREE_BYTES: u64 = 1024 * 1024;

impl SqliteStore {
    /// Opens (creating when missing) the database at `url`, e.g.
    /// `sqlite://spool.db`, and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        // The read pool keeps SQLite's default page cache: a reader's cache
        // is dropped whole whenever another connection wrote since its last
        // read, so under load a bigger one only costs the dropping.
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("temp_store", "memory");
        let path = options.get_filename().to_path_buf();
        if path.as_os_str().is_empty() || path.to_string_lossy().contains(":memory:") {
            return Err(StoreError::Unavailable(
                "embedded mode needs a database file, e.g. sqlite://spool.db".into(),
            ));
        }
        let lock = lock_database_when_free(path.clone()).await?;

        // Migrations through sqlx (one migrations folder per database), then
        // the writer's own connection.
        let mut migrating = options.connect().await?;
        MIGRATOR.run(&mut migrating).await?;
        migrating.close().await?;
        // The writer leaves `jobs.queue REFERENCES queues` unenforced (as
        // PostgreSQL has no such key): admission checks the queue in its
        // transaction, and a deleted queue's finished jobs keep its name.
        let writer = rusqlite::Connection::open(&path)?;
        // A small page cache (SQLite's default 2 000 KiB), not a big one:
        // a commit that follows a B-tree rebalance walks every page in the
        // cache. The rebalance renumbers a page through the reserved page
        // at 1 GiB (`balance_nonroot`), which leaves the cache believing
        // it holds pages past the end of the file, and the commit's
        // truncation then scans the whole cache for them. With 64 MiB
        // (16 000 pages) that walk was 13 % of the writer's time in a
        // drain; pages the cache drops are read again from the operating
        // system's cache, which costs less (see docs/benchmarks.md,
        // 2026-12-08).
        writer.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000; \
             PRAGMA foreign_keys = OFF; PRAGMA temp_store = MEMORY; PRAGMA cache_size = -2000; \
             PRAGMA wal_autocheckpoint = 0;",
        )?;
        writer.set_prepared_statement_cache_capacity(64);
        let checkpoints = spawn_checkpointer(&path)?;

        let reads = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .connect_with(options.read_only(true))
            .await?;
        let (writes, commands) = mpsc::channel(WRITE_QUEUE);
        spawn_writer(writer, commands)?;
        Ok(Self {
            writes,
            reads,
            lists: ListBudget::new(LIST_PERMITS, LIST_WAIT),
            _checkpoints: checkpoints,
            _lock: lock,
            path,
        })
    }

    /// The plan SQLite chooses for the list statement of `filter`, one line
    /// per step (`SEARCH jobs USING INDEX …`): which index serves a filter.
    pub async fn explain_list(
        &self,
        tenant: &str,
        filter: &JobFilter,
    ) -> Result<Vec<String>, StoreError> {
        lists::explain(&self.reads, tenant, filter).await
    }

    /// Runs `work` on the writer, in its next group's transaction, and
    /// returns its result once that committed.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteTx<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (command, reply) = Command::new(work);
        self.send(command, reply).await
    }

    /// Hands `command` to the writer and waits for its `reply`.
    async fn send<T>(
        &self,
        command: Command,
        reply: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.writes
            .send(command)
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?;
        reply
            .await
            .map_err(|_| StoreError::Unavailable("the writer has stopped".into()))?
    }
}

/// Runs the writer on a thread of its own: it blocks on SQLite, never on
/// the async runtime.
fn spawn_writer(
    conn: rusqlite::Connection,
    commands: mpsc::Receiver<Command>,
) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("spool-sqlite-writer".into())
        .spawn(move || writer::run(conn, commands, refill::complete_all))
        .map_err(|e| StoreError::Unavailable(format!("cannot start the writer: {e}")))?;
    Ok(())
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Checkpoints the WAL from a thread and connection of its own. SQLite's
/// automatic checkpoint would run inside the writer's commits, copying pages
/// and waiting for `fsync` while every submission waits behind it; a passive
/// checkpoint here never blocks the writer.
fn spawn_checkpointer(path: &std::path::Path) -> Result<std::sync::mpsc::Sender<()>, StoreError> {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch("PRAGMA busy_timeout = 10000;")?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("spool-sqlite-checkpoint".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    tracing::warn!(%error, "WAL checkpoint failed");
                }
            }
        })
        .map_err(|e| StoreError::Unavailable(format!("cannot start the checkpointer: {e}")))?;
    Ok(stop)
}

/// How long a start waits for the database's lock: a previous instance may
/// still be letting go of it (a restart, or a service stopped and started
/// again within one process while its last connections close).
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Takes an exclusive lock on `<file>.lock`, waiting up to [`LOCK_WAIT`]
/// while another holds it.
async fn lock_database_when_free(path: PathBuf) -> Result<File, StoreError> {
    let mut lock_path = path.into_os_string();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let file = File::create(&lock_path).map_err(|e| {
        StoreError::Unavailable(format!("cannot create {}: {e}", lock_path.display()))
    })?;
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        if file.try_lock().is_ok() {
            return Ok(file);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::Unavailable(format!(
                "another Spool process uses this database ({} is locked); \
                 use PostgreSQL to run several instances",
                lock_path.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bytes an unprivileged writer may still use on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> Result<u64, StoreError> {
    let stats = rustix::fs::statvfs(path).map_err(|e| {
        StoreError::Unavailable(format!("cannot read the database's disk space: {e}"))
    })?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

#[async_trait]
impl JobStore for SqliteStore {
    fn exclusive(&self) -> bool {
        true
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reads).await?;
        if self.writes.is_closed() {
            return Err(StoreError::Unavailable("the writer has stopped".into()));
        }
        Ok(())
    }

    async fn probe_writes(&self) -> Result<(), StoreError> {
        let free = free_bytes(&self.path)?;
        if free < MIN_FREE_BYTES {
            return Err(StoreError::Unavailable(format!(
                "the database's disk is full ({free} bytes free)"
            )));
        }
        self.write(|tx| ops::probe(tx.conn)).await
    }

    async fn submit(
        &self,
        submission: Submission,
    ) -> Result<Result<SubmitOutcome, SubmitRejection>, StoreError> {
        self.write(move |tx| admit::submit(tx, submission)).await
    }

    async fn submit_and_claim(
        &self,
        submission: Submission,
        refill: Refill,
        owner: &str,
    ) -> Result<(Result<SubmitOutcome, SubmitRejection>, Claimed), StoreError> {
        let owner = owner.to_owned();
        self.write(move |tx| {
            let outcome = admit::submit(tx, submission)?;
            let Ok(SubmitOutcome::Created { jobs, .. }) = &outcome else {
                return Ok((outcome, Claimed::default()));
            };
            let [admitted] = jobs.as_slice() else {
                return Ok((outcome, Claimed::default()));
            };
            let admitted = admitted.id;
            // In the admission's transaction, sharing its commit.
            let claimed = claim::claim_admitted(tx, admitted, &refill, &owner)
                .unwrap_or_else(|error| {
                    tracing::error!(%error, queue = %refill.queue, "claiming a submitted job for its free slot failed");
                    Claimed::default()
                });
            Ok((outcome, claimed))
        })
        .await
    }

    async fn get_job(&self, tenant: &str, id: JobId) -> Result<Option<Job>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ? AND tenant = ?");
        let row: Option<JobRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(id.to_string())
            .bind(tenant)
            .fetch_optional(&self.reads)
            .await?;
        row.map(Job::try_from).transpose()
    }

    async fn queue_position(&self, job: &Job) -> Result<u64, StoreError> {
        // Claims serve tenants round-robin (`store/fair.rs`): ahead of a job
        // are its own tenant's jobs ahead of it in claim order, and as many
        // of each other tenant's as it has rounds to wait, at most.
        let (ahead, others): (i64, i64) = sqlx::query_as(
            "WITH own AS (SELECT count(*) AS n FROM jobs WHERE queue = ?1 AND tenant = ?5 \
                 AND state = 'queued' AND (priority > ?2 OR (priority = ?2 AND \
                 (run_at < ?3 OR (run_at = ?3 AND id < ?4))))) \
             SELECT own.n, (SELECT coalesce(sum(min(n, own.n)), 0) FROM \
                 (SELECT count(*) AS n FROM jobs WHERE queue = ?1 AND state = 'queued' \
                  AND tenant <> ?5 GROUP BY tenant)) FROM own",
        )
        .bind(&job.queue)
        .bind(i64::from(job.priority))
        .bind(job.run_at.as_millis())
        .bind(job.id.to_string())
        .bind(&job.tenant)
        .fetch_one(&self.reads)
        .await?;
        Ok((ahead + others).max(0) as u64)
    }

    async fn list_jobs(&self, tenant: &str, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        lists::list_jobs(&self.reads, &self.lists, tenant, filter).await
    }

    async fn dependency_results(
        &self,
        ids: &[JobId],
    ) -> Result<Vec<(JobId, Option<serde_json::Value>)>, StoreError> {
        let mut results = Vec::with_capacity(ids.len());
        for id in ids {
            let result: Option<Option<String>> =
                sqlx::query_scalar("SELECT result FROM jobs WHERE id = ?")
                    .bind(id.to_string())
                    .fetch_optional(&self.reads)
                    .await?;
            let value = result
                .flatten()
                .map(|text| serde_json::from_str(&text))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("job {id}: result: {e}")))?;
            results.push((*id, value));
        }
        Ok(results)
    }

    async fn get_batch(&self, tenant: &str, id: BatchId) -> Result<Option<Batch>, StoreError> {
        // One snapshot for the counts and the ids.
        let mut tx = self.reads.begin().await?;
        let sql = format!("SELECT {BATCH_COLUMNS} FROM batches WHERE id = ? AND tenant = ?");
        let row: Option<BatchRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(id.to_string())
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM jobs WHERE batch_id = ? ORDER BY batch_index")
                .bind(id.to_string())
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        row.into_batch(parse_ids(&ids)?).map(Some)
    }

    async fn batch_results(
        &self,
        id: BatchId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<BatchResult>, StoreError> {
        let sql = format!(
            "SELECT {RESULT_COLUMNS} FROM jobs WHERE batch_id = ? AND batch_seq > ? \
             AND finished_at IS NOT NULL ORDER BY batch_seq LIMIT CAST(? AS INTEGER)"
        );
        let rows: Vec<ResultRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(id.to_string())
            .bind(after.min(i64::MAX as u64) as i64)
            .bind(i64::from(limit))
            .fetch_all(&self.reads)
            .await?;
        rows.into_iter().map(BatchResult::try_from).collect()
    }

    async fn cancel_batch(
        &self,
        tenant: &str,
        id: BatchId,
        at: Timestamp,
    ) -> Result<BatchCancelOutcome, StoreError> {
        let tenant = tenant.to_owned();
        self.write(move |tx| run_now(plan::cancel_batch(tx, &tenant, id, at)))
            .await
    }

    async fn claim_ready(
        &self,
        queue: &str,
        limit: u32,
        owner: &str,
        lease_until: Timestamp,
        now: Timestamp,
    ) -> Result<Claimed, StoreError> {
        let (queue, owner) = (queue.to_owned(), owner.to_owned());
        self.write(move |tx| claim::claim(tx, &queue, limit, &owner, lease_until, now))
            .await
    }

    async fn put_limit(
        &self,
        name: &str,
        gcra: Gcra,
        at: Timestamp,
    ) -> Result<(RateLimit, bool), StoreError> {
        let name = name.to_owned();
        self.write(move |tx| limits::put(tx.conn, &name, gcra, at))
            .await
    }

    async fn get_limit(&self, name: &str) -> Result<Option<RateLimit>, StoreError> {
        limits::get(&self.reads, name).await
    }

    async fn list_limits(&self) -> Result<Vec<RateLimit>, StoreError> {
        limits::list(&self.reads).await
    }

    async fn delete_limit(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.write(move |tx| limits::delete(tx.conn, &name)).await
    }

    async fn limit_keys(&self, keys: &[LimitKey]) -> Result<Vec<(LimitKey, KeyState)>, StoreError> {
        limits::keys(&self.reads, keys).await
    }

    async fn hold_limit_key(&self, key: &LimitKey, until: Timestamp) -> Result<(), StoreError> {
        let key = key.clone();
        self.write(move |tx| limits::hold(tx.conn, &key, until))
            .await
    }

    async fn next_expiry(&self) -> Result<Option<Timestamp>, StoreError> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT min(expires_at) FROM jobs INDEXED BY jobs_expiring \
             WHERE expires_at IS NOT NULL AND started_at IS NULL AND finished_at IS NULL",
        )
        .fetch_one(&self.reads)
        .await?;
        Ok(next.map(Timestamp::from_millis))
    }

    async fn expire_due(&self, now: Timestamp) -> Result<(Vec<Job>, Effects), StoreError> {
        self.write(move |tx| run_now(plan::expire_due(tx, now)))
            .await
    }

    async fn complete(&self, completion: Completion) -> Result<CompletionResult, StoreError> {
        let (command, reply) = Command::complete(completion, None);
        Ok(self.send(command, reply).await?.0)
    }

    async fn complete_and_refill(
        &self,
        completion: Completion,
        refill: Refill,
    ) -> Result<(CompletionResult, Claimed), StoreError> {
        let (command, reply) = Command::complete(completion, Some(refill));
        self.send(command, reply).await
    }

    async fn report_progress(
        &self,
        id: JobId,
        attempt: u32,
        progress: Progress,
    ) -> Result<(), StoreError> {
        self.write(move |tx| ops::report_progress(tx.conn, id, attempt, &progress))
            .await
    }

    async fn cancel_job(
        &self,
        tenant: &str,
        id: JobId,
        at: Timestamp,
    ) -> Result<CancelOutcome, StoreError> {
        let tenant = tenant.to_owned();
        self.write(move |tx| run_now(plan::cancel_job(tx, &tenant, id, at)))
            .await
    }

    async fn retry_job(
        &self,
        tenant: &str,
        id: JobId,
        at: Timestamp,
    ) -> Result<RetryOutcome, StoreError> {
        let tenant = tenant.to_owned();
        self.write(move |tx| run_now(plan::retry_job(tx, &tenant, id, at)))
            .await
    }

    async fn retry_batch(
        &self,
        tenant: &str,
        id: BatchId,
        scope: BatchRetryScope,
        idempotency: Option<IdempotencyKey>,
        at: Timestamp,
    ) -> Result<BatchRetryOutcome, StoreError> {
        let tenant = tenant.to_owned();
        self.write(move |tx| {
            let rerun = plan::Rerun::ByHand {
                scope,
                idempotency: idempotency.as_ref(),
            };
            run_now(plan::retry_batch(tx, &tenant, id, rerun, at))
        })
        .await
    }

    async fn renew_leases(
        &self,
        owner: &str,
        ids: &[JobId],
        until: Timestamp,
    ) -> Result<Vec<JobId>, StoreError> {
        let (owner, ids) = (owner.to_owned(), ids.to_vec());
        self.write(move |tx| ops::renew(tx.conn, &owner, &ids, until))
            .await
    }

    async fn rescue(
        &self,
        now: Timestamp,
        not_owner: Option<&str>,
    ) -> Result<(Vec<Rescued>, Effects), StoreError> {
        let not_owner = not_owner.map(str::to_owned);
        self.write(move |tx| ops::rescue(tx, now, not_owner)).await
    }

    async fn promote_due(&self, now: Timestamp) -> Result<Promoted, StoreError> {
        self.write(move |tx| ops::promote(tx.conn, tx.counts, now))
            .await
    }

    async fn prune(
        &self,
        finished_before: Timestamp,
        keys_before: Timestamp,
    ) -> Result<u64, StoreError> {
        self.write(move |tx| ops::prune(tx.conn, finished_before, keys_before))
            .await
    }

    async fn next_webhook_due(&self) -> Result<Option<Timestamp>, StoreError> {
        webhooks::next_due(&self.reads).await
    }

    async fn claim_webhooks(
        &self,
        now: Timestamp,
        limit: u32,
        lease_until: Timestamp,
    ) -> Result<Vec<ClaimedWebhook>, StoreError> {
        self.write(move |tx| webhooks::claim(tx.conn, now, limit, lease_until))
            .await
    }

    async fn record_webhook(&self, attempt: WebhookAttempt) -> Result<(), StoreError> {
        self.write(move |tx| webhooks::record(tx.conn, &attempt))
            .await
    }

    async fn latest_webhook(
        &self,
        tenant: &str,
        owner: WebhookOwner,
    ) -> Result<Option<WebhookDelivery>, StoreError> {
        webhooks::latest(&self.reads, tenant, owner).await
    }

    async fn gauges(&self) -> Result<ServiceGauges, StoreError> {
        let waiting: Vec<String> =
            sqlx::query_scalar("SELECT queue FROM queue_counts WHERE state = 'queued' AND n > 0")
                .fetch_all(&self.reads)
                .await?;
        let sql = gauges::oldest_ready_sql("?1");
        let mut oldest = Vec::with_capacity(waiting.len());
        for queue in waiting {
            let at: Option<i64> = sqlx::query_scalar(AssertSqlSafe(sql.as_str()))
                .bind(&queue)
                .fetch_one(&self.reads)
                .await?;
            oldest.extend(at.map(|at| (queue, at)));
        }
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhooks WHERE status = 'pending'")
                .fetch_one(&self.reads)
                .await?;
        Ok(ServiceGauges {
            oldest_ready: oldest
                .into_iter()
                .map(|(queue, at)| (queue, Timestamp::from_millis(at)))
                .collect(),
            webhooks_pending: pending.max(0) as u64,
        })
    }

    async fn list_queues(&self) -> Result<Vec<QueueInfo>, StoreError> {
        let sql = format!("SELECT {QUEUE_COLUMNS} FROM queues ORDER BY name");
        let rows: Vec<QueueRow> = sqlx::query_as(AssertSqlSafe(sql))
            .fetch_all(&self.reads)
            .await?;
        let counts: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT queue, state, n FROM queue_counts WHERE state IN ('scheduled', 'queued', 'running')",
        )
        .fetch_all(&self.reads)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let config = QueueConfig::from(row);
                let counts = counts_of(&config.name, &counts);
                QueueInfo::new(config, counts)
            })
            .collect())
    }

    async fn get_queue(&self, name: &str) -> Result<Option<QueueInfo>, StoreError> {
        let sql = format!("SELECT {QUEUE_COLUMNS} FROM queues WHERE name = ?");
        let row: Option<QueueRow> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.reads)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let counts: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT queue, state, n FROM queue_counts WHERE queue = ? \
             AND state IN ('scheduled', 'queued', 'running')",
        )
        .bind(name)
        .fetch_all(&self.reads)
        .await?;
        let config = QueueConfig::from(row);
        let counts = counts_of(&config.name, &counts);
        Ok(Some(QueueInfo::new(config, counts)))
    }

    async fn upsert_queue(&self, config: &QueueConfig) -> Result<bool, StoreError> {
        let config = config.clone();
        self.write(move |tx| ops::upsert_queue(tx.conn, &config))
            .await
    }

    async fn delete_queue(&self, name: &str) -> Result<QueueDeletion, StoreError> {
        let name = name.to_owned();
        self.write(move |tx| ops::delete_queue(tx.conn, tx.counts, &name))
            .await
    }

    async fn insert_key(&self, key: &StoredKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.write(move |tx| keys::insert(tx.conn, &key)).await
    }

    async fn stored_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        keys::live(&self.reads).await
    }

    async fn revoke_key(&self, id: KeyId, at: Timestamp) -> Result<bool, StoreError> {
        self.write(move |tx| keys::revoke(tx.conn, id, at)).await
    }

    async fn record_key_use(&self, used: &[(KeyId, Timestamp)]) -> Result<(), StoreError> {
        let used = used.to_vec();
        self.write(move |tx| keys::record_use(tx.conn, &used)).await
    }

    async fn tenants(&self) -> Result<Vec<TenantConfig>, StoreError> {
        tenants::all(&self.reads).await
    }

    async fn upsert_tenant(&self, tenant: &TenantConfig) -> Result<bool, StoreError> {
        let tenant = tenant.clone();
        self.write(move |tx| tenants::upsert(tx.conn, &tenant))
            .await
    }

    async fn tenant_pending(&self, tenant: &str) -> Result<u64, StoreError> {
        tenants::pending(&self.reads, tenant).await
    }

    async fn idempotent_response(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<(String, StoredResponse)>, StoreError> {
        tenants::idempotent_response(&self.reads, tenant, key).await
    }
}

fn counts_of(queue: &str, rows: &[(String, String, i64)]) -> QueueCounts {
    let mut counts = QueueCounts::default();
    for (name, state, n) in rows {
        if name != queue {
            continue;
        }
        let n = (*n).max(0) as u64;
        match state.parse() {
            Ok(JobState::Scheduled) => counts.scheduled = n,
            Ok(JobState::Queued) => counts.queued = n,
            Ok(JobState::Running) => counts.running = n,
            _ => {}
        }
    }
    counts
}
