//! Rows of the SQLite schema and their conversion to domain types.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::domain::{
    Backoff, Batch, BatchCounts, BatchId, BatchResult, ErrorInfo, Job, JobId, JobState, Progress,
    QueueConfig, QueueDefaults, Timestamp,
};
use crate::store::StoreError;

/// Every column of `jobs`, in `JobRow` order.
pub const JOB_COLUMNS: &str = "id, tenant, queue, kind, payload, state, priority, attempt, \
    max_attempts, timeout_ms, backoff_base_ms, backoff_max_ms, key, metadata, progress, result, \
    error, errors, cancel_requested, created_at, run_at, started_at, finished_at, batch_id, \
    depends_on, callback_url, concurrency_key, concurrency_limit";

#[derive(sqlx::FromRow)]
pub struct JobRow {
    id: String,
    tenant: String,
    queue: String,
    kind: String,
    payload: String,
    state: String,
    priority: i64,
    attempt: i64,
    max_attempts: i64,
    timeout_ms: i64,
    backoff_base_ms: i64,
    backoff_max_ms: i64,
    key: Option<String>,
    metadata: String,
    progress: Option<String>,
    result: Option<String>,
    error: Option<String>,
    errors: String,
    cancel_requested: i64,
    created_at: i64,
    run_at: i64,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    batch_id: Option<String>,
    depends_on: String,
    callback_url: Option<String>,
    concurrency_key: Option<String>,
    concurrency_limit: Option<i64>,
}

fn corrupt(what: &str, id: &str, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("job {id}: {what}: {reason}"))
}

fn parse_json<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &str,
    id: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| corrupt(what, id, e))
}

fn parse_opt_json<T: serde::de::DeserializeOwned>(
    text: Option<&str>,
    what: &str,
    id: &str,
) -> Result<Option<T>, StoreError> {
    text.map(|t| parse_json(t, what, id)).transpose()
}

impl JobRow {
    /// Reads a row of `SELECT {JOB_COLUMNS}` (or `RETURNING {JOB_COLUMNS}`)
    /// on the writer's connection.
    pub fn from_writer_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            tenant: row.get(1)?,
            queue: row.get(2)?,
            kind: row.get(3)?,
            payload: row.get(4)?,
            state: row.get(5)?,
            priority: row.get(6)?,
            attempt: row.get(7)?,
            max_attempts: row.get(8)?,
            timeout_ms: row.get(9)?,
            backoff_base_ms: row.get(10)?,
            backoff_max_ms: row.get(11)?,
            key: row.get(12)?,
            metadata: row.get(13)?,
            progress: row.get(14)?,
            result: row.get(15)?,
            error: row.get(16)?,
            errors: row.get(17)?,
            cancel_requested: row.get(18)?,
            created_at: row.get(19)?,
            run_at: row.get(20)?,
            started_at: row.get(21)?,
            finished_at: row.get(22)?,
            batch_id: row.get(23)?,
            depends_on: row.get(24)?,
            callback_url: row.get(25)?,
            concurrency_key: row.get(26)?,
            concurrency_limit: row.get(27)?,
        })
    }
}

impl TryFrom<JobRow> for Job {
    type Error = StoreError;

    fn try_from(row: JobRow) -> Result<Self, StoreError> {
        let id = row.id.parse().map_err(|e| corrupt("id", &row.id, e))?;
        let status: JobState = row
            .state
            .parse()
            .map_err(|e| corrupt("state", &row.id, e))?;
        let payload: Value = parse_json(&row.payload, "payload", &row.id)?;
        let metadata: BTreeMap<String, String> = parse_json(&row.metadata, "metadata", &row.id)?;
        let progress: Option<Progress> =
            parse_opt_json(row.progress.as_deref(), "progress", &row.id)?;
        let result: Option<Value> = parse_opt_json(row.result.as_deref(), "result", &row.id)?;
        let error: Option<ErrorInfo> = parse_opt_json(row.error.as_deref(), "error", &row.id)?;
        let errors: Vec<ErrorInfo> = parse_json(&row.errors, "errors", &row.id)?;
        let depends_on: Vec<JobId> = parse_json(&row.depends_on, "depends_on", &row.id)?;
        let batch_id = row
            .batch_id
            .as_deref()
            .map(|text| text.parse().map_err(|e| corrupt("batch_id", &row.id, e)))
            .transpose()?;
        Ok(Job {
            id,
            tenant: row.tenant,
            queue: row.queue,
            kind: row.kind,
            payload,
            status,
            priority: row.priority as i32,
            attempt: row.attempt as u32,
            max_attempts: row.max_attempts as u32,
            timeout_ms: row.timeout_ms as u64,
            backoff: Backoff {
                base_ms: row.backoff_base_ms as u64,
                max_ms: row.backoff_max_ms as u64,
            },
            key: row.key,
            concurrency_key: row.concurrency_key,
            concurrency_limit: row.concurrency_limit.map(|n| n as u32),
            batch_id,
            depends_on,
            metadata,
            progress,
            result,
            error,
            errors,
            position: None,
            cancel_requested: row.cancel_requested != 0,
            created_at: Timestamp::from_millis(row.created_at),
            run_at: Timestamp::from_millis(row.run_at),
            started_at: row.started_at.map(Timestamp::from_millis),
            finished_at: row.finished_at.map(Timestamp::from_millis),
            callback_url: row.callback_url,
            webhook: None,
        })
    }
}

pub fn jobs_from_rows(rows: Vec<JobRow>) -> Result<Vec<Job>, StoreError> {
    rows.into_iter().map(Job::try_from).collect()
}

/// Every column of `queues`, in `QueueRow` order.
pub const QUEUE_COLUMNS: &str = "name, concurrency, capacity, paused, max_attempts, timeout_ms, \
    backoff_base_ms, backoff_max_ms";

#[derive(sqlx::FromRow)]
pub struct QueueRow {
    name: String,
    concurrency: i64,
    capacity: i64,
    paused: i64,
    max_attempts: i64,
    timeout_ms: i64,
    backoff_base_ms: i64,
    backoff_max_ms: i64,
}

impl From<QueueRow> for QueueConfig {
    fn from(row: QueueRow) -> Self {
        QueueConfig {
            name: row.name,
            concurrency: row.concurrency as u32,
            capacity: row.capacity as u64,
            paused: row.paused != 0,
            defaults: QueueDefaults {
                max_attempts: row.max_attempts as u32,
                timeout_ms: row.timeout_ms as u64,
                backoff: Backoff {
                    base_ms: row.backoff_base_ms as u64,
                    max_ms: row.backoff_max_ms as u64,
                },
            },
        }
    }
}

pub fn to_json(value: &impl serde::Serialize) -> String {
    // Serializing plain domain values (maps with string keys, JSON values) cannot fail.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// Every column of `batches` a `Batch` shows, in `BatchRow` order.
pub const BATCH_COLUMNS: &str = "id, tenant, total, success_threshold, metadata, callback_url, \
    status, cancel_requested, scheduled, queued, running, succeeded, failed, cancelled, \
    created_at, finished_at";

#[derive(sqlx::FromRow)]
pub struct BatchRow {
    id: String,
    tenant: String,
    total: i64,
    success_threshold: f64,
    metadata: String,
    callback_url: Option<String>,
    status: String,
    cancel_requested: i64,
    scheduled: i64,
    queued: i64,
    running: i64,
    succeeded: i64,
    failed: i64,
    cancelled: i64,
    created_at: i64,
    finished_at: Option<i64>,
}

impl BatchRow {
    pub fn from_writer_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: row.get(0)?,
            tenant: row.get(1)?,
            total: row.get(2)?,
            success_threshold: row.get(3)?,
            metadata: row.get(4)?,
            callback_url: row.get(5)?,
            status: row.get(6)?,
            cancel_requested: row.get(7)?,
            scheduled: row.get(8)?,
            queued: row.get(9)?,
            running: row.get(10)?,
            succeeded: row.get(11)?,
            failed: row.get(12)?,
            cancelled: row.get(13)?,
            created_at: row.get(14)?,
            finished_at: row.get(15)?,
        })
    }

    /// The batch, with the ids of its jobs in submission order.
    pub fn into_batch(self, job_ids: Vec<JobId>) -> Result<Batch, StoreError> {
        let corrupt = |what: &str, reason: String| {
            StoreError::Corrupt(format!("batch {}: {what}: {reason}", self.id))
        };
        let count = |n: i64| n.max(0) as u64;
        Ok(Batch {
            id: self
                .id
                .parse::<BatchId>()
                .map_err(|e| corrupt("id", e.to_string()))?,
            status: self.status.parse().map_err(|e| corrupt("status", e))?,
            total: count(self.total),
            counts: BatchCounts {
                scheduled: count(self.scheduled),
                queued: count(self.queued),
                running: count(self.running),
                succeeded: count(self.succeeded),
                failed: count(self.failed),
                cancelled: count(self.cancelled),
            },
            success_threshold: self.success_threshold,
            metadata: serde_json::from_str(&self.metadata)
                .map_err(|e| corrupt("metadata", e.to_string()))?,
            callback_url: self.callback_url.clone(),
            webhook: None,
            cancel_requested: self.cancel_requested != 0,
            created_at: Timestamp::from_millis(self.created_at),
            finished_at: self.finished_at.map(Timestamp::from_millis),
            job_ids,
            tenant: self.tenant.clone(),
        })
    }
}

/// The columns of one partial result, in `ResultRow` order.
pub const RESULT_COLUMNS: &str = "batch_index, id, state, result, error, finished_at, batch_seq";

#[derive(sqlx::FromRow)]
pub struct ResultRow {
    batch_index: i64,
    id: String,
    state: String,
    result: Option<String>,
    error: Option<String>,
    finished_at: i64,
    batch_seq: i64,
}

impl TryFrom<ResultRow> for BatchResult {
    type Error = StoreError;

    fn try_from(row: ResultRow) -> Result<Self, StoreError> {
        Ok(BatchResult {
            index: row.batch_index.max(0) as u32,
            job_id: row.id.parse().map_err(|e| corrupt("id", &row.id, e))?,
            status: row
                .state
                .parse()
                .map_err(|e| corrupt("state", &row.id, e))?,
            result: parse_opt_json(row.result.as_deref(), "result", &row.id)?,
            error: parse_opt_json(row.error.as_deref(), "error", &row.id)?,
            finished_at: Timestamp::from_millis(row.finished_at),
            seq: row.batch_seq.max(0) as u64,
        })
    }
}

/// Job ids as stored (text), parsed.
pub fn parse_ids(texts: &[String]) -> Result<Vec<JobId>, StoreError> {
    texts
        .iter()
        .map(|text| {
            text.parse()
                .map_err(|e| StoreError::Corrupt(format!("job id {text}: {e}")))
        })
        .collect()
}
